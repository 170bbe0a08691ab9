//! One chat room: its members, the recent tail of its history, and the one route by which
//! its messages and their changes reach them.
//!
//! A member's message, edit or deletion goes to the engine ([`Broker::append`]); every
//! numbered record comes back through [`RoomSink::receive`] — this node's and other
//! nodes', on every engine — and only there is it encoded (once), applied to the tail and
//! pushed into every member's queue, with the sender's own copy and acknowledgement. The
//! room's lock is held for short, non-async sections only: nothing here waits for the
//! engine under it. A join that must replay records older than the tail reads them with the
//! lock released, while what is delivered meanwhile is kept for it, so that the replay is
//! exact.
//!
//! A replay is compact and never stale: the messages the client missed come in their
//! current state (edited text, deleted ones left out), and each older message that changed
//! meanwhile comes once, as one `update` with its current state — however many edits or
//! deletions it took. `max_replay` counts messages only.
//!
//! Reactions are changes too, applied by the engine in the room's order (it knows who
//! reacted, and checks the limits); the room gets the counts back and sends them on: at
//! once in a small room, and in a big one at most once per message per presence interval
//! (the latest counts), so that thousands reacting cost each member a few frames. The
//! reacting member's own reactions come in its `ack`, its `joined` and its history pages.
//!
//! A message that mentions members is told to each of their connections (a `mention`,
//! whatever rooms they are in) by the node that appended it, once it is delivered. A small
//! room gathers its members' read marks into one `receipts` frame per presence interval; a
//! big one sends none.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures_util::FutureExt;
use tokio::sync::{Notify, mpsc, oneshot};

use super::happened::{Happened, Mentioned, Observer};
use super::member::{Member, MemberSummary, Resume};
use super::readers::Readers;
use super::roster::{Listed, Policy, Roster, Told};
use crate::engine::{
    Appended, Broker, Busy, EngineFuture, HistoryPage, Loaded, MemberInfo, Missed, Numbered, Quote,
    Reacted, ReactionCount, ReactorsPage, Record, RecordKind, RoomEvent, RoomSink, StorageError,
    StoredMessage,
};
use crate::metrics::Metrics;
use crate::protocol::{
    self, CloseCode, CountRef, ErrorCode, MemberRef, Mine, PresenceEvent, QuoteRef, ReaderRef,
    ServerFrame, You, now_ms,
};
use crate::queue::{Outbox, Shared};

/// Typing notices a big room relays per presence interval: in a room of thousands, each
/// notice would otherwise reach everyone, several times a second.
const TYPING_PER_TICK: usize = 3;

/// Sizes a room keeps to, from the hub's configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RoomLimits {
    /// Messages kept in the tail.
    pub history_len: usize,
    /// Most messages a resume replays.
    pub max_replay: usize,
    /// Messages older than this are never replayed.
    pub retention_age_ms: u64,
}

/// One chat room. Cheap to share: sessions hold an `Arc<Room>` per room they are in, so
/// sending needs no global lock.
pub(crate) struct Room {
    name: Arc<str>,
    limits: RoomLimits,
    /// The hub's count of history bytes over all rooms (see
    /// [`HubConfig::history_bytes`](super::HubConfig::history_bytes)): moved once per
    /// message kept or dropped, never per delivery.
    history_held: Arc<AtomicUsize>,
    engine: Arc<dyn Broker>,
    /// This node's number: a record it appended comes back naming it.
    node: u64,
    metrics: Arc<Metrics>,
    /// Where the mentions of a message appended here go.
    readers: Arc<Readers>,
    /// Wakes the joins that wait for the engine to have taken the room up.
    loaded: Notify,
    /// Appends whose outcome is still to come, for the room's task that awaits them (see
    /// [`Room::follow`]); None until the first.
    followers: Mutex<Option<Followers>>,
    /// Records appended here and not delivered yet. A lock of its own, taken briefly: a
    /// sender registers its message without waiting for a delivery under way (which holds
    /// `state` for a pass over every member).
    submitted: Mutex<Submitted>,
    /// Whether a message of the room may have reactions (the tail had some, or one came):
    /// until then a join asks the engine for none of its member's own.
    reacted: AtomicBool,
    /// Held only for short, non-async sections: delivering a record and pushing it to every
    /// member's queue must be one step, or two members could see two messages in different
    /// orders.
    state: Mutex<RoomState>,
}

impl std::fmt::Debug for Room {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Room").field("name", &self.name).finish()
    }
}

/// Where the room is in being taken up by the engine.
enum Phase {
    /// The engine is reading it; what it hands the room meanwhile waits here.
    Loading(Vec<RoomEvent>),
    Ready,
    /// The engine could not read it: the hub drops it, and joins try again.
    Failed,
}

struct RoomState {
    phase: Phase,
    /// The room's epoch, as the engine gave it.
    epoch: u64,
    /// The last sequence number delivered here.
    delivered: u64,
    /// The newest delivered messages, oldest first, in their current state: what a join
    /// replays, shared by every replay. A deleted one stays as a mark without its frame.
    history: VecDeque<Stored>,
    /// The changes delivered since `covered`, oldest first: their `update` frames, for the
    /// replays of clients that have the messages they changed.
    changes: VecDeque<Change>,
    /// The tail holds every record numbered from here on: the messages in `history`, the
    /// changes in `changes`. Below it a replay reads the engine.
    covered: u64,
    roster: Roster,
    /// Acknowledgements of retries, owed once the message they repeat is delivered here.
    acks_after: Vec<(u64, Outbox, Bytes)>,
    /// Members whose join reads older history from the engine: what is delivered meanwhile
    /// waits here for them, behind that history.
    joining: Vec<Joining>,
    /// In a big room, who typed since the last presence interval (most recent last).
    typing: Vec<(u64, Arc<str>)>,
    /// In a big room, the messages whose reactions changed since the last presence
    /// interval, with their counts now: sent on the next tick, one `update` each.
    reactions_due: Vec<(u64, Vec<ReactionCount>)>,
    /// In a small room, the members whose read marks moved since the last presence
    /// interval (public sender id, name, mark): sent on the next tick, in one `receipts`.
    receipts_due: Vec<(Arc<str>, Arc<str>, u64)>,
    last_active: Instant,
    /// Set when the hub dropped this room; a join that raced with it looks again.
    removed: bool,
    /// Told what happens here (the events webhook), if anyone follows.
    observer: Option<Observer>,
}

/// The room's appends whose outcome is still to come, by token, in their order.
type Followers = mpsc::UnboundedSender<(u64, EngineFuture<'static, Appended>)>;

/// Records appended here and not delivered yet, by token: who is owed what.
#[derive(Default)]
struct Submitted {
    last_token: u64,
    origins: HashMap<u64, Origin>,
}

/// A message in a room's recent history.
#[derive(Debug, Clone)]
struct Stored {
    seq: u64,
    time: u64,
    /// The `message` frame of its current state (empty once deleted).
    frame: Bytes,
    deleted: bool,
    /// The message it answers (0: none): its quote changes when that one is deleted.
    reply_to: u64,
}

/// A change in a room's recent history.
#[derive(Debug, Clone)]
struct Change {
    /// The change's own number: a resume from it or before gets the frame (a big room's
    /// gathered reactions: one more than the number their frame names).
    at: u64,
    /// The message it changed.
    target: u64,
    /// The `update` frame every member got.
    frame: Bytes,
}

/// Changes the tail keeps at most, past the messages it keeps: a burst of edits must not
/// hold memory without bound; the oldest go, and the engine answers for them.
const MIN_CHANGES_KEPT: usize = 64;

/// A join waiting for older history.
struct Joining {
    id: u64,
    /// Frames delivered since its snapshot of the tail.
    frames: Vec<Bytes>,
}

/// Who appended a record here, and what they are owed once it is delivered.
enum Origin {
    Member {
        id: u64,
        outbox: Outbox,
        client_id: Option<Box<str>>,
        /// The sender's user id, for the observer.
        user: Option<Arc<str>>,
    },
    /// The host (the Rust or HTTP API): told the number once the room delivered it, so
    /// that what it reads next (history, say) has it, and what a reaction came to.
    Host(Option<oneshot::Sender<(u64, Option<Reacted>)>>),
}

/// What a joining member's `joined` tells it of its own: its reactions on the replayed
/// messages, and its read state.
struct Yours {
    mine: Mine,
    read: Option<protocol::ReadRef>,
}

/// The room was dropped while a join waited: join it again, as the hub has it now.
pub(crate) struct Removed;

/// A message the engine could not take yet (it was [`Busy`]): wait, then
/// [`Retry::append`] it again, before the sender's next frame.
pub(crate) struct Retry {
    room: Arc<Room>,
    origin: Origin,
    record: Record,
}

impl Retry {
    /// Waits until the engine takes records again, and hands it this one (again, while it
    /// is still busy).
    pub(crate) async fn append(self: Box<Self>) {
        let Retry {
            room,
            mut origin,
            mut record,
        } = *self;
        loop {
            room.engine.ready().await;
            match room.append(origin, record) {
                Ok((token, appending)) => return room.follow(token, appending),
                Err(busy) => (origin, Busy(record)) = *busy,
            }
        }
    }
}

/// What every room of a hub shares.
pub(crate) struct Common {
    /// The hub's count of history bytes.
    pub history_held: Arc<AtomicUsize>,
    pub engine: Arc<dyn Broker>,
    pub metrics: Arc<Metrics>,
    /// Where mentions go.
    pub readers: Arc<Readers>,
}

impl Room {
    pub(crate) fn new(
        name: Arc<str>,
        limits: RoomLimits,
        common: Common,
        policy: Policy,
        observer: Option<Observer>,
    ) -> Room {
        let Common {
            history_held,
            engine,
            metrics,
            readers,
        } = common;
        Room {
            name,
            limits,
            history_held,
            node: engine.node(),
            engine,
            metrics,
            readers,
            loaded: Notify::new(),
            followers: Mutex::new(None),
            submitted: Mutex::new(Submitted::default()),
            reacted: AtomicBool::new(false),
            state: Mutex::new(RoomState {
                phase: Phase::Loading(Vec::new()),
                epoch: 0,
                delivered: 0,
                history: VecDeque::new(),
                changes: VecDeque::new(),
                covered: 1,
                roster: Roster::new(policy),
                acks_after: Vec::new(),
                joining: Vec::new(),
                typing: Vec::new(),
                reactions_due: Vec::new(),
                receipts_due: Vec::new(),
                last_active: Instant::now(),
                removed: false,
                observer,
            }),
        }
    }

    /// The room's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The engine has read the room (or could not): what it handed the room meanwhile is
    /// applied, and the joins waiting for it go on.
    pub(crate) fn loaded(&self, result: Result<Loaded, StorageError>) {
        let mut guard = self.state.lock().unwrap();
        let state = &mut *guard;
        let waiting = match std::mem::replace(&mut state.phase, Phase::Ready) {
            Phase::Loading(waiting) => waiting,
            _ => Vec::new(),
        };
        match result {
            Ok(loaded) => {
                state.epoch = loaded.epoch;
                state.delivered = loaded.seq;
                // The messages are in their current state; the changes that made it are
                // the engine's to replay, but for those it listed.
                state.covered = loaded.seq + 1;
                if let Some((from, mut changed)) = loaded.changes {
                    state.covered = from;
                    changed.sort_unstable_by_key(|(at, _)| *at);
                    for (at, message) in changed {
                        let frame = update_frame(&self.name, &message, at);
                        self.history_held.fetch_add(frame.len(), Ordering::Relaxed);
                        let target = message.seq;
                        state.changes.push_back(Change { at, target, frame });
                    }
                }
                for message in loaded.tail.iter().filter(|m| !m.deleted) {
                    if !message.reactions.is_empty() {
                        self.reacted.store(true, Ordering::Relaxed);
                    }
                    let frame = message_frame(&self.name, message);
                    self.history_held.fetch_add(frame.len(), Ordering::Relaxed);
                    state.history.push_back(Stored {
                        seq: message.seq,
                        time: message.time,
                        frame,
                        deleted: false,
                        reply_to: message.reply.as_ref().map_or(0, |q| q.seq),
                    });
                }
                for member in loaded.members {
                    state.roster.add_elsewhere(member.into());
                }
                self.apply(state, waiting);
            }
            Err(e) => {
                tracing::error!(room = %self.name, error = %e, "could not load a room");
                state.phase = Phase::Failed;
                state.removed = true;
            }
        }
        drop(guard);
        self.loaded.notify_waiters();
    }

    /// Waits until the engine has taken the room up: false when it could not.
    pub(crate) async fn ready(&self) -> bool {
        loop {
            let notified = self.loaded.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.state.lock().unwrap().phase {
                Phase::Ready => return true,
                Phase::Failed => return false,
                Phase::Loading(_) => {}
            }
            notified.await;
        }
    }

    /// Publishes a message from `sender` (a member): once the engine numbered it, it is
    /// delivered to every member, and the sender's acknowledgement is queued behind its own
    /// copy. A retry of an `id` the same sender used before is only acknowledged again,
    /// with the original sequence number. `Err` when the engine is busy: the sender waits
    /// with [`Retry::append`] before its next frame, so that its messages keep their order.
    pub(crate) fn publish(
        self: &Arc<Self>,
        sender: &Member,
        text: &str,
        id: Option<&str>,
        reply: Option<Quote>,
        mentions: Box<[Arc<str>]>,
    ) -> Result<(), Box<Retry>> {
        let mut record = Record::new(now_ms(), sender.name.clone(), text);
        record.reply = reply.map(Box::new);
        record.mentions = mentions;
        self.submit(sender, record, id)
    }

    /// Publishes a change of `kind` to message `target` from `sender` (a member), checked
    /// before (see [`Room::target`]): delivered and acknowledged as a message is.
    pub(crate) fn change(
        self: &Arc<Self>,
        sender: &Member,
        kind: RecordKind,
        target: u64,
        text: &str,
        id: Option<&str>,
    ) -> Result<(), Box<Retry>> {
        let record = Record::change(kind, target, now_ms(), sender.name.clone(), text);
        self.submit(sender, record, id)
    }

    /// Hands a member's record to the engine, as [`Room::publish`] says.
    fn submit(
        self: &Arc<Self>,
        sender: &Member,
        mut record: Record,
        id: Option<&str>,
    ) -> Result<(), Box<Retry>> {
        let origin = Origin::Member {
            id: sender.id,
            outbox: sender.outbox.clone(),
            client_id: id.map(Into::into),
            user: sender.user.clone(),
        };
        record.sender = Some(sender.sender.public().into());
        record.dedupe = id.map(|id| sender.sender.dedupe_key(id));
        match self.append(origin, record) {
            Ok((token, appending)) => {
                self.follow(token, appending);
                Ok(())
            }
            Err(busy) => {
                let (origin, Busy(record)) = *busy;
                Err(Box::new(Retry {
                    room: self.clone(),
                    origin,
                    record,
                }))
            }
        }
    }

    /// Publishes `record` (a message, or a change) on behalf of the host: resolves with its
    /// number once the engine stored it.
    pub(crate) async fn publish_as(&self, record: Record) -> Result<u64, StorageError> {
        Ok(self.append_as(record).await?.0)
    }

    /// Publishes `record` on behalf of the host: resolves with its number, and what a
    /// reaction came to, once the room delivered it.
    pub(crate) async fn append_as(
        &self,
        record: Record,
    ) -> Result<(u64, Option<Reacted>), StorageError> {
        let mut record = record;
        loop {
            let (told, delivered) = oneshot::channel();
            match self.append(Origin::Host(Some(told)), record) {
                Ok((token, appending)) => {
                    let appended = appending.await;
                    if appended.is_err() {
                        self.submitted.lock().unwrap().origins.remove(&token);
                    }
                    let seq = match appended? {
                        Appended::Stored(p) | Appended::Duplicate(p) => p.seq,
                    };
                    // Delivered here (or the room is gone, which drops what it owed).
                    return Ok(delivered.await.unwrap_or((seq, None)));
                }
                Err(busy) => {
                    record = busy.1.0;
                    self.engine.ready().await;
                }
            }
        }
    }

    /// Hands `record` to the engine under a fresh token, remembering `origin` for when it
    /// comes back; both are given back when the engine is busy.
    #[allow(clippy::type_complexity)]
    fn append(
        &self,
        origin: Origin,
        mut record: Record,
    ) -> Result<(u64, EngineFuture<'static, Appended>), Box<(Origin, Busy)>> {
        let token = {
            let mut submitted = self.submitted.lock().unwrap();
            submitted.last_token += 1;
            let token = submitted.last_token;
            submitted.origins.insert(token, origin);
            token
        };
        record.token = token;
        self.metrics.published();
        // Not under the room's lock: the engine may hand the record back at once.
        match self.engine.append(&self.name, record) {
            Ok(appending) => Ok((token, appending)),
            Err(busy) => {
                let origin = self.submitted.lock().unwrap().origins.remove(&token);
                Err(Box::new((origin.unwrap_or(Origin::Host(None)), busy)))
            }
        }
    }

    /// Awaits what the engine says of the record appended as `token` (at once when it has
    /// said it already): a duplicate is acknowledged, a failure told to its sender. The
    /// room's outcomes still to come are awaited in their order by one task of the room's
    /// (a task per message would be thousands of wake-ups in a burst, competing with the
    /// deliveries for the runtime's threads).
    fn follow(self: &Arc<Self>, token: u64, appending: EngineFuture<'static, Appended>) {
        let mut appending = appending;
        if let Some(outcome) = (&mut appending).now_or_never() {
            return self.appended(token, outcome);
        }
        let mut followers = self.followers.lock().unwrap();
        let pending = match followers.as_ref() {
            Some(sender) => sender.send((token, appending)),
            None => Err(mpsc::error::SendError((token, appending))),
        };
        let Err(mpsc::error::SendError(pending)) = pending else {
            return;
        };
        let (sender, mut outcomes) = mpsc::unbounded_channel();
        let _ = sender.send(pending);
        *followers = Some(sender);
        // Weak: the room owns the channel's sender, and the task ends with the room.
        let room = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some((token, appending)) = outcomes.recv().await {
                let outcome = appending.await;
                match room.upgrade() {
                    Some(room) => room.appended(token, outcome),
                    None => return,
                }
            }
        });
    }

    /// The engine's outcome for the record appended as `token`. Stored: it reaches this
    /// room through [`RoomSink::receive`], where its sender is acknowledged.
    fn appended(&self, token: u64, outcome: Result<Appended, StorageError>) {
        let stored = matches!(outcome, Ok(Appended::Stored(_)));
        if stored {
            return;
        }
        let origin = self.submitted.lock().unwrap().origins.remove(&token);
        let Some(Origin::Member {
            outbox, client_id, ..
        }) = origin
        else {
            return;
        };
        let mut state = self.state.lock().unwrap();
        match outcome {
            Ok(Appended::Duplicate(position)) => {
                let ack = ack(&self.name, client_id.as_deref(), position.seq, None);
                if position.seq <= state.delivered {
                    outbox.push(ack);
                } else {
                    state.acks_after.push((position.seq, outbox, ack));
                }
            }
            Err(_) => {
                outbox.push(protocol::error_frame(
                    ErrorCode::StorageFailed,
                    "the message could not be stored; it was not delivered. Retry later",
                    Some(&self.name),
                    client_id.as_deref(),
                ));
            }
            Ok(_) => {}
        }
    }

    /// Adds `member` to the room. Its queue receives, in this order and before anything else
    /// from the room: `joined`, then the history it missed (all of the recent history
    /// without `resume.since`): the older messages that changed since, once each in their
    /// current state, then the messages after it. The other members get a presence event.
    /// Records older than the tail are read from the engine with the room's lock released;
    /// what is delivered meanwhile is kept for the member, behind them.
    pub(crate) async fn join(&self, member: Member, resume: Resume) -> Result<(), Removed> {
        // Its user's read state (a first join makes its mark at the newest message): read
        // before, counted up to the head it names; what comes after is the client's to add.
        let reader = member.sender.public();
        let read = match self.engine.mark_read(&self.name, reader, None).await {
            Ok((state, _)) => Some(super::read_ref(&state)),
            Err(e) => {
                tracing::error!(room = %self.name, error = %e, "could not read a read mark");
                None
            }
        };
        // The member's own reactions on the tail's messages (read before: a reaction it
        // makes meanwhile comes in its ack).
        let mine = match self.reacted.load(Ordering::Relaxed) {
            true => {
                let first = self
                    .state
                    .lock()
                    .unwrap()
                    .history
                    .front()
                    .map_or(0, |s| s.seq);
                self.mine(member.sender.public(), first).await
            }
            false => Mine::new(),
        };
        let yours = Yours { mine, read };
        let (plan, snapshot) = {
            let mut state = self.state.lock().unwrap();
            if state.removed {
                return Err(Removed);
            }
            let plan = state.plan(&self.limits, resume);
            let updated_below = if plan.updates { plan.from } else { 0 };
            if plan.read.is_none() {
                let (frames, _) = state.tail_from(plan.from, updated_below);
                state.admit(&self.name, &self.engine, member, plan.gap, frames, &yours);
                return Ok(());
            }
            state.joining.push(Joining {
                id: member.id,
                frames: Vec::new(),
            });
            // The changes to the messages the engine brings are in their state as it reads
            // them; the tail's updates are of the older ones, and the engine does not send
            // those again.
            let snapshot = state.tail_from(plan.oldest, updated_below);
            (plan, snapshot)
        };
        let (snapshot, updated) = snapshot;
        let (to, limit) = plan.read.unwrap_or_default();
        // Given up (the session went away): the room stops keeping frames for it.
        let waiting = Waiting {
            room: self,
            id: member.id,
        };
        let older = self.engine.range(&self.name, plan.from, to, limit).await;
        std::mem::forget(waiting);
        let mut state = self.state.lock().unwrap();
        let at = state.joining.iter().position(|j| j.id == member.id);
        let meanwhile = at.map_or_else(Vec::new, |at| state.joining.swap_remove(at).frames);
        if state.removed {
            return Err(Removed);
        }
        let cutoff = now_ms().saturating_sub(self.limits.retention_age_ms);
        let (older_gap, older) = match older {
            Ok(Missed {
                messages,
                changed,
                complete,
                ..
            }) => {
                let kept = messages.iter().filter(|m| m.time >= cutoff);
                let too_old = messages.len() > kept.clone().count();
                let updates = changed
                    .iter()
                    .filter(|m| !updated.contains(&m.seq))
                    .map(|m| update_frame(&self.name, m, to - 1));
                let frames = updates
                    .chain(kept.map(|m| message_frame(&self.name, m)))
                    .collect();
                (!complete || too_old, frames)
            }
            Err(e) => {
                tracing::error!(room = %self.name, error = %e, "could not read older history");
                (true, Vec::new())
            }
        };
        let frames: Vec<Bytes> = [older, snapshot, meanwhile].concat();
        state.admit(
            &self.name,
            &self.engine,
            member,
            plan.gap || older_gap,
            frames,
            &yours,
        );
        Ok(())
    }

    /// The reactions member `sender` made to the room's messages numbered `from` or later,
    /// by message (none when the engine could not say: they are a convenience).
    pub(crate) async fn mine(&self, sender: &str, from: u64) -> Mine {
        let mut mine = Mine::new();
        match self.engine.reacted_by(&self.name, sender, from).await {
            Ok(own) => {
                for (seq, reaction) in own {
                    mine.entry(seq).or_default().push(reaction);
                }
            }
            Err(e) => tracing::warn!(room = %self.name, error = %e, "could not read reactions"),
        }
        mine
    }

    /// Who reacted to message `seq`: a page after `after`.
    pub(crate) async fn reactors(
        &self,
        seq: u64,
        after: u64,
        limit: usize,
    ) -> Result<ReactorsPage, StorageError> {
        self.engine.reactors(&self.name, seq, after, limit).await
    }

    /// Message `seq` in its current state (a deleted one as deleted), as an edit, a
    /// deletion or a reply checks it: from the tail, else from the engine (read without the
    /// room's lock). None when the room has no such message.
    pub(crate) async fn target(&self, seq: u64) -> Result<Option<StoredMessage>, StorageError> {
        {
            let state = self.state.lock().unwrap();
            if seq == 0 || seq > state.delivered {
                return Ok(None);
            }
            if let Some(stored) = state.stored(seq) {
                if stored.deleted {
                    let mut gone = StoredMessage::new(seq, stored.time, "".into(), None, "".into());
                    gone.deleted = true;
                    return Ok(Some(gone));
                }
                if let Some(message) = decode(&stored.frame) {
                    return Ok(Some(message));
                }
            }
        }
        self.engine.message(&self.name, seq).await
    }

    /// Relays a typing notice to the other members (here and on other nodes); may be
    /// dropped for busy ones, and is thinned in a big room.
    pub(crate) fn typing(&self, sender: &Member) {
        self.engine.typing(&self.name, sender.id, &sender.name);
        self.state
            .lock()
            .unwrap()
            .typing(&self.name, sender.id, &sender.name);
    }

    /// Removes the member with id `member_id`; the others get a presence event.
    /// Returns false when it was not a member (already left, or dropped as too slow).
    pub(crate) fn leave(&self, member_id: u64) -> bool {
        let mut state = self.state.lock().unwrap();
        state.last_active = Instant::now();
        state.remove(&self.name, &self.engine, vec![member_id])
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
            state.remove(&self.name, &self.engine, removed);
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
    pub(crate) fn members_page(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> (Vec<MemberSummary>, usize, Option<u64>) {
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

    /// Up to `limit` delivered messages below `before`, oldest first: from the tail, and
    /// from the engine for what is older (read with the room's lock released).
    pub(crate) async fn page(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage, StorageError> {
        let (mut recent, below) = {
            let state = self.state.lock().unwrap();
            // Nothing a member has not been sent yet.
            let before = before.unwrap_or(u64::MAX).min(state.delivered + 1);
            let cutoff = now_ms().saturating_sub(self.limits.retention_age_ms);
            let recent: Vec<Bytes> = state
                .history
                .iter()
                .filter(|s| s.seq < before && s.time >= cutoff && !s.deleted)
                .map(|s| s.frame.clone())
                .collect();
            let below = state
                .history
                .iter()
                .find(|s| s.seq < before && s.time >= cutoff)
                .map_or(before, |s| s.seq);
            (recent, below)
        };
        if recent.len() > limit {
            let from = recent.len() - limit;
            let messages = recent.split_off(from);
            return Ok(HistoryPage::new(decode_all(&messages), true));
        }
        let older = self
            .engine
            .page(&self.name, below, limit - recent.len())
            .await?;
        let mut messages = older.messages;
        messages.extend(decode_all(&recent));
        Ok(HistoryPage::new(messages, older.more))
    }

    /// Sends a big room's due presence update and its typing notices (once per presence
    /// interval).
    pub(crate) fn tick(&self) {
        let mut state = self.state.lock().unwrap();
        state.send_update(&self.name, &self.engine);
        self.send_reactions(&mut state);
        state.send_receipts(&self.name, &self.engine);
        for (id, name) in std::mem::take(&mut state.typing) {
            state.relay_typing(&self.name, id, &name);
        }
    }

    /// Who `mentions` (public sender ids) are, as far as the room lists them.
    pub(crate) fn mentioned(&self, mentions: &[Arc<str>]) -> Vec<Mentioned> {
        if mentions.is_empty() {
            return Vec::new();
        }
        self.state.lock().unwrap().mentioned(mentions)
    }

    /// `reader` (a public sender id) read up to `seq`: in a small room of which it is a
    /// member, the members are told at the next tick; a big room tells no one.
    pub(crate) fn receipt(&self, reader: &str, seq: u64) {
        let mut state = self.state.lock().unwrap();
        if state.roster.is_big() {
            return;
        }
        if let Some(due) = state.receipts_due.iter_mut().find(|(r, ..)| &**r == reader) {
            due.2 = due.2.max(seq);
            return;
        }
        let (members, _) = state.roster.page(None, usize::MAX);
        let Some(name) = members
            .iter()
            .find(|m| m.sender == Some(reader))
            .map(|m| m.name.clone())
        else {
            return;
        };
        drop(members);
        state.receipts_due.push((reader.into(), name, seq));
    }

    /// Sets the room's presence policy.
    pub(crate) fn set_policy(&self, policy: Policy) {
        let mut state = self.state.lock().unwrap();
        if let Told::Everyone = state.roster.set_policy(policy) {
            state.send_list(&self.name, &self.engine);
        }
    }

    /// When the room was last active, if the hub may let go of it: no member is connected
    /// here, nothing is in flight, nobody is joining (or it was lost).
    pub(crate) fn releasable(&self) -> Option<Instant> {
        let state = self.state.lock().unwrap();
        let quiet = state.roster.none_here()
            && self.submitted.lock().unwrap().origins.is_empty()
            && state.joining.is_empty()
            && !matches!(state.phase, Phase::Loading(_));
        (quiet || state.removed).then_some(state.last_active)
    }

    /// Marks the room dropped by the hub (a join that raced with it looks again) and
    /// gives its tail's memory back.
    pub(crate) fn remove(&self) {
        let mut state = self.state.lock().unwrap();
        state.removed = true;
        let history = std::mem::take(&mut state.history)
            .into_iter()
            .map(|s| s.frame);
        let changes = std::mem::take(&mut state.changes)
            .into_iter()
            .map(|c| c.frame);
        let freed: usize = history.chain(changes).map(|frame| frame.len()).sum();
        self.history_held.fetch_sub(freed, Ordering::Relaxed);
    }

    /// Whether the hub dropped the room (or it was lost).
    pub(crate) fn removed(&self) -> bool {
        self.state.lock().unwrap().removed
    }

    /// When a member last came, went or spoke.
    pub(crate) fn last_active(&self) -> Instant {
        self.state.lock().unwrap().last_active
    }

    /// Drops the tail's oldest messages while the hub holds more than `target` bytes of
    /// history; whether that brought it down to `target`.
    pub(crate) fn shed_history(&self, target: usize) -> bool {
        let held = &self.history_held;
        let mut state = self.state.lock().unwrap();
        while held.load(Ordering::Relaxed) > target {
            // The older of the oldest message and the oldest change goes first.
            let change_first = match (state.changes.front(), state.history.front()) {
                (Some(change), Some(message)) => change.at < message.seq,
                (change, _) => change.is_some(),
            };
            let freed = if change_first {
                let old = state.changes.pop_front().expect("looked at");
                state.covered = state.covered.max(old.at + 1);
                old.frame.len()
            } else {
                match state.history.pop_front() {
                    Some(old) => old.frame.len(),
                    None => return false,
                }
            };
            held.fetch_sub(freed, Ordering::Relaxed);
        }
        true
    }

    /// Members connected here, for the scrape.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn members_here_count(&self) -> usize {
        self.state.lock().unwrap().roster.iter().len()
    }

    /// Applies what the engine handed the room, in order: runs of records that follow each
    /// other go out together (one push per member).
    fn apply(&self, state: &mut RoomState, events: Vec<RoomEvent>) {
        let mut run: Vec<Numbered> = Vec::new();
        for event in events {
            let event = match event {
                RoomEvent::Record(record) => {
                    if record.seq > run.last().map_or(state.delivered, |r| r.seq) {
                        run.push(record);
                    }
                    continue;
                }
                other => other,
            };
            if !run.is_empty() {
                self.deliver(state, std::mem::take(&mut run));
            }
            match event {
                RoomEvent::Record(_) => {}
                RoomEvent::Joined(members) => self.add_elsewhere(state, members),
                RoomEvent::Left(ids) => {
                    state.remove(&self.name, &self.engine, ids);
                }
                RoomEvent::Members(members) => {
                    // Those listed elsewhere that the engine no longer has left; those it
                    // has that are not listed here joined.
                    let listed: std::collections::HashSet<u64> =
                        members.iter().map(|m| m.id).collect();
                    let gone: Vec<u64> = state
                        .roster
                        .ids_elsewhere()
                        .into_iter()
                        .filter(|id| !listed.contains(id))
                        .collect();
                    state.remove(&self.name, &self.engine, gone);
                    self.add_elsewhere(state, members);
                }
                RoomEvent::Typing { member, name } => {
                    state.typing(&self.name, member, &Arc::from(name));
                }
                RoomEvent::Lost => {
                    tracing::warn!(room = %self.name, "the engine lost this room's history; its members reconnect");
                    // The hub drops it: joins take up the new room.
                    state.removed = true;
                    for member in state.roster.iter() {
                        member.outbox.close(CloseCode::Reconnect);
                    }
                }
            }
        }
        if !run.is_empty() {
            self.deliver(state, run);
        }
    }

    /// Lists members connected to other nodes (those not listed yet), and tells the
    /// members here as a join here is told.
    fn add_elsewhere(&self, state: &mut RoomState, members: Vec<MemberInfo>) {
        for member in members {
            let member = MemberSummary::from(member);
            let (id, name, sender) = (member.id, member.name.clone(), member.sender.clone());
            if let Some(Told::Now) = state.roster.add_elsewhere(member) {
                let presence = protocol::encode(&ServerFrame::Presence {
                    room: &self.name,
                    event: PresenceEvent::Join,
                    member: MemberRef {
                        id,
                        name: &name,
                        sender: sender.as_deref(),
                    },
                    count: state.roster.len(),
                });
                state.broadcast(&self.name, &self.engine, &presence, None);
            }
        }
    }

    /// Delivers numbered records, in order, each the next: into the tail, to every member,
    /// and each acknowledgement to its sender here. A member's share of the batch goes in
    /// with one push (one lock, one wake-up, one write for a commit's worth of messages); a
    /// sender's share has its own copies, each followed by its ack.
    fn deliver(&self, state: &mut RoomState, records: Vec<Numbered>) {
        let Some(last) = records.last() else {
            return;
        };
        state.delivered = last.seq;
        state.last_active = Instant::now();
        // Who is owed what, taken under `submitted`'s lock only as long as that takes.
        let origins: Vec<Option<Origin>> = {
            let mut submitted = self.submitted.lock().unwrap();
            let mut owed = |n: &Numbered| submitted.origins.remove(&n.record.token);
            let here = |n: &&Numbered| n.node == self.node;
            records
                .iter()
                .map(|n| Some(n).filter(here).and_then(&mut owed))
                .collect()
        };
        let big = state.roster.is_big();
        let batch: Vec<Delivery> = records
            .into_iter()
            .zip(origins)
            .map(|(numbered, origin)| Delivery::new(&self.name, numbered, origin, big))
            .collect();
        let frames: Vec<Bytes> = batch.iter().filter_map(Delivery::shared).collect();
        let mut senders: Vec<u64> = batch.iter().filter_map(Delivery::sender).collect();
        senders.sort_unstable();
        senders.dedup();
        let mut slow: Vec<u64> = Vec::new();
        // A batch that only its senders hear of (reactions refused, that changed nothing, or
        // gathered for the next tick in a big room) costs no pass over the members: a
        // sender counts as in the room (one that left is no one to remove).
        let mut in_room = vec![frames.is_empty(); senders.len()];
        if !frames.is_empty() {
            let shared = Shared::new(&frames);
            for member in state.roster.iter() {
                match senders.binary_search(&member.id) {
                    Ok(i) => in_room[i] = true,
                    Err(_) if !member.outbox.push_shared(&shared) => slow.push(member.id),
                    Err(_) => {}
                }
            }
        }
        for (&sender, in_room) in senders.iter().zip(in_room) {
            // A sender that left the room meanwhile still gets its own messages and acks.
            let mut outbox = None;
            let mut share = Vec::with_capacity(frames.len() + 2);
            for delivery in &batch {
                match &delivery.origin {
                    Some(Origin::Member {
                        id, outbox: own, ..
                    }) if *id == sender => {
                        share.extend(delivery.own.clone().or_else(|| delivery.shared()));
                        share.extend(Some(delivery.ack.clone()).filter(|a| !a.is_empty()));
                        outbox = Some(own);
                    }
                    _ if in_room => share.extend(delivery.shared()),
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
        for joining in &mut state.joining {
            joining.frames.extend(frames.iter().cloned());
        }
        for mut delivery in batch {
            if let Some(Origin::Host(told)) = &mut delivery.origin
                && let Some(told) = told.take()
            {
                let _ = told.send((delivery.seq, delivery.reacted.clone()));
            }
            // Told by the node where it was published: each node tells its own.
            if let (Some(observer), Some(origin)) = (&state.observer, &delivery.origin)
                && !delivery.frame.is_empty()
            {
                let user = match origin {
                    Origin::Member { user, .. } => user.clone(),
                    Origin::Host(_) => None,
                };
                let frame = delivery.frame.clone();
                let mentions = state.mentioned(&delivery.mentions);
                observer.tell(Happened::Message {
                    frame,
                    user,
                    mentions,
                });
            }
            // Told by the node where it was appended, to every node.
            if delivery.origin.is_some() && !delivery.mentions.is_empty() {
                let frame = protocol::encode(&ServerFrame::Mention {
                    room: &self.name,
                    seq: delivery.seq,
                    from: &delivery.from,
                    sender: delivery.sender_id.as_deref(),
                    text: quoted(&delivery.text),
                });
                self.readers.tell(&delivery.mentions, frame);
            }
            if delivery.kind != RecordKind::Message {
                self.apply_change(state, delivery);
                continue;
            }
            if self.limits.history_len > 0 {
                self.history_held
                    .fetch_add(delivery.frame.len(), Ordering::Relaxed);
                state.history.push_back(Stored {
                    seq: delivery.seq,
                    time: delivery.time,
                    frame: delivery.frame,
                    deleted: false,
                    reply_to: delivery.reply_to,
                });
            }
            if state.history.len() > self.limits.history_len
                && let Some(old) = state.history.pop_front()
            {
                self.history_held
                    .fetch_sub(old.frame.len(), Ordering::Relaxed);
            }
        }
        if !state.acks_after.is_empty() {
            let delivered = state.delivered;
            let (due, later) = std::mem::take(&mut state.acks_after)
                .into_iter()
                .partition(|(seq, _, _)| *seq <= delivered);
            state.acks_after = later;
            for (_, outbox, ack) in due {
                outbox.push(ack);
            }
        }
        state.remove(&self.name, &self.engine, slow);
    }
}

impl Room {
    /// A delivered change, applied to the tail: the message it changed takes its new state
    /// (when the tail has it), and its `update` is kept for replays — in a big room, a
    /// reaction's at the next tick.
    fn apply_change(&self, state: &mut RoomState, change: Delivery) {
        if change.kind.is_reaction() && change.counts.is_none() {
            // Refused, or it changed nothing.
            return;
        }
        let held = &self.history_held;
        let at = state
            .history
            .binary_search_by_key(&change.target, |s| s.seq)
            .ok();
        let mut current = None;
        if let Some(stored) = at.and_then(|at| state.history.get_mut(at))
            && !stored.deleted
        {
            let before = stored.frame.len();
            match change.kind {
                RecordKind::Delete => {
                    stored.deleted = true;
                    stored.frame = Bytes::new();
                }
                kind => {
                    if let Some(mut message) = decode(&stored.frame) {
                        match (&change.counts, kind) {
                            (Some(counts), _) => message.reactions.clone_from(counts),
                            (None, _) => {
                                message.text = change.text.to_string();
                                message.edited = Some(change.time);
                            }
                        }
                        stored.frame = message_frame(&self.name, &message);
                        current = Some(message);
                    }
                }
            }
            held.fetch_add(stored.frame.len(), Ordering::Relaxed);
            held.fetch_sub(before, Ordering::Relaxed);
        }
        if change.kind == RecordKind::Delete {
            // The replies to it the tail holds quote it as deleted from now on.
            for reply in state.history.iter_mut() {
                if reply.reply_to != change.target || reply.deleted {
                    continue;
                }
                let Some(mut message) = decode(&reply.frame) else {
                    continue;
                };
                message.reply = message.reply.map(Quote::of_deleted);
                let before = reply.frame.len();
                reply.frame = message_frame(&self.name, &message);
                held.fetch_add(reply.frame.len(), Ordering::Relaxed);
                held.fetch_sub(before, Ordering::Relaxed);
            }
        }
        if let Some(counts) = change.counts {
            self.reacted.store(true, Ordering::Relaxed);
            if change.quiet {
                match state
                    .reactions_due
                    .iter_mut()
                    .find(|d| d.0 == change.target)
                {
                    Some(due) => due.1 = counts,
                    None => state.reactions_due.push((change.target, counts)),
                }
                return;
            }
        }
        // What a replay sends: the message's whole state when the tail has it, else this
        // change over the earlier ones the tail kept.
        let frame = match (current, change.kind) {
            (Some(message), _) => update_frame(&self.name, &message, change.seq),
            // A deletion is all there is to say of the message.
            (None, RecordKind::Delete) => change.frame,
            (None, _) => overlaid(&self.name, &state.changes, change.target, change.frame),
        };
        self.keep_change(state, change.seq, change.target, frame);
    }

    /// Keeps the `update` of a change numbered `at` for replays, in place of the message's
    /// earlier one (it holds all that one did: see [`overlaid`]), so that a burst of
    /// changes to a few messages keeps a few; the oldest go past the bound, and the tail
    /// then answers for less.
    fn keep_change(&self, state: &mut RoomState, at: u64, target: u64, frame: Bytes) {
        let held = &self.history_held;
        if let Some(earlier) = state.changes.iter().rposition(|c| c.target == target)
            && let Some(gone) = state.changes.remove(earlier)
        {
            held.fetch_sub(gone.frame.len(), Ordering::Relaxed);
        }
        held.fetch_add(frame.len(), Ordering::Relaxed);
        state.changes.push_back(Change { at, target, frame });
        while state.changes.len() > self.limits.history_len.max(MIN_CHANGES_KEPT) {
            if let Some(old) = state.changes.pop_front() {
                held.fetch_sub(old.frame.len(), Ordering::Relaxed);
                state.covered = state.covered.max(old.at + 1);
            }
        }
    }

    /// Sends a big room's reaction changes since the last tick: one `update` per message,
    /// with its counts now, numbered as the last record delivered, D (everyone got every
    /// record up to D before it). A client that missed it resumes from D at most, so the
    /// tail keeps it for resumes from D + 1 down: it may come twice, never not at all.
    fn send_reactions(&self, state: &mut RoomState) {
        if state.reactions_due.is_empty() {
            return;
        }
        let at = state.delivered;
        for (target, counts) in std::mem::take(&mut state.reactions_due) {
            let current = state
                .stored(target)
                .filter(|s| !s.deleted)
                .and_then(|s| decode(&s.frame));
            let frame = match current {
                Some(message) => update_frame(&self.name, &message, at),
                None => {
                    let light = reactions_frame(&self.name, target, at, &counts);
                    overlaid(&self.name, &state.changes, target, light)
                }
            };
            for joining in &mut state.joining {
                joining.frames.push(frame.clone());
            }
            state.broadcast(&self.name, &self.engine, &frame, None);
            self.keep_change(state, at + 1, target, frame);
        }
    }
}

#[cfg(test)]
impl Room {
    /// The room's epoch, as the engine gave it.
    pub(crate) fn epoch(&self) -> u64 {
        self.state.lock().unwrap().epoch
    }

    /// Messages in the tail.
    pub(crate) fn tail_len(&self) -> usize {
        self.state.lock().unwrap().history.len()
    }

    /// Bytes of the tail's frames.
    pub(crate) fn tail_bytes(&self) -> usize {
        let state = self.state.lock().unwrap();
        state.history.iter().map(|s| s.frame.len()).sum()
    }
}

impl RoomSink for Room {
    fn receive(&self, events: Vec<RoomEvent>) {
        let mut state = self.state.lock().unwrap();
        if let Phase::Loading(waiting) = &mut state.phase {
            waiting.extend(events);
            return;
        }
        self.apply(&mut state, events);
    }

    fn members_here(&self) -> Vec<MemberInfo> {
        let state = self.state.lock().unwrap();
        state.roster.iter().map(|m| m.summary().into()).collect()
    }
}

/// A join reading older history, given up when its future is dropped.
struct Waiting<'a> {
    room: &'a Room,
    id: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut state = self.room.state.lock().unwrap();
        state.joining.retain(|j| j.id != self.id);
    }
}

/// A record on its way to the members: its frames, and who appended it here.
struct Delivery {
    seq: u64,
    time: u64,
    /// A message, or which change, to which message.
    kind: RecordKind,
    target: u64,
    /// A message's text, an edit's new text.
    text: Arc<str>,
    /// Who appended it, by name and public sender id.
    from: Arc<str>,
    sender_id: Option<Arc<str>>,
    /// The public sender ids a message mentions.
    mentions: Box<[Arc<str>]>,
    /// The message a message answers (0: none).
    reply_to: u64,
    /// The frame every member gets: a message's `message` (history's too), a change's
    /// `update`; empty for a reaction that was refused or changed nothing.
    frame: Bytes,
    /// A reaction's counts now, when it changed them.
    counts: Option<Vec<ReactionCount>>,
    /// What a reaction came to, for the host that made it.
    reacted: Option<Reacted>,
    /// A reaction in a big room: its `update` waits for the next tick.
    quiet: bool,
    /// The sender's own copy, naming its client id, and its ack (for a member's record):
    /// of a reaction, the ack names the sender's own; of a refused one, it is the error.
    own: Option<Bytes>,
    ack: Bytes,
    origin: Option<Origin>,
}

impl Delivery {
    fn new(room: &str, numbered: Numbered, origin: Option<Origin>, big: bool) -> Delivery {
        let Numbered {
            seq,
            record,
            reacted,
            ..
        } = numbered;
        let mentions: Vec<&str> = record.mentions.iter().map(|m| &**m).collect();
        let message = |id| {
            protocol::encode(&ServerFrame::Message {
                room,
                seq,
                from: &record.from,
                sender: record.sender.as_deref(),
                reply_to: record.reply.as_deref().map(quote_ref),
                text: &record.text,
                time: record.time,
                edited: None,
                reactions: &[],
                mentions: &mentions,
                id,
            })
        };
        let edit = record.kind == RecordKind::Edit;
        let counts = match &reacted {
            Some(Reacted::Counts {
                counts,
                changed: true,
                ..
            }) => Some(counts.clone()),
            _ => None,
        };
        // Everyone's copy, history's too, without the client's id: only its sender knows it.
        let frame = match record.kind {
            RecordKind::Message => message(None),
            RecordKind::Edit | RecordKind::Delete => protocol::encode(&ServerFrame::Update {
                room,
                seq: record.target,
                at: seq,
                text: edit.then_some(&*record.text),
                edited: edit.then_some(record.time),
                deleted: record.kind == RecordKind::Delete,
                reactions: None,
            }),
            _ => match &counts {
                Some(counts) => reactions_frame(room, record.target, seq, counts),
                None => Bytes::new(),
            },
        };
        let (own, ack) = match &origin {
            Some(Origin::Member { client_id, .. }) => {
                let id = client_id.as_deref();
                let own = id
                    .filter(|_| record.is_message())
                    .map(|id| message(Some(id)));
                let refused = |code, message| protocol::error_frame(code, message, Some(room), id);
                let ack = match &reacted {
                    _ if !record.kind.is_reaction() => ack(room, id, seq, None),
                    Some(Reacted::Counts { mine, .. }) => ack(room, id, seq, Some(mine)),
                    Some(Reacted::TooMany) => refused(
                        ErrorCode::TooManyReactions,
                        "the message has as many reactions as allowed, or you as many on it",
                    ),
                    Some(Reacted::Gone { deleted: true }) => {
                        refused(ErrorCode::MessageDeleted, "that message was deleted")
                    }
                    Some(Reacted::Gone { .. }) => {
                        refused(ErrorCode::UnknownMessage, "this room has no such message")
                    }
                    None => refused(
                        ErrorCode::StorageFailed,
                        "this server's engine keeps no reactions",
                    ),
                };
                (own, ack)
            }
            _ => (None, Bytes::new()),
        };
        Delivery {
            seq,
            time: record.time,
            kind: record.kind,
            target: record.target,
            reply_to: record.reply.as_ref().map_or(0, |q| q.seq),
            text: record.text,
            from: record.from,
            sender_id: record.sender,
            mentions: record.mentions,
            quiet: big && counts.is_some(),
            frame,
            counts,
            reacted,
            own,
            ack,
            origin,
        }
    }

    /// The member here that sent it.
    fn sender(&self) -> Option<u64> {
        match self.origin {
            Some(Origin::Member { id, .. }) => Some(id),
            _ => None,
        }
    }

    /// The frame every member gets now, if any.
    fn shared(&self) -> Option<Bytes> {
        (!self.frame.is_empty() && !self.quiet).then(|| self.frame.clone())
    }
}

/// What a join replays: the records from `from` on (with `updates`, the changes to older
/// messages among them too); those below `oldest` read from the engine.
struct Plan {
    gap: bool,
    from: u64,
    oldest: u64,
    updates: bool,
    /// When the engine must be read: up to which number (exclusive), and how many
    /// messages at most.
    read: Option<(u64, usize)>,
}

impl RoomState {
    /// What a join replays, and whether the client missed messages it will not get.
    ///
    /// Without `since`: the recent history. With it: every message after it, at most
    /// `max_replay` (beyond that, the newest `max_replay` and a gap: a client pages back
    /// for more), and the changes to the messages it has. Only messages count: a burst of
    /// edits never pushes messages out of a resume. Records older than the tail come from
    /// the engine.
    fn plan(&self, limits: &RoomLimits, resume: Resume) -> Plan {
        let head = self.delivered;
        let cutoff = now_ms().saturating_sub(limits.retention_age_ms);
        let first = self
            .history
            .iter()
            .find(|s| s.time >= cutoff)
            .map_or(head + 1, |s| s.seq);
        // The tail's messages are in their current state from `first` on; the changes it
        // knows from `covered` on: a resume from before that reads the engine.
        let oldest = first.max(self.covered).min(head + 1);
        let recent = |from| Plan {
            gap: false,
            from,
            oldest,
            updates: false,
            read: None,
        };
        let since = match resume.since {
            None => return recent(first),
            // Numbers of another room of that name: all of them were missed, unless the
            // client had seen none.
            Some(since) if resume.epoch.is_some_and(|e| e != self.epoch) => {
                return Plan {
                    gap: since > 0,
                    ..recent(first)
                };
            }
            Some(since) => since.min(head),
        };
        let max = limits.max_replay;
        if max == 0 {
            return Plan {
                gap: since < head,
                ..recent(head + 1)
            };
        }
        // The tail's messages after `since`, newest first: the replay's newest part.
        let mut newer = self
            .history
            .iter()
            .rev()
            .take_while(|s| s.seq > since && s.seq >= oldest)
            .filter(|s| !s.deleted);
        if let Some(last) = newer.nth(max - 1)
            && newer.next().is_some()
        {
            // More than `max_replay` in the tail alone: its newest ones, and a gap.
            return Plan {
                gap: true,
                from: last.seq,
                oldest,
                updates: true,
                read: None,
            };
        }
        let in_tail = self
            .history
            .iter()
            .filter(|s| s.seq > since && s.seq >= oldest && !s.deleted)
            .count();
        Plan {
            gap: false,
            from: since + 1,
            oldest,
            updates: true,
            read: (since + 1 < oldest).then_some((oldest, max - in_tail)),
        }
    }

    /// The tail's replay from `from` on: first the changes made since to the messages below
    /// `updated_below` (0: none), one `update` per message (its last: the current state);
    /// then the messages, in their current state. And the messages those updates are of.
    fn tail_from(&self, from: u64, updated_below: u64) -> (Vec<Bytes>, HashSet<u64>) {
        let mut seen = HashSet::new();
        let mut last: Vec<&Change> = self
            .changes
            .iter()
            .rev()
            .take_while(|c| c.at >= from)
            .filter(|c| c.target < updated_below && seen.insert(c.target))
            .collect();
        last.reverse();
        let mut frames: Vec<Bytes> = last.into_iter().map(|c| c.frame.clone()).collect();
        frames.extend(
            self.history
                .iter()
                .skip_while(|s| s.seq < from)
                .filter(|s| !s.deleted)
                .map(|s| s.frame.clone()),
        );
        (frames, seen)
    }

    /// Message `seq` in the tail, if it is there.
    fn stored(&self, seq: u64) -> Option<&Stored> {
        let at = self.history.binary_search_by_key(&seq, |s| s.seq).ok()?;
        self.history.get(at)
    }

    /// Makes `member` a member, and queues its `joined` and `replay`.
    fn admit(
        &mut self,
        room: &Arc<str>,
        engine: &Arc<dyn Broker>,
        member: Member,
        gap: bool,
        replay: Vec<Bytes>,
        yours: &Yours,
    ) {
        let (id, outbox) = (member.id, member.outbox.clone());
        let you = (member.name.clone(), member.sender.clone());
        if let Some(observer) = &self.observer {
            let member = member.summary();
            observer.tell(Happened::Joined {
                room: room.clone(),
                member,
            });
        }
        let told = self.roster.add(member);
        // In a big room, the count and the first page: the same cost whatever its size.
        let members = self.roster.first_page();
        let joined = protocol::encode(&ServerFrame::Joined {
            room,
            epoch: self.epoch,
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
            mine: (!yours.mine.is_empty()).then_some(&yours.mine),
            read: yours.read,
        });
        drop(members);
        if outbox.push(joined) {
            outbox.push_replay(&replay);
        }
        self.last_active = Instant::now();
        if let Told::Now = told {
            // A small room tells everyone now; a big one in its next update.
            let presence = protocol::encode(&ServerFrame::Presence {
                room,
                event: PresenceEvent::Join,
                member: MemberRef {
                    id,
                    name: &you.0,
                    sender: Some(you.1.public()),
                },
                count: self.roster.len(),
            });
            self.broadcast(room, engine, &presence, Some(id));
        }
    }

    /// Relays that `name` (member `id`) is typing: at once in a small room; in a big one,
    /// kept for the next tick (at most [`TYPING_PER_TICK`] of them, the latest).
    fn typing(&mut self, room: &str, id: u64, name: &Arc<str>) {
        if !self.roster.is_big() {
            return self.relay_typing(room, id, name);
        }
        self.typing.retain(|(typist, _)| *typist != id);
        self.typing.push((id, name.clone()));
        if self.typing.len() > TYPING_PER_TICK {
            self.typing.remove(0);
        }
    }

    fn relay_typing(&self, room: &str, id: u64, name: &str) {
        let frame = protocol::encode(&ServerFrame::Typing { room, from: name });
        for member in self.roster.iter().filter(|m| m.id != id) {
            member.outbox.push_ephemeral(frame.clone());
        }
    }

    /// Pushes `frame` to every member but `skip`. Members that cannot take it are dropped
    /// from the room (they were told to close as too slow), and the others told they left.
    fn broadcast(
        &mut self,
        room: &str,
        engine: &Arc<dyn Broker>,
        frame: &Bytes,
        skip: Option<u64>,
    ) {
        let slow = self.push_all(frame, skip);
        self.remove(room, engine, slow);
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
    fn remove(&mut self, room: &str, engine: &Arc<dyn Broker>, mut ids: Vec<u64>) -> bool {
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
                engine.left(room, here);
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
                    self.send_list(room, engine);
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
    fn send_list(&mut self, room: &str, engine: &Arc<dyn Broker>) {
        let members = self.roster.first_page();
        let frame = protocol::encode(&ServerFrame::PresenceMany {
            room,
            event: PresenceEvent::Sync,
            members: &members,
            count: self.roster.len(),
        });
        drop(members);
        let slow = self.push_all(&frame, None);
        self.remove(room, engine, slow);
    }

    /// Who `mentions` (public sender ids) are, as far as the room lists them.
    fn mentioned(&self, mentions: &[Arc<str>]) -> Vec<Mentioned> {
        mentions
            .iter()
            .map(|sender| Mentioned {
                sender: sender.to_string(),
                user: self.roster.user_of(sender).flatten().map(|u| u.to_string()),
            })
            .collect()
    }

    /// A small room's due receipts: who read up to where since the last ones, to every
    /// member.
    fn send_receipts(&mut self, room: &str, engine: &Arc<dyn Broker>) {
        if self.receipts_due.is_empty() {
            return;
        }
        let due = std::mem::take(&mut self.receipts_due);
        if self.roster.is_big() {
            return;
        }
        let readers: Vec<ReaderRef<'_>> = due
            .iter()
            .map(|(sender, name, seq)| ReaderRef {
                sender,
                name,
                seq: *seq,
            })
            .collect();
        let frame = protocol::encode(&ServerFrame::Receipts {
            room,
            readers: &readers,
        });
        let slow = self.push_all(&frame, None);
        self.remove(room, engine, slow);
    }

    /// A big room's update, when one is due: who joined and left since the last one (or
    /// only the count), to every member.
    fn send_update(&mut self, room: &str, engine: &Arc<dyn Broker>) {
        let Some(changes) = self.roster.take_changes() else {
            return;
        };
        fn refs(list: &[(u64, Arc<str>)]) -> Vec<MemberRef<'_>> {
            list.iter()
                .map(|(id, name)| MemberRef {
                    id: *id,
                    name,
                    sender: None,
                })
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
        self.remove(room, engine, slow);
    }
}

/// A stored message as a `message` frame (as everyone but its sender got it).
pub(crate) fn message_frame(room: &str, message: &StoredMessage) -> Bytes {
    let mentions: Vec<&str> = message.mentions.iter().map(String::as_str).collect();
    protocol::encode(&ServerFrame::Message {
        room,
        seq: message.seq,
        from: &message.from,
        sender: message.sender.as_deref(),
        reply_to: message.reply.as_ref().map(quote_ref),
        text: &message.text,
        time: message.time,
        edited: message.edited,
        reactions: &count_refs(&message.reactions),
        mentions: &mentions,
        id: None,
    })
}

/// The start of a message's text that a `mention` carries.
fn quoted(text: &str) -> &str {
    match text.char_indices().nth(crate::engine::QUOTE_CHARS) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// A message's reactions as frames carry them.
fn count_refs(counts: &[ReactionCount]) -> Vec<CountRef<'_>> {
    counts
        .iter()
        .map(|c| CountRef {
            reaction: &c.reaction,
            count: c.count,
        })
        .collect()
}

/// A reply's quote as its frames carry it.
fn quote_ref(quote: &Quote) -> QuoteRef<'_> {
    QuoteRef {
        seq: quote.seq,
        from: &quote.from,
        text: &quote.text,
        deleted: quote.deleted,
    }
}

/// A stored message's current state as an `update` frame (numbered `at`, or later): what a
/// replay sends for a message the client has.
fn update_frame(room: &str, message: &StoredMessage, at: u64) -> Bytes {
    protocol::encode(&ServerFrame::Update {
        room,
        seq: message.seq,
        at,
        text: (!message.deleted).then_some(&message.text),
        edited: message.edited.filter(|_| !message.deleted),
        deleted: message.deleted,
        reactions: (!message.deleted)
            .then(|| count_refs(&message.reactions))
            .as_deref(),
    })
}

/// A reaction change to message `seq` as a live `update` (numbered `at`): its counts only.
fn reactions_frame(room: &str, seq: u64, at: u64, counts: &[ReactionCount]) -> Bytes {
    protocol::encode(&ServerFrame::Update {
        room,
        seq,
        at,
        text: None,
        edited: None,
        deleted: false,
        reactions: Some(&count_refs(counts)),
    })
}

/// `frame`, an `update` of message `target` in `room`, over the last one the tail keeps of
/// it: the fields it lacks (an edit's text under a reaction's counts) come from that one,
/// so that a replay's one `update` of the message holds all it missed.
fn overlaid(room: &str, changes: &VecDeque<Change>, target: u64, frame: Bytes) -> Bytes {
    #[derive(serde::Deserialize)]
    struct Fields {
        at: u64,
        text: Option<String>,
        edited: Option<u64>,
        reactions: Option<Vec<ReactionCount>>,
    }
    let Some(earlier) = changes.iter().rev().find(|c| c.target == target) else {
        return frame;
    };
    let (Ok(older), Ok(newer)) = (
        serde_json::from_slice::<Fields>(&earlier.frame),
        serde_json::from_slice::<Fields>(&frame),
    ) else {
        return frame;
    };
    let counts = newer.reactions.or(older.reactions);
    protocol::encode(&ServerFrame::Update {
        room,
        seq: target,
        at: newer.at,
        text: newer.text.or(older.text).as_deref(),
        edited: newer.edited.or(older.edited),
        deleted: false,
        reactions: counts.as_deref().map(count_refs).as_deref(),
    })
}

/// A tail frame read back.
fn decode(frame: &[u8]) -> Option<StoredMessage> {
    #[derive(serde::Deserialize)]
    struct Frame {
        seq: u64,
        time: u64,
        from: String,
        sender: Option<String>,
        text: String,
        edited: Option<u64>,
        #[serde(rename = "replyTo")]
        reply_to: Option<QuoteFrame>,
        #[serde(default)]
        reactions: Vec<ReactionCount>,
        #[serde(default)]
        mentions: Vec<String>,
    }
    #[derive(serde::Deserialize)]
    struct QuoteFrame {
        seq: u64,
        from: String,
        text: String,
        #[serde(default)]
        deleted: bool,
    }
    let f: Frame = serde_json::from_slice(frame).ok()?;
    let mut message = StoredMessage::new(f.seq, f.time, f.from, f.sender, f.text);
    message.edited = f.edited;
    message.reactions = f.reactions;
    message.mentions = f.mentions;
    message.reply = f.reply_to.map(|q| {
        let quote = Quote::new(q.seq, q.from, &q.text);
        if q.deleted { quote.of_deleted() } else { quote }
    });
    Some(message)
}

/// Tail frames read back, for history pages.
fn decode_all(frames: &[Bytes]) -> Vec<StoredMessage> {
    frames.iter().filter_map(|frame| decode(frame)).collect()
}

fn ack(room: &str, id: Option<&str>, seq: u64, mine: Option<&[String]>) -> Bytes {
    protocol::encode(&ServerFrame::Ack {
        room,
        id,
        seq,
        mine,
    })
}
