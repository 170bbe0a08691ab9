//! WebTransport: the client opens one bidirectional stream as soon as the session is ready;
//! frames on it are UTF-8 JSON lines. Datagrams carry frames that may be lost (typing) in
//! both directions.
//!
//! Sessions are accepted on [`PATH`](crate::config::PATH) only (other paths get 404), from
//! allowed origins only (403), up to the connection limit (429). A line longer than
//! `max_frame_bytes` closes the session with [`CloseCode::FrameTooLarge`]: the stream cannot
//! be resynchronized without buffering the oversized line.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderName, HeaderValue};
use bytes::{Bytes, BytesMut};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::AsyncReadExt;
use tracing::Instrument;
use wtransport::endpoint::{IncomingSession, endpoint_side};
use wtransport::{Connection, Endpoint, Identity, RecvStream, SendStream, ServerConfig, VarInt};

use super::lines::{Line, LineSplitter};
use super::{Context, Refused};
use crate::auth::{ConnectRequest, Transport};
use crate::config::PATH;
use crate::protocol::CloseCode;
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
}

impl FrameWriter for WtWriter {
    async fn send(&mut self, batch: &[Outbound]) -> io::Result<()> {
        self.pending.retain(|chunk| !chunk.is_empty());
        // The batch as one chunk: one copy of each small frame costs less than quinn
        // tracking, framing and acknowledging every frame as a chunk of its own.
        let mut chunk = BytesMut::with_capacity(batch.iter().map(|o| o.frame.len()).sum());
        for out in batch {
            match out.kind {
                // Ephemeral frames go as datagrams (without the `\n`); one too large for a
                // datagram takes the stream instead.
                Kind::Ephemeral
                    if self
                        .connection
                        .send_datagram(&out.frame[..out.frame.len() - 1])
                        .is_ok() => {}
                Kind::Frame | Kind::Ephemeral => chunk.extend_from_slice(&out.frame),
                // WebTransport has no pings of its own (QUIC keeps itself alive).
                Kind::Pong => {}
            }
        }
        self.pending.push(chunk.freeze());
        self.send
            .quic_stream_mut()
            .write_all_chunks(&mut self.pending)
            .await
            .map_err(io::Error::other)?;
        self.pending.clear();
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
