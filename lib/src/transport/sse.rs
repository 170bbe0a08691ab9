//! Server-Sent Events: for networks that block UDP and break WebSocket upgrades. The
//! server streams frames as a `text/event-stream` (`GET /wtchat/sse`); the client sends
//! frames with `POST /wtchat/sse/SESSION`, one frame per line.
//!
//! The stream's first event is a `session` frame naming where to post and the secret that
//! authorises the posts: `{"type":"session","post":"/wtchat/sse/ID","secret":"…"}`. A post
//! bears it in the `Wtchat-Secret` header and comes from the origin the stream was opened
//! from ([`posted::Owner`]).
//!
//! Every `joined`, `message` and `left` event carries an SSE id that says where the
//! connection is: each room it is in with its epoch and last sequence number, its resume
//! key and name. A browser's `EventSource` that reconnects sends it back
//! (`Last-Event-ID`), and the new stream — on whichever node it reaches — joins those rooms
//! again from there, before anything else: nothing lost, nothing repeated.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::{Context, posted};
use crate::auth::Transport;
use crate::protocol::CloseCode;
use crate::queue::{Kind, Outbound};
use crate::session::{FrameWriter, Inbound};
use crate::throttle::Unupgraded;

/// A comment line this often keeps proxies from closing a quiet stream.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// Where a connection is, as its events' ids carry it.
#[derive(Debug, Default, Clone)]
struct Position {
    /// room → (epoch, last seq).
    rooms: BTreeMap<String, (u64, u64)>,
    key: Option<String>,
    name: Option<String>,
    /// The encoded part of the id that messages do not move (see [`Fixed`]); None when a
    /// join or a leave changed it.
    fixed: Option<String>,
}

/// What an id says besides the rooms' numbers: the rooms (in order) with their epochs, the
/// key and the name. JSON in base64url; the numbers follow it in decimal, one per room,
/// each after a `.` (base64url has none): `FIXED.12.7`. Only the numbers are written for
/// each event, not the whole position for each recipient.
#[derive(Serialize, Deserialize)]
struct Fixed {
    #[serde(rename = "r")]
    rooms: Vec<(String, u64)>,
    #[serde(rename = "k", skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(rename = "n", skip_serializing_if = "Option::is_none")]
    name: Option<String>,
}

impl Position {
    /// Writes the id into `out` (the event being built): no string of its own per event.
    fn encode_into(&mut self, out: &mut Vec<u8>) {
        let fixed = self.fixed.get_or_insert_with(|| {
            let fixed = Fixed {
                rooms: self
                    .rooms
                    .iter()
                    .map(|(room, (epoch, _))| (room.clone(), *epoch))
                    .collect(),
                key: self.key.clone(),
                name: self.name.clone(),
            };
            let json = serde_json::to_vec(&fixed).expect("serializable");
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        });
        out.extend_from_slice(fixed.as_bytes());
        for (_, seq) in self.rooms.values() {
            let _ = write!(out, ".{seq}");
        }
    }

    fn decode(id: &str) -> Option<Position> {
        let mut parts = id.trim().split('.');
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts.next()?)
            .ok()?;
        let fixed: Fixed = serde_json::from_slice(&json).ok()?;
        let seqs: Vec<u64> = parts.map(str::parse).collect::<Result<_, _>>().ok()?;
        if seqs.len() != fixed.rooms.len() {
            return None;
        }
        Some(Position {
            rooms: fixed
                .rooms
                .into_iter()
                .zip(seqs)
                .map(|((room, epoch), seq)| (room, (epoch, seq)))
                .collect(),
            key: fixed.key,
            name: fixed.name,
            fixed: None,
        })
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
        // A message or an update, the frames every member gets: their room and number are
        // read from where the protocol's encoder puts them (room names hold no quote or
        // escape), not parsed for each recipient.
        if let Some((room, seq)) = record_position(frame) {
            return match self.rooms.get_mut(room) {
                Some(position) => {
                    position.1 = position.1.max(seq);
                    true
                }
                None => false,
            };
        }
        // A room left is no longer where the connection is.
        if let Some(room) = left_room(frame) {
            self.fixed = None;
            return self.rooms.remove(room).is_some();
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
                self.fixed = None;
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

/// The room of a `left` frame as `protocol::encode` writes it (`{"type":"left","room":"R"}`).
fn left_room(frame: &[u8]) -> Option<&str> {
    let rest = frame.strip_prefix(br#"{"type":"left","room":""#)?;
    let end = rest.iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&rest[..end]).ok()
}

/// The room and number of a `message` frame as `protocol::encode` writes it
/// (`{"type":"message","room":"R","seq":N,…`), or of an `update` (the change's own number:
/// `{"type":"update","room":"R","seq":N,"at":M,…`); None for any other frame or shape.
fn record_position(frame: &[u8]) -> Option<(&str, u64)> {
    fn number(bytes: &[u8]) -> Option<(u64, &[u8])> {
        let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
        let n = std::str::from_utf8(&bytes[..digits]).ok()?.parse().ok()?;
        Some((n, &bytes[digits..]))
    }
    let (update, rest) = match frame.strip_prefix(br#"{"type":"message","room":""#) {
        Some(rest) => (false, rest),
        None => (true, frame.strip_prefix(br#"{"type":"update","room":""#)?),
    };
    let end = rest.iter().position(|&b| b == b'"')?;
    let room = std::str::from_utf8(&rest[..end]).ok()?;
    let (seq, rest) = number(rest[end..].strip_prefix(br#"","seq":"#)?)?;
    if !update {
        return Some((room, seq));
    }
    let (at, _) = number(rest.strip_prefix(br#","at":"#)?)?;
    Some((room, at))
}

/// `GET /wtchat/sse`: opens a stream (admitted and authenticated as a WebSocket is).
pub(crate) async fn open(
    State(ctx): State<Arc<Context>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    request: Request,
) -> Response {
    let answer = open_stream(&ctx, peer, &request);
    posted::readable(&ctx, request.headers(), answer)
}

fn open_stream(
    ctx: &Arc<Context>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    request: &Request,
) -> Response {
    let place = request.extensions().get::<Arc<Unupgraded>>();
    let peer_addr = peer.as_ref().map(|Extension(ConnectInfo(addr))| *addr);
    // Held while the stream is open: it lives in the body's state.
    let stream_place = match ctx.hold_stream(peer_addr, request.headers()) {
        Ok(held) => held,
        Err(refused) => return refused.into_response(),
    };
    let opened = match posted::open(ctx, peer, request, Transport::Sse) {
        Ok(opened) => opened,
        Err(refused) => return refused.into_response(),
    };
    // Streaming now: its place among the connections not yet upgraded goes back, and the
    // connection closes when the stream ends (it never takes a place again).
    if let Some(place) = place {
        place.release();
    }
    let resume = request
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(Position::decode)
        .unwrap_or_default();
    // The joins of a resumed stream come first, before any post.
    for join in resume.joins() {
        let _ = opened.first.try_send(Inbound::Frame(join));
    }
    let hello = format!(
        "retry: 1000\ndata: {{\"type\":\"session\",\"post\":\"{}/sse/{}\",\"secret\":\"{}\"}}\n\n",
        opened.routes_at,
        opened.id,
        opened.owner.secret()
    );
    let (events, stream) = mpsc::channel::<Bytes>(16);
    let (alive, gone) = oneshot::channel::<()>();
    let writer = SseWriter {
        events,
        position: resume,
    };
    // The response stream is dropped when the client goes away: so is `alive`.
    posted::run(
        ctx,
        opened,
        Transport::Sse,
        async {
            let _ = gone.await;
        },
        writer,
    );
    // `held`: the alive signal and the address's stream place, kept as long as the body.
    let body = futures_util::stream::unfold(
        (stream, (alive, stream_place), Some(Bytes::from(hello))),
        |(mut stream, held, first)| async move {
            if let Some(first) = first {
                return Some((Ok::<_, Infallible>(first), (stream, held, None)));
            }
            match tokio::time::timeout(KEEPALIVE, stream.recv()).await {
                Ok(Some(chunk)) => Some((Ok(chunk), (stream, held, None))),
                Ok(None) => None,
                Err(_) => Some((Ok(Bytes::from_static(b":\n\n")), (stream, held, None))),
            }
        },
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-store")
        // nginx buffers responses unless told not to.
        .header("x-accel-buffering", "no")
        .header(header::CONNECTION, "close")
        .body(Body::from_stream(body))
        .expect("valid response")
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
                self.position.encode_into(&mut chunk);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{self, ServerFrame};

    #[test]
    fn an_id_says_where_the_connection_is_and_reads_back() {
        let mut position = Position::default();
        for frame in [
            r#"{"type":"joined","room":"b","epoch":5,"seq":3,"key":"K","you":{"name":"ann"}}"#,
            r#"{"type":"joined","room":"a","epoch":6,"seq":0}"#,
            r#"{"type":"message","room":"b","seq":4,"from":"x","text":"hi","time":1}"#,
            r#"{"type":"joined","room":"c","epoch":7,"seq":9}"#,
            r#"{"type":"left","room":"c"}"#,
        ] {
            assert!(position.follow(frame.as_bytes()), "{frame}");
        }
        let mut id = Vec::new();
        position.encode_into(&mut id);
        let id = String::from_utf8(id).unwrap();
        assert!(
            id.ends_with(".0.4"),
            "rooms in order, their numbers in decimal: {id}"
        );
        let back = Position::decode(&id).unwrap();
        assert_eq!(back.rooms, position.rooms);
        assert_eq!(
            (back.key.as_deref(), back.name.as_deref()),
            (Some("K"), Some("ann"))
        );
        assert!(
            Position::decode(&format!("{id}.1")).is_none(),
            "a number too many"
        );
        assert!(Position::decode("not base64!.1").is_none());
    }

    #[test]
    fn a_message_or_update_frames_position_is_read_where_the_encoder_puts_it() {
        let frame = protocol::encode(&ServerFrame::Message {
            room: "lobby.1:a@b",
            seq: 42,
            from: "ann \"the\" \u{1F600}",
            sender: Some("x"),
            reply_to: None,
            text: r#"{"type":"message","room":"other","seq":7}"#,
            time: 1,
            edited: None,
            id: None,
            reactions: &[],
            mentions: &[],
        });
        let frame = frame.strip_suffix(b"\n").unwrap();
        assert_eq!(record_position(frame), Some(("lobby.1:a@b", 42)));
        let update = protocol::encode(&ServerFrame::Update {
            room: "r",
            seq: 7,
            at: 12,
            text: Some(r#"","at":99"#),
            edited: Some(1),
            deleted: false,
            reactions: None,
        });
        let update = update.strip_suffix(b"\n").unwrap();
        assert_eq!(
            record_position(update),
            Some(("r", 12)),
            "the change's number"
        );
        assert_eq!(
            record_position(br#"{"type":"ack","room":"r","seq":1}"#),
            None
        );
    }
}
