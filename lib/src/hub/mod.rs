//! The broadcast core: rooms, their members, per-room sequence numbers, recent history,
//! idempotent sends and presence. It knows nothing about transports.
//!
//! Every connection owns an [`Outbox`]/[`Inbox`] pair: a bounded queue of encoded frames.
//! A room message is encoded once, under the room's lock (so that its sequence number and
//! its place in every member's queue agree), and the same [`Bytes`] is pushed into each
//! member's queue: a reference-count increment and a push under that connection's own
//! short lock — no per-recipient serialization and no per-delivery allocation (a queue grows
//! by doubling, and gives its memory back once drained). A member whose queue is full is too
//! slow: it is removed from the room, told to close with [`CloseCode::TooSlow`], and can
//! resume later; the room never waits for it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{Notify, oneshot};

use crate::engine::redis::{Control, Event, Outcome, Published as Numbered, Snapshot};
use crate::engine::{
    HistoryPage, LoadedRoom, Record, Retention, StorageError, Store, StoredMessage,
};
use crate::metrics::{HubGauges, Metrics};
use crate::protocol::{self, CloseCode, ErrorCode, MemberRef, PresenceEvent, ServerFrame, You};

mod happened;
mod roster;
mod sender;

pub(crate) use happened::{Happened, Observer};
pub(crate) use roster::Policy;
use roster::{Listed, Roster, Told};
pub(crate) use sender::{Sender, SenderKey};

/// Sizes of the hub's state. Every one bounds memory; every one is configuration.
#[derive(Debug, Clone)]
pub(crate) struct HubConfig {
    /// Messages kept in memory per room: replayed on join, and the first place a resume
    /// looks.
    pub history_len: usize,
    /// Most messages a resume replays; past it, the newest this many and a `gap`.
    pub max_replay: usize,
    /// How long a durable engine keeps history (and how old a replayed message may be).
    pub retention: Retention,
    /// Client message ids remembered per room, so that a retried send is acknowledged
    /// again instead of stored twice. Larger than `history_len`: a retry may come late.
    pub dedupe_window: usize,
    /// Rooms held in memory. At the limit the least recently active empty room is dropped
    /// (with its history) to make space; if none is empty, new rooms are refused.
    pub max_rooms: usize,
    /// Frames queued per connection before it counts as too slow and is disconnected.
    /// Large enough for a join's replay (`max(history_len, max_replay)`) in every room a
    /// connection may be in.
    pub outbound_queue: usize,
    /// Connections held at once over all transports.
    pub max_connections: usize,
    /// How rooms tell their members who is there: the size at which a room becomes big,
    /// and whether a big room's updates carry only the count.
    pub presence: Policy,
    /// Bytes of history held over all rooms. Past it, the least recently active rooms
    /// lose their oldest messages first (a resume that needed them is told `gap`), so that
    /// many rooms of long messages cannot take the server's memory.
    pub history_bytes: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            history_len: 100,
            max_replay: 500,
            retention: Retention {
                messages: 10_000,
                age_ms: 30 * 24 * 3600 * 1000,
            },
            dedupe_window: 1000,
            presence: Policy {
                threshold: 100,
                counts_only: false,
            },
            max_rooms: 10_000,
            outbound_queue: 8192,
            max_connections: 50_000,
            history_bytes: 256 << 20,
        }
    }
}

/// One queued frame for a connection.
#[derive(Debug, Clone)]
pub(crate) struct Outbound {
    /// The encoded frame, `\n`-terminated, shared with every other recipient; for
    /// [`Kind::Pong`], the ping's payload as it came.
    pub frame: Bytes,
    pub kind: Kind,
}

/// How a queued frame travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A protocol frame that must arrive, in order.
    Frame,
    /// A protocol frame that may be lost (typing notices): WebTransport sends it as a
    /// datagram, and a full queue drops it instead of disconnecting the client.
    Ephemeral,
    /// The answer to a WebSocket Ping (RFC 6455, section 5.5.3): a Pong control frame with
    /// the ping's payload. Queued like the rest so that it is written in order, by the one
    /// task that writes to the connection.
    Pong,
}

/// One connection's queue of outbound frames, shared by its [`Outbox`] handles (the rooms
/// it is in) and its session.
#[derive(Debug)]
struct Queue {
    /// Held for a push or a drain, never across an `.await`. Per connection, so rooms
    /// delivering to different connections never meet here.
    frames: Mutex<Frames>,
    capacity: usize,
    /// Wakes the session when the queue stops being empty (not on every push: a session
    /// that has not drained yet will see the new frames anyway).
    ready: Notify,
    /// Why the session should close, from anywhere (a room that found it too slow, the host
    /// kicking it). Set once; the first reason wins.
    close: OnceLock<CloseCode>,
    closing: Notify,
}

#[derive(Debug, Default)]
struct Frames {
    queued: VecDeque<Outbound>,
    /// The session is gone: pushes fail.
    gone: bool,
    /// A room removed the connection: its `left` is queued ([`Outbox::push_removal`]).
    removed: bool,
}

/// The sending side of a connection's queue, held by the rooms it is in.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    queue: Arc<Queue>,
}

/// The receiving side of a connection's queue, held by its session.
#[derive(Debug)]
pub(crate) struct Inbox {
    queue: Arc<Queue>,
    /// A room removed this connection since the session last asked ([`Inbox::rooms_removed`]).
    removed: bool,
}

/// Resolves when someone asked the connection to close. Apart from [`Inbox`] so that a
/// session can wait for frames and for this at once.
#[derive(Debug)]
pub(crate) struct Closing {
    queue: Arc<Queue>,
}

/// A connection's bounded queue of outbound frames. It allocates nothing until the first
/// frame, and gives its memory back once drained after a burst.
pub(crate) fn queue(capacity: usize) -> (Outbox, Inbox, Closing) {
    let queue = Arc::new(Queue {
        frames: Mutex::new(Frames::default()),
        capacity,
        ready: Notify::new(),
        close: OnceLock::new(),
        closing: Notify::new(),
    });
    (
        Outbox {
            queue: queue.clone(),
        },
        Inbox {
            queue: queue.clone(),
            removed: false,
        },
        Closing { queue },
    )
}

/// Why a frame was not queued.
enum Refused {
    Full,
    Gone,
}

impl Outbox {
    fn enqueue(&self, frame: Bytes, kind: Kind) -> Result<(), Refused> {
        let mut frames = self.queue.frames.lock().unwrap();
        if frames.gone {
            return Err(Refused::Gone);
        }
        if frames.queued.len() >= self.queue.capacity {
            return Err(Refused::Full);
        }
        frames.queued.push_back(Outbound { frame, kind });
        let was_empty = frames.queued.len() == 1;
        drop(frames);
        if was_empty {
            // notify_one keeps a permit if the session is not waiting right now.
            self.queue.ready.notify_one();
        }
        Ok(())
    }

    /// Queues frames that must arrive, all or none, under one lock and with at most one
    /// wake-up. Returns false when the connection cannot take them all: its queue is full
    /// (it is then told to close as too slow) or it is gone.
    pub(crate) fn push_many(&self, batch: &[Bytes]) -> bool {
        let mut frames = self.queue.frames.lock().unwrap();
        if frames.gone {
            return false;
        }
        if frames.queued.len() + batch.len() > self.queue.capacity {
            drop(frames);
            self.close(CloseCode::TooSlow);
            return false;
        }
        let was_empty = frames.queued.is_empty();
        frames.queued.extend(batch.iter().map(|frame| Outbound {
            frame: frame.clone(),
            kind: Kind::Frame,
        }));
        drop(frames);
        if was_empty && !batch.is_empty() {
            self.queue.ready.notify_one();
        }
        true
    }

    /// Queues the `left` frame of a room the host removed this connection from, and marks
    /// the queue so that the session taking it forgets the room. Past the queue's capacity
    /// too: it is the room's last frame to this connection, and small.
    pub(crate) fn push_removal(&self, frame: Bytes) {
        let mut frames = self.queue.frames.lock().unwrap();
        if frames.gone {
            return;
        }
        frames.removed = true;
        frames.queued.push_back(Outbound {
            frame,
            kind: Kind::Frame,
        });
        let was_empty = frames.queued.len() == 1;
        drop(frames);
        if was_empty {
            self.queue.ready.notify_one();
        }
    }

    /// Queues a frame that must arrive. Returns false when the connection cannot take it:
    /// its queue is full (it is then told to close as too slow) or it is gone.
    pub(crate) fn push(&self, frame: Bytes) -> bool {
        match self.enqueue(frame, Kind::Frame) {
            Ok(()) => true,
            Err(Refused::Full) => {
                self.close(CloseCode::TooSlow);
                false
            }
            Err(Refused::Gone) => false,
        }
    }

    /// Queues a frame that may be lost; a full queue drops it.
    pub(crate) fn push_ephemeral(&self, frame: Bytes) {
        let _ = self.enqueue(frame, Kind::Ephemeral);
    }

    /// Queues the answer to a WebSocket Ping; like an ephemeral frame, a full queue drops
    /// it (the client is being cut off as too slow anyway).
    pub(crate) fn push_pong(&self, payload: Bytes) {
        let _ = self.enqueue(payload, Kind::Pong);
    }

    /// Asks the connection's session to close with `code`.
    pub(crate) fn close(&self, code: CloseCode) {
        if self.queue.close.set(code).is_ok() {
            self.queue.closing.notify_one();
        }
    }
}

/// A queue's buffer is given back when a drain leaves it empty and larger than this.
const KEEP_CAPACITY: usize = 32;

impl Inbox {
    /// Waits for queued frames and moves up to `limit` of them into `batch`; returns how
    /// many are still queued behind them.
    pub(crate) async fn recv_many(&mut self, batch: &mut Vec<Outbound>, limit: usize) -> usize {
        loop {
            let (moved, left) = self.take(batch, limit);
            if moved > 0 {
                return left;
            }
            self.queue.ready.notified().await;
        }
    }

    /// Whether a room removed this connection since the last call (its `left` is in the
    /// frames taken): the session then forgets the rooms that no longer list it.
    pub(crate) fn rooms_removed(&mut self) -> bool {
        std::mem::take(&mut self.removed)
    }

    /// Takes frames already queued without waiting (for the final drain).
    pub(crate) fn drain_now(&mut self, batch: &mut Vec<Outbound>) {
        self.take(batch, usize::MAX);
    }

    /// Moves up to `limit` frames into `batch`: (how many, how many are left).
    fn take(&mut self, batch: &mut Vec<Outbound>, limit: usize) -> (usize, usize) {
        let mut frames = self.queue.frames.lock().unwrap();
        let n = frames.queued.len().min(limit);
        batch.extend(frames.queued.drain(..n));
        self.removed |= std::mem::take(&mut frames.removed);
        if frames.queued.is_empty() && frames.queued.capacity() > KEEP_CAPACITY {
            frames.queued = VecDeque::new();
        }
        (n, frames.queued.len())
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let mut frames = self.queue.frames.lock().unwrap();
        frames.gone = true;
        frames.queued = VecDeque::new();
    }
}

impl Closing {
    /// Resolves when someone asked this connection to close, with the reason.
    pub(crate) async fn wait(&self) -> CloseCode {
        loop {
            if let Some(code) = self.queue.close.get() {
                return *code;
            }
            self.queue.closing.notified().await;
        }
    }
}

/// A member of a room: one connection under one display name.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    /// The connection's id, unique in this process.
    pub id: u64,
    /// Display name; shared, never copied per message.
    pub name: Arc<str>,
    /// The host's user id, when the connection was authenticated.
    pub user: Option<Arc<str>>,
    /// Who sends this member's messages: the same for every room the connection is in.
    pub sender: Arc<Sender>,
    /// Where the room delivers this member's frames.
    pub outbox: Outbox,
}

/// A member as listed for the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemberSummary {
    pub id: u64,
    pub name: Arc<str>,
    pub user: Option<Arc<str>>,
}

/// A page of members in id order, the room's count, and the `after` of the next page.
pub(crate) type MemberPage = (Vec<MemberSummary>, usize, Option<u64>);

impl MemberSummary {
    fn as_ref(&self) -> MemberRef<'_> {
        MemberRef {
            id: self.id,
            name: &self.name,
        }
    }
}

impl Member {
    fn summary(&self) -> MemberSummary {
        MemberSummary {
            id: self.id,
            name: self.name.clone(),
            user: self.user.clone(),
        }
    }
}

/// Where a joining client left off, to resume without gaps or duplicates.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Resume {
    /// The last sequence number the client saw in this room.
    pub since: Option<u64>,
    /// The room epoch it saw them under; a different epoch means the room was recreated
    /// (its stored history lost, or evicted from memory on the memory engine) and its
    /// numbers started again.
    pub epoch: Option<u64>,
}

/// How a host's publish learns its outcome: the message's number once it is stored.
pub(crate) type Published = oneshot::Receiver<Result<u64, StorageError>>;

/// One chat room. Cheap to share: sessions hold an `Arc<Room>` per room they are in, so
/// sending needs no global lock.
#[derive(Debug)]
pub(crate) struct Room {
    name: Arc<str>,
    /// When the room was first created, in milliseconds since 1970, unique per room name:
    /// the same across restarts on a durable engine.
    epoch: u64,
    /// Copied from [`HubConfig`] at creation.
    limits: RoomLimits,
    /// The hub's count of history bytes over all rooms (see [`HubConfig::history_bytes`]):
    /// moved once per message stored or dropped, never per delivery.
    history_held: Arc<AtomicUsize>,
    store: Store,
    metrics: Arc<Metrics>,
    /// Bumped (under the state lock) when the engine failed to store this room's pending
    /// messages and the numbering went back: the engine drops what it still holds from
    /// before. Read without the lock by the engine.
    generation: AtomicU64,
    /// Held only for short, non-async sections: assigning a sequence number and pushing the
    /// frame to every member's queue must be one step, or two members could see two
    /// messages in different orders.
    state: Mutex<RoomState>,
}

#[derive(Debug, Clone, Copy)]
struct RoomLimits {
    history_len: usize,
    dedupe_window: usize,
    max_replay: usize,
    retention_age_ms: u64,
}

#[derive(Debug)]
struct RoomState {
    /// The last sequence number handed out.
    seq: u64,
    /// The last one delivered: stored, for a durable engine. Everything after it is pending.
    delivered: u64,
    /// The newest delivered messages, oldest first: what a join replays, shared by every
    /// replay.
    history: VecDeque<Stored>,
    /// Numbered, handed to the engine, waiting for its commit (always empty on the memory
    /// engine).
    pending: VecDeque<Pending>,
    roster: Roster,
    /// (sender's dedupe id, client id) → sequence number, for idempotent retries.
    dedupe: HashMap<Box<str>, u64>,
    dedupe_order: VecDeque<Box<str>>,
    last_active: Instant,
    /// Set when the hub dropped this room; a join that raced with it looks again.
    removed: bool,
    /// The room's engine, told when members here leave (a shared engine lists them).
    store: Store,
    /// On an engine that numbers messages itself (Redis): messages handed to it, by
    /// token, until they come back numbered.
    submitted: HashMap<u64, Submitted>,
    next_token: u64,
    /// Acknowledgements of retries, owed once the message they repeat is delivered here.
    acks_after: Vec<(u64, Outbox, Bytes)>,
    /// Messages that came before the ones they follow, waiting for a catch-up.
    early: BTreeMap<u64, Numbered>,
    /// A catch-up is reading what this room missed.
    fetching: bool,
    /// The highest number the engine reported for this node's messages.
    heard: u64,
    /// Behind `heard` at the last tick: the next tick catches up.
    lagging: bool,
    /// A catch-up failed (Redis was away): the next tick tries again.
    stale: bool,
    /// Told what happens here (the events webhook), if anyone follows.
    observer: Option<Observer>,
}

/// A message in a room's recent history.
#[derive(Debug, Clone)]
struct Stored {
    seq: u64,
    time: u64,
    /// The `message` frame every member got.
    frame: Bytes,
}

/// A numbered message waiting for the engine's commit.
#[derive(Debug)]
struct Pending {
    message: Stored,
    origin: Origin,
    dedupe_key: Option<Box<str>>,
    /// Retries of its client id that came before the commit: acknowledged with it.
    retries: Vec<Outbox>,
}

/// Who published a message, and what they are owed once it is stored.
#[derive(Debug)]
enum Origin {
    Member {
        id: u64,
        outbox: Outbox,
        /// The sender's own copy, naming its client id.
        own: Option<Bytes>,
        ack: Bytes,
        /// The sender's user id, for the observer.
        user: Option<Arc<str>>,
    },
    Host(Option<oneshot::Sender<Result<u64, StorageError>>>),
    /// Published through another node: nobody here is owed anything.
    Peer,
}

impl Origin {
    /// The member's connection id, for a member's message.
    fn member(&self) -> Option<u64> {
        match self {
            Origin::Member { id, .. } => Some(*id),
            Origin::Host(_) | Origin::Peer => None,
        }
    }

    /// Tells whoever published a message that it could not be stored.
    fn refuse(self, room: &str, client_id: Option<&str>, retries: &[Outbox], error: &StorageError) {
        let refused = |outbox: &Outbox| {
            outbox.push(protocol::error_frame(
                ErrorCode::StorageFailed,
                "the message could not be stored; it was not delivered. Retry later",
                Some(room),
                client_id,
            ));
        };
        match self {
            Origin::Member { outbox, .. } => {
                refused(&outbox);
                for retry in retries {
                    refused(retry);
                }
            }
            Origin::Host(done) => {
                if let Some(done) = done {
                    let _ = done.send(Err(error.clone()));
                }
            }
            Origin::Peer => {}
        }
    }
}

/// A message handed to an engine that numbers messages itself (Redis), waiting to come
/// back numbered.
#[derive(Debug)]
struct Submitted {
    origin: Origin,
    client_id: Option<Box<str>>,
}

/// The broadcast core. A cheap, cloneable handle.
#[derive(Debug, Clone)]
pub(crate) struct Hub {
    inner: Arc<HubInner>,
}

#[derive(Debug)]
struct HubInner {
    config: HubConfig,
    store: Store,
    /// Taken on join and room creation only, never per message.
    rooms: Mutex<HashMap<Arc<str>, Arc<Room>>>,
    next_id: AtomicU64,
    last_epoch: AtomicU64,
    connections: AtomicUsize,
    /// Bytes of history held over all rooms.
    history_held: Arc<AtomicUsize>,
    bans: Mutex<Bans>,
    policies: Mutex<Policies>,
    /// On a shared engine, one room is taken up at a time: a room's subscription and its
    /// read belong together.
    loading: tokio::sync::Mutex<()>,
    /// Told what happens in the rooms (see [`Hub::observe`]); set before the first room.
    observer: OnceLock<Observer>,
    metrics: Arc<Metrics>,
}

/// Rooms whose presence policy the host set, by name: kept for rooms not in memory yet.
type Policies = HashMap<Box<str>, Policy>;

/// (room, or "" for the whole server; user) → banned until, in ms since 1970.
type Bans = HashMap<(Box<str>, Box<str>), u64>;

/// Counts one open connection against `max_connections` until dropped.
#[derive(Debug)]
pub(crate) struct ConnectionPermit {
    hub: Arc<HubInner>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.hub.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Milliseconds since 1970.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A stored message as a `message` frame (as everyone but its sender got it).
pub(crate) fn message_frame(room: &str, message: &StoredMessage) -> Bytes {
    protocol::encode(&ServerFrame::Message {
        room,
        seq: message.seq,
        from: &message.from,
        sender: message.sender.as_deref(),
        text: &message.text,
        time: message.time,
        id: None,
    })
}

/// What a retry is recognised by: the sender's dedupe id (never its public id: see
/// [`sender`]) and the client's message id.
fn dedupe_key(dedupe_id: &str, id: &str) -> Box<str> {
    format!("{dedupe_id}\0{id}").into_boxed_str()
}

impl Hub {
    /// A hub with no rooms, on the engine `store`, with the bans it holds.
    pub(crate) fn new(
        config: HubConfig,
        store: Store,
        metrics: Arc<Metrics>,
    ) -> Result<Hub, StorageError> {
        let bans = store
            .bans()?
            .into_iter()
            .map(|ban| {
                let room = ban.room.unwrap_or_default().into_boxed_str();
                ((room, ban.user.into_boxed_str()), ban.until)
            })
            .collect();
        let first_id = store.first_id();
        let redis = match &store {
            Store::Redis(redis) => Some(redis.clone()),
            _ => None,
        };
        let hub = Hub {
            inner: Arc::new(HubInner {
                config,
                store,
                rooms: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(first_id),
                last_epoch: AtomicU64::new(0),
                connections: AtomicUsize::new(0),
                history_held: Arc::new(AtomicUsize::new(0)),
                bans: Mutex::new(bans),
                policies: Mutex::new(HashMap::new()),
                loading: tokio::sync::Mutex::new(()),
                observer: OnceLock::new(),
                metrics,
            }),
        };
        if let Some(redis) = redis {
            let weak = Arc::downgrade(&hub.inner);
            redis.on_control(Box::new(move |control| {
                if let Some(inner) = weak.upgrade() {
                    Hub { inner }.apply(control);
                }
            }));
        }
        Ok(hub)
    }

    /// Applies a kick or a ban another node published.
    fn apply(&self, control: Control) {
        match control {
            Control::Kick {
                room, user, code, ..
            } => {
                self.disconnect_user(room.as_deref(), &user, close_code(code));
            }
            Control::Disconnect {
                room, member, code, ..
            } => {
                if let Some(room) = self.room(&room) {
                    room.disconnect(|m| m.id == member, close_code(code));
                }
            }
            Control::Ban {
                room, user, until, ..
            } => {
                self.note_ban(room.as_deref(), &user, until);
            }
        }
    }

    /// Closes `user`'s connections here in `room` (None: every room); returns how many.
    fn disconnect_user(&self, room: Option<&str>, user: &str, code: CloseCode) -> usize {
        let rooms: Vec<Arc<Room>> = match room {
            Some(name) => self.room(name).into_iter().collect(),
            None => self.inner.rooms.lock().unwrap().values().cloned().collect(),
        };
        let by_user = |m: &Member| m.user.as_deref() == Some(user);
        rooms
            .iter()
            .map(|room| room.disconnect(by_user, code))
            .sum()
    }

    /// Closes `user`'s connections in `room` (None: every room) with `code`, on every
    /// node; returns how many were here.
    pub(crate) fn kick(&self, room: Option<&str>, user: &str, code: CloseCode) -> usize {
        self.inner.store.control(Control::Kick {
            node: self.inner.store.node(),
            room: room.map(Into::into),
            user: user.into(),
            code: code.code(),
        });
        self.disconnect_user(room, user, code)
    }

    /// Closes member `member` of `room` with `code`, on whichever node it is connected
    /// to; whether it is in the room.
    pub(crate) fn disconnect_member(&self, room: &str, member: u64, code: CloseCode) -> bool {
        let Some(held) = self.room(room) else {
            // Not held here: ask every node.
            let listed = self
                .inner
                .store
                .members_page(room, Some(member.saturating_sub(1)), 1)
                .and_then(Result::ok)
                .is_some_and(|(page, _, _)| page.first().is_some_and(|m| m.id == member));
            if listed {
                self.disconnect_elsewhere(room, member, code);
            }
            return listed;
        };
        if held.disconnect(|m| m.id == member, code) > 0 {
            return true;
        }
        let listed = held.lists(member);
        if listed {
            self.disconnect_elsewhere(room, member, code);
        }
        listed
    }

    fn disconnect_elsewhere(&self, room: &str, member: u64, code: CloseCode) {
        self.inner.store.control(Control::Disconnect {
            node: self.inner.store.node(),
            room: room.into(),
            member,
            code: code.code(),
        });
    }

    /// The hub's configuration.
    pub(crate) fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// What this server counts.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Rooms held here, and their members connected here: for a scrape.
    pub(crate) fn gauges(&self) -> HubGauges {
        let rooms: Vec<Arc<Room>> = self.inner.rooms.lock().unwrap().values().cloned().collect();
        let members = rooms
            .iter()
            .map(|room| room.state.lock().unwrap().roster.iter().len())
            .sum();
        HubGauges {
            rooms: rooms.len(),
            members,
        }
    }

    /// Whether the engine answers (for `/wtchat/ready`).
    pub(crate) async fn engine_reachable(&self) -> Result<(), String> {
        self.inner.store.reachable(&self.inner.metrics.engine).await
    }

    /// This node's number on a shared engine (0 on one process).
    pub(crate) fn node(&self) -> u64 {
        self.inner.store.node()
    }

    /// Sends a request for a session another node holds (or the answer to one) to it.
    /// False without a shared engine (the session is nowhere).
    pub(crate) fn forward(&self, node: u64, request: crate::engine::redis::Forwarded) -> bool {
        self.inner.store.forward(node, request)
    }

    /// Where requests other nodes forward to this one go (the sessions whose clients post
    /// and poll), and the answers to those this one forwarded.
    pub(crate) fn on_forwarded(
        &self,
        handler: impl Fn(crate::engine::redis::Forwarded) + Send + Sync + 'static,
    ) {
        if let Store::Redis(redis) = &self.inner.store {
            redis.on_post(Box::new(handler));
        }
    }

    /// Has `observer` told what happens in every room from now on: before any room exists
    /// (a room takes its observer when it is created). Only the first observer counts.
    pub(crate) fn observe(&self, observer: Observer) {
        let _ = self.inner.observer.set(observer);
    }

    /// A fresh connection id.
    pub(crate) fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Admits one more connection, or None at `max_connections`.
    pub(crate) fn try_connect(&self) -> Option<ConnectionPermit> {
        let max = self.inner.config.max_connections;
        self.inner
            .connections
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| ConnectionPermit {
                hub: self.inner.clone(),
            })
    }

    /// A new room's epoch: milliseconds since 1970 at creation, made unique in this process
    /// so that a recreated room never reuses its predecessor's.
    fn new_epoch(&self) -> u64 {
        let now = now_ms();
        let prev = self
            .inner
            .last_epoch
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                Some(now.max(last + 1))
            })
            .unwrap_or(0);
        now.max(prev + 1)
    }

    /// The room called `name`, if it is in memory.
    pub(crate) fn room(&self, name: &str) -> Option<Arc<Room>> {
        self.inner.rooms.lock().unwrap().get(name).cloned()
    }

    /// Room `name`'s presence policy: the host's for it, else the server's.
    fn policy(&self, name: &str) -> Policy {
        let policies = self.inner.policies.lock().unwrap();
        policies
            .get(name)
            .copied()
            .unwrap_or(self.inner.config.presence)
    }

    /// Sets room `name`'s presence policy, now and whenever it is created again.
    pub(crate) fn set_policy(&self, name: &str, policy: Policy) {
        self.inner
            .policies
            .lock()
            .unwrap()
            .insert(name.into(), policy);
        if let Some(room) = self.room(name) {
            let mut state = room.state.lock().unwrap();
            if let Told::Everyone = state.roster.set_policy(policy) {
                state.send_list(&room.name);
            }
        }
    }

    /// Sends every big room's due presence update. The server calls it once per presence
    /// interval. On a shared engine it also lets go of rooms no member here is in any
    /// more (unsubscribing), and has rooms that fell behind what Redis reported catch up.
    pub(crate) fn tick(&self) {
        let rooms: Vec<Arc<Room>> = self.inner.rooms.lock().unwrap().values().cloned().collect();
        let shared = self.inner.store.numbers_messages();
        for room in rooms {
            let mut state = room.state.lock().unwrap();
            state.send_update(&room.name);
            if !shared || state.fetching {
                continue;
            }
            if state.removed || state.roster.none_here() && state.submitted.is_empty() {
                state.removed = true;
                drop(state);
                self.forget_room(&room);
            } else if state.heard > state.delivered || state.stale {
                if state.lagging || state.stale {
                    state.fetching = true;
                    self.inner.store.catch_up(&room, state.delivered);
                } else {
                    state.lagging = true;
                }
            } else {
                state.lagging = false;
            }
        }
    }

    /// Takes `room` (dropped) out of the hub, if it is still there.
    fn forget_room(&self, room: &Arc<Room>) {
        let mut rooms = self.inner.rooms.lock().unwrap();
        if rooms.get(&room.name).is_some_and(|r| Arc::ptr_eq(r, room)) {
            rooms.remove(&room.name);
            drop(rooms);
            self.inner.store.detach(&room.name);
        }
    }

    /// Resolves once every message handed to the engine so far is stored (or failed); on a
    /// shared engine then tells the other nodes that this one is gone.
    pub(crate) async fn close(&self) {
        self.inner.store.flush().await;
        self.inner.store.close().await;
    }

    /// The room called `name`: in memory, else as the engine stored it, else new.
    async fn room_or_create(&self, name: &str) -> Result<Arc<Room>, ErrorCode> {
        if let Some(room) = self.room(name) {
            return Ok(room);
        }
        let store = &self.inner.store;
        let _loading = match store.numbers_messages() {
            true => Some(self.inner.loading.lock().await),
            false => None,
        };
        if let Some(room) = self.room(name) {
            return Ok(room);
        }
        // Read outside the map's lock: other rooms' joins do not wait for the disk. A room
        // absent from memory has nothing pending (see the eviction below), so what the
        // engine holds is all there is.
        let config = &self.inner.config;
        let loaded = store
            .load(name, config.history_len, config.dedupe_window)
            .await
            .map_err(|e| {
                tracing::error!(room = name, error = %e, "could not load a room");
                ErrorCode::StorageFailed
            })?;
        let mut rooms = self.inner.rooms.lock().unwrap();
        if let Some(room) = rooms.get(name) {
            return Ok(room.clone());
        }
        if rooms.len() >= config.max_rooms
            && let Err(full) = self.evict_one(&mut rooms)
        {
            drop(rooms);
            store.detach(name);
            return Err(full);
        }
        let name: Arc<str> = name.into();
        let room = Arc::new(self.new_room(name.clone(), loaded));
        rooms.insert(name, room.clone());
        drop(rooms);
        store.attach(&room);
        Ok(room)
    }

    /// Makes space by dropping the least recently active room with no members and nothing
    /// waiting for the engine (its history stays stored, on a durable engine).
    fn evict_one(&self, rooms: &mut HashMap<Arc<str>, Arc<Room>>) -> Result<(), ErrorCode> {
        let victim = rooms
            .iter()
            .filter_map(|(key, room)| {
                let state = room.state.lock().unwrap();
                (state.roster.none_here() && state.pending.is_empty() && state.submitted.is_empty())
                    .then(|| (state.last_active, key.clone()))
            })
            .min()
            .map(|(_, key)| key)
            .ok_or(ErrorCode::ServerFull)?;
        if let Some(room) = rooms.remove(&victim) {
            self.inner.store.detach(&victim);
            let mut state = room.state.lock().unwrap();
            state.removed = true;
            while let Some(old) = state.history.pop_front() {
                self.inner
                    .history_held
                    .fetch_sub(old.frame.len(), Ordering::Relaxed);
            }
        }
        Ok(())
    }

    fn new_room(&self, name: Arc<str>, loaded: Option<LoadedRoom>) -> Room {
        let config = &self.inner.config;
        let mut state = RoomState {
            seq: 0,
            delivered: 0,
            history: VecDeque::new(),
            pending: VecDeque::new(),
            roster: Roster::new(self.policy(&name)),
            dedupe: HashMap::new(),
            dedupe_order: VecDeque::new(),
            last_active: Instant::now(),
            removed: false,
            store: self.inner.store.clone(),
            submitted: HashMap::new(),
            next_token: 1,
            acks_after: Vec::new(),
            early: BTreeMap::new(),
            fetching: false,
            heard: 0,
            lagging: false,
            stale: false,
            observer: self.inner.observer.get().cloned(),
        };
        let epoch = match loaded {
            None => self.new_epoch(),
            Some(loaded) => {
                state.seq = loaded.seq;
                state.delivered = loaded.seq;
                for message in &loaded.tail {
                    let frame = message_frame(&name, message);
                    self.inner
                        .history_held
                        .fetch_add(frame.len(), Ordering::Relaxed);
                    state.history.push_back(Stored {
                        seq: message.seq,
                        time: message.time,
                        frame,
                    });
                }
                for (dedupe_id, id, seq) in loaded.dedupe.into_iter().rev() {
                    let key = dedupe_key(&dedupe_id, &id);
                    state.dedupe.insert(key.clone(), seq);
                    state.dedupe_order.push_back(key);
                }
                // Members elsewhere. This node's own are listed only as they join here:
                // Redis may still list some that left a moment ago.
                let node = self.inner.store.node();
                for member in loaded.members {
                    if member.id >> 32 != node {
                        state.roster.add_elsewhere(member);
                    }
                }
                loaded.epoch
            }
        };
        Room {
            name,
            epoch,
            limits: RoomLimits {
                history_len: config.history_len,
                dedupe_window: config.dedupe_window,
                max_replay: config.max_replay,
                retention_age_ms: config.retention.age_ms,
            },
            history_held: self.inner.history_held.clone(),
            store: self.inner.store.clone(),
            metrics: self.inner.metrics.clone(),
            generation: AtomicU64::new(0),
            state: Mutex::new(state),
        }
    }

    /// Publishes into room `name` (creating it) as `from`, on behalf of the host; the
    /// receiver resolves with the message's number once it is stored.
    pub(crate) async fn publish_as(
        &self,
        name: &str,
        from: &str,
        text: &str,
    ) -> Result<Published, ErrorCode> {
        loop {
            let room = self.room_or_create(name).await?;
            let mut state = room.state.lock().unwrap();
            if state.removed {
                drop(state);
                self.forget_room(&room);
                continue;
            }
            let (done, published) = oneshot::channel();
            room.submit(&mut state, from, None, text, None, Origin::Host(Some(done)));
            drop(state);
            self.keep_history_budget();
            return Ok(published);
        }
    }

    /// Brings the history held over all rooms back under its budget, when a message took it
    /// over: the least recently active rooms lose their oldest messages first, down to nine
    /// tenths of the budget so that this runs once per many messages, not on each. Called
    /// with no room locked (it locks the room map, then one room at a time, the same order
    /// as creating a room).
    pub(crate) fn keep_history_budget(&self) {
        let budget = self.inner.config.history_bytes;
        let held = &self.inner.history_held;
        if held.load(Ordering::Relaxed) <= budget {
            return;
        }
        let target = budget / 10 * 9;
        let rooms = self.inner.rooms.lock().unwrap();
        let mut by_activity: Vec<(Instant, &Arc<Room>)> = rooms
            .values()
            .map(|room| (room.state.lock().unwrap().last_active, room))
            .collect();
        by_activity.sort_unstable_by_key(|(last_active, _)| *last_active);
        for (_, room) in by_activity {
            let mut state = room.state.lock().unwrap();
            while held.load(Ordering::Relaxed) > target {
                let Some(old) = state.history.pop_front() else {
                    break;
                };
                held.fetch_sub(old.frame.len(), Ordering::Relaxed);
            }
            if held.load(Ordering::Relaxed) <= target {
                return;
            }
        }
    }

    /// Adds `member` to room `name` (creating it). Its queue receives, in this order and
    /// before anything else from the room: `joined`, then the history it missed (all of
    /// the recent history without `resume.since`). The other members get a presence event.
    pub(crate) async fn join(
        &self,
        name: &str,
        member: Member,
        resume: Resume,
    ) -> Result<Arc<Room>, ErrorCode> {
        let store = &self.inner.store;
        let mut listed = false;
        loop {
            let room = match self.room_or_create(name).await {
                Ok(room) => room,
                Err(e) => {
                    if listed {
                        store.left(name, vec![member.id]);
                    }
                    return Err(e);
                }
            };
            // A shared engine lists the member before it is told it joined: a member who
            // joins on another node after that finds it in its list.
            store.joined(name, vec![member.summary()]).await;
            listed = true;
            let mut state = room.state.lock().unwrap();
            if state.removed {
                drop(state);
                self.forget_room(&room);
                continue;
            }
            state.join(&room, member, resume);
            drop(state);
            return Ok(room);
        }
    }

    /// Whether `user` is banned from `room` (or from the whole server) right now.
    pub(crate) fn banned(&self, room: &str, user: &str) -> bool {
        let bans = self.inner.bans.lock().unwrap();
        if bans.is_empty() {
            return false;
        }
        let now = now_ms();
        [room, ""].into_iter().any(|scope| {
            bans.get(&(scope.into(), user.into()))
                .is_some_and(|&until| until > now)
        })
    }

    /// Bans `user` from `room` (None: every room) until `until` (ms since 1970), once the
    /// engine stored it, and disconnects the user's connections there with
    /// [`CloseCode::Kicked`]. Returns how many connections were told to close.
    pub(crate) async fn ban(
        &self,
        room: Option<&str>,
        user: &str,
        until: u64,
    ) -> Result<usize, StorageError> {
        self.inner.store.ban(room, user, Some(until)).await?;
        Ok(self.note_ban(room, user, Some(until)))
    }

    /// Lifts a ban set by [`Hub::ban`].
    pub(crate) async fn unban(&self, room: Option<&str>, user: &str) -> Result<(), StorageError> {
        self.inner.store.ban(room, user, None).await?;
        self.note_ban(room, user, None);
        Ok(())
    }

    /// A ban was stored (`until` Some: its user's connections here are closed; returns
    /// how many) or lifted.
    fn note_ban(&self, room: Option<&str>, user: &str, until: Option<u64>) -> usize {
        let key = (room.unwrap_or("").into(), user.into());
        let mut bans = self.inner.bans.lock().unwrap();
        let Some(until) = until else {
            bans.remove(&key);
            return 0;
        };
        bans.insert(key, until);
        drop(bans);
        self.disconnect_user(room, user, CloseCode::Kicked)
    }

    /// Deletes message `seq` from room `name`'s history, and tells its members with a
    /// `deleted` frame. Returns whether there was such a message.
    pub(crate) async fn delete(&self, name: &str, seq: u64) -> Result<bool, StorageError> {
        let stored = self.inner.store.delete(name, seq).await.transpose()?;
        Ok(match self.room(name) {
            Some(room) => room.forget(seq, stored),
            None => stored.unwrap_or(false),
        })
    }

    /// Up to `limit` members of room `name` with ids above `after`, in id order, over all
    /// nodes; the room's count; and the `after` of the next page.
    pub(crate) fn members_page(
        &self,
        name: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<MemberPage, StorageError> {
        match self.room(name) {
            Some(room) => Ok(room.members_page(after, limit)),
            None => self
                .inner
                .store
                .members_page(name, after, limit)
                .unwrap_or_else(|| Ok((Vec::new(), 0, None))),
        }
    }

    /// One page of room `name`'s history: up to `limit` messages below `before`.
    pub(crate) fn history(
        &self,
        name: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage, StorageError> {
        match self.room(name) {
            Some(room) => room.page(before, limit),
            None => match self
                .inner
                .store
                .page(name, before.unwrap_or(u64::MAX), limit)
            {
                Some(page) => page,
                None => Ok(HistoryPage::default()),
            },
        }
    }
}

impl Room {
    /// The room's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The room's epoch.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The room's numbering generation (see the field).
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Publishes a message from `sender` (who must be a member). Once it is stored, it is
    /// delivered to every member, and the sender's acknowledgement is queued behind it. A
    /// retry of an `id` the same sender used before is only acknowledged again, with the
    /// original sequence number (once that one is stored).
    pub(crate) fn publish(self: &Arc<Self>, sender: &Member, text: &str, id: Option<&str>) {
        let mut state = self.state.lock().unwrap();
        let key = id.map(|id| dedupe_key(sender.sender.dedupe_id(), id));
        if let Some(&seq) = key.as_ref().and_then(|k| state.dedupe.get(k)) {
            if seq <= state.delivered {
                sender.outbox.push(ack(&self.name, id, seq));
            } else if let Some(pending) = state.pending.iter_mut().find(|p| p.message.seq == seq) {
                pending.retries.push(sender.outbox.clone());
            }
            return;
        }
        let origin = Origin::Member {
            id: sender.id,
            outbox: sender.outbox.clone(),
            own: None,
            ack: Bytes::new(),
            user: sender.user.clone(),
        };
        let by = Some((&*sender.sender, id));
        self.submit(&mut state, &sender.name, by, text, key, origin);
    }

    /// Numbers a message from `from` — a member (with its sender and client id) or the
    /// host — and delivers it at once (memory engine) or once the engine stored it.
    fn submit(
        self: &Arc<Self>,
        state: &mut RoomState,
        from: &str,
        by: Option<(&Sender, Option<&str>)>,
        text: &str,
        dedupe_key: Option<Box<str>>,
        mut origin: Origin,
    ) {
        let time = now_ms();
        self.metrics.published();
        let sender = by.map(|(sender, _)| sender.public());
        let dedupe_id = by.map(|(sender, _)| sender.dedupe_id());
        let client_id = by.and_then(|(_, id)| id);
        if self.store.numbers_messages() {
            // Redis numbers it (and knows its client id); it comes back with the room's
            // other messages, in their order, naming this token.
            let token = state.next_token;
            state.next_token += 1;
            state.submitted.insert(
                token,
                Submitted {
                    origin,
                    client_id: client_id.map(Into::into),
                },
            );
            let record = Record {
                seq: 0,
                token,
                time,
                from: from.into(),
                sender: sender.map(Into::into),
                dedupe_id: dedupe_id.map(Into::into),
                client_id: client_id.map(Into::into),
                text: text.into(),
            };
            return self.store.append(self, 0, record);
        }
        state.seq += 1;
        let seq = state.seq;
        let message = |id| {
            protocol::encode(&ServerFrame::Message {
                room: &self.name,
                seq,
                from,
                sender,
                text,
                time,
                id,
            })
        };
        // Everyone's copy, history's too, without the client's id: only its sender knows it.
        let frame = message(None);
        if let Origin::Member { own, ack: a, .. } = &mut origin {
            // The sender's own copy names its client id, so that the client can put it in
            // the place of the message it showed as pending.
            *own = client_id.map(|id| message(Some(id)));
            *a = ack(&self.name, client_id, seq);
        }
        if let Some(key) = &dedupe_key {
            state.dedupe.insert(key.clone(), seq);
            state.dedupe_order.push_back(key.clone());
            if state.dedupe_order.len() > self.limits.dedupe_window
                && let Some(old) = state.dedupe_order.pop_front()
            {
                state.dedupe.remove(&old);
            }
        }
        let pending = Pending {
            message: Stored { seq, time, frame },
            origin,
            dedupe_key,
            retries: Vec::new(),
        };
        if !self.store.is_durable() {
            return state.deliver(&self.name, &self.limits, &self.history_held, vec![pending]);
        }
        let record = Record {
            seq,
            token: 0,
            time,
            from: from.into(),
            sender: sender.map(Into::into),
            dedupe_id: dedupe_id.map(Into::into),
            client_id: client_id.map(Into::into),
            text: text.into(),
        };
        state.pending.push_back(pending);
        // Under the lock: the engine receives this room's messages in their order.
        self.store.append(self, self.generation(), record);
    }

    /// The engine stored this room's messages up to `seq`: deliver them. Notices may come
    /// late and out of order (an older one then finds nothing left), and after a failure:
    /// what was stored before it is still pending here, below the failed numbers.
    pub(crate) fn committed(&self, seq: u64) {
        let mut state = self.state.lock().unwrap();
        let stored = state.pending.partition_point(|p| p.message.seq <= seq);
        if stored > 0 {
            let batch = state.pending.drain(..stored).collect();
            state.deliver(&self.name, &self.limits, &self.history_held, batch);
        }
    }

    /// The engine could not store this room's messages from `first` on: none of them is
    /// delivered or acknowledged; their senders are told, and numbering resumes at `first`.
    /// (Messages numbered after them under this generation are dropped by the engine.)
    pub(crate) fn failed(&self, generation: u64, first: u64, error: &StorageError) {
        let mut state = self.state.lock().unwrap();
        if generation != self.generation() {
            return;
        }
        self.generation.fetch_add(1, Ordering::Release);
        state.seq = first - 1;
        let stored = state.pending.partition_point(|p| p.message.seq < first);
        for pending in state.pending.split_off(stored) {
            if let Some(key) = &pending.dedupe_key {
                state.dedupe.remove(key);
            }
            let id = pending.dedupe_key.as_deref().and_then(client_id);
            pending
                .origin
                .refuse(&self.name, id, &pending.retries, error);
        }
    }

    /// What Redis said of message `token` this node handed it: stored (delivered now if it
    /// is the next one, else when it comes back on the room's channel after the ones before
    /// it), a retry of one stored before (its sender is acknowledged once that one is
    /// delivered here), or not stored.
    pub(crate) fn outcome(self: &Arc<Self>, token: u64, outcome: Result<Outcome, StorageError>) {
        let mut state = self.state.lock().unwrap();
        match outcome {
            Ok(Outcome::Stored(message)) => {
                state.heard = state.heard.max(message.seq);
                // The next message here: delivered now, without waiting for its copy on the
                // room's channel (which is then one this node has).
                if !state.fetching
                    && message.epoch == self.epoch
                    && message.seq == state.delivered + 1
                {
                    self.deliver_numbered(&mut state, vec![message]);
                }
            }
            Ok(Outcome::Duplicate(seq)) => {
                let Some(submitted) = state.submitted.remove(&token) else {
                    return;
                };
                if let Origin::Member { outbox, .. } = submitted.origin {
                    let ack = ack(&self.name, submitted.client_id.as_deref(), seq);
                    if seq <= state.delivered {
                        outbox.push(ack);
                    } else {
                        state.heard = state.heard.max(seq);
                        state.acks_after.push((seq, outbox, ack));
                    }
                }
            }
            Err(error) => {
                if let Some(submitted) = state.submitted.remove(&token) {
                    let id = submitted.client_id.as_deref();
                    submitted.origin.refuse(&self.name, id, &[], &error);
                }
            }
        }
    }

    /// An event on the room's Redis channel. Messages are delivered in sequence order: one
    /// that comes early (a number was skipped: a lost or late message) waits while the
    /// room reads what it missed from the stream.
    pub(crate) fn receive(self: &Arc<Self>, events: Vec<Event>) {
        let mut state = self.state.lock().unwrap();
        let node = self.store.node();
        // Messages that follow each other go out together: one push per member.
        let mut run: Vec<Numbered> = Vec::new();
        for event in events {
            if !matches!(&event, Event::Message(m)
                if !state.fetching && m.epoch == self.epoch
                    && m.seq == run.last().map_or(state.delivered, |l| l.seq) + 1)
                && !run.is_empty()
            {
                self.deliver_numbered(&mut state, std::mem::take(&mut run));
            }
            match event {
                Event::Message(message) => {
                    if message.epoch != self.epoch {
                        return self.lost(&mut state);
                    }
                    if message.seq <= run.last().map_or(state.delivered, |l| l.seq) {
                        continue;
                    }
                    if state.fetching || message.seq > state.delivered + 1 + run.len() as u64 {
                        state.heard = state.heard.max(message.seq);
                        state.early.insert(message.seq, message);
                        if !state.fetching {
                            state.fetching = true;
                            self.store.catch_up(self, state.delivered);
                        }
                        continue;
                    }
                    run.push(message);
                }
                Event::Join {
                    node: from,
                    members,
                } if from != node => {
                    let members = members.into_iter().map(MemberSummary::from).collect();
                    self.add_elsewhere(&mut state, members);
                }
                Event::Leave { node: from, ids } if from != node => {
                    state.remove(&self.name, ids);
                }
                Event::Deleted { node: from, seq } if from != node => {
                    self.forget_in(&mut state, seq, Some(true));
                }
                Event::Typing {
                    node: from,
                    id,
                    name,
                } if from != node => {
                    self.relay_typing_in(&state, id, &name);
                }
                // This node's own events took effect here already.
                Event::Join { .. }
                | Event::Leave { .. }
                | Event::Deleted { .. }
                | Event::Typing { .. } => {}
            }
        }
        if !run.is_empty() {
            self.deliver_numbered(&mut state, run);
        }
    }

    /// Delivers messages Redis numbered, in order, each to be the next: the sender here
    /// (found by its token) gets its own copy and acknowledgement.
    fn deliver_numbered(&self, state: &mut RoomState, messages: Vec<Numbered>) {
        let node = self.store.node();
        let batch = messages
            .into_iter()
            .map(|m| {
                let message = |id: Option<&str>| {
                    protocol::encode(&ServerFrame::Message {
                        room: &self.name,
                        seq: m.seq,
                        from: &m.from,
                        sender: m.sender.as_deref(),
                        text: &m.text,
                        time: m.time,
                        id,
                    })
                };
                let submitted = m.token_of(node).and_then(|t| state.submitted.remove(&t));
                let origin = match submitted {
                    Some(Submitted {
                        origin:
                            Origin::Member {
                                id, outbox, user, ..
                            },
                        client_id,
                    }) => Origin::Member {
                        id,
                        outbox,
                        user,
                        own: client_id.as_deref().map(|c| message(Some(c))),
                        ack: ack(&self.name, client_id.as_deref(), m.seq),
                    },
                    Some(Submitted { origin, .. }) => origin,
                    None => Origin::Peer,
                };
                Pending {
                    message: Stored {
                        seq: m.seq,
                        time: m.time,
                        frame: message(None),
                    },
                    origin,
                    dedupe_key: None,
                    retries: Vec::new(),
                }
            })
            .collect();
        state.deliver(&self.name, &self.limits, &self.history_held, batch);
    }

    /// What the room missed, read from Redis: delivered in order with what came early,
    /// and the members elsewhere brought up to date.
    pub(crate) fn caught_up(self: &Arc<Self>, snapshot: Snapshot) {
        let mut state = self.state.lock().unwrap();
        if snapshot.epoch != self.epoch {
            return self.lost(&mut state);
        }
        let mut messages: BTreeMap<u64, Numbered> = std::mem::take(&mut state.early);
        for (m, origin) in snapshot.messages {
            messages.entry(m.seq).or_insert(Numbered {
                seq: m.seq,
                epoch: self.epoch,
                time: m.time,
                from: m.from,
                sender: m.sender,
                text: m.text,
                origin,
            });
        }
        let delivered = state.delivered;
        let missed: Vec<Numbered> = messages
            .into_values()
            .filter(|m| m.seq > delivered)
            .collect();
        self.deliver_numbered(&mut state, missed);
        // A number Redis handed out that is in no stream entry was deleted or trimmed.
        state.delivered = state.delivered.max(snapshot.seq);
        state.fetching = false;
        state.lagging = false;
        state.stale = false;
        // Members: those listed elsewhere that Redis no longer has left; those it has that
        // are not listed here joined.
        let listed: std::collections::HashSet<u64> =
            snapshot.members.iter().map(|m| m.id).collect();
        let gone: Vec<u64> = state
            .roster
            .ids_elsewhere()
            .into_iter()
            .filter(|id| !listed.contains(id))
            .collect();
        state.remove(&self.name, gone);
        // This node's own members are listed as they join here (see `Hub::new_room`).
        let node = self.store.node();
        let joined = snapshot
            .members
            .into_iter()
            .filter(|m| m.id >> 32 != node)
            .map(MemberSummary::from)
            .collect();
        self.add_elsewhere(&mut state, joined);
    }

    /// Lists members connected to other nodes (those not listed yet), and tells the
    /// members here as a join here is told.
    fn add_elsewhere(&self, state: &mut RoomState, members: Vec<MemberSummary>) {
        for member in members {
            let (id, name) = (member.id, member.name.clone());
            if let Some(Told::Now) = state.roster.add_elsewhere(member) {
                let presence = protocol::encode(&ServerFrame::Presence {
                    room: &self.name,
                    event: PresenceEvent::Join,
                    member: MemberRef { id, name: &name },
                    count: state.roster.len(),
                });
                state.broadcast(&self.name, &presence, None);
            }
        }
    }

    /// Reading what the room missed failed (Redis is away): the next message, the
    /// presence ticker or the subscription's return tries again.
    pub(crate) fn catch_up_failed(&self) {
        let mut state = self.state.lock().unwrap();
        state.fetching = false;
        state.stale = true;
    }

    /// Redis lost this room (its data is gone, and it was made anew under another epoch):
    /// its members here are told to reconnect; they join the new room and are told `gap`.
    fn lost(&self, state: &mut RoomState) {
        tracing::warn!(room = %self.name, "Redis lost this room's history; its members reconnect");
        // The hub drops it: joins take up the new room.
        state.removed = true;
        for member in state.roster.iter() {
            member.outbox.close(CloseCode::Reconnect);
        }
    }

    /// The last message delivered here.
    pub(crate) fn delivered(&self) -> u64 {
        self.state.lock().unwrap().delivered
    }

    /// The members connected here.
    pub(crate) fn members_here(&self) -> Vec<MemberSummary> {
        let state = self.state.lock().unwrap();
        state.roster.iter().map(Member::summary).collect()
    }

    /// Removes message `seq` from the recent history and, if it was a message — `stored`
    /// says whether the engine had it (None: the engine keeps nothing beyond this history)
    /// — tells the members. Returns whether it was.
    fn forget(&self, seq: u64, stored: Option<bool>) -> bool {
        self.forget_in(&mut self.state.lock().unwrap(), seq, stored)
    }

    fn forget_in(&self, state: &mut RoomState, seq: u64, stored: Option<bool>) -> bool {
        let in_memory = state.history.iter().position(|s| s.seq == seq);
        if let Some(old) = in_memory.and_then(|at| state.history.remove(at)) {
            self.history_held
                .fetch_sub(old.frame.len(), Ordering::Relaxed);
        }
        let deleted = stored.unwrap_or(in_memory.is_some());
        if deleted {
            let frame = protocol::encode(&ServerFrame::Deleted {
                room: &self.name,
                seq,
            });
            state.broadcast(&self.name, &frame, None);
        }
        deleted
    }

    /// Up to `limit` delivered messages below `before`, oldest first: from the engine when it
    /// stores history, else from the recent history.
    pub(crate) fn page(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage, StorageError> {
        let state = self.state.lock().unwrap();
        // Nothing a member has not been sent yet.
        let before = before.unwrap_or(u64::MAX).min(state.delivered + 1);
        if self.store.is_durable() {
            drop(state);
            return self
                .store
                .page(&self.name, before, limit)
                .unwrap_or_else(|| Ok(HistoryPage::default()));
        }
        let cutoff = self.age_cutoff();
        let recent: Vec<&Stored> = state
            .history
            .iter()
            .filter(|s| s.seq < before && s.time >= cutoff)
            .collect();
        let from = recent.len() - limit.min(recent.len());
        Ok(HistoryPage {
            messages: recent[from..]
                .iter()
                .filter_map(|s| decode_stored(&s.frame))
                .collect(),
            more: from > 0,
        })
    }

    /// Messages older than this (ms since 1970) are past their retention age.
    fn age_cutoff(&self) -> u64 {
        now_ms().saturating_sub(self.limits.retention_age_ms)
    }

    /// Relays a typing notice to the other members; may be dropped for busy ones.
    pub(crate) fn typing(&self, sender: &Member) {
        self.store.typing(&self.name, sender.id, &sender.name);
        self.relay_typing(sender.id, &sender.name);
    }

    /// Tells the members here but `sender` that `name` is typing.
    fn relay_typing(&self, sender: u64, name: &str) {
        self.relay_typing_in(&self.state.lock().unwrap(), sender, name);
    }

    fn relay_typing_in(&self, state: &RoomState, sender: u64, name: &str) {
        let frame = protocol::encode(&ServerFrame::Typing {
            room: &self.name,
            from: name,
        });
        for member in state.roster.iter().filter(|m| m.id != sender) {
            member.outbox.push_ephemeral(frame.clone());
        }
    }

    /// Removes the member with id `member_id`; the others get a presence event.
    /// Returns false when it was not a member (already left, or dropped as too slow).
    pub(crate) fn leave(&self, member_id: u64) -> bool {
        let mut state = self.state.lock().unwrap();
        state.last_active = Instant::now();
        state.remove(&self.name, vec![member_id])
    }

    /// Asks every member that `which` selects to close with `code`; returns how many.
    /// Their sessions send `bye` and close (and leave every room they are in); with a
    /// reconnect code the clients come back and resume.
    ///
    /// Kicked (a kick or a ban) is about this room only: the members leave it and are told
    /// so with a `left` carrying the code; a connection stays in its other rooms, and its
    /// session closes it with 4403 once it is in none.
    pub(crate) fn disconnect(&self, which: impl Fn(&Member) -> bool, code: CloseCode) -> usize {
        let mut state = self.state.lock().unwrap();
        if code != CloseCode::Kicked {
            return state
                .roster
                .iter()
                .filter(|m| which(m))
                .map(|m| m.outbox.close(code))
                .count();
        }
        let left = protocol::encode(&ServerFrame::Left {
            room: &self.name,
            code: Some(code.code()),
            reason: Some(code.reason()),
        });
        let removed: Vec<u64> = state
            .roster
            .iter()
            .filter(|m| which(m))
            .map(|m| {
                m.outbox.push_removal(left.clone());
                m.id
            })
            .collect();
        let count = removed.len();
        if count > 0 {
            state.last_active = Instant::now();
            state.remove(&self.name, removed);
        }
        count
    }

    /// Whether member `id` is in the room, here or on another node.
    pub(crate) fn lists(&self, id: u64) -> bool {
        let state = self.state.lock().unwrap();
        state
            .roster
            .page(Some(id.saturating_sub(1)), 1)
            .0
            .first()
            .is_some_and(|m| m.id == id)
    }

    /// Up to `limit` members with ids above `after`, in id order; the room's count; and the
    /// `after` of the next page.
    pub(crate) fn members_page(&self, after: Option<u64>, limit: usize) -> MemberPage {
        let state = self.state.lock().unwrap();
        let (page, next) = state.roster.page(after, limit);
        let page = page.iter().map(Listed::summary).collect();
        (page, state.roster.len(), next)
    }

    /// The same page, encoded as a `members` frame.
    pub(crate) fn members_frame(&self, after: Option<u64>, limit: usize) -> Bytes {
        let state = self.state.lock().unwrap();
        let (page, next) = state.roster.page(after, limit);
        let members: Vec<MemberRef<'_>> = page.iter().map(Listed::as_ref).collect();
        protocol::encode(&ServerFrame::Members {
            room: &self.name,
            count: state.roster.len(),
            members: &members,
            next,
        })
    }
}

/// The client id in a dedupe key.
fn client_id(key: &str) -> Option<&str> {
    key.split_once('\0').map(|(_, id)| id)
}

/// A stored `message` frame read back, for the host's history pages.
fn decode_stored(frame: &[u8]) -> Option<StoredMessage> {
    #[derive(serde::Deserialize)]
    struct Frame {
        seq: u64,
        time: u64,
        from: String,
        sender: Option<String>,
        text: String,
    }
    let f: Frame = serde_json::from_slice(frame).ok()?;
    Some(StoredMessage {
        seq: f.seq,
        time: f.time,
        from: f.from,
        sender: f.sender,
        text: f.text,
    })
}

/// A close code another node sent, as ours.
fn close_code(code: u16) -> CloseCode {
    match code {
        4000 => CloseCode::Shutdown,
        4002 => CloseCode::Reconnect,
        _ => CloseCode::Kicked,
    }
}

fn ack(room: &str, id: Option<&str>, seq: u64) -> Bytes {
    protocol::encode(&ServerFrame::Ack { room, id, seq })
}

impl RoomState {
    /// Delivers numbered (and, on a durable engine, stored) messages, in order: into the
    /// recent history, to every member, and each acknowledgement to its sender. A member's
    /// share of the batch goes in with one push (one lock, one wake-up, one write for a
    /// commit's worth of messages); a sender's share has its own copies, each followed by
    /// its ack.
    fn deliver(
        &mut self,
        room: &str,
        limits: &RoomLimits,
        history_held: &AtomicUsize,
        batch: Vec<Pending>,
    ) {
        let Some(last) = batch.last() else {
            return;
        };
        self.delivered = last.message.seq;
        self.last_active = Instant::now();
        let frames: Vec<Bytes> = batch.iter().map(|p| p.message.frame.clone()).collect();
        let mut senders: Vec<u64> = batch.iter().filter_map(|p| p.origin.member()).collect();
        senders.sort_unstable();
        senders.dedup();
        let mut in_room = vec![false; senders.len()];
        let mut slow: Vec<u64> = Vec::new();
        for member in self.roster.iter() {
            match senders.binary_search(&member.id) {
                Ok(i) => in_room[i] = true,
                Err(_) if !member.outbox.push_many(&frames) => slow.push(member.id),
                Err(_) => {}
            }
        }
        for (&sender, in_room) in senders.iter().zip(in_room) {
            // A sender that left the room meanwhile still gets its own messages and acks.
            let mut outbox = None;
            let mut share = Vec::with_capacity(frames.len() + 2);
            for pending in &batch {
                match &pending.origin {
                    Origin::Member {
                        id,
                        outbox: own_box,
                        own,
                        ack,
                        ..
                    } if *id == sender => {
                        share.push(own.clone().unwrap_or_else(|| pending.message.frame.clone()));
                        share.push(ack.clone());
                        outbox = Some(own_box);
                    }
                    _ if in_room => share.push(pending.message.frame.clone()),
                    _ => {}
                }
            }
            if let Some(outbox) = outbox
                && !outbox.push_many(&share)
                && in_room
            {
                slow.push(sender);
            }
        }
        for pending in batch {
            let Pending {
                message,
                origin,
                retries,
                ..
            } = pending;
            let seq = message.seq;
            // Told by the node where it was published: each node tells its own.
            if let Some(observer) = &self.observer
                && !matches!(origin, Origin::Peer)
            {
                let user = match &origin {
                    Origin::Member { user, .. } => user.clone(),
                    _ => None,
                };
                let frame = message.frame.clone();
                observer.tell(Happened::Message { frame, user });
            }
            match origin {
                Origin::Member { ack, .. } => {
                    for retry in retries {
                        retry.push(ack.clone());
                    }
                }
                Origin::Host(done) => {
                    if let Some(done) = done {
                        let _ = done.send(Ok(seq));
                    }
                }
                Origin::Peer => {}
            }
            if limits.history_len > 0 {
                history_held.fetch_add(message.frame.len(), Ordering::Relaxed);
                self.history.push_back(message);
            }
            if self.history.len() > limits.history_len
                && let Some(old) = self.history.pop_front()
            {
                history_held.fetch_sub(old.frame.len(), Ordering::Relaxed);
            }
        }
        if !self.acks_after.is_empty() {
            let delivered = self.delivered;
            let (due, later) = std::mem::take(&mut self.acks_after)
                .into_iter()
                .partition(|(seq, _, _)| *seq <= delivered);
            self.acks_after = later;
            for (_, outbox, ack) in due {
                outbox.push(ack);
            }
        }
        self.remove(room, slow);
    }

    fn join(&mut self, room: &Room, member: Member, resume: Resume) {
        let (gap, replay) = self.replay(room, resume);
        let (id, outbox) = (member.id, member.outbox.clone());
        let you = (member.name.clone(), member.sender.clone());
        if let Some(observer) = &self.observer {
            let member = member.summary();
            observer.tell(Happened::Joined {
                room: room.name.clone(),
                member,
            });
        }
        let told = self.roster.add(member);
        // In a big room, the count and the first page: the same cost whatever its size.
        let members = self.roster.first_page();
        let joined = protocol::encode(&ServerFrame::Joined {
            room: &room.name,
            epoch: room.epoch,
            seq: self.delivered,
            you: You {
                id,
                name: &you.0,
                sender: you.1.public(),
            },
            key: you.1.resume_key(),
            members: &members,
            count: self.roster.len(),
            gap,
            replay: replay.len(),
        });
        drop(members);
        outbox.push(joined);
        for frame in replay {
            if !outbox.push(frame) {
                break;
            }
        }
        self.last_active = Instant::now();
        if let Told::Now = told {
            // A small room tells everyone now; a big one in its next update.
            let presence = protocol::encode(&ServerFrame::Presence {
                room: &room.name,
                event: PresenceEvent::Join,
                member: MemberRef { id, name: &you.0 },
                count: self.roster.len(),
            });
            self.broadcast(&room.name, &presence, Some(id));
        }
    }

    /// What a join replays, and whether the client missed messages it will not get.
    ///
    /// Without `since`: the recent history. With it: every message after it, at most
    /// `max_replay` (beyond that, the newest `max_replay` and a gap: a client pages back
    /// for more). Messages older than the recent history come from the engine, read under
    /// the room's lock so that nothing is delivered in between — a short indexed read,
    /// paid only by a client that was away for long.
    fn replay(&self, room: &Room, resume: Resume) -> (bool, Vec<Bytes>) {
        let head = self.delivered;
        let cutoff = room.age_cutoff();
        let recent = self.history.iter().skip_while(|s| s.time < cutoff);
        let oldest = self
            .history
            .iter()
            .find(|s| s.time >= cutoff)
            .map_or(head + 1, |s| s.seq);
        let (mut gap, from) = match resume.since {
            None => (false, oldest),
            // Numbers of another room of that name: all of them were missed, unless the
            // client had seen none.
            Some(since) if resume.epoch.is_some_and(|e| e != room.epoch) => (since > 0, oldest),
            Some(since) => {
                let since = since.min(head);
                let max = room.limits.max_replay as u64;
                if head - since > max {
                    (true, head + 1 - max)
                } else {
                    (false, since + 1)
                }
            }
        };
        let mut frames = Vec::new();
        if from < oldest {
            match room.store.range(&room.name, from, oldest) {
                Some(Ok(older)) => {
                    gap |= older.first().is_none_or(|m| m.seq != from);
                    frames.extend(older.iter().map(|m| message_frame(&room.name, m)));
                }
                Some(Err(e)) => {
                    tracing::error!(room = %room.name, error = %e, "could not read older history");
                    gap = true;
                }
                None => gap = true,
            }
        }
        frames.extend(recent.skip_while(|s| s.seq < from).map(|s| s.frame.clone()));
        (gap, frames)
    }

    /// Pushes `frame` to every member but `skip`. Members that cannot take it are dropped
    /// from the room (they were told to close as too slow), and the others told they left.
    fn broadcast(&mut self, room: &str, frame: &Bytes, skip: Option<u64>) {
        let slow = self.push_all(frame, skip);
        self.remove(room, slow);
    }
    /// Pushes `frame` to every member but `skip`; returns the ids of those that could not
    /// take it.
    fn push_all(&self, frame: &Bytes, skip: Option<u64>) -> Vec<u64> {
        self.roster
            .iter()
            .filter(|m| Some(m.id) != skip && !m.outbox.push(frame.clone()))
            .map(|m| m.id)
            .collect()
    }

    /// Removes the members `ids` and tells the others: in a small room at once, in one
    /// frame however many left; in a big one with the next update. Members that cannot take
    /// that frame leave in the next round: a loop, not recursion, and each round costs one
    /// pass over the members, so a thousand slow members cut off together cost a few
    /// passes, not a thousand. Returns whether anyone was removed.
    fn remove(&mut self, room: &str, mut ids: Vec<u64>) -> bool {
        let mut removed_any = false;
        while !ids.is_empty() {
            let (gone, told) = self.roster.remove(&ids);
            if gone.is_empty() {
                break;
            }
            removed_any = true;
            let here: Vec<u64> = gone
                .iter()
                .filter(|g| g.here)
                .map(|g| g.member.id)
                .collect();
            if !here.is_empty() {
                self.store.left(room, here);
            }
            if let Some(observer) = &self.observer {
                let room: Arc<str> = room.into();
                for gone in gone.iter().filter(|g| g.here) {
                    let member = gone.member.clone();
                    let room = room.clone();
                    observer.tell(Happened::Left { room, member });
                }
            }
            let count = self.roster.len();
            let frame = match (told, gone.as_slice()) {
                (Told::Later, _) => break,
                (Told::Everyone, _) => {
                    self.send_list(room);
                    break;
                }
                (Told::Now, [one]) => protocol::encode(&ServerFrame::Presence {
                    room,
                    event: PresenceEvent::Leave,
                    member: one.member.as_ref(),
                    count,
                }),
                (Told::Now, many) => {
                    let members: Vec<MemberRef<'_>> =
                        many.iter().map(|g| g.member.as_ref()).collect();
                    protocol::encode(&ServerFrame::PresenceMany {
                        room,
                        event: PresenceEvent::Leave,
                        members: &members,
                        count,
                    })
                }
            };
            ids = self.push_all(&frame, None);
        }
        removed_any
    }

    /// Sends everyone the whole list: the room just became small again.
    fn send_list(&mut self, room: &str) {
        let members = self.roster.first_page();
        let frame = protocol::encode(&ServerFrame::PresenceMany {
            room,
            event: PresenceEvent::Sync,
            members: &members,
            count: self.roster.len(),
        });
        drop(members);
        let slow = self.push_all(&frame, None);
        self.remove(room, slow);
    }

    /// A big room's update, when one is due: who joined and left since the last one (or
    /// only the count), to every member.
    fn send_update(&mut self, room: &str) {
        let Some(changes) = self.roster.take_changes() else {
            return;
        };
        fn refs(list: &[(u64, Arc<str>)]) -> Vec<MemberRef<'_>> {
            list.iter()
                .map(|(id, name)| MemberRef { id: *id, name })
                .collect()
        }
        let (joined, left) = (refs(&changes.joined), refs(&changes.left));
        let lists = !changes.overflow;
        let frame = protocol::encode(&ServerFrame::PresenceUpdate {
            room,
            event: PresenceEvent::Update,
            count: self.roster.len(),
            joined: lists.then_some(&joined[..]),
            left: lists.then_some(&left[..]),
        });
        let slow = self.push_all(&frame, None);
        self.remove(room, slow);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Hub {
        /// `join` on the memory engine, which never waits.
        fn join_now(
            &self,
            name: &str,
            member: Member,
            resume: Resume,
        ) -> Result<Arc<Room>, ErrorCode> {
            futures_util::FutureExt::now_or_never(self.join(name, member, resume))
                .expect("the memory engine joins at once")
        }
    }
    use serde_json::Value;

    fn hub_on_memory(config: HubConfig) -> Hub {
        Hub::new(config, Store::Memory, Arc::default()).unwrap()
    }

    /// An anonymous member whose resume key is derived from its name (unique per test).
    fn member(hub: &Hub, name: &str, capacity: usize) -> (Member, Inbox) {
        let (outbox, inbox, _) = queue(capacity);
        (
            anonymous(hub, name, &format!("key-of-{name}"), outbox),
            inbox,
        )
    }

    fn anonymous(hub: &Hub, name: &str, key: &str, outbox: Outbox) -> Member {
        Member {
            id: hub.next_id(),
            name: name.into(),
            user: None,
            sender: Arc::new(SenderKey::new(b"the hub tests' key").resume_key(key)),
            outbox,
        }
    }

    /// Everything queued so far, parsed.
    fn frames(inbox: &mut Inbox) -> Vec<Value> {
        let mut batch = Vec::new();
        inbox.drain_now(&mut batch);
        batch
            .iter()
            .map(|o| serde_json::from_slice(&o.frame).unwrap())
            .collect()
    }

    fn texts(frames: &[Value]) -> Vec<(u64, String)> {
        frames
            .iter()
            .filter(|f| f["type"] == "message")
            .map(|f| {
                (
                    f["seq"].as_u64().unwrap(),
                    f["text"].as_str().unwrap().into(),
                )
            })
            .collect()
    }

    #[test]
    fn join_gets_members_and_history_then_presence_goes_to_others() {
        let hub = hub_on_memory(HubConfig::default());
        let (ann, mut ann_in) = member(&hub, "ann", 64);
        let room = hub.join_now("r", ann.clone(), Resume::default()).unwrap();
        room.publish(&ann, "one", None);
        room.publish(&ann, "two", None);
        let (bob, mut bob_in) = member(&hub, "bob", 64);
        hub.join_now("r", bob.clone(), Resume::default()).unwrap();

        let got = frames(&mut bob_in);
        assert_eq!(got[0]["type"], "joined");
        assert_eq!(got[0]["seq"], 2);
        assert_eq!(got[0]["gap"], false);
        assert_eq!(got[0]["you"]["name"], "bob");
        let names: Vec<&str> = got[0]["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["ann", "bob"]);
        assert_eq!(texts(&got[1..]), [(1, "one".into()), (2, "two".into())]);

        let ann_got = frames(&mut ann_in);
        let last = ann_got.last().unwrap();
        assert_eq!(last["type"], "presence");
        assert_eq!(last["event"], "join");
        assert_eq!(last["member"]["name"], "bob");
    }

    #[test]
    fn publish_orders_messages_and_acks_the_sender_after_its_message() {
        let hub = hub_on_memory(HubConfig::default());
        let (ann, mut ann_in) = member(&hub, "ann", 64);
        let (bob, mut bob_in) = member(&hub, "bob", 64);
        let room = hub.join_now("r", ann.clone(), Resume::default()).unwrap();
        hub.join_now("r", bob.clone(), Resume::default()).unwrap();
        frames(&mut ann_in);
        frames(&mut bob_in);

        room.publish(&ann, "a1", Some("x1"));
        room.publish(&bob, "b1", Some("y1"));
        let ann_got = frames(&mut ann_in);
        let bob_got = frames(&mut bob_in);
        assert_eq!(texts(&ann_got), texts(&bob_got));
        assert_eq!(texts(&ann_got), [(1, "a1".into()), (2, "b1".into())]);
        assert_eq!(ann_got[0]["from"], "ann");
        assert_eq!(ann_got[0]["id"], "x1");
        assert!(ann_got[0]["time"].as_u64().unwrap() > 1_600_000_000_000);
        assert_eq!(ann_got[1]["type"], "ack");
        assert_eq!(
            (ann_got[1]["id"].as_str(), ann_got[1]["seq"].as_u64()),
            (Some("x1"), Some(1))
        );
        assert!(
            bob_got
                .iter()
                .all(|f| f["id"] != "x1" || f["type"] == "message")
        );
    }

    #[test]
    fn a_retried_id_is_acknowledged_again_and_stored_once() {
        let hub = hub_on_memory(HubConfig::default());
        let (ann, mut ann_in) = member(&hub, "ann", 64);
        let (bob, mut bob_in) = member(&hub, "bob", 64);
        let room = hub.join_now("r", ann.clone(), Resume::default()).unwrap();
        hub.join_now("r", bob.clone(), Resume::default()).unwrap();
        frames(&mut ann_in);
        frames(&mut bob_in);
        room.publish(&ann, "hello", Some("k"));
        room.publish(&ann, "hello", Some("k"));
        // The same id from another sender is another message.
        room.publish(&bob, "hello", Some("k"));
        let ann_got = frames(&mut ann_in);
        let acks: Vec<u64> = ann_got
            .iter()
            .filter(|f| f["type"] == "ack")
            .map(|f| f["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(acks, [1, 1]);
        assert_eq!(texts(&frames(&mut bob_in)).len(), 2);
    }

    #[test]
    fn a_name_is_not_an_identity_the_sender_is() {
        let hub = hub_on_memory(HubConfig::default());
        let (outbox, mut ann_in, _) = queue(64);
        let ann = anonymous(&hub, "ann", "AAAAAAAAAAAAAAAAAAAAAA", outbox);
        let (outbox, mut fake_in, _) = queue(64);
        let impostor = anonymous(&hub, "ann", "BBBBBBBBBBBBBBBBBBBBBB", outbox);
        let room = hub.join_now("r", ann.clone(), Resume::default()).unwrap();
        hub.join_now("r", impostor.clone(), Resume::default())
            .unwrap();
        frames(&mut ann_in);
        frames(&mut fake_in);
        // Same name, same client ids: two senders, two messages each, each acked its own.
        room.publish(&impostor, "fake 1", Some("1"));
        room.publish(&ann, "real 1", Some("1"));
        room.publish(&ann, "real 1", Some("1"));
        let ann_got = frames(&mut ann_in);
        assert_eq!(
            texts(&ann_got),
            [(1, "fake 1".into()), (2, "real 1".into())]
        );
        let acks: Vec<u64> = ann_got
            .iter()
            .filter(|f| f["type"] == "ack")
            .map(|f| f["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(acks, [2, 2]);
        // Ann's own copy names her client id and her public sender id; the impostor's
        // message, as Ann sees it, has no id and another sender.
        let own = &ann_got[1];
        assert_eq!(
            (own["id"].as_str(), own["sender"].as_str()),
            (Some("1"), Some(ann.sender.public()))
        );
        let theirs = &ann_got[0];
        assert_eq!(theirs.get("id"), None);
        assert_eq!(theirs["sender"], impostor.sender.public());
        assert_ne!(ann.sender.public(), impostor.sender.public());
        // The impostor never learns Ann's client ids.
        let fake_got = frames(&mut fake_in);
        assert!(
            fake_got
                .iter()
                .filter(|f| f["seq"] == 2)
                .all(|f| f.get("id").is_none())
        );
        // The public id gives nothing of the key away.
        assert!(!ann.sender.public().contains("AAAA"));
    }

    #[test]
    fn resume_replays_exactly_what_was_missed_or_reports_a_gap() {
        let hub = hub_on_memory(HubConfig {
            history_len: 5,
            ..HubConfig::default()
        });
        let (ann, _ann_in) = member(&hub, "ann", 64);
        let room = hub.join_now("r", ann.clone(), Resume::default()).unwrap();
        for i in 1..=8 {
            room.publish(&ann, &format!("m{i}"), None);
        }
        let epoch = {
            let (probe, mut probe_in) = member(&hub, "probe", 64);
            hub.join_now("r", probe.clone(), Resume::default()).unwrap();
            let got = frames(&mut probe_in);
            assert_eq!(
                texts(&got).first().unwrap().0,
                4,
                "only the last 5 are kept"
            );
            room.leave(probe.id);
            got[0]["epoch"].as_u64().unwrap()
        };
        let resume = |since, epoch| {
            let (m, mut inbox) = member(&hub, "bob", 64);
            hub.join_now("r", m.clone(), Resume { since, epoch })
                .unwrap();
            room.leave(m.id);
            let got = frames(&mut inbox);
            (
                got[0]["gap"].as_bool().unwrap(),
                texts(&got).iter().map(|t| t.0).collect::<Vec<_>>(),
            )
        };
        assert_eq!(resume(Some(6), Some(epoch)), (false, vec![7, 8]));
        assert_eq!(resume(Some(3), Some(epoch)), (false, vec![4, 5, 6, 7, 8]));
        assert_eq!(resume(Some(8), Some(epoch)), (false, vec![]));
        assert_eq!(resume(Some(2), Some(epoch)), (true, vec![4, 5, 6, 7, 8]));
        assert_eq!(
            resume(Some(6), Some(epoch + 1)),
            (true, vec![4, 5, 6, 7, 8])
        );
        assert_eq!(resume(Some(6), None), (false, vec![7, 8]));
    }

    #[test]
    fn a_full_queue_drops_only_that_member_and_tells_it_why() {
        let hub = hub_on_memory(HubConfig::default());
        let (ann, mut ann_in) = member(&hub, "ann", 1024);
        let (outbox, _slow_in, closing) = queue(8);
        let slow = anonymous(&hub, "slow", "key-of-slow", outbox);
        let room = hub.join_now("r", ann.clone(), Resume::default()).unwrap();
        hub.join_now("r", slow.clone(), Resume::default()).unwrap();
        for i in 0..20 {
            room.publish(&ann, &format!("m{i}"), None);
        }
        let members: Vec<_> = room
            .members_page(None, usize::MAX)
            .0
            .into_iter()
            .map(|m| m.name.to_string())
            .collect();
        assert_eq!(members, ["ann"]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(closing.wait()), CloseCode::TooSlow);
        let got = frames(&mut ann_in);
        assert_eq!(texts(&got).len(), 20, "the fast member got everything");
        assert!(got.iter().any(|f| f["type"] == "presence"
            && f["event"] == "leave"
            && f["member"]["name"] == "slow"));
        assert!(!room.leave(slow.id), "already gone: no second leave event");
    }

    #[test]
    fn many_slow_members_leave_together_in_one_frame_without_recursion() {
        // A small room of a thousand (a big one tells leaves in its next update): joining
        // it costs the square of its size, 1000 keeps this quick.
        const N: usize = 1000;
        let hub = hub_on_memory(HubConfig {
            presence: Policy {
                threshold: 10_000,
                counts_only: false,
            },
            ..HubConfig::default()
        });
        let (ann, mut ann_in) = member(&hub, "ann", N + 10);
        let room = hub.join_now("r", ann.clone(), Resume::default()).unwrap();
        // N members whose sessions are gone (their queues refuse everything), and one whose
        // queue takes the message but not what follows: it leaves in the second round.
        let mut gone = Vec::new();
        for i in 0..N {
            let (m, inbox) = member(&hub, &format!("s{i}"), N + 10);
            hub.join_now("r", m, Resume::default()).unwrap();
            gone.push(inbox);
        }
        let (edge, mut edge_in) = member(&hub, "edge", 8);
        hub.join_now("r", edge.clone(), Resume::default()).unwrap();
        frames(&mut ann_in);
        frames(&mut edge_in);
        for _ in 0..7 {
            assert!(edge.outbox.push(Bytes::from_static(b"{}\n")));
        }
        drop(gone);
        room.publish(&ann, "hello", None);
        let got = frames(&mut ann_in);
        assert_eq!(texts(&got), [(1, "hello".into())]);
        let leaves: Vec<usize> = got
            .iter()
            .filter(|f| f["type"] == "presence" && f["event"] == "leave")
            .map(|f| f["members"].as_array().map_or(1, Vec::len))
            .collect();
        assert_eq!(leaves, [N, 1], "one frame for the N, then one for the edge");
        let names: Vec<String> = room
            .members_page(None, usize::MAX)
            .0
            .iter()
            .map(|m| m.name.to_string())
            .collect();
        assert_eq!(names, ["ann"]);
    }

    #[test]
    fn history_over_its_budget_leaves_the_least_active_rooms_first() {
        let hub = hub_on_memory(HubConfig {
            history_bytes: 20_000,
            ..HubConfig::default()
        });
        let (ann, _a) = member(&hub, "ann", 1024);
        let (bob, _b) = member(&hub, "bob", 1024);
        let quiet = hub
            .join_now("quiet", ann.clone(), Resume::default())
            .unwrap();
        let busy = hub
            .join_now("busy", bob.clone(), Resume::default())
            .unwrap();
        let text = "x".repeat(1000);
        for _ in 0..10 {
            quiet.publish(&ann, &text, None);
        }
        // The busy room takes the total over 20 KB: the quiet room's oldest go first.
        for _ in 0..12 {
            busy.publish(&bob, &text, None);
            hub.keep_history_budget();
        }
        let held = hub.inner.history_held.load(Ordering::Relaxed);
        assert!(held <= 20_000, "{held} bytes held");
        let kept = |room: &Room| room.state.lock().unwrap().history.len();
        assert_eq!(kept(&busy), 12, "the active room keeps its history");
        assert!(kept(&quiet) < 10, "the quiet room gave some up");
        // A resume from before what the quiet room kept is told it missed some.
        let (probe, mut probe_in) = member(&hub, "probe", 1024);
        let epoch = quiet.epoch();
        let resume = Resume {
            since: Some(0),
            epoch: Some(epoch),
        };
        hub.join_now("quiet", probe, resume).unwrap();
        assert_eq!(frames(&mut probe_in)[0]["gap"], true);
        // The count is exact: what the rooms hold, to the byte.
        let bytes = |room: &Room| -> usize {
            let state = room.state.lock().unwrap();
            state.history.iter().map(|s| s.frame.len()).sum()
        };
        assert_eq!(bytes(&quiet) + bytes(&busy), held);
    }

    #[test]
    fn typing_is_ephemeral_and_never_disconnects() {
        let hub = hub_on_memory(HubConfig::default());
        let (ann, _ann_in) = member(&hub, "ann", 64);
        let (bob, mut bob_in) = member(&hub, "bob", 4);
        let room = hub.join_now("r", ann.clone(), Resume::default()).unwrap();
        hub.join_now("r", bob.clone(), Resume::default()).unwrap();
        for _ in 0..10 {
            room.typing(&ann);
        }
        assert_eq!(
            room.members_page(None, usize::MAX).0.len(),
            2,
            "a full queue drops typing, not the member"
        );
        let got = frames(&mut bob_in);
        assert!(
            got.iter()
                .any(|f| f["type"] == "typing" && f["from"] == "ann")
        );
    }

    #[test]
    fn at_the_room_limit_the_oldest_empty_room_makes_space() {
        let hub = hub_on_memory(HubConfig {
            max_rooms: 2,
            ..HubConfig::default()
        });
        let (ann, _a) = member(&hub, "ann", 64);
        let busy = hub
            .join_now("busy", ann.clone(), Resume::default())
            .unwrap();
        let (bob, _b) = member(&hub, "bob", 64);
        let idle = hub
            .join_now("idle", bob.clone(), Resume::default())
            .unwrap();
        idle.leave(bob.id);
        let (cid, _c) = member(&hub, "cid", 64);
        hub.join_now("new", cid.clone(), Resume::default()).unwrap();
        assert!(hub.room("idle").is_none());
        assert!(hub.room("busy").is_some());
        let (dan, _d) = member(&hub, "dan", 64);
        assert_eq!(
            hub.join_now("fourth", dan, Resume::default()).unwrap_err(),
            ErrorCode::ServerFull
        );
        assert_eq!(busy.members_page(None, usize::MAX).0.len(), 1);
    }

    #[test]
    fn connection_permits_count_against_the_limit() {
        let hub = hub_on_memory(HubConfig {
            max_connections: 2,
            ..HubConfig::default()
        });
        let a = hub.try_connect().unwrap();
        let _b = hub.try_connect().unwrap();
        assert!(hub.try_connect().is_none());
        drop(a);
        assert!(hub.try_connect().is_some());
    }

    fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    #[test]
    fn deleting_a_message_removes_it_from_history_and_tells_the_members() {
        let hub = hub_on_memory(HubConfig::default());
        let (ann, mut ann_in) = member(&hub, "ann", 64);
        let room = hub.join_now("r", ann.clone(), Resume::default()).unwrap();
        for text in ["one", "two", "three"] {
            room.publish(&ann, text, None);
        }
        frames(&mut ann_in);
        assert!(block_on(hub.delete("r", 2)).unwrap());
        let got = frames(&mut ann_in);
        assert_eq!(got.len(), 1);
        assert_eq!(
            (got[0]["type"].as_str(), got[0]["seq"].as_u64()),
            (Some("deleted"), Some(2))
        );
        // Not a message (any more): nothing to say.
        assert!(!block_on(hub.delete("r", 2)).unwrap());
        assert!(!block_on(hub.delete("r", 99)).unwrap());
        assert!(frames(&mut ann_in).is_empty());
        let (bob, mut bob_in) = member(&hub, "bob", 64);
        hub.join_now("r", bob, Resume::default()).unwrap();
        assert_eq!(
            texts(&frames(&mut bob_in)),
            [(1, "one".into()), (3, "three".into())]
        );
    }

    #[test]
    fn history_pages_go_back_from_the_newest() {
        let hub = hub_on_memory(HubConfig::default());
        let (ann, _ann_in) = member(&hub, "ann", 64);
        let room = hub.join_now("r", ann.clone(), Resume::default()).unwrap();
        for i in 1..=7 {
            room.publish(&ann, &format!("m{i}"), None);
        }
        let page = |before, limit| {
            let page = hub.history("r", before, limit).unwrap();
            (
                page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
                page.more,
            )
        };
        assert_eq!(page(None, 3), (vec![5, 6, 7], true));
        assert_eq!(page(Some(5), 3), (vec![2, 3, 4], true));
        assert_eq!(page(Some(2), 3), (vec![1], false));
        assert_eq!(page(Some(100), 10).0.len(), 7, "nothing beyond the newest");
        assert_eq!(hub.history("nowhere", None, 3).unwrap().messages, []);
    }

    #[test]
    fn a_ban_keeps_a_user_out_of_its_room_or_everywhere_until_it_ends() {
        let hub = hub_on_memory(HubConfig::default());
        let (outbox, mut inbox, _closing) = queue(64);
        let mut bob = anonymous(&hub, "bob", "key-of-bob", outbox);
        bob.user = Some("u-bob".into());
        let room = hub.join_now("r", bob.clone(), Resume::default()).unwrap();
        assert!(!hub.banned("r", "u-bob"));
        let kicked = block_on(hub.ban(Some("r"), "u-bob", now_ms() + 60_000)).unwrap();
        assert_eq!(kicked, 1);
        // Out of that room, and told so; the connection's session sees it (and closes the
        // connection with 4403 if that was its last room).
        assert_eq!(
            frames(&mut inbox).last(),
            Some(
                &serde_json::json!({"type": "left", "room": "r", "code": 4403, "reason": "kicked"})
            )
        );
        assert!(inbox.rooms_removed());
        assert!(!room.lists(bob.id));
        assert!(hub.banned("r", "u-bob"));
        assert!(!hub.banned("elsewhere", "u-bob"));
        assert!(!hub.banned("r", "u-ann"));
        block_on(hub.ban(None, "u-bob", now_ms() + 60_000)).unwrap();
        assert!(hub.banned("elsewhere", "u-bob"));
        block_on(hub.unban(None, "u-bob")).unwrap();
        block_on(hub.unban(Some("r"), "u-bob")).unwrap();
        assert!(!hub.banned("r", "u-bob"));
        // A ban that ended is no ban.
        block_on(hub.ban(Some("r"), "u-bob", now_ms() - 1)).unwrap();
        assert!(!hub.banned("r", "u-bob"));
    }

    fn big_at(threshold: usize) -> HubConfig {
        HubConfig {
            presence: Policy {
                threshold,
                counts_only: false,
            },
            ..HubConfig::default()
        }
    }

    /// What a client makes of its room's presence frames: the members it knows and the
    /// count it shows.
    #[derive(Default)]
    struct View {
        members: std::collections::BTreeMap<u64, String>,
        count: u64,
    }

    impl View {
        fn apply(&mut self, frame: &Value) {
            let entries = |key: &str| -> Vec<(u64, String)> {
                frame[key]
                    .as_array()
                    .map(|list| {
                        list.iter()
                            .map(|m| {
                                (
                                    m["id"].as_u64().unwrap(),
                                    m["name"].as_str().unwrap().into(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            };
            match (frame["type"].as_str(), frame["event"].as_str()) {
                (Some("joined"), _) | (Some("presence"), Some("sync")) => {
                    self.members = entries("members").into_iter().collect();
                }
                (Some("presence"), Some("join")) => {
                    let m = &frame["member"];
                    self.members.insert(
                        m["id"].as_u64().unwrap(),
                        m["name"].as_str().unwrap().into(),
                    );
                }
                (Some("presence"), Some("leave")) => {
                    let ids = entries("members").into_iter().map(|(id, _)| id);
                    for id in ids.chain(frame["member"]["id"].as_u64()) {
                        self.members.remove(&id);
                    }
                }
                (Some("presence"), Some("update")) => {
                    self.members.extend(entries("joined"));
                    for (id, _) in entries("left") {
                        self.members.remove(&id);
                    }
                }
                _ => return,
            }
            self.count = frame["count"].as_u64().unwrap();
        }
    }

    fn truth(room: &Room) -> std::collections::BTreeMap<u64, String> {
        room.members_page(None, usize::MAX)
            .0
            .into_iter()
            .map(|m| (m.id, m.name.to_string()))
            .collect()
    }

    #[test]
    fn a_big_room_joins_with_a_count_and_a_first_page_and_tells_changes_in_updates() {
        let hub = hub_on_memory(big_at(5));
        let (ann, mut ann_in) = member(&hub, "ann", 10_000);
        let room = hub.join_now("r", ann.clone(), Resume::default()).unwrap();
        let mut others = Vec::new();
        for i in 0..149 {
            let (m, inbox) = member(&hub, &format!("m{i}"), 10_000);
            hub.join_now("r", m.clone(), Resume::default()).unwrap();
            others.push((m, inbox));
        }
        // Small until five: one frame per join, with the count; then nothing until the update.
        let got = frames(&mut ann_in);
        let counts: Vec<u64> = got
            .iter()
            .filter(|f| f["type"] == "presence")
            .map(|f| f["count"].as_u64().unwrap())
            .collect();
        assert_eq!(counts, [2, 3, 4]);
        // The last to join gets the count and the first page, not everyone.
        let joined = &frames(&mut others.last_mut().unwrap().1)[0];
        assert_eq!(joined["count"], 150);
        let page = joined["members"].as_array().unwrap();
        assert_eq!(page.len(), protocol::MEMBERS_PAGE);
        assert_eq!(page[0]["name"], "ann", "the lowest ids first");
        // 146 joins since the room became big: more than one update lists, so counts only.
        hub.tick();
        let update = frames(&mut ann_in);
        assert_eq!(update.len(), 1);
        assert_eq!(
            update[0],
            serde_json::json!({"type":"presence","room":"r","event":"update","count":150})
        );
        // A few leave: the next update names them.
        for (m, _) in others.drain(..3) {
            room.leave(m.id);
        }
        assert!(frames(&mut ann_in).is_empty(), "nothing until the update");
        hub.tick();
        let update = &frames(&mut ann_in)[0];
        assert_eq!(update["count"], 147);
        let left: Vec<&str> = update["left"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["name"].as_str().unwrap())
            .collect();
        assert_eq!(left, ["m0", "m1", "m2"]);
        assert_eq!(update["joined"], serde_json::json!([]));
        hub.tick();
        assert!(frames(&mut ann_in).is_empty(), "no change, no update");
        // Pages cover everyone once, in id order.
        let mut listed = Vec::new();
        let mut after = None;
        loop {
            let (page, count, next) = room.members_page(after, 40);
            assert_eq!(count, 147);
            listed.extend(page.into_iter().map(|m| m.id));
            match next {
                Some(id) => after = Some(id),
                None => break,
            }
        }
        assert_eq!(listed, truth(&room).into_keys().collect::<Vec<_>>());
        // Below the threshold again: everyone gets the whole list, and it is small again.
        let keep = 3;
        for (m, _) in others.drain(keep..) {
            room.leave(m.id);
        }
        let sync = frames(&mut ann_in);
        let sync = sync.last().unwrap();
        assert_eq!(
            (sync["event"].as_str(), sync["count"].as_u64()),
            (Some("sync"), Some(4))
        );
        assert_eq!(sync["members"].as_array().unwrap().len(), 4);
        room.leave(others[0].0.id);
        let leave = frames(&mut ann_in);
        assert_eq!(
            (leave[0]["event"].as_str(), leave[0]["count"].as_u64()),
            (Some("leave"), Some(3))
        );
    }

    #[test]
    fn after_a_join_and_leave_storm_every_members_view_converges_to_the_truth() {
        let hub = hub_on_memory(big_at(20));
        let mut clients: Vec<(Member, Inbox, View)> = Vec::new();
        let mut left = Vec::new();
        let room = |hub: &Hub| hub.room("r").unwrap();
        for round in 0..30 {
            // Five join, two leave, an update every other round: some changes cross the
            // threshold, some updates list a dozen changes.
            for i in 0..5 {
                let (m, inbox) = member(&hub, &format!("r{round}-{i}"), 10_000);
                hub.join_now("r", m.clone(), Resume::default()).unwrap();
                clients.push((m, inbox, View::default()));
            }
            for _ in 0..2 {
                let (m, inbox, _) = clients.remove((round * 7) % clients.len());
                room(&hub).leave(m.id);
                left.push(inbox);
            }
            if round % 2 == 1 {
                hub.tick();
            }
            for (_, inbox, view) in &mut clients {
                for frame in frames(inbox) {
                    view.apply(&frame);
                }
            }
        }
        hub.tick();
        let truth = truth(&room(&hub));
        assert!(truth.len() > 20, "the room is big");
        for (m, inbox, view) in &mut clients {
            for frame in frames(inbox) {
                view.apply(&frame);
            }
            assert_eq!(view.count, truth.len() as u64, "{}'s count", m.name);
            // Under a hundred: a big room's first page is everyone, and every update
            // listed its changes, so each list is exact.
            assert_eq!(view.members, truth, "{}'s list", m.name);
        }
    }

    #[test]
    fn a_room_set_to_counts_only_never_lists_who_came_or_went() {
        let hub = hub_on_memory(big_at(100));
        let (ann, mut ann_in) = member(&hub, "ann", 1000);
        hub.join_now("r", ann, Resume::default()).unwrap();
        hub.set_policy(
            "r",
            Policy {
                threshold: 2,
                counts_only: true,
            },
        );
        let (bob, _b) = member(&hub, "bob", 1000);
        hub.join_now("r", bob, Resume::default()).unwrap();
        hub.tick();
        let got = frames(&mut ann_in);
        let update = got.last().unwrap();
        assert_eq!(update["event"], "update");
        assert_eq!(update["count"], 2);
        assert!(update.get("joined").is_none() && update.get("left").is_none());
    }
}
