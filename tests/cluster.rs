//! Many nodes, one chat: real `wtchat serve` processes on the Redis engine, sharing one real
//! `redis-server`, with real clients on both transports. One room has one order and one
//! sequence across nodes; clients of a node killed with `kill -9` resume on another with
//! nothing lost; a Redis that stops (SHUTDOWN, or `kill -9`) and comes back loses nothing
//! acknowledged and refuses sends honestly meanwhile; presence and the HTTP API span the
//! nodes, and a dead node's members leave; a ticket one node hands out logs in on another.
//! Without `redis-server` the tests skip loudly (and fail under `CI=true`; `scripts/test`
//! installs it).

mod common;
#[path = "common/redis.rs"]
mod redis;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Client, DEADLINE, Ended, Seen, Serve, seq_text};
use redis::{Persistence, Redis, quiet_port};
use serde_json::{Value, json};
use tokio::time::Instant;

/// The HTTP API's key on every node of a test that uses the API.
const API_KEY: &str = "an-api-key-of-at-least-32-bytes-long!!";
/// The token secret every node of a test with identified users shares.
const SECRET: &str = "a-token-secret-of-at-least-32-bytes!";
/// Member ids travel as JSON numbers: a browser reads them exactly only below 2^53.
const MAX_SAFE_ID: u64 = 1 << 53;

/// `wtchat serve` on the Redis engine at `engine`, on free ports, working in `dir`.
fn serve_command(dir: &Path, engine: &str) -> Command {
    let mut command = common::serve_command(dir);
    command.args(["--engine", engine]);
    command
}

/// A real `wtchat serve` process on the Redis engine, on free ports, in a directory of its
/// own (its output kept there and shown when the test fails).
struct Node {
    name: &'static str,
    serve: Serve,
    http: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Node {
    /// Starts a node of `redis` (`extra`: more flags) and waits until it serves.
    async fn start(name: &'static str, redis: &Redis, extra: &[&str]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let mut command = serve_command(dir.path(), &redis.url());
        command
            .args(["--frames-per-second", "100000", "--frame-burst", "100000"])
            .args(extra);
        let serve = Serve::start(command, dir.path()).await;
        Node {
            name,
            http: serve.http,
            serve,
            _dir: dir,
        }
    }

    /// A WebSocket client; `query` is `?token=…` or empty.
    async fn ws_query(&self, query: &str) -> Client {
        self.serve.ws_query(query).await
    }

    /// A WebTransport client; `query` is `?token=…` or empty.
    async fn wt_query(&self, query: &str) -> Client {
        self.serve.wt_query(query).await
    }

    async fn ws(&self) -> Client {
        self.serve.ws().await
    }

    async fn wt(&self) -> Client {
        self.serve.wt().await
    }

    /// A request to the HTTP API with the key: (status, JSON body).
    async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let auth = format!("Bearer {API_KEY}");
        let (status, text) = common::http_request(
            self.http,
            method,
            path,
            &[("authorization", &auth)],
            body.as_ref(),
        )
        .await;
        let value = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("node {}: {path} answered {status} {text:?}: {e}", self.name)
        });
        (status, value)
    }

    /// The members `/wtchat/api/members` lists for `room`: id → (name, user).
    async fn api_members(&self, room: &str) -> BTreeMap<u64, (String, Value)> {
        let (status, body) = self
            .api("GET", &format!("/wtchat/api/members?room={room}"), None)
            .await;
        assert_eq!(status, 200, "node {}: {body}", self.name);
        let members = body["members"].as_array().unwrap();
        assert_eq!(
            body["count"].as_u64(),
            Some(members.len() as u64),
            "node {}: {body}",
            self.name
        );
        members
            .iter()
            .map(|m| {
                let id = m["id"].as_u64().unwrap();
                (
                    id,
                    (m["name"].as_str().unwrap().to_string(), m["user"].clone()),
                )
            })
            .collect()
    }

    /// Polls `/wtchat/api/members` until its ids are `want`; returns how long that took.
    async fn await_api_members(&self, room: &str, want: &BTreeSet<u64>, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let got: BTreeSet<u64> = self.api_members(room).await.into_keys().collect();
            if &got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {}: /wtchat/api/members lists {got:?}, not {want:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `kill -9`: no goodbye, no flush, no last heartbeat.
    fn kill(&mut self) {
        self.serve.kill();
    }
}

/// A token for user `user` named `name`, for every room.
fn token(user: &str, name: &str) -> String {
    let claims = wtchat::auth::Claims {
        sub: user.into(),
        name: name.into(),
        rooms: vec!["*".into()],
        exp: wtchat::auth::unix_now() + 600,
    };
    format!("?token={}", wtchat::auth::mint(SECRET.as_bytes(), &claims))
}

/// Reads `room` until `messages` messages and `acks` acks arrived: the messages in arrival
/// order, the acks as id → seq. Any error fails the test.
async fn read_room(
    client: &mut Client,
    room: &str,
    messages: usize,
    acks: usize,
) -> (Vec<(u64, String, String)>, HashMap<String, u64>) {
    let (mut got, mut acked) = (Vec::new(), HashMap::new());
    while got.len() < messages || acked.len() < acks {
        let frame = client
            .next_matching("a message or an ack", |f| {
                (f["type"] == "message" && f["room"] == room)
                    || f["type"] == "ack"
                    || f["type"] == "error"
            })
            .await;
        match frame["type"].as_str() {
            Some("message") => got.push(seq_text(&frame)),
            Some("ack") => {
                let id = frame["id"].as_str().unwrap().to_string();
                assert!(acked.insert(id, frame["seq"].as_u64().unwrap()).is_none());
            }
            _ => panic!("{}: {frame}", client.transport()),
        }
    }
    (got, acked)
}

/// The next frame that matches `pred`; the room's messages and anything that tells of a
/// gap, met on the way, go to `stash` (to be checked later, not lost).
async fn next_stashing(
    client: &mut Client,
    stash: &mut Vec<Value>,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    loop {
        let frame = client
            .next_matching(what, |f| {
                pred(f) || f["type"] == "message" || f["gap"] == true
            })
            .await;
        if pred(&frame) {
            return frame;
        }
        stash.push(frame);
    }
}

/// The members a presence frame names (`member`, or several in `members`).
fn presence_members(frame: &Value) -> Vec<(u64, String)> {
    let one = [frame["member"].clone()];
    let many = frame["members"].as_array().map_or(&one[..], |m| &m[..]);
    many.iter()
        .filter(|m| m.is_object())
        .map(|m| {
            (
                m["id"].as_u64().unwrap(),
                m["name"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// A client's view of a room's members: `joined.members`, then every `presence` frame.
fn apply_presence(view: &mut BTreeMap<u64, String>, frame: &Value) {
    match frame["event"].as_str() {
        Some("join") => view.extend(presence_members(frame)),
        Some("leave") => {
            for (id, _) in presence_members(frame) {
                view.remove(&id);
            }
        }
        Some("sync") => *view = presence_members(frame).into_iter().collect(),
        other => panic!("a small room's presence is join, leave or sync, not {other:?}: {frame}"),
    }
}

/// Reads `client`'s presence frames for `room` until its view's ids are `want`; Err says
/// what it saw at the deadline.
async fn await_view(
    client: &mut Client,
    room: &str,
    view: &mut BTreeMap<u64, String>,
    want: &BTreeSet<u64>,
    deadline: Instant,
) -> Result<(), String> {
    while view.keys().copied().collect::<BTreeSet<_>>() != *want {
        let presence =
            client.next_matching("presence", |f| f["type"] == "presence" && f["room"] == room);
        let Ok(frame) = tokio::time::timeout_at(deadline, presence).await else {
            return Err(format!(
                "{}: sees members {:?}, not {want:?}, at the deadline",
                client.transport(),
                view.keys().collect::<Vec<_>>()
            ));
        };
        apply_presence(view, &frame);
    }
    Ok(())
}

/// A JSON list of objects as `number field → text field` (messages by seq, members by id).
fn numbered_by(list: &Value, number: &str, text: &str) -> BTreeMap<u64, String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m[number].as_u64().unwrap(),
                m[text].as_str().unwrap().into(),
            )
        })
        .collect()
}

#[tokio::test]
async fn one_room_across_three_nodes_and_both_transports_has_one_order() {
    const ROOM: &str = "lobby";
    const EACH: usize = 30;
    let Some(redis) = Redis::start_or_skip("one_room", Persistence::None).await else {
        return;
    };
    let nodes = [
        Node::start("A", &redis, &[]).await,
        Node::start("B", &redis, &[]).await,
        Node::start("C", &redis, &[]).await,
    ];
    let names = ["ann", "bob", "cid"];
    let mut clients = [
        nodes[0].ws().await,
        nodes[1].wt().await,
        nodes[2].ws().await,
    ];
    let mut joins = Vec::new();
    for (client, name) in clients.iter_mut().zip(names) {
        let (joined, replay) = client.join(ROOM, name).await;
        assert_eq!(joined["seq"], 0, "a new room: {joined}");
        assert!(replay.is_empty());
        joins.push(joined);
    }
    let epoch = &joins[0]["epoch"];
    assert!(epoch.is_u64(), "{}", joins[0]);
    for joined in &joins {
        assert_eq!(&joined["epoch"], epoch, "one room, one epoch on every node");
    }

    // Every sender sends without waiting, interleaved with the others.
    for i in 0..EACH {
        for (client, name) in clients.iter_mut().zip(names) {
            client
                .send(
                    json!({"type": "send", "room": ROOM, "text": format!("{name} {i}"),
                             "id": format!("{name}-{i}")}),
                )
                .await;
        }
    }
    let mut orders = Vec::new();
    for (client, name) in clients.iter_mut().zip(names) {
        let (messages, acks) = read_room(client, ROOM, names.len() * EACH, EACH).await;
        let by_seq: HashMap<u64, &(u64, String, String)> =
            messages.iter().map(|m| (m.0, m)).collect();
        for (id, seq) in &acks {
            let (_, from, text) = by_seq[seq];
            assert_eq!(
                (from.as_str(), text.as_str()),
                (name, id.replace('-', " ").as_str()),
                "{name}'s ack of {id} names the message it was delivered as"
            );
        }
        orders.push(messages);
    }
    for (order, client) in orders.iter().zip(&clients).skip(1) {
        assert_eq!(
            order,
            &orders[0],
            "{} sees another order",
            client.transport()
        );
    }
    let seqs: Vec<u64> = orders[0].iter().map(|m| m.0).collect();
    assert_eq!(
        seqs,
        (1..=(names.len() * EACH) as u64).collect::<Vec<_>>(),
        "one sequence for the room across nodes, in order, without holes"
    );
    for name in names {
        let own: Vec<&str> = orders[0]
            .iter()
            .filter(|m| m.1 == name)
            .map(|m| m.2.as_str())
            .collect();
        let sent: Vec<String> = (0..EACH).map(|i| format!("{name} {i}")).collect();
        assert_eq!(own, sent, "{name}'s messages in the order sent");
    }

    // Ann reconnects to node B with her key and retries a message node A stored: acknowledged
    // with its first number, stored once, and she is still the same sender.
    let key = joins[0]["key"].as_str().unwrap();
    let first = orders[0]
        .iter()
        .find(|m| m.2 == "ann 3")
        .map(|m| m.0)
        .unwrap();
    let mut ann = nodes[1].ws().await;
    let (joined, _) = ann
        .join_frame(json!({"type": "join", "room": ROOM, "name": "ann", "key": key}))
        .await;
    assert_eq!(joined["you"]["sender"], joins[0]["you"]["sender"]);
    assert_eq!(ann.say(ROOM, "ann 3", "ann-3").await, first);

    // Another site on the same Redis (another --redis-prefix) has a room of that name of its
    // own: a new room, numbered from 1, and nothing crosses over.
    let other = Node::start("other site", &redis, &["--redis-prefix", "othersite"]).await;
    let mut dan = other.wt().await;
    let (joined, replay) = dan.join(ROOM, "dan").await;
    assert_eq!(
        (joined["seq"].as_u64(), replay.len()),
        (Some(0), 0),
        "{joined}"
    );
    assert_eq!(
        joined["members"].as_array().map(Vec::len),
        Some(1),
        "{joined}"
    );
    assert_eq!(dan.say(ROOM, "elsewhere", "e1").await, 1);

    // The next message anyone of the first site sees is the next one sent there.
    let next = (names.len() * EACH) as u64 + 1;
    assert_eq!(ann.say(ROOM, "after", "after").await, next);
    for client in &mut clients {
        assert_eq!(
            client.messages(ROOM, 1).await,
            [(next, "ann".to_string(), "after".to_string())],
            "{}",
            client.transport()
        );
    }
}

#[tokio::test]
async fn clients_of_a_node_killed_mid_chat_resume_on_another_with_nothing_lost() {
    const ROOM: &str = "burst";
    const SENT: usize = 400;
    let Some(redis) = Redis::start_or_skip("node_killed", Persistence::None).await else {
        return;
    };
    let mut a = Node::start("A", &redis, &[]).await;
    let b = Node::start("B", &redis, &[]).await;

    // On A a writer (WebSocket) and a reader (WebTransport); on B a watcher who stays.
    let mut writer = a.ws().await;
    let (joined, _) = writer.join(ROOM, "writer").await;
    let key = joined["key"].as_str().unwrap().to_string();
    let epoch = joined["epoch"].as_u64().unwrap();
    let mut writer_seen = Seen {
        epoch,
        ..Seen::default()
    };
    let mut reader = a.wt().await;
    let (joined, _) = reader.join(ROOM, "reader").await;
    let mut reader_seen = Seen {
        epoch: joined["epoch"].as_u64().unwrap(),
        ..Seen::default()
    };
    let mut watcher = b.ws().await;
    let (joined, _) = watcher.join(ROOM, "watcher").await;
    assert_eq!(joined["epoch"], epoch);

    let send = async |writer: &mut Client, sends: std::ops::Range<usize>| {
        for i in sends {
            let (text, id) = (format!("m{i}"), format!("i{i}"));
            writer
                .send(json!({"type": "send", "room": ROOM, "text": text, "id": id}))
                .await;
        }
    };
    // A quarter acknowledged; then the rest sent, and A killed at once, with them in flight
    // (however fast or slow the machine: a kill timed by acks alone can come too late).
    send(&mut writer, 0..SENT / 4).await;
    let mut acked: HashMap<String, u64> = HashMap::new();
    let note =
        |frame: &Value, acked: &mut HashMap<String, u64>, seen: &mut Seen| match frame["type"]
            .as_str()
        {
            Some("ack") => {
                acked.insert(
                    frame["id"].as_str().unwrap().into(),
                    frame["seq"].as_u64().unwrap(),
                );
            }
            Some("message") if frame["room"] == ROOM => seen.add(frame),
            Some("error") => panic!("{frame}"),
            _ => {}
        };
    while acked.len() < SENT / 4 {
        let frame = writer.next().await;
        note(&frame, &mut acked, &mut writer_seen);
    }
    send(&mut writer, SENT / 4..SENT).await;
    a.kill();
    for frame in writer.drain(Duration::from_millis(300)).await {
        note(&frame, &mut acked, &mut writer_seen);
    }
    for frame in reader.drain(Duration::from_millis(300)).await {
        if frame["type"] == "message" && frame["room"] == ROOM {
            reader_seen.add(&frame);
        }
    }
    assert!(
        acked.len() < SENT,
        "the kill came after the burst: nothing was tested"
    );

    // Both reconnect to B and resume: exactly what they missed, no gap.
    let mut reader = b.ws().await;
    let joined = reader_seen.resume(&mut reader, ROOM, "again", None).await;
    assert_eq!(joined["gap"], false, "{joined}");
    assert_eq!(joined["epoch"], epoch);
    let mut writer = b.wt().await;
    let joined = writer_seen
        .resume(&mut writer, ROOM, "again", Some(&key))
        .await;
    assert_eq!(joined["gap"], false, "{joined}");

    // A newcomer reads the whole room: every acknowledged message under its number, numbered
    // without holes; the resumed ones saw exactly that.
    let mut probe = b.ws().await;
    let mut all = Seen {
        epoch,
        ..Seen::default()
    };
    let joined = all.resume(&mut probe, ROOM, "again", None).await;
    assert_eq!(joined["gap"], false);
    let head = joined["seq"].as_u64().unwrap();
    assert_eq!(
        all.texts.keys().copied().collect::<Vec<_>>(),
        (1..=head).collect::<Vec<_>>()
    );
    for (id, seq) in &acked {
        assert_eq!(
            all.texts.get(seq),
            Some(&format!("m{}", &id[1..])),
            "acknowledged {id} as {seq}"
        );
    }
    assert_eq!(reader_seen.texts, all.texts, "the reader resumed on B");
    assert_eq!(writer_seen.texts, all.texts, "the writer resumed on B");

    // The writer retries on B what it never saw acknowledged, and a few that were: what A
    // stored is acknowledged under its first number and not stored again.
    let mut newest: Vec<(&String, &u64)> = acked.iter().collect();
    newest.sort_by_key(|(_, seq)| std::cmp::Reverse(**seq));
    for (id, seq) in newest.into_iter().take(20) {
        assert_eq!(writer.say(ROOM, &format!("m{}", &id[1..]), id).await, *seq);
    }
    let stored: HashMap<&str, u64> = all.texts.iter().map(|(s, t)| (t.as_str(), *s)).collect();
    for i in 0..SENT {
        let id = format!("i{i}");
        if acked.contains_key(&id) {
            continue;
        }
        let text = format!("m{i}");
        let seq = writer.say(ROOM, &text, &id).await;
        match stored.get(text.as_str()) {
            Some(&first) => assert_eq!(seq, first, "{id} was stored before the kill"),
            None => assert!(seq > head, "{id} is new: {seq}"),
        }
    }

    // Every message once, numbered 1..=SENT; the watcher on B saw them all live, in order;
    // the resumed reader got the rest live.
    let mut last = Seen {
        epoch,
        ..Seen::default()
    };
    let mut probe = b.wt().await;
    let joined = last.resume(&mut probe, ROOM, "again", None).await;
    assert_eq!(
        joined["seq"].as_u64(),
        Some(SENT as u64),
        "each message once"
    );
    let texts: BTreeSet<&String> = last.texts.values().collect();
    assert_eq!(texts.len(), SENT, "each text once");
    let watched = watcher.messages(ROOM, SENT).await;
    let watched: BTreeMap<u64, String> = watched.into_iter().map(|(s, _, t)| (s, t)).collect();
    assert_eq!(watched, last.texts, "the watcher on B");
    for (seq, _, text) in reader.messages(ROOM, SENT - head as usize).await {
        assert!(reader_seen.texts.insert(seq, text).is_none());
    }
    assert_eq!(reader_seen.texts, last.texts, "the resumed reader");
}

/// How Redis goes away in [`redis_goes_away_mid_chat`].
#[derive(Clone, Copy, Debug)]
enum Outage {
    /// `SHUTDOWN`: Redis finishes what it has and exits.
    Shutdown,
    /// `kill -9`.
    Kill,
}

/// A sender on node A mid-burst and a reader on node B while Redis goes away and comes back
/// (same port, same directory, its append-only file synced on every write).
async fn redis_goes_away_mid_chat(outage: Outage) {
    const ROOM: &str = "r";
    const BURST: usize = 600;
    let test = format!("redis_{outage:?}");
    let Some(mut redis) = Redis::start_or_skip(&test, Persistence::Aof).await else {
        return;
    };
    // Room for a resume of the whole room in one replay.
    let flags = ["--api-key", API_KEY, "--max-replay", "5000"];
    let flags = [&flags[..], &["--outbound-queue", "100000"]].concat();
    let a = Node::start("A", &redis, &flags).await;
    let b = Node::start("B", &redis, &flags).await;
    let mut ann = a.ws().await;
    let mut bob = b.wt().await;
    let (joined, _) = ann.join(ROOM, "ann").await;
    let epoch = joined["epoch"].as_u64().unwrap();
    let mut members = BTreeSet::from([joined["you"]["id"].as_u64().unwrap()]);
    let (joined, _) = bob.join(ROOM, "bob").await;
    members.insert(joined["you"]["id"].as_u64().unwrap());
    // Cid, on B, leaves while Redis is down (not in `members`): once it is back, no node
    // lists him.
    let mut cid = b.ws().await;
    cid.join(ROOM, "cid").await;
    // What Bob receives while the test waits for something else, checked at the end.
    let mut bob_stash: Vec<Value> = Vec::new();

    // seq → text of everything acknowledged; no number may ever name two texts.
    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    let ack = |acked: &mut BTreeMap<u64, String>, seq: u64, text: String| {
        if let Some(before) = acked.insert(seq, text.clone()) {
            assert_eq!(before, text, "seq {seq} acknowledged for two messages");
        }
    };
    for i in 0..20 {
        let text = format!("before {i}");
        let seq = ann.say(ROOM, &text, &format!("p{i}")).await;
        ack(&mut acked, seq, text);
    }

    // A burst, sent without waiting: Redis goes away after the first half is sent, while the
    // node still works through it; the second half is sent to a node whose Redis is gone.
    let send = |i: usize| {
        let text = format!("b{i}");
        json!({"type": "send", "room": ROOM, "text": text, "id": text})
    };
    for i in 0..BURST / 2 {
        ann.send(send(i)).await;
    }
    match outage {
        Outage::Shutdown => redis.shutdown().await,
        Outage::Kill => redis.kill(),
    }
    for i in BURST / 2..BURST {
        ann.send(send(i)).await;
    }
    // Every send is answered, ack or error, naming its id.
    let mut answered: HashMap<String, Value> = HashMap::new();
    let deadline = Instant::now() + 3 * DEADLINE;
    while answered.len() < BURST {
        let frame = tokio::time::timeout_at(
            deadline,
            ann.next_matching("the burst's answers", |f| {
                f["type"] == "ack" || f["type"] == "error"
            }),
        )
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{} of {BURST} sends answered (ack or error) at the deadline",
                answered.len()
            )
        });
        let id = frame["id"]
            .as_str()
            .unwrap_or_else(|| panic!("an answer names its message's id: {frame}"))
            .to_string();
        assert!(answered.insert(id, frame).is_none(), "answered twice");
    }
    let mut failed = Vec::new();
    for i in 0..BURST {
        let id = format!("b{i}");
        let frame = &answered[&id];
        if frame["type"] == "ack" {
            ack(&mut acked, frame["seq"].as_u64().unwrap(), format!("b{i}"));
        } else {
            assert_eq!(frame["code"], "storage_failed", "{frame}");
            failed.push(i);
        }
    }
    eprintln!(
        "{test}: {} of the burst acknowledged, {} refused",
        BURST - failed.len(),
        failed.len()
    );
    assert!(
        failed.len() >= BURST / 2,
        "sends made while Redis was down were acknowledged: {failed:?}"
    );

    // While it is down: a send on either node is refused with storage_failed naming its id,
    // never acknowledged; the API says 503; clients stay connected.
    let mut ann_stash = Vec::new();
    for (client, id, stash) in [
        (&mut ann, "down-a", &mut ann_stash),
        (&mut bob, "down-b", &mut bob_stash),
    ] {
        client
            .send(json!({"type": "send", "room": ROOM, "text": id, "id": id}))
            .await;
        let answer = next_stashing(client, stash, "an answer", |f| {
            f["id"] == id && (f["type"] == "ack" || f["type"] == "error")
        })
        .await;
        assert_eq!(
            (
                answer["type"].as_str(),
                answer["code"].as_str(),
                answer["room"].as_str()
            ),
            (Some("error"), Some("storage_failed"), Some(ROOM)),
            "{}: {answer}",
            client.transport()
        );
        client.send(json!({"type": "ping"})).await;
        let pong = next_stashing(client, stash, "pong", |f| {
            f["type"] == "pong" || f["type"] == "bye"
        })
        .await;
        assert_eq!(pong["type"], "pong", "{}: {pong}", client.transport());
    }
    drop(cid);
    b.await_api_members(ROOM, &members, DEADLINE).await;
    let publish = json!({"room": ROOM, "from": "backend", "text": "while down"});
    let (status, body) = b.api("POST", "/wtchat/api/publish", Some(publish)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("storage_failed")),
        "{body}"
    );

    // Back: sends work again once the nodes reconnect. Ann retries everything refused (and
    // what she sent while down): whatever Redis had stored keeps its first number.
    redis.run().await;
    let retries: Vec<(String, String)> = failed
        .iter()
        .map(|i| (format!("b{i}"), format!("b{i}")))
        .chain([("down-a".to_string(), "down-a".to_string())])
        .collect();
    let head_before = acked.keys().next_back().copied().unwrap();
    let deadline = Instant::now() + 2 * DEADLINE;
    for (id, text) in retries {
        let seq = loop {
            ann.send(json!({"type": "send", "room": ROOM, "text": text, "id": id}))
                .await;
            let answer = ann
                .next_matching("an answer", |f| {
                    f["id"] == id.as_str() && (f["type"] == "ack" || f["type"] == "error")
                })
                .await;
            if answer["type"] == "ack" {
                break answer["seq"].as_u64().unwrap();
            }
            assert_eq!(answer["code"], "storage_failed", "{answer}");
            assert!(
                Instant::now() < deadline,
                "sends still fail after Redis came back: {answer}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        ack(&mut acked, seq, text);
    }
    for i in 0..20 {
        let text = format!("after {i}");
        let seq = ann.say(ROOM, &text, &format!("q{i}")).await;
        assert!(seq > head_before, "a new message takes a new number: {seq}");
        ack(&mut acked, seq, text);
    }

    // Everything acknowledged is stored under its number, each text once: in the history
    // API on A, and in a resume from 0 on B, in the same epoch, without a gap.
    let (status, page) = a
        .api(
            "GET",
            &format!("/wtchat/api/history?room={ROOM}&limit=1000"),
            None,
        )
        .await;
    assert_eq!((status, &page["more"]), (200, &json!(false)), "{page}");
    let stored: BTreeMap<u64, String> = numbered_by(&page["messages"], "seq", "text");
    let missing: Vec<(&u64, &String)> = acked
        .iter()
        .filter(|(seq, text)| stored.get(seq) != Some(text))
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged, not in the history API: {missing:?}"
    );
    let texts: BTreeSet<&String> = stored.values().collect();
    assert_eq!(texts.len(), stored.len(), "a text stored twice: {stored:?}");
    let mut probe = b.ws().await;
    let (joined, replay) = probe
        .join_frame(
            json!({"type": "join", "room": ROOM, "name": "probe", "since": 0,
                           "epoch": epoch}),
        )
        .await;
    assert_eq!(joined["epoch"], epoch, "the room keeps its epoch");
    members.insert(joined["you"]["id"].as_u64().unwrap());
    let mut replayed: BTreeMap<u64, String> = replay
        .iter()
        .map(|m| {
            (
                m["seq"].as_u64().unwrap(),
                m["text"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(joined["gap"], false, "a resume from 0: {joined}");
    // B may still be catching up with what A stored while B's subscription was coming
    // back: what its replay lacks follows live, in order, each once.
    let head = *stored.keys().next_back().unwrap();
    while replayed.keys().next_back() != Some(&head) {
        let m = probe
            .next_matching("the rest, live", |f| f["type"] == "message")
            .await;
        let (seq, text) = (m["seq"].as_u64().unwrap(), m["text"].as_str().unwrap());
        assert!(replayed.keys().next_back() < Some(&seq), "{seq} again: {m}");
        replayed.insert(seq, text.into());
    }
    assert_eq!(replayed, stored, "a resume on B and the history API on A");

    // Bob never left: he got every stored message, in order, once — or was told of a gap.
    let (mut got, mut gap) = (Vec::new(), false);
    let mut stashed = bob_stash.into_iter();
    while got.last().copied() != Some(head) {
        let frame = match stashed.next() {
            Some(frame) => frame,
            None => {
                bob.next_matching("bob's messages", |f| {
                    (f["type"] == "message" && f["room"] == ROOM)
                        || f["gap"] == true
                        || f["type"] == "bye"
                })
                .await
            }
        };
        assert_ne!(frame["type"], "bye", "bob was disconnected: {frame}");
        if frame["gap"] == true {
            gap = true;
            eprintln!("{test}: bob was told of a gap: {frame}");
            continue;
        }
        let seq = frame["seq"].as_u64().unwrap();
        assert!(
            got.last().is_none_or(|last| *last < seq),
            "bob got {seq} after {got:?}"
        );
        assert_eq!(
            stored.get(&seq),
            frame["text"].as_str().map(String::from).as_ref()
        );
        got.push(seq);
    }
    let missed: Vec<&u64> = stored.keys().filter(|s| !got.contains(s)).collect();
    assert!(
        missed.is_empty() || gap,
        "bob missed {missed:?} and was not told of a gap"
    );

    // The room's members, as every node lists them, are the three connected.
    for node in [&a, &b] {
        node.await_api_members(ROOM, &members, DEADLINE).await;
    }
}

#[tokio::test]
async fn redis_shut_down_and_restarted_mid_chat_loses_nothing_acknowledged() {
    redis_goes_away_mid_chat(Outage::Shutdown).await;
}

#[tokio::test]
async fn redis_killed_and_restarted_mid_chat_loses_nothing_acknowledged() {
    redis_goes_away_mid_chat(Outage::Kill).await;
}

#[tokio::test]
async fn the_http_api_of_one_node_reaches_members_on_another() {
    const ROOM: &str = "lobby";
    let Some(redis) = Redis::start_or_skip("http_api", Persistence::None).await else {
        return;
    };
    let flags = ["--token-secret", SECRET, "--api-key", API_KEY];
    let a = Node::start("A", &redis, &flags).await;
    let b = Node::start("B", &redis, &flags).await;
    let mut ann = b.wt_query(&token("u1", "Ann")).await;
    let mut bob = b.ws_query(&token("u2", "Bob")).await;
    let mut cid = a.ws_query(&token("u3", "Cid")).await;
    let mut ids = BTreeMap::new();
    for (client, user) in [(&mut ann, "u1"), (&mut bob, "u2"), (&mut cid, "u3")] {
        let (joined, _) = client.join(ROOM, "").await;
        ids.insert(user, joined["you"]["id"].as_u64().unwrap());
    }

    // Published on A: every member, on A and on B, gets it as message 1.
    let publish = json!({"room": ROOM, "from": "Backend", "text": "order #42 shipped"});
    let (status, body) = a.api("POST", "/wtchat/api/publish", Some(publish)).await;
    assert_eq!((status, body["seq"].as_u64()), (200, Some(1)), "{body}");
    for client in [&mut ann, &mut bob, &mut cid] {
        assert_eq!(
            client.messages(ROOM, 1).await,
            [(1, "Backend".to_string(), "order #42 shipped".to_string())],
            "{}",
            client.transport()
        );
    }

    // Either node lists every member, wherever it is connected.
    let everyone: BTreeSet<u64> = ids.values().copied().collect();
    for node in [&a, &b] {
        node.await_api_members(ROOM, &everyone, DEADLINE).await;
        let members = node.api_members(ROOM).await;
        for (user, id) in &ids {
            assert_eq!(members[id].1, *user, "node {}: {members:?}", node.name);
        }
    }

    // Sent on B, read through A's history API.
    assert_eq!(ann.say(ROOM, "hello from B", "h1").await, 2);
    let (status, page) = a
        .api("GET", &format!("/wtchat/api/history?room={ROOM}"), None)
        .await;
    assert_eq!(status, 200, "{page}");
    let texts: Vec<(u64, &str)> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["seq"].as_u64().unwrap(), m["text"].as_str().unwrap()))
        .collect();
    assert_eq!(texts, [(1, "order #42 shipped"), (2, "hello from B")]);

    // A kick on A closes Bob's connection on B with 4403, for good; he leaves everywhere.
    let kick = json!({"room": ROOM, "user": "u2"});
    let (status, body) = a.api("POST", "/wtchat/api/kick", Some(kick)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["kicked"].is_u64(), "{body}");
    eprintln!("http_api: a kick on A of a member on B answered {body}");
    let bye = bob.next_of("bye").await;
    assert_eq!(
        (
            bye["code"].as_u64(),
            bye["reason"].as_str(),
            bye["reconnect"].as_bool()
        ),
        (Some(4403), Some("kicked"), Some(false)),
        "{bye}"
    );
    assert_eq!(bob.ended().await, Ended::Code(4403));
    for client in [&mut ann, &mut cid] {
        let left = client.next_of("presence").await;
        assert_eq!(
            (left["event"].as_str(), presence_members(&left)),
            (Some("leave"), vec![(ids["u2"], "Bob".to_string())]),
            "{}: {left}",
            client.transport()
        );
    }
    let rest: BTreeSet<u64> = [ids["u1"], ids["u3"]].into();
    for node in [&a, &b] {
        node.await_api_members(ROOM, &rest, DEADLINE).await;
    }

    // Typing on A reaches B.
    cid.send(json!({"type": "typing", "room": ROOM})).await;
    let typing = ann.next_of("typing").await;
    assert_eq!(typing["from"], "Cid", "{typing}");

    // A deletion on A reaches the member on B, and leaves the history of both nodes.
    let delete = json!({"room": ROOM, "seq": 2});
    let (status, body) = a.api("POST", "/wtchat/api/delete", Some(delete)).await;
    assert_eq!((status, &body["deleted"]), (200, &json!(true)), "{body}");
    let deleted = ann.next_of("update").await;
    assert_eq!(deleted["seq"], 2, "{deleted}");
    for node in [&a, &b] {
        let (_, page) = node
            .api("GET", &format!("/wtchat/api/history?room={ROOM}"), None)
            .await;
        let seqs: Vec<u64> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, [1], "node {}: {page}", node.name);
    }

    // A ban on A closes Ann's connection on B, and B refuses her next join.
    let ban = json!({"room": ROOM, "user": "u1", "seconds": 3600});
    let (status, body) = a.api("POST", "/wtchat/api/ban", Some(ban)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ann.ended().await, Ended::Code(4403));
    let mut again = b.ws_query(&token("u1", "Ann")).await;
    again.send(json!({"type": "join", "room": ROOM})).await;
    let refused = again.next_of("error").await;
    assert_eq!(refused["code"], "banned", "{refused}");

    // A node stopped with SIGTERM takes its members out at once, without waiting for the
    // 5 s of a dead node: Dan on B leaves Cid's view on A well within them.
    let mut dan = b.ws_query(&token("u4", "Dan")).await;
    let (joined, _) = dan.join(ROOM, "").await;
    let dan_id = joined["you"]["id"].as_u64().unwrap();
    cid.next_matching("dan's join", |f| f["event"] == "join")
        .await;
    let stopped = Instant::now();
    b.serve.terminate();
    let left = tokio::time::timeout(
        Duration::from_secs(4),
        cid.next_matching("dan's leave", |f| f["event"] == "leave"),
    )
    .await
    .expect("a stopped node's members leave before a dead node's would");
    assert_eq!(presence_members(&left)[0].0, dan_id, "{left}");
    eprintln!(
        "http_api: B's member left A's view {:?} after SIGTERM",
        stopped.elapsed()
    );
}

#[tokio::test]
async fn presence_spans_the_nodes_and_a_dead_nodes_members_leave() {
    const ROOM: &str = "hall";
    let Some(redis) = Redis::start_or_skip("presence", Persistence::None).await else {
        return;
    };
    let flags = ["--api-key", API_KEY];
    let mut nodes = [
        Node::start("A", &redis, &flags).await,
        Node::start("B", &redis, &flags).await,
        Node::start("C", &redis, &flags).await,
    ];

    // One at a time, one per node and C with a second: each newcomer's `joined` lists
    // everyone so far (on every node), and everyone already in is told.
    let mut clients: Vec<(usize, Client)> = vec![
        (0, nodes[0].ws().await),
        (1, nodes[1].wt().await),
        (2, nodes[2].ws().await),
        (2, nodes[2].wt().await),
    ];
    let mut views: Vec<BTreeMap<u64, String>> = Vec::new();
    let mut ids: BTreeMap<u64, usize> = BTreeMap::new(); // member id → node
    for i in 0..clients.len() {
        let name = format!("m{i}");
        let (node, client) = &mut clients[i];
        let (joined, _) = client.join(ROOM, &name).await;
        let id = joined["you"]["id"].as_u64().unwrap();
        assert!(
            ids.insert(id, *node).is_none(),
            "member id {id} given twice"
        );
        let view: BTreeMap<u64, String> = numbered_by(&joined["members"], "id", "name");
        let want: BTreeSet<u64> = ids.keys().copied().collect();
        let listed: BTreeSet<u64> = view.keys().copied().collect();
        if listed != want {
            // Say whether the presence frames that follow mend it.
            let mut later = view.clone();
            let soon = Instant::now() + Duration::from_secs(2);
            let mended = await_view(client, ROOM, &mut later, &want, soon).await;
            panic!(
                "{name}'s joined on node {} lists {listed:?}, not everyone whose join was \
                 answered before {want:?}; presence within 2 s after: {mended:?}; {joined}",
                nodes[*node].name
            );
        }
        assert_eq!(
            joined["count"].as_u64(),
            Some(want.len() as u64),
            "{joined}"
        );
        views.push(view);
        for (j, (_, other)) in clients.iter_mut().enumerate().take(i) {
            let frame = other
                .next_matching("presence", |f| f["type"] == "presence" && f["room"] == ROOM)
                .await;
            assert_eq!(
                (frame["event"].as_str(), presence_members(&frame)),
                (Some("join"), vec![(id, name.clone())]),
                "m{j}: {frame}"
            );
            if !frame["count"].is_null() {
                assert_eq!(frame["count"].as_u64(), Some(i as u64 + 1), "m{j}: {frame}");
            }
            apply_presence(&mut views[j], &frame);
        }
    }

    // Then six more at once, two per node: ids unique across nodes, below 2^53, and every
    // view comes to the same ten.
    for n in 0..6 {
        let node = n % 3;
        let client = if n < 3 {
            nodes[node].ws().await
        } else {
            nodes[node].wt().await
        };
        clients.push((node, client));
    }
    let joins =
        futures_util::future::join_all(clients[4..].iter_mut().enumerate().map(
            |(n, (_, client))| async move { client.join(ROOM, &format!("m{}", n + 4)).await },
        ))
        .await;
    for ((joined, _), (node, _)) in joins.iter().zip(&clients[4..]) {
        let id = joined["you"]["id"].as_u64().unwrap();
        assert!(
            ids.insert(id, *node).is_none(),
            "member id {id} given twice"
        );
        views.push(numbered_by(&joined["members"], "id", "name"));
    }
    assert_eq!(ids.len(), 10);
    assert!(
        ids.keys().all(|id| *id < MAX_SAFE_ID),
        "member ids beyond 2^53: {ids:?}"
    );
    let everyone: BTreeSet<u64> = ids.keys().copied().collect();
    let deadline = Instant::now() + DEADLINE;
    for ((_, client), view) in clients.iter_mut().zip(&mut views) {
        await_view(client, ROOM, view, &everyone, deadline)
            .await
            .unwrap();
    }
    for node in &nodes {
        node.await_api_members(ROOM, &everyone, DEADLINE).await;
    }

    // C dies without a word: within 10 s its four members leave every view on A and B, and
    // their lists.
    nodes[2].kill();
    let killed = Instant::now();
    let survivors: BTreeSet<u64> = ids
        .iter()
        .filter(|(_, node)| **node != 2)
        .map(|(id, _)| *id)
        .collect();
    let within = killed + Duration::from_secs(10);
    for ((node, client), view) in clients.iter_mut().zip(&mut views) {
        if *node != 2 {
            await_view(client, ROOM, view, &survivors, within)
                .await
                .unwrap_or_else(|e| panic!("a dead node's members, 10 s after the kill: {e}"));
        }
    }
    eprintln!(
        "presence: a dead node's members left every view {:?} after the kill",
        killed.elapsed()
    );
    for node in &nodes[..2] {
        node.await_api_members(ROOM, &survivors, within - Instant::now())
            .await;
    }
}

#[test]
fn an_unreachable_redis_is_refused_at_start_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let port = quiet_port(); // nobody listens there
    let engine = format!("redis://127.0.0.1:{port}");
    let out = common::run_to_end(serve_command(dir.path(), &engine));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    let status = out.status;
    assert_eq!(status.code(), Some(1), "stderr: {stderr}");
    // The reason is the last line (log lines come before it).
    let stderr = stderr.trim().lines().last().unwrap_or_default();
    assert!(stderr.starts_with("wtchat: "), "{stderr}");
    assert!(
        stderr.contains(&port.to_string()) || stderr.to_lowercase().contains("redis"),
        "the reason names Redis or its address: {stderr}"
    );
    assert!(
        !stdout.contains("Press Ctrl-C"),
        "it never served: {stdout}"
    );
}

/// The big-room policy over nodes: a room is big when its members over all nodes reach the
/// threshold; then joins on any node reach the others as one `update` per interval, with
/// the count over all nodes, and when members elsewhere leave and it shrinks below the
/// threshold, everyone gets the whole list once (`sync`).
#[tokio::test]
async fn a_big_room_counts_and_tells_members_over_all_nodes() {
    const ROOM: &str = "big";
    let Some(redis) = Redis::start_or_skip("big_room", Persistence::None).await else {
        return;
    };
    let flags = ["--presence-threshold", "4", "--presence-interval", "100ms"];
    let a = Node::start("A", &redis, &flags).await;
    let b = Node::start("B", &redis, &flags).await;
    // Six members, joining in turn on A and B: each `joined` counts both nodes.
    let (mut on_a, mut on_b) = (Vec::new(), Vec::new());
    let (mut ids_a, mut ids_b) = (BTreeSet::new(), BTreeSet::new());
    for i in 0..6u64 {
        let here_a = i % 2 == 0;
        let mut client = if here_a { a.ws().await } else { b.wt().await };
        let (joined, _) = client.join(ROOM, &format!("m{i}")).await;
        assert_eq!(joined["count"].as_u64(), Some(i + 1), "{joined}");
        assert_eq!(
            joined["members"].as_array().unwrap().len() as u64,
            i + 1,
            "a first page lists everyone (fewer than 100): {joined}"
        );
        let id = joined["you"]["id"].as_u64().unwrap();
        if here_a {
            ids_a.insert(id);
            on_a.push(client);
        } else {
            ids_b.insert(id);
            on_b.push(client);
        }
    }
    // m0, on A, hears of m1 and m2 one by one (a small room), then of m3, m4 (on A) and
    // m5 (on B) in `update`s once the room is big, the last with the count of both nodes.
    let m0 = &mut on_a[0];
    let everyone: BTreeSet<u64> = ids_a.union(&ids_b).copied().collect();
    let mut heard: BTreeSet<u64> = ids_a.iter().take(1).copied().collect();
    let mut updates = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while heard != everyone || updates.last().is_none_or(|u: &Value| u["count"] != 6) {
        let presence = m0.next_matching("presence", |f| f["type"] == "presence");
        let frame = tokio::time::timeout_at(deadline, presence)
            .await
            .unwrap_or_else(|_| {
                panic!("m0 heard of {heard:?}, not {everyone:?}; updates {updates:?}")
            });
        match frame["event"].as_str() {
            Some("join") => {
                heard.insert(frame["member"]["id"].as_u64().unwrap());
            }
            Some("update") => {
                for member in frame["joined"].as_array().into_iter().flatten() {
                    heard.insert(member["id"].as_u64().unwrap());
                }
                updates.push(frame);
            }
            _ => panic!("nobody left yet: {frame}"),
        }
    }
    let last_on_b = *ids_b.iter().max().unwrap();
    assert!(
        updates.iter().any(|u| u["joined"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["id"] == last_on_b)),
        "the join on node B past the threshold came in an update: {updates:?}"
    );
    // A page of members on A lists both nodes' members.
    m0.send(json!({"type": "members", "room": ROOM})).await;
    let page = m0.next_of("members").await;
    assert_eq!(page["count"], 6, "{page}");
    let listed: BTreeSet<u64> = page["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, everyone, "{page}");
    // B's three leave: the room falls below 4, and m0 gets the whole list once: A's three.
    drop(on_b);
    let sync = tokio::time::timeout(
        DEADLINE,
        m0.next_matching("a sync", |f| {
            f["type"] == "presence" && f["event"] == "sync"
        }),
    )
    .await
    .expect("a sync once the room is small again");
    let listed: BTreeSet<u64> = presence_members(&sync)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(listed, ids_a, "{sync}");
    assert_eq!(sync["count"], 3, "{sync}");
}

/// The dedupe window in Redis: a retry of one of the last `dedupe_window` client ids is
/// acknowledged with its first number, whatever happened since; ids more than twice the
/// window back are forgotten (the window is kept in two generations). A library host on
/// the Redis engine, with a window of 4.
#[tokio::test]
async fn retries_within_the_dedupe_window_keep_their_number_and_older_ones_are_forgotten() {
    const ROOM: &str = "window";
    let Some(redis) = Redis::start_or_skip("dedupe_window", Persistence::None).await else {
        return;
    };
    let url = redis.url();
    let server = common::start_with(move |config| {
        config
            .engine(wtchat::Engine::Redis {
                url,
                prefix: "window".into(),
            })
            .dedupe_window(4)
            .frames_per_second(10_000)
            .frame_burst(10_000)
    })
    .await;
    let mut ann = Client::ws(&server).await;
    ann.join(ROOM, "ann").await;
    for i in 1..=10u64 {
        assert_eq!(ann.say(ROOM, &format!("t{i}"), &format!("a{i}")).await, i);
    }
    for i in 7..=10u64 {
        assert_eq!(
            ann.say(ROOM, &format!("t{i}"), &format!("a{i}")).await,
            i,
            "a retry within the window keeps its number"
        );
    }
    assert_eq!(
        ann.say(ROOM, "t1", "a1").await,
        11,
        "an id from more than twice the window back is new again"
    );
    server.stop().await;
}

/// Without a sticky load balancer: an SSE stream held by node A, its posts reaching node B,
/// which sends them on to A through Redis (answered 202); the frames take effect on A.
#[tokio::test]
async fn an_sse_post_that_reaches_another_node_goes_to_the_stream_s_node() {
    use tokio::io::AsyncBufReadExt;
    const ROOM: &str = "relay";
    let Some(redis) = Redis::start_or_skip("sse_relay", Persistence::None).await else {
        return;
    };
    let a = Node::start("A", &redis, &[]).await;
    let b = Node::start("B", &redis, &[]).await;
    let mut curl = tokio::process::Command::new("curl")
        .args(["-sN", "--max-time", "60"])
        .arg(format!("http://{}/wtchat/sse", a.http))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("curl runs");
    let mut lines = tokio::io::BufReader::new(curl.stdout.take().unwrap()).lines();
    // The stream's frames (each event's data), in order.
    let mut next_frame = async || -> Value {
        loop {
            let line = tokio::time::timeout(DEADLINE, lines.next_line())
                .await
                .expect("an event before the deadline")
                .unwrap()
                .expect("the stream goes on");
            if let Some(data) = line.strip_prefix("data: ") {
                return serde_json::from_str(data).unwrap();
            }
        }
    };
    let session = next_frame().await;
    let post = session["post"].as_str().unwrap().to_string();
    let secret = [("wtchat-secret", session["secret"].as_str().unwrap())];
    let mut wes = b.ws().await;
    wes.join(ROOM, "wes").await;
    let frames = [
        json!({"type": "join", "room": ROOM, "name": "eve"}).to_string(),
        json!({"type": "send", "room": ROOM, "text": "via B", "id": "e1"}).to_string(),
    ];
    // Without the secret (the URL alone, as a proxy's log has it), B sends it on all the
    // same and A drops it: the frames that follow are the only ones the session reads.
    let forged = json!({"type": "send", "room": ROOM, "text": "forged", "id": "x"});
    let status = common::post_text(b.http, &post, &forged.to_string(), &[]).await;
    assert_eq!(status, 202, "B cannot tell");
    let status = common::post_text(b.http, &post, &frames.join("\n"), &secret).await;
    assert_eq!(status, 202, "B sends it on");
    let mut seen = Vec::new();
    while !seen.iter().any(|f: &Value| f["type"] == "ack") {
        seen.push(next_frame().await);
    }
    let kinds: Vec<&str> = seen.iter().filter_map(|f| f["type"].as_str()).collect();
    assert_eq!(kinds, ["joined", "message", "ack"], "{seen:?}");
    let message = wes.next_of("message").await;
    assert_eq!(
        (&message["from"], &message["text"]),
        (&json!("eve"), &json!("via B"))
    );
    // A session id of A's that A does not hold: A answers 404; B cannot know, sends it on.
    let (base, _) = post.rsplit_once('.').unwrap();
    let unknown = format!("{base}.bm93aGVyZQ");
    assert_eq!(common::post_text(a.http, &unknown, "{}", &[]).await, 404);
    assert_eq!(common::post_text(b.http, &unknown, "{}", &[]).await, 202);
    // A session id naming a node that is not alive (made up, or dead): not sent on into a
    // channel nobody reads, as an attacker's posts and polls were: 404 at once, once the
    // node's beat has told it which nodes are alive (within a second of its start).
    let dead = "/wtchat/sse/999999.bm93aGVyZQ";
    let deadline = std::time::Instant::now() + DEADLINE;
    while common::post_text(b.http, dead, "{}", &[]).await != 404 {
        assert!(std::time::Instant::now() < deadline, "still forwarded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let poll = tokio::time::timeout(
        Duration::from_secs(2),
        common::http_get(b.http, "/wtchat/poll/999999.bm93aGVyZQ?after=0", &[]),
    )
    .await
    .expect("answered at once, not after a forwarded poll's wait");
    assert_eq!(poll.0, 404, "{poll:?}");
}

/// Without a sticky load balancer, long polling too: a session opened on node A, its polls
/// and posts reaching A and B by turns; B sends each on to A through Redis, and the poll's
/// answer comes back the same way.
#[tokio::test]
async fn long_polls_that_reach_another_node_are_answered_by_the_sessions_node() {
    const ROOM: &str = "polled";
    let Some(redis) = Redis::start_or_skip("poll_relay", Persistence::None).await else {
        return;
    };
    let a = Node::start("A", &redis, &[]).await;
    let b = Node::start("B", &redis, &[]).await;
    let (status, body) = common::http_request(a.http, "POST", "/wtchat/poll", &[], None).await;
    assert_eq!(status, 200, "{body}");
    let session: Value = serde_json::from_str(&body).unwrap();
    let url = session["poll"].as_str().unwrap().to_string();
    let secret = session["secret"].as_str().unwrap();
    let mut wes = b.ws().await;
    wes.join(ROOM, "wes").await;
    // Polls by turns on B and A, from the last frame received, until `want` came.
    let nodes = [b.http, a.http];
    let mut after = 0;
    let mut turn = 0;
    let mut poll_until = async |want: &str| -> Vec<Value> {
        let mut seen: Vec<Value> = Vec::new();
        while !seen.iter().any(|f| f["type"] == want) {
            let node = nodes[turn % 2];
            turn += 1;
            let from = after.to_string();
            let headers = [("wtchat-secret", secret), ("wtchat-after", from.as_str())];
            let (status, body) = tokio::time::timeout(
                DEADLINE,
                common::http_request(node, "GET", &url, &headers, None),
            )
            .await
            .expect("a poll answered before the deadline");
            assert_eq!(status, 200, "poll on {node}: {body}");
            let answer: Value = serde_json::from_str(&body).unwrap();
            after = answer["next"].as_u64().unwrap();
            seen.extend(answer["frames"].as_array().unwrap().iter().cloned());
        }
        seen
    };
    let frames = [
        json!({"type": "join", "room": ROOM, "name": "pol"}).to_string(),
        json!({"type": "send", "room": ROOM, "text": "via B", "id": "p1"}).to_string(),
    ];
    assert_eq!(
        common::post_text(
            b.http,
            &url,
            &frames.join("\n"),
            &[("wtchat-secret", secret)]
        )
        .await,
        202
    );
    // A poll through B without the secret: A refuses it, and its answer comes back.
    let (status, body) = common::http_request(b.http, "GET", &url, &[], None).await;
    assert_eq!(
        (status, body.as_str()),
        (
            403,
            "no session secret, or not this session's (header Wtchat-Secret)"
        )
    );
    let seen = poll_until("ack").await;
    let kinds: Vec<&str> = seen.iter().filter_map(|f| f["type"].as_str()).collect();
    assert_eq!(kinds, ["joined", "message", "ack"], "{seen:?}");
    assert_eq!(wes.next_of("message").await["text"], "via B");
    wes.say(ROOM, "to pol", "w1").await;
    let seen = poll_until("message").await;
    let message = seen.iter().find(|f| f["type"] == "message").unwrap();
    assert_eq!(
        (&message["from"], &message["text"]),
        (&json!("wes"), &json!("to pol"))
    );
    // Each poll answered with frames (a held poll ends only with some), B's first: both
    // nodes answered, B with A's frames.
    assert!(turn >= 2, "polls went to both nodes");
    // A session of A's that A does not hold: B sends the poll on, and A's 404 comes back.
    let (base, _) = url.rsplit_once('.').unwrap();
    let unknown = format!("{base}.bm93aGVyZQ?after=0");
    assert_eq!(
        common::http_request(b.http, "GET", &unknown, &[], None)
            .await
            .0,
        404
    );
}

/// The host's login, as the auth webhook: cookie `session=tia` is Tia (user u7), anything
/// else is refused. Returns its URL; it serves until the test ends.
async fn start_login() -> String {
    use axum::{Json, Router, http::StatusCode, routing::post};
    let login = |Json(asked): Json<Value>| async move {
        if asked["cookies"]["session"] == "tia" {
            (StatusCode::OK, Json(json!({"user": "u7", "name": "Tia"})))
        } else {
            (
                StatusCode::UNAUTHORIZED,
                Json(json!({"reason": "log in first"})),
            )
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, Router::new().route("/auth", post(login)))
            .await
            .unwrap()
    });
    format!("http://{addr}/auth")
}

/// The book's "Tokens and tickets" (docs/src/redis.md, "A deployment"): with the same
/// `--token-secret`, the tickets one node hands out (its auth webhook said who the cookie
/// is) are taken by another — the page's ticket request and its connection may reach
/// different nodes behind a load balancer — and each only once there.
#[tokio::test]
async fn a_ticket_one_node_hands_out_logs_in_on_another_once() {
    let Some(redis) = Redis::start_or_skip("tickets_across_nodes", Persistence::None).await else {
        return;
    };
    let login = start_login().await;
    let flags = [
        "--token-secret",
        SECRET,
        "--auth-webhook",
        &login,
        "--webhook-secret",
        "a-webhook-secret-of-at-least-32-bytes",
    ];
    let a = Node::start("A", &redis, &flags).await;
    let b = Node::start("B", &redis, &flags).await;
    let origin = format!("http://{}", a.http);
    let tickets = async |cookie: &str| {
        let page = [("origin", origin.as_str()), ("cookie", cookie)];
        common::http_request(a.http, "POST", "/wtchat/ticket", &page, None).await
    };
    assert_eq!(tickets("session=nobody").await.0, 401);
    let (status, answer) = tickets("session=tia").await;
    assert_eq!(status, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    let ticket =
        |transport: &str| format!("?ticket={}", answer["tickets"][transport].as_str().unwrap());

    // Made on A, taken on B: over WebSocket and over WebTransport, as Tia.
    let mut ws = b.ws_query(&ticket("websocket")).await;
    let mut wt = b.wt_query(&ticket("webtransport")).await;
    for client in [&mut ws, &mut wt] {
        let (joined, _) = client.join("tickets", "whoever").await;
        assert_eq!(joined["you"]["name"], "Tia", "{}", client.transport());
    }
    assert_eq!(ws.say("tickets", "hello from B", "t1").await, 1);
    assert_eq!(
        wt.messages("tickets", 1).await,
        [(1, "Tia".to_string(), "hello from B".to_string())]
    );
    // Used on B, it is refused there the second time.
    let mut again = b.ws_query(&ticket("websocket")).await;
    let bye = again.next_of("bye").await;
    assert_eq!(
        (&bye["code"], &bye["message"]),
        (
            &json!(4401),
            &json!("this ticket was used already; fetch a new one")
        )
    );
}

/// A page of a room's members asked of a node that does not hold the room comes from
/// Redis: a page of none is empty and points nowhere (it used to index before the start),
/// and paging through gives every member once, over both nodes.
#[tokio::test]
async fn a_node_without_the_room_pages_its_members_from_redis_even_a_page_of_none() {
    const ROOM: &str = "paged";
    let Some(redis) = Redis::start_or_skip("members_page", Persistence::None).await else {
        return;
    };
    let on_redis = |url: String| {
        move |config: wtchat::ConfigBuilder| {
            config.engine(wtchat::Engine::Redis {
                url,
                prefix: "paged".into(),
            })
        }
    };
    let holding = common::start_with(on_redis(redis.url())).await;
    let asked = common::start_with(on_redis(redis.url())).await;
    let mut clients = Vec::new();
    for name in ["ann", "bob", "cy"] {
        let mut client = Client::ws(&holding).await;
        client.join(ROOM, name).await;
        clients.push(client);
    }
    let none = asked.chat.members_page(ROOM, None, 0).await.unwrap();
    assert_eq!((none.members.len(), none.count, none.next), (0, 3, None));
    let mut names = Vec::new();
    let mut after = None;
    loop {
        let page = asked.chat.members_page(ROOM, after, 2).await.unwrap();
        names.extend(page.members.iter().map(|m| m.name.clone()));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(names, ["ann", "bob", "cy"]);
    holding.stop().await;
    asked.stop().await;
}
