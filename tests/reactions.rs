//! Reactions: members add and take back emoji (or the host's names) on messages; every
//! member sees the counts, each its own, and a member that was away comes back to exactly
//! the current counts — on each engine: in memory, on SQLite across a restart, on Redis
//! across two nodes. A burst of thousands takes no message out of a resume; a big room
//! sends them coalesced; every wrong reaction gets its own code and changes nothing. Real
//! clients over loopback (WebTransport, WebSocket, SSE, long polling), a real SQLite file,
//! a real `redis-server` (the Redis tests skip loudly without one, and fail under
//! `CI=true`).

mod common;
#[path = "common/redis.rs"]
mod redis;

use std::time::Duration;

use common::{Client, TestServer};
use futures_util::StreamExt;
use redis::{Persistence, Redis};
use serde_json::{Value, json};
use wtchat::{ConfigBuilder, Engine};

const ROOM: &str = "reactions";

/// Sends a `react` (or `unreact`) of `reaction` to message `seq` with id `id`, and waits
/// for its ack: Ok((the reaction's number, the member's own reactions on the message)),
/// or Err(the error code).
async fn react(
    client: &mut Client,
    kind: &str,
    seq: u64,
    reaction: &str,
    id: &str,
) -> Result<(u64, Vec<String>), String> {
    client
        .send(json!({"type": kind, "room": ROOM, "seq": seq, "reaction": reaction, "id": id}))
        .await;
    let ack = client.answer(id).await?;
    Ok((
        ack["seq"].as_u64().unwrap(),
        serde_json::from_value(ack["mine"].clone()).unwrap(),
    ))
}

/// A message as a client shows it: seq, text, and its counts as "👍2".
type Shown = (u64, String, Vec<String>);

fn counts(reactions: &Value) -> Vec<String> {
    reactions
        .as_array()
        .map(|list| {
            list.iter()
                .map(|c| format!("{}{}", c["reaction"].as_str().unwrap(), c["count"]))
                .collect()
        })
        .unwrap_or_default()
}

/// Applies frames (a replay, or live ones) to what a client shows, the way the browser
/// client does: an `update` changes the fields it carries.
fn apply(shown: &mut Vec<Shown>, frames: &[Value]) {
    for frame in frames {
        let seq = frame["seq"].as_u64().unwrap();
        match frame["type"].as_str().unwrap() {
            "message" => shown.push((
                seq,
                frame["text"].as_str().unwrap().into(),
                counts(&frame["reactions"]),
            )),
            "update" if frame["deleted"] == true => shown.retain(|m| m.0 != seq),
            "update" => {
                if let Some(m) = shown.iter_mut().find(|m| m.0 == seq) {
                    if let Some(text) = frame["text"].as_str() {
                        m.1 = text.into();
                    }
                    if frame.get("reactions").is_some() {
                        m.2 = counts(&frame["reactions"]);
                    }
                }
            }
            other => panic!("unexpected {other}"),
        }
    }
}

/// The room as history has it now.
async fn history(server: &TestServer) -> Vec<Shown> {
    let page = server.chat.history(ROOM, None, 100).await.unwrap();
    page.messages
        .iter()
        .map(|m| {
            let counts = m
                .reactions
                .iter()
                .map(|c| format!("{}{}", c.reaction, c.count))
                .collect();
            (m.seq, m.text.clone(), counts)
        })
        .collect()
}

/// What Bob had when he went away.
struct Away {
    shown: Vec<Shown>,
    since: u64,
    epoch: u64,
    key: String,
}

/// Ann (WebTransport) says 1-3 while Bob (WebSocket) watches, and Bob reacts 👀 to 1; Bob
/// goes away. Meanwhile Ann edits 1, Cid (SSE) and Ann react 👍 to it, Ann and Cid 🎉 to
/// 3 and Cid takes his back, Ann deletes 2, says "four" and Cid reacts 👍 to it.
async fn go_away(first: &TestServer) -> Away {
    let mut ann = Client::wt(first).await;
    let mut bob = Client::ws(first).await;
    let mut cid = Client::sse(first).await;
    ann.join(ROOM, "Ann").await;
    cid.join(ROOM, "Cid").await;
    let (joined, _) = bob.join(ROOM, "Bob").await;
    let epoch = joined["epoch"].as_u64().unwrap();
    let key = joined["key"].as_str().unwrap().to_owned();
    for (i, text) in ["one", "two", "three"].iter().enumerate() {
        assert_eq!(ann.say(ROOM, text, &format!("s{i}")).await, i as u64 + 1);
    }
    let (seen, mine) = react(&mut bob, "react", 1, "👀", "b1").await.unwrap();
    assert_eq!((seen, mine), (4, vec!["👀".to_string()]));
    // Everyone saw it; Ann's client shows it.
    let update = ann.next_of("update").await;
    assert_eq!(
        (update["seq"].as_u64(), update["at"].as_u64()),
        (Some(1), Some(4))
    );
    assert_eq!(counts(&update["reactions"]), ["👀1"]);
    let shown = vec![
        (1, "one".into(), vec!["👀1".into()]),
        (2, "two".into(), vec![]),
        (3, "three".into(), vec![]),
    ];
    drop(bob);

    ann.send(json!({"type": "edit", "room": ROOM, "seq": 1, "text": "ONE", "id": "e1"}))
        .await;
    ann.next_matching("the edit's ack", |f| f["id"] == "e1")
        .await;
    assert_eq!(
        react(&mut cid, "react", 1, "👍", "c1").await,
        Ok((6, vec!["👍".into()]))
    );
    assert_eq!(
        react(&mut ann, "react", 1, "👍", "a1").await,
        Ok((7, vec!["👍".into()]))
    );
    react(&mut ann, "react", 3, "🎉", "a2").await.unwrap();
    react(&mut cid, "react", 3, "🎉", "c2").await.unwrap();
    assert_eq!(
        react(&mut cid, "unreact", 3, "🎉", "c3").await,
        Ok((10, vec![]))
    );
    ann.send(json!({"type": "delete", "room": ROOM, "seq": 2, "id": "d2"}))
        .await;
    ann.next_matching("the deletion's ack", |f| f["id"] == "d2")
        .await;
    assert_eq!(ann.say(ROOM, "four", "s4").await, 12);
    assert_eq!(
        react(&mut cid, "react", 12, "👍", "c4").await,
        Ok((13, vec!["👍".into()]))
    );
    // Who reacted to 1, in their order, as Cid's client asks.
    cid.send(json!({"type": "reactions", "room": ROOM, "seq": 1}))
        .await;
    let page = cid.next_of("reactions").await;
    let who: Vec<(&str, &str)> = page["reactors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["reaction"].as_str().unwrap(), r["from"].as_str().unwrap()))
        .collect();
    assert_eq!(who, [("👀", "Bob"), ("👍", "Cid"), ("👍", "Ann")]);
    assert_eq!(page["next"], Value::Null);
    Away {
        shown,
        since: 4,
        epoch,
        key,
    }
}

/// Bob comes back through `back`, resuming from what he saw: he shows exactly what
/// history shows, without a gap, with his own reaction named in his `joined`.
async fn come_back(back: &TestServer, away: Away) {
    let Away {
        mut shown,
        since,
        epoch,
        key,
    } = away;
    let mut bob = Client::ws(back).await;
    let (joined, replay) = bob
        .join_frame(
            json!({"type": "join", "room": ROOM, "name": "Bob", "key": key,
                           "since": since, "epoch": epoch}),
        )
        .await;
    assert_eq!(joined["gap"], false, "{joined}");
    assert_eq!(joined["seq"], 13);
    assert_eq!(joined["mine"], json!({"1": ["👀"]}), "{joined}");
    apply(&mut shown, &replay);
    let expected: Vec<Shown> = vec![
        (1, "ONE".into(), vec!["👀1".into(), "👍2".into()]),
        (3, "three".into(), vec!["🎉1".into()]),
        (12, "four".into(), vec!["👍1".into()]),
    ];
    assert_eq!(shown, expected, "replay: {replay:?}");
    assert_eq!(history(back).await, expected);
    // He takes his 👀 back, here: it was his, wherever he made it.
    assert_eq!(
        react(&mut bob, "unreact", 1, "👀", "b2").await,
        Ok((14, vec![]))
    );
    let mut dan = Client::poll(back).await;
    let (_, fresh) = dan.join(ROOM, "Dan").await;
    assert_eq!(counts(&fresh[0]["reactions"]), ["👍2"]);
}

#[tokio::test]
async fn away_and_back_in_memory() {
    let server = common::start().await;
    let away = go_away(&server).await;
    come_back(&server, away).await;
    server.stop().await;
}

#[tokio::test]
async fn away_and_back_across_a_sqlite_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let first = common::start_with(|b| b.engine(Engine::Sqlite(db.clone()))).await;
    let away = go_away(&first).await;
    first.stop().await;
    let second = common::start_with(|b| b.engine(Engine::Sqlite(db.clone()))).await;
    come_back(&second, away).await;
    second.stop().await;
}

fn redis_node(redis: &Redis, prefix: &'static str) -> impl Future<Output = TestServer> {
    let url = redis.url();
    common::start_with(move |b: ConfigBuilder| {
        b.engine(Engine::Redis {
            url,
            prefix: prefix.into(),
        })
    })
}

/// Redis: Bob comes back to the other node, which takes the room up from Redis.
#[tokio::test]
async fn away_and_back_across_two_redis_nodes() {
    let Some(redis) = Redis::start_or_skip("reactions_two_nodes", Persistence::None).await else {
        return;
    };
    let a = redis_node(&redis, "reactions").await;
    let away = go_away(&a).await;
    let b = redis_node(&redis, "reactions").await;
    come_back(&b, away).await;
    a.stop().await;
    b.stop().await;
}

/// 5,000 users react to one message while Bob is away (on the host's API, 64 at a time):
/// his resume gets that message's counts once and the messages he missed, without a gap;
/// and no message left history for them (retention counts messages, not reactions).
async fn five_thousand_reactions_while_away(server: TestServer) {
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
    let reactions = futures_util::stream::iter(0..5000)
        .map(|i| async move {
            let user = format!("user{i}");
            let reaction = if i % 5 == 0 { "🎉" } else { "👍" };
            chat.react(ROOM, 2, &user, &user, reaction).await
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    assert!(reactions.iter().all(Result::is_ok), "{:?}", reactions[0]);
    for i in 4..=5 {
        server
            .chat
            .publish(ROOM, "host", &format!("m{i}"))
            .await
            .unwrap();
    }
    let mut bob = Client::ws(&server).await;
    let (joined, replay) = bob
        .join_frame(
            json!({"type": "join", "room": ROOM, "name": "Bob", "since": 3,
                           "epoch": epoch}),
        )
        .await;
    assert_eq!(joined["gap"], false, "{joined}");
    assert_eq!(joined["seq"], 5005);
    let got: Vec<(String, u64, Vec<String>)> = replay
        .iter()
        .map(|f| {
            (
                f["type"].as_str().unwrap().to_owned(),
                f["seq"].as_u64().unwrap(),
                counts(&f["reactions"]),
            )
        })
        .collect();
    // 🎉 came first (user0), so it is listed first.
    let total = vec!["🎉1000".to_string(), "👍4000".to_string()];
    assert_eq!(
        got,
        [
            ("update".to_string(), 2, total.clone()),
            ("message".to_string(), 5004, vec![]),
            ("message".to_string(), 5005, vec![]),
        ]
    );
    let kept: Vec<u64> = history(&server).await.iter().map(|m| m.0).collect();
    assert_eq!(kept, [1, 2, 3, 5004, 5005]);
    // Who reacted, paged: the first two, then from where the page said.
    let first = server.chat.reactions(ROOM, 2, None, 2).await.unwrap();
    let names: Vec<&str> = first.reactors.iter().map(|r| r.from.as_str()).collect();
    assert_eq!(names.len(), 2);
    let next = server
        .chat
        .reactions(ROOM, 2, first.next, 100)
        .await
        .unwrap();
    assert_eq!(next.reactors.len(), 100);
    assert!(next.reactors[0].at > first.reactors[1].at);
    server.stop().await;
}

/// With a tail of 20 messages and a retention of 100: the tail keeps one update for the
/// message, and the engine would have dropped messages had reactions counted.
fn small(b: ConfigBuilder) -> ConfigBuilder {
    b.history(20).max_replay(10).retention_messages(100)
}

#[tokio::test]
async fn five_thousand_reactions_while_away_still_resume_without_a_gap_in_memory() {
    five_thousand_reactions_while_away(common::start_with(small).await).await;
}

#[tokio::test]
async fn five_thousand_reactions_while_away_still_resume_without_a_gap_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let server = common::start_with(move |b| small(b).engine(Engine::Sqlite(db))).await;
    five_thousand_reactions_while_away(server).await;
}

#[tokio::test]
async fn five_thousand_reactions_while_away_still_resume_without_a_gap_on_redis() {
    let Some(redis) = Redis::start_or_skip("reactions_five_thousand", Persistence::None).await
    else {
        return;
    };
    let url = redis.url();
    let server = common::start_with(move |b| {
        small(b).engine(Engine::Redis {
            url,
            prefix: "burst".into(),
        })
    })
    .await;
    five_thousand_reactions_while_away(server).await;
}

/// On SQLite, the reactions of messages gone past their retention age go with them: who
/// reacted to a message no longer stored is no one.
#[tokio::test]
async fn reactions_leave_storage_with_their_messages() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let server = common::start_with(move |b| {
        b.engine(Engine::Sqlite(db))
            .retention_age(Duration::from_secs(1))
    })
    .await;
    let chat = &server.chat;
    assert_eq!(chat.publish(ROOM, "host", "soon gone").await.unwrap(), 1);
    chat.react(ROOM, 1, "u1", "Ann", "👍").await.unwrap();
    chat.react(ROOM, 1, "u2", "Bob", "🎉").await.unwrap();
    assert_eq!(
        chat.reactions(ROOM, 1, None, 100)
            .await
            .unwrap()
            .reactors
            .len(),
        2
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !chat
        .reactions(ROOM, 1, None, 100)
        .await
        .unwrap()
        .reactors
        .is_empty()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reactions stayed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        chat.history(ROOM, None, 100)
            .await
            .unwrap()
            .messages
            .is_empty()
    );
    server.stop().await;
}

/// Every wrong reaction gets its own code, and nothing is stored or sent: not one emoji
/// (nor a listed name), a deleted or unknown message, too many on one message, too many of
/// one member's. A repeat, or taking back one never made, changes nothing and is acked.
#[tokio::test]
async fn a_wrong_reaction_gets_its_own_code_and_changes_nothing() {
    let server = common::start_with(|b| b.reactions_per_message(4).reaction_name("plus-one")).await;
    let mut ann = Client::ws(&server).await;
    let mut bob = Client::sse(&server).await;
    let mut cid = Client::poll(&server).await;
    ann.join(ROOM, "Ann").await;
    bob.join(ROOM, "Bob").await;
    cid.join(ROOM, "Cid").await;
    assert_eq!(ann.say(ROOM, "hello", "a1").await, 1);
    assert_eq!(ann.say(ROOM, "gone", "a2").await, 2);
    ann.send(json!({"type": "delete", "room": ROOM, "seq": 2, "id": "d2"}))
        .await;
    ann.next_matching("the deletion's ack", |f| f["id"] == "d2")
        .await;
    // Ann adds three (her most), Bob a fourth distinct one (the message's most).
    for (i, r) in ["😀", "😃", "plus-one"].iter().enumerate() {
        react(&mut ann, "react", 1, r, &format!("ok{i}"))
            .await
            .unwrap();
    }
    let (_, bobs) = react(&mut bob, "react", 1, "🐈", "b1").await.unwrap();
    assert_eq!(bobs, ["🐈"]);
    let cases = [
        ("react", 1, "abc", "invalid_reaction"),
        ("react", 1, "👍👍", "invalid_reaction"),
        ("react", 1, "", "invalid_reaction"),
        ("react", 1, "plus-two", "invalid_reaction"),
        ("react", 1, "😀 ", "invalid_reaction"),
        ("react", 2, "👍", "message_deleted"),
        ("react", 99, "👍", "unknown_message"),
        ("react", 0, "👍", "unknown_message"),
        ("react", 1, "😄", "too_many_reactions"),
    ];
    for (i, (kind, seq, reaction, code)) in cases.into_iter().enumerate() {
        assert_eq!(
            react(&mut ann, kind, seq, reaction, &format!("bad{i}")).await,
            Err(code.to_owned()),
            "{reaction}"
        );
    }
    // Bob's second distinct one would be the message's fifth.
    assert_eq!(
        react(&mut bob, "react", 1, "🦀", "b2").await,
        Err("too_many_reactions".into())
    );
    // But one already there is fine, and a repeat or a removal of nothing changes nothing.
    assert_eq!(
        react(&mut bob, "react", 1, "😀", "b3").await.map(|r| r.1),
        Ok(vec!["🐈".to_string(), "😀".to_string()])
    );
    assert_eq!(
        react(&mut bob, "react", 1, "😀", "b4").await.map(|r| r.1),
        Ok(vec!["🐈".to_string(), "😀".to_string()])
    );
    assert_eq!(
        react(&mut bob, "unreact", 1, "🎉", "b5").await.map(|r| r.1),
        Ok(vec!["🐈".to_string(), "😀".to_string()])
    );
    // Cid saw one update per reaction that changed something, and nothing else.
    let (last, _) = react(&mut ann, "unreact", 1, "😃", "ok9").await.unwrap();
    let mut updates = Vec::new();
    while updates.last().is_none_or(|u: &Value| u["at"] != last) {
        let update = cid.next_of("update").await;
        if update["seq"] == 1 {
            updates.push(update);
        }
    }
    let seen: Vec<Vec<String>> = updates.iter().map(|u| counts(&u["reactions"])).collect();
    assert_eq!(
        seen,
        [
            vec!["😀1"],
            vec!["😀1", "😃1"],
            vec!["😀1", "😃1", "plus-one1"],
            vec!["😀1", "😃1", "plus-one1", "🐈1"],
            vec!["😀2", "😃1", "plus-one1", "🐈1"],
            vec!["😀2", "plus-one1", "🐈1"],
        ]
    );
    assert_eq!(
        history(&server).await,
        [(
            1,
            "hello".to_string(),
            vec!["😀2".into(), "plus-one1".into(), "🐈1".into()]
        )]
    );
    // A history page names the asker's own.
    bob.send(json!({"type": "history", "room": ROOM})).await;
    let page = bob.next_of("history").await;
    assert_eq!(page["mine"], json!({"1": ["🐈", "😀"]}), "{page}");
    server.stop().await;
}

/// In a big room (at its presence threshold) reactions are coalesced: members reacting at
/// once cost each other member one `update` per message per presence interval, with the
/// latest counts.
#[tokio::test]
async fn a_big_room_sends_reactions_coalesced() {
    let server = common::start_with(|b| {
        b.presence_threshold(3)
            .presence_interval(Duration::from_millis(400))
    })
    .await;
    let mut watcher = Client::ws(&server).await;
    watcher.join(ROOM, "Watcher").await;
    let mut members = Vec::new();
    for i in 0..8 {
        let mut member = Client::ws(&server).await;
        member.join(ROOM, &format!("m{i}")).await;
        members.push(member);
    }
    let seq = members[0].say(ROOM, "react to me", "s").await;
    // Everyone reacts at once; each gets its ack with its own at once.
    for (i, member) in members.iter_mut().enumerate() {
        member
            .send(
                json!({"type": "react", "room": ROOM, "seq": seq, "reaction": "👍",
                          "id": format!("r{i}")}),
            )
            .await;
    }
    for (i, member) in members.iter_mut().enumerate() {
        let id = format!("r{i}");
        let ack = member
            .next_matching("ack", |f| f["type"] == "ack" && f["id"] == id.as_str())
            .await;
        assert_eq!(ack["mine"], json!(["👍"]));
    }
    // The watcher's updates of that message, up to the one with all eight.
    let mut updates = Vec::new();
    while updates
        .last()
        .is_none_or(|u: &Value| counts(&u["reactions"]) != ["👍8"])
    {
        let update = watcher.next_of("update").await;
        assert_eq!(update["seq"], seq);
        updates.push(update);
    }
    assert!(updates.len() <= 2, "{updates:?}");
    // The coalesced update carries the whole message, and is in the tail for replays.
    assert_eq!(updates.last().unwrap()["text"], "react to me");
    let mut late = Client::ws(&server).await;
    let (_, replay) = late.join(ROOM, "late").await;
    assert_eq!(counts(&replay[0]["reactions"]), ["👍8"]);
    server.stop().await;
}

/// A big room's gathered reactions reach a client that left before they were sent,
/// whatever it saw last: here the message after them, the last number the room had when
/// it sent them.
#[tokio::test]
async fn a_big_room_s_gathered_reactions_reach_a_client_that_left_before_they_went_out() {
    let server = common::start_with(|b| {
        b.presence_threshold(3)
            .presence_interval(Duration::from_millis(1500))
    })
    .await;
    let mut watcher = Client::ws(&server).await;
    watcher.join(ROOM, "Watcher").await;
    let mut away = Client::ws(&server).await;
    let (joined, _) = away.join(ROOM, "Away").await;
    let (epoch, key) = (joined["epoch"].clone(), joined["key"].clone());
    let mut members = Vec::new();
    for i in 0..4 {
        let mut member = Client::ws(&server).await;
        member.join(ROOM, &format!("m{i}")).await;
        members.push(member);
    }
    let seq = members[0].say(ROOM, "react to me", "s").await;
    for (i, member) in members.iter_mut().enumerate() {
        react(member, "react", seq, "🎉", &format!("r{i}"))
            .await
            .unwrap();
    }
    let last = members[0].say(ROOM, "after", "s2").await;
    // Away sees everything up to the message after the reactions (and, if the interval
    // ended meanwhile, their update), then goes.
    let mut seen = Vec::new();
    while seen.last().is_none_or(|f: &Value| f["seq"] != last) {
        let frame = away
            .next_matching("a message or an update", |f| {
                f["type"] == "message" || f["type"] == "update"
            })
            .await;
        seen.push(frame);
    }
    drop(away);
    // The interval ends: the others get the counts.
    let update = watcher
        .next_matching("the gathered update", |f| {
            f["type"] == "update" && counts(&f["reactions"]) == ["🎉4"]
        })
        .await;
    assert_eq!(update["at"], last);
    let mut away = Client::ws(&server).await;
    let (joined, replay) = away
        .join_frame(
            json!({"type": "join", "room": ROOM, "name": "Away", "key": key,
                           "since": last, "epoch": epoch}),
        )
        .await;
    assert_eq!(joined["gap"], false);
    let mut shown = Vec::new();
    apply(&mut shown, &seen);
    apply(&mut shown, &replay);
    let counted: Vec<&Vec<String>> = shown.iter().filter(|m| m.0 == seq).map(|m| &m.2).collect();
    assert_eq!(counted, [&vec!["🎉4".to_string()]], "replay: {replay:?}");
    server.stop().await;
}

/// The host reacts on behalf of a user and reads who reacted, over the HTTP API: what a
/// PHP or Django backend calls.
#[tokio::test]
async fn the_host_reacts_and_reads_who_reacted_over_the_http_api() {
    const KEY: &str = "an-api-key-of-at-least-32-bytes-long!!";
    let server = common::start_with(|b| b.api_key(KEY)).await;
    let mut ann = Client::ws(&server).await;
    ann.join(ROOM, "Ann").await;
    assert_eq!(ann.say(ROOM, "hello", "a1").await, 1);
    let auth = format!("Bearer {KEY}");
    let headers = [("authorization", auth.as_str())];
    let post = |body: Value| async move {
        let (status, body) = common::http_request(
            server.http,
            "POST",
            "/wtchat/api/react",
            &headers,
            Some(&body),
        )
        .await;
        (status, serde_json::from_str::<Value>(&body).unwrap())
    };
    let (status, body) =
        post(json!({"room": ROOM, "seq": 1, "user": "u7", "name": "Zoe", "reaction": "👍"})).await;
    assert_eq!((status, &body["mine"]), (200, &json!(["👍"])), "{body}");
    let update = ann.next_of("update").await;
    assert_eq!(counts(&update["reactions"]), ["👍1"]);
    let (status, body) =
        post(json!({"room": ROOM, "seq": 1, "user": "u7", "reaction": "nope"})).await;
    assert_eq!(
        (status, &body["error"]),
        (400, &json!("invalid_reaction")),
        "{body}"
    );
    let (status, body) =
        post(json!({"room": ROOM, "seq": 5, "user": "u7", "reaction": "👍"})).await;
    assert_eq!(
        (status, &body["error"]),
        (400, &json!("unknown_message")),
        "{body}"
    );
    let (status, body) = common::http_get(
        server.http,
        &format!("/wtchat/api/reactions?room={ROOM}&seq=1"),
        &headers,
    )
    .await;
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["reactors"][0]["reaction"], "👍");
    assert_eq!(body["reactors"][0]["from"], "Zoe");
    assert_eq!(body["next"], Value::Null);
    let (status, body) =
        post(json!({"room": ROOM, "seq": 1, "user": "u7", "reaction": "👍", "remove": true})).await;
    assert_eq!((status, &body["mine"]), (200, &json!([])), "{body}");
    assert_eq!(ann.next_of("update").await["reactions"], json!([]));
    server.stop().await;
}
