//! `wtchat-bench summary`: reads the JSON lines of several runs, groups them by label, and
//! prints the median (and range) of each figure, then checks each run's budgets
//! (`--budget`, carried in its JSON line) against the medians. Medians, because a shared
//! 2-core machine has outliers; the range shows how far the runs spread.
//!
//! A budget bounds a median (`FIELD=MAX`, `FIELD>=MIN`) or its ratio to the median of
//! another label's runs in the same files (`FIELD/LABEL<=R`): how one setup compares with
//! another measured alongside it, on the same machine in the same minutes, which holds
//! better than an absolute figure on a shared machine.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::PathBuf;

use serde_json::Value;

/// Figures shown per scenario kind: (JSON path, name, unit scale, unit).
const FANOUT: &[(&str, &str, f64, &str)] = &[
    (
        "server_ns_per_delivery",
        "server CPU per delivery",
        1.0,
        "ns",
    ),
    // Only in runs given --redis-pid: the shared Redis server, not counted above.
    ("redis_ns_per_delivery", "Redis CPU per delivery", 1.0, "ns"),
    ("deliveries_per_s", "deliveries per second", 1.0, "/s"),
    ("acked_per_s", "sends acknowledged per second", 1.0, "/s"),
    ("latency_us.p50", "latency p50", 1e-3, "ms"),
    ("latency_us.p90", "latency p90", 1e-3, "ms"),
    ("latency_us.p99", "latency p99", 1e-3, "ms"),
    ("latency_us.max", "latency max", 1e-3, "ms"),
    ("first_delivery_us.p99", "  first recipient p99", 1e-3, "ms"),
    ("fanout_spread_us.p99", "  first to last p99", 1e-3, "ms"),
    ("ack_latency_us.p50", "send to ack p50", 1e-3, "ms"),
    ("ack_latency_us.p99", "send to ack p99", 1e-3, "ms"),
    (
        "tool_sched_delay_us.p99",
        "tool scheduling delay p99",
        1e-3,
        "ms",
    ),
    ("lost", "lost", 1.0, ""),
    ("duplicated", "duplicated", 1.0, ""),
    ("too_slow", "cut off as too slow", 1.0, ""),
    // Only in runs with --resumers: joins that replay from deep in the room's history.
    ("resumes", "resumes in the window", 1.0, ""),
    ("resume_ms.p50", "resume, join to replayed p50", 1.0, "ms"),
    ("resume_ms.p99", "resume, join to replayed p99", 1.0, "ms"),
    ("resume_replay_mean", "  frames replayed each", 1.0, ""),
    ("resume_gaps", "  answered with a gap", 1.0, ""),
    ("server_cpu_pct", "server CPU", 1.0, "%"),
    ("server_sys_pct", "  of which system", 1.0, "%"),
    ("redis_cpu_pct", "Redis CPU", 1.0, "%"),
    ("tool_cpu_pct", "tool CPU", 1.0, "%"),
    ("machine_idle_pct", "machine idle", 1.0, "%"),
    ("other_cpu_pct", "other processes' CPU", 1.0, "%"),
    ("lag_stall_pct", "publishers held back", 1.0, "%"),
    ("frames_per_read", "frames per read (tool)", 1.0, ""),
    ("connect_s", "connect + join all", 1.0, "s"),
    (
        "server_cpu_per_connect_us",
        "server CPU per connect",
        1.0,
        "µs",
    ),
    (
        "server_rss_idle_kib",
        "server RSS idle",
        1.0 / 1024.0,
        "MiB",
    ),
    (
        "server_rss_connected_kib",
        "server RSS connected",
        1.0 / 1024.0,
        "MiB",
    ),
    (
        "server_rss_peak_kib",
        "server RSS peak",
        1.0 / 1024.0,
        "MiB",
    ),
];

const IDLE: &[(&str, &str, f64, &str)] = &[
    (
        "bytes_per_connection",
        "server memory per connection",
        1.0 / 1024.0,
        "KiB",
    ),
    ("connections", "connections", 1.0, ""),
    ("connect_s", "connect + join all", 1.0, "s"),
    (
        "server_cpu_per_connect_us",
        "server CPU per connect",
        1.0,
        "µs",
    ),
    (
        "server_rss_before_kib",
        "server RSS before",
        1.0 / 1024.0,
        "MiB",
    ),
    (
        "server_rss_after_kib",
        "server RSS after",
        1.0 / 1024.0,
        "MiB",
    ),
    (
        "tool_bytes_per_connection",
        "tool memory per connection",
        1.0 / 1024.0,
        "KiB",
    ),
    ("server_idle_cpu_pct", "server CPU while idle", 1.0, "%"),
    ("tool_idle_cpu_pct", "tool CPU while idle", 1.0, "%"),
];

const JOIN: &[(&str, &str, f64, &str)] = &[
    ("join_s", "first connect to all joined", 1.0, "s"),
    ("joins_per_s", "joins per second", 1.0, "/s"),
    ("storm_s", "first connect to last frame", 1.0, "s"),
    ("server_cpu_per_join_us", "server CPU per join", 1.0, "µs"),
    (
        "server_cpu_per_join_until_joined_us",
        "  until the last joined",
        1.0,
        "µs",
    ),
    (
        "bytes_per_member",
        "server memory per member",
        1.0 / 1024.0,
        "KiB",
    ),
    ("frames_per_client", "frames per client", 1.0, ""),
    ("joined", "joined", 1.0, ""),
    ("failures", "failed to join", 1.0, ""),
    ("closed_early", "closed early", 1.0, ""),
    ("server_cpu_pct", "server CPU", 1.0, "%"),
    ("tool_cpu_pct", "tool CPU", 1.0, "%"),
    ("other_cpu_pct", "other processes' CPU", 1.0, "%"),
    (
        "server_rss_before_kib",
        "server RSS before",
        1.0 / 1024.0,
        "MiB",
    ),
    (
        "server_rss_after_kib",
        "server RSS after",
        1.0 / 1024.0,
        "MiB",
    ),
    (
        "server_rss_peak_kib",
        "server RSS peak",
        1.0 / 1024.0,
        "MiB",
    ),
    (
        "tool_bytes_per_member",
        "tool memory per member",
        1.0 / 1024.0,
        "KiB",
    ),
];

const REACTIONS: &[(&str, &str, f64, &str)] = &[
    ("reactions_sent", "reactions sent", 1.0, ""),
    ("reactions_acked", "reactions acknowledged", 1.0, ""),
    ("reaction_errors_total", "reactions refused", 1.0, ""),
    ("react_ack_us.p50", "reaction to ack p50", 1e-3, "ms"),
    ("react_ack_us.p99", "reaction to ack p99", 1e-3, "ms"),
    ("m_updates.median", "updates of M per member", 1.0, ""),
    ("m_updates.max", "  most at any member", 1.0, ""),
    ("m_updates_bound", "  at one per interval", 1.0, ""),
    (
        "m_updates_max_per_interval",
        "  most within one interval",
        1.0,
        "",
    ),
    ("m_update_min_gap_ms", "  shortest gap", 1.0, "ms"),
    (
        "members_at_final_count",
        "members at the final count",
        1.0,
        "",
    ),
    ("members", "  of members", 1.0, ""),
    (
        "server_cpu_per_reaction_us",
        "server CPU per reaction",
        1.0,
        "µs",
    ),
    (
        "server_cpu_per_reaction_net_us",
        "  net of the messages",
        1.0,
        "µs",
    ),
];

const READS: &[(&str, &str, f64, &str)] = &[
    ("marks_sent", "marks sent", 1.0, ""),
    ("marks_answered", "marks answered", 1.0, ""),
    ("answers_wrong", "  answers below the mark", 1.0, ""),
    ("mark_errors_total", "marks refused", 1.0, ""),
    ("mark_to_answer_us.p50", "mark to answer p50", 1e-3, "ms"),
    ("mark_to_answer_us.p99", "mark to answer p99", 1e-3, "ms"),
    ("frames_to_others", "frames to other members", 1.0, ""),
    ("receipts_frames", "  receipts", 1.0, ""),
    (
        "unasked_read_frames",
        "  read frames not asked for",
        1.0,
        "",
    ),
    (
        "receipts_max_per_interval",
        "  receipts within one interval",
        1.0,
        "",
    ),
    (
        "members_with_read_state",
        "members with their read state",
        1.0,
        "",
    ),
    ("members", "  of members", 1.0, ""),
    ("server_cpu_per_mark_us", "server CPU per mark", 1.0, "µs"),
    (
        "server_cpu_per_mark_net_us",
        "  net of the messages",
        1.0,
        "µs",
    ),
];

/// A lossy run's figures, for the phases of the default busy rates (250 and 500 msgs/s;
/// other rates' phases are in the JSON lines): the quiet room's latency beside the busy
/// room, against its own with the busy room off.
const LOSSY: &[(&str, &str, f64, &str)] = &[
    (
        "phases.busy_off.quiet_ms.p50",
        "quiet p50, busy off",
        1.0,
        "ms",
    ),
    (
        "phases.busy_off.quiet_ms.p90",
        "quiet p90, busy off",
        1.0,
        "ms",
    ),
    (
        "phases.busy_250.quiet_ms.p50",
        "quiet p50, busy 250/s",
        1.0,
        "ms",
    ),
    (
        "phases.busy_250.quiet_ms.p90",
        "quiet p90, busy 250/s",
        1.0,
        "ms",
    ),
    (
        "phases.busy_250.quiet_p90_vs_off",
        "  p90 ÷ busy off's",
        1.0,
        "×",
    ),
    (
        "phases.busy_500.quiet_ms.p50",
        "quiet p50, busy 500/s",
        1.0,
        "ms",
    ),
    (
        "phases.busy_500.quiet_ms.p90",
        "quiet p90, busy 500/s",
        1.0,
        "ms",
    ),
    (
        "phases.busy_500.quiet_p50_over_off_ms",
        "  p50 − busy off's",
        1.0,
        "ms",
    ),
    (
        "phases.busy_off.quiet_late",
        "quiet late, busy off",
        1.0,
        "",
    ),
    (
        "phases.busy_250.quiet_late",
        "quiet late, busy 250/s",
        1.0,
        "",
    ),
    (
        "phases.busy_500.quiet_late",
        "quiet late, busy 500/s",
        1.0,
        "",
    ),
    (
        "phases.busy_250.busy_delivered_per_s",
        "busy delivered, 250/s sent",
        1.0,
        "/s",
    ),
    (
        "phases.busy_500.busy_delivered_per_s",
        "busy delivered, 500/s sent",
        1.0,
        "/s",
    ),
    (
        "phases.busy_500.busy_ms.p50",
        "  busy p50 at 500/s",
        1.0,
        "ms",
    ),
    ("lost", "lost", 1.0, ""),
    ("duplicated", "duplicated", 1.0, ""),
    ("relay_dropped", "packets the path dropped", 1.0, ""),
    ("server_cpu_pct", "server CPU", 1.0, "%"),
    ("other_cpu_pct", "other processes' CPU", 1.0, "%"),
];

/// The figures every run of turns (reactions, reads) shows after its own.
const TURNS: &[(&str, &str, f64, &str)] = &[
    ("latency_us.p50", "message latency p50", 1e-3, "ms"),
    ("latency_us.p99", "message latency p99", 1e-3, "ms"),
    ("latency_us.max", "message latency max", 1e-3, "ms"),
    ("baseline_latency_us.p50", "  baseline p50", 1e-3, "ms"),
    ("baseline_latency_us.p99", "  baseline p99", 1e-3, "ms"),
    ("phase_s", "phase of the turns", 1.0, "s"),
    ("server_cpu_pct", "server CPU in the phase", 1.0, "%"),
    ("baseline_server_cpu_pct", "  in the baseline", 1.0, "%"),
    ("tool_cpu_pct", "tool CPU", 1.0, "%"),
    (
        "tool_sched_delay_us.p99",
        "tool scheduling delay p99",
        1e-3,
        "ms",
    ),
    ("other_cpu_pct", "other processes' CPU", 1.0, "%"),
    ("lost", "lost", 1.0, ""),
    ("duplicated", "duplicated", 1.0, ""),
    ("too_slow", "cut off as too slow", 1.0, ""),
    ("connect_s", "connect + join all", 1.0, "s"),
    (
        "server_rss_peak_kib",
        "server RSS peak",
        1.0 / 1024.0,
        "MiB",
    ),
];

/// Figures a fan-out's `--versus` compares with its twin's: (JSON path, name).
const VERSUS: &[(&str, &str)] = &[
    ("server_ns_per_delivery", "server CPU per delivery"),
    ("deliveries_per_s", "deliveries/s"),
    ("acked_per_s", "acknowledged/s"),
    ("latency_us.p50", "latency p50"),
    ("latency_us.p99", "latency p99"),
    ("ack_latency_us.p50", "send to ack p50"),
];

/// The same for an idle run's `--versus`.
const VERSUS_IDLE: &[(&str, &str)] = &[
    ("bytes_per_connection", "memory per connection"),
    ("server_cpu_per_connect_us", "CPU per connect"),
];

/// One `--budget`: a bound on the median of a figure, or on its ratio to the median of the
/// same figure in another label's runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    /// The figure: a dotted path into the JSON line (`latency_us.p99`).
    pub field: String,
    /// Some(label): the bound is on median / (median of `label`'s runs).
    pub versus: Option<String>,
    /// `>=` (a floor, for throughput) rather than `<=` (a ceiling).
    pub at_least: bool,
    pub bound: f64,
}

impl Budget {
    /// `FIELD=MAX`, `FIELD<=MAX`, `FIELD>=MIN`, or any of them with `FIELD/LABEL` on the
    /// left for a ratio.
    pub fn parse(text: &str) -> Result<Budget, String> {
        let bad = |why: &str| {
            format!("budget `{text}`: {why} (FIELD=MAX, FIELD>=MIN, FIELD/LABEL<=RATIO)")
        };
        let (left, at_least, right) = if let Some((l, r)) = text.split_once(">=") {
            (l, true, r)
        } else if let Some((l, r)) = text.split_once("<=") {
            (l, false, r)
        } else if let Some((l, r)) = text.split_once('=') {
            (l, false, r)
        } else {
            return Err(bad("no bound"));
        };
        let bound = right
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|b| b.is_finite())
            .ok_or_else(|| bad("the bound is not a number"))?;
        let (field, versus) = match left.split_once('/') {
            Some((field, label)) => (field.trim(), Some(label.trim())),
            None => (left.trim(), None),
        };
        if field.is_empty() || versus.is_some_and(str::is_empty) {
            return Err(bad("no field or no label"));
        }
        Ok(Budget {
            field: field.to_string(),
            versus: versus.map(str::to_string),
            at_least,
            bound,
        })
    }

    /// The budgets a JSON line carries: a list of budget texts, or (older lines) an object
    /// of FIELD: MAX.
    fn of(run: &Value) -> Vec<Budget> {
        match &run["budget"] {
            Value::Array(list) => list
                .iter()
                .filter_map(|b| Budget::parse(b.as_str()?).ok())
                .collect(),
            Value::Object(map) => map
                .iter()
                .filter_map(|(field, max)| {
                    Some(Budget {
                        field: field.clone(),
                        versus: None,
                        at_least: false,
                        bound: max.as_f64()?,
                    })
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    fn holds(&self, value: f64) -> bool {
        if self.at_least {
            value >= self.bound
        } else {
            value <= self.bound
        }
    }

    fn sign(&self) -> &'static str {
        if self.at_least { "≥" } else { "≤" }
    }
}

impl fmt::Display for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.field)?;
        if let Some(label) = &self.versus {
            write!(f, "/{label}")?;
        }
        let op = if self.at_least { ">=" } else { "<=" };
        write!(f, "{op}{}", self.bound)
    }
}

/// The value at a dotted path, as a number.
pub fn field(v: &Value, path: &str) -> Option<f64> {
    path.split('.').try_fold(v, |v, key| v.get(key))?.as_f64()
}

/// The median (mean of the middle two for an even count).
pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

fn fmt(x: f64) -> String {
    if x.fract() == 0.0 || x.abs() >= 1000.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// Prints the summary; Ok(true) when every budget passed and no run lost or duplicated.
pub fn run(files: &[PathBuf]) -> Result<bool, String> {
    let mut text = String::new();
    if files.is_empty() {
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| e.to_string())?;
    }
    for f in files {
        text.push_str(&std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?);
        text.push('\n');
    }
    let runs: Vec<Value> = text
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    print!("{}", render(&runs).0);
    Ok(render(&runs).1)
}

/// The summary text, and whether everything passed.
pub fn render(runs: &[Value]) -> (String, bool) {
    let mut groups: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for r in runs {
        let label = r["label"].as_str().filter(|l| !l.is_empty());
        let key = label.map_or_else(
            || {
                format!(
                    "{}-{}",
                    r["scenario"].as_str().unwrap_or("?"),
                    r["transport"]
                )
            },
            str::to_string,
        );
        groups.entry(key).or_default().push(r);
    }
    let mut out = String::new();
    let mut verdicts = Vec::new();
    let mut ratios = Vec::new();
    let mut all_ok = true;
    for (label, group) in &groups {
        let first = group[0];
        let kind = first["scenario"].as_str().unwrap_or("fanout");
        let transport = first["transport"].as_str().unwrap_or("?");
        let describe = if kind == "reactions" {
            format!(
                "{} {transport} members, {} react to one message over {} s, one sends {} msgs/s",
                first["subscribers"], first["reactors"], first["spread_s"], first["rate"]
            )
        } else if kind == "reads" {
            format!(
                "{} {transport} members each mark the room read over {} s, one sends {} msgs/s",
                first["subscribers"], first["spread_s"], first["rate"]
            )
        } else if kind == "lossy" {
            format!(
                "{transport} protocol {}, {}% loss and {} ms each way: a quiet room ({} msgs/s) \
                 beside a busy one",
                first["protocol"],
                first["loss"].as_f64().unwrap_or(0.0) * 100.0,
                first["delay_ms"],
                first["quiet_rate"]
            )
        } else if kind == "idle" {
            format!("{} idle {transport} connections", first["connections"])
        } else if kind == "join" {
            format!(
                "{} {transport} clients {}",
                first["clients"],
                match first["rooms"].as_str() {
                    Some("one") => "join one room",
                    Some("each") => "join a room each",
                    _ => "set up sessions, no join",
                }
            )
        } else {
            let rate = first["rate"].as_f64().unwrap_or(0.0);
            // SSE or polling members with WebSocket publishers (`--ws-publishers`).
            let publishers_ws = matches!(transport, "sse" | "poll")
                && first["ws_clients"].as_u64().is_some_and(|n| n > 0);
            format!(
                "{} {transport} clients{}, {} publishers{}, {}",
                first["subscribers"],
                // Written only when the clients were spread over several servers.
                first["nodes"]
                    .as_u64()
                    .map_or(String::new(), |n| format!(" over {n} nodes")),
                first["publishers"],
                if publishers_ws { " over ws" } else { "" },
                if rate > 0.0 {
                    format!("{rate} msgs/s in total")
                } else {
                    "full speed".to_string()
                }
            )
        };
        out.push_str(&format!(
            "\n{label} — {describe} — median of {} run(s) [min .. max]\n",
            group.len()
        ));
        let (figures, more) = match kind {
            "idle" => (IDLE, &[][..]),
            "join" => (JOIN, &[][..]),
            "reactions" => (REACTIONS, TURNS),
            "reads" => (READS, TURNS),
            "lossy" => (LOSSY, &[][..]),
            _ => (FANOUT, &[][..]),
        };
        for &(path, name, scale, unit) in figures.iter().chain(more) {
            let mut values: Vec<f64> = group.iter().filter_map(|r| field(r, path)).collect();
            let Some(med) = median(&mut values) else {
                continue;
            };
            let (lo, hi) = (values[0], values[values.len() - 1]);
            out.push_str(&format!(
                "  {name:<30} {:>10} {unit:<4} [{} .. {}]\n",
                fmt(med * scale),
                fmt(lo * scale),
                fmt(hi * scale)
            ));
        }
        let tool_bound = group.iter().filter(|r| r["tool_bound"] == true).count();
        if tool_bound > 0 {
            out.push_str(&format!(
                "  note: {tool_bound} of {} run(s) tool-bound: {}\n",
                group.len(),
                group
                    .iter()
                    .find(|r| r["tool_bound"] == true)
                    .and_then(|r| r["verdict"].as_str())
                    .unwrap_or("")
            ));
        }
        if let Some(versus) = first["versus"].as_str() {
            ratios.push(versus_line(label, group, versus, &groups));
        }
        for budget in Budget::of(first) {
            let (verdict, ok) = check(&budget, label, group, &groups);
            all_ok &= ok;
            verdicts.push(verdict);
        }
        // A check of every run: its line, with how many runs failed it.
        let mut judge = |what: &str, failing: &str, failed: &dyn Fn(&Value) -> bool| {
            let bad = group.iter().filter(|r| failed(r)).count();
            all_ok &= bad == 0;
            verdicts.push(format!(
                "  {:<4} {label:<20} {what} ({bad} of {} run(s) {failing})",
                if bad == 0 { "PASS" } else { "FAIL" },
                group.len()
            ));
        };
        let above = |r: &Value, path: &str| field(r, path).unwrap_or(0.0) > 0.0;
        if kind == "join" {
            // A storm in which clients failed, or were cut off, did not fill the room.
            judge("every client joined and stayed", "had failures", &|r| {
                field(r, "failures").unwrap_or(1.0) > 0.0 || above(r, "closed_early")
            });
        } else if kind != "idle" {
            judge("no loss, no duplicates", "had some", &|r| {
                above(r, "lost") || above(r, "duplicated")
            });
            if kind == "reactions" {
                // Every reaction acknowledged, and every member ending with exactly those.
                judge(
                    "every reaction acknowledged, every member at that count",
                    "not",
                    &|r| {
                        r["members_agree"] != true
                            || field(r, "reactions_acked") != field(r, "reactions_sent")
                    },
                );
                // Coalesced: no member got more updates of the message than the phase had
                // intervals (plus the last one's).
                judge(
                    "updates of the message per member at most one per interval",
                    "more",
                    &|r| field(r, "m_updates.max") > field(r, "m_updates_bound"),
                );
            }
            if kind == "reads" {
                // Every member had its read state, every mark an answer at or past it.
                judge(
                    "every member had its read state, every mark an answer at or past it",
                    "not",
                    &|r| {
                        !above(r, "marks_sent")
                            || field(r, "marks_answered") != field(r, "marks_sent")
                            || field(r, "answers_wrong").unwrap_or(1.0) > 0.0
                            || field(r, "members_with_read_state") != field(r, "members")
                    },
                );
                // A big room tells no other member of a mark; a small one at most one
                // receipts frame per member per interval, and no read frame not asked for.
                if first["big_room"] == true {
                    judge("no frame to the other members (a big room)", "not", &|r| {
                        field(r, "frames_to_others").unwrap_or(1.0) > 0.0
                    });
                } else {
                    judge(
                        "receipts at most one per interval, no read frame not asked for",
                        "not",
                        &|r| {
                            field(r, "receipts_max_per_interval").unwrap_or(2.0) > 1.0
                                || above(r, "unasked_read_frames")
                        },
                    );
                }
            }
            if first.get("resumes").is_some() {
                // A resume must replay exactly what the client missed, and every one must
                // have run: a failed one measured nothing.
                judge(
                    "every resume replayed exactly what it missed",
                    "had a miss, a repeat or a failure",
                    &|r| {
                        ["resume_missing", "resume_duplicated", "resume_failures"]
                            .iter()
                            .any(|f| above(r, f))
                    },
                );
            }
        }
    }
    if !ratios.is_empty() {
        out.push_str("\nratios (median ÷ the twin's median, same invocation)\n");
        for r in ratios {
            out.push_str(&r);
            out.push('\n');
        }
    }
    if !verdicts.is_empty() {
        out.push_str("\nbudget\n");
        for v in verdicts {
            out.push_str(&v);
            out.push('\n');
        }
    }
    (out, all_ok)
}

/// `label ÷ versus: figure ratio, …` for the figures both have; or why there are none.
fn versus_line(
    label: &str,
    runs: &[&Value],
    versus: &str,
    groups: &BTreeMap<String, Vec<&Value>>,
) -> String {
    let Some(twin) = groups.get(versus) else {
        return format!("  {label} ÷ {versus}: no runs of {versus} here");
    };
    let compared = if runs.first().is_some_and(|r| r["scenario"] == "idle") {
        VERSUS_IDLE
    } else {
        VERSUS
    };
    let figures: Vec<String> = compared
        .iter()
        .filter_map(|&(path, name)| {
            let (m, base) = (median_of(runs, path)?, median_of(twin, path)?);
            (base != 0.0).then(|| format!("{name} {:.2}", m / base))
        })
        .collect();
    format!("  {label} ÷ {versus}: {}", figures.join(", "))
}

/// The median of `path` over `runs`.
fn median_of(runs: &[&Value], path: &str) -> Option<f64> {
    let mut values: Vec<f64> = runs.iter().filter_map(|r| field(r, path)).collect();
    median(&mut values)
}

/// One budget of `label`'s runs: its verdict line, and whether it passed. A ratio to a
/// label with no runs in these files is skipped (not failed): run both scenarios together.
fn check(
    budget: &Budget,
    label: &str,
    runs: &[&Value],
    groups: &BTreeMap<String, Vec<&Value>>,
) -> (String, bool) {
    let path = &budget.field;
    let med = median_of(runs, path);
    let mark = |ok: bool| if ok { "PASS" } else { "FAIL" };
    let Some(versus) = &budget.versus else {
        let ok = med.is_some_and(|m| budget.holds(m));
        return (
            format!(
                "  {:<4} {label:<20} {path} median {} {} {}",
                mark(ok),
                med.map_or("-".into(), fmt),
                budget.sign(),
                fmt(budget.bound)
            ),
            ok,
        );
    };
    let Some(base) = groups.get(versus).and_then(|g| median_of(g, path)) else {
        return (
            format!(
                "  SKIP {label:<20} {path} versus {versus} {} {}: no runs of {versus} here",
                budget.sign(),
                fmt(budget.bound)
            ),
            true,
        );
    };
    let ratio = med.filter(|_| base != 0.0).map(|m| m / base);
    let ok = ratio.is_some_and(|r| budget.holds(r));
    (
        format!(
            "  {:<4} {label:<20} {path} median {} = {} × {versus}'s {} (goal {} {}×)",
            mark(ok),
            med.map_or("-".into(), fmt),
            ratio.map_or("-".into(), |r| format!("{r:.2}")),
            fmt(base),
            budget.sign(),
            fmt(budget.bound)
        ),
        ok,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn medians_and_budgets() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
        let run = |ns: f64, lost: u64| {
            json!({"scenario":"fanout","label":"ws-fanout","transport":"ws","subscribers":10,
                   "publishers":1,"rate":0.0,"server_ns_per_delivery":ns,"lost":lost,
                   "duplicated":0,"latency_us":{"p99":1500.0},
                   "budget":{"server_ns_per_delivery":400.0}})
        };
        let (text, ok) = render(&[run(300.0, 0), run(500.0, 0), run(350.0, 0)]);
        assert!(ok, "{text}");
        assert!(text.contains("PASS ws-fanout"), "{text}");
        assert!(text.contains("350 ns"), "{text}");
        let (text, ok) = render(&[run(450.0, 0), run(500.0, 0), run(350.0, 1)]);
        assert!(!ok);
        assert!(text.contains("FAIL ws-fanout"), "{text}");
        assert!(text.contains("median 450 "), "{text}");
        assert!(text.contains("1 of 3 run(s) had some"), "{text}");
        assert_eq!(field(&run(1.0, 0), "latency_us.p99"), Some(1500.0));
    }

    #[test]
    fn lossy_runs_show_the_quiet_room_per_phase_and_check_their_budgets() {
        let run = |p90_vs_off: f64, lost: u64| {
            json!({"scenario":"lossy","label":"wt-lossy","transport":"wt","protocol":4,
                   "loss":0.02,"delay_ms":10.0,"quiet_rate":20,"lost":lost,"duplicated":0,
                   "relay_dropped":60,
                   "phases":{"busy_off":{"quiet_ms":{"p50":12.0,"p90":14.0}},
                             "busy_250":{"quiet_ms":{"p50":12.5,"p90":14.0 * p90_vs_off},
                                         "quiet_p90_vs_off":p90_vs_off}},
                   "budget":["phases.busy_250.quiet_p90_vs_off<=1.3"]})
        };
        let (text, ok) = render(&[run(1.1, 0), run(1.0, 0), run(1.2, 0)]);
        assert!(ok, "{text}");
        assert!(
            text.contains("wt-lossy — wt protocol 4, 2% loss and 10.0 ms each way"),
            "{text}"
        );
        assert!(text.contains("quiet p90, busy 250/s"), "{text}");
        assert!(text.contains("1.10 ×"), "{text}");
        assert!(text.contains("PASS wt-lossy             no loss"), "{text}");
        // Phases a run did not have are left out, not shown as zero.
        assert!(!text.contains("busy 500/s"), "{text}");
        let (text, ok) = render(&[run(1.5, 0), run(1.4, 1)]);
        assert!(!ok, "{text}");
        assert!(text.contains("FAIL wt-lossy"), "{text}");
    }

    #[test]
    fn join_storms_are_judged_on_their_own_figures() {
        let run = |label: &str, rooms: &str, us: f64, failures: u64, budget: &[&str]| {
            json!({"scenario":"join","label":label,"transport":"ws","clients":10000,
                   "rooms":rooms,"join_s":1.5,"server_cpu_per_join_us":us,
                   "bytes_per_member":10240.0,"failures":failures,"closed_early":0,
                   "budget":budget})
        };
        let big = [
            "join_s=2",
            "bytes_per_member=12288",
            "server_cpu_per_join_us/empty<=3",
        ];
        let runs = [
            run("empty", "each", 100.0, 0, &[]),
            run("big", "one", 250.0, 0, &big),
        ];
        let (text, ok) = render(&runs);
        assert!(ok, "{text}");
        assert!(
            text.contains("big — 10000 ws clients join one room"),
            "{text}"
        );
        assert!(
            text.contains("empty — 10000 ws clients join a room each"),
            "{text}"
        );
        assert!(text.contains("server memory per member"), "{text}");
        assert!(text.contains("= 2.50 × empty's 100 (goal ≤ 3×)"), "{text}");
        assert!(
            text.contains("PASS big                  every client joined"),
            "{text}"
        );
        // Not a fan-out: no loss line, no fan-out figures.
        assert!(
            !text.contains("no loss") && !text.contains("latency"),
            "{text}"
        );
        let (text, ok) = render(&[
            run("empty", "each", 100.0, 0, &[]),
            run("big", "one", 350.0, 3, &big),
        ]);
        assert!(!ok);
        assert!(
            text.contains("FAIL big                  server_cpu_per_join_us"),
            "{text}"
        );
        assert!(
            text.contains("FAIL big                  every client joined and stayed (1 of 1"),
            "{text}"
        );
    }

    #[test]
    fn nodes_and_redis_are_shown_when_present() {
        let run = |label: &str, ns: f64, extra: serde_json::Value, budget: &[&str]| {
            let mut v = json!({"scenario":"fanout","label":label,"transport":"ws",
                   "subscribers":1000,"publishers":10,"rate":0.0,"server_ns_per_delivery":ns,
                   "lost":0,"duplicated":0,"budget":budget});
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            v
        };
        let memory = run("ws-fanout", 200.0, json!({}), &[]);
        let redis = run(
            "ws-fanout-redis",
            250.0,
            json!({"nodes":2,"redis_ns_per_delivery":30.0,"redis_cpu_pct":12.5,
                   "versus":"ws-fanout"}),
            &["server_ns_per_delivery/ws-fanout<=1.3"],
        );
        let (text, _) = render(std::slice::from_ref(&redis));
        assert!(
            text.contains("ws-fanout-redis ÷ ws-fanout: no runs of ws-fanout here"),
            "{text}"
        );
        let (text, ok) = render(&[memory, redis]);
        assert!(
            text.contains("ws-fanout-redis ÷ ws-fanout: server CPU per delivery 1.25\n"),
            "{text}"
        );
        assert!(ok, "{text}");
        assert!(
            text.contains("ws-fanout-redis — 1000 ws clients over 2 nodes, 10 publishers"),
            "{text}"
        );
        assert!(
            text.contains("ws-fanout — 1000 ws clients, 10 publishers"),
            "{text}"
        );
        assert!(text.contains("Redis CPU per delivery"), "{text}");
        assert!(
            text.contains("= 1.25 × ws-fanout's 200 (goal ≤ 1.30×)"),
            "{text}"
        );
        // The memory run has no Redis figures: one line each, the Redis run's.
        assert_eq!(text.matches("Redis CPU per delivery").count(), 1, "{text}");
        assert_eq!(text.matches("Redis CPU  ").count(), 1, "{text}");
    }

    #[test]
    fn resumes_are_shown_and_must_be_exact() {
        let run = |label: &str, missing: u64| {
            json!({"scenario":"fanout","label":label,"transport":"ws","subscribers":1000,
                   "publishers":10,"rate":20.0,"lost":0,"duplicated":0,
                   "latency_us":{"p99":12000.0},"resumers":4,"resumes":310,
                   "resume_ms":{"p50":6.2,"p99":14.5},"resume_gaps":0,
                   "resume_missing":missing,"resume_duplicated":0,"resume_failures":0,
                   "budget":[]})
        };
        let quiet = json!({"scenario":"fanout","label":"quiet","transport":"ws",
                   "subscribers":1000,"publishers":10,"rate":20.0,"lost":0,"duplicated":0,
                   "budget":[]});
        let (text, ok) = render(&[quiet.clone(), run("resume", 0)]);
        assert!(ok, "{text}");
        assert!(text.contains("resumes in the window"), "{text}");
        assert!(text.contains("14.5 ms"), "{text}");
        assert!(
            text.contains("PASS resume               every resume replayed exactly"),
            "{text}"
        );
        // Runs without resumers have neither the figures nor the check.
        assert_eq!(text.matches("every resume").count(), 1, "{text}");
        assert_eq!(text.matches("resumes in the window").count(), 1, "{text}");
        let (text, ok) = render(&[quiet, run("resume", 3)]);
        assert!(!ok);
        assert!(text.contains("FAIL resume"), "{text}");
    }

    #[test]
    fn reads_are_judged_on_answers_and_frames_to_others() {
        let run = |label: &str, big: bool, others: u64, per_interval: u64, answered: u64| {
            json!({"scenario":"reads","label":label,"transport":"ws","subscribers":10000,
                   "rate":10.0,"spread_s":10.0,"big_room":big,"members":10000,
                   "members_with_read_state":10000,"marks_sent":10000,
                   "marks_answered":answered,"answers_wrong":0,"frames_to_others":others,
                   "receipts_frames":others,"unasked_read_frames":0,
                   "receipts_max_per_interval":per_interval,"server_cpu_per_mark_us":42.0,
                   "lost":0,"duplicated":0,"latency_us":{"p99":90000.0},
                   "budget":["latency_us.p99<=100000"]})
        };
        let (text, ok) = render(&[run("big", true, 0, 0, 10000)]);
        assert!(ok, "{text}");
        assert!(
            text.contains("big — 10000 ws members each mark the room read over 10.0 s"),
            "{text}"
        );
        assert!(text.contains("server CPU per mark"), "{text}");
        assert!(
            text.contains("PASS big                  no frame to the other members"),
            "{text}"
        );
        assert!(
            text.contains("PASS big                  every member had its read state"),
            "{text}"
        );
        let (text, ok) = render(&[run("big", true, 3, 1, 10000)]);
        assert!(!ok);
        assert!(
            text.contains("FAIL big                  no frame to the other members"),
            "{text}"
        );
        let (text, ok) = render(&[run("big", true, 0, 0, 9999)]);
        assert!(!ok);
        assert!(
            text.contains("FAIL big                  every member"),
            "{text}"
        );
        // A small room: receipts are expected, one per interval at most.
        let (text, ok) = render(&[run("small", false, 40, 1, 10000)]);
        assert!(ok, "{text}");
        assert!(
            text.contains("PASS small                receipts at most one"),
            "{text}"
        );
        let (_, ok) = render(&[run("small", false, 40, 2, 10000)]);
        assert!(!ok);
    }

    #[test]
    fn budgets_parse_and_print_back() {
        let b = Budget::parse("server_ns_per_delivery=400").unwrap();
        assert_eq!(
            (b.at_least, b.bound, b.versus.as_deref()),
            (false, 400.0, None)
        );
        assert_eq!(b.to_string(), "server_ns_per_delivery<=400");
        let b = Budget::parse("acked_per_s>=50000").unwrap();
        assert!(b.at_least && b.holds(50000.0) && !b.holds(49999.0));
        let b = Budget::parse("latency_us.p99/ws-latency<=1.2").unwrap();
        assert_eq!(b.field, "latency_us.p99");
        assert_eq!(b.versus.as_deref(), Some("ws-latency"));
        assert_eq!(Budget::parse(&b.to_string()), Ok(b));
        for bad in ["lost", "x=", "=3", "x>=fast", "x/<=1", "x=inf"] {
            assert!(Budget::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ratio_budgets_compare_with_another_label() {
        let run = |label: &str, acked: f64, budget: &[&str]| {
            json!({"scenario":"fanout","label":label,"transport":"ws","subscribers":13,
                   "publishers":10,"rate":0.0,"acked_per_s":acked,"lost":0,"duplicated":0,
                   "budget":budget})
        };
        let floor = ["acked_per_s/mem>=0.7", "acked_per_s>=50000"];
        let mem = [run("mem", 100_000.0, &[]), run("mem", 90_000.0, &[])];
        let good = run("disk", 80_000.0, &floor);
        let (text, ok) = render(&[mem[0].clone(), mem[1].clone(), good]);
        assert!(ok, "{text}");
        assert!(
            text.contains("PASS disk                 acked_per_s median 80000 = 0.84 × mem's 95000 (goal ≥ 0.70×)"),
            "{text}"
        );
        assert!(text.contains("acked_per_s median 80000 ≥ 50000"), "{text}");
        let slow = run("disk", 60_000.0, &floor);
        let (text, ok) = render(&[mem[0].clone(), mem[1].clone(), slow.clone()]);
        assert!(!ok);
        assert!(text.contains("FAIL disk"), "{text}");
        // Without the other label's runs the ratio cannot be checked: skipped, not failed.
        let (text, ok) = render(&[slow]);
        assert!(ok, "{text}");
        assert!(text.contains("SKIP disk"), "{text}");
    }
}
