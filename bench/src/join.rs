//! `wtchat-bench join`: a join storm. N clients connect and join as fast as the server lets
//! them (`--connect-concurrency` handshakes, each until its `joined`, in flight), and the
//! tool reports what filling the room cost: the time from the first connect until every
//! client had its `joined`, the server's CPU per join, and its memory per member.
//!
//! Two baselines, measured by the same code: `--rooms each` (every client joins a room of
//! its own: a join into an empty room, no presence to anybody) and `--no-join` (sessions
//! set up, the WebSocket upgraded or the WebTransport session and its stream open, and no
//! room joined). A big room's cost per join, divided by one of these, says how much of it
//! grows with the room.
//!
//! The storm ends when the members' frames stop: a join sends presence to members already
//! there (at once, or gathered into periodic updates in a big room), and that work is part
//! of the join's cost. So the server's CPU is read from the first connect until the last
//! sample at which frames were still arriving, not merely until the last `joined`; the
//! quiet time after it (`--quiet-ms`) is not counted.

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::client::{self, Plan, Run};
use crate::{
    Common, Snapshot, budgets, check_limits, check_server_limits, collect, connect_all,
    early_errors, fetch_configs, labelled, mib, opt, procfs,
};

#[derive(Args, Clone)]
pub struct JoinArgs {
    #[command(flatten)]
    pub common: Common,
    /// `one`: every client joins the same room (the storm); `each`: every client joins a
    /// room of its own (a join into an empty room: the baseline).
    #[arg(long, value_enum, default_value = "one")]
    rooms: Rooms,
    /// Only set the sessions up (WebSocket upgrade; WebTransport session and its
    /// bidirectional stream); join no room. The baseline of a bare session.
    #[arg(long, conflicts_with = "rooms")]
    no_join: bool,
    /// The storm is over once no client has received a frame for this long (ms): longer
    /// than the server's presence interval (1 s by default), which a big room's last
    /// update may wait for.
    #[arg(long, default_value_t = 2500)]
    quiet_ms: u64,
    /// Longest wait, after the last `joined`, for the frames to stop (s).
    #[arg(long, default_value_t = 20.0)]
    settle_max: f64,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Rooms {
    One,
    Each,
}

impl JoinArgs {
    /// What every client does: all into one room, each into its own, or nowhere.
    fn plan(&self) -> Plan {
        let common = &self.common;
        Plan {
            room: common
                .room
                .clone()
                .unwrap_or_else(|| format!("join-{}", std::process::id())),
            // Rooms of one member each: `room-0`, `room-1`, …
            room_size: match self.rooms {
                Rooms::One => 0,
                Rooms::Each => 1,
            },
            rooms: 1,
            room_streams: common.room_streams,
            join: !self.no_join,
            publishers: 0,
            window: 1,
            rate: 0.0,
            pad: 0,
            max_lag: 0,
            // Small until a `joined` listing many members needs more (the buffer grows for
            // it, and shrinks again once it is read).
            read_buffer: common.read_buffer.unwrap_or(4096),
            udp_buffer: common.udp_buffer,
            track_per_publisher: 0,
        }
    }

    fn rooms_name(&self) -> &'static str {
        match (self.no_join, self.rooms) {
            (true, _) => "none",
            (false, Rooms::One) => "one",
            (false, Rooms::Each) => "each",
        }
    }
}

/// Follows the frames the clients receive after the last join. The storm ended at the
/// first sample that saw the final count (whatever that sample carries: the readings of
/// that moment); it is over once the count has held for the quiet time.
#[derive(Debug)]
struct StormEnd<S> {
    frames: u64,
    at: Instant,
    sample: S,
}

impl<S> StormEnd<S> {
    fn new(frames: u64, at: Instant, sample: S) -> StormEnd<S> {
        StormEnd { frames, at, sample }
    }

    /// Takes a sample; true once the count has not moved for `quiet`.
    fn observe(&mut self, frames: u64, at: Instant, sample: S, quiet: Duration) -> bool {
        if frames != self.frames {
            *self = StormEnd::new(frames, at, sample);
            return false;
        }
        at.duration_since(self.at) >= quiet
    }
}

#[derive(Debug, Serialize)]
pub struct JoinReport {
    scenario: &'static str,
    label: String,
    transport: &'static str,
    clients: usize,
    /// `one` (all in one room), `each` (a room each), `none` (`--no-join`).
    rooms: &'static str,
    threads: usize,
    connect_concurrency: usize,
    /// Clients that had their `joined` (with `--no-join`: sessions set up).
    joined: usize,
    /// Clients that did not join: refused or failed, or still waiting at `--connect-timeout`.
    failures: usize,
    timed_out: usize,
    /// Joined clients whose connection ended before the measurement did (`too_slow`: told
    /// `bye` 4001 because their queue overflowed).
    closed_early: usize,
    too_slow: usize,
    early_errors: Vec<String>,
    /// From the first connect until every client had its `joined`.
    join_s: f64,
    joins_per_s: f64,
    /// From the first connect until the last frame of the storm (presence included).
    storm_s: f64,
    /// Server CPU from the first connect to the end of the storm, per joined client (µs).
    server_cpu_per_join_us: Option<f64>,
    /// The same, up to the last `joined` only.
    server_cpu_per_join_until_joined_us: Option<f64>,
    /// % of one core over the storm: the server's, the tool's, other processes'.
    server_cpu_pct: Option<f64>,
    tool_cpu_pct: Option<f64>,
    other_cpu_pct: Option<f64>,
    /// Frames each client received, on average (`joined`, presence, …).
    frames_per_client: f64,
    server_rss_before_kib: Option<u64>,
    server_rss_after_kib: Option<u64>,
    server_rss_peak_kib: Option<u64>,
    /// (server RSS once the storm is over − RSS before it) / joined clients.
    bytes_per_member: Option<f64>,
    tool_bytes_per_member: Option<f64>,
    budget: Vec<String>,
}

pub async fn join(args: JoinArgs) -> Result<JoinReport, String> {
    let common = &args.common;
    let n = common.subscribers;
    let pids = &common.server_pid[..];
    if let Some(warning) = check_limits(n) {
        return Err(warning);
    }
    check_server_limits(pids, n);
    let targets = fetch_configs(&common.http).await?;
    let run = Run::new(args.plan(), targets, n, common.connect_concurrency);
    let tool_before = procfs::memory(std::process::id());
    let before = procfs::memory_sum(pids);

    let start = Snapshot::take(&run, pids, None);
    let (handles, join_time) = connect_all(&run, common, n).await;
    let joined_at = Snapshot::take(&run, pids, None);
    let joined = run.ready.load(Relaxed);

    // Until the frames stop: presence after the last join, sent at once or gathered.
    let quiet = Duration::from_millis(args.quiet_ms);
    let settle_until = Instant::now() + Duration::from_secs_f64(args.settle_max);
    let mut end = StormEnd::new(joined_at.frames, joined_at.at, joined_at);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = Snapshot::take(&run, pids, None);
        if end.observe(now.frames, now.at, now, quiet) || now.at >= settle_until {
            break;
        }
    }
    let end = end.sample;
    let after = procfs::memory_sum(pids);
    let tool_after = procfs::memory(std::process::id());

    run.set_phase(client::PHASE_FINISH);
    let results = collect(handles).await;
    let closed_early = results
        .iter()
        .filter(|r| r.error.is_some() && r.tally.is_some())
        .count();
    let too_slow = run
        .clients
        .iter()
        .filter(|c| c.bye.load(Relaxed) == 4001)
        .count();
    let failed = run.failed.load(Relaxed);

    let round = |x: f64| (x * 10.0).round() / 10.0;
    let storm = end.at.duration_since(start.at).as_secs_f64();
    let per_join = |a: &Snapshot, b: &Snapshot| {
        let cpu = b.server?.since(&a.server?).total();
        Some(round(cpu.as_nanos() as f64 / 1e3 / joined.max(1) as f64))
    };
    let pct = |d: Duration| round(d.as_secs_f64() / storm.max(1e-3) * 100.0);
    let server_cpu_pct = start
        .server
        .zip(end.server)
        .map(|(a, b)| pct(b.since(&a).total()));
    let tool_cpu_pct = start
        .tool
        .zip(end.tool)
        .map(|(a, b)| pct(b.since(&a).total()));
    let other_cpu_pct = start.machine.zip(end.machine).map(|(a, b)| {
        let busy = (b.busy - a.busy) as f64 / procfs::clock_ticks() as f64;
        round(
            (busy / storm.max(1e-3) * 100.0
                - server_cpu_pct.unwrap_or(0.0)
                - tool_cpu_pct.unwrap_or(0.0))
            .max(0.0),
        )
    });
    Ok(JoinReport {
        scenario: "join",
        label: common.label.clone(),
        transport: common.transport.name(),
        clients: n,
        rooms: args.rooms_name(),
        threads: common.threads,
        connect_concurrency: common.connect_concurrency,
        joined,
        failures: n - joined,
        timed_out: n.saturating_sub(joined + failed),
        closed_early,
        too_slow,
        early_errors: early_errors(&results),
        join_s: (join_time.as_secs_f64() * 1000.0).round() / 1000.0,
        joins_per_s: (joined as f64 / join_time.as_secs_f64().max(1e-3)).round(),
        storm_s: (storm * 1000.0).round() / 1000.0,
        server_cpu_per_join_us: per_join(&start, &end),
        server_cpu_per_join_until_joined_us: per_join(&start, &joined_at),
        server_cpu_pct,
        tool_cpu_pct,
        other_cpu_pct,
        frames_per_client: round(end.frames as f64 / joined.max(1) as f64),
        server_rss_before_kib: before.map(|m| m.rss_kib),
        server_rss_after_kib: after.map(|m| m.rss_kib),
        server_rss_peak_kib: after.map(|m| m.hwm_kib),
        bytes_per_member: bytes_per(before, after, joined),
        tool_bytes_per_member: bytes_per(tool_before, tool_after, joined),
        budget: budgets(common)?,
    })
}

/// (RSS after − RSS before) / members, in bytes.
fn bytes_per(
    before: Option<procfs::Memory>,
    after: Option<procfs::Memory>,
    members: usize,
) -> Option<f64> {
    let (a, b) = before.zip(after)?;
    Some(((b.rss_kib as f64 - a.rss_kib as f64) * 1024.0 / members.max(1) as f64).round())
}

impl JoinReport {
    pub fn table(&self) -> String {
        let mut t = String::new();
        let mut row = |k: &str, v: String| t.push_str(&format!("  {k:<28} {v}\n"));
        let what = match self.rooms {
            "one" => "join one room",
            "each" => "each join a room of their own",
            _ => "set up sessions, no join",
        };
        row(
            "join storm",
            format!(
                "{} {} clients {what}, {} handshakes in flight{}",
                self.clients,
                self.transport,
                self.connect_concurrency,
                labelled(&self.label)
            ),
        );
        row(
            "all joined",
            format!(
                "{:.2} s ({} joined, {:.0}/s; {} failed, of which {} timed out)",
                self.join_s, self.joined, self.joins_per_s, self.failures, self.timed_out
            ),
        );
        row(
            "storm over (frames stop)",
            format!(
                "{:.2} s ({:.1} frames per client)",
                self.storm_s, self.frames_per_client
            ),
        );
        row(
            "server CPU per join",
            format!(
                "{} (until the last joined: {}); server {}",
                opt(self.server_cpu_per_join_us, " µs"),
                opt(self.server_cpu_per_join_until_joined_us, " µs"),
                opt(self.server_cpu_pct, "%")
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
            "server memory per member",
            format!(
                "{} (the tool: {})",
                self.bytes_per_member
                    .map_or("-".into(), |b| format!("{b:.0} B = {:.1} KiB", b / 1024.0)),
                self.tool_bytes_per_member
                    .map_or("-".into(), |b| format!("{:.1} KiB", b / 1024.0))
            ),
        );
        row(
            "tool CPU",
            format!(
                "{}; other processes {}",
                opt(self.tool_cpu_pct, "%"),
                opt(self.other_cpu_pct, "%")
            ),
        );
        if self.closed_early > 0 || !self.early_errors.is_empty() {
            row(
                "ended early",
                format!(
                    "{} ({} too slow): {}",
                    self.closed_early,
                    self.too_slow,
                    self.early_errors.join("; ")
                ),
            );
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, Command};
    use clap::Parser;

    fn parse(extra: &[&str]) -> JoinArgs {
        let cli = Cli::parse_from(["wtchat-bench", "join"].iter().chain(extra));
        let Command::Join(args) = cli.command else {
            unreachable!()
        };
        args
    }

    #[test]
    fn rooms_one_each_or_none() {
        let one = parse(&["--room", "r"]);
        assert_eq!((one.plan().room_size, one.plan().join), (0, true));
        assert_eq!(one.rooms_name(), "one");
        let each = parse(&["--rooms", "each"]);
        assert_eq!((each.plan().room_size, each.plan().join), (1, true));
        assert_eq!(each.rooms_name(), "each");
        let bare = parse(&["--no-join", "--transport", "wt"]);
        assert!(!bare.plan().join);
        assert_eq!(bare.rooms_name(), "none");
        assert_eq!(bare.plan().publishers, 0);
        // A baseline without joins has no rooms to choose.
        assert!(
            Cli::try_parse_from(["wtchat-bench", "join", "--no-join", "--rooms", "each"]).is_err()
        );
    }

    #[test]
    fn the_storm_ends_at_the_last_frame_not_after_the_quiet_time() {
        let t0 = Instant::now();
        let ms = |m: u64| t0 + Duration::from_millis(m);
        let quiet = Duration::from_millis(300);
        let mut end = StormEnd::new(10, t0, "joined");
        assert!(!end.observe(50, ms(50), "a", quiet));
        assert!(!end.observe(80, ms(100), "b", quiet));
        // Frames stopped at 100 ms: quiet from there, and the storm ended there.
        assert!(!end.observe(80, ms(150), "c", quiet));
        assert!(!end.observe(80, ms(350), "d", quiet));
        assert!(end.observe(80, ms(400), "e", quiet));
        assert_eq!((end.frames, end.sample), (80, "b"));
        // Nothing after the last join: the storm ended with it.
        let mut none = StormEnd::new(7, t0, "joined");
        assert!(!none.observe(7, ms(200), "x", quiet));
        assert!(none.observe(7, ms(300), "y", quiet));
        assert_eq!(none.sample, "joined");
    }

    #[test]
    fn memory_per_member() {
        let m = |rss_kib| procfs::Memory {
            rss_kib,
            hwm_kib: rss_kib,
        };
        assert_eq!(
            bytes_per(Some(m(8_000)), Some(m(88_000)), 10_000),
            Some(8192.0)
        );
        assert_eq!(bytes_per(None, Some(m(1)), 1), None);
        assert_eq!(bytes_per(Some(m(10)), Some(m(20)), 0), Some(10240.0));
    }
}
