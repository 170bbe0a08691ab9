//! `wtchat-bench lossy`: head-of-line blocking under loss (issue 27). One receiving client
//! is in two rooms and reaches the server through a lossy path (`tun.rs`: loss and delay
//! each way, at the IP level, so that WebSocket's TCP and WebTransport's QUIC cross the same
//! impairment): a quiet room gets ~100-byte messages at 20 a second throughout, and a busy
//! room ~1 KB messages in phases: off, then each `--busy-rates` (250, 500 msgs/s), a few
//! seconds each, with a pause between busy phases for the backlog to drain (not measured).
//! The two senders are WebSocket clients of their own, straight to the server on loopback:
//! only the receiver's way is lossy.
//!
//! What it measures, per phase: the quiet room's latency from send to arrival (each frame
//! timed when the receiver's read returns it, off whichever stream it came), and how many
//! of its messages were late; the busy room's delivered rate and latency. Over the whole
//! run: every message of both rooms once, none lost, none repeated (the tally of
//! `account.rs`, per room), and the packets the path dropped. Over one stream (WebSocket,
//! or WebTransport before protocol 4) a busy room's lost packet holds the quiet room's
//! messages back until it is resent; with a stream per room (protocol 4) it must not.
//!
//! The same code path measures all three: only the receiver's connection differs.

use std::io::{self, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use clap::Args;
use serde::{Serialize, Serializer};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use crate::account::{self, Kind, Marker, Outcome, Tally};
use crate::client::{self, Framing, Lines, Target, Transport};
use crate::resume::{self, Link};
use crate::tun::{self, Impairment, LossyPath};
use crate::turns::Usage;
use crate::{Common, Percentiles, Snapshot, TransportArg, budgets, fetch_config, labelled};
use crate::{procfs, wt};

#[derive(Args, Clone)]
pub struct LossyArgs {
    #[command(flatten)]
    pub common: Common,
    /// The protocol version the receiver's `hello` asks for (1: it sends none). Over
    /// WebTransport, 4 and up give each room a stream of its own; before 4 the rooms share
    /// the session's one stream. Over WebSocket it changes nothing here.
    #[arg(long, default_value_t = 4)]
    protocol: u32,
    /// The fraction of packets the path drops, each way.
    #[arg(long, default_value_t = 0.02)]
    loss: f64,
    /// The path's one-way delay, each way (the round trip is twice this).
    #[arg(long, default_value_t = 10.0)]
    delay_ms: f64,
    /// Seconds of each measured phase.
    #[arg(long, default_value_t = 5.0)]
    phase_secs: f64,
    /// The busy room's rates, msgs/s, one phase each after the phase with it off.
    #[arg(long, value_delimiter = ',', default_value = "250,500")]
    busy_rates: Vec<u32>,
    /// Seconds with the busy room off between two busy phases, not measured: the first
    /// phase's backlog drains before the next is measured.
    #[arg(long, default_value_t = 2.0)]
    drain_secs: f64,
    /// The quiet room's messages per second.
    #[arg(long, default_value_t = 20)]
    quiet_rate: u32,
    /// Filler bytes after the marker (about 25) in each quiet message's text.
    #[arg(long, default_value_t = 70)]
    quiet_text_bytes: usize,
    /// The same for the busy room's messages.
    #[arg(long, default_value_t = 970)]
    busy_text_bytes: usize,
    /// The seed of the path's drops (the way back uses the next one).
    #[arg(long, default_value_t = 27)]
    seed: u64,
    /// Seconds to wait, after the last phase, for the last messages.
    #[arg(long, default_value_t = 30.0)]
    wait_secs: f64,
}

/// One stretch of the schedule, as offsets from the start.
#[derive(Debug, Clone, PartialEq)]
struct Phase {
    /// Its key in the JSON line (`busy_off`, `busy_250`); None: not measured (a drain).
    key: Option<String>,
    busy_rate: u32,
    from: Duration,
    to: Duration,
}

/// The phases: the busy room off, then each busy rate, with a drain before each but the
/// first.
fn schedule(busy_rates: &[u32], length: Duration, drain: Duration) -> Vec<Phase> {
    let mut phases = Vec::new();
    let mut at = Duration::ZERO;
    let mut push = |key: Option<String>, busy_rate: u32, length: Duration| {
        phases.push(Phase {
            key,
            busy_rate,
            from: at,
            to: at + length,
        });
        at += length;
    };
    push(Some("busy_off".into()), 0, length);
    for (i, &rate) in busy_rates.iter().enumerate() {
        if i > 0 && !drain.is_zero() {
            push(None, 0, drain);
        }
        push(Some(format!("busy_{rate}")), rate, length);
    }
    phases
}

/// When each message is due: every `1 / rate` from `from` until `to`.
fn send_times(start: Instant, from: Duration, to: Duration, rate: u32) -> Vec<Instant> {
    // k seconds ÷ rate, not k × (1 s ÷ rate): a period rounded to the nanosecond would add
    // up to one send too many at a rate that does not divide a second.
    (0..)
        .map(|k| from + Duration::from_secs(1) * k / rate.max(1))
        .take_while(|at| *at < to)
        .map(|at| start + at)
        .collect()
}

/// `url` (`scheme://host:port/path`) with `ip` for its host.
fn with_host(url: &str, ip: Ipv4Addr) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let port = match authority.rfind(':') {
        Some(colon) if !authority.ends_with(']') => &authority[colon..],
        _ => "",
    };
    Some(format!("{scheme}://{ip}{port}{path}"))
}

/// The room a frame names (its first `"room":"…"`: the server writes the room before the
/// text), without allocating.
fn room_of(frame: &[u8]) -> Option<&[u8]> {
    const KEY: &[u8] = b"\"room\":\"";
    let start = account::find(frame, KEY)? + KEY.len();
    let len = frame[start..].iter().position(|&b| b == b'"')?;
    Some(&frame[start..start + len])
}

/// What the receiver's readers pass on.
#[derive(Debug)]
enum Got {
    /// A frame, and when the read that returned it did (ns on the run's clock).
    Frame(u64, Vec<u8>),
    /// The server opened a unidirectional stream (protocol 4: a room's).
    Stream,
    /// A connection or stream ended: why.
    Ended(String),
}

fn ns_since(clock: Instant) -> u64 {
    clock.elapsed().as_nanos() as u64
}

/// The receiver's connection through the path; its readers stop when it is dropped.
struct Receiver {
    tasks: Vec<JoinHandle<()>>,
    /// WebTransport: the endpoint, and the session's stream to the server (dropping it
    /// would finish the stream, and the server would end the session).
    _session: Option<(
        wtransport::Endpoint<wtransport::endpoint::endpoint_side::Client>,
        wtransport::SendStream,
    )>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Connects the receiver over WebSocket to `target`'s HTTP port at `via`, sends `first`
/// (its hello and joins) and passes on every frame.
async fn receive_ws(
    target: &Target,
    via: Ipv4Addr,
    first: &[u8],
    read_buffer: usize,
    clock: Instant,
    tx: mpsc::UnboundedSender<Got>,
) -> io::Result<Receiver> {
    let ws_url = with_host(&target.ws_url, via)
        .ok_or_else(|| io::Error::other(format!("not a URL: {}", target.ws_url)))?;
    let through = Target {
        http: SocketAddr::from((via, target.http.port())),
        ws_url,
        ..target.clone()
    };
    let mut link = Link::open(&through, Transport::Ws, 0, read_buffer).await?;
    link.send(first).await?;
    let task = tokio::spawn(async move {
        let read = link
            .read_until(|frame| {
                tx.send(Got::Frame(ns_since(clock), frame.to_vec()))
                    .is_err()
            })
            .await;
        if let Err(e) = read {
            let _ = tx.send(Got::Ended(e.to_string()));
        }
    });
    Ok(Receiver {
        tasks: vec![task],
        _session: None,
    })
}

/// Connects the receiver over WebTransport to `target`'s UDP port at `via`, sends `first`
/// and passes on every frame of the session's stream and of every unidirectional stream
/// the server opens.
async fn receive_wt(
    target: &Target,
    via: Ipv4Addr,
    first: &[u8],
    udp_buffer: usize,
    read_buffer: usize,
    clock: Instant,
    tx: mpsc::UnboundedSender<Got>,
) -> io::Result<Receiver> {
    let url = with_host(&target.wt_url, via)
        .ok_or_else(|| io::Error::other(format!("not a URL: {}", target.wt_url)))?;
    let wt::Session {
        endpoint,
        connection,
        mut send,
        recv,
    } = wt::connect_from(
        Ipv4Addr::UNSPECIFIED.into(),
        &url,
        &target.wt_hashes,
        udp_buffer,
    )
    .await?;
    send.write_all(first).await.map_err(io::Error::other)?;
    let session = tokio::spawn(read_lines(recv, read_buffer, clock, tx.clone()));
    let accept = tokio::spawn(async move {
        // Aborted with the receiver: the set aborts the streams' readers.
        let mut readers = JoinSet::new();
        while let Ok(stream) = connection.accept_uni().await {
            if tx.send(Got::Stream).is_err() {
                return;
            }
            readers.spawn(read_lines(stream, read_buffer, clock, tx.clone()));
        }
    });
    Ok(Receiver {
        tasks: vec![session, accept],
        _session: Some((endpoint, send)),
    })
}

/// Passes on the `\n`-ended frames of one WebTransport stream until it ends.
async fn read_lines(
    recv: wtransport::RecvStream,
    read_buffer: usize,
    clock: Instant,
    tx: mpsc::UnboundedSender<Got>,
) {
    let mut lines = Lines::new(recv, read_buffer);
    loop {
        match lines.read().await {
            Ok(true) => {}
            Ok(false) => {
                let _ = tx.send(Got::Ended("the server finished a stream".into()));
                return;
            }
            Err(e) => {
                let _ = tx.send(Got::Ended(e.to_string()));
                return;
            }
        }
        let at = ns_since(clock);
        let mut open = true;
        lines.each_frame(|frame| {
            open = tx.send(Got::Frame(at, frame.to_vec())).is_ok();
            open
        });
        if !open {
            return;
        }
    }
}

/// One room as the receiver saw it.
struct Room {
    name: String,
    /// From its `joined` on.
    tally: Option<Tally>,
    /// Each new message: when it was sent, when it came (ns on the run's clock).
    got: Vec<(u64, u64)>,
}

/// What the receiver got.
struct Account {
    /// Quiet, busy.
    rooms: [Room; 2],
    /// The version the server's `hello` answer says.
    protocol: Option<u64>,
    /// Unidirectional streams the server opened.
    streams: u64,
}

impl Account {
    fn new(rooms: [String; 2]) -> Account {
        Account {
            rooms: rooms.map(|name| Room {
                name,
                tally: None,
                got: Vec::new(),
            }),
            protocol: None,
            streams: 0,
        }
    }

    /// Takes in what a reader passed on; Err when the session is over or was told off.
    fn take(&mut self, got: Got) -> Result<(), String> {
        match got {
            Got::Stream => self.streams += 1,
            Got::Ended(why) => return Err(format!("the receiver's connection ended: {why}")),
            Got::Frame(at, frame) => match account::kind(&frame) {
                Kind::Message => {
                    let room = room_of(&frame).and_then(|name| self.room(name));
                    let (Some(room), Some(seq), Some(m)) = (
                        room,
                        account::u64_after(&frame, account::SEQ_KEY),
                        account::parse_marker(&frame),
                    ) else {
                        return Ok(());
                    };
                    let Some(tally) = room.tally.as_mut() else {
                        return Ok(());
                    };
                    if matches!(
                        tally.record(0, seq, &m),
                        Outcome::New | Outcome::AfterGap { .. }
                    ) {
                        room.got.push((m.sent_ns, at));
                    }
                }
                Kind::Joined => {
                    if let Some(room) = room_of(&frame).and_then(|name| self.room(name)) {
                        let seq = account::u64_after(&frame, account::SEQ_KEY).unwrap_or(0);
                        // One publisher, one room per tally.
                        let mut tally = Tally::new(1, 1);
                        tally.joined(0, seq);
                        room.tally = Some(tally);
                    }
                }
                Kind::Error | Kind::Bye => {
                    return Err(format!(
                        "the receiver was told {}",
                        String::from_utf8_lossy(&frame)
                    ));
                }
                Kind::Other if frame.starts_with(b"{\"type\":\"hello\"") => {
                    self.protocol = account::u64_after(&frame, b"\"protocol\":");
                }
                _ => {}
            },
        }
        Ok(())
    }

    fn room(&mut self, name: &[u8]) -> Option<&mut Room> {
        self.rooms.iter_mut().find(|r| r.name.as_bytes() == name)
    }

    fn received(&self, room: usize) -> u64 {
        self.rooms[room].tally.as_ref().map_or(0, |t| t.received)
    }
}

/// What a sender did.
struct Published {
    sent: u64,
    acked: u64,
}

/// Sends `room`'s messages, each when due (a late one at once, with the time it was due in
/// its marker: a slow sender shows as latency, not as a lighter load), reading its
/// connection between sends (its acks, its own messages back) so that it never counts as a
/// slow reader; then waits, until `deadline`, for the acks of all.
async fn publish(
    mut link: Link,
    room: String,
    pad: usize,
    times: Vec<Instant>,
    clock: Instant,
    deadline: Instant,
) -> Result<Published, String> {
    let fail = |e: io::Error| format!("the sender of {room}: {e}");
    let mut acked = 0u64;
    let mut refused = None;
    let mut count = |frame: &[u8], acked: &mut u64| match account::kind(frame) {
        Kind::Ack => *acked += 1,
        Kind::Error | Kind::Bye => refused = Some(String::from_utf8_lossy(frame).into_owned()),
        _ => {}
    };
    let mut out = Vec::new();
    let mut next = 0;
    while next < times.len() {
        let due = tokio::time::Instant::from_std(times[next]);
        let ended = tokio::select! {
            biased;
            () = tokio::time::sleep_until(due) => None,
            read = link.read_until(|frame| {
                count(frame, &mut acked);
                false
            }) => Some(read),
        };
        if let Some(read) = ended {
            return Err(fail(
                read.err().unwrap_or_else(|| io::Error::other("ended")),
            ));
        }
        out.clear();
        let now = Instant::now();
        while next < times.len() && times[next] <= now {
            let m = Marker {
                sent_ns: times[next].duration_since(clock).as_nanos() as u64,
                publisher: 0,
                counter: next as u64,
            };
            client::build_send(&mut out, &room, m, pad, Framing::Lines);
            next += 1;
        }
        link.send(&out).await.map_err(fail)?;
    }
    let sent = times.len() as u64;
    let acks = link.read_until(|frame| {
        count(frame, &mut acked);
        acked >= sent
    });
    let waited = tokio::time::timeout_at(deadline.into(), acks).await;
    if let Some(refused) = refused {
        return Err(format!("the server refused a send into {room}: {refused}"));
    }
    if let Ok(read) = waited {
        read.map_err(fail)?;
    }
    Ok(Published { sent, acked })
}

/// Opens a sender's WebSocket connection to `target` (loopback) and joins `room`.
async fn sender(target: &Target, room: &str, name: &str, read_buffer: usize) -> io::Result<Link> {
    let mut link = Link::open(target, Transport::Ws, 0, read_buffer).await?;
    let mut join = Vec::new();
    resume::join_frame(&mut join, room, name, None);
    link.send(&join).await?;
    link.read_until(|frame| account::kind(frame) == Kind::Joined)
        .await?;
    Ok(link)
}

/// One measured phase.
#[derive(Debug, Serialize)]
pub struct PhaseReport {
    #[serde(skip)]
    key: String,
    busy_rate: u32,
    /// The quiet room's messages sent in the phase: send to arrival, ms.
    quiet_ms: Percentiles,
    /// Of those, how many took longer than `late_after_ms`.
    quiet_late: u64,
    /// The quiet room's p90 over the phase with the busy room off, and its median less
    /// that phase's (not in that phase itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    quiet_p90_vs_off: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    quiet_p50_over_off_ms: Option<f64>,
    /// The busy room's messages sent in the phase, and their latency, ms.
    busy_sent: u64,
    busy_ms: Percentiles,
    /// The busy room's messages that arrived within the phase, per second.
    busy_delivered_per_s: f64,
}

/// One room's messages over the run.
#[derive(Debug, Serialize)]
pub struct RoomReport {
    sent: u64,
    received: u64,
    lost: u64,
    duplicated: u64,
    out_of_order: u64,
}

#[derive(Debug, Serialize)]
pub struct LossyReport {
    scenario: &'static str,
    label: String,
    transport: &'static str,
    /// The version the receiver's `hello` asked for (1: none sent), and the one spoken.
    protocol_asked: u32,
    protocol: u64,
    /// Unidirectional streams the server opened to the receiver: a room's each with
    /// protocol 4 over WebTransport (2), none on one stream.
    room_streams: u64,
    loss: f64,
    delay_ms: f64,
    rtt_ms: f64,
    phase_s: f64,
    quiet_rate: u32,
    /// A quiet message is late when it took longer than the one-way delay and two round
    /// trips: more than a loss of its own, resent once, takes.
    late_after_ms: f64,
    /// The path's device and subnet.
    path: String,
    /// By key: `busy_off`, `busy_250`, … (a map, so that `summary` and budgets reach
    /// each phase by a dotted path: `phases.busy_250.quiet_p90_vs_off`).
    #[serde(serialize_with = "by_key")]
    phases: Vec<PhaseReport>,
    quiet: RoomReport,
    busy: RoomReport,
    /// Both rooms.
    lost: u64,
    duplicated: u64,
    /// The path's packets, per direction, and the drops of both.
    relay: tun::Stats,
    relay_dropped: u64,
    /// From the start of the schedule until the last message came (100 = one core): the
    /// server's CPU, the tool's (the path's threads too), and others' (noise).
    server_cpu_pct: Option<f64>,
    tool_cpu_pct: Option<f64>,
    other_cpu_pct: Option<f64>,
    /// Datagrams the kernel dropped for want of UDP buffer space meanwhile (machine-wide):
    /// losses that are not the path's.
    udp_buffer_drops: Option<u64>,
    budget: Vec<String>,
}

/// The CPU readings of a [`Snapshot`] (its counts of a fan-out's clients left at zero):
/// what [`Usage`] needs.
fn cpu_snapshot(pids: &[u32]) -> Snapshot {
    Snapshot {
        at: Instant::now(),
        server: procfs::cpu_time_sum(pids),
        redis: None,
        tool: procfs::cpu_time(None),
        machine: procfs::machine_time(),
        received: 0,
        acked: 0,
        frames: 0,
        reads: 0,
        stall_ns: 0,
        udp_errors: procfs::udp_buffer_errors(),
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn by_key<S: Serializer>(phases: &[PhaseReport], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(phases.iter().map(|p| (&p.key, p)))
}

pub async fn lossy(args: LossyArgs) -> Result<LossyReport, String> {
    let common = &args.common;
    if !matches!(common.transport, TransportArg::Ws | TransportArg::Wt) {
        return Err("lossy: --transport ws or wt".into());
    }
    if !(0.0..1.0).contains(&args.loss) || args.delay_ms < 0.0 || args.phase_secs <= 0.0 {
        return Err("lossy: --loss in [0, 1), --delay-ms ≥ 0, --phase-secs > 0".into());
    }
    let mut rates = args.busy_rates.clone();
    rates.sort_unstable();
    rates.dedup();
    if rates.contains(&0) || rates.len() != args.busy_rates.len() || args.quiet_rate == 0 {
        return Err("lossy: busy rates and --quiet-rate above 0, each busy rate once".into());
    }
    let read_buffer = common.read_buffer.unwrap_or(32 * 1024);
    let delay = Duration::from_secs_f64(args.delay_ms / 1e3);
    let target = fetch_config(common.http[0]).await?;
    let path = LossyPath::open(Impairment {
        loss: args.loss,
        delay,
        seed: args.seed,
    })
    .map_err(|e| format!("the lossy path: {e}"))?;
    let addresses = path.addresses();
    let room = common
        .room
        .clone()
        .unwrap_or_else(|| format!("lossy-{}", std::process::id()));
    let names = [format!("{room}-quiet"), format!("{room}-busy")];

    // The receiver, through the path: its hello and both joins at once.
    let clock = Instant::now();
    let mut first = Vec::new();
    if args.protocol >= 2 {
        let _ = writeln!(first, r#"{{"type":"hello","protocol":{}}}"#, args.protocol);
    }
    for name in &names {
        resume::join_frame(&mut first, name, "reader", None);
    }
    let (tx, mut rx) = mpsc::unbounded_channel();
    let receiver = match common.transport {
        TransportArg::Wt => {
            let udp = common.udp_buffer;
            receive_wt(
                &target,
                addresses.server,
                &first,
                udp,
                read_buffer,
                clock,
                tx,
            )
            .await
        }
        _ => receive_ws(&target, addresses.server, &first, read_buffer, clock, tx).await,
    }
    .map_err(|e| {
        format!(
            "the receiver, through {} to {}: {e} (the server must listen on 0.0.0.0 or {})",
            path.name(),
            addresses.server,
            addresses.local
        )
    })?;
    let mut account = Account::new(names.clone());
    let joined_by = Instant::now() + Duration::from_secs_f64(common.connect_timeout);
    while account.rooms.iter().any(|r| r.tally.is_none())
        || (args.protocol >= 2 && account.protocol.is_none())
    {
        match tokio::time::timeout_at(joined_by.into(), rx.recv()).await {
            Ok(Some(got)) => account.take(got)?,
            _ => return Err("the receiver did not join both rooms in time".into()),
        }
    }

    // The senders, on loopback; then the schedule, from a moment for them to be ready.
    let mut links = Vec::new();
    for (name, who) in names.iter().zip(["quiet-sender", "busy-sender"]) {
        let link = sender(&target, name, who, read_buffer)
            .await
            .map_err(|e| format!("{who}: {e}"))?;
        links.push(link);
    }
    let phases = schedule(
        &args.busy_rates,
        Duration::from_secs_f64(args.phase_secs),
        Duration::from_secs_f64(args.drain_secs),
    );
    let end = phases.last().map_or(Duration::ZERO, |p| p.to);
    let t0 = Instant::now() + Duration::from_millis(200);
    let quiet_times = send_times(t0, Duration::ZERO, end, args.quiet_rate);
    let busy_times: Vec<Instant> = phases
        .iter()
        .filter(|p| p.busy_rate > 0)
        .flat_map(|p| send_times(t0, p.from, p.to, p.busy_rate))
        .collect();
    let expected = [quiet_times.len() as u64, busy_times.len() as u64];
    let deadline = t0 + end + Duration::from_secs_f64(args.wait_secs);
    let mut links = links.into_iter();
    let before = cpu_snapshot(&common.server_pid);
    let senders: Vec<_> = [
        (quiet_times, args.quiet_text_bytes),
        (busy_times.clone(), args.busy_text_bytes),
    ]
    .into_iter()
    .zip(&names)
    .map(|((times, pad), name)| {
        let link = links.next().expect("a sender per room");
        tokio::spawn(publish(link, name.clone(), pad, times, clock, deadline))
    })
    .collect();

    // Everything both rooms get, until all came or the deadline.
    while (0..2).any(|room| account.received(room) < expected[room]) {
        match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
            Ok(Some(got)) => account.take(got)?,
            Ok(None) => return Err("the receiver's readers all ended".into()),
            Err(_) => break,
        }
    }
    let after = cpu_snapshot(&common.server_pid);
    let mut published = Vec::new();
    for task in senders {
        published.push(task.await.map_err(|e| e.to_string())??);
    }
    let usage = Usage::between(&before, &after);
    let relay = path.stats();
    let device = format!("{} ({}/24)", path.name(), addresses.local);
    drop(receiver);
    drop(path);

    // The figures.
    let t0_ns = t0.duration_since(clock).as_nanos() as u64;
    let delay_ms = delay.as_secs_f64() * 1e3;
    let late_after_ms = delay_ms * 5.0;
    let late_after_ns = (late_after_ms * 1e6) as u64;
    let span = |p: &Phase| t0_ns + p.from.as_nanos() as u64..t0_ns + p.to.as_nanos() as u64;
    let latencies = |room: &Room, p: &Phase| -> Vec<u64> {
        room.got
            .iter()
            .filter(|(sent, _)| span(p).contains(sent))
            .map(|(sent, came)| came.saturating_sub(*sent))
            .collect()
    };
    let percentiles = |values: &[u64]| {
        let mut h = client::new_histogram();
        for &v in values {
            h.saturating_record(v.max(1_000));
        }
        Percentiles::of_ms(&h)
    };
    let [quiet, busy] = &account.rooms;
    let mut reports: Vec<PhaseReport> = Vec::new();
    for p in &phases {
        let Some(key) = &p.key else { continue };
        let quiet_l = latencies(quiet, p);
        let quiet_ms = percentiles(&quiet_l);
        let off = reports.first().map(|off| &off.quiet_ms);
        let round = |x: f64| (x * 100.0).round() / 100.0;
        reports.push(PhaseReport {
            key: key.clone(),
            busy_rate: p.busy_rate,
            quiet_late: quiet_l.iter().filter(|&&l| l > late_after_ns).count() as u64,
            quiet_p90_vs_off: off
                .filter(|off| off.p90 > 0.0)
                .map(|off| round(quiet_ms.p90 / off.p90)),
            quiet_p50_over_off_ms: off.map(|off| round(quiet_ms.p50 - off.p50)),
            quiet_ms,
            busy_sent: busy_times
                .iter()
                .filter(|&&t| (t0 + p.from..t0 + p.to).contains(&t))
                .count() as u64,
            busy_ms: percentiles(&latencies(busy, p)),
            busy_delivered_per_s: round(
                busy.got
                    .iter()
                    .filter(|(_, came)| span(p).contains(came))
                    .count() as f64
                    / (p.to - p.from).as_secs_f64(),
            ),
        });
    }
    let room_report = |room: &Room, sent: u64| {
        let mut tally = room.tally.clone().expect("joined");
        RoomReport {
            sent,
            received: tally.received,
            lost: tally.finish(&[sent]),
            duplicated: tally.duplicated,
            out_of_order: tally.out_of_order,
        }
    };
    let quiet_report = room_report(quiet, published[0].sent);
    let busy_report = room_report(busy, published[1].sent);
    if let Some(p) = published.iter().find(|p| p.acked < p.sent) {
        eprintln!(
            "warning: a sender had {} of {} sends acknowledged",
            p.acked, p.sent
        );
    }
    Ok(LossyReport {
        scenario: "lossy",
        label: common.label.clone(),
        transport: common.transport.name(),
        protocol_asked: args.protocol,
        protocol: account.protocol.unwrap_or(1),
        room_streams: account.streams,
        loss: args.loss,
        delay_ms,
        rtt_ms: delay_ms * 2.0,
        phase_s: args.phase_secs,
        quiet_rate: args.quiet_rate,
        late_after_ms,
        path: device,
        phases: reports,
        lost: quiet_report.lost + busy_report.lost,
        duplicated: quiet_report.duplicated + busy_report.duplicated,
        quiet: quiet_report,
        busy: busy_report,
        relay_dropped: relay.to_server.dropped + relay.to_client.dropped,
        relay,
        server_cpu_pct: usage.server_pct.map(round1),
        tool_cpu_pct: usage.tool_pct.map(round1),
        other_cpu_pct: usage.other_pct.map(round1),
        udp_buffer_drops: before.udp_errors.zip(after.udp_errors).map(|(a, b)| b - a),
        budget: budgets(common)?,
    })
}

impl LossyReport {
    pub fn table(&self) -> String {
        let mut t = String::new();
        let row = |t: &mut String, k: &str, v: String| crate::turns::row(t, k, v);
        let streams = match self.room_streams {
            0 => "one stream for every room".to_string(),
            n => format!("a stream per room: {n} opened"),
        };
        row(
            &mut t,
            "head-of-line blocking",
            format!(
                "{}, protocol {} ({streams}){}",
                self.transport,
                self.protocol,
                labelled(&self.label)
            ),
        );
        row(
            &mut t,
            "lossy path",
            format!(
                "{:.1}% loss and {} ms each way ({} ms round trip), {}",
                self.loss * 100.0,
                self.delay_ms,
                self.rtt_ms,
                self.path
            ),
        );
        row(
            &mut t,
            "rooms",
            format!(
                "quiet {} msgs/s throughout; busy off, then {} for {} s each; late: over {} ms",
                self.quiet_rate,
                self.phases
                    .iter()
                    .filter(|p| p.busy_rate > 0)
                    .map(|p| format!("{}/s", p.busy_rate))
                    .collect::<Vec<_>>()
                    .join(", "),
                self.phase_s,
                self.late_after_ms
            ),
        );
        for p in &self.phases {
            let q = &p.quiet_ms;
            let against_off = match (p.quiet_p90_vs_off, p.quiet_p50_over_off_ms) {
                (Some(ratio), Some(over)) => {
                    format!("; p90 {ratio:.2}× busy off's, p50 {over:+.2} ms")
                }
                _ => String::new(),
            };
            let name = match p.busy_rate {
                0 => "busy off".to_string(),
                rate => format!("busy {rate}/s"),
            };
            row(
                &mut t,
                &name,
                format!(
                    "quiet p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} msgs, {} late){against_off}",
                    q.p50, q.p90, q.p99, q.max, q.count, p.quiet_late
                ),
            );
            if p.busy_rate > 0 {
                row(
                    &mut t,
                    "",
                    format!(
                        "busy delivered {:.0}/s ({} sent at {}/s), p50 {:.2} ms  p90 {:.2} ms",
                        p.busy_delivered_per_s,
                        p.busy_sent,
                        p.busy_rate,
                        p.busy_ms.p50,
                        p.busy_ms.p90
                    ),
                );
            }
        }
        for (name, r) in [("quiet room", &self.quiet), ("busy room", &self.busy)] {
            row(
                &mut t,
                name,
                format!(
                    "{} sent, {} received, {} lost, {} duplicated, {} out of order",
                    r.sent, r.received, r.lost, r.duplicated, r.out_of_order
                ),
            );
        }
        let s = &self.relay;
        row(
            &mut t,
            "path packets",
            format!(
                "to the server {} forwarded, {} dropped; to the client {} forwarded, {} dropped",
                s.to_server.forwarded,
                s.to_server.dropped,
                s.to_client.forwarded,
                s.to_client.dropped
            ),
        );
        row(
            &mut t,
            "CPU",
            format!(
                "server {}, tool {}, other processes {}; UDP buffer drops {}",
                crate::opt(self.server_cpu_pct, "%"),
                crate::opt(self.tool_cpu_pct, "%"),
                crate::opt(self.other_cpu_pct, "%"),
                crate::opt(self.udp_buffer_drops, "")
            ),
        );
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_off_then_each_rate_with_a_drain_between() {
        let s = Duration::from_secs;
        let phases = schedule(&[250, 500], s(5), s(2));
        let keys: Vec<_> = phases
            .iter()
            .map(|p| (p.key.as_deref(), p.busy_rate))
            .collect();
        assert_eq!(
            keys,
            [
                (Some("busy_off"), 0),
                (Some("busy_250"), 250),
                (None, 0),
                (Some("busy_500"), 500)
            ]
        );
        let bounds: Vec<_> = phases.iter().map(|p| (p.from, p.to)).collect();
        assert_eq!(
            bounds,
            [(s(0), s(5)), (s(5), s(10)), (s(10), s(12)), (s(12), s(17))]
        );
        // No drain asked: the phases follow each other.
        assert_eq!(schedule(&[250, 500], s(5), s(0)).len(), 3);
    }

    #[test]
    fn sends_are_due_every_period_within_their_phase() {
        let start = Instant::now();
        let times = send_times(start, Duration::from_secs(5), Duration::from_secs(6), 250);
        assert_eq!(times.len(), 250);
        assert_eq!(times[0], start + Duration::from_secs(5));
        assert_eq!(times[1] - times[0], Duration::from_millis(4));
        assert!(*times.last().unwrap() < start + Duration::from_secs(6));
        // 300 a second for a second: 300, though 1 s ÷ 300 is no whole number of ns.
        let times = send_times(start, Duration::ZERO, Duration::from_secs(1), 300);
        assert_eq!(times.len(), 300);
    }

    #[test]
    fn urls_get_the_paths_address() {
        let via = Ipv4Addr::new(10, 227, 0, 3);
        assert_eq!(
            with_host("https://127.0.0.1:4433/wtchat", via).as_deref(),
            Some("https://10.227.0.3:4433/wtchat")
        );
        assert_eq!(
            with_host("ws://localhost:8080/wtchat/ws", via).as_deref(),
            Some("ws://10.227.0.3:8080/wtchat/ws")
        );
        assert_eq!(
            with_host("ws://[::1]/x", via).as_deref(),
            Some("ws://10.227.0.3/x")
        );
        assert_eq!(with_host("no url", via), None);
    }

    #[test]
    fn the_receiver_accounts_each_room_apart() {
        let mut account = Account::new(["r-quiet".into(), "r-busy".into()]);
        let frame = |text: &str| Got::Frame(1_000_000, text.as_bytes().to_vec());
        account
            .take(frame(r#"{"type":"hello","protocol":4}"#))
            .unwrap();
        assert_eq!(account.protocol, Some(4));
        account.take(Got::Stream).unwrap();
        account
            .take(frame(
                r#"{"type":"joined","room":"r-quiet","seq":0,"members":[]}"#,
            ))
            .unwrap();
        account
            .take(frame(
                r#"{"type":"joined","room":"r-busy","seq":7,"members":[]}"#,
            ))
            .unwrap();
        let message = |room: &str, seq: u64, sent: u64, n: u64| {
            frame(&format!(
                r#"{{"type":"message","room":"{room}","seq":{seq},"from":"x","text":"t={sent};p=0;n={n};xx"}}"#
            ))
        };
        for got in [
            message("r-quiet", 1, 400_000, 0),
            message("r-busy", 8, 500_000, 0),
            message("r-busy", 8, 500_000, 0),
            message("r-busy", 10, 600_000, 2),
        ] {
            account.take(got).unwrap();
        }
        assert_eq!(account.streams, 1);
        assert_eq!(account.rooms[0].got, [(400_000, 1_000_000)]);
        assert_eq!(account.received(0), 1);
        assert_eq!(account.received(1), 2);
        let busy = account.rooms[1].tally.as_ref().unwrap();
        assert_eq!((busy.duplicated, busy.lost), (1, 1));
        assert!(
            account
                .take(frame(r#"{"type":"bye","code":4001}"#))
                .is_err()
        );
        assert!(account.take(Got::Ended("reset".into())).is_err());
    }

    #[test]
    fn frames_name_their_room() {
        assert_eq!(
            room_of(br#"{"type":"message","room":"a-busy","text":"\"room\":\"no\""}"#),
            Some(&b"a-busy"[..])
        );
        assert_eq!(room_of(br#"{"type":"pong"}"#), None);
    }
}
