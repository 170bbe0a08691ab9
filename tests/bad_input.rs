//! Bad input, over all four transports (WebSocket, WebTransport, Server-Sent Events, long
//! polling): every malformed, oversized or out-of-order frame is answered with an `error`
//! frame carrying a stable code (echoing `room` and `id` where the frame had them), or —
//! where the transport's framing itself is broken — a `bye` frame and a documented close
//! code (4409 frame too large, 4400 protocol error; SSE and long polling have no close code:
//! the `bye` and the end of the stream, or a poll answered 404, say it). The offending
//! connection keeps working after every non-fatal error, nothing accepted before a fatal
//! one is lost, and nothing refused reaches a room or uses up a sequence number.
//!
//! The cases about frames run on every transport. Some are one transport's own: binary
//! WebSocket messages, WebSocket text that is not UTF-8 (fatal there), WebTransport
//! datagrams, paths and lines that never end; and for the transports whose clients post
//! their frames (SSE, long polling), several frames in one post, too many in one post (413)
//! and posted bytes that are not UTF-8 (an error frame there, as on WebTransport).
//!
//! Every case keeps two bystanders (one WebSocket, one WebTransport client) in a room of
//! their own that exchange messages after the bad input: the server keeps serving everyone
//! else. The last test puts one server through all of it and then has fresh clients chat.

mod common;

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::time::{Duration, Instant};

use common::{Client, DEADLINE, Ended, TestServer, start, start_with};
use futures_util::future::join_all;
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use wtransport::error::ConnectionError;

/// The limits a test server enforces: the documented defaults (the book's configuration
/// reference, docs/src/configuration.md), unless a test configures others.
#[derive(Clone)]
struct Limits {
    max_frame_bytes: usize,
    max_text_chars: usize,
    max_id_bytes: usize,
    max_rooms_per_connection: usize,
    frames_per_second: u32,
    frame_burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 16 * 1024,
            max_text_chars: 4000,
            max_id_bytes: 64,
            max_rooms_per_connection: 16,
            frames_per_second: 20,
            frame_burst: 40,
        }
    }
}

const TRANSPORTS: [&str; 4] = ["websocket", "webtransport", "sse", "longpoll"];

/// The transports whose clients post their frames, one per line of a `POST`.
const POSTED: [&str; 2] = ["sse", "longpoll"];

/// A client of the named transport.
async fn connect(server: &TestServer, transport: &str) -> Client {
    match transport {
        "websocket" => Client::ws(server).await,
        "webtransport" => Client::wt(server).await,
        "sse" => Client::sse(server).await,
        "longpoll" => Client::poll(server).await,
        other => panic!("no transport {other}"),
    }
}

/// A frame for a failure message, cut short: some frames here carry 4000-character texts.
fn brief(frame: &Value) -> String {
    let text = frame.to_string();
    if text.chars().count() <= 240 {
        return text;
    }
    let head: String = text.chars().take(240).collect();
    format!("{head}… ({} bytes)", text.len())
}

/// Asserts that a frame is `want`, printing it cut short if not.
#[track_caller]
fn assert_frame(got: &Value, want: &Value, context: &str) {
    assert!(
        got == want,
        "{context}\n   got: {}\n  want: {}",
        brief(got),
        brief(want)
    );
}

/// The answer to the frame just sent: the next `ack`, `error`, `joined`, `left`, `pong` or
/// `bye`, passing over room traffic (`message`, `presence`, `typing`). Frames are answered
/// in order, so sending one frame and reading its answer pairs them exactly.
async fn answer(client: &mut Client) -> Value {
    client
        .next_matching("an answer", |f| {
            !matches!(f["type"].as_str(), Some("message" | "presence" | "typing"))
        })
        .await
}

/// Reads the answer to the frame just sent; it must be an `error` with `code` and a message.
async fn refused(client: &mut Client, what: &str, code: &str) -> Value {
    let transport = client.transport();
    let f = answer(client).await;
    assert_eq!(
        f["type"],
        "error",
        "{transport}, {what}: expected error {code}, got {}",
        brief(&f)
    );
    assert_eq!(f["code"], code, "{transport}, {what}: {}", brief(&f));
    assert!(
        f["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{transport}, {what}: an error explains itself: {}",
        brief(&f)
    );
    f
}

/// Like [`refused`], and the error echoes `room` and `id` (no `id` when None).
async fn refused_in(client: &mut Client, what: &str, code: &str, room: &str, id: Option<&str>) {
    let transport = client.transport();
    let f = refused(client, what, code).await;
    assert_eq!(
        f["room"],
        room,
        "{transport}, {what}: room echoed: {}",
        brief(&f)
    );
    assert_eq!(
        f["id"],
        id.map_or(Value::Null, Value::from),
        "{transport}, {what}: id echoed: {}",
        brief(&f)
    );
}

/// The connection still answers: `ping` gets `pong`.
async fn assert_alive(client: &mut Client, after: &str) {
    let transport = client.transport();
    client.send(json!({"type": "ping"})).await;
    let f = answer(client).await;
    assert_eq!(
        f,
        json!({"type": "pong"}),
        "{transport}: ping after {after}"
    );
}

/// Sends `bytes` as one frame exactly as given, even where that breaks the transport: as one
/// WebSocket text message (a raw frame, because tungstenite's `Message::Text` holds only
/// valid UTF-8), on the WebTransport stream, `\n`-terminated if `terminated`, or as a `POST`
/// of its own. Write errors and the post's status are ignored: the server may close before
/// the client finishes writing a fatal frame.
async fn inject(client: &mut Client, bytes: &[u8], terminated: bool) {
    match client {
        Client::Ws { socket, .. } => {
            assert!(terminated, "WebSocket messages delimit themselves");
            let frame = Frame::message(bytes.to_vec(), OpCode::Data(Data::Text), true);
            let _ = socket.send(Message::Frame(frame)).await;
        }
        Client::Wt { send, .. } => {
            let mut line = bytes.to_vec();
            if terminated {
                line.push(b'\n');
            }
            let _ = send.write_all(&line).await;
        }
        Client::Sse { .. } | Client::Poll { .. } => {
            assert!(terminated, "a post's last line ends with the post");
            let _ = client.post_body(bytes, &[]).await;
        }
    }
}

/// The code and reason the WebTransport session was closed with, as the client's QUIC
/// stack saw them.
async fn wt_close(client: &Client) -> Option<(u64, String)> {
    let Client::Wt { connection, .. } = client else {
        panic!("not a WebTransport client")
    };
    match tokio::time::timeout(DEADLINE, connection.closed())
        .await
        .expect("the session closes before the deadline")
    {
        ConnectionError::ApplicationClosed(close) => Some((
            close.code().into_inner(),
            String::from_utf8_lossy(close.reason()).into_owned(),
        )),
        _ => None,
    }
}

/// How a WebSocket connection ends after its `bye`: Ok(code and reason of the close frame
/// that comes next), or Err(what came instead). Unlike [`Client::ended`], a connection that
/// is reset without a close frame does not count as closed with the `bye`'s code.
async fn ws_close(client: &mut Client) -> Result<(u16, String), String> {
    let Client::Ws { socket, .. } = client else {
        panic!("not a WebSocket client")
    };
    let next = tokio::time::timeout(DEADLINE, socket.next())
        .await
        .expect("the connection closes before the deadline");
    match next {
        Some(Ok(Message::Close(Some(frame)))) => Ok((frame.code.into(), frame.reason.to_string())),
        Some(Ok(Message::Close(None))) => Err("a close frame without a code".into()),
        Some(Ok(other)) => Err(format!("{other:?} instead of a close frame")),
        Some(Err(e)) => Err(format!("no close frame, the connection failed: {e}")),
        None => Err("no close frame, the connection just ended".into()),
    }
}

/// Two clients, one per transport, in a room of their own, watching it. They only ever
/// expect what the room's members say: a message or error that is not expected fails.
struct Bystanders {
    room: String,
    ws: Client,
    wt: Client,
    /// The room's last sequence number, as the bystanders have seen it.
    head: u64,
    said: u32,
}

/// Reads a bystander's frames until `want` matches. Presence and typing may pass by; any
/// other frame first (a message, an error, an ack) fails the test.
async fn bystander_next(client: &mut Client, what: &str, want: impl Fn(&Value) -> bool) -> Value {
    let transport = client.transport();
    loop {
        let f = client.next().await;
        if want(&f) {
            return f;
        }
        assert!(
            matches!(f["type"].as_str(), Some("presence" | "typing")),
            "{transport} bystander waiting for {what} got {}",
            brief(&f)
        );
    }
}

impl Bystanders {
    async fn new(server: &TestServer, room: &str) -> Bystanders {
        let mut ws = Client::ws(server).await;
        let mut wt = Client::wt(server).await;
        let (joined, _) = ws.join(room, "by-ws").await;
        let head = joined["seq"].as_u64().unwrap();
        let (joined, _) = wt.join(room, "by-wt").await;
        assert_eq!(joined["seq"], head);
        bystander_next(&mut ws, "by-wt joining", |f| {
            f["type"] == "presence" && f["member"]["name"] == "by-wt"
        })
        .await;
        Bystanders {
            room: room.to_string(),
            ws,
            wt,
            head,
            said: 0,
        }
    }

    /// Both bystanders get the room's next message — from `from`, saying `text`, numbered
    /// one after the last they saw — and no message before it. Returns its number.
    async fn expect_message(&mut self, from: &str, text: &str) -> u64 {
        let seq = self.head + 1;
        for client in [&mut self.ws, &mut self.wt] {
            let transport = client.transport();
            let m = bystander_next(client, "a message", |f| f["type"] == "message").await;
            assert_frame(
                &json!([m["room"], m["from"], m["text"], m["seq"]]),
                &json!([self.room, from, text, seq]),
                &format!(
                    "{transport} bystander: the next message of {} is {from}'s, numbered {seq}",
                    self.room
                ),
            );
        }
        self.head = seq;
        seq
    }

    /// Both bystanders see `name` join; it is the next member to join they see.
    async fn expect_join(&mut self, name: &str) {
        for client in [&mut self.ws, &mut self.wt] {
            let p = bystander_next(client, "a join", |f| {
                f["type"] == "presence" && f["event"] == "join"
            })
            .await;
            assert_eq!(
                p["member"]["name"],
                name,
                "the next member to join: {}",
                brief(&p)
            );
        }
    }

    /// Both bystanders see `name` leave, with no message (from it or anyone) before.
    async fn expect_leave(&mut self, name: &str) {
        for client in [&mut self.ws, &mut self.wt] {
            bystander_next(client, &format!("{name} leaving"), |f| {
                f["type"] == "presence" && f["event"] == "leave" && f["member"]["name"] == name
            })
            .await;
        }
    }

    /// The bystanders exchange a message each way; both receive both, numbered in order,
    /// and each sender gets its ack.
    async fn chat(&mut self) {
        for speaker in ["by-ws", "by-wt"] {
            self.said += 1;
            let text = format!("{speaker} is still here ({})", self.said);
            let id = format!("{speaker}-{}", self.said);
            let room = self.room.clone();
            let client = if speaker == "by-ws" {
                &mut self.ws
            } else {
                &mut self.wt
            };
            client
                .send(json!({"type": "send", "room": room, "text": text, "id": id}))
                .await;
            let seq = self.expect_message(speaker, &text).await;
            let client = if speaker == "by-ws" {
                &mut self.ws
            } else {
                &mut self.wt
            };
            let ack = answer(client).await;
            assert_eq!(
                ack,
                json!({"type": "ack", "room": room, "id": id, "seq": seq})
            );
        }
    }
}

/// `client` (a member of the bystanders' room as `name`) sends `text`; it is acknowledged
/// with the room's next number and both bystanders receive it.
async fn say_to(client: &mut Client, by: &mut Bystanders, name: &str, text: &str, id: &str) {
    let room = by.room.clone();
    client
        .send(json!({"type": "send", "room": room, "text": text, "id": id}))
        .await;
    let ack = answer(client).await;
    let seq = by.expect_message(name, text).await;
    assert_eq!(
        ack,
        json!({"type": "ack", "room": room, "id": id, "seq": seq})
    );
}

// ----------------------------------------------------------------------------------------
// The cases. Each runs on a given server, so that the last test can run all of them on one.

/// Frames that do not decode: not JSON, an unknown type, missing fields, fields of the
/// wrong type, JSON that is not an object.
async fn undecodable_frames(server: &TestServer, transport: &str) {
    let room = format!("decode-{transport}");
    let mut by = Bystanders::new(server, &room).await;
    let mut bad = connect(server, transport).await;
    let name = format!("garbler-{transport}");
    // A member of the bystanders' room: a frame wrongly accepted as a send would show there.
    bad.join(&room, &name).await;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("malformed JSON", b"{not json".to_vec(), "invalid_json"),
        (
            "truncated JSON",
            format!(r#"{{"type":"send","room":"{room}","text":"cut"#).into_bytes(),
            "invalid_json",
        ),
        (
            "unknown type",
            br#"{"type":"shout","room":"r"}"#.to_vec(),
            "unknown_type",
        ),
        (
            "send without text",
            format!(r#"{{"type":"send","room":"{room}"}}"#).into_bytes(),
            "invalid_frame",
        ),
        (
            "send without room",
            br#"{"type":"send","text":"hi","id":"no-room"}"#.to_vec(),
            "invalid_frame",
        ),
        (
            "join without room",
            br#"{"type":"join","name":"x"}"#.to_vec(),
            "invalid_frame",
        ),
        (
            "no type",
            format!(r#"{{"room":"{room}","text":"hi"}}"#).into_bytes(),
            "invalid_frame",
        ),
        (
            "room is a number",
            br#"{"type":"send","room":5,"text":"x"}"#.to_vec(),
            "invalid_frame",
        ),
        (
            "text is a number",
            format!(r#"{{"type":"send","room":"{room}","text":7,"id":"num"}}"#).into_bytes(),
            "invalid_frame",
        ),
        (
            "id is a number",
            format!(r#"{{"type":"send","room":"{room}","text":"x","id":3}}"#).into_bytes(),
            "invalid_frame",
        ),
        (
            "since is a string",
            br#"{"type":"join","room":"elsewhere","name":"n","since":"1"}"#.to_vec(),
            "invalid_frame",
        ),
        (
            "type is a number",
            br#"{"type":7}"#.to_vec(),
            "invalid_frame",
        ),
        ("a number", b"42".to_vec(), "invalid_frame"),
        ("an array", b"[]".to_vec(), "invalid_frame"),
        // serde could read a frame from this array: still not an object, still refused.
        (
            "a send as an array",
            format!(r#"["send","{room}","from an array","arr"]"#).into_bytes(),
            "invalid_frame",
        ),
        (
            "a number out of range",
            br#"{"type":"join","room":"elsewhere","name":"n","since":1e400}"#.to_vec(),
            "invalid_frame",
        ),
        ("a string", br#""ping""#.to_vec(), "invalid_frame"),
        ("null", b"null".to_vec(), "invalid_frame"),
    ];
    for (what, bytes, code) in &cases {
        bad.send_raw(bytes).await;
        refused(&mut bad, what, code).await;
    }
    assert_alive(&mut bad, "undecodable frames").await;
    by.chat().await;
    // Not just alive: still a member, and its next message takes the next number.
    say_to(&mut bad, &mut by, &name, "still making sense", "sane").await;
    by.chat().await;
}

/// Datagrams carry `typing` only, and no more than `max_frame_bytes`: a `send`, a `join` or
/// a `ping` in a datagram is refused (a lost one would go unanswered), an oversized one
/// too; nothing reaches the room, and the session goes on.
async fn datagrams(server: &TestServer, max_frame_bytes: usize) {
    let room = "datagrams";
    let mut by = Bystanders::new(server, room).await;
    let mut bad = connect(server, "webtransport").await;
    bad.join(room, "dgram").await;
    for (what, frame) in [
        (
            "a send",
            json!({"type":"send","room":room,"text":"by datagram","id":"d1"}),
        ),
        (
            "a join",
            json!({"type":"join","room":"other","name":"dgram"}),
        ),
        ("a leave", json!({"type":"leave","room":room})),
    ] {
        bad.send_datagram(frame.clone());
        let id = frame["id"].as_str();
        refused_in(
            &mut bad,
            what,
            "invalid_frame",
            frame["room"].as_str().unwrap(),
            id,
        )
        .await;
    }
    bad.send_datagram(json!({"type":"ping"}));
    refused(&mut bad, "a ping", "invalid_frame").await;
    let oversized = padded_send(room, "too big", "d2", max_frame_bytes + 1);
    match &bad {
        Client::Wt { connection, .. } => connection.send_datagram(&oversized).unwrap(),
        _ => unreachable!(),
    }
    refused(&mut bad, "an oversized datagram", "frame_too_large").await;
    // A typing notice in a datagram is what datagrams are for.
    bad.send_datagram(json!({"type":"typing","room":room}));
    let typing = bystander_next(&mut by.ws, "typing", |f| f["type"] == "typing").await;
    assert_eq!(typing["from"], "dgram");
    assert_alive(&mut bad, "datagrams").await;
    say_to(&mut bad, &mut by, "dgram", "on the stream", "d3").await;
    by.chat().await;
}

/// Frames out of order: sending, typing or leaving before joining, joining twice, leaving
/// twice. Nothing reaches the room, no number is used, membership is never doubled.
async fn out_of_order_frames(server: &TestServer, transport: &str) {
    let room = format!("order-{transport}");
    let mut by = Bystanders::new(server, &room).await;
    let mut bad = connect(server, transport).await;
    let name = format!("eager-{transport}");

    bad.send(json!({"type": "send", "room": room, "text": "too early", "id": "early"}))
        .await;
    refused_in(
        &mut bad,
        "send before join",
        "not_joined",
        &room,
        Some("early"),
    )
    .await;
    bad.send(json!({"type": "send", "room": room, "text": "no id either"}))
        .await;
    refused_in(
        &mut bad,
        "send without id before join",
        "not_joined",
        &room,
        None,
    )
    .await;
    bad.send(json!({"type": "typing", "room": room})).await;
    refused_in(&mut bad, "typing before join", "not_joined", &room, None).await;
    bad.send(json!({"type": "leave", "room": room})).await;
    refused_in(&mut bad, "leave before join", "not_joined", &room, None).await;
    assert_alive(&mut bad, "not_joined").await;
    // Nothing from the early frames; numbering goes on from where it was.
    by.chat().await;

    bad.join(&room, &name).await;
    by.expect_join(&name).await;
    bad.send(json!({"type": "join", "room": room, "name": name}))
        .await;
    refused_in(&mut bad, "second join", "already_joined", &room, None).await;
    bad.send(json!({"type": "join", "room": room, "name": "someone-else"}))
        .await;
    refused_in(
        &mut bad,
        "second join under another name",
        "already_joined",
        &room,
        None,
    )
    .await;
    say_to(&mut bad, &mut by, &name, "now in order", "in-order").await;
    // Still a member exactly once: each bystander message reaches it once, in order.
    by.chat().await;
    for offset in [1, 0] {
        let m = bad
            .next_matching("a bystander message", |f| {
                f["type"] == "message" && f["from"] != name.as_str()
            })
            .await;
        assert_eq!(
            m["seq"],
            by.head - offset,
            "{transport}: no duplicate delivery: {}",
            brief(&m)
        );
    }
    bad.send(json!({"type": "leave", "room": room})).await;
    assert_eq!(
        answer(&mut bad).await,
        json!({"type": "left", "room": room})
    );
    by.expect_leave(&name).await;
    bad.send(json!({"type": "leave", "room": room})).await;
    refused_in(&mut bad, "second leave", "not_joined", &room, None).await;
    bad.send(json!({"type": "send", "room": room, "text": "after leaving", "id": "late"}))
        .await;
    refused_in(
        &mut bad,
        "send after leave",
        "not_joined",
        &room,
        Some("late"),
    )
    .await;
    assert_alive(&mut bad, "already_joined and not_joined").await;
    by.chat().await;
}

/// Display names and room names outside the limits are refused; the limits themselves
/// (32 characters of name, 64 of room) are accepted.
async fn bad_names_and_rooms(server: &TestServer, transport: &str) {
    let room = format!("names-{transport}");
    let mut by = Bystanders::new(server, &room).await;
    let mut bad = connect(server, transport).await;
    let names = [
        ("33-character name", json!("n".repeat(33))),
        ("33-character multi-byte name", json!("é".repeat(33))),
        ("empty name", json!("")),
        ("blank name", json!("   ")),
        ("name with a control character", json!("a\u{7}b")),
        ("null name", Value::Null),
    ];
    for (what, name) in names {
        bad.send(json!({"type": "join", "room": room, "name": name}))
            .await;
        refused_in(&mut bad, what, "invalid_name", &room, None).await;
    }
    bad.send(json!({"type": "join", "room": room})).await;
    refused_in(&mut bad, "missing name", "invalid_name", &room, None).await;
    let rooms = [
        ("room with a space", "a b".to_string()),
        ("65-character room", "r".repeat(65)),
        ("empty room", String::new()),
        ("room with a slash", "a/b".into()),
        ("non-ASCII room", "café".into()),
    ];
    for (what, bad_room) in &rooms {
        bad.send(json!({"type": "join", "room": bad_room, "name": "fine"}))
            .await;
        refused_in(&mut bad, what, "invalid_room", bad_room, None).await;
    }
    assert_alive(&mut bad, "invalid names and rooms").await;
    by.chat().await;

    // At the limits: accepted, and the bystanders see this join, not any refused one.
    let longest = "é".repeat(32);
    let (joined, _) = bad.join(&room, &longest).await;
    assert_eq!(joined["you"]["name"], longest.as_str());
    by.expect_join(&longest).await;
    let widest = format!("{transport}-{}", "r".repeat(64 - transport.len() - 1));
    assert_eq!(widest.len(), 64);
    let (joined, _) = bad.join(&widest, "fine").await;
    assert_eq!(joined["room"], widest.as_str());
    say_to(&mut bad, &mut by, &longest, "named at the limit", "limit").await;
    by.chat().await;
}

/// Message texts: one character over the limit is refused without using a number, exactly
/// the limit (in multi-byte characters) is accepted; empty and blank texts and over-long
/// ids are refused.
async fn message_text_limits(server: &TestServer, transport: &str, limits: &Limits) {
    let room = format!("texts-{transport}");
    let mut by = Bystanders::new(server, &room).await;
    let mut bad = connect(server, transport).await;
    let name = format!("talker-{transport}");
    bad.join(&room, &name).await;
    let max = limits.max_text_chars;
    let refusals = [
        (
            "text one over the limit",
            "x".repeat(max + 1),
            "long",
            "text_too_long",
        ),
        (
            "multi-byte text one over the limit",
            "é".repeat(max + 1),
            "long-é",
            "text_too_long",
        ),
        ("empty text", String::new(), "empty", "invalid_text"),
        ("blank text", " \t\n ".into(), "blank", "invalid_text"),
    ];
    for (what, text, id, code) in &refusals {
        bad.send(json!({"type": "send", "room": room, "text": text, "id": id}))
            .await;
        refused_in(&mut bad, what, code, &room, Some(id)).await;
    }
    let long_id = "i".repeat(limits.max_id_bytes + 1);
    bad.send(json!({"type": "send", "room": room, "text": "fine", "id": long_id}))
        .await;
    refused_in(
        &mut bad,
        "over-long id",
        "invalid_text",
        &room,
        Some(&long_id),
    )
    .await;
    // The room received none of them: the next message takes the next number.
    let exactly = "é".repeat(max);
    say_to(&mut bad, &mut by, &name, &exactly, "exactly-max").await;
    by.chat().await;
}

/// Binary WebSocket messages are refused; the connection stays open.
async fn binary_websocket_message(server: &TestServer) {
    let room = "binary";
    let mut by = Bystanders::new(server, room).await;
    let mut bad = Client::ws(server).await;
    bad.join(room, "binary").await;
    for payload in [br#"{"type":"ping"}"#.to_vec(), vec![0, 159, 146, 150]] {
        let Client::Ws { socket, .. } = &mut bad else {
            unreachable!()
        };
        socket.send(Message::binary(payload)).await.unwrap();
        refused(&mut bad, "binary message", "binary_unsupported").await;
    }
    assert_alive(&mut bad, "binary messages").await;
    by.chat().await;
    say_to(&mut bad, &mut by, "binary", "text again", "text").await;
}

/// A WebTransport line that is not UTF-8 is refused; the session stays open.
async fn invalid_utf8_over_webtransport(server: &TestServer) {
    let room = "utf8-wt";
    let mut by = Bystanders::new(server, room).await;
    let mut bad = Client::wt(server).await;
    bad.join(room, "mangler").await;
    bad.send_raw(b"{\"type\":\"ping\xff\"}").await;
    refused(&mut bad, "invalid UTF-8 ping", "invalid_utf8").await;
    bad.send_raw(b"{\"type\":\"send\",\"room\":\"utf8-wt\",\"text\":\"a\xc3\x28b\",\"id\":\"u\"}")
        .await;
    refused(&mut bad, "invalid UTF-8 send", "invalid_utf8").await;
    assert_alive(&mut bad, "invalid UTF-8").await;
    // Neither reached the room.
    by.chat().await;
    say_to(&mut bad, &mut by, "mangler", "valid UTF-8: ✓", "valid").await;
}

/// A frame that breaks the transport: `bad`, a member of the bystanders' room, first sends a
/// valid message and at once `poison`. The message is not lost (stored, relayed,
/// acknowledged), then the server says `bye` (`code`, `reason`, no reconnect) and closes
/// with `code`; the room hears nothing else from it and goes on.
async fn fatal_frame(
    server: &TestServer,
    transport: &str,
    label: &str,
    poison: &[u8],
    terminated: bool,
    code: u16,
    reason: &str,
) {
    let room = format!("fatal-{label}-{transport}");
    let mut by = Bystanders::new(server, &room).await;
    let mut bad = connect(server, transport).await;
    let name = format!("breaker-{transport}");
    bad.join(&room, &name).await;
    by.expect_join(&name).await;
    bad.send(json!({"type": "send", "room": room, "text": "last words", "id": "last"}))
        .await;
    inject(&mut bad, poison, terminated).await;

    let seq = by.expect_message(&name, "last words").await;
    let mine = bad.next().await;
    assert_frame(
        &json!([mine["type"], mine["text"], mine["seq"]]),
        &json!(["message", "last words", seq]),
        &format!("{transport}, {label}: its own message, accepted before the bad frame"),
    );
    let ack = bad.next().await;
    assert_frame(
        &ack,
        &json!({"type": "ack", "room": room, "id": "last", "seq": seq}),
        &format!("{transport}, {label}: what was accepted is acknowledged before the close"),
    );
    let bye = bad.try_next().await.unwrap_or_else(|| {
        panic!("{transport}, {label}: the connection ended before its bye frame")
    });
    assert_frame(
        &bye,
        &json!({"type": "bye", "code": code, "reason": reason, "reconnect": false}),
        &format!("{transport}, {label}: the next frame says why it ends"),
    );
    match transport {
        // The close frame itself, not just the `bye` (which `ended` would fall back on).
        "websocket" => assert_eq!(
            ws_close(&mut bad).await,
            Ok((code, reason.to_string())),
            "{label}: the WebSocket close frame"
        ),
        "webtransport" => {
            assert_eq!(bad.ended().await, Ended::Code(code), "{label}");
            assert_eq!(
                wt_close(&bad).await,
                Some((u64::from(code), reason.to_string())),
                "{label}: the WebTransport session close code"
            );
        }
        // No close code: the stream ends (or polls answer 404) after the `bye`.
        _ => assert_eq!(bad.ended().await, Ended::Code(code), "{transport}, {label}"),
    }
    // The room: its last words, its leaving, and nothing else from it.
    by.expect_leave(&name).await;
    by.chat().await;
    by.chat().await;
}

/// A `send` frame of exactly `len` bytes: JSON whitespace after the opening brace pads it.
/// It is a valid message whatever its size, so one wrongly accepted would reach the room.
fn padded_send(room: &str, text: &str, id: &str, len: usize) -> Vec<u8> {
    let frame = json!({"type": "send", "room": room, "text": text, "id": id}).to_string();
    assert!(frame.len() <= len);
    let mut bytes = frame.into_bytes();
    let pad = len - bytes.len();
    bytes.splice(1..1, std::iter::repeat_n(b' ', pad));
    assert_eq!(bytes.len(), len);
    assert!(serde_json::from_slice::<Value>(&bytes).is_ok());
    bytes
}

/// A frame of exactly `max_frame_bytes` is an ordinary frame.
async fn frame_at_the_limit(server: &TestServer, transport: &str, limits: &Limits) {
    let room = format!("frame-limit-{transport}");
    let mut by = Bystanders::new(server, &room).await;
    let mut bad = connect(server, transport).await;
    let name = format!("big-{transport}");
    bad.join(&room, &name).await;
    let text = "a frame of exactly max_frame_bytes";
    bad.send_raw(&padded_send(
        &room,
        text,
        "at-limit",
        limits.max_frame_bytes,
    ))
    .await;
    let ack = answer(&mut bad).await;
    let seq = by.expect_message(&name, text).await;
    assert_frame(
        &ack,
        &json!({"type": "ack", "room": room, "id": "at-limit", "seq": seq}),
        &format!("{transport}: a frame at the limit is accepted"),
    );
    assert_alive(&mut bad, "a frame at the limit").await;
    by.chat().await;
}

/// A frame of `len` bytes, over `max_frame_bytes`.
async fn oversized_frame_case(server: &TestServer, transport: &str, label: &str, len: usize) {
    let room = format!("fatal-{label}-{transport}");
    let poison = padded_send(&room, "this frame is too large", "huge", len);
    fatal_frame(
        server,
        transport,
        label,
        &poison,
        true,
        4409,
        "frame_too_large",
    )
    .await;
}

/// A WebTransport line that never ends (20 KiB, no `\n`).
async fn unterminated_line_case(server: &TestServer) {
    let room = "fatal-unterminated-webtransport";
    let poison = padded_send(room, "this line never ends", "huge", 20 * 1024);
    fatal_frame(
        server,
        "webtransport",
        "unterminated",
        &poison,
        false,
        4409,
        "frame_too_large",
    )
    .await;
}

/// Posted bytes that are not UTF-8 are refused as a WebTransport line is: an `invalid_utf8`
/// error frame, not a close — a post's lines are frames of their own, and a bad one breaks
/// no framing. Alone or between valid frames of one post, only that frame is refused.
async fn invalid_utf8_in_a_post(server: &TestServer, transport: &str) {
    let room = format!("utf8-{transport}");
    let mut by = Bystanders::new(server, &room).await;
    let mut bad = connect(server, transport).await;
    let name = format!("mangler-{transport}");
    bad.join(&room, &name).await;
    by.expect_join(&name).await;
    let ping = br#"{"type":"ping"}"#;
    let invalid_ping = b"{\"type\":\"ping\xff\"}";
    bad.send_raw(invalid_ping).await;
    refused(&mut bad, "invalid UTF-8 ping", "invalid_utf8").await;
    let mut invalid_send = format!(r#"{{"type":"send","room":"{room}","text":"a"#).into_bytes();
    invalid_send.extend_from_slice(b"\xc3\x28b\",\"id\":\"u\"}");
    bad.send_raw(&invalid_send).await;
    refused(&mut bad, "invalid UTF-8 send", "invalid_utf8").await;
    assert_eq!(
        bad.post_lines(&[ping, &invalid_send, ping]).await,
        204,
        "{transport}: a post with an invalid line among valid ones is taken"
    );
    assert_eq!(
        answer(&mut bad).await,
        json!({"type": "pong"}),
        "{transport}"
    );
    refused(&mut bad, "invalid UTF-8 between pings", "invalid_utf8").await;
    assert_eq!(
        answer(&mut bad).await,
        json!({"type": "pong"}),
        "{transport}"
    );
    assert_alive(&mut bad, "invalid UTF-8").await;
    // None of the sends reached the room.
    by.chat().await;
    say_to(&mut bad, &mut by, &name, "valid UTF-8: ✓", "valid").await;
}

/// Several frames in one post are taken in order; one over `max_frame_bytes` among them
/// closes the session with 4409 once the frames before it were taken (stored, relayed,
/// acknowledged), and those after it never are.
async fn oversized_frame_amid_a_post(server: &TestServer, transport: &str, limits: &Limits) {
    let room = format!("fatal-amid-{transport}");
    let mut by = Bystanders::new(server, &room).await;
    let mut bad = connect(server, transport).await;
    let name = format!("breaker-{transport}");
    bad.join(&room, &name).await;
    by.expect_join(&name).await;
    let before = json!({"type": "send", "room": room, "text": "before", "id": "before"});
    let poison = padded_send(&room, "too large", "huge", limits.max_frame_bytes + 1);
    let after = json!({"type": "send", "room": room, "text": "after", "id": "after"});
    let status = bad
        .post_lines(&[
            before.to_string().as_bytes(),
            &poison,
            after.to_string().as_bytes(),
        ])
        .await;
    assert_eq!(status, 204, "{transport}: the post is taken, line by line");

    let seq = by.expect_message(&name, "before").await;
    let mine = bad.next().await;
    assert_frame(
        &json!([mine["type"], mine["text"], mine["seq"]]),
        &json!(["message", "before", seq]),
        &format!("{transport}: the frame before the oversized one was taken"),
    );
    assert_frame(
        &bad.next().await,
        &json!({"type": "ack", "room": room, "id": "before", "seq": seq}),
        &format!("{transport}: and acknowledged"),
    );
    assert_frame(
        &bad.next().await,
        &json!({"type": "bye", "code": 4409, "reason": "frame_too_large", "reconnect": false}),
        &format!("{transport}: then the oversized frame ends the session"),
    );
    assert_eq!(bad.ended().await, Ended::Code(4409), "{transport}");
    // It leaves; the frame after the oversized one never reaches the room (the bystanders'
    // next message takes the next number).
    by.expect_leave(&name).await;
    by.chat().await;
}

/// At most 64 frames in one post: a post of 65 is refused whole (413) — none of them is
/// answered or reaches the room — and one of 64 is taken, each frame answered in order.
async fn frames_per_post(server: &TestServer, transport: &str) {
    let room = format!("per-post-{transport}");
    let mut by = Bystanders::new(server, &room).await;
    let mut bad = connect(server, transport).await;
    let name = format!("poster-{transport}");
    bad.join(&room, &name).await;
    by.expect_join(&name).await;
    let sends = |n: usize, tag: &str| -> Vec<String> {
        (0..n)
            .map(|i| {
                json!({"type": "send", "room": room, "text": format!("{tag} {i}"), "id": format!("{tag}-{i}")})
                    .to_string()
            })
            .collect()
    };
    let too_many = sends(65, "refused");
    let lines: Vec<&[u8]> = too_many.iter().map(|l| l.as_bytes()).collect();
    assert_eq!(bad.post_lines(&lines).await, 413, "{transport}: 65 frames");
    // The next answer is the pong: none of the 65 was answered, none reached the room.
    assert_alive(&mut bad, "a post of 65 frames").await;
    by.chat().await;

    let most = sends(64, "taken");
    let lines: Vec<&[u8]> = most.iter().map(|l| l.as_bytes()).collect();
    assert_eq!(bad.post_lines(&lines).await, 204, "{transport}: 64 frames");
    // Each answered in order: stored, or dropped by the rate limit (64 is over the burst).
    let mut acked = Vec::new();
    for i in 0..64 {
        let f = answer(&mut bad).await;
        let id = format!("taken-{i}");
        assert_eq!(
            f["id"],
            id.as_str(),
            "{transport}: answer {i}: {}",
            brief(&f)
        );
        match f["type"].as_str() {
            Some("ack") => acked.push((i, f["seq"].as_u64().unwrap())),
            _ => assert_eq!(f["code"], "rate_limited", "{transport}: {}", brief(&f)),
        }
    }
    assert!(acked.len() > 1, "{transport}: {acked:?}");
    for (i, seq) in acked {
        assert_eq!(by.expect_message(&name, &format!("taken {i}")).await, seq);
    }
    by.chat().await;
}

/// A WebSocket text message that is not UTF-8 breaks WebSocket framing: 4400.
async fn invalid_utf8_over_websocket(server: &TestServer) {
    let poison =
        b"{\"type\":\"send\",\"room\":\"fatal-utf8-websocket\",\"text\":\"a\xffb\",\"id\":\"u\"}";
    fatal_frame(
        server,
        "websocket",
        "utf8",
        poison,
        true,
        4400,
        "protocol_error",
    )
    .await;
}

/// One connection may be in `max_rooms_per_connection` rooms; one more is refused until it
/// leaves one.
async fn too_many_rooms(server: &TestServer, transport: &str, limits: &Limits) {
    let room = format!("rooms-{transport}");
    let mut by = Bystanders::new(server, &room).await;
    let mut bad = connect(server, transport).await;
    let max = limits.max_rooms_per_connection;
    let rooms: Vec<String> = (0..=max).map(|i| format!("many-{transport}-{i}")).collect();
    for r in &rooms[..max] {
        let (joined, _) = bad.join(r, "roamer").await;
        assert_eq!(joined["room"], r.as_str());
    }
    let extra = &rooms[max];
    bad.send(json!({"type": "join", "room": extra, "name": "roamer"}))
        .await;
    refused_in(&mut bad, "one room too many", "too_many_rooms", extra, None).await;
    bad.send(json!({"type": "send", "room": extra, "text": "hi", "id": "x"}))
        .await;
    refused_in(
        &mut bad,
        "send to the refused room",
        "not_joined",
        extra,
        Some("x"),
    )
    .await;
    assert_alive(&mut bad, "too_many_rooms").await;
    by.chat().await;

    bad.send(json!({"type": "leave", "room": rooms[0]})).await;
    assert_eq!(
        answer(&mut bad).await,
        json!({"type": "left", "room": rooms[0]})
    );
    let (joined, _) = bad.join(extra, "roamer").await;
    assert_eq!(joined["room"], extra.as_str());
    assert_eq!(bad.say(extra, "made it", "made-it").await, 1);
    // Full again.
    bad.send(json!({"type": "join", "room": rooms[0], "name": "roamer"}))
        .await;
    refused_in(&mut bad, "full again", "too_many_rooms", &rooms[0], None).await;
    by.chat().await;
}

/// A flood above the rate limit: every frame gets exactly one answer, in order — `ack` or
/// `rate_limited` (echoing room and id) — the acknowledged messages reach the room once
/// each, numbered in order, the refused ones never; once the bucket refills the flooder can
/// send again.
async fn flood(server: &TestServer, transport: &str, limits: &Limits) {
    const N: usize = 100;
    let room = format!("flood-{transport}");
    let mut by = Bystanders::new(server, &room).await;
    let mut bad = connect(server, transport).await;
    let name = format!("flooder-{transport}");
    bad.join(&room, &name).await;
    by.expect_join(&name).await;

    let started = Instant::now();
    for i in 0..N {
        bad.send(json!({"type": "send", "room": room, "text": format!("flood {i}"), "id": format!("f{i}")}))
            .await;
    }
    let mut acked = Vec::new();
    let mut limited = 0;
    for i in 0..N {
        let id = format!("f{i}");
        let f = answer(&mut bad).await;
        match f["type"].as_str() {
            Some("ack") => {
                assert_eq!(
                    (&f["room"], &f["id"]),
                    (&json!(room), &json!(id)),
                    "{}",
                    brief(&f)
                );
                acked.push((i, f["seq"].as_u64().unwrap()));
            }
            Some("error") => {
                assert_eq!(
                    (&f["code"], &f["room"], &f["id"]),
                    (&json!("rate_limited"), &json!(room), &json!(id)),
                    "{transport}: answer {i}: {}",
                    brief(&f)
                );
                limited += 1;
            }
            _ => panic!(
                "{transport}: answer {i} is neither ack nor rate_limited: {}",
                brief(&f)
            ),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let burst = limits.frame_burst as usize;
    let rate = f64::from(limits.frames_per_second);
    // The bucket was full but for the join: the first burst - 1 pass.
    assert!(
        acked.len() >= burst - 1 && acked[..burst - 1].iter().enumerate().all(|(k, a)| a.0 == k),
        "{transport}: the first {} frames pass: {acked:?}",
        burst - 1
    );
    let most = burst + (rate * elapsed).ceil() as usize;
    assert!(
        acked.len() <= most,
        "{transport}: {} acked in {elapsed:.3}s, at most {most} allowed",
        acked.len()
    );
    assert!(
        limited > 0,
        "{transport}: a flood of {N} frames is rate limited"
    );
    assert_eq!(acked.len() + limited, N);
    // The acknowledged ones, numbered consecutively, reach the room once each, nothing else.
    let first = by.head + 1;
    for (k, &(i, seq)) in acked.iter().enumerate() {
        assert_eq!(seq, first + k as u64, "{transport}: consecutive numbers");
        by.expect_message(&name, &format!("flood {i}")).await;
    }
    by.chat().await;

    // Once the bucket refills, the flooder is served again; the refused retries never show.
    let deadline = Instant::now() + DEADLINE;
    let mut tries = 0;
    let (text, seq) = loop {
        tries += 1;
        let id = format!("again-{tries}");
        let text = format!("after the flood ({tries})");
        bad.send(json!({"type": "send", "room": room, "text": text, "id": id}))
            .await;
        let f = answer(&mut bad).await;
        if f["type"] == "ack" {
            assert_eq!(f["id"], id.as_str());
            break (text, f["seq"].as_u64().unwrap());
        }
        assert_eq!(
            (&f["code"], &f["id"]),
            (&json!("rate_limited"), &json!(id)),
            "{}",
            brief(&f)
        );
        assert!(
            Instant::now() < deadline,
            "{transport}: still rate limited after {DEADLINE:?}"
        );
        // Poll interval, not a wait for the condition: the loop ends when the send is acked.
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(by.expect_message(&name, &text).await, seq);
    by.chat().await;
}

/// WebTransport sessions are accepted on /wtchat only.
async fn other_webtransport_paths(server: &TestServer) {
    let mut by = Bystanders::new(server, "paths").await;
    for path in ["/other", "/", "/wtchat/ws", "/wtchatx"] {
        let result = Client::wt_with(server, path, None).await;
        assert!(
            result.is_err(),
            "a WebTransport session on {path} is refused"
        );
    }
    by.chat().await;
    for path in ["/wtchat", "/wtchat?room=paths"] {
        let mut ok = Client::wt_with(server, path, None)
            .await
            .unwrap_or_else(|e| panic!("a WebTransport session on {path} is accepted: {e}"));
        ok.join("paths", "pathfinder").await;
        say_to(&mut ok, &mut by, "pathfinder", &format!("via {path}"), path).await;
        ok.send(json!({"type": "leave", "room": "paths"})).await;
        assert_eq!(
            answer(&mut ok).await,
            json!({"type": "left", "room": "paths"})
        );
    }
    by.chat().await;
}

// ----------------------------------------------------------------------------------------
// The tests.

/// A case run under [`case`]: its name if it failed.
type Case<'a> = Pin<Box<dyn Future<Output = Option<String>> + 'a>>;

/// Wraps a case so that its failure is caught (its panic message is still printed) and
/// the other cases of the test still run: one transport failing does not hide the other.
fn case<'a>(name: String, case: impl Future<Output = ()> + 'a) -> Case<'a> {
    Box::pin(async move {
        AssertUnwindSafe(case)
            .catch_unwind()
            .await
            .err()
            .map(|_| name)
    })
}

/// Runs the cases at once on one server; fails naming those that failed.
async fn all_pass(cases: Vec<Case<'_>>) {
    let failed: Vec<String> = join_all(cases).await.into_iter().flatten().collect();
    assert!(
        failed.is_empty(),
        "failed (see the panics above): {failed:?}"
    );
}

/// The same case for each transport.
fn per_transport<'a, F: Future<Output = ()> + 'a>(
    make: impl Fn(&'static str) -> F,
) -> Vec<Case<'a>> {
    each_of(&TRANSPORTS, make)
}

/// The same case for each transport in `transports`.
fn each_of<'a, F: Future<Output = ()> + 'a>(
    transports: &[&'static str],
    make: impl Fn(&'static str) -> F,
) -> Vec<Case<'a>> {
    transports
        .iter()
        .map(|&t| case(t.to_string(), make(t)))
        .collect()
}

/// The over-the-limit sizes tried: one byte over, and 20 KiB.
fn oversizes(limits: &Limits) -> [(&'static str, usize); 2] {
    [
        ("one-byte-over", limits.max_frame_bytes + 1),
        ("20KiB", 20 * 1024),
    ]
}

#[tokio::test]
async fn undecodable_frames_get_stable_error_codes_and_the_connection_stays_open() {
    let server = start().await;
    all_pass(per_transport(|t| undecodable_frames(&server, t))).await;
    server.stop().await;
}

#[tokio::test]
async fn frames_out_of_order_are_refused_with_not_joined_and_already_joined() {
    let server = start().await;
    all_pass(per_transport(|t| out_of_order_frames(&server, t))).await;
    server.stop().await;
}

#[tokio::test]
async fn bad_names_and_room_names_are_refused_and_the_limits_accepted() {
    let server = start().await;
    all_pass(per_transport(|t| bad_names_and_rooms(&server, t))).await;
    server.stop().await;
}

#[tokio::test]
async fn text_limits_are_enforced_without_using_up_a_sequence_number() {
    let server = start().await;
    let limits = Limits::default();
    all_pass(per_transport(|t| message_text_limits(&server, t, &limits))).await;
    server.stop().await;
}

#[tokio::test]
async fn binary_websocket_messages_are_refused_and_the_connection_stays_open() {
    let server = start().await;
    binary_websocket_message(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn invalid_utf8_is_an_error_over_webtransport() {
    let server = start().await;
    invalid_utf8_over_webtransport(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn invalid_utf8_closes_a_websocket_with_4400_and_loses_nothing_accepted() {
    let server = start().await;
    invalid_utf8_over_websocket(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn a_frame_of_exactly_max_frame_bytes_is_accepted() {
    let server = start().await;
    let limits = Limits::default();
    all_pass(per_transport(|t| frame_at_the_limit(&server, t, &limits))).await;
    server.stop().await;
}

#[tokio::test]
async fn an_oversized_websocket_message_closes_with_4409_and_loses_nothing_accepted() {
    let server = start().await;
    let cases = oversizes(&Limits::default()).map(|(label, len)| {
        case(
            label.to_string(),
            oversized_frame_case(&server, "websocket", label, len),
        )
    });
    all_pass(cases.into()).await;
    server.stop().await;
}

#[tokio::test]
async fn an_oversized_webtransport_line_closes_with_4409_and_loses_nothing_accepted() {
    let server = start().await;
    let cases = oversizes(&Limits::default()).map(|(label, len)| {
        case(
            label.to_string(),
            oversized_frame_case(&server, "webtransport", label, len),
        )
    });
    all_pass(cases.into()).await;
    server.stop().await;
}

#[tokio::test]
async fn an_oversized_posted_frame_ends_the_session_with_4409_and_loses_nothing_accepted() {
    let server = start().await;
    let limits = Limits::default();
    let mut cases = Vec::new();
    for t in POSTED {
        for (label, len) in oversizes(&limits) {
            cases.push(case(
                format!("{label} {t}"),
                oversized_frame_case(&server, t, label, len),
            ));
        }
        cases.push(case(
            format!("amid a post {t}"),
            oversized_frame_amid_a_post(&server, t, &limits),
        ));
    }
    all_pass(cases).await;
    server.stop().await;
}

#[tokio::test]
async fn invalid_utf8_in_a_post_is_an_error_over_sse_and_long_polling() {
    let server = start().await;
    all_pass(each_of(&POSTED, |t| invalid_utf8_in_a_post(&server, t))).await;
    server.stop().await;
}

#[tokio::test]
async fn a_post_of_more_than_64_frames_is_refused_whole_and_64_are_taken_in_order() {
    let server = start().await;
    all_pass(each_of(&POSTED, |t| frames_per_post(&server, t))).await;
    server.stop().await;
}

#[tokio::test]
async fn a_webtransport_line_that_never_ends_closes_with_4409() {
    let server = start().await;
    unterminated_line_case(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn a_connection_in_too_many_rooms_is_refused_one_more() {
    let server = start().await;
    let limits = Limits::default();
    all_pass(per_transport(|t| too_many_rooms(&server, t, &limits))).await;
    server.stop().await;
}

#[tokio::test]
async fn a_flood_is_rate_limited_frame_by_frame_and_served_again_after() {
    let limits = Limits {
        frames_per_second: 5,
        frame_burst: 10,
        ..Limits::default()
    };
    let server = start_with(|config| {
        config
            .frames_per_second(limits.frames_per_second)
            .frame_burst(limits.frame_burst)
    })
    .await;
    all_pass(per_transport(|t| flood(&server, t, &limits))).await;
    server.stop().await;
}

#[tokio::test]
async fn datagrams_carry_typing_only_and_no_more_than_a_frame() {
    // Frames small enough that an oversized one still fits in a QUIC datagram.
    let server = start_with(|c| c.max_frame_bytes(300).max_text_chars(100)).await;
    datagrams(&server, 300).await;
    server.stop().await;
}

#[tokio::test]
async fn webtransport_sessions_on_other_paths_are_refused() {
    let server = start().await;
    other_webtransport_paths(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn the_server_keeps_serving_after_all_of_it() {
    // Every case at once from 127.0.0.1: more HTTP connections in flight than one real
    // client address opens (its share, `max_http_connections_per_ip`, is tests/budgets.rs's).
    let server = start_with(|c| c.max_http_connections_per_ip(1024)).await;
    let limits = Limits::default();
    // Connected before any of it, kept through all of it.
    let mut veterans = Bystanders::new(&server, "veterans").await;
    // All of it at once, on one server, each case in rooms of its own.
    let mut cases: Vec<Case<'_>> = Vec::new();
    for t in TRANSPORTS {
        cases.push(case(
            format!("undecodable {t}"),
            undecodable_frames(&server, t),
        ));
        cases.push(case(
            format!("out of order {t}"),
            out_of_order_frames(&server, t),
        ));
        cases.push(case(format!("names {t}"), bad_names_and_rooms(&server, t)));
        cases.push(case(
            format!("texts {t}"),
            message_text_limits(&server, t, &limits),
        ));
        cases.push(case(
            format!("frame at the limit {t}"),
            frame_at_the_limit(&server, t, &limits),
        ));
        for (label, len) in oversizes(&limits) {
            cases.push(case(
                format!("{label} {t}"),
                oversized_frame_case(&server, t, label, len),
            ));
        }
        cases.push(case(
            format!("rooms {t}"),
            too_many_rooms(&server, t, &limits),
        ));
        cases.push(case(format!("flood {t}"), flood(&server, t, &limits)));
    }
    for t in POSTED {
        cases.push(case(
            format!("utf8 {t}"),
            invalid_utf8_in_a_post(&server, t),
        ));
        cases.push(case(
            format!("amid a post {t}"),
            oversized_frame_amid_a_post(&server, t, &limits),
        ));
        cases.push(case(format!("per post {t}"), frames_per_post(&server, t)));
    }
    cases.push(case("binary".into(), binary_websocket_message(&server)));
    cases.push(case(
        "utf8 webtransport".into(),
        invalid_utf8_over_webtransport(&server),
    ));
    cases.push(case(
        "utf8 websocket".into(),
        invalid_utf8_over_websocket(&server),
    ));
    cases.push(case("unterminated".into(), unterminated_line_case(&server)));
    cases.push(case("paths".into(), other_webtransport_paths(&server)));
    let failed: Vec<String> = join_all(cases).await.into_iter().flatten().collect();

    // Everyone else was served throughout: the veterans still chat, and fresh clients of
    // both transports can join (a new room and the veterans') and chat.
    veterans.chat().await;
    let mut fresh = Bystanders::new(&server, "fresh").await;
    fresh.chat().await;
    for transport in TRANSPORTS {
        let mut newcomer = connect(&server, transport).await;
        let name = format!("newcomer-{transport}");
        newcomer.join("veterans", &name).await;
        veterans.expect_join(&name).await;
        say_to(
            &mut newcomer,
            &mut veterans,
            &name,
            "hello, survivors",
            &name,
        )
        .await;
    }
    veterans.chat().await;
    assert!(
        failed.is_empty(),
        "the server kept serving, but these cases failed (see their own tests): {failed:?}"
    );
    server.stop().await;
}
