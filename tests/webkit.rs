//! Real-browser tests with a browser that really has no WebTransport: Debian's WebKitGTK
//! (the engine family of Safari), driven over classic W3C WebDriver (tests/common/webkit.rs),
//! chats over the WebSocket fallback in one room with Chromium and Firefox over WebTransport
//! (each when installed), and once more with WebKit's own WebTransport switched on, present
//! but unable to connect: a genuine "WebTransport fails, fall back" browser; with WebSocket
//! gone too, WebKitGTK chats over SSE and long polling. The demo page is
//! exercised in WebKitGTK at a phone and a desktop size; screenshots land in
//! `target/screenshots/webkit-*.png`. Without WebKitGTK these tests print a loud SKIPPED line
//! (and fail under `CI=true`).

#[path = "common/browser.rs"]
mod browser;
mod common;
#[path = "common/firefox.rs"]
mod firefox;
#[path = "common/webkit.rs"]
mod webkit;

use std::time::{Duration, Instant};

use browser::{
    ConsoleEntry, DemoPage, Drive, WATCH_WEBTRANSPORT, assert_one_order, demo_connected, numbered,
};
use common::{Client, TestServer, start, start_with};
use serde_json::{Value, json};

/// One test at a time: two tests' browsers starting and connecting at once on a small
/// machine would make the connect times they report meaningless.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The text of the page's typing notice (empty when nobody types).
const TYPING: &str = "document.querySelector('[data-testid=typing]').textContent";

/// How long a shutting-down server waits for its sessions to end: the default.
const GRACE: Duration = Duration::from_secs(5);

fn demo_url(server: &TestServer, query: &str) -> String {
    format!("http://127.0.0.1:{}/?{query}", server.http.port())
}

/// A page in any of the three engines, so one conversation can span them.
#[derive(Clone, Copy)]
enum Tab<'a> {
    Chromium(&'a browser::Page<'a>),
    Firefox(&'a firefox::Page<'a>),
    WebKit(&'a webkit::Page),
}

impl Drive for Tab<'_> {
    fn label(&self) -> String {
        match self {
            Tab::Chromium(p) => format!("chromium {}", p.name),
            Tab::Firefox(p) => format!("firefox {}", p.name),
            Tab::WebKit(p) => format!("webkit {}", p.name),
        }
    }

    async fn try_eval(&self, expression: &str) -> Result<Value, String> {
        match self {
            Tab::Chromium(p) => p.try_eval(expression).await,
            Tab::Firefox(p) => p.try_eval(expression).await,
            Tab::WebKit(p) => p.try_eval(expression).await,
        }
    }

    fn console(&self) -> Vec<ConsoleEntry> {
        match self {
            Tab::Chromium(p) => p.console(),
            Tab::Firefox(p) => p.console(),
            Tab::WebKit(p) => p.console(),
        }
    }
}

impl Tab<'_> {
    async fn type_into(&self, selector: &str, text: &str) {
        match self {
            Tab::Chromium(p) => p.type_into(selector, text).await,
            Tab::Firefox(p) => p.type_into(selector, text).await,
            Tab::WebKit(p) => p.type_into(selector, text).await,
        }
    }

    async fn press(&self, key: &str) {
        match self {
            Tab::Chromium(p) => p.press(key).await,
            Tab::Firefox(p) => p.press(key).await,
            Tab::WebKit(p) => p.press(key).await,
        }
    }

    /// Types a message into the page's input and presses Enter, as a user does.
    async fn say(&self, text: &str) {
        self.type_into("[data-testid=message-input]", text).await;
        self.press("Enter").await;
    }

    /// The page's errors, `allowed` ones left out. A WebKit page's still in the page are
    /// fetched first (classic WebDriver has no console events to push them).
    async fn errors(&self, allowed: impl Fn(&ConsoleEntry) -> bool) -> Vec<(String, String)> {
        let errors = match self {
            Tab::WebKit(p) => p.page_errors().await,
            _ => self.console_errors(),
        };
        errors
            .into_iter()
            .filter(|e| !allowed(e))
            .map(|e| (e.source, e.text))
            .collect()
    }

    async fn assert_no_errors(&self) {
        let errors = self.errors(|_| false).await;
        assert!(
            errors.is_empty(),
            "[{}] page errors: {errors:#?}",
            self.label()
        );
    }

    async fn wait_typing(&self, notice: &str) {
        self.wait_for(
            &format!("the typing notice `{notice}`"),
            &format!("{TYPING} === {}", json!(notice)),
        )
        .await;
    }
}

/// Asserts every page shows exactly `want`, in that order.
async fn assert_all_show(pages: &[Tab<'_>], want: &[(u64, String, String)]) {
    for page in pages {
        assert_eq!(
            page.messages(want.len()).await,
            want,
            "[{}] shows other messages",
            page.label()
        );
    }
}

#[tokio::test]
async fn webkit_without_and_with_failing_webtransport_chats_with_chromium_and_firefox() {
    let test = "webkit_without_and_with_failing_webtransport_chats_with_chromium_and_firefox";
    let _turn = ONE_AT_A_TIME.lock().await;
    if !webkit::installed_or_skip(test) {
        return;
    }
    let started = Instant::now();
    // Both WebKit pages start together: each is a display, a driver and a browser of its own.
    let (kit, kit_wt) = tokio::join!(
        webkit::Page::open("kit", (1024, 768), &[]),
        webkit::Page::open("kit-wt", (1024, 768), &["+WebTransport"]),
    );
    let chromium = browser::Browser::launch_or_skip(&format!("{test} (its Chromium page)")).await;
    let firefox = firefox::Firefox::launch_or_skip(&format!("{test} (its Firefox page)")).await;
    eprintln!("browsers up after {:?}", started.elapsed());
    // Firefox opens a QUIC connection it never completes beside its session: the server
    // must not wait out its whole shutdown grace for that handshake (it did, 5 s).
    let server = start_with(|config| config.shutdown_grace(GRACE)).await;
    let room = "engines";
    let url = |name: &str| demo_url(&server, &format!("room={room}&name={name}"));
    let mut times = Vec::new();

    // Crow: Chromium over WebTransport; fox: Firefox over WebTransport (each when installed).
    let crow = match &chromium {
        Some(chromium) => Some(chromium.page("crow", 1024, 768, None).await),
        None => None,
    };
    if let Some(page) = &crow {
        page.goto(&url("crow")).await;
        let took = Tab::Chromium(page).wait_connected("webtransport").await;
        times.push(format!("Chromium over WebTransport: {took:.0} ms"));
    }
    let crow = crow.as_ref().map(Tab::Chromium);
    let fox = match &firefox {
        Some(firefox) => Some(firefox.page("fox", (1024, 768), None).await),
        None => None,
    };
    if let (Some(page), Some(firefox)) = (&fox, &firefox) {
        page.goto(&url("fox")).await;
        let took = Tab::Firefox(page).wait_connected("webtransport").await;
        times.push(format!(
            "Firefox {} over WebTransport: {took:.0} ms",
            firefox.version
        ));
    }
    let fox_tab = fox.as_ref().map(Tab::Firefox);

    // Kit: WebKitGTK as Debian ships it, with no WebTransport: straight to WebSocket.
    kit.goto(&url("kit")).await;
    let kit_tab = Tab::WebKit(&kit);
    assert_eq!(kit.eval("typeof WebTransport").await, "undefined");
    let took = kit_tab.wait_connected("websocket").await;
    times.push(format!(
        "WebKitGTK {} without WebTransport, over WebSocket: {took:.0} ms",
        kit.version
    ));
    // Kit-wt: WebTransport switched on, present but unable to connect on this platform: the
    // client tries it, it fails, and the page falls back to WebSocket. It joins through the
    // form, so that the WebTransport attempts can be watched first:
    // the fallback must come from a WebTransport that was tried and failed.
    kit_wt
        .goto(&demo_url(&server, &format!("room={room}")))
        .await;
    let kit_wt_tab = Tab::WebKit(&kit_wt);
    assert_eq!(kit_wt.eval("typeof WebTransport").await, "function");
    kit_wt.eval(WATCH_WEBTRANSPORT).await;
    kit_wt
        .type_and_enter("[data-testid=name-input]", "kit-wt")
        .await;
    let took = kit_wt_tab.wait_connected("websocket").await;
    let attempts = kit_wt
        .wait_for(
            "the WebTransport attempt to end",
            "window.__webTransports.length && window.__webTransports.every(o => o !== 'pending')
                && window.__webTransports",
        )
        .await;
    let attempts: Vec<String> = serde_json::from_value(attempts).unwrap();
    assert!(
        // Failed, or (on a loaded machine, past its head start) given up by the client
        // once WebSocket won: tried, and never connected.
        attempts
            .iter()
            .all(|a| a.starts_with("failed") || a == "given up"),
        "[kit-wt] WebTransport attempts: {attempts:?}"
    );
    times.push(format!(
        "WebKitGTK {} with failing WebTransport, fallen back to WebSocket: {took:.0} ms \
         (WebTransport {attempts:?})",
        kit_wt.version
    ));
    eprintln!("connect times (config, transport and join):");
    for line in &times {
        eprintln!("  {line}");
    }

    let pages: Vec<Tab> = [crow, fox_tab, Some(kit_tab), Some(kit_wt_tab)]
        .into_iter()
        .flatten()
        .collect();
    let names: Vec<String> = pages
        .iter()
        .map(|p| p.label().rsplit(' ').next().unwrap().to_string())
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    for page in &pages {
        page.wait_members(&names).await;
    }

    // Someone else types (over WebTransport when a browser here has it): the WebKit page
    // shows it. Then the WebKit page types, and every other page shows that.
    let (first, first_name) = (pages[0], names[0]);
    let mut want: Vec<(&str, &str)> = Vec::new();
    if !matches!(first, Tab::WebKit(_)) {
        let text = "hello from a WebTransport browser";
        first.type_into("[data-testid=message-input]", text).await;
        kit_tab
            .wait_typing(&format!("{first_name} is typing"))
            .await;
        first.press("Enter").await;
        want.push((first_name, text));
        assert_all_show(&pages, &numbered(&want)).await;
    }
    let text = "WebKitGTK over WebSocket hears you";
    kit_tab.type_into("[data-testid=message-input]", text).await;
    for page in pages.iter().filter(|p| p.label() != kit_tab.label()) {
        page.wait_typing("kit is typing").await;
    }
    kit_tab.press("Enter").await;
    want.push(("kit", text));
    assert_all_show(&pages, &numbered(&want)).await;
    // One line from every other page, each sent once the previous one reached every page:
    // the order is the order typed, and every page must show exactly it.
    let mut lines = vec![(
        kit_wt_tab,
        "kit-wt",
        "WebKit whose WebTransport failed: ünïcödé ✓",
    )];
    if let Some(fox) = fox_tab {
        lines.push((fox, "fox", "Firefox over WebTransport, same room"));
    }
    for (page, from, text) in lines {
        page.say(text).await;
        want.push((from, text));
        assert_all_show(&pages, &numbered(&want)).await;
    }

    // Then every page at once: the server decides the order, and every page shows that
    // same order, with the same sequence numbers.
    let burst: Vec<String> = names.iter().map(|n| format!("{n}, all at once")).collect();
    for (page, text) in pages.iter().zip(&burst) {
        page.say(text).await;
    }
    let seen = assert_one_order(&pages, &numbered(&want), &names, &burst).await;
    for page in &pages {
        page.assert_no_errors().await;
    }
    eprintln!(
        "{} pages in {} engines chatting: {:?}",
        pages.len(),
        1 + usize::from(crow.is_some()) + usize::from(fox_tab.is_some()),
        started.elapsed()
    );

    // The server restarts on the same ports (with a new certificate; the room and its
    // history are gone): every page comes back by itself, over the transport it had (see
    // `wait_back_over_webtransport` for when WebSocket wins the race instead).
    let (http, webtransport) = (server.http, server.webtransport);
    for page in pages.iter().filter(|p| !matches!(p, Tab::WebKit(_))) {
        page.eval(WATCH_WEBTRANSPORT).await;
    }
    let down = Instant::now();
    server.stop().await;
    let stopped = down.elapsed();
    assert!(
        stopped < GRACE,
        "the server waited out its grace ({stopped:?}): something it waited for never ended"
    );
    for page in &pages {
        page.wait_for(
            "the page to notice the server went away",
            "document.querySelector('[data-testid=status]').dataset.status !== 'connected'",
        )
        .await;
    }
    let _server = start_with(|config| {
        config
            .http(http)
            .webtransport(webtransport)
            .shutdown_grace(GRACE)
    })
    .await;
    eprintln!(
        "server stopped in {stopped:?}, restarted after {:?}",
        down.elapsed()
    );
    for page in &pages {
        let transport = match page {
            Tab::WebKit(_) => {
                page.wait_for("connected again", &demo_connected("websocket"))
                    .await;
                "websocket".to_string()
            }
            _ => page.wait_back_over_webtransport().await,
        };
        eprintln!(
            "  [{}] back over {transport} after {:?}",
            page.label(),
            down.elapsed()
        );
    }
    for page in &pages {
        page.wait_members(&names).await;
        page.wait_for(
            "the gap notice",
            "document.querySelector('[data-testid=gap-notice]')",
        )
        .await;
    }
    let after = [
        (kit_tab, "kit", "WebKitGTK back after the restart"),
        (first, first_name, "and so is everyone"),
    ];
    let mut shown = seen.clone();
    for (seq, (page, from, text)) in after.into_iter().enumerate() {
        page.say(text).await;
        // The new room numbers from 1; the pages keep what they had.
        shown.push((seq as u64 + 1, from.to_string(), text.to_string()));
        assert_all_show(&pages, &shown).await;
    }
    // While the server was down the browsers themselves logged the refused connections;
    // the pages and the client logged nothing.
    for page in &pages {
        let errors = page
            .errors(|e| {
                e.source == "network"
                    || e.text.contains("ERR_CONNECTION_REFUSED")
                    || e.text.contains("Failed to establish a connection")
            })
            .await;
        assert!(
            errors.is_empty(),
            "[{}] errors after the restart: {errors:#?}",
            page.label()
        );
    }
    eprintln!("the whole test: {:?}", started.elapsed());
}

#[tokio::test]
async fn the_demo_page_works_in_webkit_at_phone_and_desktop_sizes() {
    let test = "the_demo_page_works_in_webkit_at_phone_and_desktop_sizes";
    let _turn = ONE_AT_A_TIME.lock().await;
    if !webkit::installed_or_skip(test) {
        return;
    }
    let started = Instant::now();
    let server = start().await;
    for (label, size) in [("phone", (390, 844)), ("desktop", (1280, 800))] {
        let room = format!("webkit-{label}");
        // Someone already in the room, so there are members and a message to see.
        let mut bot = Client::ws(&server).await;
        bot.join(&room, "bot").await;
        bot.say(&room, "hello, whoever comes", "b1").await;

        // A fresh profile per size: nothing from the other run (storage, history).
        let page = webkit::Page::open(label, size, &[]).await;
        let tab = Tab::WebKit(&page);
        page.goto(&demo_url(&server, "")).await;
        page.wait_for(
            "the name input to have focus",
            "document.activeElement?.dataset.testid === 'name-input'",
        )
        .await;
        // The window is what was asked for; MiniBrowser's toolbar takes the top of it and
        // needs 447 pixels of width, so the phone's viewport is that wide: still well
        // within the narrow layout (up to 760 pixels), which is what the phone run checks.
        let width = page.eval("innerWidth").await.as_u64().unwrap();
        let height = page.eval("innerHeight").await.as_u64().unwrap();
        eprintln!("[{label}] window {size:?}, viewport {width}x{height}");
        let narrow = label == "phone";
        assert_eq!(width <= 760, narrow, "[{label}] viewport {width} wide");
        page.screenshot(&format!("webkit-join-{label}")).await;

        // Join with the keyboard: a name, the room, Enter.
        page.type_into("[data-testid=name-input]", "kim").await;
        page.clear("[data-testid=room-input]").await;
        page.type_into("[data-testid=room-input]", &room).await;
        page.press("Enter").await;
        tab.wait_connected("websocket").await;
        page.wait_for(
            "the message input to have focus",
            "document.activeElement?.dataset.testid === 'message-input'",
        )
        .await;
        assert_eq!(
            page.eval("document.title").await,
            json!(format!("#{room} · wtchat"))
        );
        tab.wait_members(&["bot", "kim"]).await;
        assert_eq!(
            page.eval("document.querySelector('[data-testid=member-count]').textContent")
                .await,
            "2"
        );

        // Send: the bot gets it, and the page shows the room's history and it in order.
        tab.say("hello from WebKitGTK").await;
        assert_eq!(
            bot.messages(&room, 1).await,
            vec![(2, "kim".to_string(), "hello from WebKitGTK".to_string())]
        );
        assert_eq!(
            tab.messages(2).await,
            numbered(&[
                ("bot", "hello, whoever comes"),
                ("kim", "hello from WebKitGTK")
            ])
        );
        page.screenshot(&format!("webkit-chat-{label}")).await;

        // The members: in a side panel on a desktop, behind the "People" button on a phone.
        const SHOWN: &str = "(s) => { const el = document.querySelector(s);
            return !!el && getComputedStyle(el).display !== 'none' && el.getClientRects().length > 0; }";
        let shown = |selector: &str| format!("({SHOWN})({})", json!(selector));
        if narrow {
            assert_eq!(page.eval(&shown("#members")).await, false, "[{label}]");
            assert_eq!(
                page.eval("document.querySelector('[data-testid=members-toggle]').textContent")
                    .await,
                "People · 2"
            );
            page.click("[data-testid=members-toggle]").await;
            page.wait_for("the members panel to open", &shown("#members"))
                .await;
            page.screenshot(&format!("webkit-members-{label}")).await;
            page.press("Escape").await;
            page.wait_for(
                "the members panel to close",
                &format!("!{}", shown("#members")),
            )
            .await;
        } else {
            assert_eq!(page.eval(&shown("#members")).await, true, "[{label}]");
            assert_eq!(
                page.eval(&shown("[data-testid=members-toggle]")).await,
                false,
                "[{label}]"
            );
        }

        // Leave: the join form is back, and the room no longer has kim.
        page.click("[data-testid=leave-button]").await;
        page.wait_for(
            "the join form",
            "!document.querySelector('[data-testid=join-form]').closest('[hidden]')
                && document.activeElement?.dataset.testid === 'name-input'",
        )
        .await;
        assert_eq!(page.eval("document.title").await, "wtchat");
        let left = bot
            .next_matching("kim's leave", |f| {
                f["type"] == "presence" && f["event"] == "leave"
            })
            .await;
        assert_eq!(left["member"]["name"], "kim");
        page.screenshot(&format!("webkit-left-{label}")).await;
        tab.assert_no_errors().await;
    }

    // "No page errors" means something only if errors are seen: an uncaught exception, an
    // unhandled rejection and a `console.error` in a WebKit page all are.
    let page = webkit::Page::open("errors", (1024, 768), &[]).await;
    page.goto(&demo_url(&server, "")).await;
    page.eval(
        "(() => {
           setTimeout(() => { throw new Error('thrown on purpose'); });
           Promise.reject(new Error('rejected on purpose'));
           console.error('logged on purpose');
         })()",
    )
    .await;
    let deadline = Instant::now() + browser::WAIT;
    let errors = loop {
        let errors: Vec<String> = page
            .page_errors()
            .await
            .into_iter()
            .map(|e| e.text)
            .collect();
        if errors.len() >= 3 || Instant::now() > deadline {
            break errors;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let mut errors = errors;
    errors.sort();
    assert_eq!(
        errors,
        [
            "Error: thrown on purpose",
            "logged on purpose",
            "unhandled rejection: Error: rejected on purpose",
        ]
    );
    eprintln!("the demo page in WebKitGTK: {:?}", started.elapsed());
}

/// Run in a WebKit page before it joins (classic WebDriver runs nothing before the page's
/// own scripts, so the page joins through its form after this): no WebSocket, as behind a
/// proxy that breaks upgrades, so SSE; and with no `EventSource` either, long polling.
const NO_WEBSOCKET: &str = "delete window.WebSocket";
const NO_EVENT_SOURCE: &str = "delete window.WebSocket && delete window.EventSource";

#[tokio::test]
async fn webkit_over_sse_and_long_polling_chats_with_webtransport_and_comes_back() {
    let test = "webkit_over_sse_and_long_polling_chats_with_webtransport_and_comes_back";
    let _turn = ONE_AT_A_TIME.lock().await;
    if !webkit::installed_or_skip(test) {
        return;
    }
    let server = start().await;
    let room = "webkit-posted";
    // Someone on WebTransport in the same room.
    let mut bot = Client::wt(&server).await;
    bot.join(room, "bot").await;
    let (sse, poll) = tokio::join!(
        webkit::Page::open("kit-sse", (1024, 768), &[]),
        webkit::Page::open("kit-poll", (1024, 768), &[]),
    );
    let (sal, pat) = (Tab::WebKit(&sse), Tab::WebKit(&poll));
    for (page, tab, name, script, transport) in [
        (&sse, sal, "sal", NO_WEBSOCKET, "sse"),
        (&poll, pat, "pat", NO_EVENT_SOURCE, "longpoll"),
    ] {
        page.goto(&demo_url(&server, &format!("room={room}"))).await;
        page.eval(script).await;
        page.type_and_enter("[data-testid=name-input]", name).await;
        let took = tab.wait_connected(transport).await;
        eprintln!(
            "WebKitGTK {} over {transport}: {took:.0} ms (config, transport and join)",
            page.version
        );
    }
    for page in [sal, pat] {
        page.wait_members(&["bot", "pat", "sal"]).await;
    }
    sal.say("sal over SSE").await;
    pat.messages(1).await;
    pat.say("pat over long polling: ünïcödé ✓").await;
    sal.messages(2).await;
    assert_eq!(
        bot.messages(room, 2).await,
        numbered(&[
            ("sal", "sal over SSE"),
            ("pat", "pat over long polling: ünïcödé ✓"),
        ])
    );
    bot.say(room, "bot over WebTransport hears you both", "b1")
        .await;
    let mut want = numbered(&[
        ("sal", "sal over SSE"),
        ("pat", "pat over long polling: ünïcödé ✓"),
        ("bot", "bot over WebTransport hears you both"),
    ]);
    assert_all_show(&[sal, pat], &want).await;
    // Each loses its connection, and comes back on the transport it had, missing nothing
    // said meanwhile.
    for (page, transport) in [(sal, "sse"), (pat, "longpoll")] {
        page.lose_connection().await;
        let text = format!("while {} reconnects", page.label());
        let id = format!("b{}", want.len() + 1);
        bot.say(room, &text, &id).await;
        page.wait_connected(transport).await;
        want.push((want.len() as u64 + 1, "bot".into(), text));
        assert_all_show(&[sal, pat], &want).await;
    }
    for page in [sal, pat] {
        page.assert_no_errors().await;
    }
    server.stop().await;
}
