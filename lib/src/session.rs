//! One client connection's state machine, whatever its transport.
//!
//! A transport adapts its connection to two small traits — [`FrameReader`] (the next client
//! frame) and [`FrameWriter`] (write a batch of server frames, close with a code) — and calls
//! [`start`]. The session decodes frames, checks them against the limits, applies them to the
//! [hub](crate::hub), and writes whatever the hub queued for it in batches. Everything a
//! client can get wrong is answered here, once, for both transports.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::auth::{Authenticator, ConnectRequest, Identity, Transport, random_bytes};
use crate::engine::{Quote, RecordKind, StorageError, StoredMessage};
use crate::hooks::{MessageCheck, MessageEvent, MessageHook, MessageKind, Verdict};
use crate::hub::{
    Hub, Member, Mentioned, ReaderListing, Resume, Room, Sender, SenderKey, message_frame,
    read_frame,
};
use crate::protocol::{
    self, ClientFrame, CloseCode, ErrorCode, HISTORY_PAGE, Limits, MEMBERS_PAGE, Mine,
    REACTORS_PAGE, ReactorRef, ServerFrame,
};
use crate::queue::{Kind, Outbound, Outbox};
use crate::throttle::{HolderBudgets, RateLimit, RoomHold, Seat, throttled};

/// Frames written per batch: enough to amortize a write call under load, small enough that
/// one busy connection does not hold its worker thread for long.
const BATCH: usize = 256;

/// How long a closing session waits for the client to close its side. Clients answer a
/// close at once; one that does not read is not waited for long.
const LINGER: Duration = Duration::from_secs(1);

/// Frames read while one of the client's frames waits (for the host's backend, the store,
/// a busy engine): they are handled after it, in order. Past this many the session stops
/// reading, and the client's own TCP window holds the rest.
const WAITING: usize = 64;

/// What a transport read from its client. Everything but `Closed` shows the client is
/// there (see the idle timeout).
#[derive(Debug)]
pub(crate) enum Inbound {
    /// One frame's bytes (without any delimiter).
    Frame(Bytes),
    /// One WebTransport datagram's bytes.
    Datagram(Bytes),
    /// A WebSocket Ping control frame, with its payload: answered with a Pong.
    Ping(Bytes),
    /// A frame that only shows the client is alive (an unsolicited WebSocket Pong).
    Alive,
    /// A binary WebSocket message: valid framing, but not our protocol.
    Binary,
    /// The client broke the transport's framing; close with this code.
    Fatal(CloseCode),
    /// The client went away.
    Closed,
}

/// The reading half of a transport.
pub(crate) trait FrameReader: Send {
    /// The next thing the client sent. Must be cancel-safe: the session drops this future
    /// whenever it has frames to write.
    fn next(&mut self) -> impl Future<Output = Inbound> + Send;
}

/// The writing half of a transport.
pub(crate) trait FrameWriter: Send {
    /// Writes the frames in order (each ends with `\n`) and flushes. If cancelled, nothing is
    /// left half-written: a later call finishes what was started.
    fn send(&mut self, batch: &[Outbound]) -> impl Future<Output = io::Result<()>> + Send;
    /// Closes the connection with `code` (the `bye` frame has been sent already).
    fn close(&mut self, code: CloseCode) -> impl Future<Output = ()> + Send;
}

/// What every session needs from the server, shared by all of them.
#[derive(Clone)]
pub(crate) struct SessionContext {
    pub hub: Hub,
    pub limits: Arc<Limits>,
    /// Cancelled when the server starts shutting down: each session then says goodbye
    /// (4000) at a random moment within `drain_window`.
    pub shutdown: CancellationToken,
    pub drain_window: Duration,
    /// How long a closing session may spend writing its last frames and `bye`.
    pub close_grace: Duration,
    /// A client that sends nothing for this long is closed with
    /// [`CloseCode::IdleTimeout`]: a client that vanished without a word (a closed laptop,
    /// a lost network) must not stay a member forever.
    pub idle_timeout: Duration,
    /// Who connections are.
    pub auth: Arc<Authenticator>,
    /// Makes the public ids of senders, the same on every node and across restarts.
    pub senders: Arc<SenderKey>,
    /// The host's message hook, if any.
    pub on_message: Option<MessageHook>,
    /// The host's backend, asked about each message after `on_message` (the message
    /// webhook), if any.
    pub message_check: Option<Arc<dyn MessageCheck>>,
    /// What each address (or signed-in user) holds and creates: connections, rooms.
    pub budgets: Arc<HolderBudgets>,
}

/// The handling of a client frame that waits (for the host's backend, the store, a busy
/// engine): it borrows nothing of the session, so that the session goes on writing, and
/// says at the end what becomes of the session.
type Pending<'a> = Pin<Box<dyn Future<Output = Effect> + Send + 'a>>;

/// What a frame's handling that waited does to the session once it is done.
enum Effect {
    None,
    /// The connection joined a room.
    Joined(Joined),
}

/// Identifies a new connection (when the server identifies connections: `request` is what
/// the client sent), then runs it until the client leaves, breaks the protocol, is too
/// slow, or the server shuts down. `id` is the connection's id (from [`Hub::next_id`]). A refused connection gets `bye` 4401 with the reason:
/// browsers see no HTTP status from a failed WebSocket or WebTransport handshake, so the
/// reason has to travel in-band.
pub(crate) async fn start(
    ctx: &SessionContext,
    id: u64,
    transport: Transport,
    // Boxed: a future keeps its arguments for its whole life (the request is read once).
    request: Option<Box<ConnectRequest>>,
    // Whom it counts against as far as its address tells, and its place among that
    // address's connections (a signed-in user counts as the user instead, once
    // identified). A pointer: the future keeps its arguments.
    seat: Box<Seat>,
    mut reader: impl FrameReader,
    mut writer: impl FrameWriter,
) {
    let identity = match request {
        // Boxed, like every await that happens once per connection (identifying it, its
        // last words): their state inline would enlarge every session's future for good.
        Some(request) => match Box::pin(ctx.auth.identify(*request)).await {
            Ok(identity) => Some(identity),
            Err(refusal) => {
                throttled!(
                    info,
                    reason = refusal.message(),
                    "connection refused by authentication"
                );
                let goodbye = goodbye(
                    &mut reader,
                    &mut writer,
                    Vec::new(),
                    CloseCode::Unauthorized,
                    Some(refusal.message()),
                    None,
                );
                let _ = Box::pin(tokio::time::timeout(ctx.close_grace, goodbye)).await;
                return;
            }
        },
        None => None,
    };
    // The rest is here, not in a function of its own: the reader and writer would be held
    // twice (as this future's arguments and the callee's), for the connection's life.
    let metrics = ctx.hub.metrics();
    let stats = metrics.opened(id, transport);
    let started = Instant::now();
    tracing::info!("connection opened");
    let (outbox, mut inbox, closing) = crate::queue::queue(ctx.hub.config().queue_bounds());
    // Signed in: its place moves from its address's connections to its user's (the
    // address's is given back here: a shadowed value would live as long as the future).
    let seat = match &identity {
        Some(identity) => match ctx.budgets.user_seat(&identity.user) {
            Some(user_seat) => {
                drop(seat);
                user_seat
            }
            None => {
                throttled!(info, "refused: too many connections of one user");
                let (wait, why) = (BUSY_WAIT, "too many connections for your user");
                return Box::pin(refuse_busy(ctx, reader, writer, wait, why)).await;
            }
        },
        None => seat,
    };
    let mut session = Session {
        id,
        ctx,
        seat,
        identity,
        outbox,
        rooms: Vec::new(),
        sender: None,
        listing: None,
        rate: RateLimit::new(
            f64::from(ctx.limits.frames_per_second),
            f64::from(ctx.limits.frame_burst),
        ),
        new_rooms: RateLimit::new(
            f64::from(ctx.limits.new_rooms_per_minute) / 60.0,
            f64::from(ctx.limits.new_rooms_per_minute),
        ),
        spoke: false,
    };
    let mut batch = Vec::new();
    // The client frame whose handling waits, and the frames read behind it (with when they
    // came, for the rate): handled in order once it is done. Meanwhile the session writes.
    let mut pending: Option<Pending<'_>> = None;
    let mut waiting: VecDeque<(Instant, Inbound)> = VecDeque::new();
    // One timer per session, re-armed only when it fires: hearing from the client only
    // moves `last_heard`, which costs a clock read, not a timer update.
    let mut last_heard = Instant::now();
    // Once the server shuts down, this session's moment to go: a random moment within the
    // drain window, so that its clients do not all reconnect to the other nodes at once.
    let mut leaving: Option<Instant> = None;
    let idle = tokio::time::sleep(ctx.idle_timeout);
    tokio::pin!(idle);
    let end = loop {
        if leaving.is_some_and(|at| Instant::now() >= at) {
            break Some(CloseCode::Shutdown);
        }
        while pending.is_none()
            && let Some((at, inbound)) = waiting.pop_front()
        {
            pending = session.take(at, inbound);
        }
        tokio::select! {
            biased;
            code = closing.wait() => break Some(code),
            () = ctx.shutdown.cancelled(), if leaving.is_none() => {
                let share = u64::from_le_bytes(random_bytes::<8>()) as f64 / u64::MAX as f64;
                let at = Instant::now() + ctx.drain_window.mul_f64(share);
                leaving = Some(at);
                // The idle timer wakes a quiet session then; a busy one sees it above.
                idle.as_mut().reset(at.min(last_heard + ctx.idle_timeout).into());
            }
            left = inbox.recv_many(&mut batch, BATCH) => {
                // A kick or a ban took it out of a room; out of its last, it closes.
                let kicked_out = inbox.rooms_removed() && session.forget_removed_rooms();
                stats.sending(&batch, left);
                // A client that stops reading blocks this write; it must not stop the
                // session from hearing that it is too slow, or that the server stops.
                let written = tokio::select! {
                    biased;
                    code = closing.wait() => Err(Some(code)),
                    () = gone_at(leaving) => Err(Some(CloseCode::Shutdown)),
                    result = writer.send(&batch) => result.map_err(|_| None),
                };
                batch.clear();
                if let Err(end) = written {
                    break end;
                }
                if kicked_out {
                    break Some(CloseCode::Kicked);
                }
            }
            effect = async { pending.as_mut().expect("polled only when set").await },
                if pending.is_some() => {
                pending = None;
                session.apply(effect);
            }
            inbound = reader.next(), if waiting.len() < WAITING => match inbound {
                Inbound::Fatal(code) => break Some(code),
                Inbound::Closed => break None,
                inbound => {
                    last_heard = Instant::now();
                    if pending.is_none() {
                        pending = session.take(last_heard, inbound);
                    } else if let Some(inbound) = session.at_once(inbound) {
                        waiting.push_back((last_heard, inbound));
                    }
                }
            },
            // Last: polled only when nothing else is ready, so that a busy session pays
            // nothing for it (a client that vanished in a busy room is cut off as too slow).
            () = &mut idle => {
                let due = last_heard + ctx.idle_timeout;
                if Instant::now() >= due {
                    break Some(CloseCode::IdleTimeout);
                }
                idle.as_mut().reset(leaving.map_or(due, |at| at.min(due)).into());
            }
        }
    };
    // What still waited is given up (a join reading history leaves the room's list of
    // joins as it goes); then the session leaves every room it is in.
    drop(pending);
    if end.is_none() {
        // The client closed (or vanished): answer its close, briefly.
        let _ = Box::pin(tokio::time::timeout(
            LINGER,
            writer.close(CloseCode::Normal),
        ))
        .await;
    }
    session.leave_all();
    metrics.closed(id, end);
    tracing::info!(
        close = end.map_or(1000, CloseCode::code),
        reason = end.map_or("client", CloseCode::reason),
        duration_ms = started.elapsed().as_millis() as u64,
        "connection closed"
    );
    if let Some(code) = end {
        // Last words: what is still queued, then `bye`, then the close itself; bounded,
        // because a client that stopped reading would otherwise hold us forever.
        inbox.drain_now(&mut batch);
        let goodbye = goodbye(&mut reader, &mut writer, batch, code, None, None);
        let _ = Box::pin(tokio::time::timeout(ctx.close_grace, goodbye)).await;
    }
}

/// Writes `batch`, then `bye`, then closes with `code`, then waits (at most [`LINGER`]) for
/// the client to close its side: dropping a TCP socket with unread input resets it, and the
/// reset can destroy the close frame just sent. The caller bounds the writing with
/// `close_grace`.
async fn goodbye(
    reader: &mut impl FrameReader,
    writer: &mut impl FrameWriter,
    mut batch: Vec<Outbound>,
    code: CloseCode,
    message: Option<&str>,
    retry_after_ms: Option<u64>,
) {
    batch.push(Outbound::new(
        protocol::encode(&ServerFrame::Bye {
            code: code.code(),
            reason: code.reason(),
            reconnect: code.reconnect(),
            message,
            retry_after_ms,
        }),
        Kind::Frame,
    ));
    if writer.send(&batch).await.is_ok() {
        writer.close(code).await;
        let client_closed =
            async { while !matches!(reader.next().await, Inbound::Closed | Inbound::Fatal(_)) {} };
        let _ = tokio::time::timeout(LINGER, client_closed).await;
    }
}

/// How long a client refused for a budget used up (its address's, its user's, the
/// server's) is told to wait before it tries again.
pub(crate) const BUSY_WAIT: Duration = Duration::from_secs(5);

/// Refuses a connection the server has no room for now (its address's share of
/// connections, its user's, or the server's, is used up). It was accepted only to say so, because
/// browsers cannot read the status of a refused WebSocket or WebTransport handshake:
/// `error {code: "busy", retryAfterMs}`, `bye` 4004 with the same wait, the close. The
/// browser client waits that long, then connects again.
pub(crate) async fn refuse_busy(
    ctx: &SessionContext,
    mut reader: impl FrameReader,
    mut writer: impl FrameWriter,
    retry_after: Duration,
    message: &str,
) {
    let ms = u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX);
    let error = protocol::encode(&ServerFrame::Error {
        code: ErrorCode::Busy,
        message,
        room: None,
        id: None,
        retry_after_ms: Some(ms),
    });
    let batch = vec![Outbound::new(error, Kind::Frame)];
    let goodbye = goodbye(
        &mut reader,
        &mut writer,
        batch,
        CloseCode::Busy,
        Some(message),
        Some(ms),
    );
    let _ = tokio::time::timeout(ctx.close_grace, goodbye).await;
}

/// Resolves at `leaving` (never, while the server is not shutting down): neither a busy
/// session nor a write stuck on a client that stopped reading keeps it past its moment.
async fn gone_at(leaving: Option<Instant>) {
    match leaving {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// A room this connection is in, and who it is there.
struct Joined {
    room: Arc<Room>,
    me: Member,
    /// The room counted among those its holder holds open, while this connection is in it.
    /// Boxed: a join's outcome passes through the session's future, which would keep room
    /// for it inline for the connection's life.
    _hold: Option<Box<RoomHold>>,
}

struct Session<'a> {
    id: u64,
    ctx: &'a SessionContext,
    /// Who the host says this connection is; None when the host does not authenticate.
    identity: Option<Identity>,
    /// Whom this connection counts against, and its place among that one's connections.
    seat: Box<Seat>,
    /// This connection's own queue: replies go through it so that they keep their order
    /// with the room messages around them (a message, then its ack).
    outbox: Outbox,
    rooms: Vec<Joined>,
    /// Who sends this connection's messages, once it joined a room.
    sender: Option<Arc<Sender>>,
    /// The connection listed under its sender's id (for its user's read state and
    /// mentions, wherever they come from), from its first join on.
    listing: Option<Box<ReaderListing>>,
    rate: RateLimit,
    /// Rooms this connection may still create.
    new_rooms: RateLimit,
    /// Whether the client sent a frame yet: `hello` may only be the first.
    spoke: bool,
}

/// Bytes of randomness in a resume key: 128 bits, beyond guessing.
const RESUME_KEY_BYTES: usize = 16;

/// A fresh resume key: 128 random bits, base64url (22 characters).
fn new_resume_key() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<RESUME_KEY_BYTES>())
}

/// Whether `key` has the shape of a key [`new_resume_key`] makes. Any such key is accepted:
/// one that was never issued only scopes its own holder's messages, and a key issued to
/// someone else cannot be guessed.
fn is_resume_key(key: &str) -> bool {
    key.len() == 22
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl<'a> Session<'a> {
    /// Handles what the client sent (at `at`): at once, or — when it must wait — as the
    /// pending handling the session polls while it goes on writing.
    fn take(&mut self, at: Instant, inbound: Inbound) -> Option<Pending<'a>> {
        match inbound {
            Inbound::Frame(bytes) => self.handle(at, &bytes),
            Inbound::Datagram(bytes) => self.handle_datagram(at, &bytes),
            Inbound::Ping(payload) => {
                // Pings count against the rate like any frame; past it, no answer.
                if self.rate.allow_at(at) {
                    self.outbox.push_pong(payload);
                }
                None
            }
            Inbound::Binary => {
                self.error(
                    ErrorCode::BinaryUnsupported,
                    "binary messages are not part of the protocol; send JSON text",
                    None,
                    None,
                );
                None
            }
            Inbound::Alive | Inbound::Fatal(_) | Inbound::Closed => None,
        }
    }

    /// While a frame's handling waits: what is answered at once (pings, both kinds: a
    /// client that hears nothing back would think the connection dead), and what is
    /// given back to wait its turn.
    fn at_once(&mut self, inbound: Inbound) -> Option<Inbound> {
        let is_ping = match &inbound {
            Inbound::Ping(_) | Inbound::Alive => true,
            Inbound::Frame(bytes) => matches!(protocol::decode(bytes), Ok(ClientFrame::Ping {})),
            _ => false,
        };
        if !is_ping {
            return Some(inbound);
        }
        let _ = self.take(Instant::now(), inbound);
        None
    }

    /// What a handling that waited does to the session, now that it is done.
    fn apply(&mut self, effect: Effect) {
        match effect {
            Effect::None => {}
            Effect::Joined(joined) => {
                self.ctx.hub.metrics().joined();
                self.rooms.push(joined);
            }
        }
    }

    /// A frame from a WebTransport datagram: only `typing` travels there (a datagram may
    /// be lost, and nothing that needs an answer may be), under the same size limit as
    /// any frame. Its boundaries are intact, so an oversized one is refused, not fatal.
    fn handle_datagram(&mut self, at: Instant, bytes: &[u8]) -> Option<Pending<'a>> {
        if bytes.len() > self.ctx.limits.max_frame_bytes {
            if self.rate.allow_at(at) {
                self.error(
                    ErrorCode::FrameTooLarge,
                    "a datagram is larger than max_frame_bytes",
                    None,
                    None,
                );
            }
            return None;
        }
        match protocol::decode(bytes) {
            Ok(ClientFrame::Typing { .. }) | Err(_) => self.handle(at, bytes),
            Ok(frame) => {
                if self.rate.allow_at(at) {
                    let (room, id) = frame.room_and_id();
                    self.error(
                        ErrorCode::InvalidFrame,
                        "only typing travels in a datagram; send this frame on the stream",
                        room,
                        id,
                    );
                }
                None
            }
        }
    }

    fn handle(&mut self, at: Instant, bytes: &[u8]) -> Option<Pending<'a>> {
        let decoded = protocol::decode(bytes);
        // Every frame counts against the rate, even one that does not decode.
        if !self.rate.allow_at(at) {
            let (room, id) = match &decoded {
                Ok(frame) => frame.room_and_id(),
                Err(_) => (None, None),
            };
            self.error(
                ErrorCode::RateLimited,
                "too many frames per second; this one was dropped",
                room,
                id,
            );
            return None;
        }
        let frame = match decoded {
            Ok(frame) => frame,
            Err(e) => {
                self.error(e.code, &e.message, None, None);
                return None;
            }
        };
        let first = !std::mem::replace(&mut self.spoke, true);
        match frame {
            ClientFrame::Hello { protocol } => self.hello(protocol, first),
            ClientFrame::Join {
                room,
                name,
                since,
                epoch,
                key,
            } => {
                return self.join(
                    room,
                    name.as_deref(),
                    key.as_deref(),
                    Resume { since, epoch },
                );
            }
            ClientFrame::Leave { room } => self.leave(&room),
            ClientFrame::Send {
                room,
                text,
                id,
                reply_to,
                mentions,
            } => return self.send(room, text, id, reply_to, mentions),
            ClientFrame::Read { room, seq } => return self.mark_read(room, seq),
            ClientFrame::Edit {
                room,
                seq,
                text,
                id,
            } => {
                return self.change(room, RecordKind::Edit, seq, text, id);
            }
            ClientFrame::Delete { room, seq, id } => {
                return self.change(room, RecordKind::Delete, seq, String::new(), id);
            }
            ClientFrame::React {
                room,
                seq,
                reaction,
                id,
            } => return self.react(room, RecordKind::React, seq, reaction, id),
            ClientFrame::Unreact {
                room,
                seq,
                reaction,
                id,
            } => return self.react(room, RecordKind::Unreact, seq, reaction, id),
            ClientFrame::Reactions {
                room,
                seq,
                after,
                limit,
            } => return self.reactors(room, seq, after, limit),
            ClientFrame::Typing { room } => match self.joined(&room) {
                Some(j) => j.room.typing(&j.me),
                None => self.not_joined(&room, None),
            },
            ClientFrame::Ping {} => {
                self.outbox.push(protocol::encode(&ServerFrame::Pong {}));
            }
            ClientFrame::History {
                room,
                before,
                limit,
            } => return self.history(room, before, limit),
            ClientFrame::Members { room, after, limit } => match self.joined(&room) {
                Some(j) => {
                    let limit = limit.map_or(MEMBERS_PAGE, |n| (n as usize).clamp(1, MEMBERS_PAGE));
                    self.outbox.push(j.room.members_frame(after, limit));
                }
                None => self.not_joined(&room, None),
            },
        }
        None
    }

    /// The client's `hello`: answered with the version spoken from now on; one older than
    /// the server speaks closes the connection (4400: the client must be updated).
    fn hello(&mut self, protocol: u32, first: bool) {
        if !first {
            return self.error(
                ErrorCode::InvalidFrame,
                "hello must be the connection's first frame",
                None,
                None,
            );
        }
        if protocol < protocol::OLDEST_PROTOCOL {
            self.error(
                ErrorCode::UnsupportedProtocol,
                "this server no longer speaks that protocol version; update the client",
                None,
                None,
            );
            return self.outbox.close(CloseCode::ProtocolError);
        }
        self.outbox.push(protocol::encode(&ServerFrame::Hello {
            protocol: protocol.min(protocol::PROTOCOL),
        }));
    }

    fn joined(&self, room: &str) -> Option<&Joined> {
        self.rooms.iter().find(|j| j.room.name() == room)
    }

    fn join(
        &mut self,
        room: String,
        name: Option<&str>,
        key: Option<&str>,
        resume: Resume,
    ) -> Option<Pending<'a>> {
        let limits = &self.ctx.limits;
        if let Err((code, msg)) = limits.check_room(&room) {
            self.error(code, msg, Some(&room), None);
            return None;
        }
        // With an identity the host names the user, whatever the client says.
        let name = match &self.identity {
            Some(identity) => {
                if !identity.rooms.allows(&room) {
                    self.error(
                        ErrorCode::RoomForbidden,
                        "your identity does not allow this room",
                        Some(&room),
                        None,
                    );
                    return None;
                }
                if self.ctx.hub.banned(&room, &identity.user) {
                    self.error(
                        ErrorCode::Banned,
                        "you are banned from this room for now",
                        Some(&room),
                        None,
                    );
                    return None;
                }
                Arc::from(identity.name.as_str())
            }
            None => Arc::from(name.unwrap_or("")),
        };
        let refused = if let Err((code, msg)) = limits.check_name(&name) {
            Some((code, msg))
        } else if self.joined(&room).is_some() {
            Some((ErrorCode::AlreadyJoined, "already in this room"))
        } else if self.rooms.len() >= limits.max_rooms_per_connection {
            Some((
                ErrorCode::TooManyRooms,
                "this connection is in max_rooms_per_connection rooms already",
            ))
        } else {
            None
        };
        if let Some((code, msg)) = refused {
            self.error(code, msg, Some(&room), None);
            return None;
        }
        // Held until this connection leaves the room: refused past the holder's budget.
        let hold = match &self.seat.holder {
            Some(holder) => match self.ctx.budgets.hold(holder, &room) {
                Some(hold) => Some(hold),
                None => {
                    self.error(
                        ErrorCode::TooManyRooms,
                        "your address (or user) holds max_rooms_per_ip rooms open already",
                        Some(&room),
                        None,
                    );
                    return None;
                }
            },
            None => None,
        };
        // Creating a room costs the server memory: at most so many per connection, and per
        // address (or user).
        if self.ctx.hub.room(&room).is_none() {
            let refused = if !self.new_rooms.allow() {
                Some("this connection created too many rooms; wait a minute or join existing ones")
            } else if let Some(holder) = &self.seat.holder
                && self.ctx.budgets.create(holder).is_err()
            {
                Some(
                    "your address (or user) created too many rooms for now; join existing ones or wait",
                )
            } else {
                None
            };
            if let Some(msg) = refused {
                self.error(ErrorCode::RateLimited, msg, Some(&room), None);
                return None;
            }
        }
        let sender = match self.sender(key) {
            Ok(sender) => sender,
            Err(msg) => {
                self.error(ErrorCode::InvalidFrame, msg, Some(&room), None);
                return None;
            }
        };
        let me = Member {
            id: self.id,
            name,
            user: self.identity.as_ref().map(|i| i.user.as_str().into()),
            sender,
            outbox: self.outbox.clone(),
        };
        let hub = &self.ctx.hub;
        let outbox = self.outbox.clone();
        Some(Box::pin(async move {
            match hub.join(&room, me.clone(), resume).await {
                Ok(room) => Effect::Joined(Joined {
                    room,
                    me,
                    _hold: hold.map(Box::new),
                }),
                Err(code) => {
                    let message = match code {
                        ErrorCode::StorageFailed => {
                            "the room could not be read from storage; try again later"
                        }
                        _ => "the server holds too many rooms",
                    };
                    refuse(hub, &outbox, code, message, Some(&room), None);
                    Effect::None
                }
            }
        }))
    }

    /// Who sends this connection's messages: the host's user, or — anonymous — the holder
    /// of a resume key: the one `presented` (from an earlier connection's `joined`), else a
    /// fresh one. Set by the first join, the same in every room after it.
    fn sender(&mut self, presented: Option<&str>) -> Result<Arc<Sender>, &'static str> {
        if let Some(sender) = &self.sender {
            // An identified connection's key is ignored: its user is who it is.
            return match presented {
                Some(key) if self.identity.is_none() && sender.resume_key() != Some(key) => {
                    Err("this connection already has another key")
                }
                _ => Ok(sender.clone()),
            };
        }
        let sender = match (&self.identity, presented) {
            (Some(identity), _) => self.ctx.senders.user(&identity.user),
            (None, Some(key)) if is_resume_key(key) => self.ctx.senders.resume_key(key),
            (None, Some(_)) => return Err("key must be a resume key this server issued"),
            (None, None) => self.ctx.senders.resume_key(&new_resume_key()),
        };
        let listing = self
            .ctx
            .hub
            .list_reader(sender.public(), self.id, self.outbox.clone());
        self.listing = Some(Box::new(listing));
        Ok(self.sender.insert(Arc::new(sender)).clone())
    }

    /// Forgets the rooms that no longer list this connection: the host removed it from
    /// them (their `left` is on its way). True when that left it in no room at all.
    fn forget_removed_rooms(&mut self) -> bool {
        let before = self.rooms.len();
        self.rooms.retain(|joined| joined.room.lists(self.id));
        before > self.rooms.len() && self.rooms.is_empty()
    }

    fn leave(&mut self, room: &str) {
        let Some(pos) = self.rooms.iter().position(|j| j.room.name() == room) else {
            return self.not_joined(room, None);
        };
        let joined = self.rooms.swap_remove(pos);
        joined.room.leave(self.id);
        self.outbox.push(protocol::encode(&ServerFrame::Left {
            room,
            code: None,
            reason: None,
        }));
    }

    /// A `send`: checked against the limits and the host's message hook here; then, with a
    /// message webhook, asked of the backend (which may rewrite it), and published. What
    /// waits — the backend, an engine too busy to take it — waits as this session's
    /// pending frame: its later frames wait behind it, its deliveries do not.
    fn send(
        &self,
        room: String,
        text: String,
        id: Option<String>,
        reply_to: Option<u64>,
        mentions: Vec<String>,
    ) -> Option<Pending<'a>> {
        let joined = self.accepts(&room, &text, id.as_deref(), None)?;
        if let Err((code, msg)) = self.ctx.limits.check_mentions(&mentions) {
            self.error(code, msg, Some(&room), id.as_deref());
            return None;
        }
        let mentions: Box<[Arc<str>]> = mentions.into_iter().map(Into::into).collect();
        let (room_handle, me) = (joined.room.clone(), joined.me.clone());
        let check = self.ctx.message_check.as_ref();
        if check.is_none() && reply_to.is_none() {
            let retry = room_handle
                .publish(&me, &text, id.as_deref(), None, mentions)
                .err()?;
            return Some(Box::pin(async move {
                retry.append().await;
                Effect::None
            }));
        }
        let hub = &self.ctx.hub;
        Some(Box::pin(async move {
            let id = id.as_deref();
            // A reply quotes the message it answers, which must be one of the room's.
            let reply = match reply_to {
                None => None,
                Some(seq) => match quote(&room_handle, seq).await {
                    Ok(quote) => Some(quote),
                    Err((code, message)) => {
                        refuse(hub, &me.outbox, code, message, Some(&room), id);
                        return Effect::None;
                    }
                },
            };
            let mentioned = room_handle.mentioned(&mentions);
            let said = backend_says(hub, check, &room, &me, text, id, Said::Send(&mentioned)).await;
            let Some(text) = said else {
                return Effect::None;
            };
            if let Err(retry) = room_handle.publish(&me, &text, id, reply, mentions) {
                retry.append().await;
            }
            Effect::None
        }))
    }

    /// A `read`: raises the connection's user's mark in a joined room, and answers with its
    /// read state (every connection of the user gets it when the mark moved).
    fn mark_read(&self, room: String, seq: u64) -> Option<Pending<'a>> {
        let Some(joined) = self.joined(&room) else {
            self.not_joined(&room, None);
            return None;
        };
        let (me, hub) = (joined.me.clone(), &self.ctx.hub);
        Some(Box::pin(async move {
            match hub.mark_read(&room, me.sender.public(), Some(seq)).await {
                Ok((_, true)) => {}
                Ok((state, false)) => drop(me.outbox.push(read_frame(&room, &state))),
                Err(e) => {
                    tracing::error!(room, error = %e, "could not store a read mark");
                    refuse(
                        hub,
                        &me.outbox,
                        ErrorCode::StorageFailed,
                        "the read mark could not be stored; try again later",
                        Some(&room),
                        None,
                    );
                }
            }
            Effect::None
        }))
    }

    /// An `edit` or a `delete` of message `seq`: checked against the limits (an edit's text
    /// as a send's), then — once the message is found, in the tail or the engine — against
    /// it: it must be the sender's own, not deleted, and (an edit) within the edit window.
    /// Then published in the room's order, and acknowledged like a send.
    fn change(
        &self,
        room: String,
        kind: RecordKind,
        seq: u64,
        text: String,
        id: Option<String>,
    ) -> Option<Pending<'a>> {
        let joined = match kind {
            RecordKind::Edit => self.accepts(&room, &text, id.as_deref(), Some(seq))?,
            _ => {
                let Some(joined) = self.joined(&room) else {
                    self.not_joined(&room, id.as_deref());
                    return None;
                };
                if let Err((code, msg)) = self.ctx.limits.check_id(id.as_deref()) {
                    self.error(code, msg, Some(&room), id.as_deref());
                    return None;
                }
                joined
            }
        };
        let (handle, me) = (joined.room.clone(), joined.me.clone());
        let (hub, window) = (&self.ctx.hub, self.ctx.limits.edit_window);
        let check = self
            .ctx
            .message_check
            .as_ref()
            .filter(|_| kind == RecordKind::Edit);
        Some(Box::pin(async move {
            let id = id.as_deref();
            let refused = match there(handle.target(seq).await, &room) {
                Err(refused) => Some(refused),
                Ok(target) if target.sender.as_deref() != Some(me.sender.public()) => {
                    Some((ErrorCode::NotYours, "only its sender may change a message"))
                }
                Ok(target)
                    if kind == RecordKind::Edit
                        && (window.is_zero()
                            || protocol::now_ms().saturating_sub(target.time)
                                > window.as_millis() as u64) =>
                {
                    Some((
                        ErrorCode::EditWindowPassed,
                        "the message is older than the edit window",
                    ))
                }
                Ok(_) => None,
            };
            if let Some((code, message)) = refused {
                refuse(hub, &me.outbox, code, message, Some(&room), id);
                return Effect::None;
            }
            // The backend has its say about an edit as about a send.
            let said = backend_says(hub, check, &room, &me, text, id, Said::Edit(seq)).await;
            let Some(text) = said else {
                return Effect::None;
            };
            if let Err(retry) = handle.change(&me, kind, seq, &text, id) {
                retry.append().await;
            }
            Effect::None
        }))
    }

    /// A `react` or an `unreact` of message `seq`: the reaction checked, the message found
    /// (in the tail or the engine) and not deleted; then published in the room's order,
    /// where the engine applies it within the limits, and acknowledged with the member's
    /// own reactions on the message (or refused with `too_many_reactions`).
    fn react(
        &self,
        room: String,
        kind: RecordKind,
        seq: u64,
        reaction: String,
        id: Option<String>,
    ) -> Option<Pending<'a>> {
        let Some(joined) = self.joined(&room) else {
            self.not_joined(&room, id.as_deref());
            return None;
        };
        let limits = &self.ctx.limits;
        if let Err((code, msg)) = limits
            .check_id(id.as_deref())
            .and_then(|()| limits.check_reaction(&reaction))
        {
            self.error(code, msg, Some(&room), id.as_deref());
            return None;
        }
        let (handle, me, hub) = (joined.room.clone(), joined.me.clone(), &self.ctx.hub);
        Some(Box::pin(async move {
            let id = id.as_deref();
            if let Err((code, message)) = there(handle.target(seq).await, &room) {
                refuse(hub, &me.outbox, code, message, Some(&room), id);
                return Effect::None;
            }
            if let Err(retry) = handle.change(&me, kind, seq, &reaction, id) {
                retry.append().await;
            }
            Effect::None
        }))
    }

    /// Answers `reactions` with one page of who reacted to message `seq`.
    fn reactors(
        &self,
        room: String,
        seq: u64,
        after: Option<u64>,
        limit: Option<u32>,
    ) -> Option<Pending<'a>> {
        let Some(joined) = self.joined(&room) else {
            self.not_joined(&room, None);
            return None;
        };
        let limit = limit.map_or(REACTORS_PAGE, |n| (n as usize).clamp(1, REACTORS_PAGE));
        let (handle, outbox, hub) = (joined.room.clone(), self.outbox.clone(), &self.ctx.hub);
        Some(Box::pin(async move {
            match handle.reactors(seq, after.unwrap_or(0), limit).await {
                Ok(page) => {
                    let reactors: Vec<ReactorRef<'_>> = page
                        .reactors
                        .iter()
                        .map(|r| ReactorRef {
                            reaction: &r.reaction,
                            from: &r.from,
                            sender: &r.sender,
                            at: r.at,
                        })
                        .collect();
                    outbox.push(protocol::encode(&ServerFrame::Reactions {
                        room: &room,
                        seq,
                        reactors: &reactors,
                        next: page.next,
                    }));
                }
                Err(e) => {
                    tracing::error!(room, error = %e, "could not read reactions");
                    refuse(
                        hub,
                        &outbox,
                        ErrorCode::StorageFailed,
                        "reactions could not be read from storage; try again later",
                        Some(&room),
                        None,
                    );
                }
            };
            Effect::None
        }))
    }

    /// The room a `send` goes to (an `edit` of message `edits`), if the text passes the
    /// limits and the host's message hook; else the sender is told why, and None.
    fn accepts(
        &self,
        room: &str,
        text: &str,
        id: Option<&str>,
        edits: Option<u64>,
    ) -> Option<&Joined> {
        let Some(joined) = self.joined(room) else {
            self.not_joined(room, id);
            return None;
        };
        if let Err((code, msg)) = self.ctx.limits.check_message(text, id) {
            self.error(code, msg, Some(room), id);
            return None;
        }
        if let Some(hook) = &self.ctx.on_message {
            let event = MessageEvent {
                room,
                from: &joined.me.name,
                user: joined.me.user.as_deref(),
                text,
                kind: match edits {
                    Some(_) => MessageKind::Edit,
                    None => MessageKind::Send,
                },
                seq: edits,
            };
            if let Err(refusal) = hook(&event) {
                self.error(ErrorCode::Rejected, refusal.message(), Some(room), id);
                return None;
            }
        }
        self.ctx.hub.keep_history_budget();
        Some(joined)
    }

    /// Answers `history` with one page of a joined room's older messages, read without
    /// holding up the session's writing.
    fn history(
        &self,
        room: String,
        before: Option<u64>,
        limit: Option<u32>,
    ) -> Option<Pending<'a>> {
        let Some(joined) = self.joined(&room) else {
            self.not_joined(&room, None);
            return None;
        };
        let limit = limit.map_or(HISTORY_PAGE, |n| (n as usize).clamp(1, HISTORY_PAGE));
        let (handle, outbox, hub) = (joined.room.clone(), self.outbox.clone(), &self.ctx.hub);
        let me = joined.me.clone();
        Some(Box::pin(async move {
            match handle.page(before, limit).await {
                Ok(page) => {
                    let frames: Vec<Bytes> = page
                        .messages
                        .iter()
                        .map(|m| message_frame(&room, m))
                        .collect();
                    // The member's own reactions on the page's messages, when it has any.
                    let reacted = page.messages.iter().find(|m| !m.reactions.is_empty());
                    let mut mine = match reacted {
                        Some(first) => handle.mine(me.sender.public(), first.seq).await,
                        None => Mine::new(),
                    };
                    let last = page.messages.last().map_or(0, |m| m.seq);
                    mine.retain(|seq, _| *seq <= last);
                    outbox.push(protocol::encode_history(&room, &frames, page.more, &mine));
                }
                Err(e) => {
                    tracing::error!(room, error = %e, "could not read history");
                    refuse(
                        hub,
                        &outbox,
                        ErrorCode::StorageFailed,
                        "history could not be read from storage; try again later",
                        Some(&room),
                        None,
                    );
                }
            }
            Effect::None
        }))
    }

    fn leave_all(&mut self) {
        for joined in self.rooms.drain(..) {
            joined.room.leave(self.id);
        }
    }

    fn not_joined(&self, room: &str, id: Option<&str>) {
        self.error(ErrorCode::NotJoined, "join the room first", Some(room), id);
    }

    fn error(&self, code: ErrorCode, message: &str, room: Option<&str>, id: Option<&str>) {
        refuse(&self.ctx.hub, &self.outbox, code, message, room, id);
    }
}

/// What the backend is asked about: a new message mentioning whom, or an edit of a message.
enum Said<'a> {
    Send(&'a [Mentioned]),
    Edit(u64),
}

/// The text the host's backend (the message webhook, when there is one) lets `sender` send
/// into `room` — `text`, or its rewrite — for a new message or (`edits`) an edit; None when
/// it rejected it, and the sender was told why.
async fn backend_says(
    hub: &Hub,
    check: Option<&Arc<dyn MessageCheck>>,
    room: &str,
    sender: &Member,
    text: String,
    id: Option<&str>,
    said: Said<'_>,
) -> Option<String> {
    let Some(check) = check else {
        return Some(text);
    };
    let (edits, mentions) = match said {
        Said::Send(mentions) => (None, mentions),
        Said::Edit(seq) => (Some(seq), &[][..]),
    };
    match check.check(room, sender, &text, id, edits, mentions).await {
        Verdict::Accept => Some(text),
        Verdict::Rewrite(rewritten) => Some(rewritten),
        Verdict::Reject(reason) => {
            let code = ErrorCode::Rejected;
            refuse(hub, &sender.outbox, code, &reason, Some(room), id);
            None
        }
    }
}

/// The quote of message `seq` of `room` for a reply to it; or why there is none.
async fn quote(room: &Room, seq: u64) -> Result<Quote, (ErrorCode, &'static str)> {
    match there(room.target(seq).await, room.name()) {
        Ok(message) => Ok(Quote::new(seq, message.from, &message.text)),
        Err((ErrorCode::UnknownMessage, _)) => Err((
            ErrorCode::UnknownReply,
            "replyTo names no message of this room",
        )),
        Err(refused) => Err(refused),
    }
}

/// Answers a client frame with an error frame (counted, and logged at debug).
/// The message a change or a reaction names, as [`Room::target`] found it: there and not
/// deleted, or why not (a storage failure is logged).
fn there(
    target: Result<Option<StoredMessage>, StorageError>,
    room: &str,
) -> Result<StoredMessage, (ErrorCode, &'static str)> {
    match target {
        Err(e) => {
            tracing::error!(room, error = %e, "could not read the message a frame names");
            Err((
                ErrorCode::StorageFailed,
                "the message could not be read from storage; try again later",
            ))
        }
        Ok(None) => Err((ErrorCode::UnknownMessage, "this room has no such message")),
        Ok(Some(target)) if target.deleted => {
            Err((ErrorCode::MessageDeleted, "that message was deleted"))
        }
        Ok(Some(target)) => Ok(target),
    }
}

fn refuse(
    hub: &Hub,
    outbox: &Outbox,
    code: ErrorCode,
    message: &str,
    room: Option<&str>,
    id: Option<&str>,
) {
    tracing::debug!(code = code.as_str(), message, "refused a frame");
    hub.metrics().refused(code);
    outbox.push(protocol::error_frame(code, message, room, id));
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Reader;
    impl FrameReader for Reader {
        async fn next(&mut self) -> Inbound {
            std::future::pending().await
        }
    }
    struct Writer;
    impl FrameWriter for Writer {
        async fn send(&mut self, _batch: &[Outbound]) -> io::Result<()> {
            Ok(())
        }
        async fn close(&mut self, _code: CloseCode) {}
    }

    /// Every idle connection holds its session's future: what is awaited once (a join, a
    /// webhook, identifying it, its last words) is boxed, so that it is not part of it.
    /// The figure was 1768 bytes before they were; past this bound, look for an await
    /// that inlined a large future. 1056 bytes before the room budgets, 1160 with them
    /// (the seat pointer, as an argument, a local and a field: each value a future keeps
    /// costs it more than its own size).
    #[tokio::test]
    async fn a_sessions_future_stays_small() {
        let engine = Arc::new(crate::engine::memory::Memory::new(
            crate::engine::Options::for_tests(1),
        ));
        let hub = Hub::new(crate::hub::HubConfig::default(), engine, Arc::default())
            .await
            .unwrap();
        let ctx = SessionContext {
            hub,
            limits: Arc::new(Limits::default()),
            shutdown: CancellationToken::new(),
            drain_window: Duration::ZERO,
            close_grace: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(60),
            auth: Arc::new(Authenticator::new(None, None)),
            senders: Arc::new(SenderKey::new(b"a test's key")),
            on_message: None,
            message_check: None,
            budgets: HolderBudgets::new(256, 120, 1000, 100, 64),
        };
        let seat = ctx.budgets.address_seat(None, None);
        let session = start(&ctx, 1, Transport::WebSocket, None, seat, Reader, Writer);
        let size = std::mem::size_of_val(&session);
        assert!(size <= 1200, "a session's future is {size} bytes");
    }
}
