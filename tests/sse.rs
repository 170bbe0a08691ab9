//! The Server-Sent Events transport, driven by `curl` (a standard client, its defaults:
//! `-N` only turns off its own output buffering) for the stream and plain HTTP posts for
//! the frames: one room with a WebSocket client, one order; a reconnect with
//! `Last-Event-ID` resumes with nothing lost or repeated; bad input gets its answer
//! (every case of tests/bad_input.rs that applies runs there over SSE too); only an allowed
//! origin opens a stream or a polling session, and reads it.
//!
//! And with the harness's own plain HTTP/1.1 client (`Client::sse`): clients of all four
//! transports in one room see one order; `Last-Event-ID` resumes every room of a stream; a
//! new stream that joins with `since` (as the wtchat client resumes) gets exactly what was
//! missed.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;

use common::{Client, DEADLINE, Seen, TestServer, start_with};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// One event of the stream: its id (if any) and its data as JSON.
#[derive(Debug)]
struct Event {
    id: Option<String>,
    data: Value,
}

/// An event stream read by `curl`.
struct Stream {
    curl: Child,
    lines: Lines<BufReader<ChildStdout>>,
    /// Where this stream's frames are posted, and the secret its posts bear.
    post: String,
    secret: String,
    http: SocketAddr,
    last_id: Option<String>,
}

impl Stream {
    /// Opens `/wtchat/sse` with `headers`; reads the `session` event.
    async fn open(http: SocketAddr, headers: &[&str]) -> Stream {
        let mut command = Command::new("curl");
        command.args(["-sN", "--max-time", "60"]);
        for header in headers {
            command.args(["-H", header]);
        }
        let mut curl = command
            .arg(format!("http://{http}/wtchat/sse"))
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("curl runs");
        let lines = BufReader::new(curl.stdout.take().unwrap()).lines();
        let mut stream = Stream {
            curl,
            lines,
            post: String::new(),
            secret: String::new(),
            http,
            last_id: None,
        };
        let hello = stream.next().await.expect("a session event");
        assert_eq!(hello.data["type"], "session", "{:?}", hello);
        stream.post = hello.data["post"].as_str().unwrap().to_string();
        stream.secret = hello.data["secret"].as_str().unwrap().to_string();
        stream
    }

    /// The next event, None when the stream ended.
    async fn next(&mut self) -> Option<Event> {
        let read = async {
            let (mut id, mut data) = (None, String::new());
            while let Some(line) = self.lines.next_line().await.unwrap() {
                if line.is_empty() && !data.is_empty() {
                    return Some(Event {
                        id,
                        data: serde_json::from_str(&data).unwrap(),
                    });
                }
                if let Some(value) = line.strip_prefix("id: ") {
                    id = Some(value.to_string());
                } else if let Some(value) = line.strip_prefix("data: ") {
                    data.push_str(value);
                }
            }
            None
        };
        let event = tokio::time::timeout(DEADLINE, read)
            .await
            .expect("an event before the deadline");
        if let Some(Event { id: Some(id), .. }) = &event {
            self.last_id = Some(id.clone());
        }
        event
    }

    /// The next event whose data has `type` `kind`.
    async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let event = self
                .next()
                .await
                .unwrap_or_else(|| panic!("ended before {kind}"));
            if event.data["type"] == kind {
                return event.data;
            }
        }
    }

    /// Posts `frames`, one per line; the status.
    async fn post(&self, frames: &[Value]) -> u16 {
        self.post_raw(
            &frames
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
            &[],
        )
        .await
    }

    async fn post_raw(&self, body: &str, headers: &[(&str, &str)]) -> u16 {
        let mut headers = headers.to_vec();
        headers.push(("wtchat-secret", &self.secret));
        common::post_text(self.http, &self.post, body, &headers).await
    }
}

async fn server() -> TestServer {
    start_with(|config| config.frames_per_second(10_000).frame_burst(10_000)).await
}

#[tokio::test]
async fn an_sse_client_and_a_websocket_client_share_one_room_in_one_order() {
    let server = server().await;
    let mut sse = Stream::open(server.http, &[]).await;
    assert_eq!(
        sse.post(&[json!({"type": "join", "room": "r", "name": "eve"})])
            .await,
        204
    );
    let joined = sse.next_of("joined").await;
    assert_eq!(joined["you"]["name"], "eve");
    let mut ws = Client::ws(&server).await;
    ws.join("r", "wes").await;
    // Interleaved sends from both: both see the same numbers and texts.
    for i in 0..5 {
        let frame =
            json!({"type": "send", "room": "r", "text": format!("e{i}"), "id": format!("e{i}")});
        assert_eq!(sse.post(&[frame]).await, 204);
        ws.send(
            json!({"type": "send", "room": "r", "text": format!("w{i}"), "id": format!("w{i}")}),
        )
        .await;
    }
    let over_ws = ws.messages("r", 10).await;
    let mut over_sse = Vec::new();
    while over_sse.len() < 10 {
        let m = sse.next_of("message").await;
        over_sse.push(common::seq_text(&m));
    }
    assert_eq!(over_sse, over_ws);
    let seqs: Vec<u64> = over_sse.iter().map(|m| m.0).collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
    server.stop().await;
}

/// Eve's stream joins room `r`, Wes (WebSocket) says m1-m3, and Eve receives them: her
/// stream, her `joined`, and Wes.
async fn eve_heard_three(server: &TestServer) -> (Stream, Value, Client) {
    let mut sse = Stream::open(server.http, &[]).await;
    sse.post(&[json!({"type": "join", "room": "r", "name": "eve"})])
        .await;
    let joined = sse.next_of("joined").await;
    let mut ws = Client::ws(server).await;
    ws.join("r", "wes").await;
    for i in 1..=3 {
        ws.say("r", &format!("m{i}"), &format!("m{i}")).await;
    }
    for i in 1..=3u64 {
        assert_eq!(sse.next_of("message").await["seq"], i);
    }
    (sse, joined, ws)
}

#[tokio::test]
async fn a_reconnect_with_last_event_id_resumes_with_nothing_lost_or_repeated() {
    let server = server().await;
    let (sse, joined, mut ws) = eve_heard_three(&server).await;
    // The stream drops (as a network change would); meanwhile three more are sent.
    let last = sse.last_id.clone().expect("message events carry ids");
    drop(sse);
    for i in 4..=6 {
        ws.say("r", &format!("m{i}"), &format!("m{i}")).await;
    }
    // A reconnect as EventSource makes it: the same URL, and the last id it saw.
    let header = format!("Last-Event-ID: {last}");
    let mut again = Stream::open(server.http, &[&header]).await;
    let rejoined = again.next_of("joined").await;
    assert_eq!(rejoined["gap"], false, "{rejoined}");
    assert_eq!(rejoined["epoch"], joined["epoch"]);
    assert_eq!(
        rejoined["you"]["sender"], joined["you"]["sender"],
        "the same sender: the resume key came back"
    );
    let mut seqs = Vec::new();
    while seqs.len() < 3 {
        seqs.push(again.next_of("message").await["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs, [4, 5, 6], "exactly what was missed");
    // And the new stream's post address works.
    let send = json!({"type": "send", "room": "r", "text": "back", "id": "b1"});
    assert_eq!(again.post(&[send]).await, 204);
    assert_eq!(again.next_of("ack").await["seq"], 7);
    server.stop().await;
}

/// Changes move a stream's place like messages: an edit seen live is not replayed after a
/// reconnect, and what changed while the stream was down comes once, before the messages
/// missed.
#[tokio::test]
async fn a_reconnect_gets_the_changes_it_missed_and_not_those_it_saw() {
    let server = server().await;
    let (mut sse, _, mut ws) = eve_heard_three(&server).await;
    let edit = json!({"type": "edit", "room": "r", "seq": 1, "text": "m1!", "id": "e1"});
    ws.send(edit).await;
    let update = sse.next_of("update").await;
    assert_eq!((&update["seq"], &update["at"]), (&json!(1), &json!(4)));
    let last = sse.last_id.clone().expect("update events carry ids");
    drop(sse);
    ws.send(json!({"type": "delete", "room": "r", "seq": 2, "id": "d2"}))
        .await;
    ws.next_of("ack").await;
    ws.say("r", "m6", "m6").await;
    let header = format!("Last-Event-ID: {last}");
    let mut again = Stream::open(server.http, &[&header]).await;
    let rejoined = again.next_of("joined").await;
    assert_eq!(
        (&rejoined["gap"], &rejoined["replay"]),
        (&json!(false), &json!(2))
    );
    let first = again.next().await.unwrap().data;
    let second = again.next().await.unwrap().data;
    assert_eq!(
        (&first["type"], &first["seq"], &first["deleted"]),
        (&json!("update"), &json!(2), &json!(true)),
        "the deletion it missed, not the edit it saw"
    );
    assert_eq!(
        (&second["type"], &second["seq"]),
        (&json!("message"), &json!(6))
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_posts_get_their_answers_and_the_stream_goes_on() {
    let server = server().await;
    let mut sse = Stream::open(server.http, &[]).await;
    sse.post(&[json!({"type": "join", "room": "r", "name": "eve"})])
        .await;
    sse.next_of("joined").await;
    // Not a session: 404. Another origin than the stream's: 403.
    assert_eq!(
        common::post_text(server.http, "/wtchat/sse/nosuchsession", "{}", &[]).await,
        404
    );
    let elsewhere = [("Origin", "https://evil.example")];
    assert_eq!(sse.post_raw(r#"{"type":"ping"}"#, &elsewhere).await, 403);
    // The session's URL without its secret (as a proxy logs it), or with a wrong one: 403,
    // and the frames are not taken (the errors below are the stream's next frames).
    let fly = r#"{"type":"fly"}"#;
    assert_eq!(
        common::post_text(server.http, &sse.post, fly, &[]).await,
        403
    );
    let guessed = [("wtchat-secret", "guessed")];
    assert_eq!(
        common::post_text(server.http, &sse.post, fly, &guessed).await,
        403
    );
    // Too many frames in one post: 413, none of them taken.
    let many = vec![r#"{"type":"ping"}"#; 65].join("\n");
    assert_eq!(sse.post_raw(&many, &[]).await, 413);
    // Not JSON, an unknown type, a send to a room not joined: error frames, in order.
    assert_eq!(
        sse.post_raw(
            "not json\n{\"type\":\"fly\"}\n{\"type\":\"send\",\"room\":\"x\",\"text\":\"t\"}",
            &[]
        )
        .await,
        204
    );
    let codes = [
        sse.next_of("error").await["code"].clone(),
        sse.next_of("error").await["code"].clone(),
        sse.next_of("error").await["code"].clone(),
    ];
    assert_eq!(codes, ["invalid_json", "unknown_type", "not_joined"]);
    // Still serving: a ping is answered.
    assert_eq!(sse.post(&[json!({"type": "ping"})]).await, 204);
    sse.next_of("pong").await;
    // A frame over max_frame_bytes closes the connection with 4409, as on a WebSocket.
    let huge = format!(
        r#"{{"type":"send","room":"r","text":"{}"}}"#,
        "x".repeat(20_000)
    );
    assert_eq!(sse.post_raw(&huge, &[]).await, 204);
    let bye = sse.next_of("bye").await;
    assert_eq!(bye["code"], 4409, "{bye}");
    assert!(sse.next().await.is_none(), "the stream ends after bye");
    let _ = sse.curl.wait().await;
    server.stop().await;
}

#[tokio::test]
async fn a_stream_needs_the_same_credentials_as_a_websocket() {
    let secret = "a-token-secret-of-at-least-32-bytes!";
    let server = start_with(move |config| config.token_secret(secret)).await;
    let mut sse = Stream::open(server.http, &[]).await;
    let bye = sse.next_of("bye").await;
    assert_eq!(bye["code"], 4401, "{bye}");
    server.stop().await;
}

/// The status and head (lowercased) curl gets for `method` `/wtchat/{what}` from `origin`;
/// read up to the end of the head, as an event stream's answer never ends.
async fn head_from(http: SocketAddr, method: &str, what: &str, origin: &str) -> (u16, String) {
    let mut curl = Command::new("curl")
        .args(["-siN", "--max-time", "10", "-X", method, "-H"])
        .arg(format!("Origin: {origin}"))
        .arg(format!("http://{http}/wtchat/{what}"))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("curl runs");
    let mut lines = BufReader::new(curl.stdout.take().unwrap()).lines();
    let mut head = String::new();
    while let Some(line) = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect("the head before the deadline")
        .unwrap()
    {
        if line.trim().is_empty() {
            break;
        }
        head.push_str(&line.to_lowercase());
        head.push('\n');
    }
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok());
    (status.unwrap_or(0), head)
}

/// A page of an allowed origin opens a stream or a polling session and may read the answer
/// (`Access-Control-Allow-Origin` names it); any other origin is refused, and told nothing.
#[tokio::test]
async fn only_an_allowed_origin_opens_a_stream_or_a_poll_and_reads_it() {
    let site = "https://site.example";
    let server = start_with(move |config| config.allow_origin(site)).await;
    for (method, what) in [("GET", "sse"), ("POST", "poll")] {
        let (status, head) = head_from(server.http, method, what, site).await;
        assert_eq!(status, 200, "{what}: {head}");
        assert!(
            head.contains(&format!("access-control-allow-origin: {site}\n")),
            "{what}: {head}"
        );
        assert!(head.contains("vary: origin\n"), "{what}: {head}");
        let (status, head) = head_from(server.http, method, what, "https://evil.example").await;
        assert_eq!(status, 403, "{what}: {head}");
        assert!(
            !head.contains("access-control-allow-origin"),
            "{what}: {head}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn clients_of_all_four_transports_share_one_room_in_one_order() {
    let server = server().await;
    let mut clients = vec![
        Client::sse(&server).await,
        Client::poll(&server).await,
        Client::ws(&server).await,
        Client::wt(&server).await,
    ];
    for client in &mut clients {
        let name = client.transport();
        client.join("all", name).await;
    }
    // Five rounds of one message from each, sent without waiting for the acks.
    for i in 0..5 {
        for client in &mut clients {
            let t = client.transport();
            client
                .send(json!({"type": "send", "room": "all", "text": format!("{t} {i}"), "id": format!("{t}-{i}")}))
                .await;
        }
    }
    let mut seen = Vec::new();
    for client in &mut clients {
        seen.push(client.messages("all", 20).await);
    }
    let seqs: Vec<u64> = seen[0].iter().map(|m| m.0).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    for (client, got) in clients.iter().zip(&seen) {
        assert_eq!(got, &seen[0], "{} sees the same order", client.transport());
        // Each sender's messages in the order it sent them.
        let t = client.transport();
        let own: Vec<&str> = seen[0]
            .iter()
            .filter(|m| m.1 == t)
            .map(|m| m.2.as_str())
            .collect();
        let sent: Vec<String> = (0..5).map(|i| format!("{t} {i}")).collect();
        assert_eq!(own, sent, "{t}");
    }
    server.stop().await;
}

#[tokio::test]
async fn last_event_id_resumes_every_room_of_the_stream() {
    let server = server().await;
    let mut ws = Client::ws(&server).await;
    ws.join("a", "wes").await;
    ws.join("b", "wes").await;
    let mut sse = Client::sse(&server).await;
    let (joined_a, _) = sse.join("a", "eve").await;
    let (joined_b, _) = sse.join("b", "eve").await;
    ws.say("a", "a1", "a1").await;
    ws.say("b", "b1", "b1").await;
    ws.say("a", "a2", "a2").await;
    let mut got = Vec::new();
    while got.len() < 3 {
        let m = sse.next_of("message").await;
        got.push((m["room"].clone(), m["seq"].clone()));
    }
    assert_eq!(
        got,
        [
            (json!("a"), json!(1)),
            (json!("b"), json!(1)),
            (json!("a"), json!(2))
        ]
    );
    // The stream drops; meanwhile both rooms go on.
    let last = sse
        .last_event_id()
        .expect("message events carry ids")
        .to_string();
    drop(sse);
    ws.say("a", "a3", "a3").await;
    ws.say("b", "b2", "b2").await;
    ws.say("b", "b3", "b3").await;
    let mut again = Client::sse_request(&server, "", &[("Last-Event-ID", &last)])
        .await
        .expect("the stream reopens");
    // Both rooms joined again, before anything else, each from where it was.
    let mut rejoined = Vec::new();
    let mut missed = Vec::new();
    while rejoined.len() < 2 || missed.len() < 3 {
        let f = again.next().await;
        match f["type"].as_str() {
            Some("joined") => rejoined.push(f),
            Some("message") => {
                missed.push((f["room"].clone(), f["seq"].clone(), f["text"].clone()))
            }
            _ => {}
        }
    }
    for (rejoined, joined) in rejoined.iter().zip([&joined_a, &joined_b]) {
        assert_eq!(rejoined["room"], joined["room"]);
        assert_eq!(rejoined["gap"], false, "{rejoined}");
        assert_eq!(
            rejoined["you"]["sender"], joined["you"]["sender"],
            "{rejoined}"
        );
    }
    assert_eq!(
        missed,
        [
            (json!("a"), json!(3), json!("a3")),
            (json!("b"), json!(2), json!("b2")),
            (json!("b"), json!(3), json!("b3")),
        ],
        "exactly what was missed, in each room's order"
    );
    assert_eq!(again.say("b", "back", "back").await, 4);
    server.stop().await;
}

/// The wtchat client's own resume, as on every transport: a new SSE stream or polling
/// session joins with `since`, `epoch` and its key after the old one was dropped (SSE) or
/// abandoned (a page that stopped polling: suspended, a network change).
#[tokio::test]
async fn a_new_session_that_joins_with_since_gets_exactly_what_was_missed() {
    let server = server().await;
    for transport in ["sse", "longpoll"] {
        new_session_resumes(&server, transport).await;
    }
    server.stop().await;
}

async fn new_session_resumes(server: &TestServer, transport: &str) {
    let open = async || match transport {
        "sse" => Client::sse(server).await,
        _ => Client::poll(server).await,
    };
    let room = format!("r-{transport}");
    let room = room.as_str();
    let mut ws = Client::ws(server).await;
    ws.join(room, "wes").await;
    let mut sse = open().await;
    let (joined, _) = sse.join(room, "eve").await;
    let key = joined["key"].as_str().expect("a resume key").to_string();
    let mut seen = Seen {
        epoch: joined["epoch"].as_u64().unwrap(),
        ..Seen::default()
    };
    for i in 1..=3 {
        ws.say(room, &format!("m{i}"), &format!("m{i}")).await;
    }
    for _ in 0..3 {
        seen.add(&sse.next_of("message").await);
    }
    // It goes; three more are sent; a new one (no Last-Event-ID) joins with `since`.
    drop(sse);
    for i in 4..=6 {
        ws.say(room, &format!("m{i}"), &format!("m{i}")).await;
    }
    let mut again = open().await;
    let rejoined = seen.resume(&mut again, room, "eve", Some(&key)).await;
    assert_eq!(rejoined["gap"], false, "{transport}: {rejoined}");
    assert_eq!(rejoined["replay"], 3, "{transport}: {rejoined}");
    assert_eq!(rejoined["you"]["sender"], joined["you"]["sender"]);
    assert_eq!(
        seen.texts.values().collect::<Vec<_>>(),
        ["m1", "m2", "m3", "m4", "m5", "m6"],
        "{transport}: nothing lost, nothing repeated"
    );
    assert_eq!(again.say(room, "back", "back").await, 7);
}
