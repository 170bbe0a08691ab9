//! Webhooks: the host's backend, in whatever language it is written (a PHP or Django
//! endpoint), in the places a Rust host puts its hooks. This module owns the outgoing HTTP
//! client they share, the signature on every request, and the three webhooks:
//!
//! - the **message webhook** ([`MessageWebhook`]) sees each client message before it is
//!   stored and accepts, rejects or rewrites it; the session awaits it;
//! - the **auth webhook** ([`auth_hook`]) is an authentication hook: it forwards what a
//!   connection (or a ticket request) carries — cookies, `Authorization`, origin, token —
//!   and the backend names the user or refuses;
//! - the **events webhook** ([`Events`]) is told what happened in the rooms (a message
//!   stored, a member joined or left) by the hub, queues it, and posts it from a task of its
//!   own, in order, in batches, with retries: never on the rooms' path.
//!
//! Every request is a `POST` of JSON with the header
//! `Wtchat-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`, so the
//! backend can tell the chat's calls from anyone else's, and old ones from new.
//!
//! Connections are kept open between calls, as long as the backend keeps them. A backend
//! closes an idle one when it likes (gunicorn after 2 s, Python's `http.server` after its
//! `timeout`), and a call may go out on it just then: a call whose kept connection closes
//! before the answer goes out again, once, on a new connection. Every call is safe to
//! repeat.
//!
//! Plain `http://` only: an HTTPS client needs a TLS adapter for tokio and a set of root
//! certificates, neither of which the library has, and the backend is normally on the same
//! machine or private network (where a TLS-terminating proxy on localhost covers the rest).
//! The signature makes a request unforgeable and unreplayable, but not secret: the auth
//! webhook carries cookies, so its URL must not cross an untrusted network.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, Uri, header};
use bytes::Bytes;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use ring::hmac;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::auth::{AuthHook, ConnectRequest, Identity, Refusal, Rooms, unix_now};
use crate::hooks::{EventsSender, MessageCheck, MessageKind, Verdict, WebhookConfig, Webhooks};
use crate::hub::{Happened, Member, Mentioned, Observer};
use crate::metrics::Metrics;
use crate::protocol::{Limits, now_ms};
use crate::throttle::throttled;

/// The header carrying the signature.
const SIGNATURE_HEADER: &str = "Wtchat-Signature";

/// The header naming the webhook (`message`, `events` or `auth`): a backend may serve all
/// three on one URL.
const WEBHOOK_HEADER: &str = "Wtchat-Webhook";

/// Idle connections kept per webhook for the next calls: keep-alive spares the backend a
/// TCP handshake per message, and this machine a socket in TIME_WAIT per message. Calls
/// made at once beyond it open connections that are closed after use.
const IDLE_CONNECTIONS: usize = 32;

/// The largest answer read: a verdict or an identity is small; a larger answer is an error.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Events waiting for the events webhook. Past it (the backend is down or slower than the
/// chat), the oldest are dropped, so that a dead backend costs bounded memory.
const EVENTS_QUEUE: usize = 10_000;

/// Most events one request carries: a busy chat posts a batch per round trip instead of a
/// request per event.
const EVENTS_BATCH: usize = 100;

/// The first wait before an events batch is sent again; each failure doubles it, up to
/// [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(250);

/// The longest wait between two attempts at an events batch.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// What the sender of a message is told when the message webhook failed closed.
const NO_ANSWER: &str = "the host did not answer; the message was not sent, try again later";

impl Webhooks {
    /// The webhooks of `settings` (validated by the builder); each says at start where it
    /// points, and the message webhook which way it fails.
    pub(crate) fn new(
        settings: &WebhookConfig,
        limits: &Limits,
        metrics: &Arc<Metrics>,
    ) -> Webhooks {
        let endpoint = |kind, url: &Option<String>| {
            url.as_deref().map(|url| {
                let endpoint = Endpoint::new(kind, url, settings, metrics.clone());
                tracing::info!(
                    url,
                    timeout_ms = endpoint.timeout.as_millis() as u64,
                    "{kind} webhook"
                );
                endpoint
            })
        };
        let message = endpoint("message", &settings.message).map(|endpoint| {
            let fail_open = settings.fail_open;
            tracing::info!(
                "the message webhook fails {}: a message it does not answer for in time is {}",
                if fail_open { "open" } else { "closed" },
                if fail_open {
                    "accepted as is"
                } else {
                    "rejected"
                },
            );
            Arc::new(MessageWebhook {
                endpoint,
                fail_open,
                limits: Arc::new(limits.clone()),
            }) as Arc<dyn MessageCheck>
        });
        let events = endpoint("events", &settings.events).map(|endpoint| {
            Arc::new(Events {
                endpoint,
                backlog: Mutex::new(Backlog::default()),
                ready: Notify::new(),
            }) as Arc<dyn EventsSender>
        });
        let auth = endpoint("auth", &settings.auth).map(auth_hook);
        Webhooks {
            message,
            events,
            auth,
        }
    }
}

/// Why `url` cannot be a webhook's URL, if it cannot.
pub(crate) fn url_problem(url: &str) -> Option<&'static str> {
    if url.starts_with("https://") {
        return Some(
            "https:// is not supported: point it at a backend on this machine or a private \
             network, or at a TLS-terminating proxy on localhost",
        );
    }
    match Target::parse(url) {
        Some(_) => None,
        None => Some("must be an http:// URL with a host (like http://127.0.0.1:8000/chat/hook)"),
    }
}

/// The signature header's value for `body` sent at `time` (seconds since 1970).
fn signature(key: &hmac::Key, time: u64, body: &[u8]) -> String {
    let time = time.to_string();
    let mut mac = hmac::Context::with_key(key);
    mac.update(time.as_bytes());
    mac.update(b".");
    mac.update(body);
    let tag: [u8; 32] = mac
        .sign()
        .as_ref()
        .try_into()
        .expect("an HMAC-SHA256 tag is 32 bytes");
    format!("t={time},v1={}", crate::certs::hex(&tag))
}

/// Where a webhook's requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    /// What to dial: a name, or an address (an IPv6 one without its brackets).
    host: String,
    port: u16,
    /// The `Host` header.
    authority: String,
    /// Path and query.
    path: String,
}

impl Target {
    fn parse(url: &str) -> Option<Target> {
        if url.contains(['#', ' ']) {
            return None;
        }
        let uri: Uri = url.parse().ok()?;
        let authority = uri.authority()?;
        let host = authority.host();
        if uri.scheme_str() != Some("http") || host.is_empty() || authority.as_str().contains('@') {
            return None;
        }
        Some(Target {
            host: host.trim_start_matches('[').trim_end_matches(']').into(),
            port: authority.port_u16().unwrap_or(80),
            authority: authority.as_str().into(),
            path: uri.path_and_query().map_or("/", |p| p.as_str()).into(),
        })
    }
}

/// One webhook's URL, its signing key, and the connections kept open to it.
struct Endpoint {
    /// `message`, `events` or `auth`: the [`WEBHOOK_HEADER`], and the logs'.
    kind: &'static str,
    target: Target,
    key: hmac::Key,
    /// How long a call may take, connecting included.
    timeout: Duration,
    /// Connections whose last answer was read in full: the next calls reuse them. Held to
    /// take or give back one, never across an `.await`.
    idle: Mutex<Vec<Connection>>,
    /// Counts each call by how it went.
    metrics: Arc<Metrics>,
}

/// An open HTTP/1.1 connection to a backend. Dropping it closes it (its task watches the
/// guard): an answer that never comes must not hold a socket forever.
struct Connection {
    sender: SendRequest<Body>,
    _close: DropGuard,
}

/// Why a call got no answer.
#[derive(Debug)]
enum CallError {
    Timeout(Duration),
    Connect(io::Error),
    Http(hyper::Error),
    Answer(axum::Error),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Timeout(after) => write!(f, "no answer within {} ms", after.as_millis()),
            CallError::Connect(e) => write!(f, "cannot connect: {e}"),
            CallError::Http(e) => write!(f, "HTTP: {e}"),
            CallError::Answer(e) => write!(f, "the answer could not be read: {e}"),
        }
    }
}

/// A backend's answer: its status and body.
struct Answer {
    status: StatusCode,
    body: Bytes,
}

impl Endpoint {
    fn new(
        kind: &'static str,
        url: &str,
        settings: &WebhookConfig,
        metrics: Arc<Metrics>,
    ) -> Endpoint {
        let secret = settings.secret.as_deref().expect("checked by the builder");
        Endpoint {
            kind,
            target: Target::parse(url).expect("checked by the builder"),
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
            timeout: settings.timeout,
            idle: Mutex::new(Vec::new()),
            metrics,
        }
    }

    /// POSTs `body` (JSON), signed now, and reads the answer, within the timeout.
    async fn post(&self, body: impl Serialize) -> Result<Answer, CallError> {
        let body = Bytes::from(serde_json::to_vec(&body).expect("webhook bodies serialize"));
        let answer = tokio::time::timeout(self.timeout, self.exchange(body))
            .await
            .map_err(|_| CallError::Timeout(self.timeout))
            .and_then(|answer| answer);
        let outcome = match &answer {
            Ok(answer) if answer.status.is_success() => "success",
            Ok(_) => "http_error",
            Err(CallError::Timeout(_)) => "timeout",
            Err(_) => "unreachable",
        };
        self.metrics.webhook_called(self.kind, outcome);
        answer
    }

    async fn exchange(&self, body: Bytes) -> Result<Answer, CallError> {
        let mut request = self.request(body.clone());
        let mut resent = false;
        loop {
            let spare = if resent { None } else { self.spare() };
            let (mut connection, kept) = match spare {
                Some(connection) => (connection, true),
                None => (self.connect().await?, false),
            };
            if let Err(e) = connection.sender.ready().await {
                if kept {
                    continue;
                }
                return Err(CallError::Http(e));
            }
            match connection.sender.try_send_request(request).await {
                Ok(response) => {
                    let status = response.status();
                    let body = Body::new(response.into_body());
                    let body = axum::body::to_bytes(body, MAX_ANSWER_BYTES)
                        .await
                        .map_err(CallError::Answer)?;
                    self.give_back(connection);
                    return Ok(Answer { status, body });
                }
                Err(mut failed) => match failed.take_message() {
                    // A kept connection the backend had closed meanwhile: the request never
                    // left, so it goes out on another.
                    Some(unsent) if kept => request = unsent,
                    // A kept connection the backend closed as the request went out (it
                    // closes idle ones: gunicorn after 2 s), without answering: the request
                    // goes out again, once, on a new connection. Every call is safe to
                    // repeat: a verdict, a login, an events batch (which the backend
                    // deduplicates by room and seq, delivery being at least once anyway).
                    None if kept && closed_unanswered(failed.error()) => {
                        request = self.request(body.clone());
                        resent = true;
                    }
                    _ => return Err(CallError::Http(failed.into_error())),
                },
            }
        }
    }

    fn request(&self, body: Bytes) -> Request<Body> {
        let signature = signature(&self.key, unix_now(), &body);
        Request::post(self.target.path.as_str())
            .header(header::HOST, self.target.authority.as_str())
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("wtchat/", env!("CARGO_PKG_VERSION")),
            )
            .header(WEBHOOK_HEADER, self.kind)
            .header(SIGNATURE_HEADER, signature)
            .body(Body::from(body))
            .expect("a valid request: the target was parsed from a URI")
    }

    async fn connect(&self) -> Result<Connection, CallError> {
        let Target { host, port, .. } = &self.target;
        let stream = TcpStream::connect((host.as_str(), *port))
            .await
            .map_err(CallError::Connect)?;
        // A request is written at once, whole; Nagle's algorithm would only delay it.
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(CallError::Http)?;
        let close = CancellationToken::new();
        let closed = close.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = connection => {}
                () = closed.cancelled() => {}
            }
        });
        Ok(Connection {
            sender,
            _close: close.drop_guard(),
        })
    }

    /// The connection used last that is still open, if any.
    fn spare(&self) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap();
        std::iter::from_fn(|| idle.pop()).find(|c| !c.sender.is_closed())
    }

    fn give_back(&self, connection: Connection) {
        let mut idle = self.idle.lock().unwrap();
        if !connection.sender.is_closed() && idle.len() < IDLE_CONNECTIONS {
            idle.push(connection);
        }
    }
}

/// Whether `e` says that the connection was closed or reset before the answer's head came
/// in full (hyper does not say whether part of it did).
fn closed_unanswered(e: &hyper::Error) -> bool {
    let io = std::error::Error::source(e).and_then(|e| e.downcast_ref::<io::Error>());
    e.is_incomplete_message()
        || io.is_some_and(|e| {
            matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
            )
        })
}

/// The message webhook: asks the backend about each client message before it is stored.
pub(crate) struct MessageWebhook {
    endpoint: Endpoint,
    /// Accept (true) or reject (false) a message the backend did not answer for.
    fail_open: bool,
    /// A rewritten text is held to the same limits as the client's.
    limits: Arc<Limits>,
}

/// What the message webhook is sent.
#[derive(Serialize)]
struct MessageCall<'a> {
    room: &'a str,
    from: &'a str,
    user: Option<&'a str>,
    sender: &'a str,
    text: &'a str,
    id: Option<&'a str>,
    /// `send`, or `edit` (then `seq` is the message edited).
    kind: MessageKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    /// Whom a message mentions: public sender ids, and user ids where the room lists them.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    mentions: &'a [Mentioned],
}

/// What the message webhook answers with a 200.
#[derive(Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
enum Action {
    Accept,
    Reject { reason: Option<String> },
    Rewrite { text: String },
}

impl MessageWebhook {
    /// What the backend decides of `text`, sent by `sender` into `room` with client id `id`
    /// — or, when it does not answer in time or answers something else, what `fail_open`
    /// says.
    async fn check(
        &self,
        room: &str,
        sender: &Member,
        text: &str,
        id: Option<&str>,
        edits: Option<u64>,
        mentions: &[Mentioned],
    ) -> Verdict {
        let call = MessageCall {
            mentions,
            room,
            from: &sender.name,
            user: sender.user.as_deref(),
            sender: sender.sender.public(),
            text,
            id,
            kind: if edits.is_some() {
                MessageKind::Edit
            } else {
                MessageKind::Send
            },
            seq: edits,
        };
        let failure = match self.endpoint.post(&call).await {
            Ok(Answer {
                status: StatusCode::NO_CONTENT,
                ..
            }) => return Verdict::Accept,
            Ok(Answer {
                status: StatusCode::OK,
                body,
            }) => match serde_json::from_slice(&body) {
                Ok(Action::Accept) => return Verdict::Accept,
                Ok(Action::Reject { reason }) => {
                    let reason = reason.filter(|r| !r.trim().is_empty());
                    return Verdict::Reject(
                        reason.unwrap_or_else(|| "rejected by the host".into()),
                    );
                }
                Ok(Action::Rewrite { text }) => return self.rewrite(text, id),
                Err(e) => format!("its answer is not an action: {e}"),
            },
            Ok(Answer { status, .. }) => format!("it answered {status}"),
            Err(e) => e.to_string(),
        };
        // A backend that is down must not turn every message into a log line.
        throttled!(
            warn,
            failure,
            "the message webhook failed; the message is {}",
            if self.fail_open {
                "accepted as is (fail open)"
            } else {
                "rejected (fail closed)"
            }
        );
        if self.fail_open {
            Verdict::Accept
        } else {
            Verdict::Reject(NO_ANSWER.into())
        }
    }

    /// A rewrite, if the new text is within the limits a client's text is held to: the
    /// backend's mistake is not the sender's, but it must not get past the limits either.
    fn rewrite(&self, text: String, id: Option<&str>) -> Verdict {
        match self.limits.check_message(&text, id) {
            Ok(()) => Verdict::Rewrite(text),
            Err((code, why)) => {
                throttled!(
                    warn,
                    code = code.as_str(),
                    why,
                    "the message webhook rewrote a message beyond the limits; it is rejected"
                );
                Verdict::Reject(format!(
                    "the host's rewrite of this message is not valid: {why}"
                ))
            }
        }
    }
}

/// What the auth webhook is sent: the credentials a connection (or a ticket request)
/// carries.
#[derive(Serialize)]
struct AuthCall<'a> {
    transport: &'static str,
    origin: Option<&'a str>,
    cookies: BTreeMap<&'a str, &'a str>,
    authorization: Option<&'a str>,
    token: Option<String>,
}

/// The auth webhook's yes (200).
#[derive(Deserialize)]
struct Granted {
    user: String,
    name: String,
    /// Absent, or with `*`: any room.
    rooms: Option<Vec<String>>,
}

/// The auth webhook's no (401 or 403).
#[derive(Deserialize)]
struct Refused {
    reason: Option<String>,
}

/// The auth webhook as an authentication hook. It always fails closed: a connection the
/// backend did not answer for is refused.
fn auth_hook(endpoint: Endpoint) -> AuthHook {
    let endpoint = Arc::new(endpoint);
    Arc::new(move |request| {
        let endpoint = endpoint.clone();
        Box::pin(async move { identify(&endpoint, &request).await })
    })
}

async fn identify(endpoint: &Endpoint, request: &ConnectRequest) -> Result<Identity, Refusal> {
    let call = AuthCall {
        transport: request.transport.as_str(),
        origin: request.origin.as_deref(),
        cookies: request.cookies().collect(),
        authorization: request
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
        token: request.query_param("token"),
    };
    let failure = match endpoint.post(&call).await {
        Ok(Answer {
            status: StatusCode::OK,
            body,
        }) => match serde_json::from_slice::<Granted>(&body) {
            Ok(granted) if !granted.user.is_empty() => {
                let rooms = match granted.rooms {
                    Some(rooms) if !rooms.iter().any(|r| r == "*") => Rooms::Only(rooms),
                    _ => Rooms::Any,
                };
                return Ok(Identity::new(granted.user, granted.name).with_rooms(rooms));
            }
            Ok(_) => "its answer names an empty user".to_string(),
            Err(e) => format!("its answer is not an identity: {e}"),
        },
        Ok(Answer {
            status: StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN,
            body,
        }) => {
            let reason = serde_json::from_slice::<Refused>(&body)
                .ok()
                .and_then(|r| r.reason)
                .filter(|r| !r.trim().is_empty());
            return Err(Refusal::new(
                reason.unwrap_or_else(|| "refused by the host".into()),
            ));
        }
        Ok(Answer { status, .. }) => format!("it answered {status}"),
        Err(e) => e.to_string(),
    };
    // Every ticket request and connection attempt gets here while the backend is down.
    throttled!(
        warn,
        failure,
        "the auth webhook failed; the connection is refused"
    );
    Err(Refusal::new(
        "the host's login service did not answer; try again later",
    ))
}

impl MessageCheck for MessageWebhook {
    fn check<'a>(
        &'a self,
        room: &'a str,
        sender: &'a Member,
        text: &'a str,
        id: Option<&'a str>,
        edits: Option<u64>,
        mentions: &'a [Mentioned],
    ) -> futures_util::future::BoxFuture<'a, Verdict> {
        Box::pin(MessageWebhook::check(
            self, room, sender, text, id, edits, mentions,
        ))
    }
}

impl EventsSender for Events {
    fn observer(self: Arc<Self>) -> Observer {
        Events::observer(&self)
    }

    fn run(
        self: Arc<Self>,
        stop: CancellationToken,
        grace: Duration,
    ) -> futures_util::future::BoxFuture<'static, ()> {
        Box::pin(Events::run(self, stop, grace))
    }
}

/// The events webhook: what happened in the rooms, queued as the hub tells it and posted in
/// order by [`Events::run`].
pub(crate) struct Events {
    endpoint: Endpoint,
    /// Held to add an event or take a batch, never across an `.await`.
    backlog: Mutex<Backlog>,
    /// Wakes the sending task when an event is queued.
    ready: Notify,
}

#[derive(Default)]
struct Backlog {
    events: VecDeque<Queued>,
    /// Events dropped because the queue was full, since the start.
    dropped: u64,
}

/// One queued event, and when it happened (ms since 1970).
struct Queued {
    happened: Happened,
    time: u64,
}

/// An events batch being sent: its body (the same bytes on every attempt) and how many
/// events it carries.
struct Batch {
    body: Value,
    len: usize,
}

impl Events {
    /// What the hub tells: each event is queued here.
    fn observer(self: &Arc<Self>) -> Observer {
        let events = self.clone();
        Observer::new(move |happened| events.push(happened))
    }

    fn push(&self, happened: Happened) {
        let mut backlog = self.backlog.lock().unwrap();
        if backlog.events.len() >= EVENTS_QUEUE {
            backlog.events.pop_front();
            backlog.dropped += 1;
            self.endpoint.metrics.webhook_event_dropped();
            throttled!(
                warn,
                dropped = backlog.dropped,
                "the events webhook is not keeping up: its queue is full and the oldest event \
                 was dropped"
            );
        }
        backlog.events.push_back(Queued {
            happened,
            time: now_ms(),
        });
        drop(backlog);
        self.ready.notify_one();
    }

    /// Up to [`EVENTS_BATCH`] queued events, oldest first, as a request body; None when
    /// nothing is queued.
    fn take(&self) -> Option<Batch> {
        let taken: Vec<Queued> = {
            let mut backlog = self.backlog.lock().unwrap();
            let n = backlog.events.len().min(EVENTS_BATCH);
            backlog.events.drain(..n).collect()
        };
        if taken.is_empty() {
            return None;
        }
        let len = taken.len();
        let events: Vec<Value> = taken.into_iter().map(event_json).collect();
        Some(Batch {
            body: json!({ "events": events }),
            len,
        })
    }

    /// Posts one batch: whether the backend took it (any 2xx).
    async fn send(&self, batch: &Batch) -> Result<(), String> {
        match self.endpoint.post(&batch.body).await {
            Ok(answer) if answer.status.is_success() => Ok(()),
            Ok(answer) => Err(format!("it answered {}", answer.status)),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Posts the queued events, in order, until `stop`: a batch that fails is sent again
    /// (and nothing after it meanwhile), after 250 ms, then twice as long each time, up to
    /// 30 s. On `stop`, what is still queued gets one attempt per batch within `grace`; a
    /// post under way then is its batch's attempt, and has the grace too (not the rest of
    /// its `webhook_timeout`, which may be longer).
    async fn run(self: Arc<Self>, stop: CancellationToken, grace: Duration) {
        let mut pending: Option<Batch> = None;
        let mut retry = FIRST_RETRY;
        loop {
            let batch = match pending.take() {
                Some(batch) => batch,
                None => loop {
                    if let Some(batch) = self.take() {
                        break batch;
                    }
                    tokio::select! {
                        () = stop.cancelled() => return self.flush(None, deadline(grace)).await,
                        () = self.ready.notified() => {}
                    }
                },
            };
            // A post under way when the shutdown starts is its batch's last try: it has the
            // grace, not the rest of a longer webhook timeout.
            let sent = {
                let send = self.send(&batch);
                tokio::pin!(send);
                tokio::select! {
                    sent = &mut send => sent,
                    () = stop.cancelled() => {
                        let deadline = deadline(grace);
                        return match tokio::time::timeout_at(deadline, send).await {
                            Ok(Ok(())) => self.flush(None, deadline).await,
                            _ => self.lost(batch.len),
                        };
                    }
                }
            };
            match sent {
                Ok(()) => retry = FIRST_RETRY,
                Err(failure) => {
                    tracing::warn!(
                        failure,
                        events = batch.len,
                        retry_ms = retry.as_millis() as u64,
                        "the events webhook failed; retrying"
                    );
                    pending = Some(batch);
                    tokio::select! {
                        () = stop.cancelled() => return self.flush(pending, deadline(grace)).await,
                        () = tokio::time::sleep(retry) => {}
                    }
                    retry = (retry * 2).min(MAX_RETRY);
                }
            }
        }
    }

    /// At shutdown: `pending`, then the rest of the queue, one attempt per batch until
    /// `deadline`; what is left is logged as lost.
    async fn flush(&self, mut pending: Option<Batch>, deadline: tokio::time::Instant) {
        loop {
            let Some(batch) = pending.take().or_else(|| self.take()) else {
                return;
            };
            let sent = tokio::time::timeout_at(deadline, self.send(&batch)).await;
            if !matches!(sent, Ok(Ok(()))) {
                return self.lost(batch.len);
            }
        }
    }

    /// At shutdown, when the backend did not take a batch of `batch` events: logs them and
    /// the rest of the queue as lost.
    fn lost(&self, batch: usize) {
        let lost = batch + self.backlog.lock().unwrap().events.len();
        tracing::warn!(
            lost,
            "shutting down: events the events webhook did not take are lost"
        );
    }
}

/// When the shutdown's last try at the events ends: `grace` from now.
fn deadline(grace: Duration) -> tokio::time::Instant {
    tokio::time::Instant::now() + grace
}

/// A queued event as the backend gets it.
fn event_json(queued: Queued) -> Value {
    let (kind, room, member) = match queued.happened {
        Happened::Message {
            frame,
            user,
            mentions,
        } => {
            // The frame as the members got it — a message's type, room, seq, from, sender,
            // text, time; an update's type, room, seq, at and what changed — and who sent it.
            let mut event: serde_json::Map<String, Value> =
                serde_json::from_slice(&frame).expect("message frames are JSON objects");
            if event.get("type").is_some_and(|t| t == "message") {
                event.entry("sender").or_insert(Value::Null);
            }
            event.insert("user".into(), json!(user.as_deref()));
            // Whom it mentions, with their user ids where the room lists them.
            if !mentions.is_empty() {
                event.insert("mentions".into(), json!(mentions));
            }
            return Value::Object(event);
        }
        Happened::Joined { room, member } => ("joined", room, member),
        Happened::Left { room, member } => ("left", room, member),
    };
    json!({
        "type": kind,
        "room": &*room,
        "member": member.id,
        "name": &*member.name,
        "user": member.user.as_deref(),
        "time": queued.time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hmac_of_time_dot_body() {
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"s3cret");
        let header = signature(&key, 1_700_000_000, br#"{"a":1}"#);
        let tag = hmac::sign(&key, br#"1700000000.{"a":1}"#);
        let expected: [u8; 32] = tag.as_ref().try_into().unwrap();
        assert_eq!(
            header,
            format!("t=1700000000,v1={}", crate::certs::hex(&expected))
        );
    }

    #[test]
    fn webhook_urls_are_plain_http_with_a_host() {
        assert_eq!(
            Target::parse("http://127.0.0.1:8000/chat/hook?x=1"),
            Some(Target {
                host: "127.0.0.1".into(),
                port: 8000,
                authority: "127.0.0.1:8000".into(),
                path: "/chat/hook?x=1".into(),
            })
        );
        let v6 = Target::parse("http://[::1]/").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 80));
        assert_eq!(Target::parse("http://backend").unwrap().path, "/");
        for bad in [
            "ftp://x/",
            "http://",
            "backend:80/hook",
            "http://user@backend/",
            "http://backend/#frag",
        ] {
            assert!(url_problem(bad).is_some(), "{bad}");
        }
        assert!(
            url_problem("https://backend/")
                .unwrap()
                .contains("not supported")
        );
    }
}
