//! The simulated clients: one task per connection that connects, joins, and reads every
//! frame (over WebTransport of protocol 4, on every stream of the session); publishers have
//! a second task that sends. All of them share one [`Run`]: the plan, the phase of the run,
//! and per-client counters the main task and the monitor read.
//!
//! The receive path is the tool's hot loop (a fan-out run delivers up to a few hundred
//! thousand frames a second to it): it reads as many bytes as a buffer holds per call,
//! looks at each frame in place with byte searches, takes one clock reading per read
//! call, and records latencies into a histogram owned by the worker thread (one lock per
//! read, never contended). Nothing on it allocates per message (a room stream's read, of
//! protocol 4, allocates its place among the session's reads once per read).

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};

use crate::account::{self, Kind, Marker, Outcome, SendTimes, Tally};
use crate::http::{self, Poster};
use crate::ws;

/// Phases of a run, in order. Publishers send during `SEND`; readers return their tally at
/// `FINISH`.
pub const PHASE_CONNECT: u8 = 0;
pub const PHASE_SEND: u8 = 1;
pub const PHASE_STOP: u8 = 2;
pub const PHASE_FINISH: u8 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Ws,
    Wt,
    /// Server-Sent Events: frames down one streamed response, up as posts.
    Sse,
    /// Long polling: frames down as held `GET`s' answers, up as posts.
    Poll,
}

/// Where and how to reach one server (one node of the chat), from its `/wtchat/config`.
#[derive(Debug, Clone)]
pub struct Target {
    pub http: SocketAddr,
    pub ws_url: String,
    pub wt_url: String,
    pub wt_hashes: Vec<[u8; 32]>,
    /// Paths of the SSE stream (`GET`) and of a long-polling session's opening (`POST`).
    pub sse_path: String,
    pub poll_path: String,
}

/// What every client does; fixed for the run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The room (with `room_size`, or `rooms` above 1, the prefix of the rooms).
    pub room: String,
    /// 0: everyone in `room`; otherwise clients fill rooms `room-0`, `room-1`, … of this size.
    pub room_size: usize,
    /// With `room_size` 0: the rooms every client joins, `room` alone (1), or `room-0` …
    /// `room-(rooms-1)`, which the publishers send to in turn.
    pub rooms: usize,
    /// WebTransport clients speak protocol 4 (its `hello` first): the server opens a stream
    /// per joined room, which the client reads beside its own.
    pub room_streams: bool,
    /// Join a room after connecting (false: connect only).
    pub join: bool,
    /// Clients 0..publishers also publish.
    pub publishers: usize,
    /// Sends a publisher keeps unacknowledged (full-speed mode).
    pub window: u64,
    /// Messages per second over all publishers; 0 = full speed (window and lag bound).
    pub rate: f64,
    /// Filler bytes after the marker in each message text.
    pub pad: usize,
    /// Full speed only: publishers wait while the slowest member is more than this many
    /// messages behind what was sent (0: no bound).
    pub max_lag: u64,
    pub read_buffer: usize,
    pub udp_buffer: usize,
    /// Messages per publisher tracked for first/last delivery (rate mode); 0: none.
    pub track_per_publisher: usize,
}

/// Counters of one client, written by its tasks, read by the main task. Aligned to a
/// cache line so that two clients on two worker threads never share one.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct ClientStat {
    /// Distinct run messages received (replay excluded).
    pub received: AtomicU64,
    /// The highest message number received (the room's when it joined, until one comes).
    pub newest: AtomicU64,
    /// Frames of any kind received.
    pub frames: AtomicU64,
    /// `read` calls that returned data.
    pub reads: AtomicU64,
    /// Publishers: sends written, and acknowledgements received.
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    /// The `code` of a `bye` frame received (4001: too slow); 0 if none.
    pub bye: AtomicU32,
    pub errors: AtomicU32,
    /// `error` frames with code `rate_limited`: sends the server dropped.
    pub refused: AtomicU32,
    /// Unidirectional streams the server opened (protocol 4: one per joined room).
    pub streams: AtomicU32,
    /// 1 once joined (or connected, without join), 2 once its reader has ended.
    pub state: AtomicU32,
    /// Wakes the publisher when acknowledgements arrive.
    pub acks: Notify,
}

/// First and last delivery of one message over all its recipients (rate mode), in ns
/// since the tool started.
#[derive(Debug)]
pub struct MessageTrack {
    pub sent: AtomicU64,
    pub first: AtomicU64,
    pub last: AtomicU64,
}

/// Everything the clients share.
#[derive(Debug)]
pub struct Run {
    pub plan: Plan,
    /// The rooms everyone joins (with `room_size` 0), from the plan: a send's room is one of
    /// them, named once here rather than per send.
    rooms: Box<[String]>,
    /// The servers: nodes of one chat (one, unless the engine shares rooms between
    /// processes). Client `i` connects to node `i mod nodes`, so members and publishers
    /// are spread evenly over them.
    pub targets: Vec<Target>,
    /// The zero of every time in the run (markers carry nanoseconds since it).
    start: Instant,
    pub clients: Box<[ClientStat]>,
    /// Clients joined, and clients that failed to connect or join.
    pub ready: AtomicUsize,
    pub failed: AtomicUsize,
    pub progress: Notify,
    phase: watch::Sender<u8>,
    /// Sends written by all publishers.
    pub sent_total: AtomicU64,
    /// The fewest messages any live member has received (kept by the monitor).
    pub min_received: AtomicU64,
    /// Latencies are recorded for messages sent in [from, to) (ns since start).
    pub measure_from: AtomicU64,
    pub measure_to: AtomicU64,
    /// Time publishers spent waiting for the slowest member (`max_lag`), summed.
    pub gate_stall_ns: AtomicU64,
    /// The highest sequence number acknowledged to a publisher: the room's head as the
    /// tool knows it, from which the resumers count back.
    pub acked_head: AtomicU64,
    /// Bounds concurrent handshakes: a burst of thousands of SYNs or QUIC Initials at
    /// once overflows the server's accept queue and turns into retries.
    connect_slots: Arc<Semaphore>,
    pub tracks: Box<[MessageTrack]>,
    /// When each publisher sent its recent messages, to time their acknowledgements.
    pub send_times: SendTimes,
    /// A run whose members take turns (a reactions run, `react.rs`; a reads run,
    /// `reads.rs`): each sends its own frame when its turn comes, and the run hears what
    /// they read.
    pub turns: Option<Arc<dyn Turns>>,
}

/// What a run adds to the fan-out's members (reactions: `react.rs`, read marks:
/// `reads.rs`): each member's one frame of its own, sent when its turn comes (on the
/// run's [`Schedule`]), and the frames the members read that the fan-out does not count.
pub trait Turns: Send + Sync + std::fmt::Debug {
    /// When the members' turns come.
    fn schedule(&self) -> &Schedule;
    /// Member `idx`'s frame (JSON), sent at `now_ns` into `room`; `newest` is the highest
    /// message number the member has received (or the room's when it joined).
    fn frame(&self, room: &str, idx: usize, newest: u64, now_ns: u64) -> String;
    /// An `ack` member `idx` read at `now`: true when it answers its turn's frame (then it
    /// is not a send's).
    fn on_ack(&self, idx: usize, frame: &[u8], now: u64) -> bool;
    /// An `error` member `idx` read.
    fn on_error(&self, idx: usize, frame: &[u8]);
    /// Member `idx`'s `joined`.
    fn on_joined(&self, idx: usize, frame: &[u8]) {
        let _ = (idx, frame);
    }
    /// An `update` member `idx` read at `now`.
    fn on_update(&self, idx: usize, frame: &[u8], now: u64) {
        let _ = (idx, frame, now);
    }
    /// A `read` (read state) member `idx` read at `now`.
    fn on_read(&self, idx: usize, frame: &[u8], now: u64) {
        let _ = (idx, frame, now);
    }
    /// A `receipts` member `idx` read at `now`.
    fn on_receipts(&self, idx: usize, frame: &[u8], now: u64) {
        let _ = (idx, frame, now);
    }
}

/// When the members of a run of turns take theirs: members 0..takers, spread evenly over
/// `spread` from the moment the turns start.
#[derive(Debug)]
pub struct Schedule {
    takers: usize,
    spread: Duration,
    /// When the turns start (none yet).
    go: watch::Sender<Option<tokio::time::Instant>>,
}

impl Schedule {
    pub fn new(takers: usize, spread: Duration) -> Schedule {
        Schedule {
            takers,
            spread,
            go: watch::channel(None).0,
        }
    }

    /// How many members take a turn (the first ones).
    pub fn takers(&self) -> usize {
        self.takers
    }

    /// The turns start now.
    pub fn start(&self) {
        self.go.send_replace(Some(tokio::time::Instant::now()));
    }

    fn offset(&self, idx: usize) -> Duration {
        self.spread.mul_f64(idx as f64 / self.takers.max(1) as f64)
    }

    /// When member `idx`'s turn comes, once the turns have started (never, if it takes
    /// none).
    pub fn due(&self, idx: usize) -> Option<tokio::time::Instant> {
        let go = *self.go.borrow();
        go.filter(|_| idx < self.takers)
            .map(|at| at + self.offset(idx))
    }

    /// Waits for member `idx`'s turn; false if the turns never start or it takes none.
    pub async fn wait_turn(&self, idx: usize) -> bool {
        if idx >= self.takers {
            return false;
        }
        let mut go = self.go.subscribe();
        let start = loop {
            let now = *go.borrow_and_update();
            if let Some(at) = now {
                break at;
            }
            if go.changed().await.is_err() {
                return false;
            }
        };
        tokio::time::sleep_until(start + self.offset(idx)).await;
        true
    }
}

impl Run {
    /// `targets` must not be empty.
    pub fn new(plan: Plan, targets: Vec<Target>, clients: usize, concurrency: usize) -> Arc<Run> {
        Run::with_turns(plan, targets, clients, concurrency, None)
    }

    /// [`Run::new`], for a run whose members take `turns`.
    pub fn with_turns(
        plan: Plan,
        targets: Vec<Target>,
        clients: usize,
        concurrency: usize,
        turns: Option<Arc<dyn Turns>>,
    ) -> Arc<Run> {
        assert!(!targets.is_empty(), "a run needs a server");
        let tracks = (0..plan.publishers * plan.track_per_publisher)
            .map(|_| MessageTrack {
                sent: AtomicU64::new(u64::MAX),
                first: AtomicU64::new(u64::MAX),
                last: AtomicU64::new(0),
            })
            .collect();
        // Full speed keeps at most `window` sends unacknowledged; a fixed rate far fewer
        // than 1024 (unless the server stalls for minutes).
        let send_times = SendTimes::new(plan.publishers, (plan.window as usize).max(1024));
        let rooms = match plan.rooms {
            0 | 1 => vec![plan.room.clone()],
            k => (0..k).map(|i| format!("{}-{i}", plan.room)).collect(),
        };
        Arc::new(Run {
            rooms: rooms.into(),
            plan,
            targets,
            start: Instant::now(),
            clients: (0..clients).map(|_| ClientStat::default()).collect(),
            ready: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            progress: Notify::new(),
            phase: watch::channel(PHASE_CONNECT).0,
            sent_total: AtomicU64::new(0),
            min_received: AtomicU64::new(0),
            measure_from: AtomicU64::new(0),
            measure_to: AtomicU64::new(u64::MAX),
            gate_stall_ns: AtomicU64::new(0),
            acked_head: AtomicU64::new(0),
            connect_slots: Arc::new(Semaphore::new(concurrency.max(1))),
            tracks,
            send_times,
            turns,
        })
    }

    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn set_phase(&self, phase: u8) {
        self.phase.send_replace(phase);
    }

    pub fn phase(&self) -> u8 {
        *self.phase.borrow()
    }

    /// The node client `idx` connects to: round robin.
    pub fn target(&self, idx: usize) -> &Target {
        &self.targets[idx % self.targets.len()]
    }

    /// The rooms client `idx` joins.
    fn rooms_of(&self, idx: usize) -> Vec<String> {
        match self.plan.room_size {
            0 => self.rooms.to_vec(),
            size => vec![format!("{}-{}", self.plan.room, idx / size)],
        }
    }

    /// The room publisher `publisher` sends its message `counter` to.
    fn send_room(&self, publisher: u32, counter: u64) -> &str {
        &self.rooms[account::room_of(publisher, counter, self.rooms.len())]
    }

    /// Which of the rooms everyone joins a frame is about (with one, the room).
    fn room_index(&self, frame: &[u8]) -> Option<usize> {
        if self.rooms.len() == 1 {
            return Some(0);
        }
        account::room_index(frame, self.plan.room.as_bytes())
    }
}

/// What a client's reader returns at the end.
#[derive(Debug)]
pub struct ClientResult {
    pub transport: Transport,
    /// None if it never joined.
    pub tally: Option<Tally>,
    pub error: Option<String>,
}

// --- latency histograms, one pair per worker thread ----------------------------------

/// Latencies of messages sent in the measured window, in ns.
pub struct Latencies {
    /// Send to receipt, for every recipient.
    pub delivery: Histogram<u64>,
    /// Send to the sender's `ack`.
    pub ack: Histogram<u64>,
}

impl Latencies {
    fn new() -> Latencies {
        Latencies {
            delivery: new_histogram(),
            ack: new_histogram(),
        }
    }
}

/// Every thread's histograms, for the report to merge.
static HISTOGRAMS: Mutex<Vec<Arc<Mutex<Latencies>>>> = Mutex::new(Vec::new());

thread_local! {
    /// This worker thread's histograms: only its own thread records into them, so their
    /// lock is never contended (the report reads them once, at the end).
    static LOCAL: Arc<Mutex<Latencies>> = {
        let h = Arc::new(Mutex::new(Latencies::new()));
        HISTOGRAMS.lock().unwrap().push(h.clone());
        h
    };
}

/// Nanoseconds from 1 µs to 100 s at 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// All latencies recorded so far, merged.
pub fn merged_latencies() -> Latencies {
    let mut total = Latencies::new();
    for h in HISTOGRAMS.lock().unwrap().iter() {
        let h = h.lock().unwrap();
        let _ = total.delivery.add(&h.delivery);
        let _ = total.ack.add(&h.ack);
    }
    total
}

// --- one client --------------------------------------------------------------------------

/// Runs client `idx` until the run finishes or its connection ends.
pub async fn client(run: Arc<Run>, idx: usize, transport: Transport) -> ClientResult {
    let fail = |run: &Run, error: String| {
        run.failed.fetch_add(1, Relaxed);
        run.progress.notify_one();
        ClientResult {
            transport,
            tally: None,
            error: Some(error),
        }
    };
    let permit = match run.connect_slots.clone().acquire_owned().await {
        Ok(p) => p,
        Err(e) => return fail(&run, e.to_string()),
    };
    let publisher = idx < run.plan.publishers;
    let name = if publisher {
        format!("p{idx}")
    } else {
        format!("s{idx}")
    };
    // The joins, one line each.
    let join = run.plan.join.then(|| {
        run.rooms_of(idx)
            .iter()
            .map(|room| format!(r#"{{"type":"join","room":"{room}","name":"{name}"}}"#) + "\n")
            .collect::<String>()
    });
    let mut reader = Reader::new(run.clone(), idx, permit);
    let result = match transport {
        Transport::Ws => run_ws(&run, idx, join.as_deref(), publisher, &mut reader).await,
        Transport::Wt => run_wt(&run, idx, join.as_deref(), publisher, &mut reader).await,
        Transport::Sse => run_sse(&run, idx, join.as_deref(), publisher, &mut reader).await,
        Transport::Poll => run_poll(&run, idx, join.as_deref(), publisher, &mut reader).await,
    };
    run.clients[idx].state.store(2, Relaxed);
    match result {
        // Failed before it was ready: it never counted as connected.
        Err(e) if !reader.counted_ready => fail(&run, e.to_string()),
        result => ClientResult {
            transport,
            tally: reader.tally.take(),
            error: result.err().map(|e| e.to_string()),
        },
    }
}

async fn run_ws(
    run: &Arc<Run>,
    idx: usize,
    join: Option<&str>,
    publisher: bool,
    reader: &mut Reader,
) -> io::Result<()> {
    let target = run.target(idx);
    let mut tcp = ws::connect(target.http, &target.ws_url).await?;
    if let Some(join) = join {
        let mut frames = Vec::with_capacity(join.len() + 8);
        for line in join.lines() {
            ws::encode_frame(&mut frames, ws::OP_TEXT, line.as_bytes());
        }
        tcp.write_all(&frames).await?;
    } else {
        reader.mark_ready();
    }
    let (rd, wr) = tcp.into_split();
    // A subscriber keeps its write half unused: dropping it would send FIN, and the server
    // would end the session.
    let (_keep, writer) =
        spawn_publisher(run, idx, publisher, Outlet::Stream(wr, Framing::WebSocket));
    let result = read_ws(rd, reader).await;
    if let Some(writer) = writer {
        writer.abort();
    }
    result
}

async fn run_wt(
    run: &Arc<Run>,
    idx: usize,
    join: Option<&str>,
    publisher: bool,
    reader: &mut Reader,
) -> io::Result<()> {
    let target = run.target(idx);
    let conn = crate::wt::connect(&target.wt_url, &target.wt_hashes, run.plan.udp_buffer).await?;
    let crate::wt::Session {
        endpoint: _endpoint,
        connection,
        mut send,
        recv,
    } = conn;
    // Protocol 4 is asked for before the joins, so that their rooms get streams (a server
    // that answers with an older version sends everything on this stream, as to no hello).
    let hello = if run.plan.room_streams {
        HELLO_ROOM_STREAMS
    } else {
        ""
    };
    let first = [hello, join.unwrap_or_default()].concat();
    if !first.is_empty() {
        send.write_all(first.as_bytes())
            .await
            .map_err(io::Error::other)?;
    }
    if join.is_none() {
        reader.mark_ready();
    }
    // As over WebSocket: dropping the send half would finish the stream and end the session.
    let (_keep, writer) =
        spawn_publisher(run, idx, publisher, Outlet::Stream(send, Framing::Lines));
    let result = if run.plan.room_streams {
        read_streams(&connection, recv, reader).await
    } else {
        read_lines(recv, reader).await
    };
    if let Some(writer) = writer {
        writer.abort();
    }
    // A stream error says little ("not connected"); the connection knows why it closed
    // (timed out, closed by the server with a code, reset).
    result.map_err(|e| match connection.quic_connection().close_reason() {
        Some(reason) => io::Error::other(format!("{e}: {reason}")),
        None => e,
    })
}

/// The `hello` of a client that reads a stream per room.
const HELLO_ROOM_STREAMS: &str = "{\"type\":\"hello\",\"protocol\":4}\n";

/// Spawns the publishing task of a publisher; otherwise hands the outlet back to be kept
/// alive.
fn spawn_publisher<W: AsyncWrite + Unpin + Send + 'static>(
    run: &Arc<Run>,
    idx: usize,
    publisher: bool,
    outlet: Outlet<W>,
) -> (Option<Outlet<W>>, Option<tokio::task::JoinHandle<()>>) {
    if publisher {
        let run = run.clone();
        let handle = tokio::spawn(async move {
            let mut outlet = outlet;
            // A publisher stops when its connection fails; the reader reports that.
            let _ = publish(&run, idx, &mut outlet).await;
            // Dropping the write half would close the connection while its last messages
            // are still being delivered to it: hold it until the reader, once done, aborts
            // this task.
            std::future::pending::<()>().await;
            drop(outlet);
        });
        (None, Some(handle))
    } else if run.turns.is_some() {
        // A member of a run of turns (reactions, read marks): its one frame, when its
        // turn comes.
        let run = run.clone();
        let handle = tokio::spawn(async move {
            let mut outlet = outlet;
            let _ = react_once(&run, idx, &mut outlet).await;
            // As a publisher's: the reader aborts this task once done.
            std::future::pending::<()>().await;
            drop(outlet);
        });
        (None, Some(handle))
    } else {
        (Some(outlet), None)
    }
}

/// Client `idx` over Server-Sent Events: opens the stream, reads its `session` event for
/// where to post, posts its join there (on a connection of its own, closed after it), then
/// reads the stream. A publisher posts its sends on a keep-alive connection of its own.
async fn run_sse(
    run: &Arc<Run>,
    idx: usize,
    join: Option<&str>,
    publisher: bool,
    reader: &mut Reader,
) -> io::Result<()> {
    let target = run.target(idx);
    let mut tcp = http::connect(target.http).await?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-store\r\n\r\n",
        target.sse_path, target.http
    );
    tcp.write_all(request.as_bytes()).await?;
    let mut raw = ReadBuf::new(run.plan.read_buffer);
    let head = loop {
        if let Some(head) = http::parse_head(raw.data())? {
            break head;
        }
        let n = tcp.read(raw.space(None)).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        raw.end += n;
    };
    if head.status != 200 {
        return Err(io::Error::other(format!(
            "GET {}: HTTP {}",
            target.sse_path, head.status
        )));
    }
    let mut events = match head.body {
        http::Body::Chunked => http::EventStream::new(true),
        http::Body::UntilClose => http::EventStream::new(false),
        http::Body::Length(_) => return Err(io::Error::other("SSE: not a stream")),
    };
    raw.consume(head.len);
    // The first event: `{"type":"session","post":"/wtchat/sse/ID","secret":"…"}`.
    let (post, secret) = loop {
        let used = events.feed(raw.data())?;
        raw.consume(used);
        let mut session = None;
        events.data_lines(|data| {
            if session.is_none() {
                session = Some(data.to_vec());
            }
        });
        if let Some(session) = session {
            let post = http::json_str(&session, "post")
                .ok_or_else(|| io::Error::other("SSE: no session event first"))?;
            break (post, http::json_str(&session, "secret"));
        }
        if events.ended() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let n = tcp.read(raw.space(None)).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        raw.end += n;
    };
    match join {
        Some(join) => {
            http::post_once(target.http, &post, secret.as_deref(), join.as_bytes()).await?
        }
        None => reader.mark_ready(),
    }
    let writer = publisher.then(|| {
        let poster = Box::new(Poster::new(target.http, post, secret));
        spawn_publisher(run, idx, true, Outlet::<tokio::io::Sink>::Post(poster)).1
    });
    let result = read_sse(tcp, raw, events, reader).await;
    if let Some(Some(writer)) = writer {
        writer.abort();
    }
    result
}

/// Client `idx` over long polling: opens a session (`POST`), posts its join on the same
/// keep-alive connection, then polls on it, each poll from the last frame it got, as the
/// browser client does. A publisher posts its sends on a keep-alive connection of its own.
async fn run_poll(
    run: &Arc<Run>,
    idx: usize,
    join: Option<&str>,
    publisher: bool,
    reader: &mut Reader,
) -> io::Result<()> {
    let target = run.target(idx);
    let host = target.http.to_string();
    let mut tcp = http::connect(target.http).await?;
    let mut request = Vec::with_capacity(512);
    let mut response = Vec::new();
    http::post_request(&mut request, &host, &target.poll_path, None, b"", false);
    let (head, body) = http::exchange(&mut tcp, &request, &mut response).await?;
    if head.status != 200 {
        return Err(io::Error::other(format!(
            "POST {}: HTTP {}",
            target.poll_path, head.status
        )));
    }
    let session = &response[body];
    let (Some(post), Some(poll)) = (
        http::json_str(session, "post"),
        http::json_str(session, "poll"),
    ) else {
        return Err(io::Error::other("long polling: no session"));
    };
    let secret = http::json_str(session, "secret");
    if head.close {
        tcp = http::connect(target.http).await?;
    }
    match join {
        Some(join) => {
            request.clear();
            http::post_request(
                &mut request,
                &host,
                &post,
                secret.as_deref(),
                join.as_bytes(),
                false,
            );
            let (head, _) = http::exchange(&mut tcp, &request, &mut response).await?;
            if head.status != 204 && head.status != 202 {
                return Err(io::Error::other(format!(
                    "POST {post}: HTTP {}",
                    head.status
                )));
            }
            if head.close {
                tcp = http::connect(target.http).await?;
            }
        }
        None => reader.mark_ready(),
    }
    let writer = publisher.then(|| {
        let poster = Box::new(Poster::new(target.http, post, secret.clone()));
        spawn_publisher(run, idx, true, Outlet::<tokio::io::Sink>::Post(poster)).1
    });
    let result = read_poll(tcp, &poll, secret.as_deref(), &host, reader).await;
    if let Some(Some(writer)) = writer {
        writer.abort();
    }
    result
}

/// A growable read buffer with a window of unconsumed bytes.
pub struct ReadBuf {
    buf: Vec<u8>,
    start: usize,
    pub end: usize,
    /// The size it was made with, and goes back to once a large frame has been read.
    size: usize,
}

impl ReadBuf {
    pub fn new(size: usize) -> ReadBuf {
        let size = size.max(512);
        ReadBuf {
            buf: vec![0; size],
            start: 0,
            end: 0,
            size,
        }
    }

    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            // A `joined` listing thousands of members grew it to hundreds of KiB: with
            // thousands of connections, keeping that would take the tool's memory.
            if self.buf.len() > 4 * self.size {
                self.buf = vec![0; self.size];
            }
        }
    }

    /// Free space to read into, making room for a frame of `need` bytes when known (a
    /// `joined` frame lists every member: tens of KiB in a big room).
    pub fn space(&mut self, need: Option<usize>) -> &mut [u8] {
        let need = need.unwrap_or(0);
        if self.end == self.buf.len() || self.buf.len() - self.start < need {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() || self.buf.len() < need {
            let size = (self.buf.len() * 2).max(need);
            self.buf.resize(size, 0);
        }
        &mut self.buf[self.end..]
    }
}

/// Reads raw WebSocket frames until the run finishes or the connection ends.
async fn read_ws<R: AsyncRead + Unpin>(mut rd: R, reader: &mut Reader) -> io::Result<()> {
    let mut phase = reader.run.phase.subscribe();
    let mut buf = ReadBuf::new(reader.run.plan.read_buffer);
    // The size of a frame only partly read, once its header says it.
    let mut need = None;
    // A message split over continuation frames (the server does not fragment; a peer may).
    let mut fragments: Vec<u8> = Vec::new();
    loop {
        let n = tokio::select! {
            biased;
            n = rd.read(buf.space(need)) => n?,
            _ = phase.changed() => {
                if *phase.borrow() == PHASE_FINISH {
                    return Ok(());
                }
                continue;
            }
        };
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.end += n;
        let now = reader.run.now_ns();
        loop {
            match ws::parse_frame(buf.data()) {
                Ok(frame) => {
                    let payload = &buf.data()[frame.payload.0..frame.payload.1];
                    match frame.opcode {
                        ws::OP_TEXT if frame.fin => reader.on_frame(payload, now),
                        ws::OP_TEXT => fragments = payload.to_vec(),
                        ws::OP_CONTINUATION => {
                            fragments.extend_from_slice(payload);
                            if frame.fin {
                                reader.on_frame(&fragments, now);
                            }
                        }
                        ws::OP_CLOSE => {
                            let code = payload
                                .get(..2)
                                .map_or(0, |c| u16::from_be_bytes([c[0], c[1]]));
                            reader.on_close(code);
                            reader.end_batch();
                            return Err(io::Error::other(format!("closed by server ({code})")));
                        }
                        // The server sends no pings (browsers cannot answer them from JS
                        // anyway); binary frames are not part of the protocol.
                        _ => {}
                    }
                    buf.consume(frame.total);
                }
                Err(ws::Incomplete::More { need: n }) => {
                    need = n;
                    break;
                }
                Err(ws::Incomplete::Masked) => {
                    return Err(io::Error::other("masked frame from the server"));
                }
            }
        }
        reader.end_batch();
    }
}

/// One WebTransport stream of `\n`-terminated frames, and what was read of it.
pub struct Lines {
    recv: wtransport::RecvStream,
    buf: ReadBuf,
    /// Unconsumed bytes already known to hold no line end (a long line arrives in pieces).
    scanned: usize,
}

impl Lines {
    pub fn new(recv: wtransport::RecvStream, read_buffer: usize) -> Lines {
        Lines {
            recv,
            buf: ReadBuf::new(read_buffer),
            scanned: 0,
        }
    }

    /// Reads what the stream has; false once it has ended. Cancel-safe: nothing is read
    /// unless it resolves.
    pub async fn read(&mut self) -> io::Result<bool> {
        match self.recv.read(self.buf.space(None)).await {
            Ok(Some(n)) => {
                self.buf.end += n;
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => Err(io::Error::other(e)),
        }
    }

    /// Hands every whole frame read to `reader`, as one read stamped now.
    fn hand_out(&mut self, reader: &mut Reader) {
        let now = reader.run.now_ns();
        self.each_frame(|frame| {
            reader.on_frame(frame, now);
            true
        });
        reader.end_batch();
    }

    /// Calls `take` with every whole frame read (without its `\n`), in order, until it says
    /// false (the frames after that one stay for the next call).
    pub fn each_frame(&mut self, mut take: impl FnMut(&[u8]) -> bool) {
        while let Some(pos) = next_line(self.buf.data(), &mut self.scanned) {
            let more = take(&self.buf.data()[..pos]);
            self.buf.consume(pos + 1);
            if !more {
                return;
            }
        }
    }

    /// Reads once, handing its stream back with what it got: the read of a room's stream
    /// (protocol 4), which waits among the others' in [`read_streams`].
    async fn read_owned(mut self) -> (Lines, io::Result<bool>) {
        let more = self.read().await;
        (self, more)
    }
}

/// Reads `\n`-terminated frames (WebTransport) until the run finishes or the stream ends.
async fn read_lines(recv: wtransport::RecvStream, reader: &mut Reader) -> io::Result<()> {
    let mut phase = reader.run.phase.subscribe();
    let mut lines = Lines::new(recv, reader.run.plan.read_buffer);
    loop {
        let more = tokio::select! {
            biased;
            more = lines.read() => more?,
            _ = phase.changed() => {
                if *phase.borrow() == PHASE_FINISH {
                    return Ok(());
                }
                continue;
            }
        };
        if !more {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        lines.hand_out(reader);
    }
}

/// Reads a session of protocol 4 until the run finishes or its own stream ends: that
/// stream (`session`), and every unidirectional stream the server opens, one per joined
/// room, each finished after the room's `left`. All in this one task, into the one
/// `reader`: a task and a channel per stream would cost the tool, which shares the
/// machine with the server, more than the streams cost the server. Each frame is whole
/// on its stream, so each stream keeps its own buffer. Against a server that speaks an
/// older version no stream is opened, and this reads the session's stream alone.
async fn read_streams(
    connection: &wtransport::Connection,
    session: wtransport::RecvStream,
    reader: &mut Reader,
) -> io::Result<()> {
    let mut phase = reader.run.phase.subscribe();
    let size = reader.run.plan.read_buffer;
    let mut session = Lines::new(session, size);
    // Each room stream's read owns the stream while it waits: only the streams with data
    // are polled, however many rooms there are.
    let mut rooms = FuturesUnordered::new();
    let accept = connection.accept_uni();
    tokio::pin!(accept);
    loop {
        tokio::select! {
            biased;
            more = session.read() => {
                if !more? {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                session.hand_out(reader);
            }
            Some((mut room, more)) = rooms.next() => {
                // A room's stream that ended (after its `left`) is dropped. (`hand_out`
                // by its path: the set's type is only known from the pushes below.)
                if more? {
                    Lines::hand_out(&mut room, reader);
                    rooms.push(room.read_owned());
                }
            }
            stream = &mut accept => {
                rooms.push(Lines::new(stream.map_err(io::Error::other)?, size).read_owned());
                reader.run.clients[reader.idx].streams.fetch_add(1, Relaxed);
                accept.set(connection.accept_uni());
            }
            _ = phase.changed() => {
                if *phase.borrow() == PHASE_FINISH {
                    return Ok(());
                }
            }
        }
    }
}

/// Reads an event stream (SSE) until the run finishes or the stream ends: `raw` holds what
/// was read past the head, `events` what was decoded and not handed out yet.
async fn read_sse(
    mut tcp: tokio::net::TcpStream,
    mut raw: ReadBuf,
    mut events: http::EventStream,
    reader: &mut Reader,
) -> io::Result<()> {
    let mut phase = reader.run.phase.subscribe();
    let mut first = true;
    loop {
        if !first {
            let n = tokio::select! {
                biased;
                n = tcp.read(raw.space(None)) => n?,
                _ = phase.changed() => {
                    if *phase.borrow() == PHASE_FINISH {
                        return Ok(());
                    }
                    continue;
                }
            };
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            raw.end += n;
        }
        first = false;
        let used = events.feed(raw.data())?;
        raw.consume(used);
        let now = reader.run.now_ns();
        events.data_lines(|frame| reader.on_frame(frame, now));
        reader.end_batch();
        if events.ended() {
            return Err(io::Error::other("the event stream ended"));
        }
    }
}

/// Polls (`GET poll?after=N`, on the keep-alive connection `tcp`, bearing `secret`) until
/// the run finishes or the session is over; each answer's frames are handed out where they
/// lie in the buffer. (`after` in the query, which every server reads; the browser client
/// sends it in a header, which costs the server the same.)
async fn read_poll(
    mut tcp: tokio::net::TcpStream,
    poll: &str,
    secret: Option<&str>,
    host: &str,
    reader: &mut Reader,
) -> io::Result<()> {
    use std::io::Write;
    let mut phase = reader.run.phase.subscribe();
    let mut buf = ReadBuf::new(reader.run.plan.read_buffer);
    let mut request = Vec::with_capacity(poll.len() + host.len() + 64);
    let mut after = 0u64;
    loop {
        request.clear();
        let _ = write!(
            request,
            "GET {poll}?after={after} HTTP/1.1\r\nHost: {host}\r\n"
        );
        http::secret_header(&mut request, secret);
        request.extend_from_slice(b"\r\n");
        tcp.write_all(&request).await?;
        // The whole answer: its head, then its body (the head says how long).
        let mut need = None;
        let (head, body_len) = loop {
            if let Some(head) = http::parse_head(buf.data())? {
                let http::Body::Length(len) = head.body else {
                    return Err(io::Error::other("poll: an answer without a length"));
                };
                if buf.data().len() >= head.len + len {
                    break (head, len);
                }
                need = Some(head.len + len);
            }
            let n = tokio::select! {
                biased;
                n = tcp.read(buf.space(need)) => n?,
                _ = phase.changed() => {
                    if *phase.borrow() == PHASE_FINISH {
                        return Ok(());
                    }
                    continue;
                }
            };
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            buf.end += n;
        };
        let now = reader.run.now_ns();
        if head.status != 200 {
            // 404: the session is over (after its `bye`, if it had one).
            return Err(io::Error::other(format!(
                "GET {poll}: HTTP {}",
                head.status
            )));
        }
        let body = &buf.data()[head.len..head.len + body_len];
        after = http::poll_frames(body, |frame| reader.on_frame(frame, now))
            .ok_or_else(|| io::Error::other("poll: not a poll answer"))?;
        buf.consume(head.len + body_len);
        reader.end_batch();
        if head.close {
            return Err(io::Error::other("poll: the server closed the connection"));
        }
    }
}

/// Where the first line of `data` ends, looking only past the `scanned` bytes known to hold
/// no line end; once none is found, all of `data` is scanned. Lines never straddle what was
/// scanned: `data` starts at the unconsumed start, which is at most one partial line, so a
/// `joined` of hundreds of KiB read in packets is scanned once, not once per packet.
pub fn next_line(data: &[u8], scanned: &mut usize) -> Option<usize> {
    match data[*scanned..].iter().position(|&b| b == b'\n') {
        Some(at) => {
            let pos = *scanned + at;
            *scanned = 0;
            Some(pos)
        }
        None => {
            *scanned = data.len();
            None
        }
    }
}

/// The per-connection receive state: the tally, and what it hands out per read.
struct Reader {
    run: Arc<Run>,
    idx: usize,
    /// Held until joined, so that connecting is bounded.
    permit: Option<OwnedSemaphorePermit>,
    counted_ready: bool,
    tally: Option<Tally>,
    /// Latencies of this read (deliveries, acks), recorded into the thread's histograms at
    /// its end.
    latencies: Vec<u64>,
    ack_latencies: Vec<u64>,
    frames: u64,
    reads: u64,
    acks: u64,
    new_acks: bool,
}

impl Reader {
    fn new(run: Arc<Run>, idx: usize, permit: OwnedSemaphorePermit) -> Reader {
        Reader {
            run,
            idx,
            permit: Some(permit),
            counted_ready: false,
            tally: None,
            latencies: Vec::new(),
            ack_latencies: Vec::new(),
            frames: 0,
            reads: 0,
            acks: 0,
            new_acks: false,
        }
    }

    fn mark_ready(&mut self) {
        self.permit = None;
        self.counted_ready = true;
        self.run.clients[self.idx].state.store(1, Relaxed);
        self.run.ready.fetch_add(1, Relaxed);
        self.run.progress.notify_one();
    }

    fn on_frame(&mut self, frame: &[u8], now: u64) {
        self.frames += 1;
        match account::kind(frame) {
            Kind::Message => self.on_message(frame, now),
            Kind::Ack => {
                // A turn's ack (a reaction's) is not a send's: counted apart.
                if let Some(r) = &self.run.turns
                    && r.on_ack(self.idx, frame, now)
                {
                    return;
                }
                self.acks += 1;
                self.new_acks = true;
                self.on_ack(frame, now);
            }
            Kind::Joined => {
                let seq = account::u64_after(frame, account::SEQ_KEY).unwrap_or(0);
                let (publishers, rooms) = (self.run.plan.publishers, self.run.rooms.len());
                let room = self.run.room_index(frame).unwrap_or(usize::MAX);
                let all = self
                    .tally
                    .get_or_insert_with(|| Tally::new(publishers, rooms))
                    .joined(room, seq);
                if let Some(r) = &self.run.turns {
                    r.on_joined(self.idx, frame);
                }
                // Ready once in every room (until then it holds its connect permit).
                if all && !self.counted_ready {
                    self.mark_ready();
                }
            }
            Kind::Error => {
                let stat = &self.run.clients[self.idx];
                stat.errors.fetch_add(1, Relaxed);
                if account::find(frame, b"\"rate_limited\"").is_some() {
                    stat.refused.fetch_add(1, Relaxed);
                }
                if let Some(r) = &self.run.turns {
                    r.on_error(self.idx, frame);
                }
            }
            Kind::Update => {
                if let Some(r) = &self.run.turns {
                    r.on_update(self.idx, frame, now);
                }
            }
            Kind::Read => {
                if let Some(r) = &self.run.turns {
                    r.on_read(self.idx, frame, now);
                }
            }
            Kind::Receipts => {
                if let Some(r) = &self.run.turns {
                    r.on_receipts(self.idx, frame, now);
                }
            }
            Kind::Bye => {
                let code = account::u64_after(frame, b"\"code\":").unwrap_or(1);
                self.on_close(code as u16);
            }
            // Presence, and what the fan-out does not look at (`mention`, answers to
            // requests the tool does not make).
            Kind::Presence | Kind::Other => {}
        }
    }

    fn on_close(&self, code: u16) {
        let _ =
            self.run.clients[self.idx]
                .bye
                .compare_exchange(0, u32::from(code), Relaxed, Relaxed);
    }

    fn on_message(&mut self, frame: &[u8], now: u64) {
        let (Some(tally), Some(seq), Some(m)) = (
            self.tally.as_mut(),
            account::u64_after(frame, account::SEQ_KEY),
            account::parse_marker(frame),
        ) else {
            return;
        };
        // A room that is not the run's is out of range: the tally counts it foreign.
        let room = self.run.room_index(frame).unwrap_or(usize::MAX);
        if !matches!(
            tally.record(room, seq, &m),
            Outcome::New | Outcome::AfterGap { .. }
        ) {
            return;
        }
        let latency = now.saturating_sub(m.sent_ns);
        let run = &*self.run;
        if m.sent_ns >= run.measure_from.load(Relaxed) && m.sent_ns < run.measure_to.load(Relaxed) {
            self.latencies.push(latency);
        }
        let per = run.plan.track_per_publisher;
        if per > 0 && (m.counter as usize) < per {
            let track = &run.tracks[m.publisher as usize * per + m.counter as usize];
            track.sent.store(m.sent_ns, Relaxed);
            track.first.fetch_min(now, Relaxed);
            track.last.fetch_max(now, Relaxed);
        }
    }

    /// Times an acknowledgement of a message sent in the window.
    fn on_ack(&mut self, frame: &[u8], now: u64) {
        let run = &*self.run;
        if let Some(seq) = account::u64_after(frame, account::SEQ_KEY) {
            run.acked_head.fetch_max(seq, Relaxed);
        }
        let Some(sent) =
            account::parse_ack_id(frame).and_then(|(p, n)| run.send_times.sent_at(p, n))
        else {
            return;
        };
        if sent >= run.measure_from.load(Relaxed) && sent < run.measure_to.load(Relaxed) {
            self.ack_latencies.push(now.saturating_sub(sent));
        }
    }

    /// After each read: publish counters, wake the publisher, record latencies.
    fn end_batch(&mut self) {
        self.reads += 1;
        let stat = &self.run.clients[self.idx];
        stat.frames.store(self.frames, Relaxed);
        stat.reads.store(self.reads, Relaxed);
        if let Some(tally) = &self.tally {
            stat.received.store(tally.received, Relaxed);
            stat.newest.store(tally.newest(), Relaxed);
        }
        if self.new_acks {
            self.new_acks = false;
            stat.acked.store(self.acks, Relaxed);
            stat.acks.notify_one();
        }
        if !self.latencies.is_empty() || !self.ack_latencies.is_empty() {
            LOCAL.with(|h| {
                let mut h = h.lock().unwrap();
                for &v in &self.latencies {
                    h.delivery.saturating_record(v.max(1_000));
                }
                for &v in &self.ack_latencies {
                    h.ack.saturating_record(v.max(1_000));
                }
            });
            self.latencies.clear();
            self.ack_latencies.clear();
        }
    }
}

// --- publishing -------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
pub enum Framing {
    WebSocket,
    Lines,
}

/// Where a publisher's sends go.
enum Outlet<W> {
    /// Written on its connection (WebSocket frames, or WebTransport lines).
    Stream(W, Framing),
    /// Posted, one frame per line (SSE, long polling).
    Post(Box<Poster>),
}

impl<W: AsyncWrite + Unpin> Outlet<W> {
    fn framing(&self) -> Framing {
        match self {
            Outlet::Stream(_, framing) => *framing,
            Outlet::Post(_) => Framing::Lines,
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Outlet::Stream(wr, _) => {
                wr.write_all(bytes).await?;
                wr.flush().await
            }
            Outlet::Post(poster) => poster.post(bytes).await,
        }
    }
}

thread_local! {
    /// Reused by `build_send`; never shared across an await.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Appends one `send` frame, framed for the transport, to `out`.
pub fn build_send(out: &mut Vec<u8>, room: &str, m: Marker, pad: usize, framing: Framing) {
    SCRATCH.with(|json| {
        let mut json = json.borrow_mut();
        let json = &mut *json;
        let dst = match framing {
            Framing::WebSocket => {
                json.clear();
                &mut *json
            }
            Framing::Lines => &mut *out,
        };
        dst.extend_from_slice(b"{\"type\":\"send\",\"room\":\"");
        dst.extend_from_slice(room.as_bytes());
        dst.extend_from_slice(b"\",\"text\":\"");
        account::write_marker(dst, m, pad);
        use std::io::Write;
        let _ = write!(dst, "\",\"id\":\"{}-{}\"}}", m.publisher, m.counter);
        match framing {
            Framing::WebSocket => ws::encode_frame(out, ws::OP_TEXT, json),
            Framing::Lines => out.push(b'\n'),
        }
    });
}

/// Appends one frame holding `json`, framed for the transport, to `out`.
fn frame_into(out: &mut Vec<u8>, json: &[u8], framing: Framing) {
    match framing {
        Framing::WebSocket => ws::encode_frame(out, ws::OP_TEXT, json),
        Framing::Lines => {
            out.extend_from_slice(json);
            out.push(b'\n');
        }
    }
}

/// Member `idx` of a run of turns (not the publisher): once the turns start, waits for its
/// own and sends its frame.
async fn react_once<W: AsyncWrite + Unpin>(
    run: &Run,
    idx: usize,
    outlet: &mut Outlet<W>,
) -> io::Result<()> {
    let Some(r) = &run.turns else {
        return Ok(());
    };
    if !r.schedule().wait_turn(idx).await {
        return Ok(());
    }
    let mut out = Vec::with_capacity(128);
    let newest = run.clients[idx].newest.load(Relaxed);
    let json = r.frame(&run.plan.room, idx, newest, run.now_ns());
    frame_into(&mut out, json.as_bytes(), outlet.framing());
    outlet.send(&out).await
}

/// Publisher `idx`: waits for the send phase, then sends at its share of the rate, or as
/// fast as its window of unacknowledged sends (and the slowest member) allows.
async fn publish<W: AsyncWrite + Unpin>(
    run: &Run,
    idx: usize,
    outlet: &mut Outlet<W>,
) -> io::Result<()> {
    let mut phase = run.phase.subscribe();
    while *phase.borrow_and_update() < PHASE_SEND {
        if phase.changed().await.is_err() {
            return Ok(());
        }
    }
    let plan = &run.plan;
    let stat = &run.clients[idx];
    let publisher = idx as u32;
    let framing = outlet.framing();
    // A post takes a round trip, during which the next sends may fall due: those go together
    // in the next post (as the browser client's do), each with its own intended time. On a
    // stream each is written on its own, as soon as it is due.
    let catch_up = matches!(outlet, Outlet::Post(_));
    let mut counter = 0u64;
    let mut reacted = false;
    let mut out = Vec::with_capacity(4096);
    // The send time of each message of this turn.
    let mut due: Vec<u64> = Vec::with_capacity(plan.window as usize);
    // Rate mode: each publisher sends every `period`, the publishers evenly staggered.
    let period =
        (plan.rate > 0.0).then(|| Duration::from_secs_f64(plan.publishers as f64 / plan.rate));
    let mut next = tokio::time::Instant::now()
        + period.map_or(Duration::ZERO, |p| {
            p.mul_f64(idx as f64 / plan.publishers as f64)
        });
    loop {
        if run.phase() >= PHASE_STOP {
            return Ok(());
        }
        due.clear();
        match period {
            Some(period) => {
                tokio::time::sleep_until(next).await;
                if run.phase() >= PHASE_STOP {
                    return Ok(());
                }
                let (now, now_ns) = (tokio::time::Instant::now(), run.now_ns());
                loop {
                    // The intended send time, not the actual one: a late tool must show up
                    // as latency, not hide it (coordinated omission).
                    let late = now.saturating_duration_since(next).as_nanos() as u64;
                    due.push(now_ns.saturating_sub(late));
                    next += period;
                    if !catch_up || next > now || due.len() >= http::MAX_FRAMES_PER_POST {
                        break;
                    }
                }
            }
            None => {
                let outstanding = loop {
                    let outstanding = counter - stat.acked.load(Relaxed);
                    if outstanding < plan.window {
                        break outstanding;
                    }
                    stat.acks.notified().await;
                    if run.phase() >= PHASE_STOP {
                        return Ok(());
                    }
                };
                if plan.max_lag > 0 {
                    let stalled = Instant::now();
                    let mut waited = false;
                    while run.sent_total.load(Relaxed)
                        > run.min_received.load(Relaxed) + plan.max_lag
                        && run.phase() < PHASE_STOP
                    {
                        waited = true;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    if waited {
                        run.gate_stall_ns
                            .fetch_add(stalled.elapsed().as_nanos() as u64, Relaxed);
                    }
                }
                due.resize((plan.window - outstanding) as usize, run.now_ns());
            }
        }
        out.clear();
        // A run of turns: the publisher is a member too, and sends its turn's frame with
        // the first send at or after its turn.
        if !reacted
            && let Some(r) = &run.turns
            && r.schedule()
                .due(idx)
                .is_some_and(|at| at <= tokio::time::Instant::now())
        {
            let json = r.frame(&plan.room, idx, stat.newest.load(Relaxed), run.now_ns());
            frame_into(&mut out, json.as_bytes(), framing);
            reacted = true;
        }
        for &sent_ns in &due {
            let m = Marker {
                sent_ns,
                publisher,
                counter,
            };
            run.send_times.sent(publisher, counter, sent_ns);
            build_send(
                &mut out,
                run.send_room(publisher, counter),
                m,
                plan.pad,
                framing,
            );
            counter += 1;
        }
        outlet.send(&out).await?;
        stat.sent.store(counter, Relaxed);
        run.sent_total.fetch_add(due.len() as u64, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_frames_carry_a_parsable_marker() {
        let m = Marker {
            sent_ns: 5,
            publisher: 2,
            counter: 9,
        };
        let mut out = Vec::new();
        build_send(&mut out, "bench", m, 0, Framing::Lines);
        assert_eq!(
            out,
            b"{\"type\":\"send\",\"room\":\"bench\",\"text\":\"t=5;p=2;n=9\",\"id\":\"2-9\"}\n"
        );
        let frame: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(frame["text"], "t=5;p=2;n=9");
        let mut ws_out = Vec::new();
        build_send(&mut ws_out, "bench", m, 0, Framing::WebSocket);
        assert_eq!(ws_out.len(), 2 + 4 + out.len() - 1);
    }

    #[test]
    fn lines_split_over_reads_are_found_and_scanned_once() {
        let head = b"{\"type\":\"joi";
        let line = b"{\"type\":\"joined\"}";
        let mut scanned = 0;
        assert_eq!(next_line(head, &mut scanned), None);
        assert_eq!(scanned, head.len());
        // The next piece: only the new bytes are looked at (a line end before `scanned`
        // would be missed, and cannot be there).
        let data = [&line[..], b"\n{\"ty"].concat();
        assert_eq!(next_line(&data, &mut scanned), Some(line.len()));
        assert_eq!(scanned, 0);
        assert_eq!(next_line(&data[line.len() + 1..], &mut scanned), None);
        assert_eq!(scanned, 4);
    }

    #[test]
    fn read_buffer_shrinks_back_after_a_large_frame() {
        let mut buf = ReadBuf::new(512);
        let big = buf.space(Some(100_000)).len();
        assert!(big >= 100_000);
        buf.end += 100_000;
        buf.consume(99_000);
        assert_eq!(buf.buf.len(), big, "kept while a frame is partly read");
        buf.consume(1_000);
        assert_eq!(buf.buf.len(), 512);
    }

    #[test]
    fn read_buffer_grows_for_a_large_frame() {
        let mut buf = ReadBuf::new(512);
        buf.space(None)[..10].copy_from_slice(b"0123456789");
        buf.end += 10;
        buf.consume(4);
        assert_eq!(buf.data(), b"456789");
        let space = buf.space(Some(2000)).len();
        assert_eq!(buf.data(), b"456789");
        assert!(space + 6 >= 2000);
    }
}
