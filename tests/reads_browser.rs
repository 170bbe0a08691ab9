//! Read state, unread counts, receipts and mentions in real browsers, on the demo page of a
//! site whose users sign in (a cookie login; the chat's auth hook reads the cookie, so every
//! tab of one user is the same reader):
//!
//! - two tabs of one signed-in user, in Chromium and in Firefox (one on WebTransport, one on
//!   WebSocket): both count what came while they were hidden; one marks read, the other's
//!   count drops, to the message; her own message clears the "New messages" line in both, and
//!   both say who has seen it;
//! - a mention reaches a page in another room over its one connection, in Chromium and in
//!   Firefox: every room's chat on it tells it, and a room joined on it but not shown counts it;
//! - a user that was offline sees its unread and mention counts on its next visit (badge,
//!   tab title, the line above the first unread message, the messages that mention it) and
//!   reads them by looking; scrolled up, what comes is counted until it is scrolled to;
//! - the demo page suggests whom to mention as "@" is typed, chosen by keyboard, and the
//!   message mentions exactly those picked.
//!
//! Without Chromium (or Firefox) a test prints a loud SKIPPED line (and fails under `CI=true`).

#[path = "common/browser.rs"]
mod browser;
mod common;
#[path = "common/firefox.rs"]
mod firefox;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Query;
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use browser::{Browser, DemoPage, Drive, NO_WEBTRANSPORT, numbered, wait_json};
use common::{Client, DEADLINE, TestServer, start_host};
use firefox::Firefox;
use serde_json::{Value, json};
use wtchat::{Config, Identity, Tls};

/// One test at a time: two browsers starting and connecting at once on a small machine
/// gain nothing, and the Firefox tests share one Firefox.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Run before the page's scripts: the page believes it is hidden (a background tab), so it
/// reads nothing on its own until [`visibility`] says otherwise.
const HIDDEN: &str =
    "Object.defineProperty(document, 'visibilityState', { value: 'hidden', configurable: true });";

/// Turns the page's visibility to `state` (`visible`, `hidden`), as switching tabs does.
fn visibility(state: &str) -> String {
    format!(
        "(Object.defineProperty(document, 'visibilityState', {{ value: '{state}', configurable: true }}),
          document.dispatchEvent(new Event('visibilitychange')), document.visibilityState)"
    )
}

/// What the page shows of the room's unread count, as JSON: `[shown, text, data-count,
/// data-mentions, "@" marked, the tab's title]`.
const BADGE: &str = "(() => { const b = document.querySelector('#unread-count');
    return JSON.stringify([!b.hidden, b.textContent, Number(b.dataset.count),
        Number(b.dataset.mentions), b.classList.contains('mentions'), document.title]); })()";

/// The "New messages" line: `[its text, the seq of the message below it]`, or how many such
/// lines there are when there is not exactly one.
const SEPARATOR: &str = "(() => { const lines = document.querySelectorAll('.unread-separator');
    if (lines.length !== 1) return lines.length;
    const below = document.querySelector('.unread-separator + [data-testid=message]');
    return [lines[0].textContent, below ? Number(below.dataset.seq) : null]; })()";

/// The seqs of the messages shown as mentioning the reader.
const MENTIONED: &str =
    "[...document.querySelectorAll('.message.mentioned')].map((li) => Number(li.dataset.seq))";

/// "Seen by ..." lines: `[seq of the message, text]` each.
const SEEN_BY: &str = "[...document.querySelectorAll('.seen-by')]
    .map((s) => [Number(s.closest('[data-testid=message]').dataset.seq), s.textContent])";

/// The "@" suggestions shown: `[name, data-sender, active]` each; null while closed.
const SUGGESTIONS: &str = "(() => { const ul = document.querySelector('#mention-suggestions');
    if (ul.hidden) return null;
    return [...ul.querySelectorAll('li[data-testid=mention-suggestion]')].map((li) =>
        [li.querySelector('.name').textContent, li.dataset.sender, li.classList.contains('active')]); })()";

const INPUT: &str = "[data-testid=message-input]";

/// The site: a login that sets a `user` cookie and goes on to the demo page, and the chat,
/// whose auth hook names each connection by that cookie (tickets carry it to WebTransport).
/// Receipts every 100 ms.
async fn site() -> TestServer {
    start_host(
        |http, webtransport, certs| {
            Config::builder()
                .http(http)
                .webtransport(webtransport)
                .tls(Tls::Dev { dir: certs })
                .presence_interval(Duration::from_millis(100))
                .auth(|request| async move {
                    let user = request
                        .cookie("user")
                        .filter(|u| !u.is_empty())
                        .ok_or("log in first")?;
                    Ok(Identity::new(user.clone(), user))
                })
                .build()
        },
        |chat| {
            Router::new()
                .route("/login", get(login))
                .merge(chat.router())
        },
    )
    .await
}

/// `/login?user=U&room=R`: signed in as U, on to the demo page in room R.
async fn login(Query(query): Query<HashMap<String, String>>) -> Response {
    let (user, room) = (&query["user"], &query["room"]);
    (
        [(
            header::SET_COOKIE,
            format!("user={user}; Path=/; SameSite=Lax"),
        )],
        Redirect::to(&format!("/?room={room}&name={user}")),
    )
        .into_response()
}

fn login_url(server: &TestServer, user: &str, room: &str) -> String {
    format!(
        "http://127.0.0.1:{}/login?user={user}&room={room}",
        server.http.port()
    )
}

/// The demo page in `room`, for a browser already signed in.
fn demo_url(server: &TestServer, room: &str, user: &str) -> String {
    format!(
        "http://127.0.0.1:{}/?room={room}&name={user}",
        server.http.port()
    )
}

/// A WebSocket connection of signed-in `user` (its cookie).
async fn client_of(server: &TestServer, user: &str) -> Client {
    let cookie = format!("user={user}");
    Client::ws_request(server, "", &[("cookie", cookie.as_str())])
        .await
        .unwrap()
}

/// What the host's API says of `user`'s rooms: (room, seq, unread, mentions) each.
async fn server_unread(server: &TestServer, user: &str) -> Vec<(String, u64, u64, u64)> {
    let rooms = server.chat.unread(user).await.unwrap();
    rooms
        .into_iter()
        .map(|r| (r.room, r.state.seq, r.state.unread, r.state.mentions))
        .collect()
}

/// Waits until the page shows the unread badge so: shown or hidden, `count`, `mentions`,
/// and the tab's title.
async fn wait_badge(page: &impl Drive, shown: bool, count: u64, mentions: u64, title: &str) {
    let want = json!([
        shown,
        count.to_string(),
        count,
        mentions,
        mentions > 0,
        title
    ])
    .to_string();
    page.wait_for(
        &format!("the unread badge {want}"),
        &format!("{BADGE} === {}", json!(want)),
    )
    .await;
}

/// The client's own read state in the page's room, `{count, mentions, lastRead}`.
fn unread(count: u64, mentions: u64, last_read: u64) -> Value {
    json!({"count": count, "mentions": mentions, "lastRead": last_read})
}

/// A page a user types into, in either browser.
#[allow(async_fn_in_trait)] // the tests' own trait: no caller needs its futures to be Send
trait Typing: DemoPage {
    /// Types `text` into the composer and presses Enter.
    async fn say(&self, text: &str);
}

impl Typing for browser::Page<'_> {
    async fn say(&self, text: &str) {
        self.type_and_enter(INPUT, text).await;
    }
}

impl Typing for firefox::Page<'_> {
    async fn say(&self, text: &str) {
        self.type_and_enter(INPUT, text).await;
    }
}

/// Ann's two tabs, both hidden and connected in `room` (the first over WebTransport, the
/// second over WebSocket): Bob says three things, the second mentioning her. Both tabs count
/// 3, one mentioning her, in the badge and the title, with the line above message 1. The
/// first marks 1 read: the second's count drops to 2; the first is looked at and reads what
/// it shows: the second's count drops to 0, the badge goes, the title is plain again, and
/// the host's API agrees; Bob is told Ann read up to 3. Ann answers from the first tab: both
/// show it as hers, the line goes in both; Bob reads it, and both say "Seen by bob" under it.
async fn one_tab_reads_the_others_count_drops(
    server: &TestServer,
    room: &str,
    tab1: &impl Typing,
    tab2: &impl Typing,
) {
    let me = "window.chat.me ? [window.chat.me.name, window.chat.me.sender] : null";
    let one = tab1.eval(me).await;
    assert_eq!(
        tab2.eval(me).await,
        one,
        "one user, one sender id in both tabs"
    );
    assert_eq!(one[0], "ann");
    let ann = one[1].as_str().unwrap().to_owned();
    let title = format!("#{room} · wtchat");
    let nothing = json!([false, "0", 0, 0, false, title]).to_string();
    assert_eq!(
        tab1.eval(BADGE).await,
        nothing,
        "a first visit: nothing unread"
    );
    assert_eq!(
        tab2.eval(BADGE).await,
        nothing,
        "a first visit: nothing unread"
    );

    let mut bob = client_of(server, "bob").await;
    let (joined, _) = bob.join(room, "bob").await;
    let bob_sender = joined["you"]["sender"].as_str().unwrap().to_owned();
    assert_eq!(bob.say(room, "one", "b1").await, 1);
    assert_eq!(
        bob.say_mentioning(room, "two, @ann?", "b2", &[&ann]).await,
        2
    );
    assert_eq!(bob.say(room, "three", "b3").await, 3);
    let said = numbered(&[("bob", "one"), ("bob", "two, @ann?"), ("bob", "three")]);
    let counted = format!("(3) {title}");
    check_tab(tab1, &said, 3, 1, &counted, unread(3, 1, 0)).await;
    check_tab(tab2, &said, 3, 1, &counted, unread(3, 1, 0)).await;

    // The first tab marks message 1 read: the second's count drops to 2, still one "@".
    assert_eq!(tab1.eval("window.chat.markRead(1)").await, true);
    let counted = format!("(2) {title}");
    check_tab(tab2, &said, 2, 1, &counted, unread(2, 1, 1)).await;
    check_tab(tab1, &said, 2, 1, &counted, unread(2, 1, 1)).await;

    // Ann looks at the first tab: it reads what it shows, all three; the hidden one follows.
    assert_eq!(tab1.eval(&visibility("visible")).await, "visible");
    wait_badge(tab1, false, 0, 0, &title).await;
    wait_badge(tab2, false, 0, 0, &title).await;
    assert_eq!(tab1.eval("window.chat.unread").await, unread(0, 0, 3));
    assert_eq!(tab2.eval("window.chat.unread").await, unread(0, 0, 3));
    assert_eq!(
        server_unread(server, "ann").await,
        [(room.to_owned(), 3, 0, 0)]
    );
    // The line stays where she left off: nothing was written since.
    assert_eq!(tab1.eval(SEPARATOR).await, json!(["New messages", 1]));
    assert_eq!(tab2.eval(SEPARATOR).await, json!(["New messages", 1]));
    // Bob hears how far she read.
    let receipt = bob
        .next_matching("Ann's receipt for message 3", |f| {
            f["type"] == "receipts"
                && f["readers"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|r| r["sender"] == ann && r["seq"] == 3))
        })
        .await;
    assert_eq!(
        receipt["readers"],
        json!([{"sender": ann, "name": "ann", "seq": 3}])
    );

    // Ann answers from the first tab: hers in both, and the line has done its job.
    tab1.say("thanks bob").await;
    let heard = bob
        .next_matching("Ann's answer", |f| {
            f["type"] == "message" && f["text"] == "thanks bob"
        })
        .await;
    assert_eq!(
        (&heard["seq"], &heard["sender"], heard.get("mentions")),
        (&json!(4), &json!(ann), None)
    );
    let said = numbered(&[
        ("bob", "one"),
        ("bob", "two, @ann?"),
        ("bob", "three"),
        ("ann", "thanks bob"),
    ]);
    let mine = "[...document.querySelectorAll('[data-testid=message].mine')].map((li) => Number(li.dataset.seq))";
    assert_eq!(tab1.messages(4).await, said);
    assert_eq!(tab2.messages(4).await, said);
    assert_eq!(tab1.eval(mine).await, json!([4]));
    assert_eq!(
        tab2.eval(mine).await,
        json!([4]),
        "hers in the other tab too"
    );
    wait_json(tab1, "no line", SEPARATOR, json!(0)).await;
    wait_json(tab2, "no line", SEPARATOR, json!(0)).await;

    // Bob reads it: both tabs say so under it.
    bob.send(json!({"type": "read", "room": room, "seq": 4}))
        .await;
    let seen = json!([[4, "Seen by bob"]]);
    wait_json(tab1, "seen by", SEEN_BY, seen.clone()).await;
    wait_json(tab2, "seen by", SEEN_BY, seen).await;
    assert_eq!(
        tab2.eval(&format!("window.chat.readers.get({})", json!(bob_sender)))
            .await,
        json!({"sender": bob_sender, "name": "bob", "seq": 4})
    );
    assert_eq!(tab2.eval("window.chat.unread").await, unread(0, 0, 4));
    wait_badge(tab1, false, 0, 0, &title).await;
    wait_badge(tab2, false, 0, 0, &title).await;
    tab1.assert_no_console_errors();
    tab2.assert_no_console_errors();
}

/// The tab shows `said`, its badge and title `count` unread of which `mentions` mention
/// her, the line above message 1 and message 2 marked as naming her; its client agrees.
async fn check_tab(
    tab: &impl Drive,
    said: &[(u64, String, String)],
    count: u64,
    mentions: u64,
    title: &str,
    state: Value,
) {
    let label = tab.label();
    assert_eq!(tab.messages(said.len()).await, said, "[{label}]");
    wait_badge(tab, true, count, mentions, title).await;
    assert_eq!(tab.eval("window.chat.unread").await, state, "[{label}]");
    assert_eq!(
        tab.eval(SEPARATOR).await,
        json!(["New messages", 1]),
        "[{label}]"
    );
    assert_eq!(tab.eval(MENTIONED).await, json!([2]), "[{label}]");
}

#[tokio::test]
async fn two_chromium_tabs_of_one_user_one_reads_the_others_count_drops() {
    let test = "two_chromium_tabs_of_one_user_one_reads_the_others_count_drops";
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(browser) = Browser::launch_or_skip(test).await else {
        return;
    };
    let started = Instant::now();
    let server = site().await;
    let room = "two-tabs";
    let tab1 = browser.page("ann-1", 1024, 768, Some(HIDDEN)).await;
    tab1.goto(&login_url(&server, "ann", room)).await;
    tab1.wait_connected("webtransport").await;
    let hidden_websocket = format!("{HIDDEN}\n{NO_WEBTRANSPORT}");
    let tab2 = browser
        .tab(&tab1, "ann-2", 1024, 768, Some(&hidden_websocket))
        .await;
    tab2.goto(&demo_url(&server, room, "ann")).await;
    tab2.wait_connected("websocket").await;
    one_tab_reads_the_others_count_drops(&server, room, &tab1, &tab2).await;
    eprintln!("{test}: {:?}", started.elapsed());
}

#[tokio::test]
async fn two_firefox_tabs_of_one_user_one_reads_the_others_count_drops() {
    let test = "two_firefox_tabs_of_one_user_one_reads_the_others_count_drops";
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(firefox) = Firefox::shared_or_skip(test).await else {
        return;
    };
    let started = Instant::now();
    let server = site().await;
    let room = "two-tabs";
    let tab1 = firefox.page("ann-1", (1024, 768), Some(HIDDEN)).await;
    tab1.goto(&login_url(&server, "ann", room)).await;
    tab1.wait_connected("webtransport").await;
    let hidden_websocket = format!("{HIDDEN}\n{NO_WEBTRANSPORT}");
    let tab2 = firefox
        .tab(&tab1, "ann-2", (1024, 768), Some(&hidden_websocket))
        .await;
    tab2.goto(&demo_url(&server, room, "ann")).await;
    tab2.wait_connected("websocket").await;
    one_tab_reads_the_others_count_drops(&server, room, &tab1, &tab2).await;
    eprintln!("{test}: {:?}", started.elapsed());
}

/// Ann's page shows the lobby; on its one connection it joins the kitchen too. Bob, who
/// finds her sender id among the lobby's members, mentions her in the attic, a room her
/// connection never joined: both of the page's chats tell it, once each, with the room,
/// number, sender and text. The host mentions her there too (no sender), and Bob in the
/// kitchen with a long text (the first 100 characters): the kitchen's chat counts it as
/// unread and mentioning her; the lobby on screen counts nothing.
async fn a_mention_reaches_another_room(server: &TestServer, page: &impl DemoPage) {
    let (lobby, kitchen, attic) = ("lobby", "kitchen", "attic");
    let setup = page
        .eval(&format!(
            "(async () => {{
                window.__mentions = [];
                const kitchen = await window.chat.join({});
                window.__kitchen = kitchen;
                for (const chat of [window.chat, kitchen]) {{
                    chat.on('mention', (e) => window.__mentions.push([chat.room, e]));
                }}
                return [kitchen.transport === window.chat.transport,
                        kitchen.me.sender === window.chat.me.sender, window.chat.me.sender];
            }})()",
            json!(kitchen)
        ))
        .await;
    assert_eq!(setup[0], true, "one connection: {setup}");
    assert_eq!(setup[1], true, "one user: {setup}");
    let ann = setup[2].as_str().unwrap().to_owned();

    let mut bob = client_of(server, "bob").await;
    let (joined, _) = bob.join(lobby, "bob").await;
    let bob_sender = joined["you"]["sender"].as_str().unwrap().to_owned();
    let listed: Vec<(&str, &str)> = joined["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap(), m["sender"].as_str().unwrap()))
        .collect();
    assert!(listed.contains(&("ann", ann.as_str())), "{joined}");
    bob.join(attic, "bob").await;
    let text = "@ann come up to the attic";
    assert_eq!(bob.say_mentioning(attic, text, "b1", &[&ann]).await, 1);
    let mention =
        json!({"room": attic, "seq": 1, "from": "bob", "sender": bob_sender, "text": text});
    wait_json(
        page,
        "the mention, told by both chats",
        "window.__mentions",
        json!([[lobby, mention], [kitchen, mention]]),
    )
    .await;

    // The host's message names her by user id, and has no sender.
    let seq = server
        .chat
        .publish_mentioning(attic, "Bot", "ann: the attic is yours", &["ann"])
        .await
        .unwrap();
    assert_eq!(seq, 2);
    let hosts = json!({"room": attic, "seq": 2, "from": "Bot", "text": "ann: the attic is yours"});
    wait_json(
        page,
        "the host's mention, told by both chats",
        "window.__mentions",
        json!([
            [lobby, mention],
            [kitchen, mention],
            [lobby, hosts],
            [kitchen, hosts]
        ]),
    )
    .await;

    // In the kitchen, joined on this connection but not on screen: counted there.
    bob.join(kitchen, "bob").await;
    let long = format!(
        "@ann dinner is ready {}",
        "and it is getting cold ".repeat(5)
    );
    assert!(long.len() > 100);
    assert_eq!(bob.say_mentioning(kitchen, &long, "b2", &[&ann]).await, 1);
    let cut = json!({"room": kitchen, "seq": 1, "from": "bob", "sender": bob_sender, "text": &long[..100]});
    wait_json(
        page,
        "the kitchen's mention, cut to 100 characters",
        "window.__mentions.slice(4)",
        json!([[lobby, cut], [kitchen, cut]]),
    )
    .await;
    wait_json(
        page,
        "the kitchen's count",
        "window.__kitchen.unread",
        unread(1, 1, 0),
    )
    .await;
    assert_eq!(
        page.eval("window.__kitchen.messages.map((m) => [m.seq, m.text, m.mentions, window.__kitchen.mentionsMe(m)])")
            .await,
        json!([[1, long, [ann], true]])
    );
    // The lobby on screen: nothing new there.
    assert_eq!(page.eval("window.chat.unread").await, unread(0, 0, 0));
    assert_eq!(
        page.eval(BADGE).await,
        json!([false, "0", 0, 0, false, "#lobby · wtchat"]).to_string()
    );
    assert_eq!(page.eval("window.__mentions.length").await, 6);
    assert_eq!(
        server_unread(server, "ann").await,
        [(kitchen.to_owned(), 0, 1, 1), (lobby.to_owned(), 0, 0, 0)]
    );
    page.assert_no_console_errors();
}

#[tokio::test]
async fn a_mention_reaches_a_chromium_page_in_another_room_on_its_connection() {
    let test = "a_mention_reaches_a_chromium_page_in_another_room_on_its_connection";
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(browser) = Browser::launch_or_skip(test).await else {
        return;
    };
    let started = Instant::now();
    let server = site().await;
    let page = browser.page("ann", 1024, 768, Some(NO_WEBTRANSPORT)).await;
    page.goto(&login_url(&server, "ann", "lobby")).await;
    page.wait_connected("websocket").await;
    a_mention_reaches_another_room(&server, &page).await;
    eprintln!("{test}: {:?}", started.elapsed());
}

#[tokio::test]
async fn a_mention_reaches_a_firefox_page_in_another_room_on_its_connection() {
    let test = "a_mention_reaches_a_firefox_page_in_another_room_on_its_connection";
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(firefox) = Firefox::shared_or_skip(test).await else {
        return;
    };
    let started = Instant::now();
    let server = site().await;
    let page = firefox.page("ann", (1024, 768), None).await;
    page.goto(&login_url(&server, "ann", "lobby")).await;
    page.wait_connected("webtransport").await;
    a_mention_reaches_another_room(&server, &page).await;
    eprintln!("{test}: {:?}", started.elapsed());
}

/// Waits until `check` holds of the server, for at most [`DEADLINE`].
async fn wait_server<F: std::future::Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    let deadline = Instant::now() + DEADLINE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Ann reads Bob's first message as it comes (her page is on screen), then closes the tab.
/// Bob says three more things, one mentioning her; the host mentions her too. On her next
/// visit (another tab of her browser, still signed in, behind another tab) the page counts
/// 4, 2 of them mentioning her, in the badge and the tab's title; the line sits above
/// message 2, the first she has not read; messages 3 and 5 are marked as naming her. She
/// looks: all read, for the host's API too, the badge gone, the title plain, the line still
/// where she left off. What comes while she watches the newest is read as it shows; scrolled
/// up, what comes is counted beside the room's name (not in the title of a tab in front),
/// until the "New messages" button takes her down to it.
#[tokio::test]
async fn an_offline_user_sees_its_counts_and_mentions_on_its_next_visit() {
    let test = "an_offline_user_sees_its_counts_and_mentions_on_its_next_visit";
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(browser) = Browser::launch_or_skip(test).await else {
        return;
    };
    let started = Instant::now();
    let server = site().await;
    let room = "offline";
    let title = format!("#{room} · wtchat");
    let mut bob = client_of(&server, "bob").await;
    bob.join(room, "bob").await;
    let first = browser.page("ann", 1024, 768, None).await;
    first.goto(&login_url(&server, "ann", room)).await;
    first.wait_connected("webtransport").await;
    let ann = first.eval("window.chat.me.sender").await;
    let ann = ann.as_str().unwrap().to_owned();
    assert_eq!(bob.say(room, "before you go", "b1").await, 1);
    assert_eq!(
        first.messages(1).await,
        numbered(&[("bob", "before you go")])
    );
    // On screen, so read as it shows; the badge never shows.
    wait_json(
        &first,
        "message 1 read",
        "window.chat.unread",
        unread(0, 0, 1),
    )
    .await;
    wait_badge(&first, false, 0, 0, &title).await;
    assert_eq!(
        server_unread(&server, "ann").await,
        [(room.to_owned(), 1, 0, 0)]
    );
    first.assert_no_console_errors();

    // She closes the tab.
    first
        .call("Page.navigate", json!({"url": "about:blank"}))
        .await;
    wait_server("Ann gone from the room", || async {
        let members = server.chat.members(room).await.unwrap();
        members.iter().all(|m| m.name != "ann")
    })
    .await;
    assert_eq!(bob.say(room, "two", "b2").await, 2);
    assert_eq!(
        bob.say_mentioning(room, "@ann are you there?", "b3", &[&ann])
            .await,
        3
    );
    assert_eq!(bob.say(room, "three", "b4").await, 4);
    let seq = server
        .chat
        .publish_mentioning(room, "Bot", "ann: your build failed", &["ann"])
        .await
        .unwrap();
    assert_eq!(seq, 5);
    assert_eq!(
        server_unread(&server, "ann").await,
        [(room.to_owned(), 1, 4, 2)]
    );

    // Her next visit: a tab of the same browser, not in front yet.
    let back = browser
        .tab(&first, "ann-back", 1024, 768, Some(HIDDEN))
        .await;
    back.goto(&demo_url(&server, room, "ann")).await;
    back.wait_connected("webtransport").await;
    assert_eq!(
        back.messages(5).await,
        numbered(&[
            ("bob", "before you go"),
            ("bob", "two"),
            ("bob", "@ann are you there?"),
            ("bob", "three"),
            ("Bot", "ann: your build failed"),
        ])
    );
    wait_badge(&back, true, 4, 2, &format!("(4) {title}")).await;
    assert_eq!(back.eval("window.chat.unread").await, unread(4, 2, 1));
    assert_eq!(back.eval(SEPARATOR).await, json!(["New messages", 2]));
    assert_eq!(back.eval(MENTIONED).await, json!([3, 5]));
    back.screenshot("reads-next-visit").await;

    // She looks: read, everywhere.
    assert_eq!(back.eval(&visibility("visible")).await, "visible");
    wait_badge(&back, false, 0, 0, &title).await;
    assert_eq!(back.eval("window.chat.unread").await, unread(0, 0, 5));
    assert_eq!(
        server_unread(&server, "ann").await,
        [(room.to_owned(), 5, 0, 0)]
    );
    assert_eq!(back.eval(SEPARATOR).await, json!(["New messages", 2]));
    assert_eq!(back.eval(MENTIONED).await, json!([3, 5]));

    // While she watches the newest, what comes is read as it shows: no count.
    for i in 6..=35 {
        server
            .chat
            .publish(room, "Bot", &format!("build {i}"))
            .await
            .unwrap();
    }
    wait_json(
        &back,
        "all read as they came",
        "window.chat.unread",
        unread(0, 0, 35),
    )
    .await;
    wait_badge(&back, false, 0, 0, &title).await;
    // She scrolls up: what comes now is below her view, so unread, and the badge says so
    // (the tab is in front: not its title).
    back.wheel("[data-testid=message-list]", -3000.0).await;
    back.wait_for(
        "the list scrolled up",
        "(() => { const l = document.querySelector('[data-testid=message-list]');
                  return l.scrollHeight - l.scrollTop - l.clientHeight > 200; })()",
    )
    .await;
    assert_eq!(bob.say(room, "still there?", "b5").await, 36);
    wait_badge(&back, true, 1, 0, &title).await;
    assert_eq!(back.eval("window.chat.unread").await, unread(1, 0, 35));
    // The "New messages" button takes her down to it: read.
    back.click("#jump").await;
    wait_badge(&back, false, 0, 0, &title).await;
    assert_eq!(back.eval("window.chat.unread").await, unread(0, 0, 36));
    assert_eq!(
        server_unread(&server, "ann").await,
        [(room.to_owned(), 36, 0, 0)]
    );
    back.assert_no_console_errors();
    eprintln!("{test}: {:?}", started.elapsed());
}

/// The next message a client gets, and the mention frame it gets with it (in whichever order
/// they come).
async fn message_and_mention(client: &mut Client) -> (Value, Value) {
    let (mut message, mut mention) = (None, None);
    while message.is_none() || mention.is_none() {
        let frame = client
            .next_matching("a message and a mention", |f| {
                f["type"] == "message" || f["type"] == "mention"
            })
            .await;
        let slot = if frame["type"] == "message" {
            &mut message
        } else {
            &mut mention
        };
        assert!(slot.is_none(), "one of each: {frame}");
        *slot = Some(frame);
    }
    (message.unwrap(), mention.unwrap())
}

/// In a room of Al, Amy (a page behind another tab), Bob, and Ann (her page, and her
/// phone), Ann types "@a": the page suggests Al and Amy (not herself, on either device),
/// Al chosen; the arrows move the choice, round the ends; Enter puts "@amy " in. "@b"
/// suggests Bob, Escape closes the list, and it stays closed for that "@" ("@bob" is then
/// just text); "@" alone suggests everyone but her; Tab takes the first, Al. Sent, the
/// message mentions exactly Amy and Al: Al's connection gets the mention, Bob's does not,
/// and Amy's page counts one unread mentioning her and marks it.
#[tokio::test]
async fn the_demo_page_suggests_whom_to_mention_and_the_keyboard_picks() {
    let test = "the_demo_page_suggests_whom_to_mention_and_the_keyboard_picks";
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(browser) = Browser::launch_or_skip(test).await else {
        return;
    };
    let started = Instant::now();
    let server = site().await;
    let room = "mentions";
    let mut members = HashMap::new();
    let mut clients = HashMap::new();
    for user in ["al", "bob", "ann"] {
        let mut client = client_of(&server, user).await;
        let (joined, _) = client.join(room, user).await;
        members.insert(user, joined["you"]["sender"].as_str().unwrap().to_owned());
        clients.insert(user, client);
    }
    let amy = browser.page("amy", 1024, 768, Some(HIDDEN)).await;
    amy.goto(&login_url(&server, "amy", room)).await;
    amy.wait_connected("webtransport").await;
    let amy_sender = amy.eval("window.chat.me.sender").await;
    members.insert("amy", amy_sender.as_str().unwrap().to_owned());
    let page = browser.page("ann", 1024, 768, None).await;
    page.goto(&login_url(&server, "ann", room)).await;
    page.wait_connected("webtransport").await;
    page.wait_members(&["al", "amy", "ann", "ann", "bob"]).await;
    assert_eq!(
        page.eval("window.chat.me.sender").await,
        json!(members["ann"])
    );
    let offer = |list: &[(&str, bool)]| {
        json!(
            list.iter()
                .map(|(name, active)| json!([name, members[name], active]))
                .collect::<Vec<_>>()
        )
    };

    page.type_into(INPUT, "@a").await;
    wait_json(
        &page,
        "suggestions",
        SUGGESTIONS,
        offer(&[("al", true), ("amy", false)]),
    )
    .await;
    assert_eq!(
        page.eval("document.activeElement.getAttribute('aria-activedescendant')")
            .await,
        "mention-option-0"
    );
    page.press("ArrowDown").await;
    wait_json(
        &page,
        "Amy chosen",
        SUGGESTIONS,
        offer(&[("al", false), ("amy", true)]),
    )
    .await;
    assert_eq!(
        page.eval("document.activeElement.getAttribute('aria-activedescendant')")
            .await,
        "mention-option-1"
    );
    page.press("ArrowDown").await;
    wait_json(
        &page,
        "round to Al",
        SUGGESTIONS,
        offer(&[("al", true), ("amy", false)]),
    )
    .await;
    page.press("ArrowUp").await;
    wait_json(
        &page,
        "back round to Amy",
        SUGGESTIONS,
        offer(&[("al", false), ("amy", true)]),
    )
    .await;
    page.screenshot("reads-mention-suggestions").await;
    page.press("Enter").await;
    wait_json(&page, "closed", SUGGESTIONS, Value::Null).await;
    let value = "document.querySelector('[data-testid=message-input]').value";
    assert_eq!(page.eval(value).await, "@amy ");
    assert_eq!(
        page.eval("document.querySelectorAll('[data-testid=message]').length")
            .await,
        0,
        "Enter picked, it did not send"
    );

    page.type_into(INPUT, "and @b").await;
    wait_json(&page, "Bob", SUGGESTIONS, offer(&[("bob", true)])).await;
    page.press("Escape").await;
    wait_json(&page, "closed by Escape", SUGGESTIONS, Value::Null).await;
    page.type_into(INPUT, "ob").await;
    assert_eq!(page.eval(value).await, "@amy and @bob");
    assert_eq!(page.eval(SUGGESTIONS).await, Value::Null, "still closed");
    page.type_into(INPUT, " and @").await;
    wait_json(
        &page,
        "everyone but Ann",
        SUGGESTIONS,
        offer(&[("al", true), ("amy", false), ("bob", false)]),
    )
    .await;
    page.press("Tab").await;
    wait_json(&page, "closed by Tab", SUGGESTIONS, Value::Null).await;
    assert_eq!(page.eval(value).await, "@amy and @bob and @al ");
    page.type_into(INPUT, "look").await;
    page.press("Enter").await;
    let text = "@amy and @bob and @al look";
    assert_eq!(page.messages(1).await, numbered(&[("ann", text)]));

    // Exactly Amy and Al.
    let mut al = clients.remove("al").unwrap();
    let (message, mention) = message_and_mention(&mut al).await;
    assert_eq!(
        (&message["seq"], &message["text"]),
        (&json!(1), &json!(text))
    );
    let mut named: Vec<String> = serde_json::from_value(message["mentions"].clone()).unwrap();
    named.sort();
    let mut want = vec![members["amy"].clone(), members["al"].clone()];
    want.sort();
    assert_eq!(named, want);
    assert_eq!(
        mention,
        json!({"type": "mention", "room": room, "seq": 1, "from": "ann", "sender": members["ann"], "text": text})
    );
    let mut bob = clients.remove("bob").unwrap();
    let message = bob
        .next_matching("Ann's message", |f| f["type"] == "message")
        .await;
    assert!(
        !message["mentions"]
            .as_array()
            .unwrap()
            .contains(&json!(members["bob"])),
        "{message}"
    );
    // Amy's page: one unread, naming her; Ann's own is no mention of hers.
    wait_badge(&amy, true, 1, 1, &format!("(1) #{room} · wtchat")).await;
    assert_eq!(amy.eval(MENTIONED).await, json!([1]));
    assert_eq!(amy.eval(SEPARATOR).await, json!(["New messages", 1]));
    assert_eq!(page.eval(MENTIONED).await, json!([]));
    page.assert_no_console_errors();
    amy.assert_no_console_errors();
    eprintln!("{test}: {:?}", started.elapsed());
}
