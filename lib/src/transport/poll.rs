//! Long polling: for clients behind proxies that buffer even streaming responses.
//!
//! `POST /wtchat/poll` opens a session (admitted and authenticated as a WebSocket is) and
//! answers `{"type":"session","post":"/wtchat/poll/ID","poll":"/wtchat/poll/ID",
//! "secret":"…"}`. The client sends frames with `POST` to `post`, one per line, and fetches
//! them with `GET poll` and the header `Wtchat-After: N` (or `?after=N`): held until there
//! is a frame numbered above `N` (at most [`HOLD`]), then answered with every such frame,
//! `{"next":M,"frames":[…]}`. Both bear the secret in `Wtchat-Secret` ([`posted::Owner`]).
//! Frames stay until a poll's `after` says they arrived, so a poll whose answer was lost
//! loses nothing: the next one asks again from the same `after`. Except `bye`: the session
//! is over once the answer carrying it is sent (the client polls no more after it), so a
//! lost one leaves a 404 for the next poll.
//!
//! A session nobody polls for half the idle timeout (30 s by default) is over: it leaves
//! its rooms.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::{Notify, oneshot};

use super::Context;
use super::posted::{self, Forwarded};
use crate::auth::Transport;
use crate::protocol::CloseCode;
use crate::queue::{Kind, Outbound};
use crate::session::FrameWriter;
use crate::throttle::Unupgraded;

/// How long a poll is held when there is nothing to send.
pub(crate) const HOLD: Duration = Duration::from_secs(25);

/// How much longer than [`HOLD`] a node waits for the answer to a poll it sent on to the
/// session's node: two trips through Redis.
const FORWARD_MARGIN: Duration = Duration::from_secs(5);

/// The sessions open for polling, by id; and the polls this node sent on to the node that
/// holds their session, waiting for its answer.
#[derive(Default)]
pub(crate) struct Polled {
    open: Mutex<HashMap<String, Arc<Queue>>>,
    waiting: Mutex<HashMap<u64, oneshot::Sender<(u16, String)>>>,
    next_token: AtomicU64,
}

impl Polled {
    /// The answer to a poll this node forwarded, from the session's node.
    pub(crate) fn answered(&self, token: u64, status: u16, body: String) {
        if let Some(waiter) = self.waiting.lock().unwrap().remove(&token) {
            let _ = waiter.send((status, body));
        }
    }
}

/// A forwarded poll's place in [`Polled::waiting`], given up when its request ends.
struct Waiting<'a> {
    polled: &'a Polled,
    token: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.polled.waiting.lock().unwrap().remove(&self.token);
    }
}

/// A session's frames, numbered, until a poll acknowledges them.
struct Queue {
    state: Mutex<QueueState>,
    /// Frames came (or the session ended): held polls answer.
    ready: Notify,
    /// A poll ended or answered, or the session ended: whether it is over may have changed.
    changed: Notify,
    owner: posted::Owner,
}

struct QueueState {
    /// (number, frame), oldest first.
    frames: VecDeque<(u64, Bytes)>,
    /// The next frame's number.
    next: u64,
    /// The last frame number a poll answered with.
    answered: u64,
    /// The session ended: after its last frames, polls get 404.
    closed: bool,
    /// Polls in flight, and when the last one ended.
    polling: usize,
    /// The number of the latest poll: an earlier one still held answers at once (a session
    /// holds one poll at a time, so that its polls cannot pile up).
    latest_poll: u64,
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
    let answer = open_session(&ctx, peer, &request);
    posted::readable(&ctx, request.headers(), answer)
}

fn open_session(
    ctx: &Arc<Context>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    request: &Request,
) -> Response {
    let opened = match posted::open(ctx, peer, request, Transport::LongPoll) {
        Ok(opened) => opened,
        Err(refused) => return refused.into_response(),
    };
    let queue = Arc::new(Queue {
        state: Mutex::new(QueueState {
            frames: VecDeque::new(),
            next: 1,
            answered: 0,
            closed: false,
            polling: 0,
            latest_poll: 0,
            last_poll: Instant::now(),
            capacity: ctx.session.hub.config().outbound_queue,
            expiry: ctx.session.idle_timeout / 2,
        }),
        ready: Notify::new(),
        changed: Notify::new(),
        owner: opened.owner.clone(),
    });
    let id = opened.id.clone();
    ctx.polled
        .open
        .lock()
        .unwrap()
        .insert(id.clone(), queue.clone());
    // Over (the client has its `bye`, or stopped polling): later polls get 404, and the
    // client opens a new session.
    tokio::spawn({
        let (queue, ctx, id) = (queue.clone(), ctx.clone(), id.clone());
        async move {
            queue.over().await;
            ctx.polled.open.lock().unwrap().remove(&id);
        }
    });
    let gone = {
        let queue = queue.clone();
        async move { queue.over().await }
    };
    let writer = PollWriter { queue };
    let url = format!("{}/poll/{id}", opened.routes_at);
    let secret = opened.owner.secret().to_string();
    posted::run(ctx, opened, Transport::LongPoll, gone, writer);
    (
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(serde_json::json!({
            "type": "session", "post": url, "poll": url, "secret": secret,
        })),
    )
        .into_response()
}

#[derive(serde::Deserialize)]
pub(crate) struct After {
    #[serde(default)]
    after: u64,
}

/// `GET /wtchat/poll/ID` with `Wtchat-After: N` (or `?after=N`, for scripts): the session's
/// frames numbered above `N`, held until there is one (or [`HOLD`] passed). A poll for a
/// session another node holds goes there through the engine, and its answer comes back the
/// same way.
///
/// A held poll counts against its address's `max_streams_per_ip`, not among the HTTP
/// connections not yet upgraded; answered, its connection takes a place there again, or
/// closes when there is none.
pub(crate) async fn poll(
    State(ctx): State<Arc<Context>>,
    Path(id): Path<String>,
    Query(After { after }): Query<After>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    place: Option<Extension<Arc<Unupgraded>>>,
    headers: HeaderMap,
) -> Response {
    // In a header, the session's URL is the same for all its polls: a cross-origin page's
    // browser preflights it once, not once per poll.
    let after = match headers.get("wtchat-after") {
        None => after,
        Some(value) => match value.to_str().ok().and_then(|v| v.parse().ok()) {
            Some(after) => after,
            None => {
                let bad = (
                    StatusCode::BAD_REQUEST,
                    "Wtchat-After is not a frame number",
                );
                return posted::readable(&ctx, &headers, bad.into_response());
            }
        },
    };
    let asker = posted::Asker::of(&headers);
    let peer = peer.map(|Extension(ConnectInfo(addr))| addr);
    let held = match ctx.hold_stream(peer, &headers) {
        Ok(held) => held,
        Err(refused) => return posted::readable(&ctx, &headers, refused.into_response()),
    };
    let place = place.map(|Extension(place)| place);
    if let Some(place) = &place {
        place.release();
    }
    let (status, body) = match posted::elsewhere(&ctx, &id) {
        Some(node) if !ctx.polled.open.lock().unwrap().contains_key(&id) => {
            forward(&ctx, node, id, asker, after).await
        }
        _ => answer(&ctx, &id, after, &asker).await,
    };
    drop(held);
    let keep_alive = place.is_none_or(|place| place.retake());
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut answer = if status == StatusCode::OK {
        let json = [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ];
        (status, json, body).into_response()
    } else {
        (status, body).into_response()
    };
    if !keep_alive {
        answer
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    posted::readable(&ctx, &headers, answer)
}

/// Sends a poll on to node `node`, which holds the session, and waits for its answer (a
/// little longer than a poll is held there).
async fn forward(
    ctx: &Context,
    node: u64,
    session: String,
    asker: posted::Asker,
    after: u64,
) -> (u16, String) {
    let polled = &ctx.polled;
    let token = polled.next_token.fetch_add(1, Ordering::Relaxed);
    let (answer, answered) = oneshot::channel();
    polled.waiting.lock().unwrap().insert(token, answer);
    let _waiting = Waiting { polled, token };
    let hub = &ctx.session.hub;
    let request = Forwarded::Poll {
        session,
        asker,
        after,
        reply: hub.node(),
        token,
    };
    if !request.send(ctx, node) {
        return (404, "no such session: open a new one".into());
    }
    hub.metrics().forwarded("poll");
    match tokio::time::timeout(HOLD + FORWARD_MARGIN, answered).await {
        Ok(Ok(answer)) => answer,
        // The session's node did not answer (gone, or Redis is away): the client polls
        // again, or opens a new session once this one is over.
        _ => (504, "the session's node did not answer".into()),
    }
}

/// Answers a poll forwarded from node `reply` (see [`forward`]).
pub(crate) async fn answer_forwarded(
    ctx: Arc<Context>,
    session: String,
    asker: posted::Asker,
    after: u64,
    reply: u64,
    token: u64,
) {
    let (status, body) = answer(&ctx, &session, after, &asker).await;
    Forwarded::Polled {
        token,
        status,
        body,
    }
    .send(&ctx, reply);
}

/// A poll of session `id` held here, from `after`: (HTTP status, body).
async fn answer(ctx: &Context, id: &str, after: u64, asker: &posted::Asker) -> (u16, String) {
    let Some(queue) = ctx.polled.open.lock().unwrap().get(id).cloned() else {
        return (404, "no such session: open a new one".into());
    };
    if let Err(denied) = queue.owner.admits(asker, &ctx.origins) {
        return (403, denied.reason().into());
    }
    let mine = {
        let mut state = queue.state.lock().unwrap();
        state.polling += 1;
        state.latest_poll += 1;
        state.latest_poll
    };
    // A poll of this session held before this one answers now, with what there is.
    queue.ready.notify_waiters();
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
            if state.latest_poll != mine {
                break Some(Vec::new());
            }
            if !state.frames.is_empty() {
                let next = state.frames.back().map_or(after, |(n, _)| *n);
                state.answered = next;
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
        return (404, "the session is over".into());
    };
    if body.is_empty() {
        body = format!("{{\"next\":{after},\"frames\":[]}}").into_bytes();
    }
    // Frames are UTF-8 (the encoder's JSON), and so is what joins them.
    (200, String::from_utf8(body).unwrap_or_default())
}

impl Queue {
    /// Resolves when the session is over for its client: it was answered with everything,
    /// its `bye` last, or nobody polled it for the expiry time (none in flight, the last
    /// ended that long ago). Wakes only when a poll ends or the session ends, or at the
    /// expiry: an idle session costs no timer ticks.
    async fn over(&self) {
        loop {
            let changed = self.changed.notified();
            let expires_in = {
                let state = self.state.lock().unwrap();
                if state.closed && state.answered + 1 >= state.next {
                    return;
                }
                match state.polling {
                    0 => match state.expiry.checked_sub(state.last_poll.elapsed()) {
                        Some(left) if !left.is_zero() => Some(left),
                        _ => return,
                    },
                    _ => None,
                }
            };
            match expires_in {
                Some(left) => {
                    tokio::select! {
                        () = changed => {}
                        () = tokio::time::sleep(left) => {}
                    }
                }
                None => changed.await,
            }
        }
    }

    /// No more frames: held polls answer with what there is.
    fn end(&self) {
        self.state.lock().unwrap().closed = true;
        self.ready.notify_waiters();
        self.changed.notify_waiters();
    }
}

/// A poll in flight.
struct Polling<'a>(&'a Queue);

impl Drop for Polling<'_> {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().unwrap();
        state.polling -= 1;
        state.last_poll = Instant::now();
        drop(state);
        self.0.changed.notify_waiters();
    }
}

struct PollWriter {
    queue: Arc<Queue>,
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
        // The `bye` frame is queued: polls get it, then 404.
        self.queue.end();
    }
}

impl Drop for PollWriter {
    fn drop(&mut self) {
        // Polls still read what is queued (the `bye` last); the session's entry goes once
        // the client has it all, or stops asking.
        self.queue.end();
    }
}
