//! Messages that change: a member edits and deletes its own messages, the host edits and
//! deletes any, and a member that was away comes back to exactly the current state — on
//! each engine: in memory, on SQLite across a restart, on Redis across two nodes. Real
//! clients over loopback (WebTransport, WebSocket, SSE), a real SQLite file, a real
//! `redis-server` (the Redis test skips loudly without one, and fails under `CI=true`).
//! And every wrong change gets its own error code, and changes nothing.

mod common;
#[path = "common/redis.rs"]
mod redis;

use std::path::PathBuf;
use std::time::Duration;

use common::{Client, TestServer};
use futures_util::StreamExt;
use redis::{Persistence, Redis};
use serde_json::{Value, json};
use wtchat::{ConfigBuilder, Engine};

const ROOM: &str = "changes";

/// Sends `frame` (an `edit` or a `delete` with id `id`) and waits for its ack, or the error
/// about it: Ok(the change's number), or Err(the error code).
async fn change(client: &mut Client, mut frame: Value, id: &str) -> Result<u64, String> {
    frame["room"] = ROOM.into();
    frame["id"] = id.into();
    client.send(frame).await;
    let ack = client.answer(id).await?;
    Ok(ack["seq"].as_u64().unwrap())
}

fn edit(seq: u64, text: &str) -> Value {
    json!({"type": "edit", "seq": seq, "text": text})
}

fn delete(seq: u64) -> Value {
    json!({"type": "delete", "seq": seq})
}

/// What a client shows of the room after a replay: (seq, text, edited) of each message
/// it holds, having applied the replay to what it held before (`shown`).
fn apply(shown: &mut Vec<(u64, String, bool)>, replay: &[Value]) {
    for frame in replay {
        let seq = frame["seq"].as_u64().unwrap();
        match frame["type"].as_str().unwrap() {
            "message" => shown.push((
                seq,
                frame["text"].as_str().unwrap().into(),
                frame["edited"].is_u64(),
            )),
            "update" if frame["deleted"] == true => shown.retain(|m| m.0 != seq),
            "update" => {
                if let Some(m) = shown.iter_mut().find(|m| m.0 == seq) {
                    m.1 = frame["text"].as_str().unwrap().into();
                    m.2 = frame["edited"].is_u64();
                }
            }
            other => panic!("a replay holds {other}"),
        }
    }
}

/// The `update` frames `client` receives, in order, up to the one numbered `last`.
async fn updates_until(client: &mut Client, last: u64) -> Vec<Value> {
    let mut updates = Vec::new();
    while updates.last().is_none_or(|u: &Value| u["at"] != last) {
        updates.push(client.next_of("update").await);
    }
    updates
}

/// The room as history has it now: (seq, text, edited).
async fn history(server: &TestServer) -> Vec<(u64, String, bool)> {
    let page = server.chat.history(ROOM, None, 100).await.unwrap();
    page.messages
        .iter()
        .map(|m| (m.seq, m.text.clone(), m.edited.is_some()))
        .collect()
}

/// What Bob had when he went away.
struct Away {
    shown: Vec<(u64, String, bool)>,
    epoch: u64,
    key: String,
}

/// Ann (WebTransport) says 1-4 while Bob (WebSocket) watches; Bob goes away. Meanwhile Ann
/// edits 1, deletes 2, says 5 and edits it, and the host edits 3 and deletes 4.
async fn go_away(first: &TestServer) -> Away {
    let mut ann = Client::wt(first).await;
    let mut bob = Client::ws(first).await;
    // Cid stays and only watches (over SSE).
    let mut cid = Client::sse(first).await;
    ann.join(ROOM, "Ann").await;
    cid.join(ROOM, "Cid").await;
    let (joined, _) = bob.join(ROOM, "Bob").await;
    let epoch = joined["epoch"].as_u64().unwrap();
    let key = joined["key"].as_str().unwrap().to_owned();
    for (i, text) in ["one", "two", "three", "four"].iter().enumerate() {
        assert_eq!(ann.say(ROOM, text, &format!("s{i}")).await, i as u64 + 1);
    }
    // A reply to 4, which carries its quote.
    let reply = json!({"type": "send", "text": "re four", "replyTo": 4});
    assert_eq!(change(&mut ann, reply, "r4").await, Ok(5));
    let quote = bob
        .next_matching("the reply", |f| f["type"] == "message" && f["seq"] == 5)
        .await["replyTo"]
        .clone();
    assert_eq!(quote, json!({"seq": 4, "from": "Ann", "text": "four"}));
    let shown = (1..=5)
        .zip(["one", "two", "three", "four", "re four"])
        .map(|(seq, text)| (seq, text.to_string(), false))
        .collect();
    drop(bob);

    assert_eq!(change(&mut ann, edit(1, "ONE"), "e1").await, Ok(6));
    assert_eq!(change(&mut ann, delete(2), "d2").await, Ok(7));
    assert_eq!(ann.say(ROOM, "five", "s5").await, 8);
    assert_eq!(change(&mut ann, edit(8, "FIVE"), "e8").await, Ok(9));
    assert!(first.chat.edit_message(ROOM, 3, "THREE").await.unwrap());
    assert!(first.chat.delete_message(ROOM, 4).await.unwrap());
    // Cid, who stayed, saw each change once, in order, as it happened: the updates up to
    // the last change (11), as they came.
    let seen: Vec<(u64, u64, bool)> = updates_until(&mut cid, 11)
        .await
        .iter()
        .map(|f| {
            (
                f["seq"].as_u64().unwrap(),
                f["at"].as_u64().unwrap(),
                f["deleted"] == true,
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (1, 6, false),
            (2, 7, true),
            (8, 9, false),
            (3, 10, false),
            (4, 11, true)
        ]
    );
    Away { shown, epoch, key }
}

/// Bob comes back through `back` (the same server, the server after a restart, another
/// node), resuming from what he saw. He must show exactly what history shows, without a
/// gap, each changed message coming once.
async fn come_back(back: &TestServer, away: Away) {
    let Away {
        mut shown,
        epoch,
        key,
    } = away;
    let mut bob = Client::ws(back).await;
    let (joined, replay) = bob
        .join_frame(
            json!({"type": "join", "room": ROOM, "name": "Bob", "key": key,
                           "since": 5, "epoch": epoch}),
        )
        .await;
    assert_eq!(joined["gap"], false, "{joined}");
    assert_eq!(joined["seq"], 11);
    apply(&mut shown, &replay);
    let expected = vec![
        (1, "ONE".to_string(), true),
        (3, "THREE".to_string(), true),
        (5, "re four".to_string(), false),
        (8, "FIVE".to_string(), true),
    ];
    assert_eq!(shown, expected, "replay: {replay:?}");
    assert_eq!(history(back).await, expected);
    // The reply's quote says that 4 was deleted; so does the history a newcomer reads.
    let page = back.chat.history(ROOM, None, 100).await.unwrap();
    let quote = page.messages[2].reply.as_ref().unwrap();
    assert_eq!(
        (
            quote.seq,
            quote.from.as_str(),
            quote.text.as_str(),
            quote.deleted
        ),
        (4, "Ann", "", true)
    );
    let mut cid = Client::ws(back).await;
    let (_, fresh) = cid.join(ROOM, "Cid").await;
    assert_eq!(
        fresh[2]["replyTo"],
        json!({"seq": 4, "from": "Ann", "text": "", "deleted": true})
    );
    let updated: Vec<u64> = replay
        .iter()
        .filter(|f| f["type"] == "update")
        .map(|f| f["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(updated, [1, 2, 3, 4], "each changed message once");
}

#[tokio::test]
async fn away_and_back_in_memory() {
    let server = common::start().await;
    let away = go_away(&server).await;
    come_back(&server, away).await;
    server.stop().await;
}

/// SQLite: the changes were made before a restart; the tail the new process reads has
/// the messages in their current state, and the engine answers for the changes.
#[tokio::test]
async fn away_and_back_across_a_sqlite_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let on_sqlite = |db: PathBuf| common::start_with(move |b| b.engine(Engine::Sqlite(db)));
    let first = on_sqlite(db.clone()).await;
    let away = go_away(&first).await;
    first.stop().await;
    let second = on_sqlite(db).await;
    come_back(&second, away).await;
    second.stop().await;
}

/// Redis: Bob comes back to the other node, which takes the room up from Redis.
#[tokio::test]
async fn away_and_back_across_two_redis_nodes() {
    let Some(redis) = Redis::start_or_skip("changes_two_nodes", Persistence::None).await else {
        return;
    };
    let node = |redis: &Redis| {
        let url = redis.url();
        common::start_with(move |b: ConfigBuilder| {
            b.engine(Engine::Redis {
                url,
                prefix: "changes".into(),
            })
        })
    };
    let a = node(&redis).await;
    let away = go_away(&a).await;
    let b = node(&redis).await;
    come_back(&b, away).await;
    a.stop().await;
    b.stop().await;
}

/// A burst of changes while a member was away (5,000 edits of one message, the host's)
/// takes nothing from its resume: it gets the messages it missed and that one message's
/// last text, once, without a gap. With a tail of 20 messages, which keeps 64 changes: the
/// engine answers.
async fn five_thousand_changes_while_away(engine: Engine) {
    let server = common::start_with(move |b| b.engine(engine).history(20).max_replay(10)).await;
    let mut bob = Client::ws(&server).await;
    let (joined, _) = bob.join(ROOM, "Bob").await;
    let epoch = joined["epoch"].as_u64().unwrap();
    for i in 1..=3 {
        server
            .chat
            .publish(ROOM, "host", &format!("m{i}"))
            .await
            .unwrap();
    }
    bob.messages(ROOM, 3).await;
    drop(bob);
    let chat = &server.chat;
    let edits = futures_util::stream::iter(0..5000)
        .map(|i| async move { chat.edit_message(ROOM, 2, &format!("edit {i}")).await })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    assert!(edits.iter().all(|e| matches!(e, Ok(true))));
    for i in 4..=5 {
        server
            .chat
            .publish(ROOM, "host", &format!("m{i}"))
            .await
            .unwrap();
    }
    let last_text = history(&server).await[1].1.clone();
    assert!(last_text.starts_with("edit "), "{last_text}");

    let mut bob = Client::ws(&server).await;
    let (joined, replay) = bob
        .join_frame(
            json!({"type": "join", "room": ROOM, "name": "Bob", "since": 3,
                           "epoch": epoch}),
        )
        .await;
    assert_eq!(joined["gap"], false, "{joined}");
    assert_eq!(joined["seq"], 5005);
    let got: Vec<(String, u64, String)> = replay
        .iter()
        .map(|f| {
            (
                f["type"].as_str().unwrap().to_owned(),
                f["seq"].as_u64().unwrap(),
                f["text"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("update".to_string(), 2, last_text),
            ("message".to_string(), 5004, "m4".to_string()),
            ("message".to_string(), 5005, "m5".to_string()),
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn five_thousand_changes_while_away_still_resume_without_a_gap_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    five_thousand_changes_while_away(Engine::Sqlite(dir.path().join("chat.db"))).await;
}

#[tokio::test]
async fn five_thousand_changes_while_away_still_resume_without_a_gap_on_redis() {
    let Some(redis) = Redis::start_or_skip("changes_five_thousand", Persistence::None).await else {
        return;
    };
    five_thousand_changes_while_away(Engine::Redis {
        url: redis.url(),
        prefix: "burst".into(),
    })
    .await;
}

/// Every wrong change gets its own code, and nothing is stored or sent: someone else's
/// message, past the edit window, a deleted or unknown message, an empty text.
#[tokio::test]
async fn a_wrong_change_gets_its_own_code_and_changes_nothing() {
    let server = common::start_with(|b| b.edit_window(Duration::from_millis(1500))).await;
    let mut ann = Client::ws(&server).await;
    let mut bob = Client::sse(&server).await;
    let mut cid = Client::poll(&server).await;
    ann.join(ROOM, "Ann").await;
    bob.join(ROOM, "Bob").await;
    cid.join(ROOM, "Cid").await;
    assert_eq!(ann.say(ROOM, "old", "a1").await, 1);
    assert_eq!(ann.say(ROOM, "gone", "a2").await, 2);
    assert_eq!(change(&mut ann, delete(2), "d2").await, Ok(3));
    assert_eq!(bob.say(ROOM, "bob's", "b1").await, 4);
    // Past the window for message 1 (the clock the server checks is its own).
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(ann.say(ROOM, "new", "a3").await, 5);

    let cases = [
        (edit(4, "mine now"), "not_yours"),
        (delete(4), "not_yours"),
        (edit(1, "too late"), "edit_window_passed"),
        (edit(2, "back again"), "message_deleted"),
        (delete(2), "message_deleted"),
        (edit(99, "nothing"), "unknown_message"),
        (delete(0), "unknown_message"),
        (edit(5, "  "), "invalid_text"),
        (
            json!({"type": "send", "text": "re", "replyTo": 99}),
            "unknown_reply",
        ),
        (
            json!({"type": "send", "text": "re", "replyTo": 3}),
            "unknown_reply",
        ),
        (
            json!({"type": "send", "text": "re", "replyTo": 2}),
            "message_deleted",
        ),
    ];
    for (i, (frame, code)) in cases.into_iter().enumerate() {
        let id = format!("bad{i}");
        assert_eq!(
            change(&mut ann, frame.clone(), &id).await,
            Err(code.to_owned()),
            "{frame}"
        );
    }
    // Deleting an old message has no window; the others saw none of the refused ones.
    assert_eq!(change(&mut ann, delete(1), "d1").await, Ok(6));
    // Any update of a refused change would have come before the last one, numbered 6.
    let updates: Vec<(u64, u64)> = updates_until(&mut cid, 6)
        .await
        .iter()
        .map(|f| (f["seq"].as_u64().unwrap(), f["at"].as_u64().unwrap()))
        .collect();
    assert_eq!(updates, [(2, 3), (1, 6)]);
    let texts: Vec<(u64, String, bool)> = history(&server).await;
    assert_eq!(
        texts,
        [
            (4, "bob's".to_string(), false),
            (5, "new".to_string(), false)
        ]
    );
    server.stop().await;
}

/// The host's edit and deletion over the HTTP API: what a PHP or Django backend calls.
#[tokio::test]
async fn the_host_edits_and_deletes_over_the_http_api() {
    const KEY: &str = "an-api-key-of-at-least-32-bytes-long!!";
    let server = common::start_with(|b| b.api_key(KEY)).await;
    let mut ann = Client::ws(&server).await;
    ann.join(ROOM, "Ann").await;
    assert_eq!(ann.say(ROOM, "hello", "a1").await, 1);
    let auth = format!("Bearer {KEY}");
    let call = |path: &'static str, body: Value| {
        let auth = auth.clone();
        let http = server.http;
        async move {
            let headers = [("authorization", auth.as_str())];
            let (status, body) =
                common::http_request(http, "POST", path, &headers, Some(&body)).await;
            (status, serde_json::from_str::<Value>(&body).unwrap())
        }
    };
    let (status, body) = call(
        "/wtchat/api/edit",
        json!({"room": ROOM, "seq": 1, "text": "hello, edited"}),
    )
    .await;
    assert_eq!((status, &body["edited"]), (200, &json!(true)), "{body}");
    let update = ann.next_of("update").await;
    assert_eq!(
        (&update["seq"], &update["text"]),
        (&json!(1), &json!("hello, edited"))
    );
    let (status, body) = call(
        "/wtchat/api/edit",
        json!({"room": ROOM, "seq": 1, "text": ""}),
    )
    .await;
    assert_eq!(
        (status, &body["error"]),
        (400, &json!("invalid_text")),
        "{body}"
    );
    let (status, body) = call(
        "/wtchat/api/edit",
        json!({"room": ROOM, "seq": 7, "text": "x"}),
    )
    .await;
    assert_eq!((status, &body["edited"]), (200, &json!(false)), "{body}");
    let (status, body) = call("/wtchat/api/delete", json!({"room": ROOM, "seq": 1})).await;
    assert_eq!((status, &body["deleted"]), (200, &json!(true)), "{body}");
    assert_eq!(ann.next_of("update").await["deleted"], true);
    assert!(history(&server).await.is_empty());
    server.stop().await;
}
