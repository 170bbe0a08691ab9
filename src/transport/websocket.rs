//! The WebSocket fallback: one text message is one frame.
//!
//! axum performs the upgrade (so a host application mounts it like any route); this file
//! turns the upgraded socket into a session. Oversized messages and invalid UTF-8 break
//! WebSocket framing itself, so they close the connection ([`CloseCode::FrameTooLarge`],
//! [`CloseCode::ProtocolError`]); everything else is answered by the session.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tracing::Instrument;

use crate::auth::ConnectRequest;
use crate::chat::Shared;
use crate::hub::Outbound;
use crate::protocol::CloseCode;
use crate::session::{self, FrameReader, FrameWriter, Inbound};

/// The WebSocket fallback: checks the origin and the connection limit before upgrading.
pub(crate) async fn upgrade(
    State(shared): State<Arc<Shared>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    ws: WebSocketUpgrade,
) -> Response {
    // A header that is not visible ASCII can match no allowed origin.
    let origin = headers
        .get(header::ORIGIN)
        .map(|o| o.to_str().unwrap_or("\u{0}").to_string());
    if !shared.origins.allows(origin.as_deref()) {
        tracing::info!(?origin, "websocket refused: origin not allowed");
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    if shared.session.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    let Some(permit) = shared.session.hub.try_connect() else {
        tracing::warn!("websocket refused: connection limit reached");
        return (StatusCode::SERVICE_UNAVAILABLE, "too many connections").into_response();
    };
    // What the host's authentication sees, copied out of the request: the request's own
    // headers share hyper's whole read buffer (16 KiB), which must not live as long as the
    // connection. Nothing is kept when the host does not authenticate.
    let request = shared.session.auth.is_some().then(|| ConnectRequest {
        transport: "websocket",
        path: uri.path().to_string(),
        query: uri.query().unwrap_or_default().to_string(),
        origin: origin.clone(),
        headers: detached(&headers),
    });
    drop((uri, headers));
    let max_frame = shared.session.limits.max_frame_bytes;
    let peer = peer.map(|Extension(ConnectInfo(addr))| addr);
    let tracker = shared.tracker.clone();
    ws.read_buffer_size(shared.ws_read_buffer)
        .write_buffer_size(shared.ws_write_buffer)
        .max_message_size(max_frame)
        .max_frame_size(max_frame)
        .on_upgrade(move |socket| {
            let id = shared.session.hub.next_id();
            let span = tracing::info_span!("session", id, transport = "websocket", peer = ?peer);
            tracker.track_future(
                async move {
                    let _permit = permit;
                    let (sink, stream) = socket.split();
                    let (reader, writer) = (WsReader { stream }, WsWriter { sink });
                    session::start(&shared.session, id, request, reader, writer).await;
                }
                .instrument(span),
            )
        })
}

/// A copy of `headers` that shares no memory with the request it came from.
fn detached(headers: &HeaderMap) -> HeaderMap {
    headers
        .iter()
        .filter_map(|(name, value)| {
            Some((
                axum::http::HeaderName::from_bytes(name.as_str().as_bytes()).ok()?,
                axum::http::HeaderValue::from_bytes(value.as_bytes()).ok()?,
            ))
        })
        .collect()
}

struct WsReader {
    stream: SplitStream<WebSocket>,
}

struct WsWriter {
    sink: SplitSink<WebSocket, Message>,
}

impl FrameReader for WsReader {
    async fn next(&mut self) -> Inbound {
        loop {
            return match self.stream.next().await {
                Some(Ok(Message::Text(text))) => Inbound::Frame(Bytes::from(text)),
                Some(Ok(Message::Binary(_))) => Inbound::Binary,
                // tungstenite answers pings itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(_))) | None => Inbound::Closed,
                Some(Err(e)) => classify(e),
            };
        }
    }
}

/// Maps a read error to what the session should do about it.
fn classify(error: axum::Error) -> Inbound {
    match error
        .into_inner()
        .downcast::<tungstenite::Error>()
        .map(|e| *e)
    {
        Ok(tungstenite::Error::Capacity(_)) => Inbound::Fatal(CloseCode::FrameTooLarge),
        Ok(tungstenite::Error::Utf8(_) | tungstenite::Error::Protocol(_)) => {
            Inbound::Fatal(CloseCode::ProtocolError)
        }
        _ => Inbound::Closed,
    }
}

impl FrameWriter for WsWriter {
    async fn send(&mut self, batch: &[Outbound]) -> io::Result<()> {
        for out in batch {
            // The frame without its `\n`: a slice of the shared bytes, no copy.
            let text = Utf8Bytes::try_from(out.frame.slice(..out.frame.len() - 1))
                .map_err(io::Error::other)?;
            self.sink
                .feed(Message::Text(text))
                .await
                .map_err(io::Error::other)?;
        }
        self.sink.flush().await.map_err(io::Error::other)
    }

    async fn close(&mut self, code: CloseCode) {
        let frame = CloseFrame {
            code: code.code(),
            reason: Utf8Bytes::from_static(code.reason()),
        };
        let _ = self.sink.send(Message::Close(Some(frame))).await;
    }
}
