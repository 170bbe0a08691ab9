//! Rationing what any client can make the server do: token buckets (a connection's frames,
//! an address's ticket requests), what one address may hold at once (connections, HTTP
//! connections not yet upgraded, streams and held polls), what each holder — an address,
//! or a signed-in user wherever it connects from — may hold and create ([`Seat`],
//! [`HolderBudgets`]: its connections once identified, rooms held open and created), and
//! the log lines a client can cause.
//!
//! Every per-address budget counts a client under [`budget_key`]: an IPv6 client by its
//! network prefix (a /64 by default), since whoever has one address of a /64 has them all.
//!
//! A line per refused connection or failed login would let anyone fill the disk and bury
//! what matters in the log: every warning a client can trigger is written through
//! [`throttled!`], at most one line a second per place in the code that writes it, each
//! saying how many of its kind were left out since the last (`unlogged`).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The address a per-address budget counts `ip` under: an IPv4 client on a dual-stack
/// socket as its IPv4 address, an IPv6 client by its first `ipv6_prefix` bits (the rest
/// zero).
pub(crate) fn budget_key(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u32::from(ipv6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
        v4 => v4,
    }
}

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

/// What each key (an address, a user) holds at once, at most `max` each.
pub(crate) struct PerKey<K: Hash + Eq> {
    max: usize,
    /// Held to count one in or out, never across an `.await`; per connection, not per
    /// message.
    counts: Mutex<HashMap<K, usize>>,
}

/// Counts one thing held against its key until dropped.
pub(crate) struct Place<K: Hash + Eq> {
    table: Arc<PerKey<K>>,
    key: K,
}

impl<K: Hash + Eq + Clone> PerKey<K> {
    pub(crate) fn new(max: usize) -> Arc<PerKey<K>> {
        Arc::new(PerKey {
            max,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// One more for `key`, or None when it holds `max` already.
    pub(crate) fn take(self: &Arc<Self>, key: K) -> Option<Place<K>> {
        let mut counts = self.counts.lock().unwrap();
        let count = counts.entry(key.clone()).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Place {
            table: self.clone(),
            key,
        })
    }
}

impl<K: Hash + Eq> Drop for Place<K> {
    fn drop(&mut self) {
        let mut counts = self.table.counts.lock().unwrap();
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// What each client address holds at once (connections, streams…), so that one address
/// cannot take every slot (and file descriptor) of the server.
pub(crate) struct PerAddress {
    ipv6_prefix: u8,
    places: Arc<PerKey<IpAddr>>,
}

/// One thing held against an address until dropped.
pub(crate) type AddressPermit = Place<IpAddr>;

impl PerAddress {
    /// At most `max` per address, IPv6 addresses counted per `ipv6_prefix`.
    pub(crate) fn new(max: usize, ipv6_prefix: u8) -> Arc<PerAddress> {
        Arc::new(PerAddress {
            ipv6_prefix,
            places: PerKey::new(max),
        })
    }

    /// Admits one more from `ip`, or None when its [`budget_key`] holds `max` already.
    pub(crate) fn admit(&self, ip: IpAddr) -> Option<AddressPermit> {
        self.places.take(budget_key(ip, self.ipv6_prefix))
    }
}

/// An HTTP connection's place among those not yet upgraded ([`Server`](crate::Server)
/// only): one of the server's `max_http_connections`, and one of its address's
/// `max_http_connections_per_ip` (a trusted proxy's connections are counted in the first
/// alone: they carry everyone's requests). A WebSocket gives it back when it upgrades; an
/// SSE stream or a held poll gives it back while it streams or waits (they have their own
/// budget, `max_streams_per_ip`) and a poll takes it again when answered. Each request of
/// the connection carries it as an extension.
pub(crate) struct Unupgraded {
    pool: Arc<Semaphore>,
    addresses: Arc<PerAddress>,
    /// The peer's address; None for a trusted proxy.
    ip: Option<IpAddr>,
    held: Mutex<Option<Places>>,
}

type Places = (OwnedSemaphorePermit, Option<AddressPermit>);

/// Which share of the not-yet-upgraded connections is used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PoolFull {
    /// The server's (`max_http_connections`).
    Server,
    /// The address's (`max_http_connections_per_ip`).
    Address,
}

impl Unupgraded {
    /// A place for a new connection from `ip` (None: from a trusted proxy), or which share
    /// is used up.
    pub(crate) fn take(
        pool: &Arc<Semaphore>,
        addresses: &Arc<PerAddress>,
        ip: Option<IpAddr>,
    ) -> Result<Arc<Unupgraded>, PoolFull> {
        let places = Self::places(pool, addresses, ip)?;
        Ok(Arc::new(Unupgraded {
            pool: pool.clone(),
            addresses: addresses.clone(),
            ip,
            held: Mutex::new(Some(places)),
        }))
    }

    fn places(
        pool: &Arc<Semaphore>,
        addresses: &Arc<PerAddress>,
        ip: Option<IpAddr>,
    ) -> Result<Places, PoolFull> {
        let address = match ip {
            Some(ip) => Some(addresses.admit(ip).ok_or(PoolFull::Address)?),
            None => None,
        };
        let permit = pool
            .clone()
            .try_acquire_owned()
            .map_err(|_| PoolFull::Server)?;
        Ok((permit, address))
    }

    /// Gives the places back: the connection streams or waits now.
    pub(crate) fn release(&self) {
        self.held.lock().unwrap().take();
    }

    /// Takes places again (the stream or the wait is over and the connection may carry
    /// more requests); false when there are none, and then the connection must close.
    pub(crate) fn retake(&self) -> bool {
        let mut held = self.held.lock().unwrap();
        if held.is_none() {
            *held = Self::places(&self.pool, &self.addresses, self.ip).ok();
        }
        held.is_some()
    }
}

/// Keys (addresses, users) remembered per generation by [`PerKeyRate`]: a bound on its
/// memory (two generations, about 100 bytes a key) whatever the number of keys asking.
const ADDRESSES: usize = 8192;

/// A token bucket per key. The table is bounded: keys are kept in two generations, and
/// once the current one holds [`ADDRESSES`] it becomes the older one (the older
/// forgotten). A key that asks again is moved to the current generation with its bucket;
/// one forgotten had not asked while thousands of others did, and starts with a full
/// bucket, which it would have had by then at any sane rate.
pub(crate) struct PerKeyRate<K> {
    per_second: f64,
    burst: f64,
    /// Held for one lookup, never across an `.await`.
    table: Mutex<Generations<K>>,
}

struct Generations<K> {
    current: HashMap<K, RateLimit>,
    older: HashMap<K, RateLimit>,
}

impl<K: Hash + Eq> PerKeyRate<K> {
    /// `burst` at once per key, then `per_second`.
    pub(crate) fn new(per_second: f64, burst: f64) -> PerKeyRate<K> {
        PerKeyRate {
            per_second,
            burst,
            table: Mutex::new(Generations {
                current: HashMap::new(),
                older: HashMap::new(),
            }),
        }
    }

    /// Counts one for `key`: `Err` with how long until it may ask again when it is over
    /// its rate.
    pub(crate) fn take(&self, key: K) -> Result<(), Duration> {
        let mut table = self.table.lock().unwrap();
        let bucket = match table.current.entry(key) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                // Looked up by reference in the older generation, moved from there.
                let key = entry.into_key();
                let bucket = table
                    .older
                    .remove(&key)
                    .unwrap_or_else(|| RateLimit::new(self.per_second, self.burst));
                if table.current.len() >= ADDRESSES {
                    table.older = std::mem::take(&mut table.current);
                }
                table.current.entry(key).or_insert(bucket)
            }
        };
        if bucket.allow() {
            Ok(())
        } else {
            Err(bucket.wait())
        }
    }
}

/// A token bucket per client address, counted under its [`budget_key`].
pub(crate) struct PerAddressRate {
    ipv6_prefix: u8,
    rates: PerKeyRate<IpAddr>,
}

impl PerAddressRate {
    /// `burst` requests at once per address, then `per_second`; IPv6 addresses counted
    /// per `ipv6_prefix`.
    pub(crate) fn new(per_second: f64, burst: f64, ipv6_prefix: u8) -> PerAddressRate {
        PerAddressRate {
            ipv6_prefix,
            rates: PerKeyRate::new(per_second, burst),
        }
    }

    /// Counts one request from `ip`: `Err` with how long until it may ask again when it is
    /// over its rate.
    pub(crate) fn take(&self, ip: IpAddr) -> Result<(), Duration> {
        self.rates.take(budget_key(ip, self.ipv6_prefix))
    }
}

/// Whom a room budget counts: a signed-in user by its user id, wherever it connects from
/// (many users behind one carrier NAT are many), anyone else by its address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Holder {
    User(Arc<str>),
    Address(IpAddr),
}

/// Whom a connection counts as ([`Seat::holder`]), and its place among that one's
/// connections: its address's until it is identified; a signed-in connection's then moves
/// to its user (`max_connections_per_user`), so that many users behind one carrier NAT
/// are not one client.
pub(crate) struct Seat {
    pub holder: Option<Arc<Holder>>,
    /// Its place among its address's connections, or (signed in) its user's.
    _address: Option<AddressPermit>,
    _user: Option<Place<Arc<str>>>,
}

/// What each [`Holder`] may do: hold at most `max_rooms_per_ip` rooms open through its
/// connections (a room held by one of them costs the server its state and cannot be
/// evicted), create at most `max_new_rooms_per_minute_per_ip` a minute and
/// `max_new_rooms_per_day_per_ip` a day (on a durable engine each may be kept on disk for
/// its retention: a slow creator must not fill it either), and — a signed-in user — hold
/// at most `max_connections_per_user` connections. Without them one address's
/// connections, each under its own limits, filled the table.
pub(crate) struct HolderBudgets {
    max_held: usize,
    ipv6_prefix: u8,
    /// Connections per signed-in user.
    users: Arc<PerKey<Arc<str>>>,
    /// Per holder, its rooms and how many of its connections are in each. Held for one
    /// join or leave, never across an `.await`.
    held: Mutex<HashMap<Holder, HashMap<Arc<str>, usize>>>,
    created: PerKeyRate<Holder>,
    created_today: PerKeyRate<Holder>,
}

/// One connection of a holder in a room, until dropped.
pub(crate) struct RoomHold {
    budgets: Arc<HolderBudgets>,
    holder: Arc<Holder>,
    room: Arc<str>,
}

impl HolderBudgets {
    pub(crate) fn new(
        max_held: usize,
        created_per_minute: u32,
        created_per_day: u32,
        connections_per_user: usize,
        ipv6_prefix: u8,
    ) -> Arc<Self> {
        let (per_minute, per_day) = (f64::from(created_per_minute), f64::from(created_per_day));
        Arc::new(HolderBudgets {
            max_held,
            ipv6_prefix,
            users: PerKey::new(connections_per_user),
            held: Mutex::new(HashMap::new()),
            created: PerKeyRate::new(per_minute / 60.0, per_minute),
            created_today: PerKeyRate::new(per_day / 86_400.0, per_day),
        })
    }

    /// A connection from `client` (None for a host serving without peer addresses: then
    /// only per-connection limits hold), holding `place` among its address's connections.
    /// Boxed: a session keeps one pointer.
    pub(crate) fn address_seat(
        &self,
        client: Option<IpAddr>,
        place: Option<AddressPermit>,
    ) -> Box<Seat> {
        let holder = client.map(|ip| Arc::new(Holder::Address(budget_key(ip, self.ipv6_prefix))));
        Box::new(Seat {
            holder,
            _address: place,
            _user: None,
        })
    }

    /// A connection identified as `user`, or None when the user holds
    /// `max_connections_per_user` already.
    pub(crate) fn user_seat(&self, user: &str) -> Option<Box<Seat>> {
        let user: Arc<str> = user.into();
        let place = self.users.take(user.clone())?;
        Some(Box::new(Seat {
            holder: Some(Arc::new(Holder::User(user))),
            _address: None,
            _user: Some(place),
        }))
    }

    /// One more connection of `holder` in `room`, or None when that would make it hold
    /// more than `max_rooms_per_ip` rooms.
    pub(crate) fn hold(self: &Arc<Self>, holder: &Arc<Holder>, room: &str) -> Option<RoomHold> {
        let mut held = self.held.lock().unwrap();
        let rooms = held.entry(Holder::clone(holder)).or_default();
        let room: Arc<str> = match rooms.get_key_value(room) {
            Some((room, _)) => room.clone(),
            None if rooms.len() >= self.max_held => return None,
            None => room.into(),
        };
        *rooms.entry(room.clone()).or_insert(0) += 1;
        Some(RoomHold {
            budgets: self.clone(),
            holder: holder.clone(),
            room,
        })
    }

    /// Counts the creation of a room by `holder`: `Err` with how long until it may create
    /// another (its minute's or its day's rooms are made).
    pub(crate) fn create(&self, holder: &Holder) -> Result<(), Duration> {
        self.created.take(holder.clone())?;
        self.created_today.take(holder.clone())
    }
}

impl Drop for RoomHold {
    fn drop(&mut self) {
        let mut held = self.budgets.held.lock().unwrap();
        let Some(rooms) = held.get_mut(&*self.holder) else {
            return;
        };
        if let Some(count) = rooms.get_mut(&self.room) {
            *count -= 1;
            if *count == 0 {
                rooms.remove(&self.room);
            }
        }
        if rooms.is_empty() {
            held.remove(&*self.holder);
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
        let rates = PerAddressRate::new(1.0, 2.0, 64);
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
        let table = rates.rates.table.lock().unwrap();
        assert!(table.current.len() + table.older.len() <= 2 * ADDRESSES);
    }

    #[test]
    fn each_address_holds_at_most_its_share() {
        let table = PerAddress::new(2, 64);
        let one: IpAddr = "10.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        let a = table.admit(one).unwrap();
        let _b = table.admit(mapped).unwrap();
        assert!(
            table.admit(one).is_none(),
            "the mapped address is the same client"
        );
        assert!(table.admit("10.0.0.2".parse().unwrap()).is_some());
        drop(a);
        assert!(table.admit(one).is_some());
        drop(table.admit(one));
        assert_eq!(table.places.counts.lock().unwrap().get(&one), Some(&1));
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_prefix() {
        let table = PerAddress::new(2, 64);
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let (_a, _b) = (table.admit(a).unwrap(), table.admit(b).unwrap());
        assert!(
            table
                .admit("2001:db8:1:2:abcd::9".parse().unwrap())
                .is_none(),
            "one /64"
        );
        assert!(
            table.admit(other).is_some(),
            "the next /64 is another client"
        );
        assert_eq!(budget_key(a, 128), a);
        assert_eq!(budget_key(a, 48), "2001:db8:1::".parse::<IpAddr>().unwrap());
        assert_eq!(budget_key(a, 0), "::".parse::<IpAddr>().unwrap());
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(budget_key("::ffff:10.1.2.3".parse().unwrap(), 64), v4);
    }

    #[test]
    fn a_connection_not_yet_upgraded_holds_its_place_until_it_streams() {
        let pool = Arc::new(Semaphore::new(3));
        let addresses = PerAddress::new(2, 64);
        let one: IpAddr = "10.0.0.1".parse().unwrap();
        let a = Unupgraded::take(&pool, &addresses, Some(one)).unwrap();
        let b = Unupgraded::take(&pool, &addresses, Some(one)).unwrap();
        assert_eq!(
            Unupgraded::take(&pool, &addresses, Some(one)).err(),
            Some(PoolFull::Address)
        );
        let proxied = Unupgraded::take(&pool, &addresses, None).unwrap();
        assert_eq!(
            Unupgraded::take(&pool, &addresses, None).err(),
            Some(PoolFull::Server)
        );
        // `a` streams: its places are free for another connection, which takes them...
        a.release();
        let c = Unupgraded::take(&pool, &addresses, Some(one)).unwrap();
        // ...so `a` cannot take them back when its stream ends: it must close.
        assert!(!a.retake());
        drop((b, proxied));
        assert!(a.retake());
        assert!(a.retake(), "taking again what is held is a no-op");
        drop(c);
    }

    #[test]
    fn a_holder_holds_at_most_its_rooms_and_creates_at_its_rate() {
        let budgets = HolderBudgets::new(2, 3, 1000, 2, 64);
        let ann_seat = budgets.user_seat("ann").unwrap();
        let ann = ann_seat.holder.clone().unwrap();
        let address_seat = budgets.address_seat(Some("10.0.0.1".parse().unwrap()), None);
        let address = address_seat.holder.clone().unwrap();
        assert_eq!(
            *ann,
            Holder::User("ann".into()),
            "a user is counted as the user"
        );
        assert!(budgets.address_seat(None, None).holder.is_none());
        // Two connections per user: a third waits for one of them to end.
        let second = budgets.user_seat("ann").unwrap();
        assert!(budgets.user_seat("ann").is_none(), "a third connection");
        assert!(budgets.user_seat("bob").is_some(), "another user");
        drop(second);
        assert!(budgets.user_seat("ann").is_some(), "a place came free");
        let a1 = budgets.hold(&address, "a").unwrap();
        let a2 = budgets.hold(&address, "a").unwrap();
        let _b = budgets.hold(&address, "b").unwrap();
        assert!(budgets.hold(&address, "c").is_none(), "a third room");
        assert!(
            budgets.hold(&address, "a").is_some(),
            "a room it holds already"
        );
        assert!(budgets.hold(&ann, "c").is_some(), "another holder");
        drop((a1, a2));
        assert!(
            budgets.hold(&address, "c").is_some(),
            "room a was given back"
        );
        assert!(budgets.held.lock().unwrap()[&*address].len() <= 2);
        for _ in 0..3 {
            assert_eq!(budgets.create(&address), Ok(()));
        }
        let wait = budgets.create(&address).unwrap_err();
        assert!(
            wait > Duration::from_secs(19) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert_eq!(budgets.create(&ann), Ok(()));
        // The day's budget holds under the minute's.
        let daily = HolderBudgets::new(2, 1000, 3, 2, 64);
        for _ in 0..3 {
            assert_eq!(daily.create(&address), Ok(()));
        }
        let wait = daily.create(&address).unwrap_err();
        assert!(wait > Duration::from_secs(28_000), "{wait:?}");
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
