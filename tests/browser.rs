//! Real-browser tests: Debian's Chromium, driven over the DevTools protocol, loads the demo
//! page from a test server and chats over WebTransport and over the WebSocket fallback in
//! the same room. Without Chromium these tests print a loud SKIPPED line (and fail under
//! `CI=true`). Screenshots land in `target/screenshots/`.

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::net::UdpSocket;
use std::time::Instant;

use browser::{
    Browser, DemoPage, Drive, NO_EVENT_SOURCE, NO_STREAMS, NO_WEBTRANSPORT, Page, demo_connected,
    numbered,
};
#[allow(dead_code)] // its `main` is the example's, not the test's
#[path = "../examples/axum_host.rs"]
mod host;

use common::{TestServer, start, start_host, start_with};
use serde_json::{Value, json};
use wtchat::Engine;

/// One browser test at a time: several Chromiums starting at once on a small machine make
/// every timing in them (the WebTransport head start, the two-second fallback) meaningless,
/// and running them side by side saves no wall time on two cores anyway.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Takes this test's turn, then launches Chromium (None: not installed, test skipped).
async fn take_browser(test: &str) -> Option<(tokio::sync::MutexGuard<'static, ()>, Browser)> {
    let turn = ONE_AT_A_TIME.lock().await;
    Some((turn, Browser::launch_or_skip(test).await?))
}

/// Run before the page's scripts: records every change of the status element, so a test
/// can see a `reconnecting` that lasted only a moment.
const STATUS_LOG: &str = r#"
window.__statusLog = [];
document.addEventListener("DOMContentLoaded", () => {
  const status = document.querySelector("[data-testid=status]");
  new MutationObserver(() => window.__statusLog.push(status.dataset.status))
    .observe(status, { attributes: true, attributeFilter: ["data-status"] });
});
"#;

fn demo_url(server: &TestServer, query: &str) -> String {
    format!("http://127.0.0.1:{}/?{query}", server.http.port())
}

/// Opens the demo page, joined to `room` as `name` through the URL.
async fn open_chat<'b>(
    browser: &'b Browser,
    server: &TestServer,
    label: &str,
    (width, height): (u32, u32),
    init: Option<&str>,
    room: &str,
    name: &str,
) -> Page<'b> {
    let page = browser.page(label, width, height, init).await;
    let query = format!("room={room}&name={}", urlencode(name));
    page.goto(&demo_url(server, &query)).await;
    page
}

/// Bob's page without WebTransport (so on WebSocket), then Ann's on WebTransport, logging
/// its status changes; both connected in `room`. Returns (Ann's, Bob's).
async fn open_ann_and_bob<'b>(
    browser: &'b Browser,
    server: &TestServer,
    room: &str,
) -> (Page<'b>, Page<'b>) {
    let bob = open_chat(
        browser,
        server,
        "B",
        (1024, 768),
        Some(NO_WEBTRANSPORT),
        room,
        "bob",
    )
    .await;
    bob.wait_connected("websocket").await;
    let ann = open_chat(
        browser,
        server,
        "A",
        (1024, 768),
        Some(STATUS_LOG),
        room,
        "ann",
    )
    .await;
    ann.wait_connected("webtransport").await;
    (ann, bob)
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Waits until the page says it is connected over `transport`, badge and status both.
/// Types a message into the page's input and presses Enter.
async fn say(page: &Page<'_>, text: &str) {
    page.type_and_enter("[data-testid=message-input]", text)
        .await;
}

fn assert_no_console_errors(page: &Page<'_>) {
    if std::env::var_os("WTCHAT_BROWSER_CONSOLE").is_some() {
        eprintln!("[{}] console: {:#?}", page.name, page.console());
    }
    let errors = page.console_errors();
    assert!(
        errors.is_empty(),
        "[{}] console errors: {errors:#?}",
        page.name
    );
}

/// The member id the chat gave `name` in `room`.
async fn member_id(server: &TestServer, room: &str, name: &str) -> u64 {
    let members = server.chat.members(room).await.unwrap();
    members
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("{name} is not in {room}: {members:?}"))
        .id
}

#[tokio::test]
async fn webtransport_and_websocket_pages_chat_in_one_room() {
    let Some((_serial, browser)) =
        take_browser("webtransport_and_websocket_pages_chat_in_one_room").await
    else {
        return;
    };
    let server = start().await;
    let started = Instant::now();

    // B on a phone-sized page with no WebTransport at all, joining through the form with
    // the keyboard; then A on a desktop-sized page, joined through the URL.
    let b = browser.page("B", 390, 844, Some(NO_WEBTRANSPORT)).await;
    b.goto(&demo_url(&server, "room=lobby")).await;
    b.wait_for(
        "the join form",
        "document.activeElement?.dataset.testid === 'name-input'",
    )
    .await;
    assert_eq!(
        b.eval("document.querySelector('[data-testid=room-input]').value")
            .await,
        "lobby"
    );
    b.type_and_enter("[data-testid=name-input]", "bob").await;
    b.wait_connected("websocket").await;
    assert_eq!(b.eval("window.chat.transport").await, "websocket");

    let a = open_chat(&browser, &server, "A", (1280, 800), None, "lobby", "ann").await;
    a.wait_connected("webtransport").await;
    assert_eq!(a.eval("window.chat.transport").await, "webtransport");
    let took = a
        .eval(
            "performance.getEntriesByName('wtchat:connected')[0].startTime
                - performance.getEntriesByName('wtchat:connect')[0].startTime",
        )
        .await;
    eprintln!("A: config, WebTransport and join took {took} ms");
    a.wait_members(&["ann", "bob"]).await;
    b.wait_members(&["ann", "bob"]).await;

    // A starts typing: B sees it (over a datagram from A, a frame to B).
    a.type_into("[data-testid=message-input]", "hello from ann")
        .await;
    let typing = b
        .wait_for(
            "ann's typing notice",
            "document.querySelector('[data-testid=typing]').textContent",
        )
        .await;
    assert_eq!(typing, "ann is typing");
    a.press("Enter").await;

    say(&b, "hi ann, bob here").await;
    a.messages(2).await;
    say(&a, "WebTransport says hi").await;
    b.messages(3).await;
    say(&b, "WebSocket says hi back").await;
    let want = numbered(&[
        ("ann", "hello from ann"),
        ("bob", "hi ann, bob here"),
        ("ann", "WebTransport says hi"),
        ("bob", "WebSocket says hi back"),
    ]);
    assert_eq!(a.messages(4).await, want);
    assert_eq!(b.messages(4).await, want);
    // The sender's input is empty again, and nothing is left pending.
    assert_eq!(
        a.eval("document.querySelector('[data-testid=message-input]').value")
            .await,
        ""
    );
    assert_eq!(
        a.eval("document.querySelectorAll('[data-testid=pending-message]').length")
            .await,
        0
    );
    eprintln!(
        "two pages chatting over both transports: {:?}",
        started.elapsed()
    );

    a.screenshot("chat-webtransport-desktop").await;
    b.screenshot("chat-websocket-phone").await;
    // The same conversation at the other widths.
    a.resize(390, 844).await;
    a.screenshot("chat-webtransport-phone").await;
    b.resize(1280, 800).await;
    b.dark_mode().await;
    b.screenshot("chat-websocket-desktop-dark").await;
    assert_no_console_errors(&a);
    assert_no_console_errors(&b);
}

#[tokio::test]
async fn a_page_whose_connection_is_killed_reconnects_and_misses_nothing() {
    let Some((_serial, browser)) =
        take_browser("a_page_whose_connection_is_killed_reconnects_and_misses_nothing").await
    else {
        return;
    };
    let server = start().await;
    let (a, b) = open_ann_and_bob(&browser, &server, "resume").await;
    a.wait_members(&["ann", "bob"]).await;

    let mut want: Vec<(&str, String)> = Vec::new();
    for i in 1..=3 {
        say(&b, &format!("before {i}")).await;
        want.push(("bob", format!("before {i}")));
    }
    a.messages(3).await;

    // Kill A's connection from the server side while B keeps sending; A, reconnecting,
    // queues a message of its own.
    let started = Instant::now();
    assert!(
        server
            .chat
            .reconnect_member("resume", member_id(&server, "resume", "ann").await)
            .await
            .unwrap()
    );
    for i in 1..=3 {
        say(&b, &format!("during {i}")).await;
        want.push(("bob", format!("during {i}")));
    }
    a.wait_for("A to notice", "window.__statusLog.includes('reconnecting')")
        .await;
    say(&a, "ann, typed while reconnecting").await;
    a.wait_connected("webtransport").await;
    eprintln!(
        "A reconnected over WebTransport after {:?}",
        started.elapsed()
    );
    // B's messages and A's queued one may interleave; B's keep their order.
    b.messages(7).await;
    let seen = b.messages(0).await;
    let ann_at = seen
        .iter()
        .position(|m| m.1 == "ann")
        .expect("A's queued message arrived");
    want.insert(ann_at, ("ann", "ann, typed while reconnecting".into()));

    // Again, and this time A comes back over the other transport.
    a.eval("delete window.WebTransport").await;
    assert!(
        server
            .chat
            .reconnect_member("resume", member_id(&server, "resume", "ann").await)
            .await
            .unwrap()
    );
    for i in 1..=2 {
        say(&b, &format!("switch {i}")).await;
        want.push(("bob", format!("switch {i}")));
    }
    a.wait_connected("websocket").await;
    say(&b, "after").await;
    want.push(("bob", "after".into()));

    let want: Vec<(&str, &str)> = want.iter().map(|(f, t)| (*f, t.as_str())).collect();
    let want = numbered(&want);
    assert_eq!(b.messages(want.len()).await, want);
    assert_eq!(
        a.messages(want.len()).await,
        want,
        "A has every message once, in order"
    );
    b.wait_members(&["ann", "bob"]).await;
    let log = a.eval("window.__statusLog").await;
    let reconnects = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| *s == "reconnecting")
        .count();
    assert!(reconnects >= 2, "A went through reconnecting twice: {log}");
    // Exactly the expected number of messages: nothing doubled in the client's own list.
    assert_eq!(
        a.eval("window.chat.messages.length").await,
        json!(want.len())
    );
    a.screenshot("reconnected-desktop").await;
    assert_no_console_errors(&a);
    assert_no_console_errors(&b);
}

#[tokio::test]
async fn html_in_messages_and_names_is_shown_as_text() {
    let Some((_serial, browser)) =
        take_browser("html_in_messages_and_names_is_shown_as_text").await
    else {
        return;
    };
    let server = start().await;
    let evil_name = "<b onclick=x>eve</b>";
    let evil_text = "<img src=x onerror=\"window.__pwned=1\"> <script>window.__pwned=2</script> &amp; <b>bold</b>";
    let a = open_chat(&browser, &server, "A", (1024, 768), None, "xss", evil_name).await;
    a.wait_connected("webtransport").await;
    let b = open_chat(
        &browser,
        &server,
        "B",
        (390, 844),
        Some(NO_WEBTRANSPORT),
        "xss",
        "bob",
    )
    .await;
    b.wait_connected("websocket").await;
    say(&a, evil_text).await;
    for page in [&a, &b] {
        let got = page.messages(1).await;
        assert_eq!(got, [(1, evil_name.to_string(), evil_text.to_string())]);
        page.wait_members(&["bob", evil_name]).await;
        let markup = page
            .eval(
                "({ imgs: document.querySelectorAll('main img, main script, main b').length,
                    pwned: window.__pwned ?? null })",
            )
            .await;
        assert_eq!(
            markup,
            json!({"imgs": 0, "pwned": null}),
            "[{}] user text became markup",
            page.name
        );
    }
    b.screenshot("html-as-text-phone").await;
    assert_no_console_errors(&a);
    assert_no_console_errors(&b);
}

/// A UDP port where nothing listens: the WebTransport handshake is refused at once.
fn closed_udp_port() -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap().port()
}

#[tokio::test]
async fn without_webtransport_the_page_chats_over_websocket_within_two_seconds() {
    let Some((_serial, browser)) =
        take_browser("without_webtransport_the_page_chats_over_websocket_within_two_seconds").await
    else {
        return;
    };
    // Two ways WebTransport fails: a closed port (refused at once), and a port that swallows
    // every packet, as a UDP-blocking network does (the handshake would hang for seconds).
    let closed = closed_udp_port();
    let blackhole = UdpSocket::bind("127.0.0.1:0").unwrap();
    let blackhole_port = blackhole.local_addr().unwrap().port();
    for (label, port) in [
        ("closed-udp-port", closed),
        ("udp-blackhole", blackhole_port),
    ] {
        let server = start_with(|config| {
            config.public_webtransport_url(format!("https://127.0.0.1:{port}/wtchat"))
        })
        .await;
        let page = open_chat(
            &browser,
            &server,
            label,
            (1024, 768),
            None,
            "fallback",
            "cat",
        )
        .await;
        page.wait_connected("websocket").await;
        let connected_at = page
            .eval("performance.getEntriesByName('wtchat:connected')[0].startTime")
            .await
            .as_f64()
            .unwrap();
        say(&page, "still here").await;
        assert_eq!(page.messages(1).await, numbered(&[("cat", "still here")]));
        let chatting_at = page.eval("performance.now()").await.as_f64().unwrap();
        eprintln!(
            "{label}: connected over WebSocket {connected_at:.0} ms after navigation, chatting at {chatting_at:.0} ms"
        );
        assert!(
            connected_at < 2000.0,
            "{label}: connected only after {connected_at} ms"
        );
        page.screenshot(&format!("fallback-{label}")).await;
        // The only console error allowed is the browser's own report of the failed
        // WebTransport handshake.
        if std::env::var_os("WTCHAT_BROWSER_CONSOLE").is_some() {
            eprintln!("[{label}] console: {:#?}", page.console());
        }
        let errors: Vec<_> = page
            .console_errors()
            .into_iter()
            .filter(|e| {
                !(e.text.contains("WebTransport") || e.text.contains(&format!(":{port}/wtchat")))
            })
            .collect();
        assert!(errors.is_empty(), "[{label}] console errors: {errors:#?}");
    }
    drop(blackhole);
}

#[tokio::test]
async fn the_demo_page_loads_cleanly_and_is_keyboard_usable() {
    let Some((_serial, browser)) =
        take_browser("the_demo_page_loads_cleanly_and_is_keyboard_usable").await
    else {
        return;
    };
    let server = start().await;
    for (label, size) in [("desktop", (1280, 800)), ("phone", (390, 844))] {
        let page = browser.page(label, size.0, size.1, None).await;
        page.goto(&demo_url(&server, "")).await;
        page.wait_for(
            "the name input to have focus",
            "document.activeElement?.dataset.testid === 'name-input'",
        )
        .await;
        page.screenshot(&format!("join-{label}")).await;
        // Keyboard only: a name, Tab to the room, replace it, Enter.
        page.call("Input.insertText", json!({"text": "kim"})).await;
        page.press("Tab").await;
        let focused: Value = page.eval("document.activeElement.dataset.testid").await;
        assert_eq!(focused, "room-input");
        page.eval("document.activeElement.select()").await;
        page.call("Input.insertText", json!({"text": format!("kbd-{label}")}))
            .await;
        page.press("Enter").await;
        page.wait_connected("webtransport").await;
        page.wait_for(
            "the message input to have focus",
            "document.activeElement?.dataset.testid === 'message-input'",
        )
        .await;
        say(&page, "typed with the keyboard").await;
        page.messages(1).await;
        assert_eq!(
            page.eval("document.title").await,
            json!(format!("#kbd-{label} · wtchat"))
        );
        assert_no_console_errors(&page);
    }
}

#[tokio::test]
async fn pages_come_back_by_themselves_after_a_server_restart() {
    // In memory: the rooms, their epochs and history are gone with the server.
    come_back_after_a_restart(
        "pages_come_back_by_themselves_after_a_server_restart",
        Engine::Memory,
    )
    .await;
}

#[tokio::test]
async fn pages_resume_after_a_restart_on_a_durable_engine_missing_nothing() {
    // In an SQLite file: the restarted server has the rooms as they were.
    let dir = tempfile::tempdir().unwrap();
    come_back_after_a_restart(
        "pages_resume_after_a_restart_on_a_durable_engine_missing_nothing",
        Engine::Sqlite(dir.path().join("chat.db")),
    )
    .await;
}

/// Reply, Edit and Delete at phone width, as a thumb uses them: each button is on screen and
/// is what a tap in its middle hits. Ann (a 390 px page over WebTransport) answers Bob's
/// message, fixes a typo in hers and deletes her reply; Bob's page (WebSocket) shows each.
#[tokio::test]
async fn at_phone_width_a_page_replies_edits_and_deletes_with_taps() {
    let test = "at_phone_width_a_page_replies_edits_and_deletes_with_taps";
    let Some((_serial, browser)) = take_browser(test).await else {
        return;
    };
    let server = start_with(|c| c).await;
    let bob = open_chat(
        &browser,
        &server,
        "B",
        (1024, 768),
        Some(NO_WEBTRANSPORT),
        "thumbs",
        "bob",
    )
    .await;
    bob.wait_connected("websocket").await;
    let ann = open_chat(&browser, &server, "A", (390, 844), None, "thumbs", "ann").await;
    ann.wait_connected("webtransport").await;
    say(&bob, "hello from bob").await;
    ann.messages(1).await;
    say(&ann, "helo from ann").await;
    bob.messages(2).await;
    // A tap in the middle of the button lands on it: on screen, nothing over it.
    let tap = |seq: u64, button: &str| {
        let selector = format!("[data-testid=message][data-seq=\"{seq}\"] [data-testid={button}]");
        let ann = &ann;
        async move {
            let hit = ann
                .eval(&format!(
                    "(() => {{ const b = document.querySelector({sel}); b.scrollIntoView({{ block: 'center' }});
                        const r = b.getBoundingClientRect();
                        return r.left >= 0 && r.right <= innerWidth
                            && document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2) === b; }})()",
                    sel = json!(selector)
                ))
                .await;
            assert_eq!(hit, json!(true), "{selector} is not what a tap hits");
            ann.click(&selector).await;
        }
    };
    tap(1, "reply-button").await;
    say(&ann, "hi bob").await;
    let quoted = "document.querySelector('[data-testid=message][data-seq=\"3\"] [data-testid=message-quote]')?.textContent";
    for page in [&ann, &bob] {
        page.wait_for(
            "the reply's quote",
            &format!("{quoted} === 'bobhello from bob'"),
        )
        .await;
    }
    tap(2, "edit-button").await;
    ann.type_into("[data-testid=edit-input]", " (fixed)").await;
    ann.press("Enter").await;
    for page in [&ann, &bob] {
        page.wait_for(
            "ann's edit",
            "document.querySelector('[data-testid=message][data-seq=\"2\"] [data-testid=message-text]').textContent === 'helo from ann (fixed)'",
        )
        .await;
    }
    tap(3, "delete-button").await;
    tap(3, "delete-button").await;
    for page in [&ann, &bob] {
        page.wait_for(
            "ann's deletion",
            "!document.querySelector('[data-testid=message][data-seq=\"3\"]')",
        )
        .await;
    }
    ann.screenshot("changes-phone").await;
    assert_no_console_errors(&ann);
    assert_no_console_errors(&bob);
    server.stop().await;
}

/// Past a gap the page shows nothing stale. Its server stops; meanwhile the host edits the
/// first message the page shows and says more than a resume replays (`max_replay` 3). Back
/// in the same room (SQLite) the page is told of a gap: it drops what it showed, shows the
/// newest three, and loads what is above them again, with the edit.
#[tokio::test]
async fn past_a_gap_the_page_reloads_what_it_showed_and_shows_the_edits_it_missed() {
    let test = "past_a_gap_the_page_reloads_what_it_showed_and_shows_the_edits_it_missed";
    let Some((_serial, browser)) = take_browser(test).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let engine = Engine::Sqlite(db);
    let config = |c: wtchat::ConfigBuilder| c.max_replay(3);
    let server = start_with(|c| config(c).engine(engine.clone())).await;
    let (http, webtransport) = (server.http, server.webtransport);
    publish_numbered(&server, "gap", 3).await;
    let page = open_chat(
        &browser,
        &server,
        "A",
        (1024, 768),
        Some(STATUS_LOG),
        "gap",
        "ann",
    )
    .await;
    page.wait_connected("webtransport").await;
    assert_eq!(page.messages(3).await, host_messages(1..=3));
    server.stop().await;
    page.wait_for(
        "the page to notice",
        "window.__statusLog.includes('reconnecting')",
    )
    .await;
    let elsewhere = start_with(|c| config(c).engine(engine.clone())).await;
    assert!(
        elsewhere
            .chat
            .edit_message("gap", 1, "message 1, edited")
            .await
            .unwrap()
    );
    for i in 5..=9 {
        let text = format!("message {i}");
        elsewhere.chat.publish("gap", "Host", &text).await.unwrap();
    }
    elsewhere.stop().await;
    let server = start_with(|c| {
        config(c)
            .http(http)
            .webtransport(webtransport)
            .engine(engine)
    })
    .await;
    page.wait_back_over_webtransport().await;
    page.wait_for(
        "the gap notice",
        "document.querySelector('[data-testid=gap-notice]')",
    )
    .await;
    let mut want = vec![(1, "Host".to_string(), "message 1, edited".to_string())];
    want.extend(host_messages(2..=3));
    want.extend(host_messages(5..=9));
    page.wait_for(
        "every message, current",
        &format!("{SHOWN} === {}", want.len()),
    )
    .await;
    assert_eq!(page.messages(want.len()).await, want);
    assert_eq!(
        page.eval("window.chat.messages.map((m) => m.seq)").await,
        json!([7, 8, 9]),
        "the client holds the replay, not what may be stale"
    );
    // While the server was down the browser logged each refused reconnect (how many
    // depends on how long the restarts took); nothing else.
    let errors: Vec<_> = page
        .console_errors()
        .into_iter()
        .filter(|e| !e.text.contains("net::ERR_CONNECTION_REFUSED"))
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    server.stop().await;
}

/// Ann's and Bob's pages are open when the server stops (every client gets `bye` 4000,
/// reconnect) and a new one starts on the same ports with a new certificate and the same
/// `engine`, where the host says something before they are back. They come back by
/// themselves, and show every message once: on a durable engine the room goes on where it
/// was, with no gap; in memory it starts over, and the page says plainly that earlier
/// messages may be missing.
async fn come_back_after_a_restart(test: &str, engine: Engine) {
    let Some((_serial, browser)) = take_browser(test).await else {
        return;
    };
    let durable = engine != Engine::Memory;
    let server = start_with(|config| config.engine(engine.clone())).await;
    let (http, webtransport) = (server.http, server.webtransport);
    let (a, b) = open_ann_and_bob(&browser, &server, "restart").await;
    say(&b, "before the restart").await;
    a.messages(1).await;
    let epoch = a.eval("window.chat.epoch").await;

    a.eval(browser::WATCH_WEBTRANSPORT).await;
    let started = Instant::now();
    server.stop().await;
    a.wait_for("A to notice", "window.__statusLog.includes('reconnecting')")
        .await;
    // Meanwhile the host says something, through a server on the same storage that the
    // pages cannot reach: kept in the file, lost with the memory.
    let elsewhere = start_with(|config| config.engine(engine.clone())).await;
    elsewhere
        .chat
        .publish("restart", "Host", "while you were away")
        .await
        .unwrap();
    elsewhere.stop().await;
    let server =
        start_with(|config| config.http(http).webtransport(webtransport).engine(engine)).await;
    let a_over = a.wait_back_over_webtransport().await;
    b.wait_connected("websocket").await;
    eprintln!(
        "both pages back after {:?} (ann over {a_over})",
        started.elapsed()
    );
    a.wait_members(&["ann", "bob"]).await;
    if !durable {
        // Shown on rejoining, before anything new: the page keeps what it had and goes on
        // in the new room.
        a.wait_for(
            "the gap notice",
            "document.querySelector('[data-testid=gap-notice]')",
        )
        .await;
    }
    say(&b, "after the restart").await;
    say(&a, "ann is back").await;
    let mut said = vec![("bob", "before the restart")];
    if durable {
        said.push(("Host", "while you were away"));
    }
    said.extend([("bob", "after the restart"), ("ann", "ann is back")]);
    let want = if durable {
        numbered(&said)
    } else {
        // The new room numbers from 1 again.
        [numbered(&said[..1]), numbered(&said[1..])].concat()
    };
    for page in [&a, &b] {
        assert_eq!(page.messages(want.len()).await, want, "[{}]", page.name);
        // Each once, and a gap notice in memory only.
        assert_eq!(
            page.eval(&format!(
                "[window.chat.messages.length, {SHOWN},
                  document.querySelectorAll('[data-testid=gap-notice]').length]"
            ))
            .await,
            json!([want.len(), want.len(), if durable { 0 } else { 1 }]),
            "[{}]",
            page.name
        );
    }
    // Bob was cut off too, and came back: A's page does not say he left.
    assert_eq!(
        a.eval("[...document.querySelectorAll('[data-testid=presence-notice]')].map(n => n.textContent)")
            .await,
        json!([])
    );
    assert_eq!(
        a.eval("window.chat.epoch").await == epoch,
        durable,
        "the room's epoch survives on a durable engine only"
    );
    a.screenshot(if durable {
        "after-restart-durable-desktop"
    } else {
        "after-restart-desktop"
    })
    .await;
    // While the server was down the browser itself logged the refused connections; the page
    // and the client logged nothing.
    for page in [&a, &b] {
        let errors: Vec<_> = page
            .console_errors()
            .into_iter()
            .filter(|e| {
                !(e.source == "network"
                    && (e.text.contains("ERR_CONNECTION_REFUSED")
                        || e.text.contains("Failed to establish a connection")))
            })
            .collect();
        assert!(
            errors.is_empty(),
            "[{}] console errors: {errors:#?}",
            page.name
        );
    }
    drop(server);
}

/// The client API as a page uses it (see lib/client/wtchat.d.ts), over each transport: a burst
/// above the server's rate limit is paced and acknowledged in order, refusals reject with
/// the server's error code, a token names the user, and `close()` leaves.
const API_CHECKS: &str = r#"(async (transport, token, watcherToken, badToken) => {
  const { connect, ChatError } = await import("/wtchat/wtchat.js");
  const room = `api-${transport}`;
  const watcher = await connect({ room, name: "ignored: the token names", transport, token: watcherToken });
  const presence = [];
  watcher.on("presence", (p) => presence.push([p.event, p.member?.name, p.members.length]));
  const chat = await connect({ room, transport, token });
  const result = { transport: chat.transport, name: chat.name, me: chat.me?.name };
  result.typing = [chat.typing(), chat.typing()];
  // 45 sends at once: more than the server's burst of 40, so the client must pace them.
  const acks = await Promise.all(Array.from({ length: 45 }, (_, i) => chat.send(`burst ${i}`)));
  result.seqs = acks.map((a) => a.seq);
  result.texts = chat.messages.map((m) => m.text);
  result.mine = chat.messages.every((m) => m.mine);
  const code = async (promise) => {
    try { await promise; return "resolved"; } catch (e) { return e instanceof ChatError ? e.code : `not a ChatError: ${e}`; }
  };
  result.empty = await code(chat.send("   "));
  result.tooLong = await code(chat.send("x".repeat(chat.limits.maxTextChars + 1)));
  // The same refusal from the server itself, with the client's check out of the way.
  const limits = chat.limits;
  chat.limits = null;
  result.serverTooLong = await code(chat.send("y".repeat(limits.maxTextChars + 1)));
  chat.limits = limits;
  result.badRoom = await code(connect({ room: "no spaces", transport, token }));
  result.badToken = await code(connect({ room, transport, token: badToken }));
  result.banned = await code(connect({ room: "no-entry", transport, token }));
  const statuses = [];
  chat.on("status", (s) => statuses.push(s.status));
  chat.close();
  result.afterClose = await code(chat.send("late"));
  result.statuses = statuses;
  await new Promise((resolve) => {
    const check = () => (watcher.members.length === 1 ? resolve() : setTimeout(check, 20));
    check();
  });
  result.presence = presence;
  result.watcherSaw = watcher.messages.length;
  watcher.close();
  return result;
})"#;

/// Run before the page's scripts: records the URL of every WebSocket, WebTransport session
/// and event stream the page opens, in `__urls`.
const RECORD_URLS: &str = "(() => {
  const urls = (window.__urls = []);
  for (const name of ['WebSocket', 'WebTransport', 'EventSource']) {
    const Real = window[name];
    if (!Real) continue;
    const Recorded = function (url, options) { urls.push(String(url)); return new Real(url, options); };
    Recorded.prototype = Real.prototype;
    for (const constant of ['CONNECTING', 'OPEN', 'CLOSING', 'CLOSED']) {
      if (constant in Real) Recorded[constant] = Real[constant];
    }
    window[name] = Recorded;
  }
})()";

#[tokio::test]
async fn the_client_api_paces_acknowledges_refuses_and_closes() {
    let Some((_serial, browser)) =
        take_browser("the_client_api_paces_acknowledges_refuses_and_closes").await
    else {
        return;
    };
    let secret = "browser-tests-sign-tokens-with-this-secret";
    let server = start_with(|config| config.token_secret(secret)).await;
    let mint = |secret: &str, user: &str, name: &str| {
        let claims = wtchat::auth::Claims {
            sub: user.into(),
            name: name.into(),
            rooms: vec!["*".into()],
            exp: wtchat::auth::unix_now() + 600,
        };
        wtchat::auth::mint(secret.as_bytes(), &claims)
    };
    let token = mint(secret, "42", "Tokened Ann");
    let watcher = mint(secret, "7", "Watcher");
    let forged = mint("not the secret", "42", "Mallory");
    server
        .chat
        .ban(Some("no-entry"), "42", std::time::Duration::from_secs(600))
        .await
        .unwrap();
    let page = browser.page("api", 1024, 768, Some(RECORD_URLS)).await;
    // The demo page's join screen: the server's origin, and no connection of its own.
    page.goto(&demo_url(&server, "")).await;
    for transport in ["webtransport", "websocket"] {
        let started = Instant::now();
        let got = page
            .eval(&format!(
                "{API_CHECKS}({}, {}, {}, {})",
                json!(transport),
                json!(token),
                json!(watcher),
                json!(forged)
            ))
            .await;
        eprintln!(
            "{transport}: client API checks took {:?}",
            started.elapsed()
        );
        assert_eq!(got["transport"], transport);
        assert_eq!(got["name"], "Tokened Ann", "{got}");
        assert_eq!(got["me"], "Tokened Ann");
        let seqs: Vec<u64> = serde_json::from_value(got["seqs"].clone()).unwrap();
        assert_eq!(
            seqs,
            (1..=45).collect::<Vec<_>>(),
            "acked in order, none dropped"
        );
        let texts: Vec<String> = serde_json::from_value(got["texts"].clone()).unwrap();
        assert_eq!(
            texts,
            (0..45).map(|i| format!("burst {i}")).collect::<Vec<_>>()
        );
        assert_eq!(got["mine"], true);
        assert_eq!(got["empty"], "invalid_text");
        assert_eq!(got["tooLong"], "text_too_long");
        assert_eq!(got["serverTooLong"], "text_too_long");
        assert_eq!(
            got["typing"],
            json!([true, false]),
            "typing notices are throttled"
        );
        assert_eq!(got["badRoom"], "invalid_room");
        assert_eq!(got["badToken"], "unauthorized");
        assert_eq!(got["banned"], "banned");
        assert_eq!(got["afterClose"], "closed");
        assert_eq!(got["statuses"], json!(["closed"]));
        assert_eq!(
            got["presence"],
            json!([["join", "Tokened Ann", 2], ["leave", "Tokened Ann", 1]]),
            "the watcher saw the token's name join and, on close, leave"
        );
        assert_eq!(got["watcherSaw"], 45);
    }
    // The tokens went in a header, for single-use tickets: no URL carried one (a proxy's
    // access log keeps URLs).
    let urls: Vec<String> = serde_json::from_value(page.eval("window.__urls").await).unwrap();
    assert!(urls.len() >= 8, "{urls:?}");
    for url in &urls {
        assert!(url.contains("ticket=") && !url.contains("token="), "{url}");
    }
    for token in [&token, &watcher, &forged] {
        assert!(!urls.iter().any(|u| u.contains(token.as_str())));
    }
    // The forged token's ticket request, refused with 401 (once per transport), is the one
    // thing Chromium logs as an error: a failed request.
    let (refused, others): (Vec<_>, Vec<_>) = page.console_errors().into_iter().partition(|e| {
        e.source == "network"
            && e.text.contains("401 (Unauthorized)")
            && e.text.contains("/wtchat/ticket")
    });
    assert_eq!(refused.len(), 2, "{refused:#?}");
    assert!(others.is_empty(), "console errors: {others:#?}");
}

#[tokio::test]
async fn a_page_of_another_origin_loads_the_client_from_the_chat_server() {
    let Some((_serial, browser)) =
        take_browser("a_page_of_another_origin_loads_the_client_from_the_chat_server").await
    else {
        return;
    };
    // The page is http://localhost:PORT, the chat server http://127.0.0.1:PORT: two origins,
    // as for a site that puts the client on its own pages (the origin itself is allowed).
    let server = start().await;
    let port = server.http.port();
    let page = browser.page("other-origin", 1024, 768, None).await;
    page.goto(&format!("http://localhost:{port}/")).await;
    for transport in ["webtransport", "websocket"] {
        let got = page
            .eval(&format!(
                r#"(async () => {{
                    const {{ connect }} = await import("http://127.0.0.1:{port}/wtchat/wtchat.js");
                    const chat = await connect({{ server: "http://127.0.0.1:{port}", room: "embedded",
                                                  name: "guest", transport: "{transport}" }});
                    const ack = await chat.send("from another origin");
                    const used = chat.transport;
                    chat.close();
                    return [used, ack.seq > 0];
                }})()"#
            ))
            .await;
        assert_eq!(got, json!([transport, true]));
    }
    assert_no_console_errors(&page);
}

#[tokio::test]
async fn pages_that_only_read_outlive_the_idle_timeout() {
    let Some((_serial, browser)) =
        take_browser("pages_that_only_read_outlive_the_idle_timeout").await
    else {
        return;
    };
    // Idle after one second: the client keeps alive well within it, busy or quiet.
    let server = start_with(|c| c.idle_timeout(std::time::Duration::from_secs(1))).await;
    let (a, b) = open_ann_and_bob(&browser, &server, "readers").await;
    a.wait_members(&["ann", "bob"]).await;
    let ids = (
        member_id(&server, "readers", "ann").await,
        member_id(&server, "readers", "bob").await,
    );
    // Four seconds in which the pages only read: the host posts every half second.
    let mut want = Vec::new();
    let mut every = tokio::time::interval(std::time::Duration::from_millis(500));
    for i in 1..=8 {
        every.tick().await;
        let text = format!("news {i}");
        server.chat.publish("readers", "Host", &text).await.unwrap();
        want.push(("Host", text));
    }
    // Then some quiet, longer than the timeout.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let want: Vec<(u64, String, String)> = want
        .iter()
        .enumerate()
        .map(|(i, (from, text))| (i as u64 + 1, from.to_string(), text.clone()))
        .collect();
    assert_eq!(a.messages(8).await, want);
    assert_eq!(b.messages(8).await, want);
    // The same connections throughout: same member ids, never reconnecting.
    assert_eq!(
        (
            member_id(&server, "readers", "ann").await,
            member_id(&server, "readers", "bob").await
        ),
        ids
    );
    assert_eq!(
        a.eval("window.__statusLog.filter(s => s !== 'connected')")
            .await,
        json!([])
    );
    assert_no_console_errors(&a);
    assert_no_console_errors(&b);
}

/// A client whose pacing is defeated (as when a stalled network delivers a backlog at
/// once) sends eight messages into a server allowing 2 frames/s, and a ninth while the
/// refused ones wait for their retry: everything is stored, in the order it was sent.
const RATE_LIMITED_ORDER: &str = r#"(async (transport) => {
  const { connect } = await import("/wtchat/wtchat.js");
  const chat = await connect({ room: `order-${transport}`, name: "eager", transport });
  chat._link._rate = () => 1000;
  chat._link._burst = () => 1000;
  chat._link._tokens = 1000;
  const sends = Array.from({ length: 8 }, (_, i) => chat.send(`m${i}`));
  await new Promise((resolve) => setTimeout(resolve, 1500));
  sends.push(chat.send("m8"));
  const acks = await Promise.all(sends);
  const result = { seqs: acks.map((a) => a.seq), texts: chat.messages.map((m) => m.text) };
  chat.close();
  return result;
})"#;

#[tokio::test]
async fn a_rate_limited_send_keeps_its_place_in_line() {
    let Some((_serial, browser)) =
        take_browser("a_rate_limited_send_keeps_its_place_in_line").await
    else {
        return;
    };
    let server = start_with(|c| c.frames_per_second(2).frame_burst(2)).await;
    let page = browser.page("order", 800, 600, None).await;
    page.goto(&demo_url(&server, "")).await;
    for transport in ["webtransport", "websocket"] {
        let got = page
            .eval(&format!("{RATE_LIMITED_ORDER}({})", json!(transport)))
            .await;
        let seqs: Vec<u64> = serde_json::from_value(got["seqs"].clone()).unwrap();
        assert_eq!(seqs, (1..=9).collect::<Vec<_>>(), "{transport}: {got}");
        let texts: Vec<String> = serde_json::from_value(got["texts"].clone()).unwrap();
        assert_eq!(
            texts,
            (0..9).map(|i| format!("m{i}")).collect::<Vec<_>>(),
            "{transport}"
        );
    }
    assert_no_console_errors(&page);
}

#[tokio::test]
async fn the_hosts_login_is_the_chat_identity_over_webtransport() {
    let Some((_serial, browser)) =
        take_browser("the_hosts_login_is_the_chat_identity_over_webtransport").await
    else {
        return;
    };
    // examples/axum_host.rs as it is: a cookie login, and a hook that reads the cookie.
    let server = start_host(host::chat_config, host::app).await;
    let site = format!("http://127.0.0.1:{}", server.http.port());
    let mut pages = Vec::new();
    for (label, user) in [("A", "ann"), ("B", "bob")] {
        let page = browser.page(label, 1024, 768, None).await;
        // The login redirects to the host's page, whose script is `connect({room})`.
        page.goto(&format!("{site}/login?name={user}")).await;
        page.wait_for(
            "connected over WebTransport",
            "window.chat?.status === 'connected' && window.chat.transport === 'webtransport'",
        )
        .await;
        pages.push(page);
    }
    // Dan's browser has neither WebTransport nor WebSocket: SSE, with its own ticket.
    let d = browser.page("D", 1024, 768, Some(NO_STREAMS)).await;
    d.goto(&format!("{site}/login?name=dan")).await;
    d.wait_for(
        "connected over SSE",
        "window.chat?.status === 'connected' && window.chat.transport === 'sse'",
    )
    .await;
    assert_eq!(d.eval("window.chat.me.name").await, "Dan");
    pages.push(d);
    let (a, b) = (&pages[0], &pages[1]);
    assert_eq!(a.eval("window.chat.name").await, "Ann");
    assert_eq!(b.eval("window.chat.me.name").await, "Bob");
    // Ann chats through the host's own form; Bob's list shows it under her host name.
    a.type_and_enter("#text", "hello from the host page").await;
    let seen = b
        .wait_for(
            "Ann's message on Bob's page",
            "[...document.querySelectorAll('#messages li')].map(li => li.textContent).join('|') || null",
        )
        .await;
    assert_eq!(seen, "Ann: hello from the host page");

    // Not logged in: told so, once, and no reconnecting loop.
    let c = browser.page("C", 1024, 768, None).await;
    c.goto(&format!("{site}/")).await;
    let refused = c
        .eval(
            "import('/wtchat/wtchat.js').then(({ connect }) => connect({ room: 'lobby' }))
               .then(() => 'connected', (e) => [e.code, e.message])",
        )
        .await;
    assert_eq!(refused, json!(["unauthorized", "log in first"]));
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let asked = c
        .eval("performance.getEntriesByType('resource').filter(e => e.name.endsWith('/wtchat/ticket')).length")
        .await;
    assert_eq!(asked, 1, "one ticket request, and no retry after a refusal");
    assert_eq!(
        server.chat.members("lobby").await.unwrap().len(),
        3,
        "only Ann, Bob and Dan are in"
    );
    for page in &pages {
        assert_no_console_errors(page);
    }
}

/// A page of the chat server's origin with nothing of the chat on it (`/wtchat/health`),
/// for a test's script to import the client and use it (`init`: run before the page).
async fn bare_page<'b>(browser: &'b Browser, server: &TestServer, init: Option<&str>) -> Page<'b> {
    let page = browser.page("A", 1024, 768, init).await;
    let port = server.http.port();
    page.goto(&format!("http://127.0.0.1:{port}/wtchat/health"))
        .await;
    page
}

/// A page told to wait for its ticket (429, `Retry-After: 1`: one ticket a second, and the
/// page took the only one) waits that long before it asks again, not its shorter backoff,
/// then connects.
#[tokio::test]
async fn a_page_told_to_wait_for_its_ticket_waits_that_long_then_connects() {
    let Some((_serial, browser)) =
        take_browser("a_page_told_to_wait_for_its_ticket_waits_that_long_then_connects").await
    else {
        return;
    };
    let server = start_with(|c| {
        c.ticket_rate(1)
            .ticket_burst(1)
            .auth(|_| async { Ok::<_, wtchat::Refusal>(wtchat::Identity::new("42", "Ann")) })
    })
    .await;
    let page = bare_page(&browser, &server, None).await;
    let run = page
        .eval(
            "import('/wtchat/wtchat.js').then(async ({ connect }) => {
               const taken = await fetch('/wtchat/ticket', { method: 'POST' });
               const started = performance.now();
               const waits = [];
               const chat = await connect({ room: 'lobby', on: { status: (s) => {
                 if (s.delay) waits.push([s.delay, s.error ?? s.reason]);
               } } });
               const asked = performance.getEntriesByType('resource')
                 .filter((e) => e.name.endsWith('/wtchat/ticket') && e.startTime >= started)
                 .map((e) => e.startTime - started);
               return { taken: taken.status, waits, asked, name: chat.me.name };
             })",
        )
        .await;
    assert_eq!(run["taken"], 200, "{run}");
    assert_eq!(run["name"], "Ann", "{run}");
    // One wait, for the refused ticket, as long as the server asked.
    let waits = run["waits"].as_array().unwrap();
    assert_eq!(waits.len(), 1, "{run}");
    assert_eq!(waits[0][1], "ticket: too many requests", "{run}");
    assert!(waits[0][0].as_f64().unwrap() >= 1000.0, "{run}");
    // The ticket it connected with was asked for after it. (The refused request, whose
    // body the client never reads, has no timing entry.)
    let asked = run["asked"].as_array().unwrap();
    assert_eq!(asked.len(), 1, "{run}");
    assert!(asked[0].as_f64().unwrap() >= 1000.0, "{run}");
}

/// Posts are bounded at 1 MiB whatever the frame limit: under a frame limit raised to
/// 90,000 bytes, a page on SSE in 16 rooms that sends a message of the longest text into
/// each at once (1.3 MB of frames; one send at a time per room) splits them over posts
/// that fit (a post over the bound would be refused, and cost a reconnect), and every one
/// is stored.
#[tokio::test]
async fn a_page_on_sse_splits_its_frames_over_posts_that_fit() {
    let Some((_serial, browser)) =
        take_browser("a_page_on_sse_splits_its_frames_over_posts_that_fit").await
    else {
        return;
    };
    let server = start_with(|c| c.max_frame_bytes(90_000).max_text_chars(20_000)).await;
    let page = bare_page(&browser, &server, Some(NO_STREAMS)).await;
    let run = page
        .eval(
            "import('/wtchat/wtchat.js').then(async ({ connect }) => {
               const statuses = [];
               const on = { status: (s) => statuses.push(s.status) };
               const first = await connect({ room: 'r0', name: 'ann', on });
               const rooms = [first];
               for (let i = 1; i < 16; i++) rooms.push(await first.join(`r${i}`));
               const text = '\u{1F600}'.repeat(20000);
               const acks = await Promise.all(rooms.map((room) => room.send(text)));
               return { transport: first.transport, seqs: acks.map((a) => a.seq), statuses };
             })",
        )
        .await;
    assert_eq!(run["transport"], "sse", "{run}");
    assert_eq!(run["seqs"], json!(vec![1; 16]), "{run}");
    assert_eq!(
        run["statuses"],
        json!(["connecting", "connected"]),
        "never reconnecting: {run}"
    );
    for room in 0..16 {
        let page = server
            .chat
            .history(&format!("r{room}"), None, 10)
            .await
            .unwrap();
        assert_eq!(page.messages.len(), 1, "r{room}");
    }
}

/// The demo page's message list.
const MESSAGE_LIST: &str = "[data-testid=message-list]";

/// How many messages the demo page shows.
const SHOWN: &str = "document.querySelectorAll('[data-testid=message]').length";

/// Whether the demo page says the room has no older messages.
const AT_THE_BEGINNING: &str = "!!document.querySelector('[data-testid=history-start]')";

/// `(seq, "Host", "message seq")` for each of `seqs`: what the host published.
fn host_messages(seqs: impl IntoIterator<Item = u64>) -> Vec<(u64, String, String)> {
    seqs.into_iter()
        .map(|i| (i, "Host".to_string(), format!("message {i}")))
        .collect()
}

/// Publishes "message 1", "message 2", … up to `n` into `room` as the host.
async fn publish_numbered(server: &TestServer, room: &str, n: u64) {
    for i in 1..=n {
        server
            .chat
            .publish(room, "Host", &format!("message {i}"))
            .await
            .unwrap();
    }
}

/// A server keeping its rooms in an SQLite file in `dir`, replaying the newest 10 on join.
async fn start_durable(dir: &tempfile::TempDir) -> TestServer {
    start_with(|c| {
        c.engine(Engine::Sqlite(dir.path().join("chat.db")))
            .history(10)
    })
    .await
}

/// Scrolls the demo page's message list up to the top, again and again, as a reader does,
/// until the page says the room has no older messages; returns how many times. Each time a
/// page of older messages appears above, and the message that was at the top stays in view.
async fn scroll_to_the_beginning(page: &Page<'_>) -> usize {
    let mut scrolls = 0;
    while page.eval(AT_THE_BEGINNING).await != json!(true) {
        let (shown, oldest) = (
            page.eval(SHOWN).await,
            page.eval("document.querySelector('[data-testid=message]').dataset.seq")
                .await,
        );
        page.wheel(MESSAGE_LIST, -100_000.0).await;
        page.wait_for(
            "older messages, or the room's beginning",
            &format!("{SHOWN} > {shown} || {AT_THE_BEGINNING}"),
        )
        .await;
        let in_view = page
            .eval(&format!(
                "(() => {{ const list = document.querySelector('{MESSAGE_LIST}');
                          const m = list.querySelector('[data-testid=message][data-seq=\"{oldest}\"]');
                          const l = list.getBoundingClientRect(), r = m.getBoundingClientRect();
                          return r.top >= l.top && r.bottom <= l.bottom; }})()",
                oldest = oldest.as_str().unwrap()
            ))
            .await;
        assert_eq!(
            in_view,
            json!(true),
            "[{}] message {oldest} left the view",
            page.name
        );
        scrolls += 1;
        assert!(
            scrolls <= 10,
            "[{}] still paging after {scrolls} scrolls",
            page.name
        );
    }
    scrolls
}

#[tokio::test]
async fn a_page_scrolled_to_the_top_pages_back_through_the_whole_room() {
    let Some((_serial, browser)) =
        take_browser("a_page_scrolled_to_the_top_pages_back_through_the_whole_room").await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = start_durable(&dir).await;
    let started = Instant::now();
    publish_numbered(&server, "archive", 250).await;
    eprintln!("250 messages stored in {:?}", started.elapsed());

    let page = open_chat(&browser, &server, "A", (1024, 768), None, "archive", "ann").await;
    page.wait_connected("webtransport").await;
    // The join brought the newest 10, at the bottom of the list.
    assert_eq!(
        page.eval("window.chat.messages.map(m => m.seq)").await,
        json!((241..=250).collect::<Vec<_>>())
    );
    assert_eq!(page.messages(10).await.last(), host_messages([250]).last());

    let started = Instant::now();
    let scrolls = scroll_to_the_beginning(&page).await;
    eprintln!(
        "paged back through 250 messages in {scrolls} scrolls, {:?}",
        started.elapsed()
    );
    assert_eq!(page.messages(250).await, host_messages(1..=250));
    page.wheel(MESSAGE_LIST, -100_000.0).await;
    page.wait_for(
        "the list scrolled to its top",
        &format!("document.querySelector('{MESSAGE_LIST}').scrollTop === 0"),
    )
    .await;
    page.screenshot("history-beginning-desktop").await;

    // The client API itself: pages below a sequence number, several at once answered in
    // order, and a room this chat is not in refused.
    let got = page
        .eval(
            r#"(async () => {
              const seqs = (page) => [page.messages.map((m) => m.seq), page.more];
              const pages = await Promise.all([
                chat.history({ before: 5, limit: 3 }), chat.history({ before: 3 }), chat.history({ limit: 2 }),
              ]);
              const first = pages[0].messages[0];
              const other = await chat.history({ room: "elsewhere" }).then(() => "resolved", (e) => e.code);
              return { pages: pages.map(seqs), first: [first.room, first.seq, first.from, first.text, first.mine], other };
            })()"#,
        )
        .await;
    assert_eq!(
        got,
        json!({
            "pages": [[[2, 3, 4], true], [[1, 2], false], [[249, 250], true]],
            "first": ["archive", 2, "Host", "message 2", false],
            "other": "not_joined",
        })
    );
    assert_no_console_errors(&page);
}

#[tokio::test]
async fn messages_the_host_deletes_leave_the_pages() {
    let Some((_serial, browser)) = take_browser("messages_the_host_deletes_leave_the_pages").await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = start_durable(&dir).await;
    publish_numbered(&server, "notes", 12).await;
    // Deleted before anyone looks: paging back does not bring it.
    assert_eq!(server.chat.delete_message("notes", 2).await, Ok(true));
    let (a, b) = open_ann_and_bob(&browser, &server, "notes").await;
    for page in [&a, &b] {
        scroll_to_the_beginning(page).await;
        assert_eq!(
            page.messages(11).await,
            host_messages([1].into_iter().chain(3..=12))
        );
    }

    // Deleted while shown: the first message, under the sender's name, and one amid others.
    for seq in [1, 7] {
        assert_eq!(server.chat.delete_message("notes", seq).await, Ok(true));
    }
    let left = host_messages([3, 4, 5, 6, 8, 9, 10, 11, 12]);
    for page in [&a, &b] {
        page.wait_for(
            "the deleted messages to go",
            &format!("{SHOWN} === {}", left.len()),
        )
        .await;
        assert_eq!(page.messages(left.len()).await, left);
        assert_eq!(
            page.eval("window.chat.messages.map(m => m.seq)").await,
            json!([3, 4, 5, 6, 8, 9, 10, 11, 12]),
            "[{}]",
            page.name
        );
        // The sender's name moved down to what is now the first message.
        assert_eq!(
            page.eval("document.querySelector('[data-testid=message]').classList.contains('cont')")
                .await,
            json!(false),
            "[{}]",
            page.name
        );
    }
    assert_eq!(server.chat.delete_message("notes", 7).await, Ok(false));
    a.screenshot("deleted-desktop").await;
    assert_no_console_errors(&a);
    assert_no_console_errors(&b);
}

/// Run on a joined demo page: the next send it makes is answered as by a server that could
/// not store it (`storage_failed`: neither acknowledged nor delivered), once.
/// Notes the code of every error frame the page's client receives, and changes nothing.
const RECORD_ERRORS: &str = r#"(() => {
  const chat = window.chat;
  const onFrame = chat._onFrame.bind(chat);
  window.__errors = [];
  chat._onFrame = (frame) => {
    if (frame && frame.type === "error") window.__errors.push(frame.code);
    onFrame(frame);
  };
})()"#;

#[tokio::test]
async fn a_send_the_server_could_not_store_goes_again_in_its_place() {
    let Some((_serial, browser)) =
        take_browser("a_send_the_server_could_not_store_goes_again_in_its_place").await
    else {
        return;
    };
    // A real full disk under the server's database.
    let dir = tempfile::tempdir().unwrap();
    let disk = common::SmallDisk::new(dir.path());
    let db = disk.path().join("chat.db");
    let server = start_with(move |b| b.engine(Engine::Sqlite(db))).await;
    let page = open_chat(&browser, &server, "A", (1024, 768), None, "disk", "ann").await;
    page.wait_connected("webtransport").await;
    page.eval(RECORD_ERRORS).await;
    say(&page, "stored before").await;
    page.messages(1).await;
    disk.fill(0);
    // The host's own publishing (into another room) shows the disk is full now.
    let big = "x".repeat(3000);
    let mut fit = 0;
    while server.chat.publish("probe", "host", &big).await.is_ok() {
        fit += 1;
        assert!(fit < 1000, "the disk never filled");
    }
    say(&page, "refused once").await;
    page.wait_for(
        "the server's refusal",
        "window.__errors.includes('storage_failed')",
    )
    .await;
    assert_eq!(
        page.eval("document.querySelectorAll('[data-testid=pending-message]').length")
            .await,
        1,
        "neither acknowledged nor shown as sent"
    );
    say(&page, "sent after it").await;
    disk.free();
    // The client tries again by itself, and the message takes its place, before the next.
    assert_eq!(
        page.messages(3).await,
        numbered(&[
            ("ann", "stored before"),
            ("ann", "refused once"),
            ("ann", "sent after it")
        ])
    );
    assert_eq!(
        page.eval("document.querySelectorAll('[data-testid=pending-message]').length")
            .await,
        0
    );
    assert_no_console_errors(&page);
}

/// The member ids the demo page shows, in its order.
const SHOWN_MEMBER_IDS: &str =
    "[...document.querySelectorAll('[data-testid=member]')].map(li => Number(li.dataset.memberId))";

/// Pages through the room with `chat.membersPage()`, `limit` at a time, from the first:
/// what the pages held and how many there were, then what `chat.members` holds, `[id, name]`
/// each.
const PAGE_THROUGH_MEMBERS: &str = r#"(async (limit) => {
  const pair = (m) => [m.id, m.name];
  const members = [];
  let pages = 0;
  for (let after; ; ) {
    const page = await window.chat.membersPage({ after, limit });
    pages += 1;
    members.push(...page.members.map(pair));
    if (page.next === null) break;
    after = page.next;
  }
  return { members, pages, known: window.chat.members.map(pair), complete: window.chat.membersComplete };
})"#;

/// Records, from now on, the page's `membersPage()` calls and the updates without lists it
/// gets: `window.__asks` (`[ms, after]` each) and `window.__countsOnly` (ms each).
const RECORD_MEMBER_REFRESHES: &str = r#"(() => {
  window.__asks = [];
  window.__countsOnly = [];
  const chat = window.chat;
  const page = chat.membersPage.bind(chat);
  chat.membersPage = (options = {}) => {
    window.__asks.push([performance.now(), options.after ?? null]);
    return page(options);
  };
  chat.on("presence", (p) => {
    if (p.event === "update" && !p.joined) window.__countsOnly.push(performance.now());
  });
})()"#;

/// `room`'s members as the server has them, `(id, name)` each, by id.
async fn server_members(server: &TestServer, room: &str) -> Vec<(u64, String)> {
    let mut members: Vec<(u64, String)> = server
        .chat
        .members(room)
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.id, m.name))
        .collect();
    members.sort();
    members
}

/// Waits until the server has `n` members in `room`.
async fn wait_server_members(server: &TestServer, room: &str, n: usize) {
    let deadline = Instant::now() + common::DEADLINE;
    while server.chat.members(room).await.unwrap().len() != n {
        assert!(
            Instant::now() < deadline,
            "{room} has {:?}, not {n} members",
            server_members(server, room).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Waits until the page, and its chat, say the room has `n` members (fewer than 1,000: no
/// digit grouping).
async fn wait_member_count(page: &Page<'_>, n: usize) {
    page.wait_for(
        &format!("a count of {n} members"),
        &format!(
            "window.chat.memberCount === {n}
             && document.querySelector('[data-testid=member-count]').textContent === '{n}'"
        ),
    )
    .await;
}

/// Waits until the page shows exactly everyone the server has in `room`, by name.
async fn wait_everyone(page: &Page<'_>, server: &TestServer, room: &str) {
    let members = server_members(server, room).await;
    let names: Vec<&str> = members.iter().map(|(_, name)| name.as_str()).collect();
    wait_member_count(page, names.len()).await;
    page.wait_members(&names).await;
    assert_eq!(
        page.eval("[window.chat.membersComplete, document.querySelector('#members-more').hidden]")
            .await,
        json!([true, true]),
        "[{}] complete, with nothing more to load",
        page.name
    );
}

/// Waits until the page shows the server's first `n` members of `room`, by id, and the
/// room's count, with more to load.
async fn wait_first_members(page: &Page<'_>, server: &TestServer, room: &str, n: usize) {
    let members = server_members(server, room).await;
    let first: Vec<u64> = members.iter().take(n).map(|(id, _)| *id).collect();
    wait_member_count(page, members.len()).await;
    page.wait_for(
        &format!("the first {n} members by id"),
        &format!(
            "JSON.stringify({SHOWN_MEMBER_IDS}) === {} && window.chat.membersNext === {}",
            json!(json!(first).to_string()),
            first[n - 1]
        ),
    )
    .await;
    assert_eq!(
        page.eval("document.querySelector('[data-testid=members-shown]').textContent")
            .await,
        format!("Showing {n} of {}", members.len()),
        "[{}]",
        page.name
    );
}

/// The presence notices the page shows.
async fn presence_notices(page: &Page<'_>) -> Value {
    page.eval(
        "[...document.querySelectorAll('[data-testid=presence-notice]')].map(n => n.textContent)",
    )
    .await
}

#[tokio::test]
async fn pages_in_a_big_room_show_its_count_and_page_through_its_members() {
    let Some((_serial, browser)) =
        take_browser("pages_in_a_big_room_show_its_count_and_page_through_its_members").await
    else {
        return;
    };
    // Big from 5 members: presence in updates once a second, no frame per join or leave.
    let server = start_with(|config| config.presence_threshold(5)).await;
    let room = "big";
    let mut pages = Vec::new();
    for (label, size, init, transport) in [
        ("P1", (1024, 768), None, "webtransport"),
        ("P2", (1024, 768), Some(NO_WEBTRANSPORT), "websocket"),
        ("P3", (390, 844), None, "webtransport"),
    ] {
        let name = format!("page{}", pages.len() + 1);
        let page = open_chat(&browser, &server, label, size, init, room, &name).await;
        page.wait_connected(transport).await;
        pages.push(page);
    }

    let started = Instant::now();
    let mut bots = Vec::new();
    for i in 0..20 {
        let mut bot = common::Client::ws(&server).await;
        let (joined, _) = bot.join(room, &format!("bot{i:02}")).await;
        // Fewer than a page: `joined` lists everyone, whatever the room's size.
        assert_eq!(joined["count"], 4 + i);
        assert_eq!(joined["members"].as_array().unwrap().len(), 4 + i);
        bots.push(bot);
    }
    for page in &pages {
        wait_everyone(page, &server, room).await;
    }
    eprintln!(
        "20 joins: every page shows 23 members after {:?}",
        started.elapsed()
    );

    // Eight go: four say so, four just drop their connections.
    let started = Instant::now();
    let mut leaving = Vec::new();
    for (i, mut bot) in bots.drain(..8).enumerate() {
        if i % 2 == 0 {
            bot.send(json!({"type": "leave", "room": room})).await;
            leaving.push(bot);
        }
    }
    wait_server_members(&server, room, 15).await;
    for page in &pages {
        wait_everyone(page, &server, room).await;
    }
    eprintln!(
        "8 leaves: every page shows 15 members after {:?}",
        started.elapsed()
    );
    pages[2].screenshot("big-room-phone").await;

    // Paging through the room, 4 at a time, gives the server's list; and the chat's own.
    let want = json!(server_members(&server, room).await);
    for page in &pages {
        let got = page.eval(&format!("{PAGE_THROUGH_MEMBERS}(4)")).await;
        assert_eq!(got["members"], want, "[{}]", page.name);
        assert_eq!(got["pages"], 4, "[{}]", page.name);
        assert_eq!(got["known"], want, "[{}]", page.name);
        assert_eq!(got["complete"], true, "[{}]", page.name);
    }

    // Under the threshold again: everyone gets the whole list, and joins and leaves are
    // told one by one again.
    let started = Instant::now();
    let last = bots.pop().unwrap();
    drop(bots);
    wait_server_members(&server, room, 4).await;
    for page in &pages {
        wait_everyone(page, &server, room).await;
    }
    eprintln!(
        "11 more leaves: every page shows 4 members after {:?}",
        started.elapsed()
    );
    drop(last);
    wait_server_members(&server, room, 3).await;
    for page in &pages {
        wait_everyone(page, &server, room).await;
    }
    // Notices for the small room's joins and leaves only: none for the big room's.
    let notices = [
        json!(["page2 joined", "page3 joined", "bot00 joined", "bot19 left"]),
        json!(["page3 joined", "bot00 joined", "bot19 left"]),
        json!(["bot00 joined", "bot19 left"]),
    ];
    for (page, want) in pages.iter().zip(notices) {
        page.wait_for(
            "bot19's leave told",
            "document.querySelectorAll('[data-testid=presence-notice]').length > 0
             && [...document.querySelectorAll('[data-testid=presence-notice]')].at(-1).textContent === 'bot19 left'",
        )
        .await;
        assert_eq!(presence_notices(page).await, want, "[{}]", page.name);
        assert_no_console_errors(page);
    }
    drop(leaving);
}

#[tokio::test]
async fn a_page_shows_a_crowded_room_a_page_at_a_time() {
    let Some((_serial, browser)) =
        take_browser("a_page_shows_a_crowded_room_a_page_at_a_time").await
    else {
        return;
    };
    let server = start().await;
    let room = "crowd";
    let started = Instant::now();
    let mut bots = Vec::new();
    for i in 0..110 {
        let mut bot = common::Client::ws(&server).await;
        bot.join(room, &format!("bot{i:03}")).await;
        bots.push(bot);
    }
    eprintln!("110 bots joined in {:?}", started.elapsed());
    let ann = open_chat(&browser, &server, "A", (1024, 768), None, room, "ann").await;
    ann.wait_connected("webtransport").await;
    // A phone, with the members behind the "People" button.
    let kim = open_chat(
        &browser,
        &server,
        "K",
        (390, 844),
        Some(NO_WEBTRANSPORT),
        room,
        "kim",
    )
    .await;
    kim.wait_connected("websocket").await;

    // Past 100: the first 100 by id, the count, and a button for more.
    for page in [&ann, &kim] {
        wait_first_members(page, &server, room, 100).await;
    }
    ann.eval("document.querySelector('[data-testid=members-more]').scrollIntoView()")
        .await;
    ann.screenshot("crowded-room-first-page").await;
    let started = Instant::now();
    ann.click("[data-testid=members-more]").await;
    wait_everyone(&ann, &server, room).await;
    eprintln!("\"Show more\" brought the rest in {:?}", started.elapsed());

    // Updates with lists keep everyone exact, and the first page exact.
    for bot in bots.drain(..5) {
        drop(bot);
    }
    for i in 110..113 {
        let mut bot = common::Client::ws(&server).await;
        bot.join(room, &format!("bot{i:03}")).await;
        bots.push(bot);
    }
    wait_server_members(&server, room, 110).await;
    wait_everyone(&ann, &server, room).await;
    wait_first_members(&kim, &server, room, 95).await;

    // Counts only from now on: a page whose list is on screen fetches its first page again,
    // at most once every 3 s; one whose list is behind a button waits till it is shown.
    server.chat.set_presence(room, 100, true);
    for page in [&ann, &kim] {
        page.eval(RECORD_MEMBER_REFRESHES).await;
    }
    let started = Instant::now();
    let mut every = tokio::time::interval(std::time::Duration::from_millis(400));
    for bot in bots.drain(..8) {
        every.tick().await;
        drop(bot);
    }
    wait_server_members(&server, room, 102).await;
    wait_first_members(&ann, &server, room, 100).await;
    eprintln!(
        "8 leaves told by count only: the page shows the new first page after {:?}",
        started.elapsed()
    );
    let asks = ann.eval("window.__asks").await;
    let asks = asks.as_array().unwrap();
    let updates = ann
        .eval("window.__countsOnly.length")
        .await
        .as_u64()
        .unwrap();
    eprintln!("{} updates without lists, {} fetches", updates, asks.len());
    assert!(!asks.is_empty() && asks.len() as u64 <= updates, "{asks:?}");
    for pair in asks.windows(2) {
        let gap = pair[1][0].as_f64().unwrap() - pair[0][0].as_f64().unwrap();
        assert!(gap >= 2990.0, "fetched again after {gap} ms: {asks:?}");
    }
    assert!(
        asks.iter().all(|a| a[1].is_null()),
        "the first page: {asks:?}"
    );
    wait_member_count(&kim, 102).await;
    assert_eq!(kim.eval("window.__asks.length").await, 0);
    assert_eq!(
        kim.eval("window.chat.membersNext === undefined").await,
        true
    );
    kim.click("[data-testid=members-toggle]").await;
    wait_first_members(&kim, &server, room, 100).await;
    kim.screenshot("crowded-room-phone").await;
    for page in [&ann, &kim] {
        assert_no_console_errors(page);
    }
}

#[tokio::test]
async fn pages_on_sse_and_long_polling_chat_with_webtransport_and_websocket_pages() {
    let Some((_serial, browser)) =
        take_browser("pages_on_sse_and_long_polling_chat_with_webtransport_and_websocket_pages")
            .await
    else {
        return;
    };
    let server = start().await;
    let size = (1024, 768);
    let ann = open_chat(&browser, &server, "A", size, None, "mixed", "ann").await;
    let ann_took = ann.wait_connected("webtransport").await;
    let bob = open_chat(
        &browser,
        &server,
        "B",
        size,
        Some(NO_WEBTRANSPORT),
        "mixed",
        "bob",
    )
    .await;
    bob.wait_connected("websocket").await;
    let eve = open_chat(
        &browser,
        &server,
        "E",
        size,
        Some(NO_STREAMS),
        "mixed",
        "eve",
    )
    .await;
    let eve_took = eve.wait_connected("sse").await;
    let pol = open_chat(
        &browser,
        &server,
        "P",
        size,
        Some(NO_EVENT_SOURCE),
        "mixed",
        "pol",
    )
    .await;
    let pol_took = pol.wait_connected("longpoll").await;
    eprintln!(
        "connected in {ann_took:.0} ms (WebTransport), {eve_took:.0} ms (SSE), {pol_took:.0} ms (long polling)"
    );
    for page in [&ann, &bob, &eve, &pol] {
        page.wait_members(&["ann", "bob", "eve", "pol"]).await;
    }
    say(&eve, "eve over SSE").await;
    ann.messages(1).await;
    say(&pol, "pol over long polling").await;
    ann.messages(2).await;
    say(&ann, "ann over WebTransport").await;
    eve.messages(3).await;
    say(&bob, "bob over WebSocket").await;
    let want = numbered(&[
        ("eve", "eve over SSE"),
        ("pol", "pol over long polling"),
        ("ann", "ann over WebTransport"),
        ("bob", "bob over WebSocket"),
    ]);
    for page in [&ann, &bob, &eve, &pol] {
        assert_eq!(page.messages(4).await, want, "[{}]", page.label());
    }
    // A forced reconnect of the SSE page: it comes back on SSE and misses nothing.
    eve.lose_connection().await;
    say(&ann, "while eve reconnects").await;
    eve.wait_connected("sse").await;
    let mut want = want;
    want.push((5, "ann".into(), "while eve reconnects".into()));
    assert_eq!(eve.messages(5).await, want);
    for page in [&ann, &bob, &eve, &pol] {
        assert_no_console_errors(page);
    }
    server.stop().await;
}

/// Run in a page of the server: the browser's own `EventSource`, no wtchat client. It joins
/// room `native` by posting to the stream's session, then only reads, recording every
/// message and session event; the browser reconnects it by itself.
const NATIVE_EVENT_SOURCE: &str = r#"(async () => {
  window.__seen = { sessions: 0, joined: [], messages: [], errors: 0, closed: false };
  const source = new EventSource("/wtchat/sse");
  source.onerror = () => { window.__seen.errors++; window.__seen.closed = source.readyState === EventSource.CLOSED; };
  const session = new Promise((resolve) => {
    source.onmessage = (e) => {
      const frame = JSON.parse(e.data);
      if (frame.type === "session") { window.__seen.sessions++; resolve(frame); }
      if (frame.type === "joined") window.__seen.joined.push({ sender: frame.you.sender, replay: frame.replay, gap: frame.gap });
      if (frame.type === "message") window.__seen.messages.push([frame.seq, frame.text]);
    };
  });
  const { post, secret } = await session;
  const body = JSON.stringify({ type: "join", room: "native", name: "sal" });
  const response = await fetch(post, { method: "POST", body, headers: { "wtchat-secret": secret } });
  return response.status;
})()"#;

#[tokio::test]
async fn the_browsers_own_event_source_reconnect_resumes_without_loss_or_repeats() {
    let Some((_serial, browser)) =
        take_browser("the_browsers_own_event_source_reconnect_resumes_without_loss_or_repeats")
            .await
    else {
        return;
    };
    let server = start().await;
    let mut bob = common::Client::ws(&server).await;
    bob.join("native", "bob").await;
    for n in 1..=3 {
        bob.say("native", &format!("before {n}"), &format!("b{n}"))
            .await;
    }
    let page = browser.page("native", 800, 600, None).await;
    page.goto(&demo_url(&server, "")).await;
    assert_eq!(page.eval(NATIVE_EVENT_SOURCE).await, 204);
    page.wait_for("the history", "window.__seen.messages.length === 3")
        .await;
    // The server drops the stream (4002: reconnect) while bob keeps talking; the
    // EventSource comes back by itself, sending the last event id it saw.
    assert!(
        server
            .chat
            .reconnect_member("native", member_id(&server, "native", "sal").await)
            .await
            .unwrap()
    );
    for n in 4..=6 {
        bob.say("native", &format!("meanwhile {n}"), &format!("b{n}"))
            .await;
    }
    page.wait_for("the second session", "window.__seen.sessions === 2")
        .await;
    bob.say("native", "after 7", "b7").await;
    page.wait_for("every message", "window.__seen.messages.length >= 7")
        .await;
    let seen = page.eval("window.__seen").await;
    let want: Vec<Value> = (1..=7)
        .map(|n| {
            let text = match n {
                1..=3 => format!("before {n}"),
                4..=6 => format!("meanwhile {n}"),
                _ => "after 7".into(),
            };
            json!([n, text])
        })
        .collect();
    assert_eq!(seen["messages"], json!(want), "nothing lost, nothing twice");
    let joined = seen["joined"].as_array().unwrap();
    assert_eq!(joined.len(), 2, "{seen}");
    assert_eq!(joined[0]["sender"], joined[1]["sender"], "the same sender");
    assert_eq!(joined[1]["gap"], false, "{seen}");
    assert_eq!(seen["closed"], false, "the browser reconnected: {seen}");
    assert_eq!(
        server
            .chat
            .members("native")
            .await
            .unwrap()
            .iter()
            .filter(|m| m.name == "sal")
            .count(),
        1
    );
    server.stop().await;
}

/// Run before the page's scripts: no WebTransport, and a WebSocket that never opens (a
/// proxy that swallows the upgrade).
const HANGING_WEBSOCKET: &str = "delete window.WebTransport;
window.WebSocket = function () { return { readyState: 0, send() {}, close() {}, addEventListener() {} }; };
window.WebSocket.CONNECTING = 0; window.WebSocket.OPEN = 1;";

#[tokio::test]
async fn a_websocket_that_hangs_falls_back_to_sse_without_waiting_for_the_attempt_timeout() {
    let Some((_serial, browser)) = take_browser(
        "a_websocket_that_hangs_falls_back_to_sse_without_waiting_for_the_attempt_timeout",
    )
    .await
    else {
        return;
    };
    let server = start().await;
    let page = open_chat(
        &browser,
        &server,
        "H",
        (1024, 768),
        Some(HANGING_WEBSOCKET),
        "hang",
        "hal",
    )
    .await;
    let took = page.wait_connected("sse").await;
    eprintln!("a hanging WebSocket: connected over SSE in {took:.0} ms");
    // The fallback starts after 1.5 s of silence, far below the 10 s attempt timeout.
    assert!((1500.0..4000.0).contains(&took), "{took} ms");
    say(&page, "through the fallback").await;
    assert_eq!(
        page.messages(1).await,
        numbered(&[("hal", "through the fallback")])
    );
    assert_no_console_errors(&page);
    server.stop().await;
}

/// Run in a page of the server: counts the connections the page opens from now on (every
/// WebTransport, WebSocket and EventSource, and every long-polling session), then connects
/// to `lobby-T` over `T` and joins `news-T` and `help-T` on the same connection.
const THREE_ROOMS: &str = r#"(async (transport) => {
  window.__opened = 0;
  for (const name of ["WebTransport", "WebSocket", "EventSource"]) {
    if (!window[name]) continue;
    window[name] = new Proxy(window[name], {
      construct(target, args) { window.__opened++; return Reflect.construct(target, args); },
    });
  }
  const fetchBase = window.fetch;
  window.fetch = (input, init) => {
    if (init?.method === "POST" && String(input).endsWith("/wtchat/poll")) window.__opened++;
    return fetchBase(input, init);
  };
  window.__until = async (what, check) => {
    const end = Date.now() + 10000;
    while (!check()) {
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  window.__texts = (chat) => chat.messages.map((m) => m.text);
  const { connect } = await import("/wtchat/wtchat.js");
  const lobby = await connect({ room: `lobby-${transport}`, name: "pia", transport });
  const [news, help] = await Promise.all([lobby.join(`news-${transport}`), lobby.join(`help-${transport}`)]);
  window.__rooms = { lobby, news, help };
  return {
    opened: window.__opened,
    transports: [lobby.transport, news.transport, help.transport],
    senders: [lobby.me.sender, news.me.sender, help.me.sender],
    again: (await lobby.join(`news-${transport}`)) === news,
  };
})"#;

#[tokio::test]
async fn a_page_chats_in_several_rooms_over_one_connection_on_every_transport() {
    let Some((_serial, browser)) =
        take_browser("a_page_chats_in_several_rooms_over_one_connection_on_every_transport").await
    else {
        return;
    };
    let server = start().await;
    for transport in ["webtransport", "websocket", "sse", "longpoll"] {
        let [lobby, news, help] = ["lobby", "news", "help"].map(|r| format!("{r}-{transport}"));
        let mut bob = common::Client::ws(&server).await;
        for room in [&lobby, &news, &help] {
            bob.join(room, "bob").await;
        }
        let page = browser.page(transport, 800, 600, None).await;
        page.goto(&demo_url(&server, "")).await;
        let setup = page
            .eval(&format!("{THREE_ROOMS}({})", json!(transport)))
            .await;
        assert_eq!(setup["opened"], 1, "{transport}: {setup}");
        assert_eq!(
            setup["transports"],
            json!([transport, transport, transport]),
            "{setup}"
        );
        let senders = setup["senders"].as_array().unwrap();
        assert!(senders.iter().all(|s| s == &senders[0]), "{setup}");
        assert_eq!(setup["again"], true, "joining a joined room gives its chat");

        // Each room's messages reach that room's chat only.
        for room in [&news, &lobby, &help] {
            bob.say(room, &format!("bob in {room}"), &format!("b-{room}"))
                .await;
        }
        page.wait_for(
            "a message in each room",
            "['lobby','news','help'].every((r) => window.__rooms[r].messages.length === 1)",
        )
        .await;
        let texts = page
            .eval("Object.fromEntries(Object.entries(window.__rooms).map(([r, c]) => [r, window.__texts(c)]))")
            .await;
        assert_eq!(
            texts,
            json!({"lobby": [format!("bob in {lobby}")], "news": [format!("bob in {news}")], "help": [format!("bob in {help}")]}),
            "{transport}"
        );

        // Sends from each room's chat reach their room.
        page.eval(
            "Promise.all(Object.entries(window.__rooms).map(([r, c]) => c.send(`pia in ${r}`))).then(() => true)",
        )
        .await;
        let mut heard = std::collections::BTreeMap::new();
        while heard.len() < 3 {
            let m = bob
                .next_matching("pia's messages", |f| {
                    f["type"] == "message" && f["from"] == "pia"
                })
                .await;
            heard.insert(m["room"].as_str().unwrap().to_string(), m["text"].clone());
        }
        for (room, short) in [(&lobby, "lobby"), (&news, "news"), (&help, "help")] {
            assert_eq!(
                heard[room.as_str()],
                format!("pia in {short}"),
                "{transport}"
            );
        }

        // Edits and reactions go both ways on this transport too: Bob edits his message in
        // the lobby and reacts to it, the page shows both, and reacts in turn.
        bob.send(
            json!({"type": "edit", "room": &lobby, "seq": 1, "text": "bob's, edited",
                        "id": "e1"}),
        )
        .await;
        bob.next_matching("the edit's ack", |f| f["type"] == "ack" && f["id"] == "e1")
            .await;
        bob.send(json!({"type": "react", "room": &lobby, "seq": 1, "reaction": "👍", "id": "r1"}))
            .await;
        bob.next_matching("the reaction's ack", |f| {
            f["type"] == "ack" && f["id"] == "r1"
        })
        .await;
        page.wait_for(
            "the edit and the reaction",
            r#"(() => {
              const m = window.__rooms.lobby.messages.find((m) => m.seq === 1);
              return !!m && m.text === "bob's, edited"
                && JSON.stringify(m.reactions) === JSON.stringify([{ reaction: "👍", count: 1, mine: false }]);
            })()"#,
        )
        .await;
        let mine = page
            .eval("window.__rooms.lobby.react(1, '🎉').then((ack) => ack.mine)")
            .await;
        assert_eq!(mine, json!(["🎉"]), "{transport}");
        let update = bob
            .next_matching("the page's reaction", |f| {
                f["type"] == "update" && f["room"] == lobby.as_str() && f["at"] == 5
            })
            .await;
        assert_eq!(
            update["reactions"],
            json!([{"reaction": "👍", "count": 1}, {"reaction": "🎉", "count": 1}]),
            "{transport}"
        );

        // Leaving one room leaves that room only; its messages no longer reach the page.
        page.eval("window.__rooms.help.leave()").await;
        bob.next_matching("pia leaving help", |f| {
            f["type"] == "presence" && f["event"] == "leave" && f["room"] == help.as_str()
        })
        .await;
        bob.say(&help, "help after pia left", "b-help-after").await;
        bob.say(&news, "news after pia left help", "b-news-after")
            .await;
        page.wait_for(
            "the news after leaving help",
            "window.__rooms.news.messages.length === 3",
        )
        .await;
        let help_chat = page
            .eval("({texts: window.__texts(window.__rooms.help), status: window.__rooms.help.status, lobby: window.__rooms.lobby.status})")
            .await;
        assert_eq!(
            help_chat,
            json!({"texts": [format!("bob in {help}"), "pia in help"], "status": "closed", "lobby": "connected"}),
            "{transport}"
        );
        let names = async |room: &str| -> Vec<String> {
            let mut names: Vec<String> = server
                .chat
                .members(room)
                .await
                .unwrap()
                .into_iter()
                .map(|m| m.name)
                .collect();
            names.sort();
            names
        };
        assert_eq!(names(&help).await, ["bob"], "{transport}");

        // The server drops the connection: one new one joins both rooms again, and what
        // was said meanwhile arrives once.
        assert!(
            server
                .chat
                .reconnect_member(&lobby, member_id(&server, &lobby, "pia").await)
                .await
                .unwrap()
        );
        bob.say(&news, "news while pia reconnects", "b-news-during")
            .await;
        page.wait_for(
            "the news said during the reconnect",
            "window.__rooms.news.messages.length === 4 && window.__rooms.lobby.status === 'connected'",
        )
        .await;
        let after = page
            .eval("({opened: window.__opened, news: window.__texts(window.__rooms.news), lobby: window.__texts(window.__rooms.lobby), transport: window.__rooms.news.transport})")
            .await;
        assert_eq!(
            after,
            json!({
                "opened": 2,
                "news": [format!("bob in {news}"), "pia in news", "news after pia left help", "news while pia reconnects"],
                "lobby": ["bob's, edited", "pia in lobby"],
                "transport": transport,
            }),
            "{transport}"
        );
        assert_eq!(names(&news).await, ["bob", "pia"], "{transport}");
        assert_eq!(names(&help).await, ["bob"], "{transport}: not joined again");
        assert_no_console_errors(&page);
    }
    server.stop().await;
}

/// A page in two rooms: what each room's chat records, and the connections it opened.
const TWO_ROOMS: &str = r#"(async (transport) => {
  const { connect } = await import("/wtchat/wtchat.js");
  window.__configs = () => performance.getEntriesByType("resource")
    .filter((e) => e.name.endsWith("/wtchat/config")).length;
  const a = await connect({ room: `ka-${transport}`, name: "kim", transport });
  const b = await a.join(`kb-${transport}`);
  const log = (chat) => {
    const events = [];
    chat.on("status", (s) => events.push(["status", s.status, s.error ?? null]));
    chat.on("error", (e) => events.push(["error", e.code]));
    return events;
  };
  window.__k = { a, b, aEvents: log(a), bEvents: log(b) };
  return [a.me.id, b.me.id];
})"#;

/// The host kicks a page out of one of its two rooms: that room's chat closes with
/// `kicked`, the other goes on over the same connection; kicked out of the second, the
/// page closes and does not come back. On every transport.
#[tokio::test]
async fn a_page_kicked_from_one_room_stays_in_the_other_and_kicked_from_both_stays_out() {
    let Some((_serial, browser)) = take_browser(
        "a_page_kicked_from_one_room_stays_in_the_other_and_kicked_from_both_stays_out",
    )
    .await
    else {
        return;
    };
    let server = start().await;
    for transport in ["webtransport", "websocket", "sse", "longpoll"] {
        let (a, b) = (format!("ka-{transport}"), format!("kb-{transport}"));
        let page = browser.page(transport, 800, 600, None).await;
        page.goto(&demo_url(&server, "")).await;
        let ids = page
            .eval(&format!("{TWO_ROOMS}({})", json!(transport)))
            .await;
        let ids: [u64; 2] = serde_json::from_value(ids).unwrap();
        let configs = page.eval("window.__configs()").await;

        assert!(server.chat.kick_member(&a, ids[0]).await.unwrap());
        let a_events = page
            .wait_for(
                "room a closed",
                "window.__k.a.status === 'closed' && window.__k.aEvents",
            )
            .await;
        assert_eq!(
            a_events,
            json!([["error", "kicked"], ["status", "closed", "kicked"]]),
            "{transport}"
        );
        // The other room goes on, on the same connection.
        let (status, seq, b_events) = serde_json::from_value::<(String, u64, Value)>(
            page.eval(
                "window.__k.b.send('still in b').then((ack) =>
                   [window.__k.b.status, ack.seq, window.__k.bEvents])",
            )
            .await,
        )
        .unwrap();
        assert_eq!((status.as_str(), seq), ("connected", 1), "{transport}");
        assert_eq!(b_events, json!([]), "{transport}");
        assert_eq!(server_members(&server, &a).await, [], "{transport}");
        assert_eq!(server_members(&server, &b).await.len(), 1, "{transport}");
        let refused = page
            .eval("window.__k.a.send('let me back').then(() => 'sent', (e) => e.code)")
            .await;
        assert_eq!(refused, "closed", "{transport}");

        // Out of both: the whole chat closes, with the server's code, and stays closed.
        assert!(server.chat.kick_member(&b, ids[1]).await.unwrap());
        let b_events = page
            .wait_for(
                "room b closed",
                "window.__k.b.status === 'closed' && window.__k.bEvents",
            )
            .await;
        assert_eq!(
            b_events,
            json!([["status", "closed", "kicked"]]),
            "{transport}"
        );
        // A reconnect would fetch the configuration again within its first backoff (at
        // most 0.75 s); none does.
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        assert_eq!(
            page.eval("window.__configs()").await,
            configs,
            "{transport}"
        );
        assert_eq!(server_members(&server, &b).await, [], "{transport}");
        assert_no_console_errors(&page);
    }
}

/// A TCP relay in front of the server whose streams (WebSocket upgrades, SSE streams) can
/// go silent: the ones open at that moment stop passing bytes either way and stay open, as
/// when a NAT forgot the mapping or the Wi-Fi died under a page. Everything else passes. It
/// reads the request line at the start of each request a connection carries (a kept-alive
/// connection may carry a script, then a stream).
struct Relay {
    /// Per connection: whether its request now is a stream, and whether it went silent.
    connections: std::sync::Arc<std::sync::Mutex<Vec<std::sync::Arc<RelayedState>>>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct RelayedState {
    stream: std::sync::atomic::AtomicBool,
    silent: std::sync::atomic::AtomicBool,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Relay {
    /// Listens on `port`, relaying to `upstream`.
    async fn start(port: u16, upstream: std::net::SocketAddr) -> Relay {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let all = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((down, _)) = listener.accept().await else {
                    return;
                };
                let state = std::sync::Arc::new(RelayedState::default());
                all.lock().unwrap().push(state.clone());
                let up = tokio::net::TcpStream::connect(upstream).await.unwrap();
                let (mut down_r, mut down_w) = down.into_split();
                let (mut up_r, mut up_w) = up.into_split();
                let to_server = state.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n @ 1..) = down_r.read(&mut buf).await {
                        let chunk = &buf[..n];
                        if chunk.starts_with(b"GET ") || chunk.starts_with(b"POST ") {
                            let stream = chunk.starts_with(b"GET /wtchat/ws")
                                || chunk.starts_with(b"GET /wtchat/sse");
                            to_server.stream.store(stream, Ordering::SeqCst);
                        }
                        if to_server.silent.load(Ordering::SeqCst) {
                            // Silent, and open: the test's end closes it.
                            std::future::pending::<()>().await;
                        }
                        if up_w.write_all(chunk).await.is_err() {
                            return;
                        }
                    }
                    let _ = up_w.shutdown().await;
                });
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n @ 1..) = up_r.read(&mut buf).await {
                        if state.silent.load(Ordering::SeqCst) {
                            std::future::pending::<()>().await;
                        }
                        if down_w.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                    let _ = down_w.shutdown().await;
                });
            }
        });
        Relay { connections, task }
    }

    /// The streams open now go silent.
    fn go_silent(&self) {
        use std::sync::atomic::Ordering;
        for state in self.connections.lock().unwrap().iter() {
            if state.stream.load(Ordering::SeqCst) {
                state.silent.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// A connection that goes silent without closing — no close, no error, nothing — is given
/// up by the client's keepalive (a ping with no answer within 10 s) and replaced; the page
/// resumes with what it missed meanwhile, once each, in order. Over WebSocket and SSE.
#[tokio::test]
async fn a_connection_that_goes_silent_is_given_up_and_the_page_resumes() {
    let Some((_serial, browser)) =
        take_browser("a_connection_that_goes_silent_is_given_up_and_the_page_resumes").await
    else {
        return;
    };
    // Idle after 3 s: the client pings every second. The page comes through the relay, so
    // its origin is the relay's.
    let port = common::free_port();
    let page_url = format!("http://127.0.0.1:{port}/");
    let origin = page_url.trim_end_matches('/').to_string();
    let server = start_with(|c| {
        c.idle_timeout(std::time::Duration::from_secs(3))
            .allow_origin(origin)
    })
    .await;
    let relay = Relay::start(port, server.http).await;
    for transport in ["websocket", "sse"] {
        let room = format!("silent-{transport}");
        let page = browser.page(transport, 800, 600, Some(STATUS_LOG)).await;
        page.goto(&page_url).await;
        let joined = page
            .eval(&format!(
                r#"import("/wtchat/wtchat.js").then(async ({{ connect }}) => {{
                     window.chat = await connect({{ room: "{room}", name: "sid", transport: "{transport}" }});
                     window.__statuses = [];
                     window.chat.on("status", (s) => window.__statuses.push(s.status));
                     return window.chat.transport;
                   }})"#
            ))
            .await;
        assert_eq!(joined, transport);
        server.chat.publish(&room, "Host", "before").await.unwrap();
        page.wait_for("the first message", "window.chat.messages.length === 1")
            .await;

        relay.go_silent();
        let silent_at = Instant::now();
        for text in ["during 1", "during 2"] {
            server.chat.publish(&room, "Host", text).await.unwrap();
        }
        // Given up about 11 s in (a ping a second, 10 s without an answer), then replaced.
        page.wait_for("given up", "window.__statuses.includes('reconnecting')")
            .await;
        page.wait_for("connected again", "window.chat.status === 'connected'")
            .await;
        eprintln!(
            "{transport}: silent connection given up and replaced in {:?}",
            silent_at.elapsed()
        );
        server.chat.publish(&room, "Host", "after").await.unwrap();
        let seen = page
            .wait_for(
                "every message once",
                "window.chat.messages.length >= 4 && window.chat.messages.map((m) => [m.seq, m.text])",
            )
            .await;
        assert_eq!(
            seen,
            json!([
                [1, "before"],
                [2, "during 1"],
                [3, "during 2"],
                [4, "after"]
            ]),
            "{transport}"
        );
        assert_no_console_errors(&page);
    }
}

/// `connect()` to a server that is down, or that takes connections and never answers: it
/// rejects with the client's own code (`unreachable`, `timeout`) by its `timeout`.
#[tokio::test]
async fn connect_to_a_server_that_is_down_or_silent_rejects_by_its_timeout() {
    let Some((_serial, browser)) =
        take_browser("connect_to_a_server_that_is_down_or_silent_rejects_by_its_timeout").await
    else {
        return;
    };
    let server = start().await;
    let down = common::free_port();
    // Takes connections, reads nothing, answers nothing.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let page = browser.page("down", 800, 600, None).await;
    page.goto(&demo_url(&server, "")).await;
    for (port, code) in [(down, "unreachable"), (silent_port, "timeout")] {
        let got = page
            .eval(&format!(
                r#"import("/wtchat/wtchat.js").then(async ({{ connect, ChatError }}) => {{
                     const started = performance.now();
                     try {{
                       await connect({{ server: "http://127.0.0.1:{port}", room: "r", name: "x", timeout: 2000 }});
                       return ["connected"];
                     }} catch (e) {{
                       return [e instanceof ChatError, e.code, Math.round(performance.now() - started)];
                     }}
                   }})"#
            ))
            .await;
        let (is_chat_error, got_code, took): (bool, String, u64) =
            serde_json::from_value(got.clone()).unwrap_or_else(|_| panic!("{got}"));
        assert!(is_chat_error, "{got}");
        assert_eq!(got_code, code, "{got}");
        // By its timeout of 2 s: an attempt is cut at the deadline, with at least 1 s.
        assert!(took < 4000, "{code}: rejected after {took} ms");
        eprintln!("{code}: rejected after {took} ms");
    }
    drop(silent);
}

/// Run in a page: its next WebTransport session reports ready 1.5 s late (a handshake slow
/// this once: WebSocket, after WebTransport's 500 ms head start, wins the race); how that
/// session ends goes to `__slowSession`.
const SLOW_WEBTRANSPORT_ONCE: &str = "(() => {
  const Real = window.WebTransport;
  let slow = 1;
  window.__slowSession = 'not yet made';
  window.WebTransport = function WebTransport(url, options) {
    const session = new Real(url, options);
    if (slow-- <= 0) return session;
    window.__slowSession = 'pending';
    const ready = session.ready.then(() => new Promise((resolve) => setTimeout(resolve, 1500)));
    ready.then(() => (window.__slowSession = 'ready'), () => (window.__slowSession = 'failed'));
    return new Proxy(session, {
      get(target, key) {
        if (key === 'ready') return ready;
        const value = Reflect.get(target, key, target);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    });
  };
  window.WebTransport.prototype = Real.prototype;
})()";

/// The server drops the page's connection (4002: reconnect) to room `slow`; waits until the
/// page notices.
async fn drop_connection(page: &Page<'_>, server: &TestServer) {
    page.eval(
        "window.__dropped = false;
         window.chat.on('status', (e) => { window.__dropped ||= e.status === 'reconnecting'; })",
    )
    .await;
    let member = server.chat.members("slow").await.unwrap()[0].id;
    assert!(server.chat.reconnect_member("slow", member).await.unwrap());
    page.wait_for("the page to notice", "window.__dropped")
        .await;
}

/// A page whose WebTransport handshake was slow once lands on WebSocket for that reconnect,
/// but its WebTransport attempt is left to finish: it connected, so the next reconnect gives
/// WebTransport its head start again and the page is back on it (before, one lost race kept
/// a page on WebSocket until it reloaded).
#[tokio::test]
async fn a_page_whose_webtransport_was_slow_once_is_back_on_it_at_the_next_reconnect() {
    let Some((_serial, browser)) =
        take_browser("a_page_whose_webtransport_was_slow_once_is_back_on_it_at_the_next_reconnect")
            .await
    else {
        return;
    };
    let server = start().await;
    let page = open_chat(&browser, &server, "S", (1024, 768), None, "slow", "sam").await;
    page.wait_connected("webtransport").await;
    page.eval(SLOW_WEBTRANSPORT_ONCE).await;

    drop_connection(&page, &server).await;
    page.wait_for("connected again", &demo_connected("websocket"))
        .await;
    page.wait_for(
        "the slow session to connect after all",
        "window.__slowSession === 'ready'",
    )
    .await;
    // The late session was closed, not used: one connection in the room.
    let members = server.chat.members("slow").await.unwrap();
    assert_eq!(members.len(), 1, "{members:?}");

    drop_connection(&page, &server).await;
    page.wait_for("connected again", &demo_connected("webtransport"))
        .await;
    say(&page, "back on WebTransport").await;
    assert_eq!(
        page.messages(1).await,
        numbered(&[("sam", "back on WebTransport")])
    );
    assert_no_console_errors(&page);
}

/// The reaction buttons under message `seq` on the demo page: `[text, aria-pressed]` each,
/// as the user sees them ("🎉 2", and whether it is pressed: theirs).
fn shown_reactions(seq: u64) -> String {
    format!(
        "JSON.stringify([...document.querySelectorAll('[data-testid=message][data-seq=\"{seq}\"] [data-testid=reaction]')]
            .map((b) => [b.textContent, b.getAttribute('aria-pressed')]))"
    )
}

/// Waits until `page` shows `want` (`[[text, pressed], ...]`) as message `seq`'s reactions.
async fn wait_reactions(page: &Page<'_>, seq: u64, want: Value) {
    page.wait_for(
        &format!("reactions {want} on message {seq}"),
        &format!("{} === {}", shown_reactions(seq), json!(want.to_string())),
    )
    .await;
}

/// Reactions on the demo page, by keyboard and at phone width by tap. Ann (WebTransport)
/// Tabs to React on Bob's message, opens the picker with Enter, Tabs to 🎉 and chooses it
/// with Enter: the picker closes, the focus is back on React, and Bob's page (WebSocket,
/// 390 px) shows "🎉 1". Escape closes the picker. Bob taps React (the picker fits his
/// screen), closes it, and taps "🎉 1" to add his: "🎉 2" on both, pressed on each. Ann
/// takes hers back from the keyboard (Tab to "🎉 2", Enter): "🎉 1" on both, hers no longer
/// pressed. A fourth reaction of Ann's is refused, and the page says why.
#[tokio::test]
async fn reactions_chosen_by_keyboard_show_on_another_page_and_toggle_off() {
    let test = "reactions_chosen_by_keyboard_show_on_another_page_and_toggle_off";
    let Some((_serial, browser)) = take_browser(test).await else {
        return;
    };
    let server = start().await;
    let bob = open_chat(
        &browser,
        &server,
        "B",
        (390, 844),
        Some(NO_WEBTRANSPORT),
        "reactions",
        "bob",
    )
    .await;
    bob.wait_connected("websocket").await;
    let ann = open_chat(
        &browser,
        &server,
        "A",
        (1024, 768),
        None,
        "reactions",
        "ann",
    )
    .await;
    ann.wait_connected("webtransport").await;
    say(&bob, "react to this").await;
    assert_eq!(ann.messages(1).await, numbered(&[("bob", "react to this")]));
    let focused = "[document.activeElement.dataset.testid, document.activeElement.textContent,
        document.activeElement.closest('[data-testid=message]')?.dataset.seq]";
    let picker_open = "!!document.querySelector('[data-testid=reaction-picker]') + ' ' + document.querySelector('[data-seq=\"1\"] [data-testid=react-button]').getAttribute('aria-expanded')";

    // Ann, by keyboard: from the message list, Tab to Bob's message's Reply, then React.
    ann.focus("[data-testid=message-list]").await;
    ann.press("Tab").await;
    ann.press("Tab").await;
    assert_eq!(
        ann.eval(focused).await,
        json!(["react-button", "React", "1"])
    );
    assert_eq!(ann.eval(picker_open).await, "false false");
    ann.press("Enter").await;
    assert_eq!(ann.eval(picker_open).await, "true true");
    assert_eq!(ann.eval(focused).await, json!(["pick-reaction", "👍", "1"]));
    for _ in 0..3 {
        ann.press("Tab").await;
    }
    assert_eq!(ann.eval(focused).await, json!(["pick-reaction", "🎉", "1"]));
    ann.press("Enter").await;
    assert_eq!(ann.eval(picker_open).await, "false false");
    assert_eq!(
        ann.eval(focused).await,
        json!(["react-button", "React", "1"])
    );
    wait_reactions(&ann, 1, json!([["🎉 1", "true"]])).await;
    wait_reactions(&bob, 1, json!([["🎉 1", "false"]])).await;

    // Open again: 🎉 is pressed there now; Escape closes it, the focus back on React.
    ann.press("Enter").await;
    assert_eq!(
        ann.eval("[...document.querySelectorAll('[data-testid=pick-reaction]')].map((b) => b.getAttribute('aria-pressed') === 'true' ? b.textContent : '-').join('')")
            .await,
        "---🎉--"
    );
    ann.press("Escape").await;
    assert_eq!(ann.eval(picker_open).await, "false false");
    assert_eq!(
        ann.eval(focused).await,
        json!(["react-button", "React", "1"])
    );

    // Bob, at 390 px, by tap: React, whose picker fits his screen and is what a tap hits.
    let tappable = |selector: &str| {
        format!(
            "[...document.querySelectorAll({sel})].every((b) => {{ b.scrollIntoView({{ block: 'center' }});
                const r = b.getBoundingClientRect();
                return r.width > 0 && r.left >= 0 && r.right <= innerWidth
                    && document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2) === b; }})",
            sel = json!(selector)
        )
    };
    let bob_react = "[data-testid=message][data-seq=\"1\"] [data-testid=react-button]";
    assert_eq!(bob.eval(&tappable(bob_react)).await, json!(true));
    bob.click(bob_react).await;
    bob.wait_for(
        "Bob's picker",
        "document.querySelectorAll('[data-testid=pick-reaction]').length === 6",
    )
    .await;
    assert_eq!(
        bob.eval(&tappable("[data-testid=pick-reaction]")).await,
        json!(true),
        "every choice of the picker is on Bob's screen and what a tap hits"
    );
    bob.screenshot("reactions-picker-phone").await;
    bob.press("Escape").await;
    assert_eq!(bob.eval(picker_open).await, "false false");
    let bob_chip = "[data-testid=message][data-seq=\"1\"] [data-testid=reaction]";
    assert_eq!(bob.eval(&tappable(bob_chip)).await, json!(true));
    bob.click(bob_chip).await;
    wait_reactions(&ann, 1, json!([["🎉 2", "true"]])).await;
    wait_reactions(&bob, 1, json!([["🎉 2", "true"]])).await;
    ann.screenshot("reactions-desktop").await;
    bob.screenshot("reactions-phone").await;

    // Ann takes hers back by keyboard: the first thing Tab reaches in the message is its
    // reactions.
    ann.focus("[data-testid=message-list]").await;
    ann.press("Tab").await;
    assert_eq!(ann.eval(focused).await, json!(["reaction", "🎉 2", "1"]));
    ann.press("Enter").await;
    wait_reactions(&ann, 1, json!([["🎉 1", "false"]])).await;
    wait_reactions(&bob, 1, json!([["🎉 1", "true"]])).await;
    assert_eq!(
        ann.eval(focused).await,
        json!(["reaction", "🎉 1", "1"]),
        "the focus stays on the button"
    );

    // Three of Ann's (through the client), then a fourth from the picker: refused, and the
    // page says why.
    let mine = ann
        .eval("Promise.all(['👍', '😂', '👀'].map((r) => window.chat.react(1, r))).then((acks) => acks.at(-1).mine.length)")
        .await;
    assert_eq!(mine, 3);
    wait_reactions(
        &bob,
        1,
        json!([
            ["🎉 1", "true"],
            ["👍 1", "false"],
            ["😂 1", "false"],
            ["👀 1", "false"]
        ]),
    )
    .await;
    ann.focus("[data-testid=message][data-seq=\"1\"] [data-testid=react-button]")
        .await;
    ann.press("Enter").await;
    for _ in 0..4 {
        ann.press("Tab").await;
    }
    assert_eq!(ann.eval(focused).await, json!(["pick-reaction", "😮", "1"]));
    ann.press("Enter").await;
    ann.wait_for(
        "the page to say why",
        "(() => { const t = document.querySelector('[data-testid=error]');
            return !t.hidden && t.textContent === 'You can add at most 3 reactions to a message.'; })()",
    )
    .await;
    wait_reactions(
        &ann,
        1,
        json!([
            ["🎉 1", "false"],
            ["👍 1", "true"],
            ["😂 1", "true"],
            ["👀 1", "true"]
        ]),
    )
    .await;
    assert_no_console_errors(&ann);
    assert_no_console_errors(&bob);
    server.stop().await;
}
