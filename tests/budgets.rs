//! What one client address may hold at once, tried as an attacker tries it: plain sockets
//! from another loopback address (127.0.0.2) against the server `wtchat serve` runs, with
//! its defaults unless a test says otherwise. Each budget answers with its status and
//! `Retry-After`, and meanwhile a client at another address (127.0.0.1, where curl, the
//! WebSocket client and Chromium connect from) loads the page and chats.

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use browser::{Browser, DemoPage, Drive};
use common::{Client, DEADLINE, TestServer, start, start_with};
use futures_util::future::join_all;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The attacker's address: loopback, but not the one the others connect from.
const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// A TCP connection to `to` from `source`.
async fn connect_from(source: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// What the server said on `tcp` within `wait`, up to its end: None if it said nothing.
async fn said(tcp: &mut TcpStream, wait: Duration) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            // The end (or a reset after the answer).
            Ok(_) => break,
            Err(_) if got.is_empty() => return None,
            Err(_) => break,
        }
    }
    Some(String::from_utf8_lossy(&got).into_owned())
}

/// curl, as a user fetches a page: (status, time taken).
async fn curl(url: &str) -> (u16, Duration) {
    let started = Instant::now();
    let out = tokio::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
            url,
        ])
        .output()
        .await
        .expect("curl runs");
    let status = String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0);
    (status, started.elapsed())
}

/// Two clients at another address chat in `room` (over WebSocket and WebTransport): the
/// text the second received from the first.
async fn chat_from_elsewhere(server: &TestServer, room: &str) -> String {
    let mut ann = Client::ws(server).await;
    let mut bob = Client::wt(server).await;
    ann.join(room, "ann").await;
    bob.join(room, "bob").await;
    ann.say(room, "still served", "m1").await;
    bob.messages(room, 1).await[0].2.clone()
}

#[tokio::test]
async fn idle_sockets_from_one_address_leave_every_other_address_served() {
    let server = start().await;
    // 1,024 sockets from one address (the whole pool of `max_http_connections`), sending
    // nothing.
    let mut sockets = Vec::new();
    for _ in 0..1024 {
        sockets.push(connect_from(ATTACKER, server.http).await);
    }
    let answers = join_all(
        sockets
            .iter_mut()
            .map(|tcp| said(tcp, Duration::from_millis(500))),
    )
    .await;
    let held = answers.iter().filter(|a| a.is_none()).count();
    let refused: Vec<_> = answers.iter().flatten().collect();
    assert_eq!(
        held, 32,
        "the address's share (max_http_connections_per_ip)"
    );
    assert_eq!(refused.len(), 1024 - 32);
    for answer in &refused {
        assert!(
            answer.starts_with("HTTP/1.1 429 Too Many Requests\r\n")
                && answer.contains("\r\nRetry-After: 1\r\n")
                && answer.ends_with("too many HTTP connections from your address\n"),
            "{answer:?}"
        );
    }

    // Meanwhile, from another address: the demo page, the configuration and a chat.
    let started = Instant::now();
    let (status, took) = curl(&format!("http://127.0.0.1:{}/", server.http.port())).await;
    assert_eq!(status, 200, "the demo page loads ({took:?})");
    assert_eq!(server.get("/wtchat/config").await.0, 200);
    assert_eq!(chat_from_elsewhere(&server, "lobby").await, "still served");
    let served_in = started.elapsed();
    eprintln!("page, configuration and a chat from another address: {served_in:?}");
    assert!(
        served_in < Duration::from_secs(1),
        "served within a second: {served_in:?}"
    );

    // And a browser page loads, connects and chats.
    if let Some(browser) = Browser::launch_or_skip("idle_sockets_from_one_address").await {
        let page = browser.page("bystander", 1024, 768, None).await;
        page.goto(&format!(
            "http://127.0.0.1:{}/?room=lobby&name=ann",
            server.http.port()
        ))
        .await;
        page.wait_connected("webtransport").await;
        page.type_and_enter("[data-testid=message-input]", "hello despite them")
            .await;
        let texts = page
            .wait_for(
                "the message shown",
                "(() => { const t = [...document.querySelectorAll('[data-testid=message-text]')]
                    .map(e => e.textContent); return t.includes('hello despite them') && t; })()",
            )
            .await;
        assert_eq!(texts[1], "hello despite them", "{texts}");
        assert!(
            page.console_errors().is_empty(),
            "{:?}",
            page.console_errors()
        );
    }
    drop(sockets);
    server.stop().await;
}

/// Opens a long-polling session from the attacker's address: its poll URL and secret.
async fn poll_session(server: &TestServer) -> (String, String) {
    let mut tcp = connect_from(ATTACKER, server.http).await;
    tcp.write_all(
        b"POST /wtchat/poll HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let answer = said(&mut tcp, DEADLINE).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let body: serde_json::Value =
        serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
    let secret = body["secret"].as_str().unwrap().to_owned();
    (body["poll"].as_str().unwrap().to_owned(), secret)
}

#[tokio::test]
async fn a_session_holds_one_poll_and_held_polls_leave_the_pool_to_others() {
    // A small pool: before, eight held polls of one session took all of it.
    let server = start_with(|c| c.max_http_connections(8)).await;
    let (poll, secret) = poll_session(&server).await;
    let after = 0;
    let mut polls = Vec::new();
    for _ in 0..8 {
        let mut tcp = connect_from(ATTACKER, server.http).await;
        let request = format!(
            "GET {poll} HTTP/1.1\r\nHost: x\r\nWtchat-Secret: {secret}\r\n\
             Wtchat-After: {after}\r\n\r\n"
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        polls.push(tcp);
    }
    // Each poll answers the one before it at once, with nothing: one stays held.
    let answers = join_all(
        polls
            .iter_mut()
            .map(|tcp| said(tcp, Duration::from_secs(2))),
    )
    .await;
    let answered: Vec<_> = answers.iter().flatten().collect();
    assert_eq!(answered.len(), 7, "{answers:?}");
    for answer in answered {
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(
            answer.ends_with(&format!("{{\"next\":{after},\"frames\":[]}}")),
            "{answer}"
        );
    }
    // The pool serves everyone else meanwhile.
    assert_eq!(server.get("/wtchat/config").await.0, 200);
    assert_eq!(chat_from_elsewhere(&server, "lobby").await, "still served");
    server.stop().await;
}

/// Opens an SSE stream from the attacker's address; the answer's head, or the whole
/// answer when it is refused.
async fn open_stream(server: &TestServer) -> (TcpStream, String) {
    let mut tcp = connect_from(ATTACKER, server.http).await;
    tcp.write_all(b"GET /wtchat/sse HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
        let n = tokio::time::timeout(DEADLINE, tcp.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    (tcp, String::from_utf8_lossy(&got).into_owned())
}

#[tokio::test]
async fn streams_and_held_polls_have_a_budget_per_address_outside_the_pool() {
    let server = start_with(|c| c.max_http_connections(8)).await;
    // 64 streams (the default `max_streams_per_ip`), far more than the pool of 8.
    let mut streams = Vec::new();
    for _ in 0..64 {
        let (tcp, head) = open_stream(&server).await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        streams.push(tcp);
    }
    // The 65th stream, and a poll, are over the address's budget.
    let (_, refused) = open_stream(&server).await;
    assert!(
        refused.starts_with("HTTP/1.1 429 Too Many Requests\r\n")
            && refused.to_lowercase().contains("\r\nretry-after: 5\r\n"),
        "{refused}"
    );
    let mut tcp = connect_from(ATTACKER, server.http).await;
    tcp.write_all(b"GET /wtchat/poll/1.x?after=0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let poll = said(&mut tcp, DEADLINE).await.unwrap();
    assert!(
        poll.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
        "{poll}"
    );
    assert!(
        poll.ends_with("too many streams and polls from your address"),
        "{poll}"
    );
    // Everyone else is served: the streams hold no place in the pool.
    assert_eq!(server.get("/wtchat/config").await.0, 200);
    let mut elsewhere = Client::sse(&server).await;
    elsewhere.join("lobby", "on sse").await;
    assert_eq!(chat_from_elsewhere(&server, "lobby").await, "still served");
    // A stream that ends gives its place back (once the server notices: at the latest
    // its next keepalive, 15 s).
    drop(streams.pop());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, head) = open_stream(&server).await;
        if head.starts_with("HTTP/1.1 200 OK\r\n") {
            break;
        }
        assert!(Instant::now() < deadline, "{head}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn an_ipv6_client_behind_a_trusted_proxy_is_counted_by_its_slash_64() {
    // As behind the book's nginx: the proxy is 127.0.0.1, and names the client.
    let server = start_with(|c| {
        c.trusted_proxy("127.0.0.1".parse().unwrap())
            .max_connections_per_ip(2)
    })
    .await;
    let from = |client: &'static str| [("X-Forwarded-For", client)];
    let _a = Client::ws_request(&server, "", &from("2001:db8:1:2::1"))
        .await
        .expect("the first of the /64");
    let _b = Client::ws_request(&server, "", &from("2001:db8:1:2::2"))
        .await
        .expect("the second of the /64");
    // Any other address of the same /64 is the same client...
    for third in ["2001:db8:1:2::3", "2001:db8:1:2:ffff:1:2:3"] {
        let mut refused = Client::ws_request(&server, "", &from(third)).await.unwrap();
        assert_eq!(refused.expect_busy().await, 5000, "{third}");
    }
    // ...the next /64 is another.
    let _c = Client::ws_request(&server, "", &from("2001:db8:1:3::1"))
        .await
        .expect("another /64");
    server.stop().await;

    // With --ipv6-prefix 128, each address is a client of its own.
    let server = start_with(|c| {
        c.trusted_proxy("127.0.0.1".parse().unwrap())
            .max_connections_per_ip(1)
            .ipv6_prefix(128)
    })
    .await;
    let _a = Client::ws_request(&server, "", &from("2001:db8:1:2::1"))
        .await
        .unwrap();
    let _b = Client::ws_request(&server, "", &from("2001:db8:1:2::2"))
        .await
        .expect("another address, another client");
    server.stop().await;
}

#[tokio::test]
async fn a_trusted_proxys_connections_are_not_capped_as_one_address() {
    // Behind a proxy every connection comes from the proxy: it is not one client.
    let server = start_with(|c| {
        c.trusted_proxy("127.0.0.2".parse().unwrap())
            .max_http_connections_per_ip(2)
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(connect_from(ATTACKER, server.http).await);
    }
    let answers = join_all(
        held.iter_mut()
            .map(|tcp| said(tcp, Duration::from_millis(300))),
    )
    .await;
    assert!(answers.iter().all(Option::is_none), "{answers:?}");
    // Anyone else still has a share of two.
    let mut own = Vec::new();
    for _ in 0..3 {
        own.push(connect_from("127.0.0.1".parse().unwrap(), server.http).await);
    }
    let answers = join_all(
        own.iter_mut()
            .map(|tcp| said(tcp, Duration::from_millis(300))),
    )
    .await;
    let refused: Vec<_> = answers.iter().flatten().collect();
    assert_eq!(refused.len(), 1, "the third of 127.0.0.1: {answers:?}");
    assert!(refused[0].starts_with("HTTP/1.1 429 "), "{refused:?}");
    drop((held, own));
    server.stop().await;
}

/// The attacker of the room table, in Python's `websockets` as it was made: `conns`
/// WebSockets from 127.0.0.2 (opened one after the other), each joining 16 rooms no one
/// made yet, all at once. Prints the outcomes (`joined`, or the error code) as one JSON
/// line, then holds every connection open until its standard input closes.
const ROOM_FILLER: &str = r#"
import asyncio, collections, json, sys
from websockets.asyncio.client import connect

async def main(url, conns):
    sockets = [await connect(url, local_addr=("127.0.0.2", 0)) for _ in range(conns)]
    async def fill(ws, c):
        for i in range(16):
            await ws.send(json.dumps({"type": "join", "room": f"r{c}-{i}", "name": "x"}))
        got = []
        while len(got) < 16:
            frame = json.loads(await ws.recv())
            if frame["type"] == "joined":
                got.append("joined")
            elif frame["type"] == "error":
                got.append(frame["code"])
        return got
    outcomes = await asyncio.gather(*(fill(ws, c) for c, ws in enumerate(sockets)))
    print(json.dumps(collections.Counter(o for got in outcomes for o in got)), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for ws in sockets:
        await ws.close()

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"#;

/// Runs [`ROOM_FILLER`] against `server`: its outcomes, and the running script (its
/// connections held until it is dropped).
async fn fill_rooms(
    server: &TestServer,
    conns: usize,
) -> (serde_json::Value, tokio::process::Child) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new("python3")
        .args(["-c", ROOM_FILLER, &server.ws_url(), &conns.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the attack finishes")
        .unwrap()
        .expect("the script printed its outcomes");
    (serde_json::from_str(&line).unwrap(), child)
}

#[tokio::test]
async fn one_address_cannot_fill_the_room_table() {
    if !common::python_has("websockets") {
        return;
    }
    // The defaults of `wtchat serve`: 10,000 rooms, which 625 connections × 16 rooms
    // filled in half a second.
    let server = start().await;
    let (outcomes, attack) = fill_rooms(&server, 625).await;
    // The address may create 120 rooms a minute, as many at once
    // (`max_new_rooms_per_minute_per_ip`): 120, and the two a second that come back while
    // the attack runs.
    let joined = outcomes["joined"].as_u64().unwrap();
    assert!((120..=130).contains(&joined), "{outcomes}");
    assert_eq!(outcomes["rate_limited"], 10_000 - joined, "{outcomes}");
    // Another address loads the demo page, makes a room of its own and chats in it, at
    // once.
    let started = Instant::now();
    let (status, _) = curl(&format!("http://127.0.0.1:{}/", server.http.port())).await;
    assert_eq!(status, 200, "the demo page loads");
    assert_eq!(
        chat_from_elsewhere(&server, "a-new-room").await,
        "still served"
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "{took:?}");
    drop(attack);
    server.stop().await;
}

#[tokio::test]
async fn one_address_holds_at_most_its_rooms_open_and_a_user_holds_its_own() {
    if !common::python_has("websockets") {
        return;
    }
    // Creation left unbounded: what is held open is the limit here.
    let server = start_with(|c| c.max_new_rooms_per_minute_per_ip(100_000)).await;
    let (outcomes, attack) = fill_rooms(&server, 40).await;
    assert_eq!(outcomes["joined"], 256, "{outcomes}");
    assert_eq!(outcomes["too_many_rooms"], 40 * 16 - 256, "{outcomes}");
    drop(attack);
    server.stop().await;

    // Signed-in users are counted as themselves: two users at one address (127.0.0.1)
    // each hold their own 256.
    let secret = "a-secret-of-32-bytes-or-more-for-rooms";
    let server = start_with(|c| {
        c.max_new_rooms_per_minute_per_ip(100_000)
            .token_secret(secret)
    })
    .await;
    let mut held = Vec::new();
    for user in ["ann", "bob"] {
        let mut joined = 0;
        let mut refused = Vec::new();
        for batch in 0..17 {
            let mut client = Client::ws_request(
                &server,
                &format!("?token={}", common::token(secret, user, user)),
                &[],
            )
            .await
            .unwrap();
            for i in 0..16 {
                let room = format!("{user}-{batch}-{i}");
                client.send(json!({"type": "join", "room": room})).await;
            }
            for _ in 0..16 {
                let frame = client
                    .next_matching("an answer", |f| {
                        f["type"] == "joined" || f["type"] == "error"
                    })
                    .await;
                match frame["type"].as_str() {
                    Some("joined") => joined += 1,
                    _ => refused.push(frame["code"].as_str().unwrap().to_owned()),
                }
            }
            // The connections stay: their rooms are held open.
            held.push(client);
        }
        assert_eq!(joined, 256, "{user}");
        assert_eq!(refused.len(), 16, "{user}: {refused:?}");
        assert!(
            refused.iter().all(|code| code == "too_many_rooms"),
            "{refused:?}"
        );
    }
    drop(held);
    server.stop().await;
}

/// Over WebTransport the refusal comes in-band (`busy`, then `bye` 4004); over long polling
/// it is the session's opening `POST`, answered 429 with `Retry-After`. Either way the page
/// says the server is busy and for how long, waits, and comes in by itself.
#[tokio::test]
async fn a_page_refused_as_busy_says_so_waits_and_comes_in() {
    let Some(browser) = Browser::launch_or_skip("a_page_refused_as_busy").await else {
        return;
    };
    for (forced, transport) in [("", "webtransport"), ("&transport=longpoll", "longpoll")] {
        // One connection per address, and 127.0.0.1 holds it.
        let server = start_with(|c| c.max_connections_per_ip(1)).await;
        let mut holder = Client::ws(&server).await;
        holder.join("lobby", "holder").await;
        let page = browser
            .page(&format!("busy-{transport}"), 1024, 768, None)
            .await;
        page.goto(&format!(
            "http://127.0.0.1:{}/?room=lobby&name=ann{forced}",
            server.http.port()
        ))
        .await;
        // The page says the server is busy, and for how long it waits (the server's 5 s).
        let said = page
            .wait_for(
                "the busy status",
                "(() => { const s = document.querySelector('[data-testid=status]');
                    return s.dataset.busy === 'true' && s.textContent; })()",
            )
            .await;
        assert_eq!(said, "Server busy — retrying in 5 s", "{transport}");
        // The place comes free; the page comes in by itself after its wait, and chats.
        drop(holder);
        page.wait_connected(transport).await;
        page.type_and_enter("[data-testid=message-input]", "in at last")
            .await;
        // Stored in the room (the page holds this address's one connection: asked directly).
        let deadline = Instant::now() + DEADLINE;
        loop {
            let page = server.chat.history("lobby", None, 10).await.unwrap();
            if page.messages.iter().any(|m| m.text == "in at last") {
                break;
            }
            assert!(Instant::now() < deadline, "never stored: {page:?}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        // The refused POST is the one thing Chromium logs, as a failed request.
        let others: Vec<_> = page
            .console_errors()
            .into_iter()
            .filter(|e| !(e.source == "network" && e.text.contains("429")))
            .collect();
        assert!(others.is_empty(), "{transport}: {others:?}");
        server.stop().await;
    }
}

#[tokio::test]
async fn an_address_creates_at_most_its_rooms_a_day() {
    // A creator within the minute's budget still meets the day's.
    let server = start_with(|c| c.max_new_rooms_per_day_per_ip(3)).await;
    let mut maker = Client::ws(&server).await;
    for room in ["d1", "d2", "d3"] {
        maker.join(room, "maker").await;
    }
    maker
        .send(json!({"type": "join", "room": "d4", "name": "maker"}))
        .await;
    let refused = maker.next_of("error").await;
    assert_eq!(
        (&refused["code"], &refused["room"]),
        (&json!("rate_limited"), &json!("d4")),
        "{refused}"
    );
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("your address (or user) created too many rooms"),
        "{refused}"
    );
    // Rooms that exist are joined as ever, from any connection of the address.
    let mut other = Client::wt(&server).await;
    other.join("d1", "other").await;
    server.stop().await;
}

/// Many signed-in users behind one address (a carrier NAT's) are many clients: once
/// identified, a connection counts against its user (`max_connections_per_user`) and
/// leaves its address's count (which bounds the connections not yet identified, and the
/// anonymous ones on a server without sign-in).
#[tokio::test]
async fn signed_in_users_behind_one_address_count_as_themselves() {
    let secret = "a-secret-of-32-bytes-or-more-for-users";
    let server = start_with(|c| {
        c.token_secret(secret)
            .max_connections_per_ip(2)
            .max_connections_per_user(2)
    })
    .await;
    let token = |user: &str| format!("?token={}", common::token(secret, user, user));
    // Six users at 127.0.0.1, three times its two places: each comes in and is listed.
    let mut users = Vec::new();
    for n in 1..=6 {
        let user = format!("u{n}");
        let mut client = Client::ws_request(&server, &token(&user), &[])
            .await
            .unwrap();
        client.join("lobby", &user).await;
        users.push(client);
    }
    let members = server.chat.members("lobby").await.unwrap();
    assert_eq!(members.len(), 6, "{members:?}");
    // One user holds two connections, over any transport: a third is told busy.
    let mut second = Client::wt_request(&server, &format!("/wtchat{}", token("u1")), &[])
        .await
        .unwrap();
    second.join("lobby", "u1").await;
    let mut refused = Client::ws_request(&server, &token("u1"), &[])
        .await
        .unwrap();
    let error = refused.next().await;
    assert_eq!(
        (&error["code"], &error["message"], &error["retryAfterMs"]),
        (
            &json!("busy"),
            &json!("too many connections for your user"),
            &json!(5000)
        ),
        "{error}"
    );
    assert_eq!(refused.next().await["code"], 4004);
    // One of them ends: the user's place comes free.
    drop(second);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut again = Client::ws_request(&server, &token("u1"), &[])
            .await
            .unwrap();
        again
            .send(json!({"type": "join", "room": "lobby", "name": "u1"}))
            .await;
        if again.next().await["type"] == "joined" {
            break;
        }
        assert!(Instant::now() < deadline, "the place never came free");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}

/// The browser client, as a site bundles it from the npm package: served by the site itself.
const CLIENT_JS: &str = include_str!("../lib/client/wtchat.js");

/// A page whose own address has no place left at the chat server (its connections not yet
/// upgraded, all taken): the fetch of `/wtchat/config` is answered 429 with `Retry-After`,
/// and the browser client says it is busy, waits as long as told, then comes in and chats.
/// The page and its client come from the site's own server (another origin, as with the
/// npm package), so that the config fetch is the page's first connection to the chat
/// server — and a cross-origin one, which must be able to read the refusal.
#[tokio::test]
async fn a_client_whose_config_fetch_is_refused_as_busy_waits_and_comes_in() {
    use axum::{Router, http::header, response::Html, routing::get};
    let Some(browser) = Browser::launch_or_skip("a_client_whose_config_fetch_is_refused").await
    else {
        return;
    };
    let site = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let site_port = site.local_addr().unwrap().port();
    let pages = Router::new()
        .route(
            "/",
            get(|| async { Html("<!doctype html><title>site</title>") }),
        )
        .route(
            "/wtchat.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], CLIENT_JS) }),
        );
    // Ends with the test's runtime.
    tokio::spawn(async move { axum::serve(site, pages).await });
    let server = start_with(move |c| {
        c.allow_origin(format!("http://127.0.0.1:{site_port}"))
            .max_http_connections_per_ip(4)
    })
    .await;
    let page = browser.page("config-busy", 1024, 768, None).await;
    page.goto(&format!("http://127.0.0.1:{site_port}/")).await;
    page.eval("import('/wtchat.js').then((m) => { window.wtchat = m; return true; })")
        .await;
    // 127.0.0.1's places among the chat server's connections not yet upgraded: taken by
    // idle sockets until a request from there is refused.
    let mut idle = Vec::new();
    loop {
        idle.push(TcpStream::connect(server.http).await.unwrap());
        let mut probe = TcpStream::connect(server.http).await.unwrap();
        probe
            .write_all(b"GET /wtchat/config HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = said(&mut probe, DEADLINE).await.unwrap_or_default();
        if answer.starts_with("HTTP/1.1 429") {
            break;
        }
        assert!(idle.len() < 8, "never refused: {answer}");
    }
    page.eval(&format!(
        r#"(() => {{
            window.statuses = [];
            wtchat.connect({{ server: "http://127.0.0.1:{}", room: "lobby", name: "ann",
                             on: {{ status: (s) => statuses.push(s) }} }})
              .then((chat) => {{ window.chat = chat; }}, (e) => {{ window.failed = String(e); }});
            return true;
        }})()"#,
        server.http.port()
    ))
    .await;
    // It says why it waits, and for how long: Retry-After's second, read across origins.
    let busy = page
        .wait_for(
            "a busy status",
            "(() => { const s = statuses.find((s) => s.error === 'busy'); return s && s; })()",
        )
        .await;
    assert_eq!(busy["status"], "connecting", "{busy}");
    assert!(busy["delay"].as_u64().unwrap() >= 1000, "{busy}");
    // The places come free: it comes in by itself and chats.
    drop(idle);
    page.wait_for("connected", "!!window.chat || window.failed")
        .await;
    let sent = page
        .eval("chat.send('in after the wait').then((ack) => ack.seq)")
        .await;
    assert_eq!(sent, 1, "{:?}", page.eval("window.failed || null").await);
    let stored = server.chat.history("lobby", None, 10).await.unwrap();
    assert_eq!(stored.messages[0].text, "in after the wait");
    server.stop().await;
}
