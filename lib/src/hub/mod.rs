//! The broadcast core: the rooms this node holds, the connections it admits, and what the
//! host does to them. It knows nothing about transports, and talks to its engine through
//! the [`Broker`] contract only.
//!
//! - [`room`]: one room — its members, the tail of its history, the one route by which its
//!   messages reach them.
//! - [`roster`]: a room's member list and how comings and goings are told.
//! - [`member`], [`sender`]: who a member is, and who sends its messages.
//! - [`moderation`]: bans, presence policies, kicks and bans across nodes.
//! - [`readers`]: each user's connections, for the frames meant for it wherever it is (its
//!   read state from its other tabs, the mentions of it); read marks go to the engine.
//! - [`budget`]: the memory budget of the rooms' tails.
//! - [`happened`]: what the events webhook hears.

mod budget;
mod happened;
mod member;
mod moderation;
mod readers;
mod room;
mod roster;
mod sender;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use bytes::Bytes;
use futures_util::FutureExt;

#[cfg(feature = "webhooks")]
pub(crate) use happened::Happened;
pub(crate) use happened::{Mentioned, Observer};
pub(crate) use member::{Member, Resume};
pub(crate) use readers::Listing as ReaderListing;
pub(crate) use room::{Room, message_frame};
pub(crate) use roster::Policy;
pub(crate) use sender::{Sender, SenderKey};

use crate::engine::{
    Broker, HistoryPage, MembersPage, NodeSink, Reacted, ReactorsPage, ReadState, Record,
    RecordKind, Retention, StorageError,
};
use crate::metrics::{HubGauges, Metrics};
use crate::protocol::{self, CloseCode, ErrorCode, ServerFrame, now_ms};
use budget::HistoryBudget;
use moderation::{Control, Moderation, close_code};
use readers::Readers;
use room::{Common, Removed, RoomLimits};

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
    /// Bytes of live frames (everything but a join's replay) queued per connection before
    /// it counts as too slow: a reader that stopped must not pin `outbound_queue` large
    /// frames.
    pub outbound_bytes: usize,
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
                bytes: 10 << 30,
            },
            dedupe_window: 1000,
            presence: Policy {
                threshold: 100,
                counts_only: false,
            },
            max_rooms: 10_000,
            outbound_queue: 8192,
            outbound_bytes: 1 << 20,
            max_connections: 50_000,
            history_bytes: 256 << 20,
        }
    }
}

impl HubConfig {
    /// The bounds of a connection's outbound queue.
    pub(crate) fn queue_bounds(&self) -> crate::queue::Bounds {
        crate::queue::Bounds {
            frames: self.outbound_queue,
            bytes: self.outbound_bytes,
        }
    }
}

/// The broadcast core. A cheap, cloneable handle.
#[derive(Clone)]
pub(crate) struct Hub {
    inner: Arc<HubInner>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

struct HubInner {
    config: HubConfig,
    engine: Arc<dyn Broker>,
    /// Taken on join and room creation only, never per message.
    rooms: Mutex<HashMap<Arc<str>, Arc<Room>>>,
    next_id: AtomicU64,
    connections: AtomicUsize,
    budget: HistoryBudget,
    moderation: Moderation,
    /// This node's connections by public sender id.
    readers: Arc<Readers>,
    /// Told what happens in the rooms (see [`Hub::observe`]); set before the first room.
    observer: OnceLock<Observer>,
    /// Where requests other nodes forward to this one go (see [`Hub::on_forwarded`]).
    forwarded: OnceLock<Box<dyn Fn(Bytes) + Send + Sync>>,
    metrics: Arc<Metrics>,
}

impl Drop for HubInner {
    /// The engine holds each room's sink, and each room the engine: letting go of the
    /// rooms breaks that circle, so that the engine (and its files, its connections) goes
    /// with the hub.
    fn drop(&mut self) {
        let rooms = self.rooms.get_mut().unwrap_or_else(|e| e.into_inner());
        for name in rooms.keys() {
            self.engine.detach(name);
        }
    }
}

/// Counts one open connection against `max_connections` until dropped.
pub(crate) struct ConnectionPermit {
    hub: Arc<HubInner>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.hub.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What other nodes send this one, handed to the hub (kicks, bans) or to whoever follows
/// forwarded requests.
struct FromNodes(Weak<HubInner>);

impl NodeSink for FromNodes {
    fn broadcast(&self, payload: Bytes) {
        let Some(inner) = self.0.upgrade() else {
            return;
        };
        match serde_json::from_slice::<Control>(&payload) {
            Ok(control) => Hub { inner }.apply(control),
            Err(e) => tracing::warn!(error = %e, "an unreadable kick or ban from another node"),
        }
    }

    fn forwarded(&self, payload: Bytes) {
        if let Some(inner) = self.0.upgrade()
            && let Some(handler) = inner.forwarded.get()
        {
            handler(payload);
        }
    }
}

/// A member listed with the engine, taken off it again unless the join went through.
struct Listing<'a> {
    engine: &'a Arc<dyn Broker>,
    room: &'a str,
    id: u64,
    kept: bool,
}

impl Drop for Listing<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.engine.left(self.room, vec![self.id]);
        }
    }
}

impl Hub {
    /// A hub with no rooms, on `engine`, with the bans it holds.
    pub(crate) async fn new(
        config: HubConfig,
        engine: Arc<dyn Broker>,
        metrics: Arc<Metrics>,
    ) -> Result<Hub, StorageError> {
        let bans = engine.bans().await?;
        let first_id = (engine.node() << 32) + 1;
        let hub = Hub {
            inner: Arc::new(HubInner {
                moderation: Moderation::new(bans, config.presence),
                budget: HistoryBudget {
                    held: Arc::new(AtomicUsize::new(0)),
                    bytes: config.history_bytes,
                },
                config,
                readers: Arc::new(Readers::new(engine.clone())),
                engine,
                rooms: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(first_id),
                connections: AtomicUsize::new(0),
                observer: OnceLock::new(),
                forwarded: OnceLock::new(),
                metrics,
            }),
        };
        let from_nodes = Arc::new(FromNodes(Arc::downgrade(&hub.inner)));
        hub.inner.engine.start(from_nodes);
        Ok(hub)
    }

    /// Applies a kick or a ban another node sent.
    fn apply(&self, control: Control) {
        match control {
            Control::Kick { room, user, code } => {
                self.disconnect_user(room.as_deref(), &user, close_code(code));
            }
            Control::Disconnect { room, member, code } => {
                if let Some(room) = self.room(&room) {
                    room.disconnect(|m| m.id == member, close_code(code));
                }
            }
            Control::Ban { room, user, until } => {
                self.note_ban(room.as_deref(), &user, until);
            }
            Control::Tell { senders, frame } => {
                let frame = Bytes::from(frame);
                for sender in &senders {
                    self.inner.readers.send_here(sender, &frame);
                }
            }
            Control::Read {
                room,
                reader,
                seq,
                frame,
            } => {
                self.inner.readers.send_here(&reader, &Bytes::from(frame));
                if let Some(room) = self.room(&room) {
                    room.receipt(&reader, seq);
                }
            }
        }
    }

    /// Tells every other node.
    fn tell_nodes(&self, control: &Control) {
        let payload = serde_json::to_vec(control).expect("serializable");
        self.inner.engine.broadcast(payload.into());
    }

    /// Closes `user`'s connections here in `room` (None: every room); returns how many.
    fn disconnect_user(&self, room: Option<&str>, user: &str, code: CloseCode) -> usize {
        let rooms: Vec<Arc<Room>> = match room {
            Some(name) => self.room(name).into_iter().collect(),
            None => self.rooms(),
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
        self.tell_nodes(&Control::Kick {
            room: room.map(Into::into),
            user: user.into(),
            code: code.code(),
        });
        self.disconnect_user(room, user, code)
    }

    /// Closes member `member` of `room` with `code`, on whichever node it is connected
    /// to; whether it is in the room.
    pub(crate) async fn disconnect_member(
        &self,
        room: &str,
        member: u64,
        code: CloseCode,
    ) -> Result<bool, StorageError> {
        let listed = match self.room(room) {
            Some(held) if held.disconnect(|m| m.id == member, code) > 0 => return Ok(true),
            Some(held) => held.lists(member),
            None => self
                .inner
                .engine
                .members_page(room, Some(member.saturating_sub(1)), 1)
                .await?
                .is_some_and(|page| page.members.first().is_some_and(|m| m.id == member)),
        };
        if listed {
            self.tell_nodes(&Control::Disconnect {
                room: room.into(),
                member,
                code: code.code(),
            });
        }
        Ok(listed)
    }

    /// The hub's configuration.
    pub(crate) fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// What this server counts.
    pub(crate) fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The rooms held here.
    fn rooms(&self) -> Vec<Arc<Room>> {
        self.inner.rooms.lock().unwrap().values().cloned().collect()
    }

    /// Rooms held here, and their members connected here: for a scrape.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn gauges(&self) -> HubGauges {
        let rooms = self.rooms();
        HubGauges {
            rooms: rooms.len(),
            members: rooms.iter().map(|room| room.members_here_count()).sum(),
        }
    }

    /// Whether the engine answers (for `/wtchat/ready`).
    pub(crate) async fn engine_reachable(&self) -> Result<(), String> {
        self.inner.engine.reachable().await
    }

    /// This node's number on a shared engine (0 on one process).
    pub(crate) fn node(&self) -> u64 {
        self.inner.engine.node()
    }

    /// Sends a request for a session another node holds (or the answer to one) to it.
    /// False without other nodes (the session is nowhere).
    pub(crate) fn forward(&self, node: u64, request: Bytes) -> bool {
        self.inner.engine.forward(node, request)
    }

    /// Where requests other nodes forward to this one go (the sessions whose clients post
    /// and poll), and the answers to those this one forwarded. Only the first counts.
    pub(crate) fn on_forwarded(&self, handler: impl Fn(Bytes) + Send + Sync + 'static) {
        let _ = self.inner.forwarded.set(Box::new(handler));
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

    /// The room called `name`, if it is held here.
    pub(crate) fn room(&self, name: &str) -> Option<Arc<Room>> {
        self.inner.rooms.lock().unwrap().get(name).cloned()
    }

    /// Sets room `name`'s presence policy, now and whenever it is created again.
    pub(crate) fn set_policy(&self, name: &str, policy: Policy) {
        self.inner.moderation.set_policy(name, policy);
        if let Some(room) = self.room(name) {
            room.set_policy(policy);
        }
    }

    /// Sends every big room's due presence update and typing notices, keeps the history
    /// budget, and lets go of the rooms the engine need not hold (no member here, on an
    /// engine shared by nodes) or lost. The server calls it once per presence interval.
    pub(crate) fn tick(&self) {
        let release_idle = self.inner.engine.release_idle_rooms();
        for room in self.rooms() {
            room.tick();
            if room.removed() || release_idle && room.releasable().is_some() {
                self.forget_room(&room);
            }
        }
        self.keep_history_budget();
    }

    /// Takes `room` out of the hub, if it is still there, and lets the engine go of it.
    fn forget_room(&self, room: &Arc<Room>) {
        let mut rooms = self.inner.rooms.lock().unwrap();
        if rooms.get(room.name()).is_some_and(|r| Arc::ptr_eq(r, room)) {
            rooms.remove(room.name());
            room.remove();
            drop(rooms);
            self.inner.engine.detach(room.name());
        }
    }

    /// Resolves once every message handed to the engine so far is stored (or failed); on a
    /// shared engine then tells the other nodes that this one is gone.
    pub(crate) async fn close(&self) {
        self.inner.engine.flush().await;
        self.inner.engine.close().await;
    }

    /// The room called `name`: held here, else taken up from the engine (which reads it
    /// once, whoever else asks meanwhile).
    async fn room_or_create(&self, name: &str) -> Result<Arc<Room>, ErrorCode> {
        loop {
            let (room, new) = {
                let mut rooms = self.inner.rooms.lock().unwrap();
                match rooms.get(name) {
                    Some(room) => (room.clone(), false),
                    None => {
                        if rooms.len() >= self.inner.config.max_rooms {
                            self.evict_one(&mut rooms)?;
                        }
                        let room = Arc::new(self.new_room(name.into()));
                        rooms.insert(name.into(), room.clone());
                        (room, true)
                    }
                }
            };
            if new {
                // Read by a task of its own when the engine must wait: a join given up
                // meanwhile leaves the room ready for the next one.
                let (engine, sink, tail) = (
                    self.inner.engine.clone(),
                    room.clone(),
                    self.inner.config.history_len,
                );
                let name: Arc<str> = name.into();
                let mut load = Box::pin(async move {
                    let loaded = engine.attach(&name, sink.clone(), tail).await;
                    sink.loaded(loaded);
                });
                if (&mut load).now_or_never().is_none() {
                    tokio::spawn(load);
                }
            }
            if !room.ready().await {
                self.forget_room(&room);
                return Err(ErrorCode::StorageFailed);
            }
            if room.removed() {
                self.forget_room(&room);
                continue;
            }
            return Ok(room);
        }
    }

    /// Makes space by dropping the least recently active room with no members here and
    /// nothing in flight (its history stays stored, on a durable engine).
    fn evict_one(&self, rooms: &mut HashMap<Arc<str>, Arc<Room>>) -> Result<(), ErrorCode> {
        let victim = rooms
            .iter()
            .filter_map(|(key, room)| Some((room.releasable()?, key.clone())))
            .min()
            .map(|(_, key)| key)
            .ok_or(ErrorCode::ServerFull)?;
        if let Some(room) = rooms.remove(&victim) {
            room.remove();
            self.inner.engine.detach(&victim);
        }
        Ok(())
    }

    fn new_room(&self, name: Arc<str>) -> Room {
        let config = &self.inner.config;
        Room::new(
            name.clone(),
            RoomLimits {
                history_len: config.history_len,
                max_replay: config.max_replay,
                retention_age_ms: config.retention.age_ms,
            },
            Common {
                history_held: self.inner.budget.held.clone(),
                engine: self.inner.engine.clone(),
                metrics: self.inner.metrics.clone(),
                readers: self.inner.readers.clone(),
            },
            self.inner.moderation.policy(&name),
            self.inner.observer.get().cloned(),
        )
    }

    /// Publishes into room `name` (creating it) as `from`, on behalf of the host: resolves
    /// with the message's number once it is stored (the outer error: the room could not be
    /// had).
    pub(crate) async fn publish_as(
        &self,
        name: &str,
        from: &str,
        text: &str,
        mentions: Box<[Arc<str>]>,
    ) -> Result<Result<u64, StorageError>, ErrorCode> {
        let room = self.room_or_create(name).await?;
        let mut record = Record::new(now_ms(), from, text);
        record.mentions = mentions;
        let published = room.publish_as(record).await;
        self.keep_history_budget();
        Ok(published)
    }

    /// Brings the history held over all rooms back under its budget, when a message took it
    /// over. Called with no room locked.
    pub(crate) fn keep_history_budget(&self) {
        self.inner.budget.keep(|| self.rooms());
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
        let engine = &self.inner.engine;
        loop {
            let room = self.room_or_create(name).await?;
            // A shared engine lists the member before it is told it joined: a member who
            // joins on another node after that finds it in its list.
            let mut listing = Listing {
                engine,
                room: name,
                id: member.id,
                kept: false,
            };
            engine.joined(name, vec![member.summary().into()]).await;
            match room.join(member.clone(), resume).await {
                Ok(()) => {
                    listing.kept = true;
                    return Ok(room);
                }
                Err(Removed) => continue,
            }
        }
    }

    /// Lists connection `id` under public sender id `sender` (its user's, or its resume
    /// key's), for the frames meant for that user wherever it is, until the listing is
    /// dropped.
    pub(crate) fn list_reader(
        &self,
        sender: &str,
        id: u64,
        outbox: crate::queue::Outbox,
    ) -> ReaderListing {
        self.inner.readers.list(sender, id, outbox)
    }

    /// `reader`'s (a public sender id's) read state in room `name`, after raising its mark
    /// to `to` — or, `to` None, as it is (made at the room's last number on a first join).
    /// When the mark moved, the reader's connections on every node get its `read` frame,
    /// and a small room's members a receipt. Whether it moved comes with it.
    pub(crate) async fn mark_read(
        &self,
        name: &str,
        reader: &str,
        to: Option<u64>,
    ) -> Result<(ReadState, bool), StorageError> {
        let (state, moved) = self.inner.engine.mark_read(name, reader, to).await?;
        if moved && to.is_some() {
            let frame = read_frame(name, &state);
            self.inner.readers.send_here(reader, &frame);
            if let Some(room) = self.room(name) {
                room.receipt(reader, state.seq);
            }
            self.tell_nodes(&Control::Read {
                room: name.into(),
                reader: reader.into(),
                seq: state.seq,
                frame: String::from_utf8_lossy(&frame).into_owned(),
            });
        }
        Ok((state, moved))
    }

    /// `reader`'s read state in every room where it has a mark.
    pub(crate) async fn unread(
        &self,
        reader: &str,
    ) -> Result<Vec<(String, ReadState)>, StorageError> {
        self.inner.engine.unread(reader).await
    }

    /// Whether `user` is banned from `room` (or from the whole server) right now.
    pub(crate) fn banned(&self, room: &str, user: &str) -> bool {
        self.inner.moderation.banned(room, user)
    }

    /// Bans `user` from `room` (None: every room) until `until` (ms since 1970), once the
    /// engine stored it, and disconnects the user's connections there with
    /// [`CloseCode::Kicked`] on every node. Returns how many connections here were told to
    /// close.
    pub(crate) async fn ban(
        &self,
        room: Option<&str>,
        user: &str,
        until: u64,
    ) -> Result<usize, StorageError> {
        self.inner.engine.ban(room, user, Some(until)).await?;
        self.tell_nodes(&Control::Ban {
            room: room.map(Into::into),
            user: user.into(),
            until: Some(until),
        });
        Ok(self.note_ban(room, user, Some(until)))
    }

    /// Lifts a ban set by [`Hub::ban`].
    pub(crate) async fn unban(&self, room: Option<&str>, user: &str) -> Result<(), StorageError> {
        self.inner.engine.ban(room, user, None).await?;
        self.tell_nodes(&Control::Ban {
            room: room.map(Into::into),
            user: user.into(),
            until: None,
        });
        self.note_ban(room, user, None);
        Ok(())
    }

    /// A ban was stored (`until` Some: its user's connections here are closed; returns
    /// how many) or lifted.
    fn note_ban(&self, room: Option<&str>, user: &str, until: Option<u64>) -> usize {
        self.inner.moderation.note_ban(room, user, until);
        match until {
            Some(_) => self.disconnect_user(room, user, CloseCode::Kicked),
            None => 0,
        }
    }

    /// Changes message `seq` of room `name` on the host's behalf — an edit to `text`, or a
    /// deletion — in the room's order, so that members and resumes get its `update`.
    /// Whatever its sender and age. Ok(false) when the room has no such message, or it was
    /// deleted.
    pub(crate) async fn change_as(
        &self,
        name: &str,
        kind: RecordKind,
        seq: u64,
        text: &str,
    ) -> Result<bool, StorageError> {
        let room = self.room_or_create(name).await.map_err(|code| {
            StorageError::new(match code {
                ErrorCode::StorageFailed => "the room could not be read",
                _ => "the server holds too many rooms",
            })
        })?;
        match room.target(seq).await? {
            Some(target) if !target.deleted => {}
            _ => return Ok(false),
        }
        room.publish_as(Record::change(kind, seq, now_ms(), "", text))
            .await?;
        Ok(true)
    }

    /// Appends reaction `record` to room `name` on the host's behalf, once its message is
    /// found and not deleted: resolves with its number and what it came to (None: the
    /// message was not there).
    pub(crate) async fn react_as(
        &self,
        name: &str,
        record: Record,
    ) -> Result<(u64, Option<Reacted>), StorageError> {
        let room = self.room_or_create(name).await.map_err(|code| {
            StorageError::new(match code {
                ErrorCode::StorageFailed => "the room could not be read",
                _ => "the server holds too many rooms",
            })
        })?;
        match room.target(record.target).await? {
            Some(target) if target.deleted => Ok((0, Some(Reacted::Gone { deleted: true }))),
            Some(_) => room.append_as(record).await,
            None => Ok((0, Some(Reacted::Gone { deleted: false }))),
        }
    }

    /// Who reacted to message `seq` of room `name`: a page after `after`.
    pub(crate) async fn reactors(
        &self,
        name: &str,
        seq: u64,
        after: u64,
        limit: usize,
    ) -> Result<ReactorsPage, StorageError> {
        match self.room(name) {
            Some(room) => room.reactors(seq, after, limit).await,
            None => self.inner.engine.reactors(name, seq, after, limit).await,
        }
    }

    /// Up to `limit` members of room `name` with ids above `after`, in id order, over all
    /// nodes; the room's count; and the `after` of the next page.
    pub(crate) async fn members_page(
        &self,
        name: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<MembersPage, StorageError> {
        if let Some(room) = self.room(name) {
            let (members, count, next) = room.members_page(after, limit);
            let members = members.into_iter().map(Into::into).collect();
            return Ok(MembersPage::new(members, count, next));
        }
        let page = self.inner.engine.members_page(name, after, limit).await?;
        Ok(page.unwrap_or_default())
    }

    /// One page of room `name`'s history: up to `limit` messages below `before`.
    pub(crate) async fn history(
        &self,
        name: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage, StorageError> {
        match self.room(name) {
            Some(room) => room.page(before, limit).await,
            None => {
                let before = before.unwrap_or(u64::MAX);
                self.inner.engine.page(name, before, limit).await
            }
        }
    }
}

/// A reader's read state in `room` as its `read` frame.
pub(crate) fn read_frame(room: &str, state: &ReadState) -> Bytes {
    protocol::encode(&ServerFrame::Read {
        room,
        state: read_ref(state),
    })
}

/// A read state as frames carry it.
pub(crate) fn read_ref(state: &ReadState) -> protocol::ReadRef {
    protocol::ReadRef {
        seq: state.seq,
        unread: state.unread,
        mentions: state.mentions,
        head: state.head,
    }
}
