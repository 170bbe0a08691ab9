//! WebTransport over a bad network, through the lossy UDP relay of tests/common/relay.rs
//! (the kernel here has no netem): a session survives its client moving to a new address
//! mid-chat (NAT rebinding, a phone changing networks) without reconnecting, losing or
//! repeating a message; QUIC recovers 2 % loss each way; and the head-of-line blocking of
//! today's single stream per session is measured (a room's latency with another room of the
//! same session busy, and without), the baseline for issue 27's stream per room.
//!
//! Real clients over loopback: the WebTransport client through the relay, the publishers
//! over WebSocket straight to the server. Every wait has a deadline.

mod common;
#[path = "common/relay.rs"]
mod relay;

use std::net::IpAddr;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use relay::{Link, Relay};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use common::{Client, DEADLINE, TestServer};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A server whose clients may publish fast (the default allows 20 frames a second).
async fn start() -> TestServer {
    common::start_with(|config| config.frames_per_second(2000).frame_burst(2000)).await
}

/// What a publisher's connection was told about its own frames.
enum Told {
    Ack,
    Error(Value),
}

/// A WebSocket client that publishes into `room` as `name`, straight to the server. A task
/// reads what the server sends it (its own messages back, acks) so that it never counts
/// as a slow reader, and passes the acks and errors on.
struct Publisher {
    room: String,
    name: String,
    sink: SplitSink<Ws, Message>,
    told: mpsc::UnboundedReceiver<Told>,
    _reader: JoinHandle<()>,
}

impl Publisher {
    async fn join(server: &TestServer, room: &str, name: &str) -> Publisher {
        let mut client = Client::ws(server).await;
        client.join(room, name).await;
        let Client::Ws { socket, .. } = client else {
            unreachable!()
        };
        let (sink, stream) = socket.split();
        let (tell, told) = mpsc::unbounded_channel();
        Publisher {
            room: room.into(),
            name: name.into(),
            sink,
            told,
            _reader: tokio::spawn(read_acks(stream, tell)),
        }
    }

    /// Sends `count` messages, the `i`-th at `start + i × period` (late ones at once, to
    /// keep the rate), with text `text(i, when it was sent)`; then waits until all are
    /// acknowledged. Returns when the last was sent.
    async fn publish(
        mut self,
        start: Instant,
        period: Duration,
        count: usize,
        text: impl Fn(usize, Instant) -> String,
    ) -> Instant {
        for i in 0..count {
            tokio::time::sleep_until(start + period * i as u32).await;
            let frame = json!({"type": "send", "room": self.room, "id": format!("{}-{i}", self.name),
                               "text": text(i, Instant::now())});
            self.sink
                .send(Message::text(frame.to_string()))
                .await
                .expect("the publisher's connection is open");
        }
        let last = Instant::now();
        let deadline = last + DEADLINE;
        let mut acks = 0;
        while acks < count {
            match tokio::time::timeout_at(deadline, self.told.recv()).await {
                Ok(Some(Told::Ack)) => acks += 1,
                Ok(Some(Told::Error(frame))) => panic!("{} was refused: {frame}", self.name),
                Ok(None) => panic!("{}'s connection ended after {acks} acks", self.name),
                Err(_) => panic!("{} got {acks} of {count} acks in time", self.name),
            }
        }
        last
    }
}

async fn read_acks(mut stream: SplitStream<Ws>, tell: mpsc::UnboundedSender<Told>) {
    while let Some(Ok(message)) = stream.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let frame: Value = serde_json::from_str(&text).unwrap();
        let told = match frame["type"].as_str() {
            Some("ack") => Told::Ack,
            Some("error" | "bye") => Told::Error(frame),
            _ => continue,
        };
        if tell.send(told).is_err() {
            return;
        }
    }
}

/// A room's message as a reader saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    seq: u64,
    from: String,
    text: String,
}

fn seen(frame: &Value) -> Seen {
    let (seq, from, text) = common::seq_text(frame);
    Seen { seq, from, text }
}

/// A frame a reader in the middle of a chat must never get.
fn assert_still_in_session(frame: &Value) {
    match frame["type"].as_str() {
        Some("joined") => panic!("joined again (a reconnect?): {frame}"),
        Some("error" | "bye") => panic!("the session was told {frame}"),
        _ => {}
    }
}

/// The `seq`s of `messages` follow each other, each once.
fn assert_consecutive(room: &str, messages: &[Seen]) {
    for pair in messages.windows(2) {
        assert_eq!(
            pair[1].seq,
            pair[0].seq + 1,
            "{room}: message {} followed by {} (lost, repeated or out of order)",
            pair[0].seq,
            pair[1].seq
        );
    }
}

/// Rebinding: the WebTransport client is moved to a new source address (`to[k]` for the
/// k-th move: None keeps the IP and changes the port, as a NAT rebinding does; an IP is a
/// new network) three times while another client publishes 300 messages at 50 a second,
/// and it sends messages of its own (one right after each move). It must get every
/// message once, in order, with no `joined` again (the same session all along), and every
/// message of its own acknowledged.
async fn chat_across_rebindings(to: [Option<IpAddr>; 3]) {
    const COUNT: usize = 300;
    const PERIOD: Duration = Duration::from_millis(20);
    // The moves, after this many messages from the publisher.
    const MOVES: [usize; 3] = [50, 125, 200];
    // Messages of its own, after this many (and right after each move).
    const OWN: [usize; 3] = [25, 160, 275];

    let server = start().await;
    let relay = Relay::symmetric(server.webtransport, Link::PERFECT).await;
    let mut phone = Client::wt_via(&server, relay.addr()).await;
    phone.join("rebind", "phone").await;
    let desk = Publisher::join(&server, "rebind", "desk").await;
    let started = Instant::now();
    let publishing = tokio::spawn(desk.publish(started, PERIOD, COUNT, |i, _| format!("n {i}")));

    let mut messages: Vec<Seen> = Vec::new();
    let mut own_sent: Vec<String> = Vec::new();
    let mut acks: Vec<(String, u64)> = Vec::new();
    let mut moved_at = Vec::new();
    let from_desk = |messages: &[Seen]| messages.iter().filter(|m| m.from == "desk").count();
    let mut said_at = None;
    while from_desk(&messages) < COUNT || acks.len() < own_sent.len() {
        let frame = phone.next().await;
        assert_still_in_session(&frame);
        match frame["type"].as_str() {
            Some("message") if frame["room"] == "rebind" => messages.push(seen(&frame)),
            Some("ack") => acks.push((
                frame["id"].as_str().unwrap().to_owned(),
                frame["seq"].as_u64().unwrap(),
            )),
            _ => continue,
        }
        let got = from_desk(&messages);
        let mut say = OWN.contains(&got);
        if let Some(k) = MOVES.iter().position(|&n| n == got)
            && moved_at.len() == k
        {
            let new = match to[k] {
                None => relay.rebind().await,
                Some(ip) => relay.rebind_from(ip).await,
            };
            eprintln!(
                "after {got} messages ({:?} in): the server now sees the client at {new}",
                started.elapsed()
            );
            moved_at.push(got);
            say = true;
        }
        if say && said_at != Some(got) {
            let id = format!("phone-{}", own_sent.len());
            phone
                .send(json!({"type": "send", "room": "rebind", "text": id, "id": id}))
                .await;
            own_sent.push(id);
            said_at = Some(got);
        }
    }
    let last_sent = tokio::time::timeout(DEADLINE, publishing)
        .await
        .expect("the publisher is done")
        .unwrap();
    let took = started.elapsed();

    // Its own messages are in the room too: wait for the last of them to come back.
    while messages.iter().filter(|m| m.from == "phone").count() < own_sent.len() {
        let frame = phone.next().await;
        assert_still_in_session(&frame);
        if frame["type"] == "message" && frame["room"] == "rebind" {
            messages.push(seen(&frame));
        }
    }

    assert_eq!(moved_at.len(), 3, "moved three times: {moved_at:?}");
    assert_eq!(relay.rebinds(), 3);
    let per_binding = relay.server_datagrams_per_binding();
    eprintln!(
        "rebinding {to:?}: {COUNT} messages in {took:?} (the last sent {:?} in); datagrams \
         from the server on each of the relay's sockets: {per_binding:?}; {:?}",
        last_sent - started,
        relay.stats()
    );
    assert!(
        per_binding.iter().all(|&n| n > 0),
        "the server answered on every new address: {per_binding:?}"
    );
    // Every message once, in order.
    assert_consecutive("rebind", &messages);
    let desk_texts: Vec<&str> = messages
        .iter()
        .filter(|m| m.from == "desk")
        .map(|m| m.text.as_str())
        .collect();
    let want: Vec<String> = (0..COUNT).map(|i| format!("n {i}")).collect();
    assert_eq!(
        desk_texts, want,
        "the publisher's messages, once each, in order"
    );
    let own_texts: Vec<&str> = messages
        .iter()
        .filter(|m| m.from == "phone")
        .map(|m| m.text.as_str())
        .collect();
    assert_eq!(own_texts, own_sent, "its own messages, once each, in order");
    // Every message of its own acknowledged, with the number it has in the room.
    let own_seqs: Vec<(String, u64)> = messages
        .iter()
        .filter(|m| m.from == "phone")
        .map(|m| (m.text.clone(), m.seq))
        .collect();
    assert_eq!(acks, own_seqs, "each of its own messages acknowledged once");
    assert!(own_sent.len() >= 6, "it sent after each move: {own_sent:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_survives_three_nat_rebindings_mid_chat() {
    chat_across_rebindings([None, None, None]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_survives_moving_to_new_addresses_mid_chat() {
    let ip = |last| Some(IpAddr::from([127, 0, 0, last]));
    chat_across_rebindings([ip(2), ip(3), ip(4)]).await;
}

/// The per-address budget across a move: a session counts against the address it
/// connected from until it ends, wherever it moved to (a phone that left Wi-Fi neither takes
/// a place at its new address nor gives back its old one while it lasts), and gives that
/// place back when it ends. With one connection per address: the phone moves from
/// 127.0.0.1 to 127.0.0.7 and chats on; a second session from 127.0.0.1 is told `busy`, one
/// from 127.0.0.7 comes in; once the phone is gone, 127.0.0.1 may connect again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_session_stays_counted_against_the_address_it_connected_from() {
    let server = common::start_with(|config| config.max_connections_per_ip(1)).await;
    let new_network = IpAddr::from([127, 0, 0, 7]);
    let relay = Relay::symmetric(server.webtransport, Link::PERFECT).await;
    let mut phone = Client::wt_via(&server, relay.addr()).await;
    phone.join("moved", "phone").await;
    assert_eq!(relay.upstream_addr().ip(), IpAddr::from([127, 0, 0, 1]));
    Client::wt(&server).await.expect_busy().await;

    relay.rebind_from(new_network).await;
    phone
        .send(json!({"type": "send", "room": "moved", "text": "from the new network", "id": "m1"}))
        .await;
    let ack = loop {
        let frame = phone.next().await;
        assert_still_in_session(&frame);
        if frame["type"] == "ack" {
            break frame;
        }
    };
    assert_eq!(ack["id"], "m1", "{ack}");

    // The first address still holds its place; the new one has its own.
    Client::wt(&server).await.expect_busy().await;
    let other = Relay::symmetric(server.webtransport, Link::PERFECT).await;
    other.rebind_from(new_network).await;
    let mut laptop = Client::wt_via(&server, other.addr()).await;
    let (joined, _) = laptop.join("moved", "laptop").await;
    assert_eq!(joined["type"], "joined", "{joined}");

    // The phone goes; its place at the first address is free again.
    drop(phone);
    let started = Instant::now();
    loop {
        let mut next = Client::wt(&server).await;
        next.send(json!({"type": "join", "room": "moved", "name": "back"}))
            .await;
        let first = next.next().await;
        if first["type"] == "joined" {
            break;
        }
        assert_eq!(first["code"], "busy", "{first}");
        assert!(
            started.elapsed() < DEADLINE,
            "the phone's place at 127.0.0.1 came back once it ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A room's stream that cannot take more holds back only that room. The client stops
/// reading its busy room's stream (to the server that is what a stream held back by the
/// network looks like: its flow-control window fills) while 2,000 messages of about 1 KB,
/// more than the window, are sent to that room; the quiet room's 20 messages, sent after
/// them, still arrive. Then the client reads the busy room again: its 2,000 come, in order,
/// once each, and nothing in between was refused or cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_stream_the_client_stops_reading_holds_back_only_its_room() {
    const BUSY: usize = 2000;
    const QUIET: usize = 20;
    let server = start().await;
    let mut phone = Client::wt(&server).await;
    phone.send(json!({"type": "hello", "protocol": 4})).await;
    assert_eq!(phone.next_of("hello").await["protocol"], 4);
    let Client::Wt { connection, .. } = &phone else {
        unreachable!()
    };
    let connection = connection.clone();
    let mut streams = Vec::new();
    for room in ["busy", "quiet"] {
        phone
            .send(json!({"type": "join", "room": room, "name": "phone"}))
            .await;
        let mut stream = RoomStream {
            recv: tokio::time::timeout(DEADLINE, connection.accept_uni())
                .await
                .expect("the room's stream opens")
                .unwrap(),
            buf: Vec::new(),
        };
        let joined = stream.next().await;
        assert_eq!(
            (&joined["type"], &joined["room"]),
            (&json!("joined"), &json!(room))
        );
        streams.push(stream);
    }
    let (mut busy, mut quiet) = (streams.remove(0), streams.remove(0));

    let pad = "x".repeat(1000);
    let started = Instant::now();
    Publisher::join(&server, "busy", "desk")
        .await
        .publish(started, Duration::from_millis(1), BUSY, |i, _| {
            format!("b {i} {pad}")
        })
        .await;
    // Every busy message was accepted (so queued for the phone) before the quiet ones.
    Publisher::join(&server, "quiet", "friend")
        .await
        .publish(Instant::now(), Duration::from_millis(10), QUIET, |i, _| {
            format!("q {i}")
        })
        .await;
    let quiet_seen = quiet.messages(QUIET).await;
    let texts: Vec<&str> = quiet_seen.iter().map(|m| m.text.as_str()).collect();
    let want: Vec<String> = (0..QUIET).map(|i| format!("q {i}")).collect();
    assert_eq!(
        texts, want,
        "the quiet room's messages, while the busy room's wait"
    );
    assert_consecutive("quiet", &quiet_seen);

    let busy_seen = busy.messages(BUSY).await;
    assert_consecutive("busy", &busy_seen);
    let texts: Vec<String> = busy_seen.iter().map(|m| m.text.clone()).collect();
    let want: Vec<String> = (0..BUSY).map(|i| format!("b {i} {pad}")).collect();
    assert!(
        texts == want,
        "the busy room's messages, once each, in order"
    );
    // The session is still there: it answers on its own stream.
    phone.send(json!({"type": "ping"})).await;
    assert_eq!(phone.next_of("pong").await["type"], "pong");
}

/// A room's stream as a client of protocol 4 reads it.
struct RoomStream {
    recv: wtransport::RecvStream,
    buf: Vec<u8>,
}

impl RoomStream {
    async fn next(&mut self) -> Value {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                return serde_json::from_slice(&line[..end]).unwrap();
            }
            let mut chunk = [0u8; 16 * 1024];
            let read = tokio::time::timeout(DEADLINE, self.recv.read(&mut chunk))
                .await
                .expect("the room's stream goes on")
                .unwrap()
                .expect("the room's stream is not finished");
            self.buf.extend_from_slice(&chunk[..read]);
        }
    }

    /// The next `count` messages (other frames skipped).
    async fn messages(&mut self, count: usize) -> Vec<Seen> {
        let mut seen_here = Vec::new();
        while seen_here.len() < count {
            let frame = self.next().await;
            assert_still_in_session(&frame);
            if frame["type"] == "message" {
                seen_here.push(seen(&frame));
            }
        }
        seen_here
    }
}

/// The harness: with 2 % of the datagrams lost each way and 10 ms each way, a WebTransport
/// client gets 200 messages sent at 50 a second, all, in order, once (QUIC resends what
/// was lost); the relay did drop datagrams both ways, and did delay them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_recovers_what_the_relay_loses() {
    const COUNT: usize = 200;
    let server = start().await;
    let link = Link::lossy(0.02, Duration::from_millis(10), 27);
    let relay = Relay::symmetric(server.webtransport, link).await;
    let mut reader = Client::wt_via(&server, relay.addr()).await;
    // A join is a round trip: at least twice the one-way delay.
    let asked = Instant::now();
    reader.join("lossy", "reader").await;
    let round_trip = asked.elapsed();
    assert!(
        round_trip >= Duration::from_millis(20),
        "a join through the relay took {round_trip:?}"
    );

    let writer = Publisher::join(&server, "lossy", "writer").await;
    let started = Instant::now();
    let publishing = tokio::spawn(writer.publish(
        started,
        Duration::from_millis(20),
        COUNT,
        |i, _| format!("n {i}"),
    ));
    let mut messages = Vec::new();
    while messages.len() < COUNT {
        let frame = reader.next().await;
        assert_still_in_session(&frame);
        if frame["type"] == "message" {
            messages.push(seen(&frame));
        }
    }
    publishing.await.unwrap();
    let stats = relay.stats();
    eprintln!(
        "{COUNT} messages through 2 % loss and 10 ms each way in {:?} (join round trip \
         {round_trip:?}): {stats:?}",
        started.elapsed()
    );
    assert_consecutive("lossy", &messages);
    let texts: Vec<&str> = messages.iter().map(|m| m.text.as_str()).collect();
    let want: Vec<String> = (0..COUNT).map(|i| format!("n {i}")).collect();
    assert_eq!(texts, want);
    assert!(
        stats.to_server.dropped > 0 && stats.to_client.dropped > 0,
        "the relay dropped datagrams both ways: {stats:?}"
    );
}

/// The relay itself, with plain UDP against an echo server: it drops about the fraction it
/// is told (and counts what it drops), delays by the one-way delay, keeps each direction's
/// order without jitter and reorders with it, and after a rebinding the server sees the
/// client's datagrams come from the new address and its answers still reach the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_drops_delays_reorders_and_rebinds() {
    use tokio::net::UdpSocket;
    // An echo server that notes where each datagram came from.
    let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    let (seen_from, mut froms) = mpsc::unbounded_channel();
    // (The runtime, which ends with the test, stops it.)
    tokio::spawn(async move {
        let mut buf = [0; 64];
        while let Ok((len, from)) = echo.recv_from(&mut buf).await {
            let _ = seen_from.send(from);
            let _ = echo.send_to(&buf[..len], from).await;
        }
    });
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // Sends datagrams numbered `range` (10 a millisecond: kernel buffers are small) and
    // reads the echoes until every datagram the relay did not drop came back: the numbers
    // in the order they came, and the shortest round trip.
    async fn exchange(
        client: &UdpSocket,
        relay: &Relay,
        range: std::ops::Range<u32>,
    ) -> (Vec<u32>, Duration) {
        let before = relay.stats();
        let sent = Instant::now();
        for i in range.clone() {
            client
                .send_to(&i.to_be_bytes(), relay.addr())
                .await
                .unwrap();
            if i % 10 == 9 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let (mut got, mut fastest) = (Vec::new(), Duration::MAX);
        let deadline = Instant::now() + DEADLINE;
        loop {
            let now = relay.stats();
            let handled = (now.to_server.forwarded + now.to_server.dropped)
                - (before.to_server.forwarded + before.to_server.dropped);
            let forwarded = now.to_server.forwarded - before.to_server.forwarded;
            if handled == range.len() as u64 && got.len() as u64 == forwarded {
                return (got, fastest);
            }
            assert!(Instant::now() < deadline, "the echoes came back in time");
            // Briefly: the relay may still be reading (and dropping) the last ones.
            let mut buf = [0; 4];
            let read = tokio::time::timeout(Duration::from_millis(5), client.recv_from(&mut buf));
            if let Ok(read) = read.await {
                assert_eq!(read.unwrap().0, 4);
                got.push(u32::from_be_bytes(buf));
                fastest = fastest.min(sent.elapsed());
            }
        }
    }

    // 10 % loss and 5 ms towards the server, a perfect way back.
    let relay = Relay::start(
        echo_addr,
        Link::lossy(0.1, Duration::from_millis(5), 7),
        Link::PERFECT,
    )
    .await;
    let (got, fastest) = exchange(&client, &relay, 0..300).await;
    let stats = relay.stats();
    assert_eq!(
        stats.to_server.forwarded + stats.to_server.dropped,
        300,
        "{stats:?}"
    );
    assert!(
        (10..=60).contains(&stats.to_server.dropped),
        "about 10 % dropped: {stats:?}"
    );
    assert_eq!(stats.to_client.dropped, 0);
    assert_eq!(got.len() as u64, stats.to_server.forwarded);
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order: {got:?}");
    assert!(fastest >= Duration::from_millis(5), "delayed: {fastest:?}");
    let first = froms.recv().await.unwrap();
    assert_eq!(first, relay.upstream_addr());

    // A rebinding: the echo server sees a new address, and still reaches the client.
    let new = relay.rebind().await;
    assert_ne!(new, first);
    assert_eq!(new.ip(), first.ip());
    while froms.try_recv().is_ok() {}
    let (got, _) = exchange(&client, &relay, 1000..1020).await;
    assert!(!got.is_empty());
    assert_eq!(froms.recv().await.unwrap(), new);
    let per_binding = relay.server_datagrams_per_binding();
    assert_eq!(per_binding.len(), 2);
    assert!(per_binding[1] > 0, "{per_binding:?}");
    let moved = relay.rebind_from([127, 0, 0, 5].into()).await;
    assert_eq!(moved.ip(), IpAddr::from([127, 0, 0, 5]));
    let (got, _) = exchange(&client, &relay, 2000..2020).await;
    assert!(!got.is_empty());

    // Jitter: nothing lost, everything back, not in the order sent.
    let jittery = Link {
        jitter: Duration::from_millis(20),
        ..Link::lossy(0.0, Duration::from_millis(1), 9)
    };
    let relay = Relay::start(echo_addr, jittery, Link::PERFECT).await;
    let (mut got, _) = exchange(&client, &relay, 0..100).await;
    assert!(got.windows(2).any(|w| w[0] > w[1]), "reordered: {got:?}");
    got.sort();
    assert_eq!(got, (0..100).collect::<Vec<_>>());
}

/// The quiet room's messages: how many a second, and their size.
const QUIET_RATE: u32 = 20;
const QUIET_PAD: usize = 80;
/// The busy room's messages are about this large.
const BUSY_PAD: usize = 1000;

/// One phase of the measurement: the busy room publishing `busy_rate` messages a second
/// (0: off) for `length`. Phases with no label are not measured (a backlog draining).
struct Phase {
    label: Option<&'static str>,
    busy_rate: u32,
    length: Duration,
}

const PHASES: [Phase; 4] = [
    Phase {
        label: Some("busy off"),
        busy_rate: 0,
        length: Duration::from_secs(5),
    },
    Phase {
        label: Some("busy 250/s"),
        busy_rate: 250,
        length: Duration::from_secs(5),
    },
    Phase {
        label: None,
        busy_rate: 0,
        length: Duration::from_secs(2),
    },
    Phase {
        label: Some("busy 500/s"),
        busy_rate: 500,
        length: Duration::from_secs(5),
    },
];

/// The `p`-th quantile of `sorted` (nearest rank).
fn quantile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// A message's text: its number and when it was sent (µs after `t0`), padded to `pad`.
fn timed_text(i: usize, sent: Instant, t0: Instant, pad: usize) -> String {
    let mut text = format!("{i} {}", (sent - t0).as_micros());
    let fill = pad.saturating_sub(text.len() + 1);
    text.push(' ');
    text.extend(std::iter::repeat_n('x', fill));
    text
}

/// When a message of `timed_text` was sent.
fn sent_at(text: &str, t0: Instant) -> Instant {
    let micros: u64 = text.split(' ').nth(1).unwrap().parse().unwrap();
    t0 + Duration::from_micros(micros)
}

/// Head-of-line blocking today, measured (not judged): one WebTransport session in two
/// rooms, through 2 % loss and 10 ms each way (20 ms round trip). A "quiet" room gets
/// ~100-byte messages at 20 a second throughout; a "busy" room gets ~1 KB messages at 250 a
/// second, then (after a pause to drain) 500 a second. Both rooms share the session's one
/// stream today, so a lost packet of the busy room holds back the quiet room. The quiet
/// room's latency (send to arrival) is printed per phase; what is asserted is what holds
/// today: nothing lost, repeated or reordered in either room, and the session never ends.
/// Issue 27 will turn the figures into a bound.
async fn quiet_room_beside_a_busy_one(
    room_streams: bool,
) -> Vec<(&'static str, Duration, Duration)> {
    // One measurement at a time: two at once would share the two cores' time.
    static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = start().await;
    let link = Link::lossy(0.02, Duration::from_millis(10), 2027);
    let relay = Relay::symmetric(server.webtransport, link).await;
    let mut reader = Client::wt_via(&server, relay.addr()).await;
    if room_streams {
        reader = reader.with_room_streams().await;
    }
    reader.join("quiet", "reader").await;
    reader.join("busy", "reader").await;
    let quiet = Publisher::join(&server, "quiet", "quiet").await;
    let busy: Vec<Publisher> = {
        let mut busy = Vec::new();
        for (k, _) in PHASES.iter().enumerate().filter(|(_, p)| p.busy_rate > 0) {
            busy.push(Publisher::join(&server, "busy", &format!("busy{k}")).await);
        }
        busy
    };

    // The schedule, from a start a little ahead (for the publishers to be ready).
    let t0 = Instant::now() + Duration::from_millis(100);
    let total: Duration = PHASES.iter().map(|p| p.length).sum();
    let quiet_count = (total.as_secs_f64() * f64::from(QUIET_RATE)) as usize;
    let mut busy_count = 0;
    let mut publishing = vec![tokio::spawn(quiet.publish(
        t0,
        Duration::from_secs(1) / QUIET_RATE,
        quiet_count,
        move |i, sent| timed_text(i, sent, t0, QUIET_PAD),
    ))];
    let mut bounds = Vec::new(); // (label, from, to), as offsets from t0
    let mut at = Duration::ZERO;
    let mut busy = busy.into_iter();
    for phase in &PHASES {
        if phase.busy_rate > 0 {
            let count = (phase.length.as_secs_f64() * f64::from(phase.busy_rate)) as usize;
            busy_count += count;
            publishing.push(tokio::spawn(busy.next().unwrap().publish(
                t0 + at,
                Duration::from_secs(1) / phase.busy_rate,
                count,
                move |i, sent| timed_text(i, sent, t0, BUSY_PAD),
            )));
        }
        if let Some(label) = phase.label {
            bounds.push((label, at, at + phase.length));
        }
        at += phase.length;
    }

    // The reader: every message of both rooms, with when it came.
    let mut got: [Vec<(Seen, Instant)>; 2] = [Vec::new(), Vec::new()];
    while got[0].len() < quiet_count || got[1].len() < busy_count {
        let frame = reader.next().await;
        let came = common::read_at(&frame).map_or_else(Instant::now, Instant::from_std);
        assert_still_in_session(&frame);
        if frame["type"] != "message" {
            continue;
        }
        let room = if frame["room"] == "quiet" { 0 } else { 1 };
        got[room].push((seen(&frame), came));
    }
    let ended = t0.elapsed();
    for task in publishing {
        task.await.unwrap();
    }

    for (room, name) in [(0, "quiet"), (1, "busy")] {
        let messages: Vec<Seen> = got[room].iter().map(|(m, _)| m.clone()).collect();
        assert_consecutive(name, &messages);
    }
    let quiet_texts: Vec<usize> = got[0]
        .iter()
        .map(|(m, _)| m.text.split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        quiet_texts,
        (0..quiet_count).collect::<Vec<_>>(),
        "the quiet room's messages, once each, in order"
    );

    // The figures: per phase, the latency of the messages sent in it.
    let latencies = |room: usize, from: Duration, to: Duration| {
        let mut l: Vec<Duration> = got[room]
            .iter()
            .map(|(m, came)| (sent_at(&m.text, t0), *came))
            .filter(|(sent, _)| (t0 + from..t0 + to).contains(sent))
            .map(|(sent, came)| came - sent)
            .collect();
        l.sort();
        l
    };
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
    let off = latencies(0, bounds[0].1, bounds[0].2);
    let late_after = quantile(&off, 0.5) + Duration::from_millis(20);
    eprintln!(
        "head-of-line blocking over one WebTransport session, {} (2 % loss each way, 10 ms \
         each way; quiet room {QUIET_RATE}/s of ~{QUIET_PAD} B, busy room ~{BUSY_PAD} B):",
        if room_streams {
            "a stream per room"
        } else {
            "one stream"
        }
    );
    let mut figures = Vec::new();
    for &(label, from, to) in &bounds {
        let quiet = latencies(0, from, to);
        let busy = latencies(1, from, to);
        let late = quiet.iter().filter(|&&l| l > late_after).count();
        let busy_figures = if busy.is_empty() {
            String::new()
        } else {
            format!(
                "; busy room p50 {} p90 {} ({} messages)",
                ms(quantile(&busy, 0.5)),
                ms(quantile(&busy, 0.9)),
                busy.len()
            )
        };
        eprintln!(
            "  {label:>10}: quiet room p50 {} p90 {} max {} ({} messages, {late} later than \
             {}){busy_figures}",
            ms(quantile(&quiet, 0.5)),
            ms(quantile(&quiet, 0.9)),
            ms(*quiet.last().unwrap()),
            quiet.len(),
            ms(late_after),
        );
        figures.push((label, quantile(&quiet, 0.5), quantile(&quiet, 0.9)));
    }
    eprintln!(
        "  all received {} after the start; relay: {:?}",
        ms(ended),
        relay.stats()
    );
    let stats = relay.stats();
    assert!(
        stats.to_server.dropped > 0 && stats.to_client.dropped > 0,
        "the relay dropped datagrams both ways: {stats:?}"
    );
    figures
}

/// Protocol 3 and older: every room of a session on one stream. The figures are printed
/// (the baseline); what is asserted is only that nothing is lost, repeated or
/// reordered, and that the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_of_line_blocking_is_measured_over_one_stream() {
    quiet_room_beside_a_busy_one(false).await;
}

/// Protocol 4: each room on a stream of its own. With 2 % loss each way and 20 ms round
/// trips, a busy room at 250 msgs/s leaves the quiet room's p90 within 1.3 times its p90
/// with the busy room off, and at 500 msgs/s (more than the lossy link carries: the busy
/// room's own frames queue) its median within two round trips of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_rooms_losses_do_not_hold_back_a_quiet_room_on_its_own_stream() {
    let figures = quiet_room_beside_a_busy_one(true).await;
    let [
        (_, off_p50, off_p90),
        (_, p50_250, p90_250),
        (_, p50_500, _),
    ] = figures[..]
    else {
        panic!("three phases: {figures:?}");
    };
    assert!(
        p90_250 <= off_p90.mul_f64(1.3),
        "quiet p90 {p90_250:?} beside 250 msgs/s, {off_p90:?} alone"
    );
    assert!(
        p50_500 <= off_p50 + Duration::from_millis(40),
        "quiet median {p50_500:?} beside 500 msgs/s, {off_p50:?} alone ({p50_250:?} at 250)"
    );
}
