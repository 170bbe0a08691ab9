//! WebTransport: the client opens one bidirectional stream as soon as the session is ready;
//! frames on it are UTF-8 JSON lines. Datagrams carry frames that may be lost (typing) in
//! both directions.
//!
//! Sessions are accepted on [`PATH`](crate::config::PATH) only (other paths get 404), from
//! allowed origins only (403), up to the connection limit (429). A line longer than
//! `max_frame_bytes` closes the session with [`CloseCode::FrameTooLarge`]: the stream cannot
//! be resynchronized without buffering the oversized line.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tracing::Instrument;
use wtransport::endpoint::IncomingSession;
use wtransport::{Connection, Endpoint, RecvStream, SendStream, VarInt};

use crate::config::PATH;
use crate::hub::Outbound;
use crate::protocol::CloseCode;
use axum::http::{HeaderName, HeaderValue};

use crate::auth::ConnectRequest;
use crate::chat::Shared;
use crate::session::{self, FrameReader, FrameWriter, Inbound};

/// How long a client may take from its first packet to an open stream. Bounds what a
/// half-open handshake can hold.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts sessions until shutdown.
pub(crate) async fn serve(
    endpoint: Arc<Endpoint<wtransport::endpoint::endpoint_side::Server>>,
    shared: Arc<Shared>,
) {
    loop {
        tokio::select! {
            () = shared.session.shutdown.cancelled() => break,
            incoming = endpoint.accept() => {
                let shared2 = shared.clone();
                shared.tracker.spawn(accept(incoming, shared2));
            }
        }
    }
}

async fn accept(incoming: IncomingSession, shared: Arc<Shared>) {
    let peer = incoming.remote_address();
    let request = match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
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
        transport: "webtransport",
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
    if !shared.origins.allows(request.origin()) {
        tracing::info!(%peer, origin = request.origin(), "refused: origin not allowed");
        return request.forbidden().await;
    }
    let Some(permit) = shared.session.hub.try_connect() else {
        tracing::warn!(%peer, "refused: connection limit reached");
        return request.too_many_requests().await;
    };
    let Ok(connection) = request.accept().await else {
        return;
    };
    let stream = tokio::select! {
        stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, connection.accept_bi()) => stream,
        () = shared.session.shutdown.cancelled() => return,
    };
    let Ok(Ok((send, recv))) = stream else {
        connection.close(
            VarInt::from_u32(CloseCode::ProtocolError.code().into()),
            b"no stream",
        );
        return;
    };
    let id = shared.session.hub.next_id();
    let span = tracing::info_span!("session", id, transport = "webtransport", %peer);
    let reader = WtReader {
        recv,
        connection: connection.clone(),
        buf: BytesMut::new(),
        scanned: 0,
        max_frame: shared.session.limits.max_frame_bytes,
    };
    let writer = WtWriter {
        send,
        connection,
        pending: Vec::new(),
    };
    let request = shared.session.auth.is_some().then_some(connect);
    // A task of its own: this one's size is that of its largest state, the handshake, and
    // a session would carry that for its whole life.
    let tracker = shared.tracker.clone();
    tracker.spawn(
        async move {
            let _permit = permit;
            session::start(&shared.session, id, request, reader, writer).await;
        }
        .instrument(span),
    );
}

struct WtReader {
    recv: RecvStream,
    connection: Connection,
    /// Bytes read but not yet returned as lines. Allocated on first read, so an idle
    /// session holds none.
    buf: BytesMut,
    /// How much of `buf` is known to hold no `\n`.
    scanned: usize,
    max_frame: usize,
}

impl FrameReader for WtReader {
    async fn next(&mut self) -> Inbound {
        loop {
            if let Some(pos) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                // One read may bring a whole oversized line at once: check its length, not
                // only the length of what is still unterminated.
                if self.scanned + pos > self.max_frame {
                    return Inbound::Fatal(CloseCode::FrameTooLarge);
                }
                let mut line = self.buf.split_to(self.scanned + pos + 1);
                line.truncate(line.len() - 1);
                self.scanned = 0;
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Inbound::Frame(line.freeze());
            }
            self.scanned = self.buf.len();
            if self.buf.len() > self.max_frame {
                return Inbound::Fatal(CloseCode::FrameTooLarge);
            }
            self.buf.reserve(1024);
            // Both are cancel-safe: a read either happened (and is in `buf`) or did not.
            tokio::select! {
                read = self.recv.read_buf(&mut self.buf) => match read {
                    Ok(0) | Err(_) => return Inbound::Closed,
                    Ok(_) => {}
                },
                datagram = self.connection.receive_datagram() => match datagram {
                    Ok(datagram) => return Inbound::Frame(datagram.payload()),
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
            // Ephemeral frames go as datagrams (without the `\n`); one too large for a
            // datagram takes the stream instead.
            if out.ephemeral
                && self
                    .connection
                    .send_datagram(&out.frame[..out.frame.len() - 1])
                    .is_ok()
            {
                continue;
            }
            chunk.extend_from_slice(&out.frame);
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
        let _ = self.send.finish().await;
        self.connection.close(
            VarInt::from_u32(code.code().into()),
            code.reason().as_bytes(),
        );
    }
}
