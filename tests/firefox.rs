//! Real-browser tests in a second engine: Debian's Firefox ESR, driven over WebDriver BiDi
//! (tests/common/firefox.rs), loads the demo page from a test server and chats over
//! WebTransport and over the WebSocket fallback, in one room with a Chromium page (when
//! Chromium is installed), and over SSE and long polling beside WebTransport. Without Firefox these tests print a loud SKIPPED line (and fail
//! under `CI=true`). One Firefox serves the whole file; every page has its own user context.

#[path = "common/browser.rs"]
mod browser;
mod common;
#[path = "common/firefox.rs"]
mod firefox;

use std::time::Instant;

use browser::{
    ConsoleEntry, DemoPage, Drive, NO_EVENT_SOURCE, NO_STREAMS, NO_WEBTRANSPORT, assert_one_order,
    numbered,
};
use common::{TestServer, start};
use firefox::Firefox;
use serde_json::{Value, json};

/// One test at a time: they share one Firefox, and pages of two tests connecting at once on a
/// small machine would make the connect times they report meaningless.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Takes this test's turn, then the file's Firefox (None: not installed, test skipped).
async fn take_firefox(
    test: &str,
) -> Option<(tokio::sync::MutexGuard<'static, ()>, &'static Firefox)> {
    let turn = ONE_AT_A_TIME.lock().await;
    Some((turn, Firefox::shared_or_skip(test).await?))
}

fn demo_url(server: &TestServer, query: &str) -> String {
    format!("http://127.0.0.1:{}/?{query}", server.http.port())
}

/// A page in either browser, so one conversation can span both engines.
#[derive(Clone, Copy)]
enum Tab<'a> {
    Firefox(&'a firefox::Page<'a>),
    Chromium(&'a browser::Page<'a>),
}

impl Drive for Tab<'_> {
    fn label(&self) -> String {
        match self {
            Tab::Firefox(p) => format!("firefox {}", p.name),
            Tab::Chromium(p) => format!("chromium {}", p.name),
        }
    }

    async fn try_eval(&self, expression: &str) -> Result<Value, String> {
        match self {
            Tab::Firefox(p) => p.try_eval(expression).await,
            Tab::Chromium(p) => p.try_eval(expression).await,
        }
    }

    fn console(&self) -> Vec<ConsoleEntry> {
        match self {
            Tab::Firefox(p) => p.console(),
            Tab::Chromium(p) => p.console(),
        }
    }
}

impl Tab<'_> {
    /// Types a message into the page's input and presses Enter, as a user does.
    async fn say(&self, text: &str) {
        match self {
            Tab::Firefox(p) => p.type_and_enter("[data-testid=message-input]", text).await,
            Tab::Chromium(p) => p.type_and_enter("[data-testid=message-input]", text).await,
        }
    }
}

#[tokio::test]
async fn firefox_over_both_transports_and_chromium_chat_in_one_room() {
    let test = "firefox_over_both_transports_and_chromium_chat_in_one_room";
    let Some((_turn, firefox)) = take_firefox(test).await else {
        return;
    };
    let server = start().await;
    let started = Instant::now();

    // Fox: Firefox as it ships, so over WebTransport (pinning the served certificate digest).
    let fox = firefox.page("fox", (1280, 800), None).await;
    fox.goto(&demo_url(&server, "room=mixed&name=fox")).await;
    let fox = Tab::Firefox(&fox);
    let fox_took = fox.wait_connected("webtransport").await;
    // Wolf: Firefox with no WebTransport at all, so over the WebSocket fallback.
    let wolf = firefox
        .page("wolf", (390, 844), Some(NO_WEBTRANSPORT))
        .await;
    wolf.goto(&demo_url(&server, "room=mixed&name=wolf")).await;
    let wolf = Tab::Firefox(&wolf);
    let wolf_took = wolf.wait_connected("websocket").await;
    assert_eq!(wolf.eval("typeof WebTransport").await, "undefined");
    eprintln!(
        "firefox {}: connected over WebTransport in {fox_took} ms, over WebSocket in {wolf_took} ms \
         (config, transport and join)",
        firefox.version
    );

    // Crow: Chromium over WebTransport, when it is installed (it says so loudly when not).
    let chromium = browser::Browser::launch_or_skip(&format!("{test} (its Chromium page)")).await;
    let crow = match &chromium {
        Some(chromium) => {
            let page = chromium.page("crow", 1024, 768, None).await;
            page.goto(&demo_url(&server, "room=mixed&name=crow")).await;
            Some(page)
        }
        None => None,
    };
    let crow = crow.as_ref().map(Tab::Chromium);
    if let Some(crow) = crow {
        crow.wait_connected("webtransport").await;
    }
    let pages: Vec<Tab> = [Some(fox), Some(wolf), crow]
        .into_iter()
        .flatten()
        .collect();
    let names: Vec<&str> = ["fox", "wolf", "crow"][..pages.len()].to_vec();
    for page in &pages {
        page.wait_members(&names).await;
    }

    // A conversation, each line sent once the previous one reached every page: the order is
    // the order typed, and every page must show exactly it.
    let mut lines = vec![
        (fox, "fox", "hello from Firefox over WebTransport"),
        (wolf, "wolf", "Firefox over WebSocket hears you"),
        (fox, "fox", "and back over WebTransport: ünïcödé ✓"),
    ];
    if let Some(crow) = crow {
        lines.push((crow, "crow", "Chromium over WebTransport, same room"));
        lines.push((wolf, "wolf", "everyone sees everyone"));
    }
    let mut want = Vec::new();
    for (page, from, text) in &lines {
        page.say(text).await;
        want.push((*from, *text));
        for page in &pages {
            assert_eq!(
                page.messages(want.len()).await,
                numbered(&want),
                "[{}]",
                page.label()
            );
        }
    }

    // Then every page at once: the server decides the order, and every page shows that
    // same order, with the same sequence numbers.
    let burst: Vec<String> = names.iter().map(|n| format!("{n}, all at once")).collect();
    for (page, text) in pages.iter().zip(&burst) {
        page.say(text).await;
    }
    assert_one_order(&pages, &numbered(&want), &names, &burst).await;
    eprintln!(
        "{} pages chatting over both transports: {:?}",
        pages.len(),
        started.elapsed()
    );
    for page in &pages {
        page.assert_no_console_errors();
    }
}

#[tokio::test]
async fn firefox_over_sse_and_long_polling_chats_with_firefox_over_webtransport() {
    let test = "firefox_over_sse_and_long_polling_chats_with_firefox_over_webtransport";
    let Some((_turn, firefox)) = take_firefox(test).await else {
        return;
    };
    let server = start().await;
    let fox = firefox.page("fox", (1024, 768), None).await;
    fox.goto(&demo_url(&server, "room=posted&name=fox")).await;
    let fox = Tab::Firefox(&fox);
    fox.wait_connected("webtransport").await;
    // Elk: Firefox behind a proxy that lets only plain HTTP through, so over SSE (Firefox's
    // own EventSource); owl: no EventSource either, so over long polling (its fetch).
    let elk = firefox.page("elk", (1024, 768), Some(NO_STREAMS)).await;
    elk.goto(&demo_url(&server, "room=posted&name=elk")).await;
    let elk = Tab::Firefox(&elk);
    let elk_took = elk.wait_connected("sse").await;
    let owl = firefox.page("owl", (390, 844), Some(NO_EVENT_SOURCE)).await;
    owl.goto(&demo_url(&server, "room=posted&name=owl")).await;
    let owl = Tab::Firefox(&owl);
    let owl_took = owl.wait_connected("longpoll").await;
    eprintln!(
        "firefox {}: connected over SSE in {elk_took} ms, over long polling in {owl_took} ms \
         (config, transport and join)",
        firefox.version
    );
    let pages = [fox, elk, owl];
    for page in &pages {
        page.wait_members(&["elk", "fox", "owl"]).await;
    }
    let mut want = Vec::new();
    for (page, from, text) in [
        (elk, "elk", "elk over SSE"),
        (owl, "owl", "owl over long polling: ünïcödé ✓"),
        (fox, "fox", "fox over WebTransport hears you both"),
    ] {
        page.say(text).await;
        want.push((from, text));
        for page in &pages {
            assert_eq!(
                page.messages(want.len()).await,
                numbered(&want),
                "[{}]",
                page.label()
            );
        }
    }
    // Every page at once: one order, the server's, on every page.
    let names = ["fox", "elk", "owl"];
    let burst: Vec<String> = names.iter().map(|n| format!("{n}, all at once")).collect();
    for (page, text) in pages.iter().zip(&burst) {
        page.say(text).await;
    }
    let mut seen = assert_one_order(&pages, &numbered(&want), &names, &burst).await;
    // The SSE and long-polling pages lose their connections: each comes back on the
    // transport it had and misses nothing said meanwhile.
    for (page, transport) in [(elk, "sse"), (owl, "longpoll")] {
        page.lose_connection().await;
        let text = format!("while {} reconnects", page.label());
        fox.say(&text).await;
        page.wait_connected(transport).await;
        seen.push((seen.len() as u64 + 1, "fox".into(), text));
        for page in &pages {
            assert_eq!(page.messages(seen.len()).await, seen, "[{}]", page.label());
        }
    }
    for page in &pages {
        page.assert_no_console_errors();
    }
    server.stop().await;
}

/// Run in the demo page: whether its room field accepts each value, by the browser's own
/// constraint validation of the field's `pattern` (the field is restored after).
const ROOM_FIELD_ACCEPTS: &str = r##"(() => {
  const room = document.querySelector('[data-testid=room-input]');
  const before = room.value;
  const verdicts = {};
  for (const value of ["lobby", "A-Z_a.z:0@9", "-", "no spaces", "a\\b", "a/b", "é", "#hash"]) {
    room.value = value;
    verdicts[value] = !room.validity.patternMismatch;
  }
  room.value = before;
  return verdicts;
})()"##;

/// The room names the field must accept (letters, digits, `_ . : @ -`) and refuse.
fn room_field_verdicts() -> Value {
    json!({
        "lobby": true, "A-Z_a.z:0@9": true, "-": true,
        "no spaces": false, "a\\b": false, "a/b": false, "é": false, "#hash": false,
    })
}

#[tokio::test]
async fn the_demo_page_loads_in_firefox_without_console_errors_and_checks_room_names() {
    let test = "the_demo_page_loads_in_firefox_without_console_errors_and_checks_room_names";
    let Some((_turn, firefox)) = take_firefox(test).await else {
        return;
    };
    let server = start().await;
    let started = Instant::now();
    let page = firefox.page("demo", (1280, 800), None).await;
    page.goto(&demo_url(&server, "")).await;
    page.wait_for(
        "the name input to have focus",
        "document.activeElement?.dataset.testid === 'name-input'",
    )
    .await;
    // Join with the keyboard, then chat: the page works as well as it loads.
    page.type_and_enter("[data-testid=name-input]", "kit").await;
    let tab = Tab::Firefox(&page);
    tab.wait_connected("webtransport").await;
    page.wait_for(
        "the message input to have focus",
        "document.activeElement?.dataset.testid === 'message-input'",
    )
    .await;
    tab.say("typed in Firefox").await;
    assert_eq!(
        tab.messages(1).await,
        numbered(&[("kit", "typed in Firefox")])
    );
    assert_eq!(page.eval("document.title").await, "#lobby · wtchat");
    // Firefox reports a `pattern` it cannot compile (they are compiled with the `v` flag) as
    // an error on load, and then ignores it.
    tab.assert_no_console_errors();

    // The room field's own validation is on, and says what the server says.
    let fresh = firefox.page("room-field", (1280, 800), None).await;
    fresh.goto(&demo_url(&server, "")).await;
    assert_eq!(
        fresh.eval(ROOM_FIELD_ACCEPTS).await,
        room_field_verdicts(),
        "[firefox] room field"
    );
    Tab::Firefox(&fresh).assert_no_console_errors();
    // The same field in Chromium, when installed.
    if let Some(chromium) =
        browser::Browser::launch_or_skip(&format!("{test} (its Chromium part)")).await
    {
        let page = chromium.page("room-field", 1280, 800, None).await;
        page.goto(&demo_url(&server, "")).await;
        assert_eq!(
            page.eval(ROOM_FIELD_ACCEPTS).await,
            room_field_verdicts(),
            "[chromium] room field"
        );
        Tab::Chromium(&page).assert_no_console_errors();
    }
    eprintln!("the demo page in Firefox: {:?}", started.elapsed());
}

/// Crow in Chromium over WebTransport (desktop size) and Wolf in Firefox over WebSocket (at
/// phone width) on the demo page of `room`, each connected and seeing both.
async fn crow_and_wolf<'a>(
    chromium: &'a browser::Browser,
    firefox: &'a Firefox,
    server: &TestServer,
    room: &str,
) -> (browser::Page<'a>, firefox::Page<'a>) {
    let crow_page = chromium.page("crow", 1024, 768, None).await;
    crow_page
        .goto(&demo_url(server, &format!("room={room}&name=crow")))
        .await;
    Tab::Chromium(&crow_page)
        .wait_connected("webtransport")
        .await;
    let wolf_page = firefox
        .page("wolf", (390, 844), Some(NO_WEBTRANSPORT))
        .await;
    wolf_page
        .goto(&demo_url(server, &format!("room={room}&name=wolf")))
        .await;
    Tab::Firefox(&wolf_page).wait_connected("websocket").await;
    for page in [Tab::Chromium(&crow_page), Tab::Firefox(&wolf_page)] {
        page.wait_members(&["crow", "wolf"]).await;
    }
    (crow_page, wolf_page)
}

/// Messages that change, and replies, in one room across two engines and two transports:
/// Chromium over WebTransport edits, replies and deletes on the demo page by keyboard (arrow
/// up in the empty composer; Tab to a message's Reply or Delete); Firefox over WebSocket
/// does the same through the client API (`chat.edit`, `chat.delete`, `chat.send(text,
/// {replyTo})`) and is refused another's message. Each page shows the other's changes: the
/// new text marked "(edited)", the deleted message gone, quotes, and a quote of a deleted
/// message saying so.
#[tokio::test]
async fn edits_replies_and_deletions_made_in_chromium_and_firefox_show_on_both() {
    let test = "edits_replies_and_deletions_made_in_chromium_and_firefox_show_on_both";
    let Some((_turn, firefox)) = take_firefox(test).await else {
        return;
    };
    let Some(chromium) = browser::Browser::launch_or_skip(test).await else {
        return;
    };
    let server = start().await;
    let (crow_page, wolf_page) = crow_and_wolf(&chromium, firefox, &server, "changes").await;
    let (crow, wolf) = (Tab::Chromium(&crow_page), Tab::Firefox(&wolf_page));
    let mut want = Vec::new();
    for (page, from, text) in [
        (crow, "crow", "helo"),
        (wolf, "wolf", "wolf one"),
        (wolf, "wolf", "wolf two"),
    ] {
        page.say(text).await;
        want.push((from, text));
        for page in [crow, wolf] {
            assert_eq!(page.messages(want.len()).await, numbered(&want));
        }
    }

    // Chromium, by keyboard: arrow up in the empty composer opens its last message.
    crow.focus("[data-testid=message-input]").await;
    crow_page.press("ArrowUp").await;
    crow.wait_for(
        "the editor to open on message 1",
        "document.activeElement?.dataset.testid === 'edit-input'
            && document.activeElement.closest('[data-testid=message]').dataset.seq === '1'",
    )
    .await;
    crow_page
        .type_into("[data-testid=edit-input]", " there")
        .await;
    crow_page.press("Enter").await;
    let shows = |seq: u64, text: &str| {
        format!(
            "(() => {{ const li = document.querySelector('[data-testid=message][data-seq=\"{seq}\"]');
                return !!li && li.querySelector('[data-testid=message-text]').textContent === {text}
                    && !!li.querySelector('[data-testid=message-edited]'); }})()",
            text = json!(text)
        )
    };
    for page in [crow, wolf] {
        page.wait_for("crow's edit", &shows(1, "helo there")).await;
    }

    // Firefox, through the client API: an edit, a deletion, and another's message refused.
    let acked = wolf
        .eval("window.chat.edit(2, 'wolf one, edited').then((a) => a.seq)")
        .await;
    assert_eq!(acked, 5, "records 1-3 the messages, 4 crow's edit");
    let acked = wolf.eval("window.chat.delete(3).then((a) => a.seq)").await;
    assert_eq!(acked, 6);
    let refused = wolf
        .eval("window.chat.edit(1, 'not mine').then(() => 'edited', (e) => e.code)")
        .await;
    assert_eq!(refused, "not_yours");
    let held = wolf
        .eval("window.chat.messages.map((m) => [m.seq, m.text, !!m.edited])")
        .await;
    assert_eq!(
        held,
        json!([[1, "helo there", true], [2, "wolf one, edited", true]])
    );
    crow.wait_for("wolf's edit", &shows(2, "wolf one, edited"))
        .await;
    crow.wait_for(
        "wolf's deletion",
        "!document.querySelector('[data-testid=message][data-seq=\"3\"]')",
    )
    .await;

    // Replies: Firefox through the API answers crow's message; Chromium by keyboard answers
    // wolf's (Tab from the message list: message 1's Reply, Edit, Delete, React, then
    // message 2's Reply). Both pages show both quotes.
    let acked = wolf
        .eval("window.chat.send('re: hello', { replyTo: 1 }).then((a) => a.seq)")
        .await;
    assert_eq!(acked, 7);
    let quoted = |seq: u64, quote: &str| {
        format!(
            "(() => {{ const q = document.querySelector('[data-testid=message][data-seq=\"{seq}\"] [data-testid=message-quote]');
                return !!q && q.textContent === {quote}; }})()",
            quote = json!(quote)
        )
    };
    for page in [crow, wolf] {
        page.wait_for("wolf's reply", &quoted(7, "crowhelo there"))
            .await;
    }
    crow.focus("[data-testid=message-list]").await;
    for _ in 0..5 {
        crow_page.press("Tab").await;
    }
    assert_eq!(
        crow.eval("[document.activeElement.dataset.testid, document.activeElement.closest('[data-testid=message]').dataset.seq]")
            .await,
        json!(["reply-button", "2"])
    );
    crow_page.press("Enter").await;
    assert_eq!(
        crow.eval("document.querySelector('[data-testid=reply-to]').textContent")
            .await,
        "Replying to wolf: wolf one, edited"
    );
    crow_page
        .type_and_enter("[data-testid=message-input]", "crow answers")
        .await;
    for page in [crow, wolf] {
        page.wait_for("crow's reply", &quoted(8, "wolfwolf one, edited"))
            .await;
    }
    assert_eq!(
        crow.eval("document.querySelector('[data-testid=reply-bar]').hidden")
            .await,
        true,
        "the reply bar goes once sent"
    );

    // Chromium deletes its own by keyboard: Tab to its message's Delete, which asks once
    // before it deletes. The reply to it then says so, on both pages.
    crow.focus("[data-testid=message-list]").await;
    for _ in 0..3 {
        crow_page.press("Tab").await;
    }
    assert_eq!(
        crow.eval("document.activeElement.dataset.testid").await,
        "delete-button"
    );
    crow_page.press("Enter").await;
    assert_eq!(
        crow.eval("document.activeElement.textContent").await,
        "Delete?"
    );
    crow_page.press("Enter").await;
    let left = vec![
        (2, "wolf".to_string(), "wolf one, edited".to_string()),
        (7, "wolf".to_string(), "re: hello".to_string()),
        (8, "crow".to_string(), "crow answers".to_string()),
    ];
    for page in [crow, wolf] {
        page.wait_for(
            "crow's deletion",
            "!document.querySelector('[data-testid=message][data-seq=\"1\"]')",
        )
        .await;
        assert_eq!(page.messages(3).await, left, "[{}]", page.label());
        page.wait_for(
            "the quote of a deleted message",
            &quoted(7, "Original message deleted"),
        )
        .await;
    }
    let replies = wolf
        .eval("window.chat.messages.map((m) => [m.seq, m.replyTo?.seq ?? null, m.replyTo?.deleted ?? null])")
        .await;
    assert_eq!(
        replies,
        json!([[2, null, null], [7, 1, true], [8, 2, false]])
    );
    for page in [crow, wolf] {
        page.assert_no_console_errors();
    }
}

/// The reaction buttons under message `seq` on the demo page: `[text, aria-pressed]` each,
/// as the user sees them ("👍 2", and whether it is pressed: theirs).
fn shown_reactions(seq: u64) -> String {
    format!(
        "[...document.querySelectorAll('[data-testid=message][data-seq=\"{seq}\"] [data-testid=reaction]')]
            .map((b) => [b.textContent, b.getAttribute('aria-pressed')])"
    )
}

/// `call` (a `react` or `unreact` of the page's client) once acknowledged: `[seq, mine]`,
/// `mine` sorted.
async fn react(page: Tab<'_>, call: &str) -> Value {
    page.eval(&format!(
        "window.chat.{call}.then((a) => [a.seq, a.mine.slice().sort()])"
    ))
    .await
}

/// `call` (a `reactions` of the page's client) once answered: `[[[reaction, from, sender,
/// at], ...], next]`.
async fn reactors(page: Tab<'_>, call: &str) -> Value {
    page.eval(&format!(
        "window.chat.{call}.then((p) => [p.reactors.map((r) => [r.reaction, r.from, r.sender, r.at]), p.next])"
    ))
    .await
}

/// Waits until `page` shows `shown` (`[[text, pressed], ...]`) as message 1's reactions,
/// then checks its client holds `held` (`[[reaction, count, mine], ...]`) for it.
async fn sees(page: Tab<'_>, shown: Value, held: Value) {
    page.wait_for(
        &format!("reactions {shown}"),
        &format!(
            "JSON.stringify({}) === {}",
            shown_reactions(1),
            json!(shown.to_string())
        ),
    )
    .await;
    assert_eq!(
        page.eval("window.chat.messages[0].reactions.map((r) => [r.reaction, r.count, r.mine])")
            .await,
        held,
        "[{}]",
        page.label()
    );
}

/// Reactions across two engines and two transports: Chromium (WebTransport) and Firefox
/// (WebSocket, at phone width) react to one message through the client API; both pages
/// show the counts, each with its own reactions pressed, and both clients agree (`mine`);
/// one takes its reaction back and both show the new counts; `chat.reactions()` lists who
/// reacted, in order, page by page; a history page says which are one's own; a page that
/// was away gets what changed; a reaction that is no emoji is refused.
#[tokio::test]
async fn reactions_made_in_chromium_and_firefox_show_on_both_each_with_its_own() {
    let test = "reactions_made_in_chromium_and_firefox_show_on_both_each_with_its_own";
    let Some((_turn, firefox)) = take_firefox(test).await else {
        return;
    };
    let Some(chromium) = browser::Browser::launch_or_skip(test).await else {
        return;
    };
    let server = start().await;
    let (crow_page, wolf_page) = crow_and_wolf(&chromium, firefox, &server, "reactions").await;
    let (crow, wolf) = (Tab::Chromium(&crow_page), Tab::Firefox(&wolf_page));
    crow.say("react to this").await;
    for page in [crow, wolf] {
        assert_eq!(
            page.messages(1).await,
            numbered(&[("crow", "react to this")])
        );
        // Every `reacted` event of the page's client: [seq, "👍2", ...].
        page.eval(
            "(window.__reacted = [], window.chat.on('reacted', (e) =>
                window.__reacted.push([e.seq, ...e.reactions.map((r) => r.reaction + r.count)])), true)",
        )
        .await;
    }
    // Records 2-4: the reactions (numbered in the room's order, like edits).
    assert_eq!(react(crow, "react(1, '👍')").await, json!([2, ["👍"]]));
    assert_eq!(react(wolf, "react(1, '👍')").await, json!([3, ["👍"]]));
    assert_eq!(
        react(wolf, "react(1, '🎉')").await,
        json!([4, ["🎉", "👍"]])
    );
    // What each page shows, and its client holds.
    sees(
        crow,
        json!([["👍 2", "true"], ["🎉 1", "false"]]),
        json!([["👍", 2, true], ["🎉", 1, false]]),
    )
    .await;
    sees(
        wolf,
        json!([["👍 2", "true"], ["🎉 1", "true"]]),
        json!([["👍", 2, true], ["🎉", 1, true]]),
    )
    .await;

    // Crow takes its 👍 back: one left, wolf's.
    assert_eq!(react(crow, "unreact(1, '👍')").await, json!([5, []]));
    sees(
        crow,
        json!([["👍 1", "false"], ["🎉 1", "false"]]),
        json!([["👍", 1, false], ["🎉", 1, false]]),
    )
    .await;
    sees(
        wolf,
        json!([["👍 1", "true"], ["🎉 1", "true"]]),
        json!([["👍", 1, true], ["🎉", 1, true]]),
    )
    .await;
    for page in [crow, wolf] {
        assert_eq!(
            page.eval("window.__reacted.at(-1)").await,
            json!([1, "👍1", "🎉1"]),
            "[{}] the last `reacted` event",
            page.label()
        );
    }

    // Who reacted: wolf twice, in order (crow's 👍 is gone), one page or two.
    let wolf_sender = wolf.eval("window.chat.me.sender").await;
    assert_eq!(
        reactors(crow, "reactions(1)").await,
        json!([
            [
                ["👍", "wolf", wolf_sender, 3],
                ["🎉", "wolf", wolf_sender, 4]
            ],
            null
        ])
    );
    assert_eq!(
        reactors(crow, "reactions(1, { limit: 1 })").await,
        json!([[["👍", "wolf", wolf_sender, 3]], 3])
    );
    assert_eq!(
        reactors(crow, "reactions(1, { after: 3 })").await,
        json!([[["🎉", "wolf", wolf_sender, 4]], null])
    );

    // A history page has the counts, and which are one's own.
    assert_eq!(
        wolf.eval("window.chat.history().then((p) => p.messages.map((m) => [m.seq, m.reactions.map((r) => [r.reaction, r.count, r.mine])]))")
            .await,
        json!([[1, [["👍", 1, true], ["🎉", 1, true]]]])
    );

    // Refused: not one emoji (and not a name the server lists).
    for page in [crow, wolf] {
        assert_eq!(
            page.eval("window.chat.react(1, 'abc').then(() => 'stored', (e) => e.code)")
                .await,
            "invalid_reaction",
            "[{}]",
            page.label()
        );
    }

    // Crow's connection drops (closed from the page with a code that says "reconnect");
    // wolf reacts meanwhile; crow's page, back, shows it.
    crow.eval(browser::WATCH_WEBTRANSPORT).await;
    crow.eval(
        "(window.__dropped = false,
          window.chat.on('status', (e) => { window.__dropped ||= e.status === 'reconnecting'; }),
          window.chat._link._conn.close(4002, 'dropped by the test'))",
    )
    .await;
    crow.wait_for("the page to notice", "window.__dropped")
        .await;
    assert_eq!(
        react(wolf, "react(1, '👀')").await,
        json!([6, ["🎉", "👀", "👍"]])
    );
    crow.wait_back_over_webtransport().await;
    sees(
        crow,
        json!([["👍 1", "false"], ["🎉 1", "false"], ["👀 1", "false"]]),
        json!([["👍", 1, false], ["🎉", 1, false], ["👀", 1, false]]),
    )
    .await;
    sees(
        wolf,
        json!([["👍 1", "true"], ["🎉 1", "true"], ["👀 1", "true"]]),
        json!([["👍", 1, true], ["🎉", 1, true], ["👀", 1, true]]),
    )
    .await;
    for page in [crow, wolf] {
        page.assert_no_console_errors();
    }
}
