//! The WebSocket fallback: one text message is one frame.
//!
//! The upgrade is an ordinary axum handler (so a host application mounts it like any
//! route). Reading uses tungstenite. Writing does not: every server frame is already encoded
//! (and known to be UTF-8) once for all its recipients, so this file only puts a header in
//! front of each and writes a whole batch in one call — no per-recipient UTF-8 check, and no
//! write buffer left allocated on an idle connection.
//!
//! Oversized messages and invalid UTF-8 break WebSocket framing itself, so they close the
//! connection ([`CloseCode::FrameTooLarge`], [`CloseCode::ProtocolError`]); everything else
//! is answered by the session.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{self, Poll};

use axum::Extension;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Error as WsError, Message};

use super::{Context, detached, shown};
use crate::auth::{ConnectRequest, Transport};
use crate::protocol::CloseCode;
use crate::queue::{Kind, Outbound};
use crate::session::{self, FrameReader, FrameWriter, Inbound};

type Upgraded = TokioIo<hyper::upgrade::Upgraded>;

/// The WebSocket fallback: checks the handshake, the origin and the connection limit, then
/// answers 101 and runs the session on the upgraded connection.
pub(crate) async fn upgrade(
    State(ctx): State<Arc<Context>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    mut request: Request,
) -> Response {
    let headers = request.headers();
    let Some(accept) = handshake_accept(request.method(), headers) else {
        return (
            StatusCode::UPGRADE_REQUIRED,
            [(header::SEC_WEBSOCKET_VERSION, "13")],
            "a WebSocket upgrade (version 13) is expected here",
        )
            .into_response();
    };
    // A header that is not visible ASCII can match no allowed origin.
    let origin = headers
        .get(header::ORIGIN)
        .map(|o| o.to_str().unwrap_or("\u{0}").to_string());
    let peer = peer.map(|Extension(ConnectInfo(addr))| addr);
    // Without the peer's address (a host that serves without connect info) there is no
    // per-address limit; the total one still holds.
    let client = peer.map(|addr| ctx.client_address(addr.ip(), headers));
    let admitted = match ctx.admit(origin.as_deref(), client) {
        Ok(admitted) => Ok(admitted),
        // A browser cannot read a refused upgrade's status: upgraded, it is told `busy`.
        Err(refused) if refused.is_busy() => Err(refused),
        Err(refused) => return refused.into_response(),
    };
    // What the host's authentication sees, copied out of the request: the request's own
    // headers share hyper's whole read buffer (16 KiB), which must not live as long as the
    // connection. Nothing is kept when the host does not authenticate.
    let identifies = admitted.is_ok() && ctx.session.auth.identifies();
    let connect = identifies.then(|| ConnectRequest {
        transport: Transport::WebSocket,
        path: request.uri().path().to_string(),
        query: request.uri().query().unwrap_or_default().to_string(),
        origin,
        headers: detached(headers),
    });
    let upgrading = hyper::upgrade::on(&mut request);
    drop(request);
    let config = WebSocketConfig::default()
        .read_buffer_size(ctx.ws_read_buffer)
        .max_message_size(Some(ctx.session.limits.max_frame_bytes))
        .max_frame_size(Some(ctx.session.limits.max_frame_bytes));
    let id = ctx.session.hub.next_id();
    let span = tracing::info_span!("session", id, transport = "websocket", peer = %shown(peer));
    let tracker = ctx.tracker.clone();
    tracker.spawn(
        async move {
            let upgraded = match upgrading.await {
                Ok(upgraded) => TokioIo::new(upgraded),
                Err(e) => return tracing::debug!(error = %e, "upgrade failed"),
            };
            let (read, write) = tokio::io::split(upgraded);
            let stream =
                WebSocketStream::from_raw_socket(ReadOnly(read), Role::Server, Some(config)).await;
            let reader = WsReader { stream };
            let writer = WsWriter {
                io: write,
                pending: Bytes::new(),
            };
            let mut admitted = match admitted {
                Ok(admitted) => admitted,
                Err(refused) => return ctx.refuse_busy(refused, reader, writer).await,
            };
            session::start(
                &ctx.session,
                id,
                Transport::WebSocket,
                connect.map(Box::new),
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
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    response
}

/// Checks that `headers` ask for a WebSocket (RFC 6455, section 4.2.1) and returns the
/// `Sec-WebSocket-Accept` answer.
fn handshake_accept(method: &Method, headers: &HeaderMap) -> Option<HeaderValue> {
    let has_token = |name: HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if method != Method::GET
        || !has_token(header::CONNECTION, "upgrade")
        || !has_token(header::UPGRADE, "websocket")
        || headers.get(header::SEC_WEBSOCKET_VERSION)? != "13"
    {
        return None;
    }
    let key = headers.get(header::SEC_WEBSOCKET_KEY)?;
    let mut digest = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    digest.update(key.as_bytes());
    digest.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = base64::engine::general_purpose::STANDARD.encode(digest.finish());
    HeaderValue::from_str(&accept).ok()
}

/// The read half, as tungstenite wants a whole stream: what tungstenite would write on its
/// own (pong and close replies) is dropped — the session writes its own close, and answers
/// pings through the connection's queue, in order with everything else it writes.
struct ReadOnly(ReadHalf<Upgraded>);

impl AsyncRead for ReadOnly {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for ReadOnly {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut task::Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut task::Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut task::Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

struct WsReader {
    stream: WebSocketStream<ReadOnly>,
}

impl FrameReader for WsReader {
    async fn next(&mut self) -> Inbound {
        loop {
            return match self.stream.next().await {
                Some(Ok(Message::Text(text))) => Inbound::Frame(Bytes::from(text)),
                Some(Ok(Message::Binary(_))) => Inbound::Binary,
                Some(Ok(Message::Ping(payload))) => Inbound::Ping(payload),
                Some(Ok(Message::Pong(_))) => Inbound::Alive,
                Some(Ok(Message::Frame(_))) => continue,
                Some(Ok(Message::Close(_))) | None => Inbound::Closed,
                Some(Err(WsError::Capacity(_))) => Inbound::Fatal(CloseCode::FrameTooLarge),
                Some(Err(WsError::Utf8(_) | WsError::Protocol(_))) => {
                    Inbound::Fatal(CloseCode::ProtocolError)
                }
                Some(Err(_)) => Inbound::Closed,
            };
        }
    }
}

struct WsWriter {
    io: WriteHalf<Upgraded>,
    /// Encoded frames not yet written, and how much of them was. Kept here, not in the
    /// future, so that a cancelled write resumes exactly where it stopped.
    pending: Bytes,
}

/// The header of an unmasked server frame with FIN set: opcode, then the payload length in
/// 7, 7+16 or 7+64 bits.
fn put_header(out: &mut BytesMut, opcode: u8, len: usize) {
    out.put_u8(0x80 | opcode);
    if len < 126 {
        out.put_u8(len as u8);
    } else if len <= u16::MAX as usize {
        out.put_u8(126);
        out.put_u16(len as u16);
    } else {
        out.put_u8(127);
        out.put_u64(len as u64);
    }
}

/// A batch as WebSocket frames: each protocol frame, without its `\n`, as one text message;
/// each Pong with its ping's payload.
fn put_batch(out: &mut BytesMut, batch: &[Outbound]) {
    for frame in batch {
        let (opcode, payload) = match frame.kind {
            Kind::Frame | Kind::Ephemeral => (0x1, &frame.frame[..frame.frame.len() - 1]),
            Kind::Pong => (0xA, &frame.frame[..]),
        };
        put_header(out, opcode, payload.len());
        out.put_slice(payload);
    }
}

/// A Close frame: the code, then its reason (RFC 6455, section 5.5.1).
fn put_close(out: &mut BytesMut, code: CloseCode) {
    let reason = code.reason().as_bytes();
    put_header(out, 0x8, 2 + reason.len());
    out.put_u16(code.code());
    out.put_slice(reason);
}

impl WsWriter {
    /// Appends frames to what is pending, then writes it all.
    async fn write(&mut self, frames: impl FnOnce(&mut BytesMut)) -> io::Result<()> {
        // One buffer per batch, freed once written: one copy of each small frame into it
        // is cheaper than handing the kernel two tiny slices per frame, and an idle
        // connection keeps no buffer at all.
        let mut buf = BytesMut::with_capacity(self.pending.len() + 4096);
        buf.put_slice(&self.pending);
        frames(&mut buf);
        self.pending = buf.freeze();
        while !self.pending.is_empty() {
            let n = self.io.write(&self.pending).await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.pending.advance(n);
        }
        self.pending = Bytes::new();
        Ok(())
    }
}

impl FrameWriter for WsWriter {
    async fn send(&mut self, batch: &[Outbound]) -> io::Result<()> {
        self.write(|buf| put_batch(buf, batch)).await
    }

    async fn close(&mut self, code: CloseCode) {
        if self.write(|buf| put_close(buf, code)).await.is_ok() {
            let _ = self.io.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Read, Write};

    use proptest::prelude::*;
    use tungstenite::error::ProtocolError;
    use tungstenite::protocol::WebSocket;
    use tungstenite::protocol::frame::FrameHeader;
    use tungstenite::protocol::frame::coding::OpCode;

    use crate::protocol::{ServerFrame, encode};

    #[test]
    fn headers_encode_the_three_length_forms() {
        let header = |len| {
            let mut out = BytesMut::new();
            put_header(&mut out, 0x1, len);
            out.to_vec()
        };
        assert_eq!(header(5), [0x81, 5]);
        assert_eq!(header(125), [0x81, 125]);
        assert_eq!(header(126), [0x81, 126, 0, 126]);
        assert_eq!(header(65535), [0x81, 126, 0xff, 0xff]);
        assert_eq!(header(65536), [0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }

    #[test]
    fn the_accept_key_is_the_rfc_example() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "keep-alive, Upgrade".parse().unwrap());
        headers.insert(header::UPGRADE, "websocket".parse().unwrap());
        headers.insert(header::SEC_WEBSOCKET_VERSION, "13".parse().unwrap());
        headers.insert(
            header::SEC_WEBSOCKET_KEY,
            "dGhlIHNhbXBsZSBub25jZQ==".parse().unwrap(),
        );
        assert_eq!(
            handshake_accept(&Method::GET, &headers).unwrap(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert!(handshake_accept(&Method::POST, &headers).is_none());
        headers.insert(header::SEC_WEBSOCKET_VERSION, "8".parse().unwrap());
        assert!(handshake_accept(&Method::GET, &headers).is_none());
    }

    /// What a server wrote, as a client reads it; what the client writes back (its answer
    /// to a Close) goes nowhere.
    struct FromServer(Cursor<Vec<u8>>);

    impl Read for FromServer {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.read(buf)
        }
    }

    impl Write for FromServer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Payload lengths on both sides of every boundary between the three length forms, and
    /// any other a buffer can have (an allocation holds at most `isize::MAX` bytes).
    fn lengths() -> impl Strategy<Value = usize> {
        let max = isize::MAX as usize;
        prop_oneof![0..=130usize, 65_530..=65_540usize, 0..=max, max - 2..=max]
    }

    /// One frame as the hub queues it: a room message (sized across the 7- and 16-bit
    /// length forms), a typing notice, or a Pong carrying a ping's payload (a control
    /// frame's payload is at most 125 bytes: tungstenite refuses longer pings).
    fn outbound() -> impl Strategy<Value = Outbound> {
        let message = (
            any::<String>(),
            any::<String>(),
            prop_oneof![20 => 0..300usize, 1 => 65_400..65_700usize],
            any::<u64>(),
            proptest::option::of(any::<String>()),
        )
            .prop_map(|(room, from, padding, seq, id)| {
                let text = format!("{from}{}", "x".repeat(padding));
                let frame = encode(&ServerFrame::Message {
                    room: &room,
                    seq,
                    from: &from,
                    sender: None,
                    reply_to: None,
                    text: &text,
                    time: seq / 3,
                    edited: None,
                    id: id.as_deref(),
                    reactions: &[],
                    mentions: &[],
                });
                Outbound::new(frame, Kind::Frame)
            });
        let typing = (any::<String>(), any::<String>()).prop_map(|(room, from)| {
            let frame = encode(&ServerFrame::Typing {
                room: &room,
                from: &from,
            });
            Outbound::new(frame, Kind::Ephemeral)
        });
        let pong = prop::collection::vec(any::<u8>(), 0..=125)
            .prop_map(|payload| Outbound::new(Bytes::from(payload), Kind::Pong));
        prop_oneof![3 => message, 1 => typing, 1 => pong]
    }

    /// Header values as a client might send them: any bytes a header value may hold
    /// (visible ASCII, spaces and tabs, and bytes above 0x7f, which are not text).
    fn header_values() -> impl Strategy<Value = HeaderValue> {
        prop::collection::vec(any::<u8>(), 0..40).prop_map(|bytes| {
            let bytes: Vec<u8> = bytes
                .into_iter()
                .map(|b| {
                    if b < 0x20 && b != b'\t' || b == 0x7f {
                        b' '
                    } else {
                        b
                    }
                })
                .collect();
            HeaderValue::from_bytes(&bytes).expect("no control characters")
        })
    }

    /// A header's lines: lists of tokens, among them the ones that matter (in any case,
    /// with spaces), or any values.
    fn header_lines(tokens: &'static [&'static str]) -> impl Strategy<Value = Vec<HeaderValue>> {
        let value = prop_oneof![
            3 => prop::collection::vec(prop::sample::select(tokens), 1..4).prop_map(|tokens| {
                HeaderValue::from_str(&tokens.join(",")).expect("visible ASCII")
            }),
            1 => header_values(),
        ];
        prop::collection::vec(value, 0..3)
    }

    const CLOSE_CODES: [CloseCode; 9] = [
        CloseCode::Normal,
        CloseCode::Shutdown,
        CloseCode::TooSlow,
        CloseCode::Reconnect,
        CloseCode::IdleTimeout,
        CloseCode::ProtocolError,
        CloseCode::Unauthorized,
        CloseCode::Kicked,
        CloseCode::FrameTooLarge,
    ];

    proptest! {
        #![proptest_config(crate::fuzz_config(256))]

        /// tungstenite reads back every header: FIN, no reserved bits, no mask, the opcode
        /// and the length; RFC 6455 section 5.2's rules besides (the shortest length form,
        /// the 64-bit form's top bit clear), which tungstenite does not check.
        #[test]
        fn fuzz_headers_read_back(opcode in 0u8..=0xF, len in lengths()) {
            let mut out = BytesMut::new();
            put_header(&mut out, opcode, len);
            let shortest = match len {
                0..=125 => 2,
                126..=65_535 => 4,
                _ => 10,
            };
            prop_assert_eq!(out.len(), shortest, "{:02x?}", &out[..]);
            if shortest == 10 {
                prop_assert_eq!(out[2] & 0x80, 0, "the 64-bit length's top bit is clear");
            }
            let mut cursor = Cursor::new(&out[..]);
            match FrameHeader::parse(&mut cursor) {
                Ok(Some((header, length))) => {
                    prop_assert!(header.is_final);
                    prop_assert!(!header.rsv1 && !header.rsv2 && !header.rsv3);
                    prop_assert_eq!(header.opcode, OpCode::from(opcode));
                    prop_assert_eq!(header.mask, None, "a server does not mask");
                    prop_assert_eq!(length, len as u64);
                    prop_assert_eq!(cursor.position() as usize, out.len());
                }
                // The reserved opcodes, which wtchat never sends: still read from the
                // right bits.
                Err(tungstenite::Error::Protocol(ProtocolError::InvalidOpcode(read))) => {
                    prop_assert!(matches!(opcode, 3..=7 | 11..=15), "{opcode} refused");
                    prop_assert_eq!(read, opcode);
                }
                other => prop_assert!(false, "{opcode} {len}: {other:?}"),
            }
        }

        /// Any upgrade request: no panic; an answer exactly when the request asks for a
        /// WebSocket, version 13, with a key; and then tungstenite's answer to that key.
        #[test]
        fn fuzz_handshakes_are_answered_as_tungstenite_would(
            post in prop::bool::weighted(0.2),
            connection in header_lines(&["Upgrade", "upgrade", " UPGRADE ", "keep-alive", "upgrade2"]),
            upgrade in header_lines(&["websocket", "WebSocket", "h2c", "websockets"]),
            version in prop_oneof![
                3 => Just(vec![HeaderValue::from_static("13")]),
                1 => header_lines(&["13", "8", "13 "]),
            ],
            key in prop::option::weighted(0.8, header_values()),
        ) {
            let method = if post { Method::POST } else { Method::GET };
            let mut headers = HeaderMap::new();
            for (name, values) in [
                (header::CONNECTION, connection),
                (header::UPGRADE, upgrade),
                (header::SEC_WEBSOCKET_VERSION, version),
            ] {
                for value in values {
                    headers.append(name.clone(), value);
                }
            }
            if let Some(key) = &key {
                headers.insert(header::SEC_WEBSOCKET_KEY, key.clone());
            }
            let has = |name: HeaderName, token: &str| {
                headers.get_all(name).iter().any(|value| {
                    let text = value.to_str().unwrap_or_default();
                    text.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))
                })
            };
            let asks = !post
                && has(header::CONNECTION, "upgrade")
                && has(header::UPGRADE, "websocket")
                && headers.get(header::SEC_WEBSOCKET_VERSION).is_some_and(|v| v == "13")
                && key.is_some();
            let want = key
                .filter(|_| asks)
                .map(|key| tungstenite::handshake::derive_accept_key(key.as_bytes()));
            let got = handshake_accept(&method, &headers);
            prop_assert_eq!(got.as_ref().map(|v| v.to_str().unwrap()), want.as_deref());
        }

        /// Batches written the way `WsWriter::send` writes them, then a close the way
        /// `WsWriter::close` writes it, read by a real client: the same messages, in order,
        /// and the close code and reason.
        #[test]
        fn fuzz_batches_read_back_by_a_client(
            batches in prop::collection::vec(prop::collection::vec(outbound(), 0..6), 1..4),
            close in prop::sample::select(&CLOSE_CODES[..]),
        ) {
            let mut out = BytesMut::new();
            for batch in &batches {
                put_batch(&mut out, batch);
            }
            put_close(&mut out, close);
            let mut client =
                WebSocket::from_raw_socket(FromServer(Cursor::new(out.to_vec())), Role::Client, None);
            for sent in batches.iter().flatten() {
                let want = match sent.kind {
                    Kind::Frame | Kind::Ephemeral => {
                        let text = std::str::from_utf8(&sent.frame).unwrap();
                        Message::text(text.strip_suffix('\n').unwrap())
                    }
                    Kind::Pong => Message::Pong(sent.frame.clone()),
                };
                prop_assert_eq!(client.read().unwrap(), want);
            }
            match client.read().unwrap() {
                Message::Close(Some(frame)) => {
                    prop_assert_eq!(u16::from(frame.code), close.code());
                    prop_assert_eq!(frame.reason.as_str(), close.reason());
                }
                other => prop_assert!(false, "expected a Close, got {other:?}"),
            }
            prop_assert!(client.read().is_err(), "nothing after the Close");
        }
    }
}
