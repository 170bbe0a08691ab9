//! Nothing waits inside a room, and a session keeps writing while it waits.
//!
//! The engine here is the host's kind of engine: [`Gated`] implements the public
//! [`Broker`] contract outside the library, around the SQLite engine the configuration
//! opens (`ConfigBuilder::engine_layer`), and holds reads or fails writes when the test
//! says so. The message webhook is a backend of the test's that answers one sender late.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use bytes::Bytes;
use common::{Client, DEADLINE, start_with};
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use tokio::sync::Notify;
use wtchat::Engine;
use wtchat::engine::{
    Appended, Ban, Broker, Busy, EngineFuture, HistoryPage, Loaded, MemberInfo, MembersPage,
    Missed, NodeSink, Record, RoomSink, StorageError, StoredMessage,
};

/// What the test does to the engine.
#[derive(Default)]
struct Gate {
    /// History ranges (a resume past the tail) wait while this is set.
    hold_reads: AtomicBool,
    /// Ranges waiting now.
    held: AtomicUsize,
    released: Notify,
    /// Appends fail while this is set.
    fail_appends: AtomicBool,
}

impl Gate {
    fn release(&self) {
        self.hold_reads.store(false, Ordering::SeqCst);
        self.released.notify_waiters();
    }

    /// Waits until a range is held.
    async fn until_held(&self) {
        let deadline = Instant::now() + DEADLINE;
        while self.held.load(Ordering::SeqCst) == 0 {
            assert!(Instant::now() < deadline, "no read was held");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The configured engine, with the test's [`Gate`] in front of it.
struct Gated {
    inner: Arc<dyn Broker>,
    gate: Arc<Gate>,
}

impl Broker for Gated {
    fn node(&self) -> u64 {
        self.inner.node()
    }

    fn start(&self, sink: Arc<dyn NodeSink>) {
        self.inner.start(sink)
    }

    fn attach(&self, room: &str, sink: Arc<dyn RoomSink>, tail: usize) -> EngineFuture<'_, Loaded> {
        self.inner.attach(room, sink, tail)
    }

    fn detach(&self, room: &str) {
        self.inner.detach(room)
    }

    fn release_idle_rooms(&self) -> bool {
        self.inner.release_idle_rooms()
    }

    fn append(&self, room: &str, record: Record) -> Result<EngineFuture<'static, Appended>, Busy> {
        if self.gate.fail_appends.load(Ordering::SeqCst) {
            let failed = StorageError::new("the test's engine fails on purpose");
            return Ok(Box::pin(std::future::ready(Err(failed))));
        }
        self.inner.append(room, record)
    }

    fn ready(&self) -> BoxFuture<'_, ()> {
        self.inner.ready()
    }

    fn range(&self, room: &str, from: u64, to: u64, limit: usize) -> EngineFuture<'_, Missed> {
        let room = room.to_owned();
        Box::pin(async move {
            let gate = &self.gate;
            gate.held.fetch_add(1, Ordering::SeqCst);
            loop {
                let released = gate.released.notified();
                tokio::pin!(released);
                released.as_mut().enable();
                if !gate.hold_reads.load(Ordering::SeqCst) {
                    break;
                }
                released.await;
            }
            gate.held.fetch_sub(1, Ordering::SeqCst);
            self.inner.range(&room, from, to, limit).await
        })
    }

    fn page(&self, room: &str, before: u64, limit: usize) -> EngineFuture<'_, HistoryPage> {
        self.inner.page(room, before, limit)
    }

    fn message(&self, room: &str, seq: u64) -> EngineFuture<'_, Option<StoredMessage>> {
        self.inner.message(room, seq)
    }

    fn bans(&self) -> EngineFuture<'_, Vec<Ban>> {
        self.inner.bans()
    }

    fn ban(&self, room: Option<&str>, user: &str, until: Option<u64>) -> EngineFuture<'_, ()> {
        self.inner.ban(room, user, until)
    }

    fn joined(&self, room: &str, members: Vec<MemberInfo>) -> BoxFuture<'_, ()> {
        self.inner.joined(room, members)
    }

    fn left(&self, room: &str, ids: Vec<u64>) {
        self.inner.left(room, ids)
    }

    fn members_page(
        &self,
        room: &str,
        after: Option<u64>,
        limit: usize,
    ) -> EngineFuture<'_, Option<MembersPage>> {
        self.inner.members_page(room, after, limit)
    }

    fn typing(&self, room: &str, member: u64, name: &str) {
        self.inner.typing(room, member, name)
    }

    fn broadcast(&self, payload: Bytes) {
        self.inner.broadcast(payload)
    }

    fn forward(&self, node: u64, payload: Bytes) -> bool {
        self.inner.forward(node, payload)
    }

    fn sender_key(&self) -> EngineFuture<'_, Vec<u8>> {
        self.inner.sender_key()
    }

    fn reachable(&self) -> BoxFuture<'_, Result<(), String>> {
        self.inner.reachable()
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        self.inner.flush()
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        self.inner.close()
    }
}

/// A chat on SQLite behind a [`Gated`] engine, with a tail of five messages: a resume from
/// further back reads the engine.
async fn gated_server(dir: &tempfile::TempDir) -> (common::TestServer, Arc<Gate>) {
    let gate = Arc::new(Gate::default());
    let layer_gate = gate.clone();
    let db = dir.path().join("chat.db");
    let server = start_with(move |c| {
        c.engine(Engine::Sqlite(db))
            .history(5)
            .engine_layer(move |inner| {
                Arc::new(Gated {
                    inner,
                    gate: layer_gate.clone(),
                })
            })
    })
    .await;
    (server, gate)
}

#[tokio::test]
async fn a_resume_that_waits_for_the_store_stalls_nobody_and_misses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (server, gate) = gated_server(&dir).await;
    let mut ann = Client::ws(&server).await;
    let (joined, _) = ann.join("r", "ann").await;
    let epoch = joined["epoch"].as_u64().unwrap();
    for i in 1..=20 {
        assert_eq!(ann.say("r", &format!("m{i}"), &format!("a{i}")).await, i);
    }
    let mut bob = Client::wt(&server).await;
    bob.join("r", "bob").await;

    // Carl saw up to 2: his replay starts before the tail, and the store holds its read.
    gate.hold_reads.store(true, Ordering::SeqCst);
    let mut carl = Client::ws(&server).await;
    carl.send(json!({"type": "join", "room": "r", "name": "carl", "since": 2, "epoch": epoch}))
        .await;
    gate.until_held().await;

    // Meanwhile the room goes on: Ann's sends are acknowledged, Bob gets each one.
    for i in 21..=30 {
        assert_eq!(ann.say("r", &format!("m{i}"), &format!("a{i}")).await, i);
    }
    let got: Vec<(u64, String)> = bob
        .messages("r", 10)
        .await
        .into_iter()
        .map(|(seq, _, text)| (seq, text))
        .collect();
    let want: Vec<(u64, String)> = (21..=30).map(|i| (i, format!("m{i}"))).collect();
    assert_eq!(got, want, "Bob got every message at once");
    // And Carl's own connection answers while his join waits.
    carl.send(json!({"type": "ping"})).await;
    let first = carl.next().await;
    assert_eq!(first["type"], "pong", "before its joined: {first}");
    assert_eq!(gate.held.load(Ordering::SeqCst), 1, "still held");

    gate.release();
    let joined = carl
        .next_matching("joined", |f| f["type"] == "joined")
        .await;
    assert_eq!(
        (joined["seq"].as_u64(), joined["gap"].as_bool()),
        (Some(30), Some(false))
    );
    let mut replay = Vec::new();
    for _ in 0..joined["replay"].as_u64().unwrap() {
        replay.push(carl.next_of("message").await);
    }
    let texts: Vec<(u64, String)> = replay
        .iter()
        .map(|m| {
            (
                m["seq"].as_u64().unwrap(),
                m["text"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(u64, String)> = (3..=30).map(|i| (i, format!("m{i}"))).collect();
    assert_eq!(texts, want, "every message after 2, once, in order");
    // Live again: the next one comes after the replay, once.
    assert_eq!(ann.say("r", "m31", "a31").await, 31);
    let next = carl.next_of("message").await;
    assert_eq!(
        (next["seq"].as_u64(), next["text"].as_str()),
        (Some(31), Some("m31"))
    );
    server.stop().await;
}

#[tokio::test]
async fn an_engine_that_fails_on_purpose_fails_only_the_sends_it_got() {
    let dir = tempfile::tempdir().unwrap();
    let (server, gate) = gated_server(&dir).await;
    let mut ann = Client::ws(&server).await;
    ann.join("r", "ann").await;
    let mut bob = Client::wt(&server).await;
    bob.join("r", "bob").await;
    assert_eq!(ann.say("r", "one", "a1").await, 1);

    gate.fail_appends.store(true, Ordering::SeqCst);
    ann.send(json!({"type": "send", "room": "r", "text": "two", "id": "a2"}))
        .await;
    let error = ann.next_of("error").await;
    assert_eq!(
        (error["code"].as_str(), error["id"].as_str()),
        (Some("storage_failed"), Some("a2"))
    );
    gate.fail_appends.store(false, Ordering::SeqCst);
    // The retry is stored once, under the next number; nobody saw the failed one.
    assert_eq!(ann.say("r", "two", "a2").await, 2);
    let got: Vec<(u64, String, String)> = bob.messages("r", 2).await;
    assert_eq!(
        got.iter().map(|m| (m.0, m.2.as_str())).collect::<Vec<_>>(),
        [(1, "one"), (2, "two")]
    );
    server.stop().await;
}

/// The message webhook's backend: accepts everything, after `delay` for sender `slow`.
async fn backend(delay: Duration) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let app = Router::new().route(
        "/message",
        post(move |body: Bytes| async move {
            let call: Value = serde_json::from_slice(&body).unwrap();
            if call["from"] == "slow" {
                tokio::time::sleep(delay).await;
            }
            axum::Json(json!({"action": "accept"}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, task)
}

#[tokio::test]
async fn a_sender_keeps_receiving_while_its_own_message_waits_for_the_webhook() {
    const PENDING: Duration = Duration::from_millis(1500);
    /// Well before the backend answers the first message.
    const EARLY: Duration = Duration::from_millis(1200);
    let (addr, _backend) = backend(PENDING).await;
    let server = start_with(move |c| {
        c.message_webhook(format!("http://{addr}/message"))
            .webhook_secret("a secret of the test's, long enough to sign")
            .outbound_queue(1000)
            .max_rooms_per_connection(1)
            .history(10)
            .max_replay(10)
    })
    .await;
    let mut slow = Client::ws(&server).await;
    slow.join("busy", "slow").await;

    // The room carries about 1,000 messages a second from the host, all along.
    let stop = Arc::new(AtomicBool::new(false));
    let chat = server.chat.clone();
    let flood = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            let mut every = tokio::time::interval(Duration::from_millis(1));
            while !stop.load(Ordering::SeqCst) {
                every.tick().await;
                n += 1;
                chat.publish("busy", "host", &format!("h{n}"))
                    .await
                    .unwrap();
            }
            n
        })
    };

    // Three of its own, each held 1.5 s by the backend, one after the other.
    let sent_at = Instant::now();
    for id in ["s1", "s2", "s3"] {
        slow.send(json!({"type": "send", "room": "busy", "text": format!("mine {id}"), "id": id}))
            .await;
    }
    let mut acks = Vec::new();
    let mut during = 0;
    let mut own = Vec::new();
    while acks.len() < 3 {
        let frame = slow.next().await;
        match frame["type"].as_str() {
            // Before the backend could have answered the first: a session that stopped
            // writing while it waited would deliver nothing here.
            Some("message") if frame["from"] == "host" => {
                during += usize::from(sent_at.elapsed() < EARLY);
            }
            Some("message") => own.push(frame["text"].as_str().unwrap().to_string()),
            Some("ack") => acks.push((frame["id"].clone(), frame["seq"].as_u64().unwrap())),
            Some("bye") => panic!("the sender was cut off while it waited: {frame}"),
            _ => {}
        }
    }
    stop.store(true, Ordering::SeqCst);
    let published = flood.await.unwrap();
    assert!(
        sent_at.elapsed() >= PENDING * 3,
        "the webhook held each message"
    );
    // While its first message waited, the host's kept arriving.
    assert!(
        during >= 100,
        "only {during} of the host's {published} messages arrived while the first one waited"
    );
    assert_eq!(
        acks.iter()
            .map(|(id, _)| id.as_str().unwrap())
            .collect::<Vec<_>>(),
        ["s1", "s2", "s3"]
    );
    assert!(
        acks.windows(2).all(|w| w[0].1 < w[1].1),
        "stored in the order sent: {acks:?}"
    );
    assert_eq!(own, ["mine s1", "mine s2", "mine s3"]);
    server.stop().await;
}
