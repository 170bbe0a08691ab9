//! Rationing what any client can make the server do: token buckets (a connection's frames)
//! and the log lines a client can cause.
//!
//! A line per refused connection or failed login would let anyone fill the disk and bury
//! what matters in the log: every warning a client can trigger is written through
//! [`throttled!`], at most one line a second per place in the code that writes it, each
//! saying how many of its kind were left out since the last (`unlogged`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket: `burst` at once, then `per_second`, sustained.
#[derive(Debug)]
pub(crate) struct RateLimit {
    tokens: f64,
    last: Instant,
    per_second: f64,
    burst: f64,
}

impl RateLimit {
    /// A full bucket.
    pub(crate) fn new(per_second: f64, burst: f64) -> RateLimit {
        RateLimit {
            tokens: burst,
            last: Instant::now(),
            per_second,
            burst,
        }
    }

    /// Takes a token if there is one.
    pub(crate) fn allow(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Lines of one kind at most once a second, each saying how many happened since the last:
/// a client (or a backend that is down) must not turn every request into a log line. Used
/// through [`throttled!`], which gives each call site its own.
pub(crate) struct Throttle(Mutex<ThrottleState>);

struct ThrottleState {
    last: Option<Instant>,
    unlogged: u64,
}

impl Throttle {
    /// A throttle that logs its first line at once.
    pub(crate) const fn new() -> Throttle {
        Throttle(Mutex::new(ThrottleState {
            last: None,
            unlogged: 0,
        }))
    }

    /// Counts one occurrence; `Some(n)` when it is to be logged now, with `n` more that
    /// were not logged since the last line.
    pub(crate) fn note(&self) -> Option<u64> {
        let mut state = self.0.lock().unwrap();
        let now = Instant::now();
        if state
            .last
            .is_some_and(|last| now.duration_since(last) < Duration::from_secs(1))
        {
            state.unlogged += 1;
            return None;
        }
        state.last = Some(now);
        Some(std::mem::take(&mut state.unlogged))
    }
}

/// `tracing::$level!(fields…, message)` for a line a client can trigger: through a
/// [`Throttle`] of this call site's own (one per process: the log is), at most one line a
/// second, with the field `unlogged` counting the lines left out since the last.
macro_rules! throttled {
    ($level:ident, $($line:tt)+) => {{
        static THROTTLE: $crate::throttle::Throttle = $crate::throttle::Throttle::new();
        if let Some(unlogged) = THROTTLE.note() {
            tracing::$level!(unlogged, $($line)+);
        }
    }};
}
pub(crate) use throttled;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_allows_a_burst_then_the_sustained_rate() {
        let mut rate = RateLimit::new(10.0, 5.0);
        assert_eq!((0..20).filter(|_| rate.allow()).count(), 5);
        rate.last -= Duration::from_millis(300);
        assert_eq!((0..20).filter(|_| rate.allow()).count(), 3);
    }

    #[test]
    fn throttled_lines_count_what_they_did_not_log() {
        let throttle = Throttle::new();
        assert_eq!(throttle.note(), Some(0));
        assert_eq!(throttle.note(), None);
        assert_eq!(throttle.note(), None);
        throttle.0.lock().unwrap().last = Some(Instant::now() - Duration::from_secs(2));
        assert_eq!(throttle.note(), Some(2));
    }
}
