//! What the two transports whose clients post their frames share — Server-Sent Events
//! ([`sse`](super::sse)) and long polling ([`poll`](super::poll)): opening a session
//! (admitted and authenticated as a WebSocket is), its id and its secret, the `POST` that
//! carries frames to it, and the reader that hands them to the session.
//!
//! A session's id is in its URLs, and URLs are written down by proxies and browsers'
//! histories: it names the session, it is no key to it. Posts and polls are authorised by
//! the session's secret, which the client learns only in the answer that opened the
//! session and sends back in the `Wtchat-Secret` header (see [`Owner`]).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::{Admitted, Context, OriginPolicy, Refused, detached, shown};
use crate::PATH;
use crate::auth::{ConnectRequest, Transport, random_bytes, same_secret};
use crate::protocol::CloseCode;
use crate::session::{self, FrameReader, FrameWriter, Inbound};

/// A request for a session that another node holds (SSE and long polling need no sticky
/// load balancer), or the answer to one: it travels between nodes through the engine.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Forwarded {
    /// A post's frames (`body`, one per line), from `asker`.
    Post {
        session: String,
        #[serde(flatten)]
        asker: Asker,
        body: String,
    },
    /// A long poll from `after`: answer node `reply` with `token`.
    Poll {
        session: String,
        #[serde(flatten)]
        asker: Asker,
        after: u64,
        reply: u64,
        token: u64,
    },
    /// The answer to the poll this node forwarded with `token`: an HTTP status and body.
    Polled {
        token: u64,
        status: u16,
        body: String,
    },
}

impl Forwarded {
    /// Sends it to node `node`; false when there is no such node to send it to.
    pub(crate) fn send(&self, ctx: &Context, node: u64) -> bool {
        let payload = serde_json::to_vec(self).expect("serializable");
        ctx.session.hub.forward(node, payload.into())
    }
}

/// Frames a session may have waiting from its posts; past it a post is answered 429.
const INBOX: usize = 256;
/// Most frames in one post.
const MAX_FRAMES_PER_POST: usize = 64;
/// Most bytes in one post, whatever the frame limit: bounds what a post can make the server
/// buffer (the browser client splits its posts to fit, told by `/wtchat/config`).
const MAX_POST_BYTES: usize = 1 << 20;

/// The largest body of a post: [`MAX_FRAMES_PER_POST`] frames of `max_frame_bytes`, each
/// with its line end (`\r\n` at most), up to [`MAX_POST_BYTES`], but always one frame.
pub(crate) fn max_post_bytes(max_frame_bytes: usize) -> usize {
    let line = max_frame_bytes + 2;
    (MAX_FRAMES_PER_POST * line).min(MAX_POST_BYTES.max(line))
}

/// The sessions open here whose clients post, by id: where their posts go.
#[derive(Default)]
pub(crate) struct Sessions {
    open: Mutex<HashMap<String, Posts>>,
}

struct Posts {
    frames: mpsc::Sender<Inbound>,
    owner: Owner,
}

/// The header that carries a posted session's secret on each of its posts and polls.
pub(crate) const SECRET_HEADER: &str = "wtchat-secret";

/// Who may use a posted session: a request bearing its secret, from the page it was opened
/// from. A cross-origin page's request with the header is preflighted ([`preflight`]).
#[derive(Clone)]
pub(crate) struct Owner {
    origin: Option<String>,
    /// 128 random bits, base64url.
    secret: String,
}

/// Who asks, as a post or a poll says: its `Origin` and the secret it bears. Travels with a
/// request sent on to the session's node, which checks it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Asker {
    pub origin: Option<String>,
    pub secret: Option<String>,
}

impl Asker {
    pub(crate) fn of(headers: &HeaderMap) -> Asker {
        Asker {
            origin: origin_of(headers),
            secret: headers
                .get(SECRET_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        }
    }
}

/// Why a request may not use a session.
#[derive(Debug)]
pub(crate) enum Denied {
    /// It bears no secret, or not the session's.
    Secret,
    /// From another origin than the session's.
    Origin,
}

impl Denied {
    /// What was wrong, as the 403 says it.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Denied::Secret => "no session secret, or not this session's (header Wtchat-Secret)",
            Denied::Origin => "not the session's origin",
        }
    }
}

impl Owner {
    /// Whether `asker` may use the session: it bears the secret and its origin fits
    /// ([`origin_fits`]).
    pub(crate) fn admits(&self, asker: &Asker, origins: &OriginPolicy) -> Result<(), Denied> {
        let given = asker.secret.as_deref().unwrap_or_default();
        if !same_secret(given.as_bytes(), self.secret.as_bytes()) {
            return Err(Denied::Secret);
        }
        if !origin_fits(self.origin.as_deref(), asker.origin.as_deref(), origins) {
            return Err(Denied::Origin);
        }
        Ok(())
    }

    /// The secret, for the answer that opens the session and nothing else.
    pub(crate) fn secret(&self) -> &str {
        &self.secret
    }
}

/// Where the chat's routes are as the client reached them (`/chat/wtchat` under a path
/// prefix, from a nested router or a proxy's `X-Forwarded-Prefix`): put into the opening
/// request by the HTTP side, which knows the prefix; a session's URLs start with it.
#[derive(Clone)]
pub(crate) struct RoutesAt(pub Arc<str>);

/// A session being opened: admitted, registered, not yet running.
pub(crate) struct Opened {
    pub id: String,
    pub owner: Owner,
    /// Where its URLs start ([`RoutesAt`]; [`PATH`] when not given).
    pub routes_at: Arc<str>,
    admitted: Admitted,
    connect: Option<ConnectRequest>,
    inbox: mpsc::Receiver<Inbound>,
    /// Frames the session reads before any post (a resumed stream's joins).
    pub first: mpsc::Sender<Inbound>,
    peer: Option<SocketAddr>,
}

/// The `Origin` header as the origin policy reads it (a value that is not visible ASCII
/// matches no allowed origin).
fn origin_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::ORIGIN)
        .map(|o| o.to_str().unwrap_or("\u{0}").to_string())
}

/// Whether a request with `Origin` header `request` may use a session opened with
/// `session`'s. A browser always names its origin on a cross-origin request, and names none
/// on a same-origin GET (an `EventSource`, a poll) while it does on its POSTs: so a request
/// without one is the session's own page (or not a browser, which needs the session's
/// secret all the same); one with an origin must be the session's, or — for a
/// session opened without one — an origin the server allows.
fn origin_fits(session: Option<&str>, request: Option<&str>, origins: &OriginPolicy) -> bool {
    match (session, request) {
        (_, None) => true,
        (Some(opened), Some(origin)) => opened == origin,
        (None, Some(origin)) => origins.allows(Some(origin)),
    }
}

/// Admits a session for `request` and registers its id; or why not.
pub(crate) fn open(
    ctx: &Context,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    request: &Request,
    transport: Transport,
) -> Result<Opened, Refused> {
    let headers = request.headers();
    let origin = origin_of(headers);
    let peer = peer.map(|Extension(ConnectInfo(addr))| addr);
    let client = peer.map(|addr| ctx.client_address(addr.ip(), headers));
    let admitted = ctx.admit(origin.as_deref(), client)?;
    let connect = ctx.session.auth.identifies().then(|| ConnectRequest {
        transport,
        path: request.uri().path().to_string(),
        query: request.uri().query().unwrap_or_default().to_string(),
        origin: origin.clone(),
        headers: detached(headers),
    });
    // The node that holds it (where posts that reach another node are sent on), and 128
    // random bits: a session's posts cannot be guessed.
    let id = format!(
        "{}.{}",
        ctx.session.hub.node(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<16>())
    );
    let owner = Owner {
        origin,
        secret: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<16>()),
    };
    let (frames, inbox) = mpsc::channel(INBOX);
    ctx.posted.open.lock().unwrap().insert(
        id.clone(),
        Posts {
            frames: frames.clone(),
            owner: owner.clone(),
        },
    );
    let routes_at = request
        .extensions()
        .get::<RoutesAt>()
        .map_or_else(|| PATH.into(), |at| at.0.clone());
    Ok(Opened {
        id,
        owner,
        routes_at,
        admitted,
        connect,
        inbox,
        first: frames,
        peer,
    })
}

/// Runs `opened`'s session with `writer` until it ends (or `gone` says the client went
/// away); then its id is forgotten.
pub(crate) fn run(
    ctx: &Arc<Context>,
    opened: Opened,
    transport: Transport,
    gone: impl Future<Output = ()> + Send + 'static,
    writer: impl FrameWriter + 'static,
) {
    let Opened {
        id: key,
        owner: _,
        admitted,
        connect,
        inbox,
        first,
        peer,
        routes_at: _,
    } = opened;
    drop(first);
    let id = ctx.session.hub.next_id();
    let span =
        tracing::info_span!("session", id, transport = transport.as_str(), peer = %shown(peer));
    let ctx = ctx.clone();
    let tracker = ctx.tracker.clone();
    tracker.spawn(
        async move {
            let mut admitted = admitted;
            let reader = Reader {
                inbox,
                gone: Some(Box::pin(gone)),
            };
            session::start(
                &ctx.session,
                id,
                transport,
                connect.map(Box::new),
                admitted.seat(&ctx.session.budgets),
                reader,
                writer,
            )
            .await;
            ctx.posted.open.lock().unwrap().remove(&key);
        }
        .instrument(span),
    );
}

/// `response`, readable by the page that asked when its origin is allowed. The requests
/// that open sessions are simple ones (an `EventSource`, a POST without a body or
/// credentials), so no preflight comes first: an answer naming the page's origin is all
/// the browser needs to let the page read it (a PHP site's page beside the chat server).
/// Posts and polls carry the session's secret in a header, which a cross-origin page's
/// browser asks about first ([`preflight`]). A refused origin learns nothing more, and an
/// opaque one is never named (see [`nameable`](super::nameable)).
/// Done in the handlers, not in a middleware: a poll is answered tens of thousands of times
/// a second, and a middleware's machinery per request showed in its cost.
pub(crate) fn readable(ctx: &Context, headers: &HeaderMap, mut response: Response) -> Response {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return response;
    };
    let named = |o: &str| super::nameable(o) && ctx.origins.allows(Some(o));
    if origin.to_str().is_ok_and(named) {
        let h = response.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
        // A refusal for load says how long to wait, which a page may read only if told.
        if h.contains_key(header::RETRY_AFTER) {
            let exposed = HeaderValue::from_static("Retry-After");
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, exposed);
        }
    }
    response
}

/// The CORS preflight of a session's posts and polls (`OPTIONS /wtchat/sse/ID`, `/poll/ID`)
/// from a page on another origin: they may carry the secret's header and a poll's
/// `Wtchat-After`, nothing else. A session's URL stays the same for all its requests (a
/// poll's `after` is a header too), so the browser asks once per session and caches the
/// answer for as long as it allows (Chromium two hours, Firefox a day).
pub(crate) async fn preflight(State(ctx): State<Arc<Context>>, headers: HeaderMap) -> Response {
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    if !ctx.origins.allows(origin) {
        return StatusCode::FORBIDDEN.into_response();
    }
    let response = (
        StatusCode::NO_CONTENT,
        [
            (header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST"),
            (
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                "Wtchat-Secret, Wtchat-After",
            ),
            (header::ACCESS_CONTROL_MAX_AGE, "86400"),
        ],
    )
        .into_response();
    readable(&ctx, &headers, response)
}

/// `POST /wtchat/sse/ID` and `/wtchat/poll/ID`: frames for a session, one per line. A
/// post for a session another node holds (no sticky load balancer) goes there through the
/// engine, and is answered 202.
pub(crate) async fn post(
    State(ctx): State<Arc<Context>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let answer = post_frames(&ctx, id, &headers, body);
    readable(&ctx, &headers, answer)
}

fn post_frames(ctx: &Context, id: String, headers: &HeaderMap, body: Bytes) -> Response {
    let asker = Asker::of(headers);
    let max = ctx.session.limits.max_frame_bytes;
    match ctx.posted.deliver(&id, &asker, &ctx.origins, &body, max) {
        Err(Undelivered::Unknown) => {
            let forwarded = match (elsewhere(ctx, &id), std::str::from_utf8(&body)) {
                (Some(node), Ok(body)) => Forwarded::Post {
                    session: id,
                    asker,
                    body: body.into(),
                }
                .send(ctx, node),
                _ => false,
            };
            if forwarded {
                ctx.session.hub.metrics().forwarded("post");
                StatusCode::ACCEPTED.into_response()
            } else {
                (StatusCode::NOT_FOUND, "no such session: open a new one").into_response()
            }
        }
        Err(Undelivered::Denied(denied)) => {
            (StatusCode::FORBIDDEN, denied.reason()).into_response()
        }
        Err(Undelivered::TooMany) => {
            (StatusCode::PAYLOAD_TOO_LARGE, "too many frames in one post").into_response()
        }
        Err(Undelivered::Full) => {
            (StatusCode::TOO_MANY_REQUESTS, "too many frames waiting").into_response()
        }
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
    }
}

/// The frames of a post another node sent on to this one, which holds its session.
pub(crate) fn deliver_forwarded(ctx: &Context, session: &str, asker: &Asker, body: String) {
    let max = ctx.session.limits.max_frame_bytes;
    let body = Bytes::from(body);
    let delivered = ctx.posted.deliver(session, asker, &ctx.origins, &body, max);
    if let Err(why) = delivered {
        tracing::debug!(session, ?why, "a forwarded post was not delivered");
    }
}

/// The node that holds session `id` (its id starts with the node's number), when that is
/// another node than this one.
pub(crate) fn elsewhere(ctx: &Context, id: &str) -> Option<u64> {
    let node = id.split_once('.')?.0.parse::<u64>().ok()?;
    (node != ctx.session.hub.node()).then_some(node)
}

/// Why a post's frames were not handed to their session.
#[derive(Debug)]
pub(crate) enum Undelivered {
    /// No such session here.
    Unknown,
    /// Not from the session's page ([`Owner::admits`]).
    Denied(Denied),
    /// More frames than one post may carry.
    TooMany,
    /// The session has too many frames waiting.
    Full,
}

impl Sessions {
    /// Hands the frames of a post (`body`, one per line) from `asker` to session `id`.
    pub(crate) fn deliver(
        &self,
        id: &str,
        asker: &Asker,
        origins: &OriginPolicy,
        body: &Bytes,
        max_frame_bytes: usize,
    ) -> Result<(), Undelivered> {
        let frames = {
            let open = self.open.lock().unwrap();
            let posts = open.get(id).ok_or(Undelivered::Unknown)?;
            posts
                .owner
                .admits(asker, origins)
                .map_err(Undelivered::Denied)?;
            posts.frames.clone()
        };
        let lines: Vec<&[u8]> = body
            .split(|b| *b == b'\n')
            .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
            // Blank lines are no frames (as on WebTransport's stream).
            .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
            .collect();
        if lines.len() > MAX_FRAMES_PER_POST {
            return Err(Undelivered::TooMany);
        }
        if frames.capacity() < lines.len() {
            return Err(Undelivered::Full);
        }
        for line in lines {
            // As on a WebSocket: a frame over the limit closes the connection (4409).
            let inbound = if line.len() > max_frame_bytes {
                Inbound::Fatal(CloseCode::FrameTooLarge)
            } else {
                Inbound::Frame(body.slice_ref(line))
            };
            frames.try_send(inbound).map_err(|_| Undelivered::Full)?;
        }
        Ok(())
    }
}

/// A posted session's reading half: its posts, until the client is gone.
struct Reader {
    inbox: mpsc::Receiver<Inbound>,
    /// None once it resolved.
    gone: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl FrameReader for Reader {
    async fn next(&mut self) -> Inbound {
        let Some(gone) = self.gone.as_mut() else {
            return Inbound::Closed;
        };
        tokio::select! {
            frame = self.inbox.recv() => frame.unwrap_or(Inbound::Closed),
            () = gone => {
                self.gone = None;
                Inbound::Closed
            }
        }
    }
}
