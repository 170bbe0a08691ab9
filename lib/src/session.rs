//! One client connection's state machine, whatever its transport.
//!
//! A transport adapts its connection to two small traits — [`FrameReader`] (the next client
//! frame) and [`FrameWriter`] (write a batch of server frames, close with a code) — and calls
//! [`start`]. The session decodes frames, checks them against the limits, applies them to the
//! [hub](crate::hub), and writes whatever the hub queued for it in batches. Everything a
//! client can get wrong is answered here, once, for both transports.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::auth::{Authenticator, ConnectRequest, Identity, Transport, random_bytes};
use crate::config::{MessageEvent, MessageHook};
use crate::hub::{
    Hub, Kind, Member, Outbound, Outbox, Resume, Room, Sender, SenderKey, message_frame,
};
use crate::protocol::{
    self, ClientFrame, CloseCode, ErrorCode, HISTORY_PAGE, Limits, MEMBERS_PAGE, ServerFrame,
};
use crate::throttle::{RateLimit, throttled};
use crate::webhook::{MessageWebhook, Verdict};

/// Frames written per batch: enough to amortize a write call under load, small enough that
/// one busy connection does not hold its worker thread for long.
const BATCH: usize = 256;

/// How long a closing session waits for the client to close its side. Clients answer a
/// close at once; one that does not read is not waited for long.
const LINGER: Duration = Duration::from_secs(1);

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
    /// The host's message webhook, if any: called after `on_message`.
    pub message_webhook: Option<Arc<MessageWebhook>>,
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
    let (outbox, mut inbox, closing) = crate::hub::queue(ctx.hub.config().outbound_queue);
    let mut session = Session {
        id,
        ctx,
        identity,
        outbox,
        rooms: Vec::new(),
        sender: None,
        rate: RateLimit::new(
            f64::from(ctx.limits.frames_per_second),
            f64::from(ctx.limits.frame_burst),
        ),
        new_rooms: RateLimit::new(
            f64::from(ctx.limits.new_rooms_per_minute) / 60.0,
            f64::from(ctx.limits.new_rooms_per_minute),
        ),
    };
    let mut batch = Vec::new();
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
            inbound = reader.next() => match inbound {
                Inbound::Frame(bytes) => {
                    last_heard = Instant::now();
                    session.handle(&bytes).await;
                }
                Inbound::Datagram(bytes) => {
                    last_heard = Instant::now();
                    session.handle_datagram(&bytes).await;
                }
                Inbound::Ping(payload) => {
                    last_heard = Instant::now();
                    // Pings count against the rate like any frame; past it, no answer.
                    if session.rate.allow() {
                        session.outbox.push_pong(payload);
                    }
                }
                Inbound::Alive => last_heard = Instant::now(),
                Inbound::Binary => {
                    last_heard = Instant::now();
                    session.error(
                        ErrorCode::BinaryUnsupported,
                        "binary messages are not part of the protocol; send JSON text",
                        None,
                        None,
                    );
                }
                Inbound::Fatal(code) => break Some(code),
                Inbound::Closed => break None,
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
        let goodbye = goodbye(&mut reader, &mut writer, batch, code, None);
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
) {
    batch.push(Outbound {
        frame: protocol::encode(&ServerFrame::Bye {
            code: code.code(),
            reason: code.reason(),
            reconnect: code.reconnect(),
            message,
        }),
        kind: Kind::Frame,
    });
    if writer.send(&batch).await.is_ok() {
        writer.close(code).await;
        let client_closed =
            async { while !matches!(reader.next().await, Inbound::Closed | Inbound::Fatal(_)) {} };
        let _ = tokio::time::timeout(LINGER, client_closed).await;
    }
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
}

struct Session<'a> {
    id: u64,
    ctx: &'a SessionContext,
    /// Who the host says this connection is; None when the host does not authenticate.
    identity: Option<Identity>,
    /// This connection's own queue: replies go through it so that they keep their order
    /// with the room messages around them (a message, then its ack).
    outbox: Outbox,
    rooms: Vec<Joined>,
    /// Who sends this connection's messages, once it joined a room.
    sender: Option<Arc<Sender>>,
    rate: RateLimit,
    /// Rooms this connection may still create.
    new_rooms: RateLimit,
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

impl Session<'_> {
    /// A frame from a WebTransport datagram: only `typing` travels there (a datagram may
    /// be lost, and nothing that needs an answer may be), under the same size limit as
    /// any frame. Its boundaries are intact, so an oversized one is refused, not fatal.
    async fn handle_datagram(&mut self, bytes: &[u8]) {
        if bytes.len() > self.ctx.limits.max_frame_bytes {
            if self.rate.allow() {
                self.error(
                    ErrorCode::FrameTooLarge,
                    "a datagram is larger than max_frame_bytes",
                    None,
                    None,
                );
            }
            return;
        }
        match protocol::decode(bytes) {
            Ok(ClientFrame::Typing { .. }) | Err(_) => Box::pin(self.handle(bytes)).await,
            Ok(frame) => {
                if !self.rate.allow() {
                    return;
                }
                let (room, id) = frame.room_and_id();
                self.error(
                    ErrorCode::InvalidFrame,
                    "only typing travels in a datagram; send this frame on the stream",
                    room,
                    id,
                );
            }
        }
    }

    async fn handle(&mut self, bytes: &[u8]) {
        let decoded = protocol::decode(bytes);
        // Every frame counts against the rate, even one that does not decode.
        if !self.rate.allow() {
            let (room, id) = match &decoded {
                Ok(frame) => frame.room_and_id(),
                Err(_) => (None, None),
            };
            return self.error(
                ErrorCode::RateLimited,
                "too many frames per second; this one was dropped",
                room,
                id,
            );
        }
        let frame = match decoded {
            Ok(frame) => frame,
            Err(e) => return self.error(e.code, &e.message, None, None),
        };
        match frame {
            ClientFrame::Join {
                room,
                name,
                since,
                epoch,
                key,
            } => {
                // Boxed: a join is rare, and its state inline would be part of every
                // session's future for its whole life (idle connections pay for it).
                Box::pin(self.join(
                    &room,
                    name.as_deref(),
                    key.as_deref(),
                    Resume { since, epoch },
                ))
                .await
            }
            ClientFrame::Leave { room } => self.leave(&room),
            ClientFrame::Send { room, text, id } => {
                let id = id.as_deref();
                if self.ctx.message_webhook.is_some() {
                    // Boxed: the backend's answer is awaited, and that state inline would
                    // be part of every session's future, webhook or not.
                    Box::pin(self.send_through_webhook(&room, &text, id)).await;
                } else if let Some(joined) = self.accepts(&room, &text, id) {
                    self.publish(joined, &text, id);
                }
            }
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
            } => self.history(&room, before, limit),
            ClientFrame::Members { room, after, limit } => match self.joined(&room) {
                Some(j) => {
                    let limit = limit.map_or(MEMBERS_PAGE, |n| (n as usize).clamp(1, MEMBERS_PAGE));
                    self.outbox.push(j.room.members_frame(after, limit));
                }
                None => self.not_joined(&room, None),
            },
        }
    }

    fn joined(&self, room: &str) -> Option<&Joined> {
        self.rooms.iter().find(|j| j.room.name() == room)
    }

    async fn join(&mut self, room: &str, name: Option<&str>, key: Option<&str>, resume: Resume) {
        let limits = &self.ctx.limits;
        if let Err((code, msg)) = limits.check_room(room) {
            return self.error(code, msg, Some(room), None);
        }
        // With an identity the host names the user, whatever the client says.
        let name = match &self.identity {
            Some(identity) => {
                if !identity.rooms.allows(room) {
                    return self.error(
                        ErrorCode::RoomForbidden,
                        "your identity does not allow this room",
                        Some(room),
                        None,
                    );
                }
                if self.ctx.hub.banned(room, &identity.user) {
                    return self.error(
                        ErrorCode::Banned,
                        "you are banned from this room for now",
                        Some(room),
                        None,
                    );
                }
                Arc::from(identity.name.as_str())
            }
            None => Arc::from(name.unwrap_or("")),
        };
        if let Err((code, msg)) = limits.check_name(&name) {
            return self.error(code, msg, Some(room), None);
        }
        if self.joined(room).is_some() {
            return self.error(
                ErrorCode::AlreadyJoined,
                "already in this room",
                Some(room),
                None,
            );
        }
        if self.rooms.len() >= limits.max_rooms_per_connection {
            return self.error(
                ErrorCode::TooManyRooms,
                "this connection is in max_rooms_per_connection rooms already",
                Some(room),
                None,
            );
        }
        // Creating a room costs the server memory: at most so many per connection.
        if self.ctx.hub.room(room).is_none() && !self.new_rooms.allow() {
            return self.error(
                ErrorCode::RateLimited,
                "this connection created too many rooms; wait a minute or join existing ones",
                Some(room),
                None,
            );
        }
        let sender = match self.sender(key) {
            Ok(sender) => sender,
            Err(msg) => return self.error(ErrorCode::InvalidFrame, msg, Some(room), None),
        };
        let me = Member {
            id: self.id,
            name,
            user: self.identity.as_ref().map(|i| i.user.as_str().into()),
            sender,
            outbox: self.outbox.clone(),
        };
        match self.ctx.hub.join(room, me.clone(), resume).await {
            Ok(room) => {
                self.ctx.hub.metrics().joined();
                self.rooms.push(Joined { room, me });
            }
            Err(ErrorCode::StorageFailed) => self.error(
                ErrorCode::StorageFailed,
                "the room could not be read from storage; try again later",
                Some(room),
                None,
            ),
            Err(code) => self.error(code, "the server holds too many rooms", Some(room), None),
        }
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

    /// The room a `send` goes to, if the message passes the limits and the host's message
    /// hook; else the sender is told why, and None.
    fn accepts(&self, room: &str, text: &str, id: Option<&str>) -> Option<&Joined> {
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
            };
            if let Err(refusal) = hook(&event) {
                self.error(ErrorCode::Rejected, refusal.message(), Some(room), id);
                return None;
            }
        }
        Some(joined)
    }

    /// A `send` when the host has a message webhook: accepted here, then by the backend
    /// (which may rewrite it). This session reads and writes nothing while the backend
    /// decides (at most the webhook timeout): its messages keep their order, and other
    /// sessions go on.
    async fn send_through_webhook(&self, room: &str, text: &str, id: Option<&str>) {
        let (Some(joined), Some(webhook)) =
            (self.accepts(room, text, id), &self.ctx.message_webhook)
        else {
            return;
        };
        let verdict = webhook.check(room, &joined.me, text, id).await;
        match &verdict {
            Verdict::Accept => self.publish(joined, text, id),
            Verdict::Rewrite(rewritten) => self.publish(joined, rewritten, id),
            Verdict::Reject(reason) => self.error(ErrorCode::Rejected, reason, Some(room), id),
        }
    }

    fn publish(&self, joined: &Joined, text: &str, id: Option<&str>) {
        joined.room.publish(&joined.me, text, id);
        self.ctx.hub.keep_history_budget();
    }

    /// Answers `history` with one page of a joined room's older messages.
    fn history(&self, room: &str, before: Option<u64>, limit: Option<u32>) {
        let Some(joined) = self.joined(room) else {
            return self.not_joined(room, None);
        };
        let limit = limit.map_or(HISTORY_PAGE, |n| (n as usize).clamp(1, HISTORY_PAGE));
        match joined.room.page(before, limit) {
            Ok(page) => {
                let frames: Vec<Bytes> = page
                    .messages
                    .iter()
                    .map(|m| message_frame(room, m))
                    .collect();
                self.outbox
                    .push(protocol::encode_history(room, &frames, page.more));
            }
            Err(e) => {
                tracing::error!(room, error = %e, "could not read history");
                self.error(
                    ErrorCode::StorageFailed,
                    "history could not be read from storage; try again later",
                    Some(room),
                    None,
                );
            }
        }
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
        tracing::debug!(code = code.as_str(), message, "refused a frame");
        self.ctx.hub.metrics().refused(code);
        self.outbox
            .push(protocol::error_frame(code, message, room, id));
    }
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
    /// that inlined a large future.
    #[test]
    fn a_sessions_future_stays_small() {
        let hub = Hub::new(
            crate::hub::HubConfig::default(),
            crate::engine::Store::Memory,
            Arc::default(),
        )
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
            message_webhook: None,
        };
        let session = start(&ctx, 1, Transport::WebSocket, None, Reader, Writer);
        let size = std::mem::size_of_val(&session);
        assert!(size <= 1100, "a session's future is {size} bytes");
    }
}
