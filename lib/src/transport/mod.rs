//! Transports: each file adapts one kind of connection to the session contract
//! ([`FrameReader`](crate::session::FrameReader), [`FrameWriter`](crate::session::FrameWriter)):
//! accepting, framing and close codes. No room logic lives here.
//!
//! `sse` and `poll` are for networks where neither WebTransport nor WebSocket gets
//! through; `posted` is what they share (their clients post their frames).
//!
//! `lines` is the WebTransport stream's framing (lines of at most `max_frame_bytes`), kept
//! apart from its I/O so that it can be tested on its own.
//!
//! Every transport is handed one [`Context`]: what accepting a connection needs (the
//! sessions' shared context, the origin policy, the task tracker), and nothing of the
//! module that mounts the transports.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio_util::task::TaskTracker;

use crate::hub::ConnectionPermit;
use crate::session::{self, FrameReader, FrameWriter, SessionContext};
use crate::throttle::{AddressPermit, HolderBudgets, PerAddress, Seat, throttled};

mod lines;
pub(crate) mod poll;
pub(crate) mod posted;
pub(crate) mod relay;
pub(crate) mod sse;
pub(crate) mod websocket;
pub(crate) mod webtransport;

/// What every transport needs to accept connections and run their sessions.
pub(crate) struct Context {
    pub session: SessionContext,
    pub origins: OriginPolicy,
    /// Every session task, so that shutdown can wait for them (axum's graceful shutdown
    /// does not track upgraded WebSockets).
    pub tracker: TaskTracker,
    /// tungstenite's read buffer per WebSocket.
    pub ws_read_buffer: usize,
    /// Connections per client address.
    pub per_address: Arc<PerAddress>,
    /// SSE streams and held polls per client address.
    pub streams: Arc<PerAddress>,
    /// Proxies whose `X-Forwarded-*` headers are believed: the client's address, scheme,
    /// host and prefix as they say. Nobody else's.
    pub trusted_proxies: Vec<IpAddr>,
    /// The sessions whose clients post their frames (SSE, long polling).
    pub posted: posted::Sessions,
    /// The long-polling sessions' queues.
    pub polled: poll::Polled,
}

impl Context {
    /// Whether `ip` is a trusted proxy.
    pub(crate) fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted_proxies.iter().any(|p| p.to_canonical() == ip)
    }

    /// The client's address: the peer's, or — when the peer is a trusted proxy — the one
    /// `X-Forwarded-For` names: the last address there that is not itself a trusted proxy
    /// (each proxy appends the address it received the request from).
    pub(crate) fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse::<IpAddr>().ok())
            .rev()
            .find(|ip| !self.trusts(*ip))
            .unwrap_or(peer)
    }
}

/// Why a connection was not admitted. The HTTP transports (WebSocket, SSE, long polling)
/// answer it as below; WebTransport answers in its own handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Its `Origin` is not one the server allows.
    Origin,
    /// The server is shutting down.
    ShuttingDown,
    /// Its address holds `max_connections_per_ip` connections already.
    Address,
    /// The server holds `max_connections` connections.
    Full,
    /// Its address has `max_streams_per_ip` SSE streams and held polls open.
    Streams,
}

impl Refused {
    /// What the client is told.
    pub(crate) fn message(self) -> &'static str {
        match self {
            Refused::Origin => "origin not allowed",
            Refused::Address => "too many connections from your address",
            Refused::Streams => "too many streams and polls from your address",
            Refused::ShuttingDown => "shutting down",
            Refused::Full => "too many connections",
        }
    }

    /// When to try again: soon for a node that is going away (the next attempt reaches
    /// another), later for a budget used up; never for an origin.
    pub(crate) fn retry_after(self) -> Option<Duration> {
        match self {
            Refused::Origin => None,
            Refused::ShuttingDown => Some(Duration::from_secs(1)),
            Refused::Address | Refused::Streams | Refused::Full => Some(session::BUSY_WAIT),
        }
    }

    /// Whether a WebSocket or WebTransport client is told over an accepted connection
    /// ([`session::refuse_busy`](crate::session::refuse_busy)) rather than by the
    /// handshake's status, which browsers cannot read: a refusal for load, which the
    /// client waits out and tries again.
    pub(crate) fn is_busy(self) -> bool {
        matches!(self, Refused::Address | Refused::Full)
    }
}

impl Context {
    /// Tells a WebSocket or WebTransport client refused for load that the server is busy,
    /// over the connection it was accepted on (see [`Refused::is_busy`]).
    pub(crate) async fn refuse_busy(
        &self,
        refused: Refused,
        reader: impl FrameReader,
        writer: impl FrameWriter,
    ) {
        let wait = refused.retry_after().unwrap_or_default();
        session::refuse_busy(&self.session, reader, writer, wait, refused.message()).await;
    }
}

impl IntoResponse for Refused {
    /// The status, and `Retry-After` (seconds) when trying again can succeed.
    fn into_response(self) -> Response {
        let status = match self {
            Refused::Origin => StatusCode::FORBIDDEN,
            Refused::Address | Refused::Streams => StatusCode::TOO_MANY_REQUESTS,
            Refused::ShuttingDown | Refused::Full => StatusCode::SERVICE_UNAVAILABLE,
        };
        match self.retry_after() {
            Some(wait) => (
                status,
                [(header::RETRY_AFTER, wait.as_secs().to_string())],
                self.message(),
            )
                .into_response(),
            None => (status, self.message()).into_response(),
        }
    }
}

/// What an admitted connection holds until it ends: its place in the server's count, and
/// in its address's until its session takes that ([`Admitted::seat`]).
pub(crate) struct Admitted {
    _total: ConnectionPermit,
    address: Option<AddressPermit>,
    /// The client's address, when known.
    pub client: Option<IpAddr>,
}

impl Admitted {
    /// The session's seat: whom it counts against as far as its address tells, with its
    /// place among the address's connections (which moves to its user once it is
    /// identified as one).
    pub(crate) fn seat(&mut self, budgets: &HolderBudgets) -> Box<Seat> {
        budgets.address_seat(self.client, self.address.take())
    }
}

impl Context {
    /// Admits a connection from `client` (None when the host serves without peer
    /// addresses: then only the total limit holds) with `Origin` header `origin`, or says
    /// why not. Every transport admits through here, in this order.
    pub(crate) fn admit(
        &self,
        origin: Option<&str>,
        client: Option<IpAddr>,
    ) -> Result<Admitted, Refused> {
        if !self.origins.allows(origin) {
            throttled!(info, ?origin, ?client, "refused: origin not allowed");
            return Err(Refused::Origin);
        }
        if self.session.shutdown.is_cancelled() {
            return Err(Refused::ShuttingDown);
        }
        let address = match client.map(|ip| self.per_address.admit(ip)) {
            Some(None) => {
                throttled!(
                    warn,
                    ?client,
                    "refused: too many connections from this address"
                );
                return Err(Refused::Address);
            }
            Some(permit) => permit,
            None => None,
        };
        let Some(total) = self.session.hub.try_connect() else {
            throttled!(warn, ?client, "refused: connection limit reached");
            return Err(Refused::Full);
        };
        Ok(Admitted {
            _total: total,
            address,
            client,
        })
    }
}

impl Context {
    /// A place among its address's `max_streams_per_ip` for an SSE stream or a held poll
    /// from `peer` (None when the host serves without peer addresses: nothing to count),
    /// held until dropped. Meanwhile the transport gives back the connection's place among
    /// those not yet upgraded
    /// ([`Unupgraded::release`](crate::throttle::Unupgraded::release)): streams have this
    /// budget instead.
    pub(crate) fn hold_stream(
        &self,
        peer: Option<SocketAddr>,
        headers: &HeaderMap,
    ) -> Result<Option<AddressPermit>, Refused> {
        let Some(client) = peer.map(|peer| self.client_address(peer.ip(), headers)) else {
            return Ok(None);
        };
        match self.streams.admit(client) {
            Some(permit) => Ok(Some(permit)),
            None => {
                throttled!(
                    warn,
                    %client,
                    "refused: too many streams and polls from this address"
                );
                Err(Refused::Streams)
            }
        }
    }
}

/// Which `Origin` headers may open a connection.
#[derive(Debug, Clone)]
pub(crate) struct OriginPolicy {
    allowed: Vec<String>,
    any: bool,
    allow_missing: bool,
}

/// Origins compare without case and without a trailing slash.
fn normalize(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

impl OriginPolicy {
    /// The policy for the configured origins (`None`: the server's own origins, given the
    /// HTTP address actually bound).
    pub(crate) fn new(
        configured: Option<&[String]>,
        allow_missing: bool,
        http: SocketAddr,
    ) -> OriginPolicy {
        let allowed: Vec<String> = match configured {
            Some(list) => list.iter().map(|o| normalize(o)).collect(),
            None => {
                let port = http.port();
                let mut own = vec![
                    format!("http://localhost:{port}"),
                    format!("http://127.0.0.1:{port}"),
                    format!("http://[::1]:{port}"),
                ];
                if !http.ip().is_loopback() && !http.ip().is_unspecified() {
                    own.push(format!("http://{http}"));
                }
                own
            }
        };
        OriginPolicy {
            any: allowed.iter().any(|o| o == "*"),
            allowed,
            allow_missing,
        }
    }

    /// Whether a request with this `Origin` header (None: no header) may connect.
    pub(crate) fn allows(&self, origin: Option<&str>) -> bool {
        match origin {
            None => self.allow_missing,
            Some(_) if self.any => true,
            Some(origin) => {
                // Checked on every post and poll of a page from another origin: compared as
                // `normalize` would write it, without writing it.
                let origin = origin.trim().trim_end_matches('/');
                self.allowed.iter().any(|a| a.eq_ignore_ascii_case(origin))
            }
        }
    }
}

/// Whether an answer may name `origin` in `Access-Control-Allow-Origin`: never an opaque
/// origin (`null`: a sandboxed frame, a `data:` or `file:` page), which any site can give
/// itself, so that naming it would hand the answer to every site.
pub(crate) fn nameable(origin: &str) -> bool {
    !origin.eq_ignore_ascii_case("null")
}

/// A copy of `headers` that shares no memory with the request it came from.
pub(crate) fn detached(headers: &HeaderMap) -> HeaderMap {
    headers
        .iter()
        .filter_map(|(name, value)| {
            Some((
                HeaderName::from_bytes(name.as_str().as_bytes()).ok()?,
                HeaderValue::from_bytes(value.as_bytes()).ok()?,
            ))
        })
        .collect()
}

/// A peer's address as the connection log lines show it.
pub(crate) fn shown(peer: Option<std::net::SocketAddr>) -> String {
    peer.map_or_else(|| "unknown".into(), |p| p.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_origins_are_the_servers_own() {
        let http: SocketAddr = "127.0.0.1:8123".parse().unwrap();
        let policy = OriginPolicy::new(None, true, http);
        assert!(policy.allows(Some("http://localhost:8123")));
        assert!(policy.allows(Some("http://127.0.0.1:8123/")));
        assert!(policy.allows(Some("HTTP://LOCALHOST:8123")));
        assert!(!policy.allows(Some("http://localhost:8124")));
        assert!(!policy.allows(Some("https://evil.example")));
        assert!(!policy.allows(Some("null")));
        assert!(policy.allows(None));
    }

    #[test]
    fn configured_origins_replace_the_defaults() {
        let http = "127.0.0.1:80".parse().unwrap();
        let configured = ["https://chat.example.com/".to_string()];
        let policy = OriginPolicy::new(Some(&configured), false, http);
        assert!(policy.allows(Some("https://chat.example.com")));
        assert!(!policy.allows(Some("http://localhost:80")));
        assert!(!policy.allows(None));
        let policy = OriginPolicy::new(Some(&["*".to_string()]), true, http);
        assert!(policy.allows(Some("https://anything.example")));
    }
}
