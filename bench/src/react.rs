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
//! The run's skeleton (connect, warm-up, baseline, the phase, the messages' account and
//! the CPU figures) is `turns.rs`'s, its clients the fan-out's (`client.rs`); this module
//! adds the reactions and their bookkeeping, fed by the readers' hooks.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};

use crate::client::{Run, Schedule, Turns};
use crate::turns::{Answers, Figures, Paced, Spread, TurnArgs, codes, row, run_turns, zeros};
use crate::{Percentiles, account, opt};

#[derive(Args, Clone)]
pub struct ReactArgs {
    #[command(flatten)]
    pub turns: TurnArgs,
    /// Only the first R members react (default: every member): the same updates to every
    /// member at fewer reactions, to tell the cost of the reactions from that of their
    /// updates.
    #[arg(long)]
    reactors: Option<usize>,
    /// The reactions, handed out in turn (member i adds the (i mod k)-th), separated by
    /// commas.
    #[arg(long, value_delimiter = ',', default_value = "👍,🎉,😂,👀")]
    reaction: Vec<String>,
}

/// The tool's reaction ids are `r<member>`.
const REACT_ID: &[u8] = b"\"id\":\"r";
const REACTIONS_KEY: &[u8] = b"\"reactions\":[";
const MINE_KEY: &[u8] = b"\"mine\":[";
const COUNT_KEY: &[u8] = b"\"count\":";

/// What the clients of a reactions run share: the plan of the reactions, and per member
/// what its reader saw of M.
pub struct Shared {
    /// The reactions as JSON strings (quoted); member i adds `quoted[i % len]`.
    quoted: Vec<String>,
    /// Members 0..reactors react, spread over the phase.
    schedule: Schedule,
    /// M's sequence number, once the sender's ack has told it (0: not yet).
    target: AtomicU64,
    /// The reactions sent, acked (their acks' times) and refused.
    answers: Answers,
    /// Acknowledged reactions per entry of `quoted`.
    acked_each: Box<[AtomicU64]>,
    /// Acks whose `mine` did not hold the reaction sent.
    mine_wrong: AtomicU64,
    /// Per member: updates of M received (at most one per interval), the sum of the
    /// counts in the latest one, and its reactions array.
    updates: Paced,
    totals: Box<[AtomicU64]>,
    latest: Box<[Mutex<Vec<u8>>]>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("quoted", &self.quoted)
            .field("reactors", &self.schedule.takers())
            .field("target", &self.target)
            .field("answers", &self.answers)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub fn new(
        members: usize,
        reactors: usize,
        reactions: &[String],
        spread: Duration,
        window: Duration,
    ) -> Result<Shared, String> {
        if reactions.is_empty() || reactions.iter().any(String::is_empty) {
            return Err("--reaction: at least one, none empty".into());
        }
        Ok(Shared {
            quoted: reactions
                .iter()
                .map(|r| serde_json::to_string(r).expect("strings serialize"))
                .collect(),
            schedule: Schedule::new(reactors.min(members), spread),
            target: AtomicU64::new(0),
            answers: Answers::new(members),
            acked_each: zeros(reactions.len()),
            mine_wrong: AtomicU64::new(0),
            updates: Paced::new(members, window),
            totals: zeros(members),
            latest: zeros(members),
        })
    }

    /// Every reaction answered, and every member still connected at the acked count.
    fn settled(&self, run: &Run) -> bool {
        let acked = self.answers.answered();
        self.answers.settled()
            && (0..run.clients.len())
                .filter(|&i| run.clients[i].state.load(Relaxed) == 1)
                .all(|i| self.totals[i].load(Relaxed) == acked)
    }
}

impl Turns for Shared {
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }
    /// Member `idx`'s `react` frame (sent at `now_ns`), counted as sent.
    fn frame(&self, room: &str, idx: usize, _newest: u64, now_ns: u64) -> String {
        self.answers.send(idx, now_ns);
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
        self.answers.answer(idx, now);
        self.acked_each[k].fetch_add(1, Relaxed);
        let mine_ok = array_after(frame, MINE_KEY)
            .is_some_and(|mine| account::find(mine, self.quoted[k].as_bytes()).is_some());
        if !mine_ok {
            self.mine_wrong.fetch_add(1, Relaxed);
        }
        true
    }
    /// An `error`: counted by code if it answers a reaction.
    fn on_error(&self, _idx: usize, frame: &[u8]) {
        if account::find(frame, REACT_ID).is_some() {
            self.answers.refuse(frame);
        }
    }
    /// An `update` read by member `idx`'s reader at `now`: counted if it is M's.
    fn on_update(&self, idx: usize, frame: &[u8], now: u64) {
        let target = self.target.load(Relaxed);
        if target == 0 || account::u64_after(frame, account::SEQ_KEY) != Some(target) {
            return;
        }
        self.updates.record(idx, now);
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

#[derive(Debug, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord, Clone)]
pub struct ReactionCount {
    reaction: String,
    count: u64,
}

#[derive(Debug, Serialize)]
pub struct ReactReport {
    #[serde(flatten)]
    run: Figures,
    /// M's sequence number.
    target_seq: u64,
    /// How many members reacted, and the reactions handed out.
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
    /// Server CPU in the reaction phase (from the first turn until every member showed
    /// the final count) per acknowledged reaction, µs: all of it, and net of the
    /// baseline's CPU per second (what the sender's messages cost alone).
    server_cpu_per_reaction_us: Option<f64>,
    server_cpu_per_reaction_net_us: Option<f64>,
}

pub async fn reactions(args: ReactArgs) -> Result<ReactReport, String> {
    let n = args.turns.common.subscribers;
    let interval = args.turns.interval();
    let reactors = args.reactors.unwrap_or(n).min(n);
    let shared = Arc::new(Shared::new(
        n,
        reactors,
        &args.reaction,
        args.turns.spread(),
        args.turns.window(),
    )?);
    let turns: Arc<dyn Turns> = shared.clone();
    let ran = run_turns(&args.turns, "reactions", turns, |run| shared.settled(run)).await?;
    let live = &ran.live;

    // The reactions.
    let acked = shared.answers.answered();
    let (m_updates, per_interval, min_gap) = ran.paced(&shared.updates);
    let at_final = live
        .iter()
        .filter(|&&i| shared.totals[i].load(Relaxed) == acked)
        .count();
    let mut states: Vec<(Vec<u8>, usize)> = Vec::new();
    for &i in live {
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
    let reaction_errors = shared.answers.refused();
    let (server_cpu_per_reaction_us, server_cpu_per_reaction_net_us) = ran.cpu_per(acked);
    let phase_s = ran.figures.phase_s;
    Ok(ReactReport {
        target_seq: shared.target.load(Relaxed),
        reactors,
        reactions: args.reaction.clone(),
        reactions_sent: shared.answers.sent(),
        reactions_acked: acked,
        reaction_errors_total: reaction_errors.values().sum(),
        reaction_errors,
        mine_wrong: shared.mine_wrong.load(Relaxed),
        react_ack_us: shared.answers.latency(),
        m_updates,
        m_updates_bound: (phase_s / interval.as_secs_f64()).ceil() as u64 + 1,
        m_updates_max_per_interval: per_interval,
        m_update_min_gap_ms: min_gap,
        members: live.len(),
        members_at_final_count: at_final,
        distinct_final_states: states.len(),
        final_reactions,
        acked_reactions,
        members_agree,
        agreement,
        server_cpu_per_reaction_us,
        server_cpu_per_reaction_net_us,
        run: ran.figures,
    })
}

impl ReactReport {
    pub fn table(&self) -> String {
        let mut t = String::new();
        let counts = |list: &[ReactionCount]| {
            list.iter()
                .map(|r| format!("{} {}", r.reaction, r.count))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let run = &self.run;
        let what = format!(
            ", one message reacted to by {} of them over {:.1} s",
            self.reactors, run.spread_s
        );
        run.head_rows(&mut t, "reactions", &what);
        row(
            &mut t,
            "reactions sent / acked",
            format!(
                "{} / {} (errors: {}; ack without the reaction in `mine`: {})",
                self.reactions_sent,
                self.reactions_acked,
                codes(&self.reaction_errors),
                self.mine_wrong
            ),
        );
        row(&mut t, "  reaction to ack", self.react_ack_us.line());
        row(
            &mut t,
            "updates of M per member",
            format!(
                "min {} median {} max {} ({} in all; at most {} at one per interval in the \
                 reaction phase of {:.1} s)",
                self.m_updates.min,
                self.m_updates.median,
                self.m_updates.max,
                self.m_updates.total,
                self.m_updates_bound,
                run.phase_s
            ),
        );
        row(
            &mut t,
            "  most within an interval",
            format!(
                "{} (interval {} ms, updates closer than {} ms count as one interval's; \
                 shortest gap {})",
                self.m_updates_max_per_interval,
                run.presence_interval_ms,
                run.interval_window_ms,
                opt(self.m_update_min_gap_ms, " ms")
            ),
        );
        row(&mut t, "final count", self.agreement.clone());
        row(
            &mut t,
            "  final reactions",
            format!(
                "{} (acked: {}); {} of {} members at the final count",
                counts(&self.final_reactions),
                counts(&self.acked_reactions),
                self.members_at_final_count,
                self.members
            ),
        );
        run.message_rows(&mut t, "reactions");
        run.cost_rows(
            &mut t,
            "reaction",
            self.server_cpu_per_reaction_us,
            self.server_cpu_per_reaction_net_us,
        );
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
        assert!(account::find(error, REACT_ID).is_some());
    }

    #[test]
    fn acks_count_reactions_apart_and_tell_the_target() {
        let shared = Shared::new(
            4,
            4,
            &["👍".to_string(), "🎉".to_string()],
            Duration::from_secs(1),
            Duration::from_millis(900),
        )
        .unwrap();
        assert!(!shared.on_ack(0, br#"{"type":"ack","room":"r","id":"0-0","seq":12}"#, 5));
        assert_eq!(shared.target.load(Relaxed), 12);
        let frame = shared.frame("r", 3, 0, 1_000);
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
        assert_eq!(shared.updates.count(2), 0);
        let m = r#"{"type":"update","room":"r","seq":12,"at":50,"reactions":[{"reaction":"👍","count":3}]}"#;
        shared.on_update(2, m.as_bytes(), 10);
        assert_eq!(shared.updates.count(2), 1);
        assert_eq!(shared.totals[2].load(Relaxed), 3);
    }
}
