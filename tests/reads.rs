//! Read state, unread counts, receipts and mentions: a signed-in user's tabs share one read
//! mark per room (one tab reads, the other's count drops, on one node or across two Redis
//! nodes); a mention reaches the user's connections whatever room they are in, and a user
//! that was offline finds it in its counts (across a SQLite restart too); the host reads a
//! user's counts over all its rooms in one call; a small room tells who read up to where,
//! a big one tells no one; every wrong `read` or mention gets its own code. Real clients
//! over loopback, a real SQLite file, a real `redis-server` (the Redis test skips loudly
//! without one, and fails under `CI=true`).

mod common;
#[path = "common/redis.rs"]
mod redis;

use std::time::Duration;

use common::{Client, TestServer};
use redis::{Persistence, Redis};
use serde_json::{Value, json};
use wtchat::{ConfigBuilder, Engine};

const ROOM: &str = "lobby";
const SECRET: &str = "a-token-secret-of-at-least-32-bytes!!";
const KEY: &str = "an-api-key-of-at-least-32-bytes-long!!";

fn signed(b: ConfigBuilder) -> ConfigBuilder {
    b.token_secret(SECRET)
        .api_key(KEY)
        .presence_interval(Duration::from_millis(100))
}

/// A WebSocket connection of signed-in `user`.
async fn ws_of(server: &TestServer, user: &str) -> Client {
    let query = format!("?token={}", common::token(SECRET, user, user));
    Client::ws_request(server, &query, &[]).await.unwrap()
}

/// A WebTransport connection of signed-in `user`.
async fn wt_of(server: &TestServer, user: &str) -> Client {
    let path = format!("/wtchat?token={}", common::token(SECRET, user, user));
    Client::wt_request(server, &path, &[]).await.unwrap()
}

/// The read state a `read` frame of `room` gives: (seq, unread, mentions).
async fn read_state(client: &mut Client, room: &str) -> (u64, u64, u64) {
    let read = client
        .next_matching("read", |f| f["type"] == "read" && f["room"] == room)
        .await;
    state_of(&read)
}

/// A read state as a frame carries it (a `read` frame, or a `joined` frame's `read`).
fn state_of(read: &Value) -> (u64, u64, u64) {
    let n = |k: &str| read[k].as_u64().unwrap();
    (n("seq"), n("unread"), n("mentions"))
}

/// Joins `room`; returns the joined frame and the read state it carries.
async fn join_read(client: &mut Client, room: &str, name: &str) -> (Value, (u64, u64, u64)) {
    let (joined, _) = client.join(room, name).await;
    let state = state_of(&joined["read"]);
    (joined, state)
}

/// The host's unread call over HTTP: room → (seq, unread, mentions).
async fn unread_over_http(server: &TestServer, user: &str) -> Vec<(String, u64, u64, u64)> {
    let auth = format!("Bearer {KEY}");
    let (status, body) = common::http_get(
        server.http,
        &format!("/wtchat/api/unread?user={user}"),
        &[("authorization", auth.as_str())],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    body["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let n = |k: &str| r[k].as_u64().unwrap();
            (
                r["room"].as_str().unwrap().to_owned(),
                n("seq"),
                n("unread"),
                n("mentions"),
            )
        })
        .collect()
}

/// Ann has two tabs (WebSocket and WebTransport); Bob talks, mentions her,
/// deletes one of his messages. Ann's second tab comes to the counts the first would show;
/// one tab reads, the other's count drops; Bob sees who read up to where; Ann's own message
/// marks the room read in both tabs and for the host.
async fn two_tabs(server: &TestServer) {
    let mut tab1 = ws_of(server, "ann").await;
    let (joined, state) = join_read(&mut tab1, ROOM, "ann").await;
    assert_eq!(state, (0, 0, 0), "a first join reads nothing");
    let ann = joined["you"]["sender"].as_str().unwrap().to_owned();
    let mut bob = ws_of(server, "Bob").await;
    let (joined, _) = bob.join(ROOM, "Bob").await;
    // Bob finds Ann among the members, by her sender id: what a mention names.
    let listed: Vec<&str> = joined["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["sender"].as_str())
        .collect();
    assert!(listed.contains(&ann.as_str()), "{joined}");
    assert_eq!(bob.say(ROOM, "one", "b1").await, 1);
    assert_eq!(bob.say(ROOM, "two", "b2").await, 2);
    assert_eq!(bob.say_mentioning(ROOM, "hey @ann", "b3", &[&ann]).await, 3);
    assert_eq!(bob.say(ROOM, "oops", "b4").await, 4);
    bob.send(json!({"type": "delete", "room": ROOM, "seq": 4, "id": "d4"}))
        .await;
    bob.answer("d4").await.unwrap();
    // The first tab got the message naming her, then the mention.
    let message = tab1
        .next_matching("message 3", |f| f["type"] == "message" && f["seq"] == 3)
        .await;
    assert_eq!(message["mentions"], json!([ann]));
    let mention = tab1.next_of("mention").await;
    assert_eq!(
        (
            &mention["room"],
            &mention["seq"],
            &mention["from"],
            &mention["text"]
        ),
        (&json!(ROOM), &json!(3), &json!("Bob"), &json!("hey @ann"))
    );

    // A second tab: 3 unread (the deleted one is not), 1 mentions her.
    let mut tab2 = wt_of(server, "ann").await;
    assert_eq!(join_read(&mut tab2, ROOM, "ann").await.1, (0, 3, 1));
    // The first tab reads up to 2: both tabs get the new state.
    tab1.send(json!({"type": "read", "room": ROOM, "seq": 2}))
        .await;
    assert_eq!(read_state(&mut tab1, ROOM).await, (2, 1, 1));
    assert_eq!(read_state(&mut tab2, ROOM).await, (2, 1, 1));
    // Bob hears that Ann read up to 2 (a small room's receipt).
    let receipts = bob.next_of("receipts").await;
    assert_eq!(
        receipts["readers"],
        json!([{"sender": ann, "name": "ann", "seq": 2}])
    );
    // A mark never goes back: reading 1 changes nothing, and only this tab is told.
    tab2.send(json!({"type": "read", "room": ROOM, "seq": 1}))
        .await;
    assert_eq!(read_state(&mut tab2, ROOM).await, (2, 1, 1));
    // Past the newest message it stops there.
    tab2.send(json!({"type": "read", "room": ROOM, "seq": 999}))
        .await;
    assert_eq!(read_state(&mut tab2, ROOM).await, (5, 0, 0));
    assert_eq!(read_state(&mut tab1, ROOM).await, (5, 0, 0));
    // Bob talks again; Ann's own message marks it read.
    assert_eq!(bob.say(ROOM, "six", "b6").await, 6);
    let mine = tab1.say(ROOM, "seven", "a7").await;
    assert_eq!(mine, 7);
    let rooms = unread_over_http(server, "ann").await;
    assert_eq!(rooms, [(ROOM.to_owned(), 7, 0, 0)]);
    assert_eq!(server.chat.unread("ann").await.unwrap()[0].state.seq, 7);
    // Bob has a read state of his own (his messages are read).
    bob.send(json!({"type": "read", "room": ROOM, "seq": 7}))
        .await;
    assert_eq!(read_state(&mut bob, ROOM).await, (7, 0, 0));
}

/// An anonymous client's read state goes with its resume key: a reconnect that presents
/// the key finds its mark; a new key starts its own.
#[tokio::test]
async fn an_anonymous_clients_read_state_goes_with_its_resume_key() {
    let server = common::start().await;
    let mut ann = Client::sse(&server).await;
    let (joined, state) = join_read(&mut ann, ROOM, "Ann").await;
    let key = joined["key"].as_str().unwrap().to_owned();
    assert_eq!(state, (0, 0, 0));
    let mut bob = Client::poll(&server).await;
    bob.join(ROOM, "Bob").await;
    for i in 1..=3 {
        assert_eq!(bob.say(ROOM, "hi", &format!("b{i}")).await, i);
    }
    ann.send(json!({"type": "read", "room": ROOM, "seq": 2}))
        .await;
    assert_eq!(read_state(&mut ann, ROOM).await, (2, 1, 0));
    drop(ann);
    let mut again = Client::ws(&server).await;
    let (joined, _) = again
        .join_frame(json!({"type": "join", "room": ROOM, "name": "Ann", "key": key}))
        .await;
    assert_eq!(state_of(&joined["read"]), (2, 1, 0));
    let mut stranger = Client::ws(&server).await;
    assert_eq!(join_read(&mut stranger, ROOM, "Cid").await.1, (3, 0, 0));
    server.stop().await;
}

#[tokio::test]
async fn two_tabs_of_one_user_share_their_read_state_in_memory() {
    let server = common::start_with(signed).await;
    two_tabs(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn two_tabs_of_one_user_share_their_read_state_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let server = common::start_with(|b| signed(b).engine(Engine::Sqlite(db))).await;
    two_tabs(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn a_mention_reaches_the_user_in_another_room_on_the_same_connection() {
    let server = common::start_with(signed).await;
    // Ann's phone is in the lobby; her laptop only in another room.
    let mut phone = ws_of(&server, "ann").await;
    let (joined, _) = join_read(&mut phone, ROOM, "ann").await;
    let ann = joined["you"]["sender"].as_str().unwrap().to_owned();
    let mut laptop = ws_of(&server, "ann").await;
    join_read(&mut laptop, "elsewhere", "ann").await;
    let mut bob = ws_of(&server, "bob").await;
    bob.join(ROOM, "bob").await;
    let seq = bob.say_mentioning(ROOM, "@ann look", "b1", &[&ann]).await;
    let mention = laptop.next_of("mention").await;
    assert_eq!(
        (&mention["room"], mention["seq"].as_u64(), &mention["text"]),
        (&json!(ROOM), Some(seq), &json!("@ann look"))
    );
    // The host mentions by user id.
    let seq = server
        .chat
        .publish_mentioning(ROOM, "Bot", "ann: deploy done", &["ann"])
        .await
        .unwrap();
    let mention = laptop.next_of("mention").await;
    assert_eq!(
        (mention["seq"].as_u64(), &mention["from"]),
        (Some(seq), &json!("Bot"))
    );
    assert_eq!(
        mention.get("sender"),
        None,
        "the host's message has no sender"
    );
    // Over HTTP too, and the lobby's counts have both.
    let auth = format!("Bearer {KEY}");
    let (status, body) = common::http_request(
        server.http,
        "POST",
        "/wtchat/api/publish",
        &[("authorization", auth.as_str())],
        Some(&json!({"room": ROOM, "from": "Bot", "text": "again", "mentions": ["ann"]})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(laptop.next_of("mention").await["text"], "again");
    let rooms = unread_over_http(&server, "ann").await;
    assert_eq!(
        rooms,
        [
            ("elsewhere".to_owned(), 0, 0, 0),
            (ROOM.to_owned(), 0, 3, 3)
        ]
    );
    server.stop().await;
}

/// Ann reads some, goes offline; Bob mentions her; the server restarts on the same file;
/// Ann comes back to her mark and her mention, and the host's call agrees.
#[tokio::test]
async fn an_offline_user_finds_its_mentions_after_a_sqlite_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let first = common::start_with(|b| signed(b).engine(Engine::Sqlite(db.clone()))).await;
    let mut bob = ws_of(&first, "bob").await;
    bob.join(ROOM, "bob").await;
    let mut ann = ws_of(&first, "ann").await;
    let (joined, _) = join_read(&mut ann, ROOM, "ann").await;
    let ann_id = joined["you"]["sender"].as_str().unwrap().to_owned();
    assert_eq!(bob.say(ROOM, "one", "b1").await, 1);
    assert_eq!(bob.say(ROOM, "two", "b2").await, 2);
    ann.send(json!({"type": "read", "room": ROOM, "seq": 1}))
        .await;
    assert_eq!(read_state(&mut ann, ROOM).await, (1, 1, 0));
    drop(ann);
    bob.say_mentioning(ROOM, "where is @ann?", "b3", &[&ann_id])
        .await;
    first.stop().await;

    let second = common::start_with(|b| signed(b).engine(Engine::Sqlite(db.clone()))).await;
    let mut ann = ws_of(&second, "ann").await;
    assert_eq!(join_read(&mut ann, ROOM, "ann").await.1, (1, 2, 1));
    assert_eq!(
        unread_over_http(&second, "ann").await,
        [(ROOM.to_owned(), 1, 2, 1)]
    );
    second.stop().await;
}

/// Two nodes on one Redis: Ann's tabs are on different nodes; one reads, the other is told;
/// a mention made on one node reaches her tab on the other; both nodes agree on her counts.
#[tokio::test]
async fn read_state_agrees_across_two_redis_nodes() {
    let Some(redis) = Redis::start_or_skip("reads_two_nodes", Persistence::None).await else {
        return;
    };
    let node = |prefix: &'static str| {
        let url = redis.url();
        common::start_with(move |b: ConfigBuilder| {
            signed(b).engine(Engine::Redis {
                url,
                prefix: prefix.into(),
            })
        })
    };
    let (a, b) = (node("reads").await, node("reads").await);
    let mut tab1 = ws_of(&a, "ann").await;
    let (joined, _) = join_read(&mut tab1, ROOM, "ann").await;
    let ann = joined["you"]["sender"].as_str().unwrap().to_owned();
    let mut bob = ws_of(&a, "bob").await;
    bob.join(ROOM, "bob").await;
    assert_eq!(bob.say(ROOM, "one", "b1").await, 1);
    let mut tab2 = ws_of(&b, "ann").await;
    assert_eq!(join_read(&mut tab2, ROOM, "ann").await.1, (0, 1, 0));
    bob.say_mentioning(ROOM, "@ann hi", "b2", &[&ann]).await;
    assert_eq!(tab2.next_of("mention").await["seq"], 2);
    tab1.send(json!({"type": "read", "room": ROOM, "seq": 1}))
        .await;
    assert_eq!(read_state(&mut tab1, ROOM).await, (1, 1, 1));
    assert_eq!(read_state(&mut tab2, ROOM).await, (1, 1, 1));
    assert_eq!(
        a.chat.unread("ann").await.unwrap(),
        b.chat.unread("ann").await.unwrap()
    );
    assert_eq!(
        unread_over_http(&b, "ann").await,
        [(ROOM.to_owned(), 1, 1, 1)]
    );
    a.stop().await;
    b.stop().await;
}

/// The host's badge call for a user in 100 rooms: one request, every room's counts.
#[tokio::test]
async fn the_host_reads_a_users_counts_over_a_hundred_rooms_in_one_request() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let server = common::start_with(|b| signed(b).engine(Engine::Sqlite(db))).await;
    let auth = format!("Bearer {KEY}");
    let headers = [("authorization", auth.as_str())];
    for i in 0..100u64 {
        let room = format!("room-{i:03}");
        server.chat.publish(&room, "Bot", "first").await.unwrap();
        // The host marks the room read for Carol: it is one of hers from now on.
        let (status, body) = common::http_request(
            server.http,
            "POST",
            "/wtchat/api/read",
            &headers,
            Some(&json!({"user": "carol", "room": room, "seq": 1})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        for n in 0..i % 3 {
            let mentions: &[&str] = if n == 0 { &["carol"] } else { &[] };
            server
                .chat
                .publish_mentioning(&room, "Bot", "more", mentions)
                .await
                .unwrap();
        }
    }
    let rooms = unread_over_http(&server, "carol").await;
    assert_eq!(rooms.len(), 100);
    for (i, (room, seq, unread, mentions)) in rooms.into_iter().enumerate() {
        let i = i as u64;
        assert_eq!(room, format!("room-{i:03}"));
        assert_eq!(
            (seq, unread, mentions),
            (1, i % 3, u64::from(!i.is_multiple_of(3)))
        );
    }
    server.stop().await;
}

/// In a big room, members marking read cost the others nothing: no receipts, no frame.
#[tokio::test]
async fn a_big_room_sends_no_receipts() {
    let server = common::start_with(|b| {
        signed(b)
            .presence_threshold(3)
            .presence_interval(Duration::from_millis(50))
    })
    .await;
    let mut clients = Vec::new();
    for user in ["u1", "u2", "u3", "u4"] {
        let mut client = ws_of(&server, user).await;
        join_read(&mut client, ROOM, user).await;
        clients.push(client);
    }
    assert_eq!(clients[0].say(ROOM, "hello", "h1").await, 1);
    for client in &mut clients[1..] {
        client
            .send(json!({"type": "read", "room": ROOM, "seq": 1}))
            .await;
        assert_eq!(read_state(client, ROOM).await, (1, 0, 0));
    }
    // Several ticks pass: the sender hears its own message, and nothing about reading.
    let heard = clients[0].drain(Duration::from_millis(400)).await;
    assert!(
        heard
            .iter()
            .all(|f| f["type"] != "receipts" && f["type"] != "read"),
        "{heard:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_wrong_read_or_mention_gets_its_own_code_and_changes_nothing() {
    let server = common::start_with(signed).await;
    let mut ann = ws_of(&server, "ann").await;
    join_read(&mut ann, ROOM, "ann").await;
    // A room not joined.
    ann.send(json!({"type": "read", "room": "other", "seq": 1}))
        .await;
    let error = ann.next_of("error").await;
    assert_eq!(
        (&error["code"], &error["room"]),
        (&json!("not_joined"), &json!("other"))
    );
    // No seq.
    ann.send(json!({"type": "read", "room": ROOM})).await;
    assert_eq!(ann.next_of("error").await["code"], "invalid_frame");
    // Mentions: not ids, too many, twice the same, not a list.
    let id = "AAAAAAAAAAAAAAAA";
    let many: Vec<String> = (0..21).map(|i| format!("AAAAAAAAAAAAAA{i:02}")).collect();
    for (n, mentions) in [json!(["ann"]), json!(many), json!([id, id])]
        .into_iter()
        .enumerate()
    {
        let cid = format!("m{n}");
        ann.send(
            json!({"type": "send", "room": ROOM, "text": "hi", "id": cid, "mentions": mentions}),
        )
        .await;
        assert_eq!(ann.answer(&cid).await.unwrap_err(), "invalid_mentions");
    }
    ann.send(json!({"type": "send", "room": ROOM, "text": "hi", "id": "m9", "mentions": "x"}))
        .await;
    assert_eq!(ann.next_of("error").await["code"], "invalid_frame");
    // Nothing was sent; the connection still works.
    assert_eq!(ann.say(ROOM, "fine", "ok").await, 1);
    assert!(
        server
            .chat
            .publish_mentioning(ROOM, "Bot", "x", &["a", "a"])
            .await
            .is_err()
    );
    server.stop().await;
}

/// On SQLite, a mark that has not moved for the retention age, with nothing unread after it,
/// goes: an anonymous visitor leaves one per room it joined, and they must not pile up.
#[tokio::test]
async fn old_read_marks_leave_sqlite_once_nothing_is_unread() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let server = common::start_with(move |b| {
        signed(b)
            .engine(Engine::Sqlite(db))
            .retention_age(Duration::from_secs(1))
    })
    .await;
    let chat = &server.chat;
    assert_eq!(chat.publish(ROOM, "host", "soon gone").await.unwrap(), 1);
    assert_eq!(chat.mark_read("u1", ROOM, 1).await.unwrap().seq, 1);
    assert_eq!(chat.unread("u1").await.unwrap().len(), 1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !chat.unread("u1").await.unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "the mark stayed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop().await;
}
