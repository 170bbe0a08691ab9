//! `wtchat-bench`: the load tool of wtchat. It speaks wtchat's own protocol over WebSocket,
//! WebTransport, Server-Sent Events and long polling, and measures what a chat server is
//! chosen for: how many users one machine carries, how fast a message reaches all of them,
//! and at what cost in server CPU and memory.
//!
//! - `fanout`: N clients join one room (over WebSocket, WebTransport, a mix of both, SSE or
//!   long polling: those post their frames, as the browser client does); the first P of
//!   them also publish, at a fixed total rate or as fast as acknowledgements allow, for D
//!   seconds. Every message carries its send time, publisher and number in its text
//!   (`t=<ns>;p=<publisher>;n=<counter>`), so each receiver measures end-to-end latency and
//!   counts lost and duplicated messages; every send carries a client id
//!   (`<publisher>-<counter>`), so the publisher times its `ack` and counts acknowledged
//!   sends per second (with few members and a wide `--window`: publish throughput). Given
//!   the server's pid it reads the server's CPU time and memory from `/proc`, and its own
//!   CPU time, to say what one delivery costs the server and whether the tool itself was
//!   the bottleneck.
//!   With `--prefill` and `--resumers` (`resume.rs`), the room has deep history and extra
//!   clients resume from far back in it, again and again, while the members receive.
//!   With `--rooms-per-session K` every member is in K rooms, which the publishers send to
//!   in turn; with `--room-streams` WebTransport clients speak protocol 4, as browsers do,
//!   and read a stream per room.
//! - `idle`: N connections that join a room and then stay quiet: server memory per
//!   connection.
//! - `join`: a join storm. N clients connect and join one room as fast as they can (or a
//!   room each, or none: the baselines): time until all joined, server CPU per join, server
//!   memory per member.
//! - `reactions`: one message in a big room gets a reaction from every member (`react.rs`),
//!   spread over seconds, while one member keeps sending: acks and errors, the message's
//!   updates per member and per presence interval, whether every member ends with the
//!   acknowledged count, server CPU per reaction, and the messages' latency meanwhile.
//! - `reads`: every member of a big room marks it read (`reads.rs`), spread over seconds,
//!   while one member keeps sending: the answers to the marking members, the frames that
//!   reached the others (a big room sends none), server CPU per mark, and the messages'
//!   latency meanwhile. Both run on `turns.rs`: warm-up, baseline, then the members' turns.
//! - `lossy`: head-of-line blocking under loss (`lossy.rs`): one receiver in a quiet room
//!   and a busy one, through a lossy path of the tool's own (`tun.rs`, a TUN device: root),
//!   over WebTransport or WebSocket: the quiet room's latency per phase of the busy room.
//! - `summary`: medians of the JSON lines of several runs, checked against budgets.
//!
//! Run the standard set with `bench/run.sh` (see `bench/README.md`), or by hand:
//!
//! ```text
//! cargo build --release -p wtchat-cli -p wtchat-bench
//! target/release/wtchat serve --engine memory --http 127.0.0.1:8080 \
//!     --webtransport 127.0.0.1:4433 --certs "$(mktemp -d)" \
//!     --frames-per-second 1000000 --frame-burst 1000000 &
//! target/release/wtchat-bench fanout --http 127.0.0.1:8080 --transport ws \
//!     --subscribers 1000 --publishers 10 --duration 5 --server-pid $!
//! ```
//!
//! The tool shares the machine with the server, so it is built to be cheap per message:
//! one tokio runtime, raw WebSocket frames (or an event stream's chunks, or a poll's answer)
//! read a buffer at a time, frames inspected by byte search instead of a JSON parse, one
//! clock reading per read call, latencies recorded into one histogram per worker thread.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod account;
mod client;
mod http;
mod join;
mod lossy;
mod procfs;
mod react;
mod reads;
mod resume;
mod rng;
mod summary;
mod tun;
mod turns;
mod ws;
mod wt;

use client::{ClientResult, Plan, Run, Target, Transport};

#[derive(Parser)]
#[command(
    name = "wtchat-bench",
    about = "Load tool for wtchat: room fan-out, idle connections and join storms over WebSocket, WebTransport, Server-Sent Events and long polling"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// N clients in one room, P of them publishing: throughput, latency, loss, server cost.
    Fanout(FanoutArgs),
    /// N quiet connections: server memory per connection.
    Idle(IdleArgs),
    /// A join storm: N clients join one room (or a room each, or none) as fast as they can:
    /// time until all joined, server CPU per join, server memory per member.
    Join(join::JoinArgs),
    /// One message in a big room gets a reaction from every member, spread over seconds,
    /// while one member sends: acks, updates per member, agreement, server CPU per reaction,
    /// message latency.
    Reactions(react::ReactArgs),
    /// Every member of a big room marks it read, spread over seconds, while one member
    /// sends: answers, frames to the other members, server CPU per mark, message latency.
    Reads(reads::ReadsArgs),
    /// One receiver in a quiet room and a busy one, through a lossy path (a TUN device of
    /// the tool's: root): the quiet room's latency per phase of the busy room, losses,
    /// repeats and the packets dropped.
    Lossy(lossy::LossyArgs),
    /// Medians of JSON result lines (one run per line), grouped by label, with budgets.
    Summary {
        /// Files of JSON lines as printed by `--json` (stdin if none).
        files: Vec<std::path::PathBuf>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TransportArg {
    Ws,
    Wt,
    Mix,
    /// Server-Sent Events: frames down one streamed response, up as posts.
    Sse,
    /// Long polling: frames down as held `GET`s' answers, up as posts.
    Poll,
}

impl TransportArg {
    /// As the JSON lines name it.
    fn name(self) -> &'static str {
        match self {
            TransportArg::Ws => "ws",
            TransportArg::Wt => "wt",
            TransportArg::Mix => "mix",
            TransportArg::Sse => "sse",
            TransportArg::Poll => "poll",
        }
    }
}

#[derive(Args, Clone)]
struct Common {
    /// The server's HTTP address (its `/wtchat/config` says where the rest is). Several
    /// (repeated, or separated by commas): nodes of one chat sharing their rooms through
    /// the engine; client i connects to the (i mod nodes)-th, so members and publishers are
    /// spread evenly.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:8080")]
    http: Vec<SocketAddr>,
    /// Transport of the clients.
    #[arg(long, value_enum, default_value = "ws")]
    transport: TransportArg,
    /// With `--transport mix`: the share of clients on WebSocket (spread evenly).
    #[arg(long, default_value_t = 0.5)]
    ws_fraction: f64,
    /// Number of clients (in `fanout`, publishers included).
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// The server's process id: enables server CPU and memory figures. Several (repeated,
    /// or separated by commas): the nodes' processes, whose CPU and memory are summed.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Worker threads of the tool's runtime; 1 runs a single-threaded runtime.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Handshakes in flight at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Give up on clients not joined after this many seconds.
    #[arg(long, default_value_t = 120.0)]
    connect_timeout: f64,
    /// Read buffer per connection, bytes (grows for larger frames).
    #[arg(long)]
    read_buffer: Option<usize>,
    /// Kernel UDP buffers per WebTransport client socket, bytes (0: the kernel default).
    #[arg(long, default_value_t = 1 << 20)]
    udp_buffer: usize,
    /// WebTransport clients speak protocol 4, as browsers do: a `hello` first, then each
    /// joined room's frames on a stream of its own that the server opens (a server of an
    /// older version answers with its own, and everything comes on the one stream).
    #[arg(long)]
    room_streams: bool,
    /// Room name (prefix, with `idle --room-size`); default `bench-<pid>`.
    #[arg(long)]
    room: Option<String>,
    /// A name for this run in the JSON line (what `summary` groups by).
    #[arg(long, default_value = "")]
    label: String,
    /// A budget for `summary` (repeatable): FIELD=MAX (same as FIELD<=MAX) or FIELD>=MIN,
    /// on the median of the runs with this label; FIELD/LABEL<=R or FIELD/LABEL>=R, on the
    /// ratio of that median to the median of the runs labelled LABEL. E.g.
    /// server_ns_per_delivery=400, acked_per_s>=50000, latency_us.p99/ws-latency<=1.2.
    #[arg(long = "budget")]
    budgets: Vec<String>,
    /// Print one JSON line on stdout (the human table goes to stderr).
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone)]
struct FanoutArgs {
    #[command(flatten)]
    common: Common,
    /// Publishing clients (the first P of the subscribers).
    #[arg(long, default_value_t = 10)]
    publishers: usize,
    /// Messages per second over all publishers; 0 = as fast as acknowledgements allow.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Full speed: unacknowledged sends each publisher keeps in flight.
    #[arg(long, default_value_t = 8)]
    window: u64,
    /// Full speed: publishers pause while the slowest member is more than this many
    /// messages behind (below the server's per-connection queue of 2048, so that nobody is
    /// cut off for the tool's own slowness); 0 = no bound.
    #[arg(long, default_value_t = 1000)]
    max_lag: u64,
    /// Measured seconds (after the warm-up).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds of traffic before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Seconds to wait, after sending stops, for the last messages to arrive.
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
    /// Filler bytes added to each message text (the marker alone is about 30).
    #[arg(long, default_value_t = 0)]
    text_bytes: usize,
    /// Created when the measured window starts (holding its length in seconds) and removed
    /// when it ends: a script can attach a profiler to exactly the window.
    #[arg(long)]
    window_file: Option<std::path::PathBuf>,
    /// The process id of the Redis server the nodes share: its CPU is reported beside the
    /// servers' (`redis_ns_per_delivery`), not counted in theirs.
    #[arg(long)]
    redis_pid: Option<u32>,
    /// The label of this run's twin (the same load on another setup, run in the same
    /// invocation): `summary` prints the ratios of the main figures' medians to its.
    #[arg(long)]
    versus: Option<String>,
    /// With `--transport sse` or `poll`: the publishers connect over WebSocket instead of
    /// posting their sends, so that the figures are those of delivering to SSE or polling
    /// members, without the posts' cost.
    #[arg(long)]
    ws_publishers: bool,
    /// Messages (of `--text-bytes` filler each) published into the room before the members
    /// join, as fast as acknowledgements come: history deeper than the server's in-memory
    /// tail, for the resumers to read from the engine.
    #[arg(long, default_value_t = 0)]
    prefill: u64,
    /// Extra clients (WebSocket or WebTransport, as the members; not members, and in no
    /// delivery figure) that, from the warm-up on, connect, resume the room from
    /// `--resume-back` messages behind its head, read the replay and disconnect, again and
    /// again: resumes that read the engine while the members receive.
    #[arg(long, default_value_t = 0)]
    resumers: usize,
    /// How far behind the head a resumer's `since` is (at most the server's `max_replay`,
    /// 500 by default, for a replay without a gap).
    #[arg(long, default_value_t = 500)]
    resume_back: u64,
    /// Every member joins K rooms (`<room>-0` … `<room>-K-1`; the server allows 16 per
    /// connection by default) and each publisher sends to them in turn, so that every
    /// message still reaches every member; with `--room-streams`, K streams per session.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    rooms_per_session: u64,
}

#[derive(Args, Clone)]
struct IdleArgs {
    #[command(flatten)]
    common: Common,
    /// Clients per room (each join tells every member, so one huge room would cost the
    /// server N² presence frames while connecting); 0 = all in one room.
    #[arg(long, default_value_t = 100)]
    room_size: usize,
    /// Only connect; do not join a room.
    #[arg(long)]
    no_join: bool,
    /// Seconds to hold the connections quiet before reading the server's memory.
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
    /// The label of this run's twin (the same connections over another transport, run in
    /// the same invocation): `summary` prints the ratios of the memory and CPU figures.
    #[arg(long)]
    versus: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (common, work): (Common, Work) = match cli.command {
        Command::Summary { files } => {
            return match summary::run(&files) {
                Ok(ok) => {
                    if ok {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(2)
                    }
                }
                Err(e) => {
                    eprintln!("wtchat-bench: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Fanout(args) => (args.common.clone(), Work::Fanout(args)),
        Command::Idle(args) => (args.common.clone(), Work::Idle(args)),
        Command::Join(args) => (args.common.clone(), Work::Join(args)),
        Command::Reactions(args) => (args.turns.common.clone(), Work::Reactions(args)),
        Command::Reads(args) => (args.turns.common.clone(), Work::Reads(args)),
        Command::Lossy(args) => (args.common.clone(), Work::Lossy(args)),
    };
    if let Err(e) = budgets(&common) {
        eprintln!("wtchat-bench: {e}");
        return ExitCode::from(2);
    }
    let runtime = if common.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(common.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wtchat-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match work {
            Work::Fanout(args) => fanout(args).await.map(|r| emit(&common, &r, r.table())),
            Work::Idle(args) => idle(args).await.map(|r| emit(&common, &r, r.table())),
            Work::Join(args) => join::join(args).await.map(|r| emit(&common, &r, r.table())),
            Work::Reactions(args) => react::reactions(args)
                .await
                .map(|r| emit(&common, &r, r.table())),
            Work::Reads(args) => reads::reads(args)
                .await
                .map(|r| emit(&common, &r, r.table())),
            Work::Lossy(args) => lossy::lossy(args)
                .await
                .map(|r| emit(&common, &r, r.table())),
        }
    });
    // Thousands of connections: do not wait for each to close politely.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wtchat-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

enum Work {
    Fanout(FanoutArgs),
    Idle(IdleArgs),
    Join(join::JoinArgs),
    Reactions(react::ReactArgs),
    Reads(reads::ReadsArgs),
    Lossy(lossy::LossyArgs),
}

/// Prints the human table (stdout, or stderr with `--json`) and the JSON line.
fn emit<R: Serialize>(common: &Common, report: &R, table: String) {
    if common.json {
        eprint!("{table}");
        println!(
            "{}",
            serde_json::to_string(report).expect("reports serialize")
        );
    } else {
        print!("{table}");
    }
}

// --- shared steps ----------------------------------------------------------------------

/// Every node's `/wtchat/config`, in the order given.
async fn fetch_configs(http: &[SocketAddr]) -> Result<Vec<Target>, String> {
    let mut targets = Vec::with_capacity(http.len());
    for &addr in http {
        targets.push(fetch_config(addr).await?);
    }
    Ok(targets)
}

/// `GET /wtchat/config`: the WebTransport URL and certificate digests, the WebSocket URL.
async fn fetch_config(http: SocketAddr) -> Result<Target, String> {
    let fail = |e: &dyn std::fmt::Display| format!("GET http://{http}/wtchat/config: {e}");
    let mut tcp = TcpStream::connect(http).await.map_err(|e| fail(&e))?;
    let request =
        format!("GET /wtchat/config HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|e| fail(&e))?;
    let mut response = Vec::new();
    tcp.read_to_end(&mut response).await.map_err(|e| fail(&e))?;
    let split = account::find(&response, b"\r\n\r\n").ok_or_else(|| fail(&"no header end"))?;
    let head = String::from_utf8_lossy(&response[..split]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        return Err(fail(&head.lines().next().unwrap_or_default()));
    }
    let mut body = response[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body).ok_or_else(|| fail(&"bad chunked body"))?;
    }
    let config: serde_json::Value = serde_json::from_slice(&body).map_err(|e| fail(&e))?;
    let text = |key: &str| {
        config[key]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| fail(&format!("no {key}")))
    };
    let wt_hashes = config["certificateHashes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h["value"].as_str().and_then(parse_hex32))
        .collect();
    // Where SSE and long polling are (a server without them has no such keys: then the
    // paths they would have, and a 404 says the rest).
    let path = |key: &str, default: &str| {
        config[key]
            .as_str()
            .map_or(default, http::path_of)
            .to_string()
    };
    Ok(Target {
        http,
        ws_url: text("websocket")?,
        wt_url: text("webtransport")?,
        wt_hashes,
        sse_path: path("sse", "/wtchat/sse"),
        poll_path: path("poll", "/wtchat/poll"),
    })
}

fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = account::find(body, b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

fn parse_hex32(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

fn transport_of(common: &Common, i: usize) -> Transport {
    match common.transport {
        TransportArg::Ws => Transport::Ws,
        TransportArg::Wt => Transport::Wt,
        TransportArg::Sse => Transport::Sse,
        TransportArg::Poll => Transport::Poll,
        TransportArg::Mix => {
            // Client i is on WebSocket when the running share crosses an integer: the
            // fraction is met exactly, and evenly spread (publishers included).
            let f = common.ws_fraction.clamp(0.0, 1.0);
            if ((i + 1) as f64 * f).floor() > (i as f64 * f).floor() {
                Transport::Ws
            } else {
                Transport::Wt
            }
        }
    }
}

/// Warns when a server's open-file limit is below the connections it will hold (its share
/// of `n`, over several nodes).
fn check_server_limits(pids: &[u32], n: usize) {
    let share = n.div_ceil(pids.len().max(1));
    for &pid in pids {
        if let Some(limit) = procfs::nofile_limit(pid)
            && (limit as usize) < share + 64
        {
            eprintln!(
                "warning: the server's open-file limit is {limit}, below {share} connections"
            );
        }
    }
}

fn check_limits(n: usize) -> Option<String> {
    let limit = procfs::raise_nofile();
    (limit > 0 && (limit as usize) < n + 64).then(|| {
        format!(
            "open-file limit {limit} is below {n} connections: run `ulimit -n {}` first",
            n + 1024
        )
    })
}

/// Spawns every client and waits until all are ready (joined) or failed.
async fn connect_all(
    run: &Arc<Run>,
    common: &Common,
    n: usize,
) -> (Vec<tokio::task::JoinHandle<ClientResult>>, Duration) {
    connect_all_with(run, common, n, |i| transport_of(common, i)).await
}

/// [`connect_all`], client `i` over `transport(i)`.
async fn connect_all_with(
    run: &Arc<Run>,
    common: &Common,
    n: usize,
    transport: impl Fn(usize) -> Transport,
) -> (Vec<tokio::task::JoinHandle<ClientResult>>, Duration) {
    let started = Instant::now();
    let handles = (0..n)
        .map(|i| tokio::spawn(client::client(run.clone(), i, transport(i))))
        .collect();
    let deadline = started + Duration::from_secs_f64(common.connect_timeout);
    while run.ready.load(Relaxed) + run.failed.load(Relaxed) < n && Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_millis(100), run.progress.notified()).await;
    }
    (handles, started.elapsed())
}

/// Waits until no frame has arrived for 300 ms (presence frames of the joins, history),
/// at most `max`.
async fn settle(run: &Run, max: Duration) {
    let until = Instant::now() + max;
    let mut last = u64::MAX;
    let mut quiet = 0;
    while Instant::now() < until && quiet < 3 {
        let frames = run.clients.iter().map(|c| c.frames.load(Relaxed)).sum();
        quiet = if frames == last { quiet + 1 } else { 0 };
        last = frames;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Collects the clients' results after `FINISH` (bounded: a stuck task is abandoned).
async fn collect(handles: Vec<tokio::task::JoinHandle<ClientResult>>) -> Vec<ClientResult> {
    let mut results = Vec::with_capacity(handles.len());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for handle in handles {
        let abort = handle.abort_handle();
        match tokio::time::timeout_at(deadline, handle).await {
            Ok(Ok(result)) => results.push(result),
            _ => abort.abort(),
        }
    }
    results
}

/// A reading of everything that changes during the measured window.
#[derive(Clone, Copy)]
struct Snapshot {
    at: Instant,
    /// Summed over the server processes (the nodes).
    server: Option<procfs::CpuTime>,
    /// The Redis server the nodes share, when given.
    redis: Option<procfs::CpuTime>,
    tool: Option<procfs::CpuTime>,
    machine: Option<procfs::MachineTime>,
    received: u64,
    acked: u64,
    frames: u64,
    reads: u64,
    stall_ns: u64,
    udp_errors: Option<u64>,
}

impl Snapshot {
    fn take(run: &Run, pids: &[u32], redis: Option<u32>) -> Snapshot {
        let sum = |f: fn(&client::ClientStat) -> u64| run.clients.iter().map(f).sum();
        Snapshot {
            at: Instant::now(),
            server: procfs::cpu_time_sum(pids),
            redis: redis.and_then(|p| procfs::cpu_time(Some(p))),
            tool: procfs::cpu_time(None),
            machine: procfs::machine_time(),
            received: sum(|c| c.received.load(Relaxed)),
            acked: sum(|c| c.acked.load(Relaxed)),
            frames: sum(|c| c.frames.load(Relaxed)),
            reads: sum(|c| c.reads.load(Relaxed)),
            stall_ns: run.gate_stall_ns.load(Relaxed),
            udp_errors: procfs::udp_buffer_errors(),
        }
    }
}

/// Keeps `min_received` (for the publishers' lag bound) and the server's peak RSS (summed
/// over the nodes), until the run finishes; returns the peak in KiB.
async fn monitor(run: Arc<Run>, pids: Vec<u32>) -> u64 {
    let gate = run.plan.max_lag > 0 && run.plan.rate == 0.0 && run.plan.publishers > 0;
    let tick = if gate {
        Duration::from_millis(1)
    } else {
        Duration::from_millis(50)
    };
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut peak = 0;
    let mut next_rss = Instant::now();
    while run.phase() < client::PHASE_FINISH {
        interval.tick().await;
        if gate {
            // Members still reading (state 1); one cut off or gone must not stall the rest.
            let min = run
                .clients
                .iter()
                .filter(|c| c.state.load(Relaxed) == 1)
                .map(|c| c.received.load(Relaxed))
                .min()
                .unwrap_or(u64::MAX);
            run.min_received.store(min, Relaxed);
        }
        if !pids.is_empty() && Instant::now() >= next_rss {
            next_rss += Duration::from_millis(100);
            if let Some(m) = procfs::memory_sum(&pids) {
                peak = peak.max(m.rss_kib);
            }
        }
    }
    peak
}

/// How late a ready task runs on the tool's runtime: a probe yields and times how long
/// until it is polled again (every other ready task, and one I/O poll, come first). This
/// is the tool's own share of the latency each reader adds.
async fn probe_scheduling(run: Arc<Run>) -> Histogram<u64> {
    let mut h = client::new_histogram();
    while run.phase() < client::PHASE_STOP {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let t = Instant::now();
        tokio::task::yield_now().await;
        h.saturating_record((t.elapsed().as_nanos() as u64).max(1_000));
    }
    h
}

// --- reports ----------------------------------------------------------------------------

/// Percentiles in microseconds (or, made with [`Percentiles::of_ms`], milliseconds).
#[derive(Debug, Default, Serialize)]
struct Percentiles {
    count: u64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let us = |ns: u64| (ns as f64 / 1_000.0 * 10.0).round() / 10.0;
        Percentiles {
            count: h.len(),
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            max: us(h.max()),
        }
    }

    /// The same in milliseconds, to 10 µs.
    fn of_ms(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |ns: u64| (ns as f64 / 1e6 * 100.0).round() / 100.0;
        Percentiles {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        }
    }

    fn line(&self) -> String {
        format!(
            "p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} samples)",
            self.p50 / 1e3,
            self.p90 / 1e3,
            self.p99 / 1e3,
            self.max / 1e3,
            self.count
        )
    }
}

/// The `--budget`s, checked and written out the way `summary` reads them.
fn budgets(common: &Common) -> Result<Vec<String>, String> {
    common
        .budgets
        .iter()
        .map(|b| summary::Budget::parse(b).map(|b| b.to_string()))
        .collect()
}

#[derive(Debug, Serialize)]
struct FanoutReport {
    scenario: &'static str,
    label: String,
    transport: &'static str,
    subscribers: usize,
    ws_clients: usize,
    wt_clients: usize,
    /// Written only when there are some (older lines have neither).
    #[serde(skip_serializing_if = "is_zero")]
    sse_clients: usize,
    #[serde(skip_serializing_if = "is_zero")]
    poll_clients: usize,
    publishers: usize,
    /// Rooms each member is in (written only when more than one).
    #[serde(skip_serializing_if = "is_one")]
    rooms_per_session: usize,
    /// `--room-streams`: WebTransport clients asked for protocol 4, and the unidirectional
    /// streams the server opened them in all (none: it speaks an older version). Written
    /// only with the option.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    room_streams: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    room_streams_opened: Option<u64>,
    /// 0: full speed.
    rate: f64,
    window: u64,
    threads: usize,
    duration_s: f64,
    connected: usize,
    connect_failures: usize,
    /// Time to connect and join all clients.
    connect_s: f64,
    /// Server CPU per connect+join (handshakes), µs.
    server_cpu_per_connect_us: Option<f64>,
    messages_sent: u64,
    /// Deliveries (message frames received, replay excluded) in the measured window.
    deliveries: u64,
    deliveries_per_s: f64,
    /// Sends acknowledged (an `ack` each) per second in the window: the publish rate the
    /// server sustained, durably with a durable engine.
    acked_per_s: f64,
    /// Expected over the whole run (every member gets every message), lost, duplicated.
    expected: u64,
    received: u64,
    lost: u64,
    duplicated: u64,
    out_of_order: u64,
    /// Sends the server refused (`rate_limited`): raise its --frames-per-second.
    refused: u64,
    errors: u64,
    /// Clients told `too_slow` (4001), and clients whose connection ended early.
    too_slow: usize,
    closed_early: usize,
    /// End-to-end latency of messages sent in the window, µs.
    latency_us: Percentiles,
    /// From send to the sender's `ack`, messages sent in the window, µs.
    ack_latency_us: Percentiles,
    /// Rate mode: per message, latency to its first recipient, and from first to last.
    first_delivery_us: Option<Percentiles>,
    fanout_spread_us: Option<Percentiles>,
    /// Server processes (nodes of one chat) the clients were spread over; written only when
    /// more than one. Every server figure is their sum.
    #[serde(skip_serializing_if = "is_one")]
    nodes: usize,
    server_cpu_pct: Option<f64>,
    /// Each node's share of `server_cpu_pct` (more than one node only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    server_cpu_pct_nodes: Vec<f64>,
    server_user_pct: Option<f64>,
    server_sys_pct: Option<f64>,
    server_ns_per_delivery: Option<f64>,
    /// The shared Redis server's CPU in the window (`--redis-pid`), not counted in the
    /// server figures: % of one core, and per delivery.
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_cpu_pct: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_ns_per_delivery: Option<f64>,
    server_rss_idle_kib: Option<u64>,
    server_rss_connected_kib: Option<u64>,
    server_rss_peak_kib: Option<u64>,
    tool_cpu_pct: Option<f64>,
    tool_ns_per_delivery: Option<f64>,
    machine_idle_pct: Option<f64>,
    /// CPU used by other processes in the window (100 = one core): noise.
    other_cpu_pct: Option<f64>,
    /// Datagrams the kernel dropped for want of UDP buffer space in the window (machine-wide).
    udp_buffer_drops: Option<u64>,
    /// The first few distinct reasons clients ended early.
    early_errors: Vec<String>,
    /// How long a ready task waited on the tool's runtime (the tool's own latency), µs.
    tool_sched_delay_us: Percentiles,
    /// Frames per read call in the window (how well reads batch).
    frames_per_read: f64,
    /// Share of the publishers' time spent waiting for the slowest member.
    lag_stall_pct: f64,
    tool_bound: bool,
    verdict: String,
    /// `--versus`: the label whose medians `summary` compares this run's with.
    #[serde(skip_serializing_if = "Option::is_none")]
    versus: Option<String>,
    budget: Vec<String>,
    /// `--prefill`: messages published before the members joined (written only then).
    #[serde(skip_serializing_if = "is_zero_u64")]
    prefill: u64,
    /// `--resumers`: what they did (written only when there were some).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    resume: Option<resume::ResumeReport>,
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

async fn fanout(args: FanoutArgs) -> Result<FanoutReport, String> {
    let common = &args.common;
    let n = common.subscribers;
    let pids = &common.server_pid[..];
    let redis_pid = args.redis_pid;
    if args.publishers > n {
        return Err("--publishers cannot exceed --subscribers (publishers are members)".into());
    }
    if args.resumers > 0 && matches!(common.transport, TransportArg::Sse | TransportArg::Poll) {
        return Err("--resumers needs --transport ws, wt or mix".into());
    }
    let rooms = args.rooms_per_session as usize;
    if rooms > 1 && (args.resumers > 0 || args.prefill > 0) {
        return Err(
            "--prefill and --resumers fill and resume one room: not with --rooms-per-session"
                .into(),
        );
    }
    if let Some(warning) = check_limits(n + args.resumers) {
        return Err(warning);
    }
    let targets = fetch_configs(&common.http).await?;
    let nodes = targets.len();
    let room = common
        .room
        .clone()
        .unwrap_or_else(|| format!("bench-{}", std::process::id()));
    // Before anyone joins: filled with members in it, the room would fan every prefilled
    // message out to all of them.
    if args.prefill > 0 {
        resume::prefill(&targets, &room, args.prefill, args.text_bytes, 32 * 1024).await?;
    }
    let track_per_publisher = if args.rate > 0.0 && args.publishers > 0 {
        // Every message of the run, with room to spare.
        let per = args.rate / args.publishers as f64 * (args.warmup + args.duration + 1.0);
        (per.ceil() as usize + 16).min(1 << 20)
    } else {
        0
    };
    let plan = Plan {
        room,
        room_size: 0,
        rooms,
        room_streams: common.room_streams,
        join: true,
        publishers: args.publishers,
        window: args.window.max(1),
        rate: args.rate.max(0.0),
        pad: args.text_bytes,
        max_lag: args.max_lag,
        read_buffer: common.read_buffer.unwrap_or(32 * 1024),
        udp_buffer: common.udp_buffer,
        track_per_publisher,
    };
    let run = Run::new(plan, targets, n, common.connect_concurrency);
    let rss_idle = procfs::memory_sum(pids);
    check_server_limits(pids, n);

    // Connect and join.
    let cpu_before = procfs::cpu_time_sum(pids);
    let publishers_ws =
        args.ws_publishers && matches!(common.transport, TransportArg::Sse | TransportArg::Poll);
    let (handles, connect_time) = connect_all_with(&run, common, n, |i| {
        if publishers_ws && i < args.publishers {
            Transport::Ws
        } else {
            transport_of(common, i)
        }
    })
    .await;
    let cpu_connected = procfs::cpu_time_sum(pids);
    let connected = run.ready.load(Relaxed);
    if connected < args.publishers.max(1) {
        return Err(format!(
            "only {connected} of {n} clients connected (failed: {})",
            run.failed.load(Relaxed)
        ));
    }
    settle(&run, Duration::from_secs(10)).await;
    let rss_connected = procfs::memory_sum(pids);
    let monitor = tokio::spawn(monitor(run.clone(), pids.to_vec()));

    // Traffic: warm-up, then the measured window. The resumers start with the traffic,
    // on the nodes clients n, n + 1, … would use.
    run.set_phase(client::PHASE_SEND);
    let (resumes, resumers) =
        resume::Resumes::spawn(&run, args.resumers, n, args.resume_back, |i| {
            transport_of(common, i)
        });
    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
    let probe = tokio::spawn(probe_scheduling(run.clone()));
    run.measure_from.store(run.now_ns(), Relaxed);
    if let Some(path) = &args.window_file {
        let _ = std::fs::write(path, format!("{}\n", args.duration));
    }
    // Each node's own CPU too (only read with several), to show how evenly they shared.
    let node_cpu = || -> Vec<Option<procfs::CpuTime>> {
        if pids.len() > 1 {
            pids.iter().map(|&p| procfs::cpu_time(Some(p))).collect()
        } else {
            Vec::new()
        }
    };
    let a_nodes = node_cpu();
    let a = Snapshot::take(&run, pids, redis_pid);
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    let b = Snapshot::take(&run, pids, redis_pid);
    let b_nodes = node_cpu();
    if let Some(path) = &args.window_file {
        let _ = std::fs::remove_file(path);
    }
    run.measure_to.store(run.now_ns(), Relaxed);
    run.set_phase(client::PHASE_STOP);

    // Drain: every acknowledgement, then every delivery to members still connected.
    let drain_until = Instant::now() + Duration::from_secs_f64(args.drain);
    let publishers = &run.clients[..args.publishers];
    while Instant::now() < drain_until
        && publishers
            .iter()
            .any(|c| c.state.load(Relaxed) == 1 && c.acked.load(Relaxed) < c.sent.load(Relaxed))
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sent: Vec<u64> = publishers.iter().map(|c| c.sent.load(Relaxed)).collect();
    let total_sent: u64 = sent.iter().sum();
    while Instant::now() < drain_until
        && run
            .clients
            .iter()
            .any(|c| c.state.load(Relaxed) == 1 && c.received.load(Relaxed) < total_sent)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The resumers end after the resume they are in (a stuck one is abandoned).
    let resumers_until = drain_until.max(Instant::now() + Duration::from_secs(2));
    for resumer in resumers {
        let abort = resumer.abort_handle();
        if tokio::time::timeout_at(resumers_until.into(), resumer)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    run.set_phase(client::PHASE_FINISH);
    let sched = probe.await.unwrap_or_else(|_| client::new_histogram());
    let peak = monitor.await.unwrap_or(0);
    let results = collect(handles).await;

    // Account.
    let (mut lost, mut duplicated, mut received, mut out_of_order, mut members) = (0, 0, 0, 0, 0);
    let mut closed_early = 0;
    let (mut ws_clients, mut wt_clients, mut sse_clients, mut poll_clients) = (0, 0, 0, 0);
    for r in &results {
        match r.transport {
            Transport::Ws => ws_clients += 1,
            Transport::Wt => wt_clients += 1,
            Transport::Sse => sse_clients += 1,
            Transport::Poll => poll_clients += 1,
        }
        if let Some(mut tally) = r.tally.clone() {
            members += 1;
            lost += tally.finish(&sent);
            duplicated += tally.duplicated;
            received += tally.received;
            out_of_order += tally.out_of_order;
            if r.error.is_some() {
                closed_early += 1;
            }
        }
    }
    let sum32 = |f: fn(&client::ClientStat) -> u32| -> u64 {
        run.clients.iter().map(|c| u64::from(f(c))).sum()
    };
    let too_slow = run
        .clients
        .iter()
        .filter(|c| c.bye.load(Relaxed) == u32::from(4001u16))
        .count();

    let window = b.at.duration_since(a.at).as_secs_f64();
    let deliveries = b.received - a.received;
    let pct = |d: Duration| d.as_secs_f64() / window * 100.0;
    let server = a.server.zip(b.server).map(|(a, b)| b.since(&a));
    let redis = a.redis.zip(b.redis).map(|(a, b)| b.since(&a));
    let tool = a.tool.zip(b.tool).map(|(a, b)| b.since(&a));
    let per_delivery =
        |d: Duration| (deliveries > 0).then(|| d.as_nanos() as f64 / deliveries as f64);
    let machine_idle_pct = a.machine.zip(b.machine).map(|(a, b)| {
        let idle = (b.idle - a.idle) as f64;
        let busy = (b.busy - a.busy) as f64;
        idle / (idle + busy).max(1.0) * 100.0
    });
    let server_cpu_pct = server.map(|s| pct(s.total()));
    let redis_cpu_pct = redis.map(|r| pct(r.total()));
    let tool_cpu_pct = tool.map(|t| pct(t.total()));
    // Whatever else ran on the machine (builds, browsers): noise in every figure.
    let other_cpu_pct = a.machine.zip(b.machine).map(|(a, b)| {
        let busy = (b.busy - a.busy) as f64 / procfs::clock_ticks() as f64;
        (busy / window * 100.0
            - server_cpu_pct.unwrap_or(0.0)
            - redis_cpu_pct.unwrap_or(0.0)
            - tool_cpu_pct.unwrap_or(0.0))
        .max(0.0)
    });
    let lag_stall_pct = if args.publishers > 0 {
        (b.stall_ns - a.stall_ns) as f64 / (window * 1e9 * args.publishers as f64) * 100.0
    } else {
        0.0
    };
    let (tool_bound, mut verdict) = verdict(
        server_cpu_pct,
        tool_cpu_pct,
        machine_idle_pct,
        lag_stall_pct,
        common.threads,
    );
    if let Some(other) = other_cpu_pct.filter(|o| *o > 20.0) {
        verdict = format!("NOISY: other processes used {other:.0}% CPU; {verdict}");
    }
    let (first, spread) = message_tracks(&run);
    let latency = client::merged_latencies();
    let round = |x: f64| (x * 10.0).round() / 10.0;
    Ok(FanoutReport {
        scenario: "fanout",
        label: common.label.clone(),
        transport: common.transport.name(),
        subscribers: n,
        ws_clients,
        wt_clients,
        sse_clients,
        poll_clients,
        publishers: args.publishers,
        rooms_per_session: rooms,
        room_streams: common.room_streams,
        room_streams_opened: common
            .room_streams
            .then(|| sum32(|c| c.streams.load(Relaxed))),
        rate: args.rate,
        window: args.window,
        threads: common.threads,
        duration_s: round(window),
        connected,
        connect_failures: run.failed.load(Relaxed),
        connect_s: (connect_time.as_secs_f64() * 1000.0).round() / 1000.0,
        server_cpu_per_connect_us: cpu_before.zip(cpu_connected).map(|(a, b)| {
            round(b.since(&a).total().as_nanos() as f64 / 1e3 / connected.max(1) as f64)
        }),
        messages_sent: total_sent,
        deliveries,
        deliveries_per_s: (deliveries as f64 / window).round(),
        acked_per_s: ((b.acked - a.acked) as f64 / window).round(),
        expected: total_sent * members,
        received,
        lost,
        duplicated,
        out_of_order,
        refused: sum32(|c| c.refused.load(Relaxed)),
        errors: sum32(|c| c.errors.load(Relaxed)),
        too_slow,
        closed_early,
        latency_us: Percentiles::of(&latency.delivery),
        ack_latency_us: Percentiles::of(&latency.ack),
        first_delivery_us: first.as_ref().map(Percentiles::of),
        fanout_spread_us: spread.as_ref().map(Percentiles::of),
        nodes,
        server_cpu_pct: server_cpu_pct.map(round),
        server_cpu_pct_nodes: a_nodes
            .iter()
            .zip(&b_nodes)
            .map(|(a, b)| Some(round(pct(b.as_ref()?.since(a.as_ref()?).total()))))
            .collect::<Option<Vec<f64>>>()
            .unwrap_or_default(),
        server_user_pct: server.map(|s| round(pct(s.user))),
        server_sys_pct: server.map(|s| round(pct(s.system))),
        server_ns_per_delivery: server.and_then(|s| per_delivery(s.total())).map(round),
        redis_cpu_pct: redis_cpu_pct.map(round),
        redis_ns_per_delivery: redis.and_then(|r| per_delivery(r.total())).map(round),
        server_rss_idle_kib: rss_idle.map(|m| m.rss_kib),
        server_rss_connected_kib: rss_connected.map(|m| m.rss_kib),
        server_rss_peak_kib: procfs::memory_sum(pids).map(|m| m.hwm_kib.max(peak)),
        tool_cpu_pct: tool_cpu_pct.map(round),
        tool_ns_per_delivery: tool.and_then(|t| per_delivery(t.total())).map(round),
        machine_idle_pct: machine_idle_pct.map(round),
        other_cpu_pct: other_cpu_pct.map(round),
        udp_buffer_drops: a.udp_errors.zip(b.udp_errors).map(|(a, b)| b - a),
        early_errors: early_errors(&results),
        tool_sched_delay_us: Percentiles::of(&sched),
        frames_per_read: round((b.frames - a.frames) as f64 / (b.reads - a.reads).max(1) as f64),
        lag_stall_pct: round(lag_stall_pct),
        tool_bound,
        verdict,
        versus: args.versus.clone(),
        budget: budgets(common)?,
        prefill: args.prefill,
        resume: (args.resumers > 0).then(|| resumes.report(args.resumers, args.resume_back)),
    })
}

/// Up to three distinct reasons clients ended before the run did, with counts.
fn early_errors(results: &[ClientResult]) -> Vec<String> {
    let mut seen: Vec<(String, usize)> = Vec::new();
    for e in results.iter().filter_map(|r| r.error.as_ref()) {
        match seen.iter_mut().find(|(s, _)| s == e) {
            Some((_, n)) => *n += 1,
            None => seen.push((e.clone(), 1)),
        }
    }
    seen.iter()
        .take(3)
        .map(|(e, n)| format!("{n}x {e}"))
        .collect()
}

/// First-delivery latency and first-to-last spread per message sent in the window.
fn message_tracks(run: &Run) -> (Option<Histogram<u64>>, Option<Histogram<u64>>) {
    if run.tracks.is_empty() {
        return (None, None);
    }
    let (from, to) = (run.measure_from.load(Relaxed), run.measure_to.load(Relaxed));
    let mut first = client::new_histogram();
    let mut spread = client::new_histogram();
    for t in run.tracks.iter() {
        let sent = t.sent.load(Relaxed);
        let (f, l) = (t.first.load(Relaxed), t.last.load(Relaxed));
        if sent >= from && sent < to && f != u64::MAX {
            first.saturating_record(f.saturating_sub(sent).max(1_000));
            spread.saturating_record(l.saturating_sub(f).max(1_000));
        }
    }
    (Some(first), Some(spread))
}

/// Whether the tool, not the server, limited the run, and a sentence saying why.
fn verdict(
    server: Option<f64>,
    tool: Option<f64>,
    idle: Option<f64>,
    stall: f64,
    threads: usize,
) -> (bool, String) {
    let (Some(server), Some(tool)) = (server, tool) else {
        return (false, "no --server-pid: cannot compare".into());
    };
    let idle = idle.unwrap_or(0.0);
    let tool_cap = 100.0 * threads.max(1) as f64;
    if tool >= 0.9 * tool_cap {
        return (
            true,
            format!("tool-bound: the tool used {tool:.0}% of its {tool_cap:.0}% (its threads)"),
        );
    }
    if idle < 10.0 && tool > server {
        return (
            true,
            format!(
                "tool-bound: machine saturated ({idle:.0}% idle) and the tool took more CPU \
                 ({tool:.0}%) than the server ({server:.0}%)"
            ),
        );
    }
    if stall > 50.0 && tool > server {
        return (
            true,
            format!(
                "tool-bound: publishers waited {stall:.0}% of the time for slow readers, \
                 and the tool took more CPU ({tool:.0}%) than the server ({server:.0}%)"
            ),
        );
    }
    if idle < 10.0 {
        return (
            false,
            format!(
                "machine saturated ({idle:.0}% idle): server {server:.0}%, tool {tool:.0}%; \
                 the server took the larger share"
            ),
        );
    }
    (
        false,
        format!("server {server:.0}%, tool {tool:.0}%, machine {idle:.0}% idle"),
    )
}

/// A run's label as its table's first row shows it: `  [label]`, or nothing.
fn labelled(label: &str) -> String {
    if label.is_empty() {
        String::new()
    } else {
        format!("  [{label}]")
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>, unit: &str) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v}{unit}"))
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(
        || "-".to_string(),
        |k| format!("{:.1} MiB", k as f64 / 1024.0),
    )
}

impl FanoutReport {
    fn table(&self) -> String {
        let mut t = String::new();
        let mut row = |k: &str, v: String| t.push_str(&format!("  {k:<28} {v}\n"));
        let mode = if self.rate > 0.0 {
            format!("{} msgs/s in total", self.rate)
        } else {
            format!("full speed, window {}", self.window)
        };
        let nodes = if self.nodes > 1 {
            format!(" over {} nodes", self.nodes)
        } else {
            String::new()
        };
        let kinds: Vec<String> = [
            (self.ws_clients, "ws"),
            (self.wt_clients, "wt"),
            (self.sse_clients, "sse"),
            (self.poll_clients, "poll"),
        ]
        .iter()
        .filter(|(n, kind)| *n > 0 || *kind == "ws" || *kind == "wt")
        .map(|(n, kind)| format!("{n} {kind}"))
        .collect();
        row(
            "fan-out",
            format!(
                "{} clients ({}){nodes}, {} publishers, {mode}, {:.1} s{}",
                self.subscribers,
                kinds.join(", "),
                self.publishers,
                self.duration_s,
                labelled(&self.label)
            ),
        );
        if self.rooms_per_session > 1 || self.room_streams {
            let streams = self
                .room_streams_opened
                .map(|n| format!("; protocol 4 asked for: {n} room streams opened"))
                .unwrap_or_default();
            row(
                "rooms per member",
                format!("{}{streams}", self.rooms_per_session),
            );
        }
        row(
            "connect + join all",
            format!(
                "{:.2} s ({} ok, {} failed; server {} per client)",
                self.connect_s,
                self.connected,
                self.connect_failures,
                opt(self.server_cpu_per_connect_us, " µs CPU")
            ),
        );
        row(
            "deliveries",
            format!(
                "{:.0}/s ({} in the window; {} messages sent)",
                self.deliveries_per_s, self.deliveries, self.messages_sent
            ),
        );
        row("acknowledged", format!("{:.0} sends/s", self.acked_per_s));
        row("latency", self.latency_us.line());
        row("  send to ack", self.ack_latency_us.line());
        if let (Some(first), Some(spread)) = (&self.first_delivery_us, &self.fanout_spread_us) {
            row("  to first recipient", first.line());
            row("  first to last recipient", spread.line());
        }
        row(
            "lost / duplicated",
            format!(
                "{} / {} of {} expected (out of order {}, refused {}, too slow {}, closed early {})",
                self.lost,
                self.duplicated,
                self.expected,
                self.out_of_order,
                self.refused,
                self.too_slow,
                self.closed_early
            ),
        );
        if self.prefill > 0 {
            row(
                "prefill",
                format!("{} messages before the members joined", self.prefill),
            );
        }
        if let Some(r) = &self.resume {
            let ms = &r.resume_ms;
            row(
                "resumes",
                format!(
                    "{} in the window by {} resumers, {} behind the head, {:.1} frames each; \
                     gap {}, missing {}, duplicated {}, failed {}",
                    r.resumes,
                    r.resumers,
                    r.resume_back,
                    r.resume_replay_mean,
                    r.resume_gaps,
                    r.resume_missing,
                    r.resume_duplicated,
                    r.resume_failures
                ),
            );
            row(
                "  join to last replayed",
                format!(
                    "p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
                    ms.p50, ms.p90, ms.p99, ms.max
                ),
            );
            if let Some(why) = &r.resume_failure {
                row("  first failure", why.clone());
            }
        }
        row(
            "server CPU per delivery",
            format!(
                "{} (server {} = user {} + sys {})",
                opt(self.server_ns_per_delivery, " ns"),
                opt(self.server_cpu_pct, "%"),
                opt(self.server_user_pct, "%"),
                opt(self.server_sys_pct, "%")
            ),
        );
        if !self.server_cpu_pct_nodes.is_empty() {
            let each: Vec<String> = self
                .server_cpu_pct_nodes
                .iter()
                .map(|p| format!("{p}%"))
                .collect();
            row("  per node", each.join(" + "));
        }
        if self.redis_cpu_pct.is_some() {
            row(
                "Redis CPU per delivery",
                format!(
                    "{} (redis-server {}; not in the server's figure)",
                    opt(self.redis_ns_per_delivery, " ns"),
                    opt(self.redis_cpu_pct, "%")
                ),
            );
        }
        row(
            "server RSS",
            format!(
                "idle {}, connected {}, peak {}",
                mib(self.server_rss_idle_kib),
                mib(self.server_rss_connected_kib),
                mib(self.server_rss_peak_kib)
            ),
        );
        row(
            "tool CPU",
            format!(
                "{} ({} per delivery); machine idle {}, other processes {}",
                opt(self.tool_cpu_pct, "%"),
                opt(self.tool_ns_per_delivery, " ns"),
                opt(self.machine_idle_pct, "%"),
                opt(self.other_cpu_pct, "%")
            ),
        );
        if let Some(drops) = self.udp_buffer_drops.filter(|d| *d > 0) {
            row(
                "UDP buffer drops",
                format!("{drops} datagrams (retransmitted by QUIC)"),
            );
        }
        if !self.early_errors.is_empty() {
            row("ended early", self.early_errors.join("; "));
        }
        row(
            "tool scheduling delay",
            format!(
                "{}; {:.1} frames per read; publishers held back {:.1}% of the time",
                self.tool_sched_delay_us.line(),
                self.frames_per_read,
                self.lag_stall_pct
            ),
        );
        row("verdict", self.verdict.clone());
        t
    }
}

#[derive(Debug, Serialize)]
struct IdleReport {
    scenario: &'static str,
    label: String,
    transport: &'static str,
    connections: usize,
    joined: bool,
    room_size: usize,
    connect_failures: usize,
    connect_s: f64,
    server_cpu_per_connect_us: Option<f64>,
    server_rss_before_kib: Option<u64>,
    server_rss_after_kib: Option<u64>,
    server_rss_peak_kib: Option<u64>,
    /// (RSS after − RSS before) / connections.
    bytes_per_connection: Option<f64>,
    /// The tool's own RSS per connection, for comparison.
    tool_bytes_per_connection: Option<f64>,
    closed_early: usize,
    /// CPU use while the connections sit idle (100 = one core): the server's, the tool's.
    server_idle_cpu_pct: Option<f64>,
    tool_idle_cpu_pct: Option<f64>,
    /// `--versus`: the label whose medians `summary` compares this run's with.
    #[serde(skip_serializing_if = "Option::is_none")]
    versus: Option<String>,
    budget: Vec<String>,
}

async fn idle(args: IdleArgs) -> Result<IdleReport, String> {
    let common = &args.common;
    let n = common.subscribers;
    let pids = &common.server_pid[..];
    if let Some(warning) = check_limits(n) {
        return Err(warning);
    }
    let targets = fetch_configs(&common.http).await?;
    let plan = Plan {
        room: common
            .room
            .clone()
            .unwrap_or_else(|| format!("idle-{}", std::process::id())),
        room_size: args.room_size,
        rooms: 1,
        room_streams: common.room_streams,
        join: !args.no_join,
        publishers: 0,
        window: 1,
        rate: 0.0,
        pad: 0,
        max_lag: 0,
        // Idle connections only ever hold a `joined` frame and presence: small buffers.
        read_buffer: common.read_buffer.unwrap_or(4096),
        udp_buffer: common.udp_buffer,
        track_per_publisher: 0,
    };
    let run = Run::new(plan, targets, n, common.connect_concurrency);
    let tool_before = procfs::memory(std::process::id());
    let before = procfs::memory_sum(pids);
    let cpu_before = procfs::cpu_time_sum(pids);
    let (handles, connect_time) = connect_all(&run, common, n).await;
    let cpu_after = procfs::cpu_time_sum(pids);
    let connected = run.ready.load(Relaxed);
    settle(&run, Duration::from_secs(30)).await;
    // CPU while nothing happens: timers, keep-alives, the transports' own housekeeping.
    let quiet_from = (
        Instant::now(),
        procfs::cpu_time_sum(pids),
        procfs::cpu_time(None),
    );
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let quiet_pct = |before: Option<procfs::CpuTime>, now: Option<procfs::CpuTime>| {
        let secs = quiet_from.0.elapsed().as_secs_f64();
        before
            .zip(now)
            .map(|(a, b)| (b.since(&a).total().as_secs_f64() / secs * 1000.0).round() / 10.0)
    };
    let server_idle_cpu_pct = quiet_pct(quiet_from.1, procfs::cpu_time_sum(pids));
    let tool_idle_cpu_pct = quiet_pct(quiet_from.2, procfs::cpu_time(None));
    let after = procfs::memory_sum(pids);
    let tool_after = procfs::memory(std::process::id());
    run.set_phase(client::PHASE_FINISH);
    let results = collect(handles).await;
    let closed_early = results
        .iter()
        .filter(|r| r.error.is_some() && r.tally.is_some())
        .count();
    let per_conn = |a: Option<procfs::Memory>, b: Option<procfs::Memory>| {
        a.zip(b).map(|(a, b)| {
            ((b.rss_kib as f64 - a.rss_kib as f64) * 1024.0 / connected.max(1) as f64).round()
        })
    };
    Ok(IdleReport {
        scenario: "idle",
        label: common.label.clone(),
        transport: common.transport.name(),
        connections: connected,
        joined: !args.no_join,
        room_size: args.room_size,
        connect_failures: run.failed.load(Relaxed),
        connect_s: (connect_time.as_secs_f64() * 1000.0).round() / 1000.0,
        server_cpu_per_connect_us: cpu_before.zip(cpu_after).map(|(a, b)| {
            (b.since(&a).total().as_nanos() as f64 / 1e3 / connected.max(1) as f64).round()
        }),
        server_rss_before_kib: before.map(|m| m.rss_kib),
        server_rss_after_kib: after.map(|m| m.rss_kib),
        server_rss_peak_kib: after.map(|m| m.hwm_kib),
        bytes_per_connection: per_conn(before, after),
        tool_bytes_per_connection: per_conn(tool_before, tool_after),
        closed_early,
        server_idle_cpu_pct,
        tool_idle_cpu_pct,
        versus: args.versus.clone(),
        budget: budgets(common)?,
    })
}

impl IdleReport {
    fn table(&self) -> String {
        let mut t = String::new();
        let mut row = |k: &str, v: String| t.push_str(&format!("  {k:<28} {v}\n"));
        row(
            "idle connections",
            format!(
                "{} over {} ({}){}",
                self.connections,
                self.transport,
                if self.joined {
                    format!("each joined to a room of {}", self.room_size)
                } else {
                    "connected, not joined".to_string()
                },
                labelled(&self.label)
            ),
        );
        row(
            "connect + join all",
            format!(
                "{:.2} s ({} failed; server {} per client)",
                self.connect_s,
                self.connect_failures,
                opt(self.server_cpu_per_connect_us, " µs CPU")
            ),
        );
        row(
            "server RSS",
            format!(
                "before {}, after {}, peak {}",
                mib(self.server_rss_before_kib),
                mib(self.server_rss_after_kib),
                mib(self.server_rss_peak_kib)
            ),
        );
        row(
            "server memory per connection",
            format!(
                "{} (the tool: {})",
                self.bytes_per_connection.map_or("-".into(), |b| format!(
                    "{:.0} B = {:.1} KiB",
                    b,
                    b / 1024.0
                )),
                self.tool_bytes_per_connection
                    .map_or("-".into(), |b| format!("{:.1} KiB", b / 1024.0))
            ),
        );
        row(
            "CPU while idle",
            format!(
                "server {}, tool {}",
                opt(self.server_idle_cpu_pct, "%"),
                opt(self.tool_idle_cpu_pct, "%")
            ),
        );
        if self.closed_early > 0 {
            row("closed early", self.closed_early.to_string());
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_and_hex_digests_decode() {
        assert_eq!(
            dechunk(b"4\r\nwtch\r\n2;x=1\r\nat\r\n0\r\n\r\n").as_deref(),
            Some(&b"wtchat"[..])
        );
        assert_eq!(dechunk(b"9\r\nshort\r\n"), None);
        let hex = "00ff".repeat(16);
        let digest = parse_hex32(&hex).unwrap();
        assert_eq!((digest[0], digest[1], digest[31]), (0, 255, 255));
        assert_eq!(parse_hex32("abc"), None);
    }

    #[test]
    fn several_nodes_share_the_clients_round_robin() {
        let cli = Cli::parse_from([
            "wtchat-bench",
            "fanout",
            "--http",
            "127.0.0.1:1,127.0.0.1:2",
            "--server-pid",
            "10",
            "--server-pid",
            "11",
            "--redis-pid",
            "12",
            "--subscribers",
            "1000",
        ]);
        let Command::Fanout(args) = cli.command else {
            unreachable!()
        };
        assert_eq!(args.common.http.len(), 2);
        assert_eq!(args.common.server_pid, [10, 11]);
        assert_eq!(args.redis_pid, Some(12));
        let target = |port: u16| Target {
            http: SocketAddr::from(([127, 0, 0, 1], port)),
            ws_url: String::new(),
            wt_url: String::new(),
            wt_hashes: Vec::new(),
            sse_path: String::new(),
            poll_path: String::new(),
        };
        let plan = Plan {
            room: "r".into(),
            room_size: 0,
            rooms: 1,
            room_streams: false,
            join: true,
            publishers: 10,
            window: 8,
            rate: 0.0,
            pad: 0,
            max_lag: 0,
            read_buffer: 512,
            udp_buffer: 0,
            track_per_publisher: 0,
        };
        let run = Run::new(plan, vec![target(1), target(2)], 1000, 1);
        let on = |port: u16, range: std::ops::Range<usize>| {
            range.filter(|&i| run.target(i).http.port() == port).count()
        };
        // Members and publishers (the first 10) split evenly.
        assert_eq!((on(1, 0..1000), on(2, 0..1000)), (500, 500));
        assert_eq!((on(1, 0..10), on(2, 0..10)), (5, 5));
        // One node, as before: everything on it.
        let one = Cli::parse_from(["wtchat-bench", "idle"]);
        let Command::Idle(args) = one.command else {
            unreachable!()
        };
        assert_eq!(args.common.http, ["127.0.0.1:8080".parse().unwrap()]);
        assert!(args.common.server_pid.is_empty());
    }

    #[test]
    fn mix_spreads_the_websocket_share_evenly() {
        let common = Cli::parse_from([
            "wtchat-bench",
            "idle",
            "--transport",
            "mix",
            "--ws-fraction",
            "0.25",
        ]);
        let Command::Idle(args) = common.command else {
            unreachable!()
        };
        let kinds: Vec<Transport> = (0..8).map(|i| transport_of(&args.common, i)).collect();
        let ws = kinds.iter().filter(|t| **t == Transport::Ws).count();
        assert_eq!(ws, 2);
        assert!(kinds[..4].contains(&Transport::Ws) && kinds[4..].contains(&Transport::Ws));
    }
}
