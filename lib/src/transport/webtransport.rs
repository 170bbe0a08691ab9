//! WebTransport: the client opens one bidirectional stream as soon as the session is ready;
//! frames on it are UTF-8 JSON lines. Datagrams carry frames that may be lost (typing) in
//! both directions. A client whose `hello` says protocol 4 or later gets each room's frames
//! on a unidirectional stream of that room's own, opened by the server with the room's first
//! frame (its `joined`) and finished after its `left`: a packet lost from one room's stream
//! holds back no other room (see [`RoomStreams`]).
//!
//! Sessions are accepted on [`PATH`](crate::config::PATH) only (other paths get 404), from
//! allowed origins only (403), up to the connection limit (429). A line longer than
//! `max_frame_bytes` closes the session with [`CloseCode::FrameTooLarge`]: the stream cannot
//! be resynchronized without buffering the oversized line.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};
use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::AsyncReadExt;
use tracing::Instrument;
use wtransport::endpoint::{IncomingSession, endpoint_side};
use wtransport::{Connection, Endpoint, Identity, RecvStream, SendStream, ServerConfig, VarInt};

use super::lines::{Line, LineSplitter};
use super::{Context, Refused};
use crate::auth::{ConnectRequest, Transport};
use crate::config::PATH;
use crate::protocol::{self, CloseCode};
use crate::queue::{Kind, Outbound};
use crate::session::{self, FrameReader, FrameWriter, Inbound};

/// How long a client may take from its first packet to an open stream. Bounds what a
/// half-open handshake can hold.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// UDP socket buffers for the endpoint. With the kernel's 208 KiB default a busy endpoint
/// drops datagrams (and QUIC then retransmits); 4 MiB stopped the drops at 1000 sessions
/// here (see NOTES.md). The kernel caps it at `net.core.rmem_max`.
const UDP_BUFFER: usize = 4 << 20;

/// QUIC keep-alive: browsers time out an idle QUIC connection after about 30 s; a quiet chat
/// room must not lose its members.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// How long a closing session waits, its `bye` delivered, for the client to close first (it
/// does once it has read `bye`): a CONNECTION_CLOSE from us could make it drop the `bye`
/// unread.
const BYE_READ: Duration = Duration::from_secs(1);

/// QUIC idle timeout: how long a vanished client holds its session.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Streams a client may open at once, per direction. A chat session needs two bidirectional
/// streams (the CONNECT request and the chat stream) and a few unidirectional ones (HTTP/3
/// control and QPACK). quinn reserves state for every stream the peer may open, so quinn's
/// default of 100 + 100 costs memory on every idle session for nothing.
const MAX_STREAMS: u32 = 8;

/// Receive windows sized for chat frames (at most 16 KiB each), not bulk transfer: the
/// client's side of a conversation is small.
const STREAM_RECEIVE_WINDOW: u32 = 64 * 1024;
const RECEIVE_WINDOW: u32 = 256 * 1024;
const DATAGRAM_RECEIVE_BUFFER: usize = 64 * 1024;

/// The endpoint, bound to `addr`, serving `identity`.
pub(crate) fn endpoint(
    identity: Identity,
    addr: SocketAddr,
) -> io::Result<Endpoint<endpoint_side::Server>> {
    Endpoint::server(quic_config(identity, Some(addr))?)
}

/// Makes new sessions use `identity` (a renewed certificate); open ones are untouched.
pub(crate) fn reload(
    endpoint: &Endpoint<endpoint_side::Server>,
    identity: Identity,
) -> io::Result<()> {
    endpoint.reload_config(quic_config(identity, None)?, false)
}

/// The endpoint's configuration. `bind` None: for a reload, which keeps the socket it has.
fn quic_config(identity: Identity, bind: Option<SocketAddr>) -> io::Result<ServerConfig> {
    let mut transport = wtransport::config::QuicTransportConfig::default();
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    transport.congestion_controller_factory(Arc::new(
        wtransport::quinn::congestion::BbrConfig::default(),
    ));
    transport.max_concurrent_bidi_streams(MAX_STREAMS.into());
    transport.max_concurrent_uni_streams(MAX_STREAMS.into());
    transport.stream_receive_window(STREAM_RECEIVE_WINDOW.into());
    transport.receive_window(RECEIVE_WINDOW.into());
    transport.datagram_receive_buffer_size(Some(DATAGRAM_RECEIVE_BUFFER));
    transport.max_idle_timeout(Some(
        IDLE_TIMEOUT
            .try_into()
            .expect("30 s is a valid idle timeout"),
    ));
    let builder = ServerConfig::builder();
    let builder = match bind {
        Some(addr) => builder.with_bind_socket(udp_socket(addr)?),
        None => builder.with_bind_default(0),
    };
    Ok(builder.with_custom_transport(identity, transport).build())
}

/// A UDP socket for the endpoint: dual-stack when bound to an IPv6 address (Chromium dials
/// `::1` for `localhost`), with buffers sized for many sessions.
fn udp_socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    // Best effort: a smaller buffer still works, only less well under load.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Accepts sessions until shutdown.
pub(crate) async fn serve(endpoint: Arc<Endpoint<endpoint_side::Server>>, ctx: Arc<Context>) {
    loop {
        tokio::select! {
            () = ctx.session.shutdown.cancelled() => break,
            incoming = endpoint.accept() => {
                ctx.tracker.spawn(accept(incoming, ctx.clone()));
            }
        }
    }
}

async fn accept(incoming: IncomingSession, ctx: Arc<Context>) {
    let peer = incoming.remote_address();
    // A handshake under way when the server stops is dropped: shutdown waits for tasks,
    // and a client may open a connection it never completes.
    let handshake = tokio::select! {
        handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming) => handshake,
        () = ctx.session.shutdown.cancelled() => return,
    };
    let request = match handshake {
        Ok(Ok(request)) => request,
        Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "handshake failed"),
        Err(_) => return tracing::debug!(%peer, "handshake timed out"),
    };
    // The path includes the query string.
    let (path, query) = request
        .path()
        .split_once('?')
        .unwrap_or((request.path(), ""));
    let connect = ConnectRequest {
        transport: Transport::WebTransport,
        path: path.to_string(),
        query: query.to_string(),
        origin: request.origin().map(str::to_string),
        headers: request
            .headers()
            .iter()
            .filter_map(|(k, v)| {
                Some((
                    HeaderName::from_bytes(k.as_bytes()).ok()?,
                    HeaderValue::from_str(v).ok()?,
                ))
            })
            .collect(),
    };
    let path = connect.path.as_str();
    if path != PATH {
        tracing::debug!(%peer, path, "refused: unknown path");
        return request.not_found().await;
    }
    let admitted = match ctx.admit(request.origin(), Some(peer.ip())) {
        Ok(admitted) => Ok(admitted),
        Err(Refused::Origin) => return request.forbidden().await,
        // A browser cannot read a refused CONNECT's status: accepted, it is told `busy`.
        Err(refused) if refused.is_busy() => Err(refused),
        // WebTransport has no "unavailable": a shutting-down server answers 429.
        Err(_) => return request.too_many_requests().await,
    };
    let Ok(connection) = request.accept().await else {
        return;
    };
    let stream = tokio::select! {
        stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, connection.accept_bi()) => stream,
        () = ctx.session.shutdown.cancelled() => return,
    };
    let Ok(Ok((send, recv))) = stream else {
        connection.close(
            VarInt::from_u32(CloseCode::ProtocolError.code().into()),
            b"no stream",
        );
        return;
    };
    let id = ctx.session.hub.next_id();
    let span = tracing::info_span!("session", id, transport = "webtransport", %peer);
    let reader = WtReader {
        recv,
        connection: connection.clone(),
        lines: LineSplitter::new(ctx.session.limits.max_frame_bytes),
    };
    let writer = WtWriter {
        send,
        connection,
        pending: Vec::new(),
        rooms: None,
    };
    let request = (admitted.is_ok() && ctx.session.auth.identifies()).then_some(connect);
    // A task of its own: this one's size is that of its largest state, the handshake, and
    // a session would carry that for its whole life.
    let tracker = ctx.tracker.clone();
    tracker.spawn(
        async move {
            let mut admitted = match admitted {
                Ok(admitted) => admitted,
                Err(refused) => return ctx.refuse_busy(refused, reader, writer).await,
            };
            session::start(
                &ctx.session,
                id,
                Transport::WebTransport,
                request.map(Box::new),
                admitted.seat(&ctx.session.budgets),
                reader,
                writer,
            )
            .await;
            // Its places in the counts, held until the session ended.
            drop(admitted);
        }
        .instrument(span),
    );
}

struct WtReader {
    recv: RecvStream,
    connection: Connection,
    /// The stream's bytes not yet returned, cut into lines.
    lines: LineSplitter,
}

impl FrameReader for WtReader {
    async fn next(&mut self) -> Inbound {
        loop {
            match self.lines.next_line() {
                Line::Frame(line) => return Inbound::Frame(line),
                Line::TooLarge => return Inbound::Fatal(CloseCode::FrameTooLarge),
                Line::NeedMore => {}
            }
            // Both are cancel-safe: a read either happened (and is in the splitter's
            // buffer) or did not.
            tokio::select! {
                read = self.recv.read_buf(self.lines.read_buf()) => match read {
                    Ok(0) | Err(_) => return Inbound::Closed,
                    Ok(_) => {}
                },
                datagram = self.connection.receive_datagram() => match datagram {
                    Ok(datagram) => return Inbound::Datagram(datagram.payload()),
                    Err(_) => return Inbound::Closed,
                },
            }
        }
    }
}

struct WtWriter {
    send: SendStream,
    connection: Connection,
    /// Frames handed to quinn but not fully written yet. quinn consumes them in place, so a
    /// cancelled write leaves exactly the unwritten rest here, never half a line.
    pending: Vec<Bytes>,
    /// Once the client's `hello` was answered with protocol 4 or later: the streams of the
    /// rooms it is in. None before (one stream for everything, as in protocol 3).
    rooms: Option<RoomStreams>,
}

/// Bytes of the session's rooms waiting for streams that could not take them yet, over all
/// its rooms, at most: past it the session's writing waits (its queue then fills, and a
/// client that does not catch up is cut off as too slow, as on one stream).
const ROOM_STREAMS_QUEUED: usize = 4 << 20;

/// A session's room streams. The session's writer writes a room's frames straight into the
/// room's stream: quinn takes them at once unless the stream's window (the client's) or the
/// connection's (unacknowledged data) is full, so a message costs what it costs on one
/// stream. A room whose stream cannot take more (its lost packets not resent yet) gets a task
/// that waits for it with the room's backlog, in order, while the writer goes on with the
/// other rooms: a room that waits holds back only its own frames. quinn sends the streams'
/// data by priority: the fewer bytes a room sent lately, the sooner its frames go (see
/// [`Pace`]), so a busy room's backlog never stands in front of a quiet room's next
/// message, even while the congestion window is full.
struct RoomStreams {
    streams: HashMap<Box<str>, Arc<Mutex<RoomStream>>>,
    queued: Arc<Queued>,
}

/// One room's stream, and what waits for it. Locked for a write that does not wait, never
/// across an `.await`.
struct RoomStream {
    /// The stream, while the writer may write to it; None while a task has it (opening it,
    /// or waiting for it to take the backlog) and once it failed.
    stream: Option<SendStream>,
    /// Frames waiting for the stream, in order. While a task writes them, the writer adds
    /// to them instead of writing, to keep the room's order.
    backlog: VecDeque<Bytes>,
    draining: bool,
    /// The stream failed (the session is ending): the room's frames are dropped.
    failed: bool,
    /// The room was left: the stream is finished once its frames are written.
    finish: bool,
    pace: Pace,
    /// The stream's priority, as last set.
    priority: i32,
}

impl RoomStream {
    /// Sets the stream's priority for `bytes` more (a lock of the connection only when it
    /// changes).
    fn prioritize(&mut self, stream: &SendStream, bytes: usize) {
        let priority = self.pace.priority(bytes);
        if priority != self.priority {
            self.priority = priority;
            stream.set_priority(priority);
        }
    }
}

/// Bytes waiting for the room streams, and what wakes a writer waiting for them to drain.
#[derive(Default)]
struct Queued {
    bytes: AtomicUsize,
    drained: tokio::sync::Notify,
}

impl Queued {
    fn written(&self, bytes: usize) {
        self.bytes.fetch_sub(bytes, Ordering::AcqRel);
        self.drained.notify_waiters();
    }

    /// Resolves once no more than [`ROOM_STREAMS_QUEUED`] bytes wait.
    async fn room(&self) {
        // Most batches find nothing waiting: no waiter to register.
        if self.bytes.load(Ordering::Acquire) <= ROOM_STREAMS_QUEUED {
            return;
        }
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.bytes.load(Ordering::Acquire) <= ROOM_STREAMS_QUEUED {
                return;
            }
            drained.await;
        }
    }
}

impl RoomStreams {
    /// Sends `chunk` (whole frames of `room`) on the room's stream, opening it with the
    /// room's first frame; `last` (it ends with the room's `left`): the stream is finished
    /// after it.
    fn queue(&mut self, connection: &Connection, room: &str, chunk: Bytes, last: bool) {
        let Some(shared) = self.streams.get(room) else {
            // The room's first frames: a task opens its stream and writes them.
            let shared = Arc::new(Mutex::new(RoomStream {
                stream: None,
                backlog: VecDeque::from([chunk.clone()]),
                draining: true,
                failed: false,
                finish: last,
                pace: Pace::new(),
                priority: 0,
            }));
            self.queued.bytes.fetch_add(chunk.len(), Ordering::AcqRel);
            tokio::spawn(drain(
                Some(connection.clone()),
                shared.clone(),
                self.queued.clone(),
            ));
            if !last {
                self.streams.insert(room.into(), shared);
            }
            return;
        };
        let mut room_stream = shared.lock().expect("not poisoned");
        room_stream.finish = last;
        if room_stream.failed {
        } else if room_stream.draining {
            self.queued.bytes.fetch_add(chunk.len(), Ordering::AcqRel);
            room_stream.backlog.push_back(chunk);
        } else {
            let mut stream = room_stream
                .stream
                .take()
                .expect("the writer's while not draining");
            room_stream.prioritize(&stream, chunk.len());
            let mut chunks = [chunk];
            // Whatever quinn takes now, without waiting.
            match stream
                .quic_stream_mut()
                .write_chunks(&mut chunks)
                .now_or_never()
            {
                Some(Err(_)) => room_stream.failed = true,
                Some(Ok(_)) if chunks[0].is_empty() => {
                    if last {
                        let _ = stream.quic_stream_mut().finish();
                    } else {
                        room_stream.stream = Some(stream);
                    }
                }
                // The stream cannot take it all now: a task waits for it with the rest.
                _ => {
                    let [rest] = chunks;
                    self.queued.bytes.fetch_add(rest.len(), Ordering::AcqRel);
                    room_stream.backlog.push_back(rest);
                    room_stream.stream = Some(stream);
                    room_stream.draining = true;
                    tokio::spawn(drain(None, shared.clone(), self.queued.clone()));
                }
            }
        }
        drop(room_stream);
        if last {
            self.streams.remove(room);
        }
    }
}

/// How many bytes a room's stream sent lately (a rate that halves every second it is
/// quiet): its sending priority. quinn sends the streams of higher priority first, and
/// among equals in turn; a room that sends little (a quiet room, a member's own ack) goes
/// before one that sends much, which still shares the rest fairly with its peers.
struct Pace {
    bytes_per_s: f64,
    at: tokio::time::Instant,
}

impl Pace {
    fn new() -> Pace {
        Pace {
            bytes_per_s: 0.0,
            at: tokio::time::Instant::now(),
        }
    }

    /// `bytes` more are being sent now: the stream's priority from now on.
    fn priority(&mut self, bytes: usize) -> i32 {
        let now = tokio::time::Instant::now();
        let seconds = now.duration_since(self.at).as_secs_f64();
        self.at = now;
        self.bytes_per_s = self.bytes_per_s * 0.5f64.powf(seconds) + bytes as f64;
        // Steps of a doubling: rooms within twice each other's rate share a priority.
        -(self.bytes_per_s.max(1.0).log2() as i32)
    }
}

/// Writes a room's backlog, waiting for its stream as long as it takes, then hands the
/// stream back to the session's writer (or finishes it, the room left). `opening`: the
/// session's connection when the room's stream is still to be opened.
async fn drain(opening: Option<Connection>, shared: Arc<Mutex<RoomStream>>, queued: Arc<Queued>) {
    let mut stream = match opening {
        Some(connection) => match connection.open_uni().await {
            Ok(opening) => opening.await.ok(),
            Err(_) => None,
        },
        None => shared.lock().expect("not poisoned").stream.take(),
    };
    loop {
        let chunk = {
            let mut room_stream = shared.lock().expect("not poisoned");
            let Some(open) = &stream else {
                // Failed: nothing of the room is sent any more.
                let dropped = room_stream.backlog.drain(..).map(|c| c.len()).sum();
                room_stream.failed = true;
                room_stream.draining = false;
                drop(room_stream);
                queued.written(dropped);
                return;
            };
            match room_stream.backlog.pop_front() {
                Some(chunk) => {
                    room_stream.prioritize(open, chunk.len());
                    chunk
                }
                None => {
                    room_stream.draining = false;
                    if room_stream.finish {
                        if let Some(mut stream) = stream {
                            let _ = stream.quic_stream_mut().finish();
                        }
                    } else {
                        room_stream.stream = stream;
                    }
                    return;
                }
            }
        };
        let len = chunk.len();
        if let Some(open) = &mut stream
            && open.write_all(&chunk).await.is_err()
        {
            stream = None;
        }
        queued.written(len);
    }
}

/// A batch's frames for one room stream: the room, its frames, and whether they end with
/// its `left` (the stream is finished after them).
type RoomChunk<'a> = (&'a str, Vec<&'a Bytes>, bool);

/// Adds `frame` (about `room`) to the room's chunk of the batch, in order, when it is the
/// room stream's: the room has a stream from before the batch (`had_stream`), or this batch's
/// `joined` opens one. After a `left` the room's next frames begin a chunk (a stream) of
/// their own if they begin with a `joined` again; others (an ack that came after the
/// `left`) are not a room stream's: false, the session's stream takes them.
fn add_to_room<'a>(
    rooms: &mut Vec<RoomChunk<'a>>,
    room: &'a str,
    frame: &'a Bytes,
    had_stream: impl FnOnce() -> bool,
) -> bool {
    let joined = protocol::opens_room_stream(frame);
    let at = match rooms.iter().rposition(|(r, ..)| *r == room) {
        Some(at) if !rooms[at].2 => at,
        Some(_) if !joined => return false,
        None if !joined && !had_stream() => return false,
        _ => {
            rooms.push((room, Vec::new(), false));
            rooms.len() - 1
        }
    };
    rooms[at].1.push(frame);
    rooms[at].2 = protocol::closes_room_stream(frame);
    true
}

/// A room's frames of a batch as one chunk for its stream: a lone frame as it is (shared
/// with the other recipients, no copy), several copied into one (one copy of each small
/// frame costs less than quinn tracking and acknowledging each as a chunk of its own).
fn one_chunk(frames: &[&Bytes]) -> Bytes {
    match frames {
        [frame] => (*frame).clone(),
        frames => {
            let mut chunk = BytesMut::with_capacity(frames.iter().map(|f| f.len()).sum());
            for frame in frames {
                chunk.extend_from_slice(frame);
            }
            chunk.freeze()
        }
    }
}

impl FrameWriter for WtWriter {
    async fn send(&mut self, batch: &[Outbound]) -> io::Result<()> {
        self.pending.retain(|chunk| !chunk.is_empty());
        // The session stream's frames of the batch as one chunk: one copy of each small frame
        // costs less than quinn tracking, framing and acknowledging every frame as a chunk of
        // its own. (Allocated once it has a frame: over protocol 4 most have none.)
        let mut chunk = BytesMut::new();
        // Each room's frames of the batch, as one chunk per room, in the order the rooms came.
        let mut rooms: Vec<RoomChunk> = Vec::new();
        for out in batch {
            match out.kind {
                // Ephemeral frames go as datagrams (without the `\n`); one too large for a
                // datagram takes the stream instead.
                Kind::Ephemeral
                    if self
                        .connection
                        .send_datagram(&out.frame[..out.frame.len() - 1])
                        .is_ok() => {}
                Kind::Frame | Kind::Ephemeral => {
                    // A room has a stream from its `joined` until its `left`; a frame about
                    // a room without one (a refused join, an ack after leaving) goes on the
                    // session's stream.
                    let in_room = match (&self.rooms, protocol::room_stream_of(&out.frame)) {
                        (Some(streams), Some(room)) => {
                            add_to_room(&mut rooms, room, &out.frame, || {
                                streams.streams.contains_key(room)
                            })
                        }
                        _ => false,
                    };
                    if !in_room {
                        if chunk.is_empty() {
                            chunk.reserve(batch.iter().map(|o| o.frame.len()).sum());
                        }
                        chunk.extend_from_slice(&out.frame);
                    }
                    // From the answer to a `hello` of 4 or later on, rooms have streams.
                    if self.rooms.is_none()
                        && protocol::hello_answer(&out.frame)
                            .is_some_and(|v| v >= protocol::ROOM_STREAMS)
                    {
                        self.rooms = Some(RoomStreams {
                            streams: HashMap::new(),
                            queued: Arc::default(),
                        });
                    }
                }
                // WebTransport has no pings of its own (QUIC keeps itself alive).
                Kind::Pong => {}
            }
        }
        if let Some(streams) = &mut self.rooms {
            for (room, frames, last) in rooms {
                streams.queue(&self.connection, room, one_chunk(&frames), last);
            }
        }
        if !chunk.is_empty() {
            self.pending.push(chunk.freeze());
        }
        // Nothing for the session's stream (every frame went to a room's): no write at all,
        // since even an empty one makes quinn queue the stream and send a packet for it.
        if !self.pending.is_empty() {
            self.send
                .quic_stream_mut()
                .write_all_chunks(&mut self.pending)
                .await
                .map_err(io::Error::other)?;
            self.pending.clear();
        }
        if let Some(streams) = &self.rooms {
            streams.queued.room().await;
        }
        Ok(())
    }

    async fn close(&mut self, code: CloseCode) {
        // Once `finish` resolves the peer has every byte, `bye` included; but a
        // CONNECTION_CLOSE arriving before its application read them makes it drop them.
        // A client that closes once it has read `bye` (the browser client does) ends this
        // wait at once; one that does not gets our close, with its code, after BYE_READ.
        let _ = self.send.finish().await;
        let _ = tokio::time::timeout(BYE_READ, self.connection.closed()).await;
        self.connection.close(
            VarInt::from_u32(code.code().into()),
            code.reason().as_bytes(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A room left and joined again within one batch: its `left` ends the old stream's
    /// chunk, an ack between is the session stream's, and the new `joined` and what follows
    /// go to a chunk (a stream) of their own; another room's frames keep theirs; a room
    /// without a stream (a refused join's error) has no chunk.
    #[test]
    fn a_room_joined_again_in_the_same_batch_starts_a_new_chunk() {
        let mut rooms = Vec::new();
        // Rooms a and b have streams from before; c has none.
        let frames: [(&str, &[u8], bool); 7] = [
            ("a", b"{\"type\":\"message\",\"room\":\"a\"}\n", true),
            ("b", b"{\"type\":\"message\",\"room\":\"b\"}\n", true),
            ("a", b"{\"type\":\"left\",\"room\":\"a\"}\n", true),
            ("a", b"{\"type\":\"ack\",\"room\":\"a\"}\n", false),
            ("a", b"{\"type\":\"joined\",\"room\":\"a\"}\n", true),
            ("a", b"{\"type\":\"message\",\"room\":\"a\"}\n", true),
            ("c", b"{\"type\":\"error\",\"room\":\"c\"}\n", false),
        ];
        let frames = frames.map(|(room, frame, taken)| (room, Bytes::from_static(frame), taken));
        for (room, frame, taken) in &frames {
            let had = *room != "c";
            assert_eq!(
                add_to_room(&mut rooms, room, frame, || had),
                *taken,
                "{}",
                String::from_utf8_lossy(frame)
            );
        }
        let chunks: Vec<(&str, usize, bool)> = rooms
            .iter()
            .map(|(room, chunk, last)| (*room, chunk.len(), *last))
            .collect();
        assert_eq!(chunks, [("a", 2, true), ("b", 1, false), ("a", 2, false)]);
        assert!(rooms[2].1[0].starts_with(br#"{"type":"joined""#));
        // A lone frame is handed on as it is; several become one chunk, in order.
        assert_eq!(one_chunk(&rooms[1].1), rooms[1].1[0]);
        assert_eq!(
            one_chunk(&rooms[0].1),
            [&rooms[0].1[0][..], &rooms[0].1[1][..]].concat()
        );
    }
}
