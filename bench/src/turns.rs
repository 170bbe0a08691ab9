//! A run of turns, the skeleton `reactions` (`react.rs`) and `reads` (`reads.rs`) share:
//! N members join one room; the first of them (the sender) sends ordinary messages at a
//! fixed rate throughout. After a warm-up and a baseline of those messages alone, every
//! member (or the first few) takes one turn — sends one frame of its own — the turns
//! spread evenly over `--spread` seconds, while the sender keeps sending. The phase of the
//! turns runs from the first turn until the run says it is over (or `--drain` runs out).
//!
//! This module connects, measures the baseline and the phase (server and tool CPU, the
//! messages' latency), stops the sender, and accounts its messages as a fan-out does;
//! the run's [`Turns`] makes each member's frame and counts what the members read of it.
//! The clients, their connections, the latency histograms and the server readings are the
//! fan-out's (`client.rs`, `main.rs`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::account;
use crate::client::{self, Plan, Run, Turns};
use crate::{
    Common, Percentiles, Snapshot, TransportArg, budgets, check_limits, check_server_limits,
    collect, connect_all, early_errors, fetch_configs, labelled, mib, monitor, opt,
    probe_scheduling, procfs, settle,
};

#[derive(Args, Clone)]
pub struct TurnArgs {
    #[command(flatten)]
    pub common: Common,
    /// The sender's ordinary messages per second, from the warm-up to the end.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// The members' turns are spread evenly over this many seconds.
    #[arg(long, default_value_t = 10.0)]
    pub spread: f64,
    /// The server's presence interval in seconds (its `--presence-interval`, 1 s by
    /// default): a big room sends at most one update of a message per interval, a small
    /// room at most one `receipts` frame.
    #[arg(long, default_value_t = 1.0)]
    pub presence_interval: f64,
    /// Frames that reach a member less than an interval minus this many ms apart count as
    /// within one interval. Each such frame reaches the members in one sweep through the
    /// room, whose length varies with the load by tens of ms.
    #[arg(long, default_value_t = 100)]
    pub jitter_ms: u64,
    /// Seconds of the sender's messages between its first ack and the baseline.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Seconds of the sender's messages alone, before the turns: the latency and server
    /// CPU the phase of the turns is compared with.
    #[arg(long, default_value_t = 3.0)]
    pub baseline: f64,
    /// Longest wait, after the last turn, for the run to see every answer (s).
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
}

impl TurnArgs {
    pub fn spread(&self) -> Duration {
        Duration::from_secs_f64(self.spread)
    }

    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(self.presence_interval)
    }

    /// Frames closer than this count as within one interval: the interval less the jitter.
    pub fn window(&self) -> Duration {
        self.interval()
            .saturating_sub(Duration::from_millis(self.jitter_ms))
    }
}

/// Frames of one kind that should reach each member at most once per presence interval (a
/// message's coalesced updates, a small room's receipts): per member how many came, the
/// most within one interval, and the shortest gap between two.
#[derive(Debug)]
pub struct Paced {
    /// Frames closer than this count as within one interval.
    window_ns: u64,
    count: Box<[AtomicU32]>,
    most: Box<[AtomicU32]>,
    min_gap_ns: Box<[AtomicU64]>,
    recent: Box<[Mutex<Arrivals>]>,
}

impl Paced {
    pub fn new(members: usize, window: Duration) -> Paced {
        Paced {
            window_ns: window.as_nanos() as u64,
            count: zeros(members),
            most: zeros(members),
            min_gap_ns: (0..members).map(|_| AtomicU64::new(u64::MAX)).collect(),
            recent: zeros(members),
        }
    }

    /// One reached member `idx` at `now`.
    pub fn record(&self, idx: usize, now: u64) {
        self.count[idx].fetch_add(1, Relaxed);
        let (within, gap) = self.recent[idx].lock().unwrap().record(now, self.window_ns);
        self.most[idx].fetch_max(within as u32, Relaxed);
        if let Some(gap) = gap {
            self.min_gap_ns[idx].fetch_min(gap, Relaxed);
        }
    }

    /// How many reached member `idx`.
    pub fn count(&self, idx: usize) -> u32 {
        self.count[idx].load(Relaxed)
    }
}

/// What the members in `live` got of some paced frames: how many per member, the most any
/// got within one interval, and the shortest gap between two at any member (ms).
pub fn paced_figures(paced: &Paced, live: &[usize]) -> (Spread, u32, Option<f64>) {
    let spread = Spread::of(live.iter().map(|&i| u64::from(paced.count(i))).collect());
    let most = live
        .iter()
        .map(|&i| paced.most[i].load(Relaxed))
        .max()
        .unwrap_or(0);
    let min_gap = live
        .iter()
        .map(|&i| paced.min_gap_ns[i].load(Relaxed))
        .min()
        .filter(|&g| g != u64::MAX)
        .map(|g| (g as f64 / 1e4).round() / 100.0);
    (spread, most, min_gap)
}

/// When one kind of frame reached one member recently, to tell how many arrived within one
/// interval.
#[derive(Debug, Default)]
struct Arrivals {
    recent: VecDeque<u64>,
    last: Option<u64>,
}

impl Arrivals {
    /// A frame arrived at `now`: how many arrived within `window_ns` up to it (itself
    /// included), and the gap since the one before.
    fn record(&mut self, now: u64, window_ns: u64) -> (usize, Option<u64>) {
        let gap = self.last.map(|last| now.saturating_sub(last));
        self.last = Some(now);
        while self
            .recent
            .front()
            .is_some_and(|&t| now.saturating_sub(t) >= window_ns)
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        (self.recent.len(), gap)
    }
}

/// One value per member, `n` of them, each its default.
pub fn zeros<T: Default>(n: usize) -> Box<[T]> {
    (0..n).map(|_| T::default()).collect()
}

/// The members' turns and their answers: frames sent, answered (an ack, a `read`) and
/// refused (an error, by code), and how long the answers took.
#[derive(Debug)]
pub struct Answers {
    sent: AtomicU64,
    answered: AtomicU64,
    refused: Mutex<Vec<(String, u64)>>,
    /// When each member sent its frame (ns since the run started; 0: not yet).
    sent_at: Box<[AtomicU64]>,
    /// Frame to answer, ns.
    latency: Mutex<Histogram<u64>>,
}

impl Answers {
    pub fn new(members: usize) -> Answers {
        Answers {
            sent: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            refused: Mutex::new(Vec::new()),
            sent_at: zeros(members),
            latency: Mutex::new(client::new_histogram()),
        }
    }

    /// Member `idx` sends its frame at `now_ns`.
    pub fn send(&self, idx: usize, now_ns: u64) {
        self.sent_at[idx].store(now_ns.max(1), Relaxed);
        self.sent.fetch_add(1, Relaxed);
    }

    /// Member `idx`'s frame is answered at `now`.
    pub fn answer(&self, idx: usize, now: u64) {
        self.answered.fetch_add(1, Relaxed);
        let sent = self.sent_at[idx].load(Relaxed);
        if sent > 0 {
            self.latency
                .lock()
                .unwrap()
                .saturating_record(now.saturating_sub(sent).max(1_000));
        }
    }

    /// A frame is refused by the error `frame`: counted under its code.
    pub fn refuse(&self, frame: &[u8]) {
        let code = error_code(frame).unwrap_or("?").to_string();
        let mut refused = self.refused.lock().unwrap();
        match refused.iter_mut().find(|(c, _)| *c == code) {
            Some((_, n)) => *n += 1,
            None => refused.push((code, 1)),
        }
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Relaxed)
    }

    pub fn answered(&self) -> u64 {
        self.answered.load(Relaxed)
    }

    /// The errors, by code.
    pub fn refused(&self) -> BTreeMap<String, u64> {
        self.refused.lock().unwrap().iter().cloned().collect()
    }

    /// Every frame sent is answered or refused.
    pub fn settled(&self) -> bool {
        let refused: u64 = self.refused.lock().unwrap().iter().map(|(_, n)| n).sum();
        self.answered() + refused >= self.sent()
    }

    /// Frame to answer, µs.
    pub fn latency(&self) -> Percentiles {
        Percentiles::of(&self.latency.lock().unwrap())
    }
}

/// `code 3, other 1`, or `none`.
pub fn codes(errors: &BTreeMap<String, u64>) -> String {
    if errors.is_empty() {
        return "none".to_string();
    }
    errors
        .iter()
        .map(|(code, n)| format!("{code} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

const CODE_KEY: &[u8] = b"\"code\":\"";

/// An error frame's code.
pub fn error_code(frame: &[u8]) -> Option<&str> {
    let at = account::find(frame, CODE_KEY)? + CODE_KEY.len();
    let len = frame[at..].iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&frame[at..at + len]).ok()
}

#[derive(Debug, Default, Serialize)]
pub struct Spread {
    pub min: u64,
    pub median: u64,
    pub max: u64,
    pub total: u64,
}

impl Spread {
    pub fn of(mut values: Vec<u64>) -> Spread {
        if values.is_empty() {
            return Spread::default();
        }
        values.sort_unstable();
        Spread {
            min: values[0],
            median: values[values.len() / 2],
            max: values[values.len() - 1],
            total: values.iter().sum(),
        }
    }
}

/// CPU figures between two snapshots: server %, tool %, machine idle %, others' %.
pub struct Usage {
    pub secs: f64,
    server: Option<Duration>,
    pub server_pct: Option<f64>,
    pub tool_pct: Option<f64>,
    idle_pct: Option<f64>,
    pub other_pct: Option<f64>,
}

impl Usage {
    pub fn between(a: &Snapshot, b: &Snapshot) -> Usage {
        let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
        let pct = |d: Duration| d.as_secs_f64() / secs * 100.0;
        let server = a.server.zip(b.server).map(|(a, b)| b.since(&a).total());
        let server_pct = server.map(pct);
        let tool_pct = a.tool.zip(b.tool).map(|(a, b)| pct(b.since(&a).total()));
        let idle_pct = a.machine.zip(b.machine).map(|(a, b)| {
            let idle = (b.idle - a.idle) as f64;
            let busy = (b.busy - a.busy) as f64;
            idle / (idle + busy).max(1.0) * 100.0
        });
        let other_pct = a.machine.zip(b.machine).map(|(a, b)| {
            let busy = (b.busy - a.busy) as f64 / procfs::clock_ticks() as f64;
            (busy / secs * 100.0 - server_pct.unwrap_or(0.0) - tool_pct.unwrap_or(0.0)).max(0.0)
        });
        Usage {
            secs,
            server,
            server_pct,
            tool_pct,
            idle_pct,
            other_pct,
        }
    }
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// What every run of turns reports, whatever its turns: the run, the connections, the
/// sender's messages (latency in the phase and in the baseline, losses) and the server's
/// and the tool's CPU. Flattened into each kind's JSON line.
#[derive(Debug, Serialize)]
pub struct Figures {
    scenario: &'static str,
    label: String,
    transport: &'static str,
    pub subscribers: usize,
    publishers: usize,
    /// The sender's messages per second.
    rate: f64,
    threads: usize,
    connected: usize,
    connect_failures: usize,
    connect_s: f64,
    server_cpu_per_connect_us: Option<f64>,
    /// Over how many seconds the turns were spread.
    pub spread_s: f64,
    /// From the first turn until the run saw its end (or the drain ran out), s.
    pub phase_s: f64,
    pub presence_interval_ms: f64,
    /// Frames closer than this counted as within one interval (interval − jitter), ms.
    pub interval_window_ms: f64,
    /// The sender's messages: sent in all, latency in the phase and in the baseline, µs.
    messages_sent: u64,
    latency_us: Percentiles,
    baseline_latency_us: Percentiles,
    deliveries_per_s: f64,
    lost: u64,
    duplicated: u64,
    out_of_order: u64,
    errors: u64,
    too_slow: usize,
    closed_early: usize,
    early_errors: Vec<String>,
    server_cpu_pct: Option<f64>,
    baseline_server_cpu_pct: Option<f64>,
    server_rss_connected_kib: Option<u64>,
    server_rss_peak_kib: Option<u64>,
    tool_cpu_pct: Option<f64>,
    /// How late a ready task ran on the tool's runtime in the phase, µs.
    tool_sched_delay_us: Percentiles,
    machine_idle_pct: Option<f64>,
    other_cpu_pct: Option<f64>,
    budget: Vec<String>,
}

/// One row of a report's table.
pub fn row(t: &mut String, k: &str, v: String) {
    t.push_str(&format!("  {k:<28} {v}\n"));
}

impl Figures {
    /// The first rows: the run (`name`, its members and `what` they do), and the
    /// connections.
    pub fn head_rows(&self, t: &mut String, name: &str, what: &str) {
        row(
            t,
            name,
            format!(
                "{} {} members{what}; the sender sends {} msgs/s{}",
                self.subscribers,
                self.transport,
                self.rate,
                labelled(&self.label)
            ),
        );
        row(
            t,
            "connect + join all",
            format!(
                "{:.2} s ({} ok, {} failed; server {} per client)",
                self.connect_s,
                self.connected,
                self.connect_failures,
                opt(self.server_cpu_per_connect_us, " µs CPU")
            ),
        );
    }

    /// The rows of the sender's messages, in the phase of the turns (`turns`: what they
    /// are, plural) and in the baseline.
    pub fn message_rows(&self, t: &mut String, turns: &str) {
        row(
            t,
            &format!("message latency, {turns}"),
            self.latency_us.line(),
        );
        row(
            t,
            &format!("  baseline, no {turns}"),
            self.baseline_latency_us.line(),
        );
        row(
            t,
            "lost / duplicated",
            format!(
                "{} / {} ({} messages sent; out of order {}, errors {}, too slow {}, closed early {})",
                self.lost,
                self.duplicated,
                self.messages_sent,
                self.out_of_order,
                self.errors,
                self.too_slow,
                self.closed_early
            ),
        );
    }

    /// The rows of the server's CPU per turn (`turn`: what one is; `raw`, `net` µs), its
    /// memory, and the tool's share of the machine.
    pub fn cost_rows(&self, t: &mut String, turn: &str, raw: Option<f64>, net: Option<f64>) {
        row(
            t,
            &format!("server CPU per {turn}"),
            format!(
                "{} ({} net of the messages' baseline); server {} in the phase, {} in the baseline",
                opt(raw, " µs"),
                opt(net, " µs"),
                opt(self.server_cpu_pct, "%"),
                opt(self.baseline_server_cpu_pct, "%")
            ),
        );
        row(
            t,
            "server RSS",
            format!(
                "connected {}, peak {}",
                mib(self.server_rss_connected_kib),
                mib(self.server_rss_peak_kib)
            ),
        );
        row(
            t,
            "tool CPU",
            format!(
                "{}; machine idle {}, other processes {}; scheduling delay p99 {:.2} ms",
                opt(self.tool_cpu_pct, "%"),
                opt(self.machine_idle_pct, "%"),
                opt(self.other_cpu_pct, "%"),
                self.tool_sched_delay_us.p99 / 1e3
            ),
        );
        if !self.early_errors.is_empty() {
            row(t, "ended early", self.early_errors.join("; "));
        }
    }
}

/// What a run of turns leaves for its kind to report.
pub struct Ran {
    /// The members still connected at the end of the phase.
    pub live: Vec<usize>,
    pub figures: Figures,
    base: Usage,
    phase: Usage,
}

impl Ran {
    /// What the members still connected got of `paced`: see [`paced_figures`].
    pub fn paced(&self, paced: &Paced) -> (Spread, u32, Option<f64>) {
        paced_figures(paced, &self.live)
    }

    /// Server CPU in the phase per one of `count` turns, µs: all of it, and net of the
    /// baseline's CPU per second (what the sender's messages cost alone).
    pub fn cpu_per(&self, count: u64) -> (Option<f64>, Option<f64>) {
        let (base, phase) = (&self.base, &self.phase);
        let per = |cpu: f64| (count > 0).then(|| round(cpu / count as f64 * 1e6));
        let raw = phase.server.and_then(|s| per(s.as_secs_f64()));
        let net = phase
            .server
            .zip(base.server)
            .and_then(|(p, b)| per(p.as_secs_f64() - b.as_secs_f64() / base.secs * phase.secs));
        (raw, net)
    }
}

/// Runs `scenario`: connects `args.common.subscribers` members into one room named
/// `<scenario>-<pid>` (unless `--room`), starts the sender, measures the baseline, starts
/// the `turns`, and ends the phase once `done` says so (asked every 20 ms from the end of
/// the spread) or the drain runs out; then stops the sender and accounts its messages.
pub async fn run_turns(
    args: &TurnArgs,
    scenario: &'static str,
    turns: Arc<dyn Turns>,
    mut done: impl FnMut(&Run) -> bool,
) -> Result<Ran, String> {
    let common = &args.common;
    let n = common.subscribers;
    let pids = &common.server_pid[..];
    if !matches!(
        common.transport,
        TransportArg::Ws | TransportArg::Wt | TransportArg::Mix
    ) {
        return Err(format!("{scenario} needs --transport ws, wt or mix"));
    }
    if n < 2 {
        return Err(format!("{scenario} needs --subscribers 2 or more"));
    }
    if args.rate <= 0.0 || args.spread < 0.0 || args.presence_interval <= 0.0 {
        return Err("--rate and --presence-interval must be above 0, --spread not below".into());
    }
    if let Some(warning) = check_limits(n) {
        return Err(warning);
    }
    let targets = fetch_configs(&common.http).await?;
    let plan = Plan {
        room: common
            .room
            .clone()
            .unwrap_or_else(|| format!("{scenario}-{}", std::process::id())),
        room_size: 0,
        rooms: 1,
        room_streams: common.room_streams,
        join: true,
        publishers: 1,
        window: 1,
        rate: args.rate,
        pad: 0,
        max_lag: 0,
        read_buffer: common.read_buffer.unwrap_or(32 * 1024),
        udp_buffer: common.udp_buffer,
        track_per_publisher: 0,
    };
    let run = Run::with_turns(
        plan,
        targets,
        n,
        common.connect_concurrency,
        Some(turns.clone()),
    );
    check_server_limits(pids, n);

    // Connect and join.
    let cpu_before = procfs::cpu_time_sum(pids);
    let (handles, connect_time) = connect_all(&run, common, n).await;
    let cpu_connected = procfs::cpu_time_sum(pids);
    let connected = run.ready.load(Relaxed);
    if run.clients[0].state.load(Relaxed) != 1 {
        return Err(format!(
            "the sender did not connect ({connected} of {n} clients did)"
        ));
    }
    settle(&run, Duration::from_secs(10)).await;
    let rss_connected = procfs::memory_sum(pids);
    let monitor = tokio::spawn(monitor(run.clone(), pids.to_vec()));

    // The sender starts; its first ack says the room works (and, to a reactions run, which
    // message M is).
    run.set_phase(client::PHASE_SEND);
    let until = Instant::now() + Duration::from_secs(10);
    while run.clients[0].acked.load(Relaxed) == 0 {
        if Instant::now() > until {
            run.set_phase(client::PHASE_FINISH);
            return Err("the sender's first message was not acknowledged in 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;

    // Baseline: the sender's messages alone.
    run.measure_from.store(run.now_ns(), Relaxed);
    let a = Snapshot::take(&run, pids, None);
    tokio::time::sleep(Duration::from_secs_f64(args.baseline)).await;
    let b = Snapshot::take(&run, pids, None);
    run.measure_to.store(run.now_ns(), Relaxed);
    // Its last messages arrive (a sweep through 10,000 members takes ~0.1 s); then nothing
    // is recorded until the phase of the turns opens.
    tokio::time::sleep(Duration::from_millis(500)).await;
    run.measure_from.store(u64::MAX, Relaxed);
    let baseline_latency = client::merged_latencies().delivery;

    // The phase of the turns: every member's turn, then until the run is done.
    run.measure_to.store(u64::MAX, Relaxed);
    run.measure_from.store(run.now_ns(), Relaxed);
    let probe = tokio::spawn(probe_scheduling(run.clone()));
    let c = Snapshot::take(&run, pids, None);
    turns.schedule().start();
    tokio::time::sleep(Duration::from_secs_f64(args.spread)).await;
    let drain_until = Instant::now() + Duration::from_secs_f64(args.drain);
    while !done(&run) && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let d = Snapshot::take(&run, pids, None);
    run.measure_to.store(run.now_ns(), Relaxed);
    let live: Vec<usize> = (0..n)
        .filter(|&i| run.clients[i].state.load(Relaxed) == 1)
        .collect();

    // The sender stops; its last messages reach everyone (bounded).
    run.set_phase(client::PHASE_STOP);
    let sender = &run.clients[0];
    let stop_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < stop_until
        && sender.state.load(Relaxed) == 1
        && sender.acked.load(Relaxed) < sender.sent.load(Relaxed)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let messages_sent = sender.sent.load(Relaxed);
    while Instant::now() < stop_until
        && run
            .clients
            .iter()
            .any(|c| c.state.load(Relaxed) == 1 && c.received.load(Relaxed) < messages_sent)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    run.set_phase(client::PHASE_FINISH);
    let sched = probe.await.unwrap_or_else(|_| client::new_histogram());
    let peak = monitor.await.unwrap_or(0);
    let results = collect(handles).await;

    // Account: the sender's messages, as a fan-out does.
    let (mut lost, mut duplicated, mut out_of_order, mut closed_early) = (0, 0, 0, 0);
    for r in &results {
        if let Some(mut tally) = r.tally.clone() {
            lost += tally.finish(&[messages_sent]);
            duplicated += tally.duplicated;
            out_of_order += tally.out_of_order;
            if r.error.is_some() {
                closed_early += 1;
            }
        }
    }
    let too_slow = run
        .clients
        .iter()
        .filter(|c| c.bye.load(Relaxed) == u32::from(4001u16))
        .count();
    let errors = run
        .clients
        .iter()
        .map(|c| u64::from(c.errors.load(Relaxed)))
        .sum();

    let base = Usage::between(&a, &b);
    let phase = Usage::between(&c, &d);
    let mut phase_latency = client::merged_latencies().delivery;
    let _ = phase_latency.subtract(&baseline_latency);
    let figures = Figures {
        scenario,
        label: common.label.clone(),
        transport: common.transport.name(),
        subscribers: n,
        publishers: 1,
        rate: args.rate,
        threads: common.threads,
        connected,
        connect_failures: run.failed.load(Relaxed),
        connect_s: (connect_time.as_secs_f64() * 1000.0).round() / 1000.0,
        server_cpu_per_connect_us: cpu_before.zip(cpu_connected).map(|(a, b)| {
            round(b.since(&a).total().as_nanos() as f64 / 1e3 / connected.max(1) as f64)
        }),
        spread_s: args.spread,
        phase_s: (phase.secs * 1000.0).round() / 1000.0,
        presence_interval_ms: args.interval().as_secs_f64() * 1e3,
        interval_window_ms: args.window().as_secs_f64() * 1e3,
        messages_sent,
        latency_us: Percentiles::of(&phase_latency),
        baseline_latency_us: Percentiles::of(&baseline_latency),
        deliveries_per_s: ((d.received - c.received) as f64 / phase.secs).round(),
        lost,
        duplicated,
        out_of_order,
        errors,
        too_slow,
        closed_early,
        early_errors: early_errors(&results),
        server_cpu_pct: phase.server_pct.map(round),
        baseline_server_cpu_pct: base.server_pct.map(round),
        server_rss_connected_kib: rss_connected.map(|m| m.rss_kib),
        server_rss_peak_kib: procfs::memory_sum(pids).map(|m| m.hwm_kib.max(peak)),
        tool_cpu_pct: phase.tool_pct.map(round),
        tool_sched_delay_us: Percentiles::of(&sched),
        machine_idle_pct: phase.idle_pct.map(round),
        other_cpu_pct: phase.other_pct.map(round),
        budget: budgets(common)?,
    };
    Ok(Ran {
        live,
        figures,
        base,
        phase,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paced_frames_are_counted_per_member_and_interval() {
        let paced = Paced::new(3, Duration::from_nanos(900));
        for now in [0, 1000, 1950, 2100] {
            paced.record(1, now);
        }
        paced.record(2, 500);
        let (spread, most, gap) = paced_figures(&paced, &[0, 1, 2]);
        assert_eq!((spread.min, spread.max, spread.total), (0, 4, 5));
        assert_eq!(most, 2);
        assert_eq!(gap, Some(0.0));
        assert_eq!(paced_figures(&paced, &[0]).2, None);
    }

    #[test]
    fn frames_within_one_interval_are_counted() {
        let window = 900;
        let mut m = Arrivals::default();
        assert_eq!(m.record(0, window), (1, None));
        assert_eq!(m.record(1000, window), (1, Some(1000)));
        // 950 after the last: within the jitter, one per interval still.
        assert_eq!(m.record(1950, window), (1, Some(950)));
        // Two more in quick succession: three within one window.
        assert_eq!(m.record(2100, window).0, 2);
        assert_eq!(m.record(2200, window).0, 3);
    }

    #[test]
    fn answers_are_timed_and_refusals_counted_by_code() {
        let answers = Answers::new(4);
        for idx in 0..4 {
            answers.send(idx, 1_000_000);
        }
        answers.answer(0, 3_000_000);
        let error =
            br#"{"type":"error","code":"too_many_reactions","message":"no","room":"r","id":"r5"}"#;
        assert_eq!(error_code(error), Some("too_many_reactions"));
        answers.refuse(error);
        answers.refuse(error);
        assert!(!answers.settled());
        answers.refuse(br#"{"type":"error","code":"not_joined","message":"no"}"#);
        assert!(answers.settled());
        assert_eq!((answers.sent(), answers.answered()), (4, 1));
        assert_eq!(
            codes(&answers.refused()),
            "not_joined 1, too_many_reactions 2"
        );
        assert_eq!(codes(&BTreeMap::new()), "none");
        let latency = answers.latency();
        assert_eq!((latency.count, (latency.p50 / 100.0).round()), (1, 20.0));
    }
}
