//! Rationing what any client can make the server do: token buckets (a connection's frames,
//! an address's ticket requests) and the log lines a client can cause.
//!
//! A line per refused connection or failed login would let anyone fill the disk and bury
//! what matters in the log: every warning a client can trigger is written through
//! [`throttled!`], at most one line a second per place in the code that writes it, each
//! saying how many of its kind were left out since the last (`unlogged`).

use std::collections::HashMap;
use std::net::IpAddr;
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
        self.allow_at(Instant::now())
    }

    /// Takes a token if there was one at `now` (a frame is judged by when it came, even
    /// when it is handled later).
    pub(crate) fn allow_at(&mut self, now: Instant) -> bool {
        let now = now.max(self.last);
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

    /// How long until the next token, as of the last [`allow`](Self::allow).
    pub(crate) fn wait(&self) -> Duration {
        Duration::from_secs_f64(((1.0 - self.tokens) / self.per_second).max(0.0))
    }
}

/// Addresses remembered per generation by [`PerAddressRate`]: a bound on its memory
/// (two generations, about 100 bytes an address) whatever the number of addresses asking.
const ADDRESSES: usize = 8192;

/// A token bucket per client address. The table is bounded: addresses are kept in two
/// generations, and once the current one holds [`ADDRESSES`] it becomes the older one
/// (the older forgotten). An address that asks again is moved to the current generation
/// with its bucket; one forgotten had not asked while thousands of others did, and starts
/// with a full bucket, which it would have had by then at any sane rate.
pub(crate) struct PerAddressRate {
    per_second: f64,
    burst: f64,
    /// Held for one lookup, never across an `.await`.
    table: Mutex<Generations>,
}

#[derive(Default)]
struct Generations {
    current: HashMap<IpAddr, RateLimit>,
    older: HashMap<IpAddr, RateLimit>,
}

impl PerAddressRate {
    /// `burst` requests at once per address, then `per_second`.
    pub(crate) fn new(per_second: f64, burst: f64) -> PerAddressRate {
        PerAddressRate {
            per_second,
            burst,
            table: Mutex::new(Generations::default()),
        }
    }

    /// Counts one request from `ip` (an IPv4 client on a dual-stack socket counts as its
    /// IPv4 address): `Err` with how long until it may ask again when it is over its rate.
    pub(crate) fn take(&self, ip: IpAddr) -> Result<(), Duration> {
        let ip = ip.to_canonical();
        let mut table = self.table.lock().unwrap();
        if !table.current.contains_key(&ip) {
            let bucket = table
                .older
                .remove(&ip)
                .unwrap_or_else(|| RateLimit::new(self.per_second, self.burst));
            if table.current.len() >= ADDRESSES {
                table.older = std::mem::take(&mut table.current);
            }
            table.current.insert(ip, bucket);
        }
        let bucket = table.current.get_mut(&ip).expect("inserted above");
        if bucket.allow() {
            Ok(())
        } else {
            Err(bucket.wait())
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
        // Empty: the next token comes in a tenth of a second.
        assert!(
            rate.wait() > Duration::from_millis(90) && rate.wait() <= Duration::from_millis(100)
        );
    }

    #[test]
    fn each_address_has_its_bucket_and_the_table_stays_bounded() {
        let rates = PerAddressRate::new(1.0, 2.0);
        let one: IpAddr = "10.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(rates.take(one), Ok(()));
        assert_eq!(rates.take(mapped), Ok(()));
        let wait = rates.take(one).unwrap_err();
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1));
        assert_eq!(rates.take("10.0.0.2".parse().unwrap()), Ok(()));
        // Thousands of other addresses later: kept while in the older generation...
        for i in 0..ADDRESSES as u32 {
            let _ = rates.take(IpAddr::from((0x0b00_0000 + i).to_be_bytes()));
        }
        assert!(rates.take(one).is_err(), "remembered across one generation");
        // ...and never more than two generations of them.
        for i in 0..3 * ADDRESSES as u32 {
            let _ = rates.take(IpAddr::from((0x0c00_0000 + i).to_be_bytes()));
        }
        let table = rates.table.lock().unwrap();
        assert!(table.current.len() + table.older.len() <= 2 * ADDRESSES);
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
