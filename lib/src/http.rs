//! The HTTP side, as an axum [`Router`] a host application can merge: the client's
//! configuration (`GET /wtchat/config`), the WebSocket fallback (`GET /wtchat/ws`), the
//! client (`GET /wtchat/wtchat.js`), and — when an API key is configured — the API for the
//! host's backend (`/wtchat/api/...`).
//!
//! Every `POST` route takes a body of at most what it can need (see [`body_limit`]): frames
//! are what a post may carry, a ticket request and the opening of a long-polling session
//! read none, the API's largest call is a publish of the longest text.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRef, Query, State};
use axum::http::StatusCode;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::auth::{ConnectRequest, TICKET_TTL_SECS, Transport};
use crate::config::PATH;
use crate::host::{Host, PublishError, ReactError};
use crate::protocol::{CloseCode, ErrorCode, Limits, REACTORS_PAGE};
use crate::throttle::{PerAddressRate, throttled};
use crate::transport::{self, poll, posted, sse, websocket};

/// The browser client, built into the binary so that `wtchat` is one self-contained file.
const CLIENT_JS: &str = include_str!("../client/wtchat.js");
/// The demo chat page.
const DEMO_PAGE: &str = include_str!("../client/index.html");

/// SHA-256 digests of the development certificate in use (none with a CA-issued one).
/// Replaced on renewal, read on every `/wtchat/config`.
pub(crate) type Digests = Arc<RwLock<Vec<[u8; 32]>>>;

/// What the routes need; cloned for every request, so every field is cheap to clone.
#[derive(Clone)]
pub(crate) struct HttpState {
    /// For the WebSocket upgrade.
    pub transport: Arc<transport::Context>,
    /// For the API.
    pub host: Host,
    /// The key the host's backend presents to the API; None disables the API.
    pub api_key: Option<Arc<str>>,
    /// For `/wtchat/config`: where WebTransport is, and which certificate to pin.
    pub webtransport_port: u16,
    pub public_webtransport_url: Option<Arc<str>>,
    /// Where the chat's HTTP side is reached, when configured (`https://example.com/chat`).
    pub public_url: Option<Arc<str>>,
    pub digests: Digests,
    pub demo_page: bool,
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub metrics: MetricsAccess,
    /// Ticket requests per client address: each is a call to the host's login.
    pub ticket_rate: Arc<PerAddressRate>,
}

/// Who may read `/wtchat/metrics`.
#[derive(Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) enum MetricsAccess {
    /// Not served.
    Off,
    /// Anyone who reaches it.
    Open,
    /// Requests bearing the API key.
    ApiKey,
}

/// The WebSocket upgrade handler sees only the transports' context.
impl FromRef<HttpState> for Arc<transport::Context> {
    fn from_ref(state: &HttpState) -> Self {
        state.transport.clone()
    }
}

/// The body of a request to a route that reads none (a ticket request, the opening of a
/// long-polling session): a client has no reason to send more than a few bytes.
const NO_BODY_BYTES: usize = 1024;

/// The body of the API's largest call: a publish of the longest text, room and sender
/// name, every character escaped as JSON may escape it (`\uD83D\uDE00`: 12 bytes for one
/// emoji, as PHP's `json_encode` writes it), and a kilobyte for the rest (the keys, a
/// user id).
fn api_body_bytes(limits: &Limits) -> usize {
    12 * (limits.max_text_chars + limits.max_room_chars + limits.max_name_chars) + 1024
}

/// `route` with request bodies of at most `limit` bytes, answered 413 beyond: a declared
/// `Content-Length` over it at once, before a byte of the body is read (a slow upload holds
/// nothing), and a body that grows past it (chunked) as soon as it does, by the extractors
/// (axum's [`DefaultBodyLimit`], 2 MB otherwise). A route that reads no body never reads
/// an undeclared one.
fn body_limit<S: Clone + Send + Sync + 'static>(
    route: MethodRouter<S>,
    limit: usize,
) -> MethodRouter<S> {
    route
        .route_layer(middleware::from_fn(
            move |request: axum::extract::Request, next: Next| async move {
                let declared = request
                    .headers()
                    .get(header::CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                if declared.is_some_and(|length| length > limit as u64) {
                    return (
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("a body of at most {limit} bytes\n"),
                    )
                        .into_response();
                }
                next.run(request).await
            },
        ))
        .route_layer(DefaultBodyLimit::max(limit))
}

/// The chat's routes, all under [`PATH`], plus the demo page at `/` when configured.
pub(crate) fn router(state: HttpState) -> Router {
    // SSE and long polling hand out their sessions' URLs under the prefix the client used.
    let under_prefix = || middleware::from_fn_with_state(state.clone(), routes_at);
    let posts = posted::max_post_bytes(state.host.limits.max_frame_bytes);
    let router = Router::new()
        .route(&format!("{PATH}/config"), get(config))
        .route(&format!("{PATH}/health"), get(health))
        .route(&format!("{PATH}/ready"), get(ready))
        .route(&format!("{PATH}/ws"), get(websocket::upgrade))
        .route(&format!("{PATH}/sse"), get(sse::open).layer(under_prefix()))
        .route(
            &format!("{PATH}/sse/{{session}}"),
            body_limit(post(posted::post), posts).options(posted::preflight),
        )
        .route(
            &format!("{PATH}/poll"),
            body_limit(post(poll::open), NO_BODY_BYTES).layer(under_prefix()),
        )
        .route(
            &format!("{PATH}/poll/{{session}}"),
            get(poll::poll)
                .merge(body_limit(post(posted::post), posts))
                .options(posted::preflight),
        )
        .route(
            &format!("{PATH}/wtchat.js"),
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
                        (header::CACHE_CONTROL, "no-cache"),
                        // A page on another origin imports the module: it is public.
                        (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
                    ],
                    CLIENT_JS,
                )
            }),
        );
    let router = if state.transport.session.auth.issues_tickets() {
        router.route(
            &format!("{PATH}/ticket"),
            body_limit(post(ticket), NO_BODY_BYTES).options(ticket_preflight),
        )
    } else {
        router
    };
    let router = if state.api_key.is_some() {
        // The key is checked before anything else, the body included. A router of its
        // own: route_layer guards every route already on a router.
        let call = |route| body_limit(route, api_body_bytes(&state.host.limits));
        let api = Router::new()
            .route(&format!("{PATH}/api/publish"), call(post(api_publish)))
            .route(&format!("{PATH}/api/members"), get(api_members))
            .route(&format!("{PATH}/api/kick"), call(post(api_kick)))
            .route(&format!("{PATH}/api/history"), get(api_history))
            .route(&format!("{PATH}/api/delete"), call(post(api_delete)))
            .route(&format!("{PATH}/api/edit"), call(post(api_edit)))
            .route(&format!("{PATH}/api/react"), call(post(api_react)))
            .route(&format!("{PATH}/api/reactions"), get(api_reactions))
            .route(&format!("{PATH}/api/read"), call(post(api_read)))
            .route(&format!("{PATH}/api/unread"), get(api_unread))
            .route(&format!("{PATH}/api/ban"), call(post(api_ban)))
            .route(&format!("{PATH}/api/unban"), call(post(api_unban)))
            .route_layer(middleware::from_fn_with_state(
                state.clone(),
                require_api_key,
            ));
        router.merge(api)
    } else {
        router
    };
    // Without the `metrics` feature the builder refused `metrics(true)`: it is off.
    #[cfg(feature = "metrics")]
    let router = match state.metrics {
        MetricsAccess::Off => router,
        MetricsAccess::Open => router.route(&format!("{PATH}/metrics"), get(metrics)),
        MetricsAccess::ApiKey => router.route(
            &format!("{PATH}/metrics"),
            get(metrics).route_layer(middleware::from_fn_with_state(
                state.clone(),
                require_api_key,
            )),
        ),
    };
    let router = if state.demo_page {
        router.route("/", get(|| async { Html(DEMO_PAGE) }))
    } else {
        router
    };
    router.with_state(state)
}

/// Where the client reached the chat's HTTP side, to hand it URLs that work from there:
/// the configured public URL; else the request's `Host` under the prefix the host mounted
/// the router at, with `X-Forwarded-Proto`, `X-Forwarded-Host` and `X-Forwarded-Prefix`
/// honoured when the request comes from a trusted proxy (and only then: anyone else could
/// send them).
struct Reached {
    secure: bool,
    /// `name[:port]`, as in a URL.
    host: String,
    /// The path in front of `/wtchat` (empty, or `/chat`).
    prefix: String,
}

impl Reached {
    fn of(state: &HttpState, request: &axum::extract::Request) -> Reached {
        if let Some(public) = &state.public_url {
            let (scheme, rest) = public.split_once("://").unwrap_or(("http", public));
            let (host, prefix) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            return Reached {
                secure: scheme.eq_ignore_ascii_case("https"),
                host: host.to_string(),
                prefix: prefix.trim_end_matches('/').to_string(),
            };
        }
        let headers = request.headers();
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                // A proxy chain appends: the first value is what the client sent.
                .map(|v| v.split(',').next().unwrap_or(v).trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let mounted = request
            .extensions()
            .get::<axum::extract::NestedPath>()
            .map(|nested| nested.as_str().trim_end_matches('/').to_string())
            .unwrap_or_default();
        let mut reached = Reached {
            secure: false,
            host: header("host").unwrap_or_else(|| "localhost".into()),
            prefix: mounted,
        };
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip());
        if peer.is_some_and(|ip| state.transport.trusts(ip)) {
            if let Some(proto) = header("x-forwarded-proto") {
                reached.secure = proto.eq_ignore_ascii_case("https");
            }
            if let Some(host) = header("x-forwarded-host") {
                reached.host = host;
            }
            if let Some(prefix) = header("x-forwarded-prefix") {
                reached.prefix = format!("{}{}", prefix.trim_end_matches('/'), reached.prefix);
            }
        }
        reached
    }

    /// The host name without the port: `[::1]:8080` → `[::1]`, `localhost:8080` → `localhost`.
    fn name(&self) -> &str {
        let host = self.host.as_str();
        match host.strip_prefix('[') {
            Some(rest) => rest.find(']').map_or(host, |end| &host[..end + 2]),
            None => host.split(':').next().unwrap_or(host),
        }
    }

    /// The URL of `path` under the chat's HTTP side, with `scheme` or its secure twin.
    fn url(&self, plain: &str, secure: &str, path: &str) -> String {
        let scheme = if self.secure { secure } else { plain };
        format!("{scheme}://{}{}{PATH}{path}", self.host, self.prefix)
    }
}

/// What a client needs to connect: the WebTransport URL and the certificate digests to pin
/// (empty with a CA-issued certificate), the WebSocket URL, where to get tickets, and the
/// limits it must respect. Every URL is as the client reached us.
async fn config(State(state): State<HttpState>, request: axum::extract::Request) -> Response {
    let reached = Reached::of(&state, &request);
    let hashes: Vec<_> = state
        .digests
        .read()
        .unwrap()
        .iter()
        .map(|d| json!({"algorithm": "sha-256", "value": crate::certs::hex(d)}))
        .collect();
    let limits = &state.host.limits;
    let body = json!({
        // The newest protocol version the server speaks, and the oldest it still does.
        "protocol": crate::protocol::PROTOCOL,
        "oldestProtocol": crate::protocol::OLDEST_PROTOCOL,
        "webtransport": match &state.public_webtransport_url {
            Some(url) => url.to_string(),
            None => format!("https://{}:{}{PATH}", reached.name(), state.webtransport_port),
        },
        "certificateHashes": hashes,
        "websocket": reached.url("ws", "wss", "/ws"),
        // Where neither gets through: Server-Sent Events, then long polling.
        "sse": reached.url("http", "https", "/sse"),
        "poll": reached.url("http", "https", "/poll"),
        // Where a browser gets its tickets before connecting, and for what: its cookies
        // (`login`: the host's hook decides who it is) or its token (`token`, sent in a
        // header, so that only single-use tickets travel in URLs).
        "ticket": state.transport.session.auth.issues_tickets()
            .then(|| reached.url("http", "https", "/ticket")),
        "ticketFor": state.transport.session.auth.tickets_for(),
        "limits": {
            "maxFrameBytes": limits.max_frame_bytes,
            // What one post of frames (SSE, long polling) may hold.
            "maxPostBytes": posted::max_post_bytes(limits.max_frame_bytes),
            "maxTextChars": limits.max_text_chars,
            "maxNameChars": limits.max_name_chars,
            "maxRoomChars": limits.max_room_chars,
            "maxRoomsPerConnection": limits.max_rooms_per_connection,
            "framesPerSecond": limits.frames_per_second,
            "frameBurst": limits.frame_burst,
            "idleTimeoutMs": state.transport.session.idle_timeout.as_millis() as u64,
            // How long a sender may edit its message (0: never), for the page's "edit".
            "editWindowMs": limits.edit_window.as_millis() as u64,
            "reactionsPerMessage": limits.reactions_per_message,
            "reactionsPerMember": limits.reactions_per_member,
            "reactionNames": &limits.reaction_names,
        },
    });
    // Pages on other origins fetch it; it holds nothing secret and no credentials are sent.
    let headers = [
        (header::CACHE_CONTROL, "no-store"),
        (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
    ];
    (headers, Json(body)).into_response()
}

/// The transports a browser may try, each with a ticket of its own: a ticket is single-use,
/// and the client may open both before it keeps one.
const TICKET_TRANSPORTS: [Transport; 4] = [
    Transport::WebTransport,
    Transport::WebSocket,
    Transport::Sse,
    Transport::LongPoll,
];

/// `POST /wtchat/ticket`: the page's credentialed request (its cookies, its headers) goes
/// to the host's hook, or — on a server of tokens — its `Authorization: Bearer TOKEN` is
/// checked; a yes is `{"tickets": {"webtransport": T, "websocket": T, "sse": T,
/// "longpoll": T}, "expiresIn": 30}`, single-use tickets for that identity (only they
/// travel in URLs, where proxies log them); a no is 401 with the reason. From an origin
/// that may not connect: 403. Past the address's `ticket_rate`:
/// 429 with `Retry-After` (seconds), before the hook is asked. The answer names the page's
/// origin and allows credentials (CORS), so a page on the host's other origin gets it too.
async fn ticket(State(state): State<HttpState>, request: axum::extract::Request) -> Response {
    let headers = request.headers();
    let origin = headers
        .get(header::ORIGIN)
        .map(|o| o.to_str().unwrap_or("\u{0}").to_string());
    let transport = &state.transport;
    if !transport.origins.allows(origin.as_deref()) {
        return api_error(
            StatusCode::FORBIDDEN,
            "origin_forbidden",
            "this origin may not connect",
        );
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| transport.client_address(addr.ip(), headers));
    if let Some(Err(wait)) = peer.map(|ip| state.ticket_rate.take(ip)) {
        throttled!(info, client = ?peer, "ticket refused: too many from this address");
        let mut answer = api_error(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited.as_str(),
            "too many ticket requests from this address; retry after Retry-After seconds",
        );
        // Whole seconds, rounded up: a client that waits that long finds a ticket.
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        answer
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        return with_credentials_cors(answer, origin.as_deref());
    }
    let connect = ConnectRequest {
        transport: Transport::Ticket,
        path: request.uri().path().to_string(),
        query: request.uri().query().unwrap_or_default().to_string(),
        origin: origin.clone(),
        headers: headers.clone(),
    };
    let answer = match transport
        .session
        .auth
        .tickets(connect, TICKET_TRANSPORTS.len())
        .await
    {
        Some(Ok(tickets)) => {
            let tickets: serde_json::Map<String, serde_json::Value> = TICKET_TRANSPORTS
                .iter()
                .zip(tickets)
                .map(|(t, ticket)| (t.as_str().to_string(), ticket.into()))
                .collect();
            Json(json!({"tickets": tickets, "expiresIn": TICKET_TTL_SECS})).into_response()
        }
        Some(Err(refusal)) => {
            throttled!(
                info,
                reason = refusal.message(),
                "ticket refused by authentication"
            );
            api_error(StatusCode::UNAUTHORIZED, "unauthorized", refusal.message())
        }
        None => api_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "this server issues no tickets",
        ),
    };
    with_credentials_cors(answer, origin.as_deref())
}

/// The CORS preflight of `POST /wtchat/ticket`, for a client that sends more than a simple
/// request (the browser client on a server of tokens sends `Authorization`). It allows
/// what the route reads and nothing else, whatever is asked for: the method `POST`, and of
/// the headers a page can set, only
/// `Authorization` (the auth webhook is sent it; cookies travel without a preflight).
async fn ticket_preflight(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
    if !state.transport.origins.allows(origin) {
        return StatusCode::FORBIDDEN.into_response();
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    let h = response.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    with_credentials_cors(response, origin)
}

/// Lets the page of `origin` (already allowed) read the answer of a credentialed request,
/// its `Retry-After` included; never an opaque origin (see [`transport::nameable`]).
fn with_credentials_cors(mut response: Response, origin: Option<&str>) -> Response {
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    let named = origin.filter(|o| transport::nameable(o));
    if let Some(origin) = named.and_then(|o| HeaderValue::from_str(o).ok()) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("Retry-After"),
        );
    }
    response
}

/// Tells the session a request opens where the chat's routes are as its client reached
/// them, under whatever prefix: the URLs it hands out are the client's to use as they are.
async fn routes_at(
    State(state): State<HttpState>,
    mut request: axum::extract::Request,
    next: Next,
) -> Response {
    let at = format!("{}{PATH}", Reached::of(&state, &request).prefix);
    request.extensions_mut().insert(posted::RoutesAt(at.into()));
    next.run(request).await
}

/// `GET /wtchat/health`: 200 while the process serves HTTP (liveness).
async fn health() -> Response {
    ([(header::CACHE_CONTROL, "no-store")], "ok\n").into_response()
}

/// `GET /wtchat/ready`: 200 when this node should get new clients — its engine answers,
/// its certificate is valid, it is not shutting down — else 503 saying what is wrong,
/// one thing a line. (Its listeners are bound: the server does not start otherwise.)
async fn ready(State(state): State<HttpState>) -> Response {
    let hub = &state.host.hub;
    let mut problems = Vec::new();
    if state.transport.session.shutdown.is_cancelled() {
        problems.push("shutting down".to_string());
    }
    if let Err(why) = hub.engine_reachable().await {
        problems.push(format!("engine unreachable: {why}"));
    }
    if !hub.metrics().certificate_valid() {
        problems.push("the TLS certificate has expired".to_string());
    }
    let status = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut text: String = problems.iter().map(|p| format!("{p}\n")).collect();
    if text.is_empty() {
        text.push_str("ok\n");
    }
    (status, [(header::CACHE_CONTROL, "no-store")], text).into_response()
}

/// `GET /wtchat/metrics`: Prometheus text (OpenMetrics format).
#[cfg(feature = "metrics")]
async fn metrics(State(state): State<HttpState>) -> Response {
    let hub = &state.host.hub;
    (
        [
            (
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        hub.metrics().render(hub.gauges()),
    )
        .into_response()
}

/// Whether the request bears the API key (`Authorization: Bearer KEY`). Compared in
/// constant time: the key is a password.
fn authorized(state: &HttpState, headers: &HeaderMap) -> bool {
    let Some(key) = &state.api_key else {
        return false;
    };
    crate::auth::bearer(headers)
        .is_some_and(|given| crate::auth::same_secret(given.as_bytes(), key.as_bytes()))
}

fn api_error(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"error": code, "message": message}))).into_response()
}

/// Lets an API request through only with the API key; 401 otherwise.
async fn require_api_key(
    State(state): State<HttpState>,
    request: axum::extract::Request,
    next: Next,
) -> Response {
    if authorized(&state, request.headers()) {
        next.run(request).await
    } else {
        api_error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send the API key as Authorization: Bearer KEY",
        )
    }
}

#[derive(Deserialize)]
struct PublishRequest {
    room: String,
    from: String,
    text: String,
    #[serde(default)]
    mentions: Vec<String>,
}

/// `POST /wtchat/api/publish {"room","from","text","mentions"?}` → `{"seq"}`; `mentions`
/// are user ids.
async fn api_publish(State(state): State<HttpState>, Json(body): Json<PublishRequest>) -> Response {
    let mentions: Vec<&str> = body.mentions.iter().map(String::as_str).collect();
    let published = state
        .host
        .publish(&body.room, &body.from, &body.text, &mentions)
        .await;
    match published {
        Ok(seq) => Json(json!({"room": body.room, "seq": seq})).into_response(),
        Err(e @ PublishError::Storage(_)) => storage_error(&e),
        Err(e) => api_error(StatusCode::BAD_REQUEST, e.code().as_str(), &e.to_string()),
    }
}

/// 503 with `storage_failed`: the request may succeed later.
fn storage_error(e: &dyn std::fmt::Display) -> Response {
    api_error(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::StorageFailed.as_str(),
        &e.to_string(),
    )
}

/// Most messages in one page of the history API: an export pages through a room.
const API_HISTORY_PAGE: usize = 1000;

#[derive(Deserialize)]
struct HistoryQuery {
    room: String,
    before: Option<u64>,
    limit: Option<usize>,
}

/// `GET /wtchat/api/history?room=R[&before=SEQ][&limit=N]` →
/// `{"room","messages":[{"seq","time","from","sender","text","edited","reactions"}],"more"}`:
/// up to N (default 100, at most 1000) messages below `before`, oldest first.
async fn api_history(
    State(state): State<HttpState>,
    Query(query): Query<HistoryQuery>,
) -> Response {
    let limit = query.limit.unwrap_or(100).clamp(1, API_HISTORY_PAGE);
    match state.host.history(&query.room, query.before, limit).await {
        Ok(page) => {
            let messages: Vec<_> = page
                .messages
                .iter()
                .map(|m| {
                    json!({"seq": m.seq, "time": m.time, "from": m.from,
                           "sender": m.sender, "text": m.text, "edited": m.edited,
                           "reactions": m.reactions})
                })
                .collect();
            Json(json!({"room": query.room, "messages": messages, "more": page.more}))
                .into_response()
        }
        Err(e) => storage_error(&e),
    }
}

#[derive(Deserialize)]
struct DeleteRequest {
    room: String,
    seq: u64,
}

/// `POST /wtchat/api/delete {"room","seq"}` → `{"room","seq","deleted": bool}`; members get
/// an `update` saying so.
async fn api_delete(State(state): State<HttpState>, Json(body): Json<DeleteRequest>) -> Response {
    match state.host.delete(&body.room, body.seq).await {
        Ok(deleted) => {
            Json(json!({"room": body.room, "seq": body.seq, "deleted": deleted})).into_response()
        }
        Err(e) => storage_error(&e),
    }
}

#[derive(Deserialize)]
struct EditRequest {
    room: String,
    seq: u64,
    text: String,
}

/// `POST /wtchat/api/edit {"room","seq","text"}` → `{"room","seq","edited": bool}`; members
/// get an `update` with the new text.
async fn api_edit(State(state): State<HttpState>, Json(body): Json<EditRequest>) -> Response {
    match state.host.edit(&body.room, body.seq, &body.text).await {
        Ok(edited) => {
            Json(json!({"room": body.room, "seq": body.seq, "edited": edited})).into_response()
        }
        Err(e @ PublishError::Storage(_)) => storage_error(&e),
        Err(e) => api_error(StatusCode::BAD_REQUEST, e.code().as_str(), &e.to_string()),
    }
}

#[derive(Deserialize)]
struct ReactRequest {
    room: String,
    seq: u64,
    user: String,
    name: Option<String>,
    reaction: String,
    #[serde(default)]
    remove: bool,
}

/// `POST /wtchat/api/react {"room","seq","user","name","reaction","remove"?}` →
/// `{"room","seq","mine"}`: adds (or with `remove`, takes back) the user's reaction, as if
/// its connection had; `mine` is its reactions on the message now.
async fn api_react(State(state): State<HttpState>, Json(body): Json<ReactRequest>) -> Response {
    let (room, seq, user) = (&body.room, body.seq, &body.user);
    let reacted = match body.remove {
        true => {
            let kind = crate::engine::RecordKind::Unreact;
            state
                .host
                .react(room, seq, user, "", &body.reaction, kind)
                .await
        }
        false => {
            let name = body.name.as_deref().unwrap_or(user);
            let kind = crate::engine::RecordKind::React;
            state
                .host
                .react(room, seq, user, name, &body.reaction, kind)
                .await
        }
    };
    match reacted {
        Ok(mine) => Json(json!({"room": room, "seq": seq, "mine": mine})).into_response(),
        Err(ReactError::Storage(e)) => storage_error(&e),
        Err(e) => api_error(StatusCode::BAD_REQUEST, e.code().as_str(), &e.to_string()),
    }
}

#[derive(Deserialize)]
struct ReactionsQuery {
    room: String,
    seq: u64,
    after: Option<u64>,
    limit: Option<usize>,
}

/// `GET /wtchat/api/reactions?room=R&seq=N[&after=AT][&limit=L]` →
/// `{"room","seq","reactors":[{"reaction","from","sender","at"}],"next"}`: who reacted to
/// message N, in their order, up to L (default and at most 100) after `after`.
async fn api_reactions(
    State(state): State<HttpState>,
    Query(query): Query<ReactionsQuery>,
) -> Response {
    let limit = query.limit.unwrap_or(REACTORS_PAGE).clamp(1, REACTORS_PAGE);
    let (room, seq) = (&query.room, query.seq);
    match state.host.reactors(room, seq, query.after, limit).await {
        Ok(page) => Json(json!({"room": room, "seq": seq, "reactors": page.reactors,
                                "next": page.next}))
        .into_response(),
        Err(e) => storage_error(&e),
    }
}

#[derive(Deserialize)]
struct ReadRequest {
    user: String,
    room: String,
    seq: u64,
}

/// `POST /wtchat/api/read {"user","room","seq"}` → `{"room","seq","unread","mentions",
/// "head"}`: marks the room read up to `seq` for the user (a host user id); its connections
/// get their new read state.
async fn api_read(State(state): State<HttpState>, Json(body): Json<ReadRequest>) -> Response {
    if let Err((code, message)) = state.host.limits.check_room(&body.room) {
        return api_error(StatusCode::BAD_REQUEST, code.as_str(), message);
    }
    match state.host.mark_read(&body.user, &body.room, body.seq).await {
        Ok(read) => Json(
            json!({"room": body.room, "seq": read.seq, "unread": read.unread,
                                "mentions": read.mentions, "head": read.head}),
        )
        .into_response(),
        Err(e) => storage_error(&e),
    }
}

#[derive(Deserialize)]
struct UnreadQuery {
    user: String,
}

/// `GET /wtchat/api/unread?user=U` → `{"user","rooms":[{"room","seq","unread","mentions",
/// "head"}]}`: the user's read state in every room where it has a mark, by room name.
async fn api_unread(State(state): State<HttpState>, Query(query): Query<UnreadQuery>) -> Response {
    match state.host.unread(&query.user).await {
        Ok(rooms) => Json(json!({"user": query.user, "rooms": rooms})).into_response(),
        Err(e) => storage_error(&e),
    }
}

#[derive(Deserialize)]
struct BanRequest {
    user: String,
    room: Option<String>,
    seconds: Option<u64>,
}

/// `POST /wtchat/api/ban {"user","room"?,"seconds"}` → `{"user","room","kicked": N}`: the
/// user (a host user id) may not join the room — every room without `room` — for that
/// long, and its connections there are closed with 4403.
async fn api_ban(State(state): State<HttpState>, Json(body): Json<BanRequest>) -> Response {
    let Some(seconds) = body.seconds.filter(|s| *s > 0) else {
        return api_error(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidFrame.as_str(),
            "give seconds: how long the ban lasts",
        );
    };
    let duration = std::time::Duration::from_secs(seconds);
    match state
        .host
        .ban(body.room.as_deref(), &body.user, duration)
        .await
    {
        Ok(kicked) => {
            Json(json!({"user": body.user, "room": body.room, "kicked": kicked})).into_response()
        }
        Err(e) => storage_error(&e),
    }
}

/// `POST /wtchat/api/unban {"user","room"?}` → `{"user","room"}`: lifts that ban.
async fn api_unban(State(state): State<HttpState>, Json(body): Json<BanRequest>) -> Response {
    match state.host.unban(body.room.as_deref(), &body.user).await {
        Ok(()) => Json(json!({"user": body.user, "room": body.room})).into_response(),
        Err(e) => storage_error(&e),
    }
}

#[derive(Deserialize)]
struct MembersQuery {
    room: String,
    after: Option<u64>,
    limit: Option<usize>,
}

/// `GET /wtchat/api/members?room=R[&after=ID][&limit=N]` →
/// `{"room","count","members":[{"id","name","user"}],"next"}`: every member in id order, or
/// with `limit` a page of them (`next` is the `after` of the next page, null at the end).
async fn api_members(
    State(state): State<HttpState>,
    Query(query): Query<MembersQuery>,
) -> Response {
    let limit = query.limit.map_or(usize::MAX, |n| n.max(1));
    let page = match state
        .host
        .members_page(&query.room, query.after, limit)
        .await
    {
        Ok(page) => page,
        Err(e) => return storage_error(&e),
    };
    let members: Vec<_> = page
        .members
        .iter()
        .map(|m| json!({"id": m.id, "name": m.name, "user": m.user}))
        .collect();
    let body =
        json!({"room": query.room, "count": page.count, "members": members, "next": page.next});
    Json(body).into_response()
}

#[derive(Deserialize)]
struct KickRequest {
    room: String,
    user: Option<String>,
    member: Option<u64>,
}

/// `POST /wtchat/api/kick {"room","user"}` (every connection of that user id) or
/// `{"room","member"}` (that member id, for anonymous members) → `{"room","kicked": N}`.
async fn api_kick(State(state): State<HttpState>, Json(body): Json<KickRequest>) -> Response {
    let kicked = match (&body.user, body.member) {
        (Some(user), None) => state.host.kick(&body.room, user),
        (None, Some(member)) => {
            let kicked = state
                .host
                .disconnect_member(&body.room, member, CloseCode::Kicked)
                .await;
            match kicked {
                Ok(kicked) => usize::from(kicked),
                Err(e) => return storage_error(&e),
            }
        }
        _ => {
            return api_error(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidFrame.as_str(),
                "give either user (a user id) or member (a member id)",
            );
        }
    };
    Json(json!({"room": body.room, "kicked": kicked})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_name_is_taken_without_its_port() {
        let name = |host: &str| {
            Reached {
                secure: false,
                host: host.into(),
                prefix: String::new(),
            }
            .name()
            .to_string()
        };
        assert_eq!(name("localhost:8080"), "localhost");
        assert_eq!(name("127.0.0.1:8080"), "127.0.0.1");
        assert_eq!(name("[::1]:8080"), "[::1]");
        assert_eq!(name("chat.example.com"), "chat.example.com");
    }
}
