//! `wtchat-bench summary`: reads the JSON lines of several runs, groups them by label, and
//! prints the median (and range) of each figure, then checks each run's budgets
//! (`--budget FIELD=MAX`, carried in its JSON line) against the medians. Medians, because a
//! shared 2-core machine has outliers; the range shows how far the runs spread.

use std::collections::BTreeMap;
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
    ("deliveries_per_s", "deliveries per second", 1.0, "/s"),
    ("latency_us.p50", "latency p50", 1e-3, "ms"),
    ("latency_us.p90", "latency p90", 1e-3, "ms"),
    ("latency_us.p99", "latency p99", 1e-3, "ms"),
    ("latency_us.max", "latency max", 1e-3, "ms"),
    ("first_delivery_us.p99", "  first recipient p99", 1e-3, "ms"),
    ("fanout_spread_us.p99", "  first to last p99", 1e-3, "ms"),
    (
        "tool_sched_delay_us.p99",
        "tool scheduling delay p99",
        1e-3,
        "ms",
    ),
    ("lost", "lost", 1.0, ""),
    ("duplicated", "duplicated", 1.0, ""),
    ("too_slow", "cut off as too slow", 1.0, ""),
    ("server_cpu_pct", "server CPU", 1.0, "%"),
    ("server_sys_pct", "  of which system", 1.0, "%"),
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
    let mut all_ok = true;
    for (label, group) in &groups {
        let first = group[0];
        let idle = first["scenario"] == "idle";
        let describe = if idle {
            format!(
                "{} idle {} connections",
                first["connections"],
                first["transport"].as_str().unwrap_or("?")
            )
        } else {
            let rate = first["rate"].as_f64().unwrap_or(0.0);
            format!(
                "{} {} clients, {} publishers, {}",
                first["subscribers"],
                first["transport"].as_str().unwrap_or("?"),
                first["publishers"],
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
        for &(path, name, scale, unit) in if idle { IDLE } else { FANOUT } {
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
        if let Some(budget) = first["budget"].as_object() {
            for (path, max) in budget {
                let Some(max) = max.as_f64() else { continue };
                let mut values: Vec<f64> = group.iter().filter_map(|r| field(r, path)).collect();
                let med = median(&mut values);
                let ok = med.is_some_and(|m| m <= max);
                all_ok &= ok;
                verdicts.push(format!(
                    "  {:<4} {label:<14} {path} median {} ≤ {}",
                    if ok { "PASS" } else { "FAIL" },
                    med.map_or("-".into(), fmt),
                    fmt(max)
                ));
            }
        }
        if !idle {
            let lossy = group
                .iter()
                .filter(|r| {
                    field(r, "lost").unwrap_or(0.0) > 0.0
                        || field(r, "duplicated").unwrap_or(0.0) > 0.0
                })
                .count();
            all_ok &= lossy == 0;
            verdicts.push(format!(
                "  {:<4} {label:<14} no loss, no duplicates ({lossy} of {} run(s) had some)",
                if lossy == 0 { "PASS" } else { "FAIL" },
                group.len()
            ));
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
}
