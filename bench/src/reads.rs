//! `wtchat-bench reads`: a room's members mark it read (issue 26). N members join one room;
//! the first of them (the sender) sends ordinary messages at a fixed rate throughout.
//! After a warm-up and a baseline of those messages alone, every member sends one `read`
//! for the newest message it has received, the N turns spread evenly over `--spread`
//! seconds, while the sender keeps sending.
//!
//! A mark is answered with a `read` frame to the marking member's own connections only; a
//! small room (fewer members than the presence threshold) tells everyone in one `receipts`
//! frame per presence interval, a big room tells no one. The tool reports the marks sent,
//! the `read` answers (each checked: its `seq` at least the one marked, its `head` at least
//! its `seq`) and the errors; every frame that reached a member other than the marking one
//! because of the marks — any `receipts`, any `read` it did not ask for — which a big room
//! must not send; the server's CPU per mark; and the latency of the sender's messages
//! during the marks beside the baseline's.
//!
//! Every join brings the member's read state: in its `joined` (a `read` object, as the
//! server sends it now), or in a `read` frame right after it (as issue 26's first text had
//! it): then the first `read` a member gets before marking is that one, and asked for. The phase runs from the first
//! turn until every mark is answered, and one presence interval (and the jitter) more,
//! for any `receipts` the last marks cause. The skeleton is `turns.rs`'s.

use std::sync::Arc;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use crate::client::{Run, Schedule, Turns};
use crate::turns::{
    Answers, Figures, Paced, Spread, TurnArgs, codes, paced_figures, row, run_turns, zeros,
};
use crate::{Percentiles, account, opt};

#[derive(Args, Clone)]
pub struct ReadsArgs {
    #[command(flatten)]
    pub turns: TurnArgs,
    /// The server's `--presence-threshold` (100 by default): a room of this many members
    /// or more is big and must send no `receipts`.
    #[arg(long, default_value_t = 100)]
    presence_threshold: usize,
}

const HEAD_KEY: &[u8] = b"\"head\":";
const UNREAD_KEY: &[u8] = b"\"unread\":";
/// The read state in a `joined`.
const JOINED_READ_KEY: &[u8] = b"\"read\":{";
/// Errors answering a send carry its id; those answering a `read` none.
const ID_KEY: &[u8] = b"\"id\":\"";

/// What the clients of a reads run share: per member its mark and what its reader saw.
pub struct Shared {
    /// Every member marks, spread over the phase.
    schedule: Schedule,
    /// The marks sent, answered (their answers' times) and refused.
    answers: Answers,
    /// Answers whose `seq` was below the mark, or whose `head` below their `seq`.
    answers_wrong: AtomicU64,
    /// The most `unread` an answer counted.
    answer_unread_max: AtomicU64,
    /// Per member: the number it marked, plus one (0: not yet), and whether its answer is
    /// still due.
    marked: Box<[AtomicU64]>,
    pending: Box<[AtomicBool]>,
    /// Per member: its read state after joining came (in its `joined`, or as the first
    /// `read` before its mark).
    join_state: Box<[AtomicBool]>,
    /// Per member: `read` frames it did not ask for, and `receipts` frames (at most one
    /// per interval).
    unasked: Box<[AtomicU32]>,
    receipts: Paced,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("members", &self.schedule.takers())
            .field("answers", &self.answers)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub fn new(members: usize, spread: Duration, window: Duration) -> Shared {
        Shared {
            schedule: Schedule::new(members, spread),
            answers: Answers::new(members),
            answers_wrong: AtomicU64::new(0),
            answer_unread_max: AtomicU64::new(0),
            marked: zeros(members),
            pending: zeros(members),
            join_state: zeros(members),
            unasked: zeros(members),
            receipts: Paced::new(members, window),
        }
    }
}

impl Turns for Shared {
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }
    /// Member `idx`'s `read` of the newest message it has received, counted as sent.
    fn frame(&self, room: &str, idx: usize, newest: u64, now_ns: u64) -> String {
        self.marked[idx].store(newest + 1, Relaxed);
        self.answers.send(idx, now_ns);
        self.pending[idx].store(true, Release);
        format!(r#"{{"type":"read","room":"{room}","seq":{newest}}}"#)
    }
    /// A `joined` with the member's read state in it.
    fn on_joined(&self, idx: usize, frame: &[u8]) {
        if account::find(frame, JOINED_READ_KEY).is_some() {
            self.join_state[idx].store(true, Relaxed);
        }
    }
    /// A `read` marks no message: every ack is a send's.
    fn on_ack(&self, _idx: usize, _frame: &[u8], _now: u64) -> bool {
        false
    }
    /// An `error` without a send's id while member `idx`'s answer is due: its mark's.
    fn on_error(&self, idx: usize, frame: &[u8]) {
        if account::find(frame, ID_KEY).is_none() && self.pending[idx].swap(false, AcqRel) {
            self.answers.refuse(frame);
        }
    }
    /// A `read` read by member `idx`'s reader at `now`: its answer while one is due, its
    /// read state after joining if it is the first before its mark and its `joined` had
    /// none, otherwise not asked for.
    fn on_read(&self, idx: usize, frame: &[u8], now: u64) {
        if self.pending[idx].swap(false, AcqRel) {
            let marked = self.marked[idx].load(Acquire).saturating_sub(1);
            let seq = account::u64_after(frame, account::SEQ_KEY);
            let head = account::u64_after(frame, HEAD_KEY);
            let right = seq.zip(head).is_some_and(|(s, h)| s >= marked && h >= s);
            if !right {
                self.answers_wrong.fetch_add(1, Relaxed);
            }
            if let Some(unread) = account::u64_after(frame, UNREAD_KEY) {
                self.answer_unread_max.fetch_max(unread, Relaxed);
            }
            self.answers.answer(idx, now);
        } else if self.marked[idx].load(Acquire) == 0 && !self.join_state[idx].swap(true, Relaxed) {
            // Its read state after joining.
        } else {
            self.unasked[idx].fetch_add(1, Relaxed);
        }
    }
    /// A `receipts` read by member `idx`'s reader at `now`.
    fn on_receipts(&self, idx: usize, _frame: &[u8], now: u64) {
        self.receipts.record(idx, now);
    }
}

#[derive(Debug, Serialize)]
pub struct ReadsReport {
    #[serde(flatten)]
    run: Figures,
    /// The presence threshold given, and whether the room was big (at or past it).
    presence_threshold: usize,
    big_room: bool,
    /// Members taking a turn (every member), and connected at the end.
    markers: usize,
    members: usize,
    /// Members whose read state came with their join (in `joined`, or as the first
    /// `read` frame after it).
    members_with_read_state: usize,
    marks_sent: u64,
    /// Marks answered with a `read` frame, and those answers that were wrong (`seq` below
    /// the mark, or `head` below `seq`).
    marks_answered: u64,
    answers_wrong: u64,
    /// Marks answered by an error, by code, and their sum.
    mark_errors: std::collections::BTreeMap<String, u64>,
    mark_errors_total: u64,
    /// The most `unread` an answer counted (messages newer than the mark, up to `head`).
    answer_unread_max: u64,
    /// Mark to its answer, µs.
    mark_to_answer_us: Percentiles,
    /// Frames the marks caused at members other than the marking one: `receipts` frames,
    /// `read` frames a member did not ask for, and both together (a big room: 0).
    receipts_frames: u64,
    unasked_read_frames: u64,
    frames_to_others: u64,
    /// `receipts` frames per member (members connected at the end); the most a member may
    /// get at one per interval (the intervals the phase spans, plus one); the most any
    /// member got within one interval.
    receipts_per_member: Spread,
    receipts_bound: u64,
    receipts_max_per_interval: u32,
    /// The shortest gap between two `receipts` at any member, ms.
    receipts_min_gap_ms: Option<f64>,
    /// Server CPU in the phase (from the first mark until every mark was answered, and
    /// an interval more) per answered mark, µs: all of it, and net of the baseline's CPU
    /// per second (what the sender's messages cost alone).
    server_cpu_per_mark_us: Option<f64>,
    server_cpu_per_mark_net_us: Option<f64>,
}

pub async fn reads(args: ReadsArgs) -> Result<ReadsReport, String> {
    let n = args.turns.common.subscribers;
    let interval = args.turns.interval();
    let shared = Arc::new(Shared::new(n, args.turns.spread(), args.turns.window()));
    let turns: Arc<dyn Turns> = shared.clone();
    // Done an interval (and the jitter) after the last answer: the receipts it causes in
    // a small room come at the next tick.
    let linger = interval + Duration::from_millis(args.turns.jitter_ms);
    let mut all_answered: Option<Instant> = None;
    let done = |_: &Run| {
        if !shared.answers.settled() {
            all_answered = None;
            return false;
        }
        all_answered.get_or_insert_with(Instant::now).elapsed() >= linger
    };
    let ran = run_turns(&args.turns, "reads", turns, done).await?;
    let live = &ran.live;

    // Frames to anyone, connected at the end or not.
    let every: Vec<usize> = (0..n).collect();
    let receipts_frames = paced_figures(&shared.receipts, &every).0.total;
    let unasked_read_frames: u64 = shared
        .unasked
        .iter()
        .map(|c| u64::from(c.load(Relaxed)))
        .sum();
    let (receipts_per_member, receipts_max_per_interval, receipts_min_gap_ms) =
        ran.paced(&shared.receipts);
    let members_with_read_state = live
        .iter()
        .filter(|&&i| shared.join_state[i].load(Relaxed))
        .count();
    let answered = shared.answers.answered();
    let mark_errors = shared.answers.refused();
    let (server_cpu_per_mark_us, server_cpu_per_mark_net_us) = ran.cpu_per(answered);
    let phase_s = ran.figures.phase_s;
    Ok(ReadsReport {
        presence_threshold: args.presence_threshold,
        big_room: n >= args.presence_threshold,
        markers: shared.schedule.takers(),
        members: live.len(),
        members_with_read_state,
        marks_sent: shared.answers.sent(),
        marks_answered: answered,
        answers_wrong: shared.answers_wrong.load(Relaxed),
        mark_errors_total: mark_errors.values().sum(),
        mark_errors,
        answer_unread_max: shared.answer_unread_max.load(Relaxed),
        mark_to_answer_us: shared.answers.latency(),
        receipts_frames,
        unasked_read_frames,
        frames_to_others: receipts_frames + unasked_read_frames,
        receipts_per_member,
        receipts_bound: (phase_s / interval.as_secs_f64()).ceil() as u64 + 1,
        receipts_max_per_interval,
        receipts_min_gap_ms,
        server_cpu_per_mark_us,
        server_cpu_per_mark_net_us,
        run: ran.figures,
    })
}

impl ReadsReport {
    pub fn table(&self) -> String {
        let mut t = String::new();
        let run = &self.run;
        let what = format!(
            " (a {} room), each marks it read once over {:.1} s",
            if self.big_room { "big" } else { "small" },
            run.spread_s
        );
        run.head_rows(&mut t, "reads", &what);
        row(
            &mut t,
            "read state after join",
            format!(
                "{} of {} members",
                self.members_with_read_state, self.members
            ),
        );
        row(
            &mut t,
            "marks sent / answered",
            format!(
                "{} / {} (wrong answers: {}; errors: {}; most unread in an answer: {})",
                self.marks_sent,
                self.marks_answered,
                self.answers_wrong,
                codes(&self.mark_errors),
                self.answer_unread_max
            ),
        );
        row(&mut t, "  mark to answer", self.mark_to_answer_us.line());
        row(
            &mut t,
            "frames to other members",
            format!(
                "{} ({} receipts, {} read frames not asked for){}",
                self.frames_to_others,
                self.receipts_frames,
                self.unasked_read_frames,
                if self.big_room {
                    "; a big room sends none"
                } else {
                    ""
                }
            ),
        );
        row(
            &mut t,
            "  receipts per member",
            format!(
                "min {} median {} max {} (at most {} at one per interval in the phase of \
                 {:.1} s); most within an interval {} (interval {} ms, closer than {} ms \
                 counts as one; shortest gap {})",
                self.receipts_per_member.min,
                self.receipts_per_member.median,
                self.receipts_per_member.max,
                self.receipts_bound,
                run.phase_s,
                self.receipts_max_per_interval,
                run.presence_interval_ms,
                run.interval_window_ms,
                opt(self.receipts_min_gap_ms, " ms")
            ),
        );
        run.message_rows(&mut t, "marks");
        run.cost_rows(
            &mut t,
            "mark",
            self.server_cpu_per_mark_us,
            self.server_cpu_per_mark_net_us,
        );
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        Shared::new(3, Duration::from_secs(1), Duration::from_millis(900))
    }

    #[test]
    fn marks_name_the_newest_message_and_their_answers_are_checked() {
        let s = shared();
        // Member 1's read state after its join: asked for.
        let state = br#"{"type":"read","room":"r","seq":4,"unread":0,"mentions":0,"head":4}"#;
        s.on_read(1, state, 10);
        assert!(s.join_state[1].load(Relaxed));
        assert_eq!(s.unasked[1].load(Relaxed), 0);
        // A second one before its mark is not.
        s.on_read(1, state, 20);
        assert_eq!(s.unasked[1].load(Relaxed), 1);
        assert_eq!(
            s.frame("r", 1, 17, 1_000),
            r#"{"type":"read","room":"r","seq":17}"#
        );
        assert_eq!(s.answers.sent(), 1);
        // The answer: the mark, or past it (a later message arrived meanwhile).
        let answer = br#"{"type":"read","room":"r","seq":17,"unread":1,"mentions":0,"head":18}"#;
        s.on_read(1, answer, 3_001_000);
        assert_eq!(s.answers.answered(), 1);
        assert_eq!(s.answers_wrong.load(Relaxed), 0);
        assert_eq!(s.answer_unread_max.load(Relaxed), 1);
        assert!(s.answers.settled());
        // After its answer, another `read` is not asked for.
        s.on_read(1, answer, 4_000_000);
        assert_eq!(s.unasked[1].load(Relaxed), 2);
        // An answer below the mark is wrong; so is one whose head is below its seq.
        s.frame("r", 2, 30, 1_000);
        s.on_read(
            2,
            br#"{"type":"read","room":"r","seq":29,"unread":0,"mentions":0,"head":30}"#,
            2_000,
        );
        s.frame("r", 0, 30, 1_000);
        s.on_read(
            0,
            br#"{"type":"read","room":"r","seq":31,"unread":0,"mentions":0,"head":30}"#,
            2_000,
        );
        assert_eq!(s.answers_wrong.load(Relaxed), 2);
        assert_eq!(s.answers.answered(), 3);
    }

    #[test]
    fn the_read_state_may_come_in_joined() {
        let s = shared();
        s.on_joined(0, br#"{"type":"joined","room":"r","epoch":1,"seq":4,"you":{"id":1,"name":"p0","sender":"AAAAAAAAAAAAAAAA"},"members":[],"count":1,"gap":false,"replay":0,"read":{"seq":4,"unread":0,"mentions":0,"head":4}}"#);
        assert!(s.join_state[0].load(Relaxed));
        // Then a `read` before its mark is not asked for.
        s.on_read(
            0,
            br#"{"type":"read","room":"r","seq":4,"unread":0,"mentions":0,"head":4}"#,
            5,
        );
        assert_eq!(s.unasked[0].load(Relaxed), 1);
        // A `joined` without one leaves it to the first `read`.
        s.on_joined(1, br#"{"type":"joined","room":"r","epoch":1,"seq":4,"you":{"id":2,"name":"s1"},"members":[],"count":2,"gap":false,"replay":0}"#);
        assert!(!s.join_state[1].load(Relaxed));
    }

    #[test]
    fn errors_answer_a_mark_and_receipts_are_counted_per_interval() {
        let s = shared();
        // A send's error (with its id) is not a mark's.
        s.frame("r", 0, 5, 1_000);
        s.on_error(
            0,
            br#"{"type":"error","code":"rate_limited","message":"x","room":"r","id":"0-3"}"#,
        );
        assert!(!s.answers.settled());
        s.on_error(
            0,
            br#"{"type":"error","code":"storage_failed","message":"x","room":"r"}"#,
        );
        assert!(s.answers.settled());
        assert_eq!(s.answers.refused().len(), 1);
        // Nothing due: an error is no mark's.
        s.on_error(
            2,
            br#"{"type":"error","code":"not_joined","message":"x","room":"r"}"#,
        );
        assert!(s.answers.settled());
        assert_eq!(s.answers.refused().values().sum::<u64>(), 1);
        let receipts = br#"{"type":"receipts","room":"r","readers":[]}"#;
        s.on_receipts(2, receipts, 0);
        s.on_receipts(2, receipts, 1_000_000_000);
        assert_eq!(paced_figures(&s.receipts, &[2]).1, 1);
        s.on_receipts(2, receipts, 1_100_000_000);
        assert_eq!(paced_figures(&s.receipts, &[2]).1, 2);
        assert_eq!(s.receipts.count(2), 3);
    }
}
