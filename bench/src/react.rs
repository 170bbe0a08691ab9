//! `wtchat-bench reactions`: a big room reacts to one message (issue 25). N members join one
//! room; the first of them (the sender) sends one message M, then ordinary messages at a
//! fixed rate throughout. After a baseline of those messages alone, every member adds one
//! reaction to M (member i the (i mod k)-th of `--reaction`), the N turns spread evenly
//! over `--spread` seconds, while the sender keeps sending.
//!
//! The tool reports what the reactions did: sent, acknowledged (each ack's `mine` checked),
//! refused by error code; how many `update` frames of M each member received, and the most
//! any member got within one presence interval (a big room coalesces reaction updates to
//! at most one per message per interval); whether every member ends with the same reactions
//! on M, counting exactly the acknowledged ones; the server's CPU per reaction; and the
//! latency of the sender's messages during the reaction phase beside the baseline's.
//!
//! The reaction phase runs from the first turn until every member shows the final count
//! (or `--drain` runs out): its CPU includes the coalesced updates after the last reaction.
//! The clients, their connections, the latency histograms and the server readings are the
//! fan-out's (`client.rs`); this module adds the reactions and their bookkeeping, fed by
//! the readers' hooks.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::account;
use crate::client::{self, Plan, Run, Turns};
use crate::{
    Common, Percentiles, Snapshot, TransportArg, budgets, check_limits, check_server_limits,
    collect, connect_all, early_errors, fetch_configs, labelled, mib, monitor, opt,
    probe_scheduling, procfs, settle,
};

#[derive(Args, Clone)]
pub struct ReactArgs {
    #[command(flatten)]
    pub common: Common,
    /// The sender's ordinary messages per second, from the baseline to the end.
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// The members' reactions are spread evenly over this many seconds.
    #[arg(long, default_value_t = 10.0)]
    spread: f64,
    /// Only the first R members react (default: every member): the same updates to every
    /// member at fewer reactions, to tell the cost of the reactions from that of their
    /// updates.
    #[arg(long)]
    reactors: Option<usize>,
    /// The reactions, handed out in turn (member i adds the (i mod k)-th), separated by
    /// commas.
    #[arg(long, value_delimiter = ',', default_value = "👍,🎉,😂,👀")]
    reaction: Vec<String>,
    /// The server's presence interval in seconds (its `--presence-interval`, 1 s by
    /// default): a big room sends at most one update of a message per interval.
    #[arg(long, default_value_t = 1.0)]
    presence_interval: f64,
    /// Updates of M that reach a member less than an interval minus this many ms apart
    /// count as within one interval. Each update reaches the members in one sweep through
    /// the room, whose length varies with the load by tens of ms.
    #[arg(long, default_value_t = 100)]
    jitter_ms: u64,
    /// Seconds of the sender's messages between M's ack and the baseline.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Seconds of the sender's messages alone, before the reactions: the latency and
    /// server CPU the reaction phase is compared with.
    #[arg(long, default_value_t = 3.0)]
    baseline: f64,
    /// Longest wait, after the last turn, for the last acks and for every member to show
    /// the final count (s).
    #[arg(long, default_value_t = 10.0)]
    drain: f64,
}

/// The tool's reaction ids are `r<member>`.
const REACT_ID: &[u8] = b"\"id\":\"r";
const REACTIONS_KEY: &[u8] = b"\"reactions\":[";
const MINE_KEY: &[u8] = b"\"mine\":[";
const COUNT_KEY: &[u8] = b"\"count\":";
const CODE_KEY: &[u8] = b"\"code\":\"";

/// What the clients of a reactions run share: the plan of the reactions, and per member
/// what its reader saw of M.
pub struct Shared {
    /// The reactions as JSON strings (quoted); member i adds `quoted[i % len]`.
    quoted: Vec<String>,
    /// Members 0..reactors react.
    reactors: usize,
    spread: Duration,
    /// Updates closer than this count as within one interval.
    window_ns: u64,
    /// M's sequence number, once the sender's ack has told it (0: not yet).
    target: AtomicU64,
    /// When the turns start (none yet).
    go: watch::Sender<Option<tokio::time::Instant>>,
    sent: AtomicU64,
    acked: AtomicU64,
    /// Acknowledged reactions per entry of `quoted`.
    acked_each: Box<[AtomicU64]>,
    /// Acks whose `mine` did not hold the reaction sent.
    mine_wrong: AtomicU64,
    /// Errors answering a reaction, by code.
    errors: Mutex<Vec<(String, u64)>>,
    /// When each member sent its reaction (ns since the run started; 0: not yet).
    sent_at: Box<[AtomicU64]>,
    /// Reaction to ack, ns.
    ack_latency: Mutex<Histogram<u64>>,
    /// Per member: updates of M received, the most within one interval, the shortest gap
    /// between two (ns), the sum of the counts in the latest one, and its reactions array.
    updates: Box<[AtomicU32]>,
    per_interval: Box<[AtomicU32]>,
    min_gap_ns: Box<[AtomicU64]>,
    totals: Box<[AtomicU64]>,
    latest: Box<[Mutex<Vec<u8>>]>,
    /// Per member: when M's recent updates arrived.
    recent: Box<[Mutex<Member>]>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("quoted", &self.quoted)
            .field("reactors", &self.reactors)
            .field("target", &self.target)
            .field("sent", &self.sent)
            .field("acked", &self.acked)
            .finish_non_exhaustive()
    }
}

/// One member's state: when M's recent updates arrived.
#[derive(Debug, Default)]
struct Member {
    recent: VecDeque<u64>,
    last: Option<u64>,
}

impl Member {
    /// An update arrived at `now`: how many arrived within `window_ns` up to it (itself
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

fn zeros<T: Default>(n: usize) -> Box<[T]> {
    (0..n).map(|_| T::default()).collect()
}

impl Shared {
    pub fn new(
        members: usize,
        reactors: usize,
        reactions: &[String],
        spread: Duration,
        interval: Duration,
        jitter: Duration,
    ) -> Result<Shared, String> {
        if reactions.is_empty() || reactions.iter().any(String::is_empty) {
            return Err("--reaction: at least one, none empty".into());
        }
        Ok(Shared {
            quoted: reactions
                .iter()
                .map(|r| serde_json::to_string(r).expect("strings serialize"))
                .collect(),
            reactors: reactors.min(members),
            spread,
            window_ns: interval.saturating_sub(jitter).as_nanos() as u64,
            target: AtomicU64::new(0),
            go: watch::channel(None).0,
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            acked_each: zeros(reactions.len()),
            mine_wrong: AtomicU64::new(0),
            errors: Mutex::new(Vec::new()),
            sent_at: zeros(members),
            ack_latency: Mutex::new(client::new_histogram()),
            updates: zeros(members),
            per_interval: zeros(members),
            min_gap_ns: (0..members).map(|_| AtomicU64::new(u64::MAX)).collect(),
            totals: zeros(members),
            latest: zeros(members),
            recent: zeros(members),
        })
    }

    fn offset(&self, idx: usize) -> Duration {
        self.spread
            .mul_f64(idx as f64 / self.reactors.max(1) as f64)
    }

    fn errors_total(&self) -> u64 {
        self.errors.lock().unwrap().iter().map(|(_, n)| n).sum()
    }
}

impl Turns for Shared {
    /// When member `idx`'s turn comes, once the turns have started (never, if it is not
    /// a reactor).
    fn due(&self, idx: usize) -> Option<tokio::time::Instant> {
        let go = *self.go.borrow();
        go.filter(|_| idx < self.reactors)
            .map(|at| at + self.offset(idx))
    }
    /// Waits for member `idx`'s turn; false if the turns never start or it does not react.
    fn wait_turn(&self, idx: usize) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        Box::pin(async move {
            if idx >= self.reactors {
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
        })
    }
    /// Member `idx`'s `react` frame (sent at `now_ns`), counted as sent.
    fn frame(&self, room: &str, idx: usize, now_ns: u64) -> String {
        self.sent_at[idx].store(now_ns.max(1), Relaxed);
        self.sent.fetch_add(1, Relaxed);
        format!(
            r#"{{"type":"react","room":"{room}","seq":{},"reaction":{},"id":"r{idx}"}}"#,
            self.target.load(Relaxed),
            self.quoted[idx % self.quoted.len()]
        )
    }
    /// An `ack` read by member `idx`'s reader: true if it answers a reaction (then it is
    /// counted here, not as a send's). The ack of the sender's first message tells M.
    fn on_ack(&self, idx: usize, frame: &[u8], now: u64) -> bool {
        if account::find(frame, REACT_ID).is_none() {
            if account::parse_ack_id(frame) == Some((0, 0))
                && let Some(seq) = account::u64_after(frame, account::SEQ_KEY)
            {
                let _ = self.target.compare_exchange(0, seq, Relaxed, Relaxed);
            }
            return false;
        }
        let k = idx % self.quoted.len();
        self.acked.fetch_add(1, Relaxed);
        self.acked_each[k].fetch_add(1, Relaxed);
        let mine_ok = array_after(frame, MINE_KEY)
            .is_some_and(|mine| account::find(mine, self.quoted[k].as_bytes()).is_some());
        if !mine_ok {
            self.mine_wrong.fetch_add(1, Relaxed);
        }
        let sent = self.sent_at[idx].load(Relaxed);
        if sent > 0 {
            self.ack_latency
                .lock()
                .unwrap()
                .saturating_record(now.saturating_sub(sent).max(1_000));
        }
        true
    }
    /// An `error`: counted by code if it answers a reaction.
    fn on_error(&self, frame: &[u8]) {
        if account::find(frame, REACT_ID).is_none() {
            return;
        }
        let code = error_code(frame).unwrap_or("?").to_string();
        let mut errors = self.errors.lock().unwrap();
        match errors.iter_mut().find(|(c, _)| *c == code) {
            Some((_, n)) => *n += 1,
            None => errors.push((code, 1)),
        }
    }
    /// An `update` read by member `idx`'s reader at `now`: counted if it is M's.
    fn on_update(&self, idx: usize, frame: &[u8], now: u64) {
        let target = self.target.load(Relaxed);
        if target == 0 || account::u64_after(frame, account::SEQ_KEY) != Some(target) {
            return;
        }
        self.updates[idx].fetch_add(1, Relaxed);
        let (within, gap) = self.recent[idx].lock().unwrap().record(now, self.window_ns);
        self.per_interval[idx].fetch_max(within as u32, Relaxed);
        if let Some(gap) = gap {
            self.min_gap_ns[idx].fetch_min(gap, Relaxed);
        }
        if let Some(array) = array_after(frame, REACTIONS_KEY) {
            self.totals[idx].store(total(array), Relaxed);
            let mut latest = self.latest[idx].lock().unwrap();
            latest.clear();
            latest.extend_from_slice(array);
        }
    }
}

/// The JSON array right after `key` (which ends with its `[`), brackets included. The
/// arrays the tool reads hold objects of strings and numbers without brackets in them.
fn array_after<'a>(frame: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let open = account::find(frame, key)? + key.len() - 1;
    let len = frame[open..].iter().position(|&b| b == b']')?;
    Some(&frame[open..=open + len])
}

/// The sum of the `count`s in a reactions array.
fn total(array: &[u8]) -> u64 {
    let mut sum = 0;
    let mut rest = array;
    while let Some(at) = account::find(rest, COUNT_KEY) {
        sum += account::u64_after(rest, COUNT_KEY).unwrap_or(0);
        rest = &rest[at + COUNT_KEY.len()..];
    }
    sum
}

/// An error frame's code.
fn error_code(frame: &[u8]) -> Option<&str> {
    let at = account::find(frame, CODE_KEY)? + CODE_KEY.len();
    let len = frame[at..].iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&frame[at..at + len]).ok()
}

#[derive(Debug, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord, Clone)]
pub struct ReactionCount {
    reaction: String,
    count: u64,
}

#[derive(Debug, Default, Serialize)]
pub struct Spread {
    min: u64,
    median: u64,
    max: u64,
    total: u64,
}

impl Spread {
    fn of(mut values: Vec<u64>) -> Spread {
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

#[derive(Debug, Serialize)]
pub struct ReactReport {
    scenario: &'static str,
    label: String,
    transport: &'static str,
    subscribers: usize,
    publishers: usize,
    /// The sender's messages per second.
    rate: f64,
    threads: usize,
    connected: usize,
    connect_failures: usize,
    connect_s: f64,
    server_cpu_per_connect_us: Option<f64>,
    /// M's sequence number.
    target_seq: u64,
    /// Over how many seconds the turns were spread, by how many members, and the
    /// reactions handed out.
    spread_s: f64,
    reactors: usize,
    reactions: Vec<String>,
    reactions_sent: u64,
    reactions_acked: u64,
    /// Errors answering reactions, by code, and their sum.
    reaction_errors: std::collections::BTreeMap<String, u64>,
    reaction_errors_total: u64,
    /// Acks whose `mine` lacked the reaction sent.
    mine_wrong: u64,
    /// Reaction to its ack, µs.
    react_ack_us: Percentiles,
    /// From the first turn until every member showed the final count (or the drain ran
    /// out), s.
    phase_s: f64,
    presence_interval_ms: f64,
    /// Updates closer than this counted as within one interval (interval − jitter), ms.
    interval_window_ms: f64,
    /// `update` frames of M per member (members connected at the end).
    m_updates: Spread,
    /// The most updates of M a member may get at one per interval: the intervals the
    /// reaction phase spans, plus one (the last reactions' update, up to an interval later).
    m_updates_bound: u64,
    /// The most updates of M any member got within one interval, and the shortest gap
    /// between two updates of M at any member (ms).
    m_updates_max_per_interval: u32,
    m_update_min_gap_ms: Option<f64>,
    /// Members connected at the end, and those whose last update of M counted exactly the
    /// acknowledged reactions.
    members: usize,
    members_at_final_count: usize,
    /// Distinct final reactions arrays over the members, and the most common one.
    distinct_final_states: usize,
    final_reactions: Vec<ReactionCount>,
    /// The acknowledged reactions, per reaction.
    acked_reactions: Vec<ReactionCount>,
    /// Every member ends with the acknowledged reactions, in one order.
    members_agree: bool,
    agreement: String,
    /// The sender's messages: sent in all, latency in the reaction phase and in the
    /// baseline, µs.
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
    /// Server CPU in the reaction phase per acknowledged reaction, µs: all of it, and net
    /// of the baseline's CPU per second (what the sender's messages cost alone).
    server_cpu_per_reaction_us: Option<f64>,
    server_cpu_per_reaction_net_us: Option<f64>,
    server_cpu_pct: Option<f64>,
    baseline_server_cpu_pct: Option<f64>,
    server_rss_connected_kib: Option<u64>,
    server_rss_peak_kib: Option<u64>,
    tool_cpu_pct: Option<f64>,
    /// How late a ready task ran on the tool's runtime in the reaction phase, µs.
    tool_sched_delay_us: Percentiles,
    machine_idle_pct: Option<f64>,
    other_cpu_pct: Option<f64>,
    budget: Vec<String>,
}

/// CPU figures between two snapshots: server %, tool %, machine idle %, others' %.
struct Usage {
    secs: f64,
    server: Option<Duration>,
    server_pct: Option<f64>,
    tool_pct: Option<f64>,
    idle_pct: Option<f64>,
    other_pct: Option<f64>,
}

impl Usage {
    fn between(a: &Snapshot, b: &Snapshot) -> Usage {
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

pub async fn reactions(args: ReactArgs) -> Result<ReactReport, String> {
    let common = &args.common;
    let n = common.subscribers;
    let pids = &common.server_pid[..];
    if !matches!(
        common.transport,
        TransportArg::Ws | TransportArg::Wt | TransportArg::Mix
    ) {
        return Err("reactions needs --transport ws, wt or mix".into());
    }
    if n < 2 {
        return Err("reactions needs --subscribers 2 or more".into());
    }
    if args.rate <= 0.0 || args.spread < 0.0 || args.presence_interval <= 0.0 {
        return Err("--rate and --presence-interval must be above 0, --spread not below".into());
    }
    if let Some(warning) = check_limits(n) {
        return Err(warning);
    }
    let interval = Duration::from_secs_f64(args.presence_interval);
    let reactors = args.reactors.unwrap_or(n).min(n);
    let shared = Shared::new(
        n,
        reactors,
        &args.reaction,
        Duration::from_secs_f64(args.spread),
        interval,
        Duration::from_millis(args.jitter_ms),
    )?;
    let window_ms = shared.window_ns as f64 / 1e6;
    let targets = fetch_configs(&common.http).await?;
    let plan = Plan {
        room: common
            .room
            .clone()
            .unwrap_or_else(|| format!("react-{}", std::process::id())),
        room_size: 0,
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
    let shared = Arc::new(shared);
    let turns: Arc<dyn Turns> = shared.clone();
    let run = Run::with_turns(plan, targets, n, common.connect_concurrency, Some(turns));
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

    // M is the sender's first message; its ack says M's number.
    run.set_phase(client::PHASE_SEND);
    let until = Instant::now() + Duration::from_secs(10);
    while shared.target.load(Relaxed) == 0 {
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
    // is recorded until the reaction phase opens.
    tokio::time::sleep(Duration::from_millis(500)).await;
    run.measure_from.store(u64::MAX, Relaxed);
    let baseline_latency = client::merged_latencies().delivery;

    // The reaction phase: every member's turn, then until every member shows the count.
    run.measure_to.store(u64::MAX, Relaxed);
    run.measure_from.store(run.now_ns(), Relaxed);
    let probe = tokio::spawn(probe_scheduling(run.clone()));
    let c = Snapshot::take(&run, pids, None);
    shared.go.send_replace(Some(tokio::time::Instant::now()));
    tokio::time::sleep(Duration::from_secs_f64(args.spread)).await;
    let drain_until = Instant::now() + Duration::from_secs_f64(args.drain);
    loop {
        let acked = shared.acked.load(Relaxed);
        let answered = acked + shared.errors_total() >= shared.sent.load(Relaxed);
        let agreed = (0..n)
            .filter(|&i| run.clients[i].state.load(Relaxed) == 1)
            .all(|i| shared.totals[i].load(Relaxed) == acked);
        if (answered && agreed) || Instant::now() >= drain_until {
            break;
        }
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

    // The reactions.
    let acked = shared.acked.load(Relaxed);
    let m_updates = Spread::of(
        live.iter()
            .map(|&i| u64::from(shared.updates[i].load(Relaxed)))
            .collect(),
    );
    let per_interval = live
        .iter()
        .map(|&i| shared.per_interval[i].load(Relaxed))
        .max()
        .unwrap_or(0);
    let min_gap = live
        .iter()
        .map(|&i| shared.min_gap_ns[i].load(Relaxed))
        .min()
        .filter(|&g| g != u64::MAX)
        .map(|g| (g as f64 / 1e4).round() / 100.0);
    let at_final = live
        .iter()
        .filter(|&&i| shared.totals[i].load(Relaxed) == acked)
        .count();
    let mut states: Vec<(Vec<u8>, usize)> = Vec::new();
    for &i in &live {
        let latest = shared.latest[i].lock().unwrap();
        match states.iter_mut().find(|(s, _)| *s == *latest) {
            Some((_, count)) => *count += 1,
            None => states.push((latest.clone(), 1)),
        }
    }
    states.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
    let final_reactions: Vec<ReactionCount> = states
        .first()
        .and_then(|(s, _)| serde_json::from_slice(s).ok())
        .unwrap_or_default();
    let acked_reactions: Vec<ReactionCount> = args
        .reaction
        .iter()
        .zip(shared.acked_each.iter())
        .map(|(r, n)| ReactionCount {
            reaction: r.clone(),
            count: n.load(Relaxed),
        })
        .filter(|r| r.count > 0)
        .collect();
    let mut sorted_final = final_reactions.clone();
    sorted_final.sort();
    let mut sorted_acked = acked_reactions.clone();
    sorted_acked.sort();
    let members_agree = !live.is_empty()
        && at_final == live.len()
        && states.len() == 1
        && sorted_final == sorted_acked;
    let agreement = if members_agree {
        format!("all members agree: count = {acked}")
    } else {
        format!(
            "members DISAGREE: {at_final} of {} at count = {acked} (the acked reactions), \
             {} distinct final states{}",
            live.len(),
            states.len(),
            if sorted_final == sorted_acked {
                ""
            } else {
                "; the most common one differs from the acked reactions"
            }
        )
    };
    let mut reaction_errors = std::collections::BTreeMap::new();
    for (code, count) in shared.errors.lock().unwrap().iter() {
        reaction_errors.insert(code.clone(), *count);
    }

    // CPU and latency.
    let base = Usage::between(&a, &b);
    let phase = Usage::between(&c, &d);
    let round = |x: f64| (x * 10.0).round() / 10.0;
    let per_reaction = |cpu: f64| (acked > 0).then(|| round(cpu / acked as f64 * 1e6));
    let server_cpu_per_reaction_us = phase.server.and_then(|s| per_reaction(s.as_secs_f64()));
    let server_cpu_per_reaction_net_us = phase.server.zip(base.server).and_then(|(p, b)| {
        per_reaction(p.as_secs_f64() - b.as_secs_f64() / base.secs * phase.secs)
    });
    let mut phase_latency = client::merged_latencies().delivery;
    let _ = phase_latency.subtract(&baseline_latency);
    let react_ack = shared.ack_latency.lock().unwrap().clone();
    Ok(ReactReport {
        scenario: "reactions",
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
        target_seq: shared.target.load(Relaxed),
        spread_s: args.spread,
        reactors,
        reactions: args.reaction.clone(),
        reactions_sent: shared.sent.load(Relaxed),
        reactions_acked: acked,
        reaction_errors_total: reaction_errors.values().sum(),
        reaction_errors,
        mine_wrong: shared.mine_wrong.load(Relaxed),
        react_ack_us: Percentiles::of(&react_ack),
        phase_s: (phase.secs * 1000.0).round() / 1000.0,
        presence_interval_ms: interval.as_secs_f64() * 1e3,
        interval_window_ms: window_ms,
        m_updates,
        m_updates_bound: (phase.secs / interval.as_secs_f64()).ceil() as u64 + 1,
        m_updates_max_per_interval: per_interval,
        m_update_min_gap_ms: min_gap,
        members: live.len(),
        members_at_final_count: at_final,
        distinct_final_states: states.len(),
        final_reactions,
        acked_reactions,
        members_agree,
        agreement,
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
        server_cpu_per_reaction_us,
        server_cpu_per_reaction_net_us,
        server_cpu_pct: phase.server_pct.map(round),
        baseline_server_cpu_pct: base.server_pct.map(round),
        server_rss_connected_kib: rss_connected.map(|m| m.rss_kib),
        server_rss_peak_kib: procfs::memory_sum(pids).map(|m| m.hwm_kib.max(peak)),
        tool_cpu_pct: phase.tool_pct.map(round),
        tool_sched_delay_us: Percentiles::of(&sched),
        machine_idle_pct: phase.idle_pct.map(round),
        other_cpu_pct: phase.other_pct.map(round),
        budget: budgets(common)?,
    })
}

impl ReactReport {
    pub fn table(&self) -> String {
        let mut t = String::new();
        let mut row = |k: &str, v: String| t.push_str(&format!("  {k:<28} {v}\n"));
        let counts = |list: &[ReactionCount]| {
            list.iter()
                .map(|r| format!("{} {}", r.reaction, r.count))
                .collect::<Vec<_>>()
                .join(", ")
        };
        row(
            "reactions",
            format!(
                "{} {} members, one message reacted to by {} of them over {:.1} s; the sender \
                 sends {} msgs/s{}",
                self.subscribers,
                self.transport,
                self.reactors,
                self.spread_s,
                self.rate,
                labelled(&self.label)
            ),
        );
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
        let errors = if self.reaction_errors.is_empty() {
            "none".to_string()
        } else {
            self.reaction_errors
                .iter()
                .map(|(code, n)| format!("{code} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        row(
            "reactions sent / acked",
            format!(
                "{} / {} (errors: {errors}; ack without the reaction in `mine`: {})",
                self.reactions_sent, self.reactions_acked, self.mine_wrong
            ),
        );
        row("  reaction to ack", self.react_ack_us.line());
        row(
            "updates of M per member",
            format!(
                "min {} median {} max {} ({} in all; at most {} at one per interval in the \
                 reaction phase of {:.1} s)",
                self.m_updates.min,
                self.m_updates.median,
                self.m_updates.max,
                self.m_updates.total,
                self.m_updates_bound,
                self.phase_s
            ),
        );
        row(
            "  most within an interval",
            format!(
                "{} (interval {} ms, updates closer than {} ms count as one interval's; \
                 shortest gap {})",
                self.m_updates_max_per_interval,
                self.presence_interval_ms,
                self.interval_window_ms,
                opt(self.m_update_min_gap_ms, " ms")
            ),
        );
        row("final count", self.agreement.clone());
        row(
            "  final reactions",
            format!(
                "{} (acked: {}); {} of {} members at the final count",
                counts(&self.final_reactions),
                counts(&self.acked_reactions),
                self.members_at_final_count,
                self.members
            ),
        );
        row("message latency, reactions", self.latency_us.line());
        row("  baseline, no reactions", self.baseline_latency_us.line());
        row(
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
        row(
            "server CPU per reaction",
            format!(
                "{} ({} net of the messages' baseline); server {} in the phase, {} in the baseline",
                opt(self.server_cpu_per_reaction_us, " µs"),
                opt(self.server_cpu_per_reaction_net_us, " µs"),
                opt(self.server_cpu_pct, "%"),
                opt(self.baseline_server_cpu_pct, "%")
            ),
        );
        row(
            "server RSS",
            format!(
                "connected {}, peak {}",
                mib(self.server_rss_connected_kib),
                mib(self.server_rss_peak_kib)
            ),
        );
        row(
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
            row("ended early", self.early_errors.join("; "));
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reactions_arrays_codes_and_totals_are_read_from_frames() {
        let update = "{\"type\":\"update\",\"room\":\"r\",\"seq\":7,\"at\":90,\"text\":\"t=1;p=0;n=0\",\
                      \"reactions\":[{\"reaction\":\"👍\",\"count\":2},{\"reaction\":\"🎉\",\"count\":31}]}";
        let array = array_after(update.as_bytes(), REACTIONS_KEY).unwrap();
        assert_eq!(
            array,
            "[{\"reaction\":\"👍\",\"count\":2},{\"reaction\":\"🎉\",\"count\":31}]".as_bytes()
        );
        assert_eq!(total(array), 33);
        assert_eq!(total(b"[]"), 0);
        let parsed: Vec<ReactionCount> = serde_json::from_slice(array).unwrap();
        assert_eq!(parsed[1].reaction, "🎉");
        let error =
            br#"{"type":"error","code":"too_many_reactions","message":"no","room":"r","id":"r5"}"#;
        assert_eq!(error_code(error), Some("too_many_reactions"));
        assert!(account::find(error, REACT_ID).is_some());
    }

    #[test]
    fn acks_count_reactions_apart_and_tell_the_target() {
        let shared = Shared::new(
            4,
            4,
            &["👍".to_string(), "🎉".to_string()],
            Duration::from_secs(1),
            Duration::from_secs(1),
            Duration::from_millis(100),
        )
        .unwrap();
        assert!(!shared.on_ack(0, br#"{"type":"ack","room":"r","id":"0-0","seq":12}"#, 5));
        assert_eq!(shared.target.load(Relaxed), 12);
        let frame = shared.frame("r", 3, 1_000);
        assert_eq!(
            frame,
            r#"{"type":"react","room":"r","seq":12,"reaction":"🎉","id":"r3"}"#
        );
        let ack = r#"{"type":"ack","room":"r","id":"r3","seq":40,"mine":["🎉"]}"#;
        assert!(shared.on_ack(3, ack.as_bytes(), 3_000_000));
        assert_eq!(shared.acked_each[1].load(Relaxed), 1);
        assert_eq!(shared.mine_wrong.load(Relaxed), 0);
        let wrong = r#"{"type":"ack","room":"r","id":"r1","seq":41,"mine":[]}"#;
        assert!(shared.on_ack(1, wrong.as_bytes(), 3_000_000));
        assert_eq!(shared.mine_wrong.load(Relaxed), 1);
        // Updates of another message are not M's.
        let other = br#"{"type":"update","room":"r","seq":13,"at":50,"reactions":[]}"#;
        shared.on_update(2, other, 10);
        assert_eq!(shared.updates[2].load(Relaxed), 0);
        let m = r#"{"type":"update","room":"r","seq":12,"at":50,"reactions":[{"reaction":"👍","count":3}]}"#;
        shared.on_update(2, m.as_bytes(), 10);
        assert_eq!(shared.updates[2].load(Relaxed), 1);
        assert_eq!(shared.totals[2].load(Relaxed), 3);
    }

    #[test]
    fn updates_within_one_interval_are_counted() {
        let window = 900;
        let mut m = Member::default();
        assert_eq!(m.record(0, window), (1, None));
        assert_eq!(m.record(1000, window), (1, Some(1000)));
        // 950 after the last: within the jitter, one per interval still.
        assert_eq!(m.record(1950, window), (1, Some(950)));
        // Two more in quick succession: three within one window.
        assert_eq!(m.record(2100, window).0, 2);
        assert_eq!(m.record(2200, window).0, 3);
    }
}
