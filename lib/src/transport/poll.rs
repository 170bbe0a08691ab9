//! Long polling: for clients behind proxies that buffer even streaming responses.
//!
//! `POST /wtchat/poll` opens a session (admitted and authenticated as a WebSocket is) and
//! answers `{"type":"session","post":"/wtchat/poll/ID","poll":"/wtchat/poll/ID"}`. The
//! client sends frames with `POST` to `post`, one per line, and fetches them with
//! `GET poll?after=N`: held until there is a frame numbered above `N` (at most
//! [`HOLD`]), then answered with every such frame, `{"next":M,"frames":[…]}`. Frames stay
//! until a poll's `after` says they arrived, so a poll whose answer was lost loses nothing:
//! the next one asks again from the same `after`.
//!
//! A session nobody polls for half the idle timeout (30 s by default) is over: it leaves
//! its rooms.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::Notify;

use super::{Context, posted};
use crate::PATH;
use crate::auth::Transport;
use crate::hub::{Kind, Outbound};
use crate::protocol::CloseCode;
use crate::session::FrameWriter;

/// How long a poll is held when there is nothing to send.
pub(crate) const HOLD: Duration = Duration::from_secs(25);

/// The sessions open for polling, by id.
#[derive(Default)]
pub(crate) struct Polled {
    open: Mutex<std::collections::HashMap<String, Arc<Queue>>>,
}

/// A session's frames, numbered, until a poll acknowledges them.
struct Queue {
    state: Mutex<QueueState>,
    ready: Notify,
    origin: Option<String>,
}

struct QueueState {
    /// (number, frame), oldest first.
    frames: VecDeque<(u64, Bytes)>,
    /// The next frame's number.
    next: u64,
    /// The session ended: after its last frames, polls get 404.
    closed: bool,
    /// Polls in flight, and when the last one ended.
    polling: usize,
    last_poll: Instant,
    /// Most frames kept unacknowledged; past it the client is too slow.
    capacity: usize,
    /// A session not polled for this long (after its last poll ended) is over.
    expiry: Duration,
}

/// `POST /wtchat/poll`: opens a session.
pub(crate) async fn open(
    State(ctx): State<Arc<Context>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    request: Request,
) -> Response {
    let opened = match posted::open(&ctx, peer, &request, Transport::LongPoll) {
        Ok(opened) => opened,
        Err(refused) => return posted::refusal(refused),
    };
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .map(|o| o.to_str().unwrap_or("\u{0}").to_string());
    let queue = Arc::new(Queue {
        state: Mutex::new(QueueState {
            frames: VecDeque::new(),
            next: 1,
            closed: false,
            polling: 0,
            last_poll: Instant::now(),
            capacity: ctx.session.hub.config().outbound_queue,
            expiry: ctx.session.idle_timeout / 2,
        }),
        ready: Notify::new(),
        origin,
    });
    let id = opened.id.clone();
    ctx.polled
        .open
        .lock()
        .unwrap()
        .insert(id.clone(), queue.clone());
    let expired = {
        let (queue, ctx, id) = (queue.clone(), ctx.clone(), id.clone());
        async move {
            while !queue.forgotten() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // Over: later polls get 404, and the client opens a new session.
            ctx.polled.open.lock().unwrap().remove(&id);
        }
    };
    let writer = PollWriter {
        queue,
        polled: ctx.clone(),
        id: id.clone(),
    };
    posted::run(&ctx, opened, Transport::LongPoll, expired, writer);
    let url = format!("{PATH}/poll/{id}");
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(serde_json::json!({"type": "session", "post": url, "poll": url})),
    )
        .into_response()
}

#[derive(serde::Deserialize)]
pub(crate) struct After {
    #[serde(default)]
    after: u64,
}

/// `GET /wtchat/poll/ID?after=N`: the session's frames numbered above `N`, held until there
/// is one (or [`HOLD`] passed).
pub(crate) async fn poll(
    State(ctx): State<Arc<Context>>,
    Path(id): Path<String>,
    Query(After { after }): Query<After>,
    headers: HeaderMap,
) -> Response {
    let origin = headers
        .get(header::ORIGIN)
        .map(|o| o.to_str().unwrap_or("\u{0}").to_string());
    let Some(queue) = ctx.polled.open.lock().unwrap().get(&id).cloned() else {
        return (StatusCode::NOT_FOUND, "no such session: open a new one").into_response();
    };
    if !posted::origin_fits(queue.origin.as_deref(), origin.as_deref(), &ctx.origins) {
        return (StatusCode::FORBIDDEN, "not the session's origin").into_response();
    }
    queue.state.lock().unwrap().polling += 1;
    // Counted until this poll ends, answered or dropped by a client that went away.
    let _polling = Polling(&queue);
    let deadline = tokio::time::Instant::now() + HOLD;
    let answer = loop {
        let ready = queue.ready.notified();
        {
            let mut state = queue.state.lock().unwrap();
            // What the client has: gone for good.
            while state.frames.front().is_some_and(|(n, _)| *n <= after) {
                state.frames.pop_front();
            }
            if state.frames.is_empty() && state.closed {
                break None;
            }
            if !state.frames.is_empty() {
                let next = state.frames.back().map_or(after, |(n, _)| *n);
                let mut body = format!("{{\"next\":{next},\"frames\":[").into_bytes();
                for (i, (_, frame)) in state.frames.iter().enumerate() {
                    if i > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(frame.strip_suffix(b"\n").unwrap_or(frame));
                }
                body.extend_from_slice(b"]}");
                break Some(body);
            }
        }
        tokio::select! {
            () = ready => {}
            () = tokio::time::sleep_until(deadline) => break Some(Vec::new()),
        }
    };
    let Some(mut body) = answer else {
        return (StatusCode::NOT_FOUND, "the session is over").into_response();
    };
    if body.is_empty() {
        body = format!("{{\"next\":{after},\"frames\":[]}}").into_bytes();
    }
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

impl Queue {
    /// Nobody polls: none in flight, and the last ended longer than the expiry ago.
    fn forgotten(&self) -> bool {
        let state = self.state.lock().unwrap();
        state.polling == 0 && state.last_poll.elapsed() >= state.expiry
    }
}

/// A poll in flight.
struct Polling<'a>(&'a Queue);

impl Drop for Polling<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().unwrap();
        state.polling -= 1;
        state.last_poll = Instant::now();
    }
}

struct PollWriter {
    queue: Arc<Queue>,
    polled: Arc<Context>,
    id: String,
}

impl FrameWriter for PollWriter {
    async fn send(&mut self, batch: &[Outbound]) -> io::Result<()> {
        let mut state = self.queue.state.lock().unwrap();
        for outbound in batch {
            if outbound.kind == Kind::Pong {
                continue;
            }
            if state.frames.len() >= state.capacity {
                // Not fetched for so long that its frames fill the queue: too slow.
                return Err(io::Error::from(io::ErrorKind::WouldBlock));
            }
            let n = state.next;
            state.next += 1;
            state.frames.push_back((n, outbound.frame.clone()));
        }
        drop(state);
        self.queue.ready.notify_waiters();
        Ok(())
    }

    async fn close(&mut self, _code: CloseCode) {
        // The `bye` frame is queued: polls get it, then 404 once it was fetched.
        self.queue.state.lock().unwrap().closed = true;
        self.queue.ready.notify_waiters();
    }
}

impl Drop for PollWriter {
    fn drop(&mut self) {
        self.queue.state.lock().unwrap().closed = true;
        self.queue.ready.notify_waiters();
        // Polls still read what is queued (the `bye` last): the entry goes once the client
        // has it all, or stops asking.
        let queue = self.queue.clone();
        let ctx = self.polled.clone();
        let id = std::mem::take(&mut self.id);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let fetched = queue.state.lock().unwrap().frames.is_empty();
                if fetched || queue.forgotten() {
                    ctx.polled.open.lock().unwrap().remove(&id);
                    return;
                }
            }
        });
    }
}
