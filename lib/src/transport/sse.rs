//! Server-Sent Events: for networks that block UDP and break WebSocket upgrades. The
//! server streams frames as a `text/event-stream` (`GET /wtchat/sse`); the client sends
//! frames with `POST /wtchat/sse/SESSION`, one frame per line.
//!
//! The stream's first event is a `session` frame naming where to post:
//! `{"type":"session","post":"/wtchat/sse/ID"}`. The id is 128 random bits, and a post
//! must come from the origin the stream was opened from.
//!
//! Every `joined` and `message` event carries an SSE id that says where the connection is:
//! each room it is in with its epoch and last sequence number, its resume key and name. A
//! browser's `EventSource` that reconnects sends it back (`Last-Event-ID`), and the new
//! stream — on whichever node it reaches — joins those rooms again from there, before
//! anything else: nothing lost, nothing repeated.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::{Context, Refused, detached};
use crate::PATH;
use crate::auth::{ConnectRequest, Transport, random_bytes};
use crate::hub::{Kind, Outbound};
use crate::protocol::CloseCode;
use crate::session::{self, FrameReader, FrameWriter, Inbound};

/// Frames a session may have waiting from its posts; past it a post is answered 429.
const INBOX: usize = 256;
/// A comment line this often keeps proxies from closing a quiet stream.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Most frames in one post.
const MAX_FRAMES_PER_POST: usize = 64;

/// The streams open here, by session id: where their posts go.
#[derive(Default)]
pub(crate) struct Sessions {
    open: Mutex<HashMap<String, Posts>>,
}

struct Posts {
    frames: mpsc::Sender<Inbound>,
    origin: Option<String>,
}

/// Where a connection is, as its events' ids carry it.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Position {
    /// room → (epoch, last seq).
    #[serde(rename = "r")]
    rooms: BTreeMap<String, (u64, u64)>,
    #[serde(rename = "k", skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(rename = "n", skip_serializing_if = "Option::is_none")]
    name: Option<String>,
}

impl Position {
    fn encode(&self) -> String {
        let json = serde_json::to_vec(self).expect("serializable");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    fn decode(id: &str) -> Option<Position> {
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(id.trim())
            .ok()?;
        serde_json::from_slice(&json).ok()
    }

    /// Follows a frame the connection is sent; whether it moved the position.
    fn follow(&mut self, frame: &[u8]) -> bool {
        #[derive(Deserialize)]
        struct Seen<'a> {
            #[serde(rename = "type")]
            kind: &'a str,
            room: Option<String>,
            epoch: Option<u64>,
            seq: Option<u64>,
            key: Option<String>,
            you: Option<You>,
        }
        #[derive(Deserialize)]
        struct You {
            name: String,
        }
        // Only frames that move a room's position are read.
        if !(frame.starts_with(br#"{"type":"joined""#)
            || frame.starts_with(br#"{"type":"message""#))
        {
            return false;
        }
        let Ok(seen) = serde_json::from_slice::<Seen<'_>>(frame) else {
            return false;
        };
        let (Some(room), Some(seq)) = (seen.room, seen.seq) else {
            return false;
        };
        match seen.kind {
            "joined" => {
                self.rooms.insert(room, (seen.epoch.unwrap_or(0), seq));
                if seen.key.is_some() {
                    self.key = seen.key;
                }
                if let Some(you) = seen.you {
                    self.name = Some(you.name);
                }
            }
            _ => match self.rooms.get_mut(&room) {
                Some(position) => position.1 = position.1.max(seq),
                None => return false,
            },
        }
        true
    }

    /// The joins that take the connection back to where it was.
    fn joins(&self) -> Vec<Bytes> {
        self.rooms
            .iter()
            .map(|(room, (epoch, seq))| {
                let mut join = serde_json::json!({
                    "type": "join", "room": room, "since": seq, "epoch": epoch,
                });
                if let Some(name) = &self.name {
                    join["name"] = name.as_str().into();
                }
                if let Some(key) = &self.key {
                    join["key"] = key.as_str().into();
                }
                Bytes::from(join.to_string())
            })
            .collect()
    }
}

/// `GET /wtchat/sse`: opens a stream (admitted and authenticated as a WebSocket is).
pub(crate) async fn open(
    State(ctx): State<Arc<Context>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    request: Request,
) -> Response {
    let headers = request.headers();
    let origin = headers
        .get(header::ORIGIN)
        .map(|o| o.to_str().unwrap_or("\u{0}").to_string());
    let peer = peer.map(|Extension(ConnectInfo(addr))| addr);
    let client = peer.map(|addr| ctx.client_address(addr.ip(), headers));
    let admitted = match ctx.admit(origin.as_deref(), client) {
        Ok(admitted) => admitted,
        Err(Refused::Origin) => {
            return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
        }
        Err(Refused::Address) => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                "too many connections from your address",
            )
                .into_response();
        }
        Err(Refused::ShuttingDown | Refused::Full) => {
            return (StatusCode::SERVICE_UNAVAILABLE, "too many connections").into_response();
        }
    };
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(Position::decode)
        .unwrap_or_default();
    let connect = ctx.session.auth.identifies().then(|| ConnectRequest {
        transport: Transport::Sse,
        path: request.uri().path().to_string(),
        query: request.uri().query().unwrap_or_default().to_string(),
        origin: origin.clone(),
        headers: detached(headers),
    });
    let sid = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<16>());
    let (posts, inbox) = mpsc::channel(INBOX);
    let (events, stream) = mpsc::channel::<Bytes>(16);
    let (gone, client_gone) = oneshot::channel::<()>();
    // The joins of a resumed stream come first, before any post.
    for join in resume.joins() {
        let _ = posts.try_send(Inbound::Frame(join));
    }
    ctx.sse.open.lock().unwrap().insert(
        sid.clone(),
        Posts {
            frames: posts,
            origin,
        },
    );
    let hello =
        format!("retry: 1000\ndata: {{\"type\":\"session\",\"post\":\"{PATH}/sse/{sid}\"}}\n\n");
    let id = ctx.session.hub.next_id();
    let span = tracing::info_span!("session", id, transport = "sse", peer = ?peer);
    let tracker = ctx.tracker.clone();
    let session_ctx = ctx.clone();
    let session_sid = sid.clone();
    tracker.spawn(
        async move {
            let _admitted = admitted;
            let reader = SseReader { inbox, client_gone };
            let writer = SseWriter {
                events,
                position: resume,
            };
            session::start(&session_ctx.session, id, connect, reader, writer).await;
            session_ctx.sse.open.lock().unwrap().remove(&session_sid);
        }
        .instrument(span),
    );
    let body = futures_util::stream::unfold(
        (stream, Some(gone), Some(Bytes::from(hello))),
        |(mut stream, gone, first)| async move {
            if let Some(first) = first {
                return Some((Ok::<_, Infallible>(first), (stream, gone, None)));
            }
            let next = tokio::time::timeout(KEEPALIVE, stream.recv()).await;
            match next {
                Ok(Some(chunk)) => Some((Ok(chunk), (stream, gone, None))),
                Ok(None) => None,
                Err(_) => Some((Ok(Bytes::from_static(b":\n\n")), (stream, gone, None))),
            }
        },
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-store")
        // nginx buffers responses unless told not to.
        .header("x-accel-buffering", "no")
        .body(Body::from_stream(body))
        .expect("valid response")
}

/// `POST /wtchat/sse/ID`: frames for a stream's session, one per line.
pub(crate) async fn post(
    State(ctx): State<Arc<Context>>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let origin = headers
        .get(header::ORIGIN)
        .map(|o| o.to_str().unwrap_or("\u{0}").to_string());
    let frames = {
        let open = ctx.sse.open.lock().unwrap();
        let Some(posts) = open.get(&sid) else {
            return (StatusCode::NOT_FOUND, "no such session: open a new stream").into_response();
        };
        if posts.origin != origin {
            return (StatusCode::FORBIDDEN, "not the stream's origin").into_response();
        }
        posts.frames.clone()
    };
    let max = ctx.session.limits.max_frame_bytes;
    let lines: Vec<&[u8]> = body
        .split(|b| *b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .filter(|line| !line.is_empty())
        .collect();
    if lines.len() > MAX_FRAMES_PER_POST {
        return (StatusCode::PAYLOAD_TOO_LARGE, "too many frames in one post").into_response();
    }
    if frames.capacity() < lines.len() {
        return (StatusCode::TOO_MANY_REQUESTS, "too many frames waiting").into_response();
    }
    for line in lines {
        // As on a WebSocket: a frame over the limit closes the connection (4409).
        let inbound = if line.len() > max {
            Inbound::Fatal(CloseCode::FrameTooLarge)
        } else {
            Inbound::Frame(body.slice_ref(line))
        };
        if frames.try_send(inbound).is_err() {
            return (StatusCode::TOO_MANY_REQUESTS, "too many frames waiting").into_response();
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

struct SseReader {
    inbox: mpsc::Receiver<Inbound>,
    client_gone: oneshot::Receiver<()>,
}

impl FrameReader for SseReader {
    async fn next(&mut self) -> Inbound {
        tokio::select! {
            frame = self.inbox.recv() => frame.unwrap_or(Inbound::Closed),
            // The response stream was dropped: the client went away.
            _ = &mut self.client_gone => Inbound::Closed,
        }
    }
}

struct SseWriter {
    events: mpsc::Sender<Bytes>,
    position: Position,
}

impl FrameWriter for SseWriter {
    async fn send(&mut self, batch: &[Outbound]) -> io::Result<()> {
        let mut chunk = Vec::new();
        for outbound in batch {
            if outbound.kind == Kind::Pong {
                continue;
            }
            let frame = outbound
                .frame
                .strip_suffix(b"\n")
                .unwrap_or(&outbound.frame);
            if self.position.follow(frame) {
                chunk.extend_from_slice(b"id: ");
                chunk.extend_from_slice(self.position.encode().as_bytes());
                chunk.push(b'\n');
            }
            chunk.extend_from_slice(b"data: ");
            chunk.extend_from_slice(frame);
            chunk.extend_from_slice(b"\n\n");
        }
        self.events
            .send(Bytes::from(chunk))
            .await
            .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))
    }

    async fn close(&mut self, _code: CloseCode) {
        // The `bye` frame said why; the stream ends when the writer is dropped. A browser's
        // `EventSource` would reconnect by itself: the client closes it on `bye`.
    }
}
