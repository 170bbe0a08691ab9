//! The configuration: where to listen, which certificate to use, which origins may connect,
//! the host's hooks, and the limits. It is built by [`Config::builder`], whose
//! [`build`](ConfigBuilder::build) refuses every setting that cannot work with a
//! [`ConfigError`] naming the setting and the reason; `wtchat serve` builds its
//! configuration through the same builder, so the command line and the library refuse the
//! same things with the same words. The defaults work on a laptop with no settings at all.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::{AuthHook, ConnectRequest, Identity, Refusal};
use crate::certs::MAX_DAYS;
use crate::engine::{Broker, Engine};
use crate::hooks::{MessageEvent, MessageHook, WebhookConfig};
use crate::hub::HubConfig;
use crate::protocol::Limits;

/// The path of the chat on both the HTTP side (`/wtchat/config`, `/wtchat/ws`, …) and the
/// WebTransport side (sessions are accepted on exactly this path). A prefix of its own lets
/// a host application mount the chat beside its routes without collisions.
pub const PATH: &str = "/wtchat";

/// The shortest token secret or API key accepted. HS256 tokens can be checked offline
/// against guessed secrets as fast as a GPU hashes; 32 random bytes (the hash's own size)
/// put that out of reach.
pub const MIN_SECRET_BYTES: usize = 32;

/// Where the WebTransport certificate comes from.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Tls {
    /// A development certificate in this directory, generated when missing or about to
    /// expire, renewed while running, served by digest (`serverCertificateHashes`).
    Dev {
        /// The directory holding `cert.pem` and `key.pem`.
        dir: PathBuf,
    },
    /// A CA-issued certificate chain and key (PEM files). No digests are served: browsers
    /// verify it the usual way.
    Files {
        /// The certificate chain, leaf first.
        cert: PathBuf,
        /// The private key.
        key: PathBuf,
    },
}

/// A wrapper the host puts around the configured engine (see
/// [`ConfigBuilder::engine_layer`]).
pub(crate) type EngineLayer = Arc<dyn Fn(Arc<dyn Broker>) -> Arc<dyn Broker> + Send + Sync>;

/// A validated configuration: everything `wtchat serve` (or a host application) can set.
/// Made by [`Config::builder`] (or [`Config::default`]) and handed to
/// [`Chat::new`](crate::Chat::new) or [`Server::bind`](crate::Server::bind).
#[derive(Clone)]
#[non_exhaustive]
pub struct Config {
    /// TCP address of the HTTP side.
    pub(crate) http: SocketAddr,
    /// UDP address of WebTransport.
    pub(crate) webtransport: SocketAddr,
    pub(crate) tls: Tls,
    pub(crate) public_webtransport_url: Option<String>,
    /// `None`: the server's own HTTP origins.
    pub(crate) allowed_origins: Option<Vec<String>>,
    pub(crate) allow_missing_origin: bool,
    pub(crate) limits: Limits,
    pub(crate) hub: HubConfig,
    pub(crate) engine: Engine,
    pub(crate) engine_layer: Option<EngineLayer>,
    pub(crate) shutdown_grace: Duration,
    pub(crate) close_grace: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) presence_interval: Duration,
    pub(crate) renew_before: Duration,
    pub(crate) demo_page: bool,
    /// Takes precedence over `token_secret`.
    pub(crate) authenticate: Option<AuthHook>,
    pub(crate) token_secret: Option<String>,
    pub(crate) on_message: Option<MessageHook>,
    pub(crate) api_key: Option<String>,
    pub(crate) ws_read_buffer: usize,
    pub(crate) max_connections_per_ip: usize,
    pub(crate) max_connections_per_user: usize,
    /// `POST /wtchat/ticket` per client address: sustained per second, and at once.
    pub(crate) ticket_rate: u32,
    pub(crate) ticket_burst: u32,
    pub(crate) header_read_timeout: Duration,
    pub(crate) max_http_connections: usize,
    pub(crate) max_http_connections_per_ip: usize,
    /// SSE streams and held polls per client address.
    pub(crate) max_streams_per_ip: usize,
    /// The bits of an IPv6 address that name one client for the per-address budgets.
    pub(crate) ipv6_prefix: u8,
    /// Rooms one address (or signed-in user) may hold open through its connections, and
    /// create per minute.
    pub(crate) max_rooms_per_ip: usize,
    pub(crate) max_new_rooms_per_minute_per_ip: u32,
    pub(crate) max_new_rooms_per_day_per_ip: u32,
    pub(crate) public_url: Option<String>,
    pub(crate) trusted_proxies: Vec<IpAddr>,
    /// The host's backend as HTTP endpoints: hosts in any language.
    pub(crate) webhooks: WebhookConfig,
    pub(crate) metrics: bool,
    pub(crate) metrics_auth: bool,
    pub(crate) drain_window: Duration,
}

/// The defaults, as documented on each [`ConfigBuilder`] method.
impl Default for Config {
    fn default() -> Self {
        Config {
            http: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080),
            webtransport: SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 4433),
            tls: Tls::Dev {
                dir: PathBuf::from("certs"),
            },
            public_webtransport_url: None,
            allowed_origins: None,
            allow_missing_origin: true,
            limits: Limits::default(),
            hub: HubConfig::default(),
            engine: Engine::Memory,
            engine_layer: None,
            shutdown_grace: Duration::from_secs(5),
            close_grace: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            presence_interval: Duration::from_secs(1),
            renew_before: Duration::from_secs(24 * 3600),
            demo_page: true,
            authenticate: None,
            token_secret: None,
            on_message: None,
            api_key: None,
            ws_read_buffer: 1024,
            max_connections_per_ip: 1000,
            max_connections_per_user: 100,
            ticket_rate: 5,
            ticket_burst: 20,
            header_read_timeout: Duration::from_secs(10),
            max_http_connections: 1024,
            max_http_connections_per_ip: 32,
            max_streams_per_ip: 64,
            ipv6_prefix: 64,
            max_rooms_per_ip: 256,
            max_new_rooms_per_minute_per_ip: 120,
            max_new_rooms_per_day_per_ip: 1000,
            public_url: None,
            trusted_proxies: Vec::new(),
            webhooks: WebhookConfig::default(),
            metrics: false,
            metrics_auth: false,
            drain_window: Duration::ZERO,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secret = |s: &Option<String>| s.as_ref().map(|_| "<secret>");
        f.debug_struct("Config")
            .field("http", &self.http)
            .field("webtransport", &self.webtransport)
            .field("tls", &self.tls)
            .field("public_webtransport_url", &self.public_webtransport_url)
            .field("allowed_origins", &self.allowed_origins)
            .field("allow_missing_origin", &self.allow_missing_origin)
            .field("limits", &self.limits)
            .field("hub", &self.hub)
            .field("engine", &self.engine)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("close_grace", &self.close_grace)
            .field("idle_timeout", &self.idle_timeout)
            .field("renew_before", &self.renew_before)
            .field("demo_page", &self.demo_page)
            .field("authenticate", &self.authenticate.is_some())
            .field("token_secret", &secret(&self.token_secret))
            .field("on_message", &self.on_message.is_some())
            .field("api_key", &secret(&self.api_key))
            .field("ws_read_buffer", &self.ws_read_buffer)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .field("max_connections_per_user", &self.max_connections_per_user)
            .field("ticket_rate", &self.ticket_rate)
            .field("ticket_burst", &self.ticket_burst)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("max_http_connections", &self.max_http_connections)
            .field(
                "max_http_connections_per_ip",
                &self.max_http_connections_per_ip,
            )
            .field("max_streams_per_ip", &self.max_streams_per_ip)
            .field("ipv6_prefix", &self.ipv6_prefix)
            .field("max_rooms_per_ip", &self.max_rooms_per_ip)
            .field(
                "max_new_rooms_per_minute_per_ip",
                &self.max_new_rooms_per_minute_per_ip,
            )
            .field(
                "max_new_rooms_per_day_per_ip",
                &self.max_new_rooms_per_day_per_ip,
            )
            .field("public_url", &self.public_url)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("webhooks", &self.webhooks)
            .field("metrics", &self.metrics)
            .field("metrics_auth", &self.metrics_auth)
            .field("drain_window", &self.drain_window)
            .finish()
    }
}

impl Config {
    /// A builder starting from the defaults.
    ///
    /// ```
    /// let config = wtchat::Config::builder()
    ///     .http("127.0.0.1:3000".parse().unwrap())
    ///     .history(50)
    ///     .build()
    ///     .expect("a valid configuration");
    /// # let _ = config;
    /// let refused = wtchat::Config::builder().token_secret("change-me").build().unwrap_err();
    /// assert_eq!(refused.setting(), "token_secret");
    /// ```
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder {
            config: Config::default(),
        }
    }

    /// Where rooms keep their messages.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// File descriptors a process serving this configuration may hold at once: a socket per
    /// connection (`max_connections`, and with [`Server`](crate::Server) its
    /// `max_http_connections` not yet upgraded), and a few dozen of its own (listeners,
    /// the database, Redis, logs). Below this, the open-file limit refuses connections first.
    pub fn open_files_needed(&self) -> u64 {
        (self.hub.max_connections + self.max_http_connections) as u64 + 64
    }
}

/// Builds a [`Config`]: each method sets one setting (its default is in its documentation),
/// and [`build`](Self::build) checks them all together.
#[must_use = "a builder does nothing until build() is called"]
pub struct ConfigBuilder {
    config: Config,
}

impl fmt::Debug for ConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ConfigBuilder").field(&self.config).finish()
    }
}

impl ConfigBuilder {
    /// TCP address of the HTTP side: configuration, WebSocket fallback, client, demo page.
    /// Its origins are the default allowed origins. Port 0 picks a free port (with
    /// [`Server`](crate::Server)). Default `127.0.0.1:8080`.
    pub fn http(mut self, addr: SocketAddr) -> Self {
        self.config.http = addr;
        self
    }

    /// UDP address of WebTransport. The default `[::]:4433` is dual-stack: Chromium dials
    /// `::1` for `localhost`, other clients `127.0.0.1`. Port 0 picks a free port.
    pub fn webtransport(mut self, addr: SocketAddr) -> Self {
        self.config.webtransport = addr;
        self
    }

    /// The WebTransport certificate. Default: a development certificate in `certs/`.
    pub fn tls(mut self, tls: Tls) -> Self {
        self.config.tls = tls;
        self
    }

    /// Where pages reach the chat's HTTP side when that is not what the request says: a
    /// public name, a port, a path prefix behind a proxy (`https://example.com/chat`, under
    /// which `/wtchat/...` lives). `/wtchat/config` builds its URLs from it. Default: from
    /// the request (its `Host`, the prefix the router is nested under, and a trusted
    /// proxy's `X-Forwarded-*`).
    pub fn public_url(mut self, url: impl Into<String>) -> Self {
        self.config.public_url = Some(url.into());
        self
    }

    /// Trusts the proxy at `ip` (repeatable): its `X-Forwarded-For` names the client's
    /// address (for `max_connections_per_ip`), its `X-Forwarded-Proto`, `-Host` and
    /// `-Prefix` how the client reached the chat. Headers from anyone else are ignored.
    /// Default: none.
    pub fn trusted_proxy(mut self, ip: IpAddr) -> Self {
        self.config.trusted_proxies.push(ip);
        self
    }

    /// The WebTransport URL handed to clients, when it is not this server's own address as
    /// the page reached it (a public name, a port forwarded elsewhere): an `https://` URL.
    /// Default: `https://<host the page used>:<bound UDP port>/wtchat`.
    pub fn public_webtransport_url(mut self, url: impl Into<String>) -> Self {
        self.config.public_webtransport_url = Some(url.into());
        self
    }

    /// Allows pages of `origin` (like `https://example.com`, or `*` for any origin) to
    /// connect; repeatable. Once one is given, the defaults — the server's own HTTP origins
    /// `http://localhost:PORT`, `http://127.0.0.1:PORT`, `http://[::1]:PORT` — no longer
    /// apply. Not `*` with an [`auth`](Self::auth) hook or an
    /// [`auth_webhook`](Self::auth_webhook): they log in whatever the request carries (the
    /// page's cookies), so any site could connect as its user; tokens alone
    /// ([`token_secret`](Self::token_secret)) work with `*`, since a page must hold its
    /// token.
    pub fn allow_origin(mut self, origin: impl Into<String>) -> Self {
        self.config
            .allowed_origins
            .get_or_insert_with(Vec::new)
            .push(origin.into());
        self
    }

    /// Refuses requests without an `Origin` header (not a browser: a script, a test, a
    /// backend). Default `false`: they may connect.
    pub fn require_origin(mut self, require: bool) -> Self {
        self.config.allow_missing_origin = !require;
        self
    }

    /// Largest client frame in bytes; it bounds what one read can make the server buffer.
    /// Default 16 KiB. It must hold a `send` frame with the longest text.
    pub fn max_frame_bytes(mut self, bytes: usize) -> Self {
        self.config.limits.max_frame_bytes = bytes;
        self
    }

    /// Longest message text in characters. Default 4000.
    pub fn max_text_chars(mut self, chars: usize) -> Self {
        self.config.limits.max_text_chars = chars;
        self
    }

    /// Longest display name in characters. Default 32.
    pub fn max_name_chars(mut self, chars: usize) -> Self {
        self.config.limits.max_name_chars = chars;
        self
    }

    /// Longest room name in characters. Default 64.
    pub fn max_room_chars(mut self, chars: usize) -> Self {
        self.config.limits.max_room_chars = chars;
        self
    }

    /// Longest client message id in bytes (ids are kept for idempotent retries). Default 64.
    pub fn max_id_bytes(mut self, bytes: usize) -> Self {
        self.config.limits.max_id_bytes = bytes;
        self
    }

    /// Rooms one connection may be in at once. Default 16.
    pub fn max_rooms_per_connection(mut self, rooms: usize) -> Self {
        self.config.limits.max_rooms_per_connection = rooms;
        self
    }

    /// Frames per second one connection may send, sustained. Default 20.
    pub fn frames_per_second(mut self, frames: u32) -> Self {
        self.config.limits.frames_per_second = frames;
        self
    }

    /// Frames one connection may send in a burst above the sustained rate. Default 40.
    pub fn frame_burst(mut self, frames: u32) -> Self {
        self.config.limits.frame_burst = frames;
        self
    }

    /// Rooms one connection may create per minute (by joining a room that does not exist),
    /// with as many at once; past it, such a join is refused with `rate_limited`. Default
    /// 30.
    pub fn max_new_rooms_per_minute(mut self, rooms: u32) -> Self {
        self.config.limits.new_rooms_per_minute = rooms;
        self
    }

    /// Where rooms keep their messages: [`Engine::Memory`] (the default: nothing survives a
    /// restart) or [`Engine::Sqlite`] (a database file: every acknowledged message survives
    /// a crash, with its room's epoch and numbering). A host decides where its data lives;
    /// `wtchat serve` defaults to `sqlite:wtchat.db`.
    pub fn engine(mut self, engine: Engine) -> Self {
        self.config.engine = engine;
        self
    }

    /// Wraps the engine: `layer` is handed the engine [`engine`](Self::engine) opened and
    /// returns the one the chat uses — the same one with something around it (counting its
    /// calls, slowing or failing some on purpose in a test). See
    /// [`Broker`](crate::engine::Broker) for the contract it keeps.
    pub fn engine_layer(
        mut self,
        layer: impl Fn(Arc<dyn Broker>) -> Arc<dyn Broker> + Send + Sync + 'static,
    ) -> Self {
        self.config.engine_layer = Some(Arc::new(layer));
        self
    }

    /// Messages kept in memory per room and replayed on join. Default 100; 0 keeps none.
    /// The engine may store more (see [`retention_messages`](Self::retention_messages)).
    pub fn history(mut self, messages: usize) -> Self {
        self.config.hub.history_len = messages;
        self
    }

    /// Most messages a resuming client is sent at once: one that missed more gets the
    /// newest this many and `gap`, and pages back with `history` for the rest. Default
    /// 500.
    pub fn max_replay(mut self, messages: usize) -> Self {
        self.config.hub.max_replay = messages;
        self
    }

    /// Messages a durable engine keeps per room; older ones are deleted as new ones arrive.
    /// Default 10,000; at least `history`.
    pub fn retention_messages(mut self, messages: u64) -> Self {
        self.config.hub.retention.messages = messages;
        self
    }

    /// How long a durable engine keeps a message (swept every minute, or every quarter of
    /// the age if shorter); older ones are never replayed, on any engine. Default 30 days;
    /// at least 1 s.
    pub fn retention_age(mut self, age: Duration) -> Self {
        self.config.hub.retention.age_ms = age.as_millis().min(u64::MAX as u128) as u64;
        self
    }

    /// Bytes the stored messages of all rooms may take in SQLite's database (its pages in
    /// use). Past it, the least recently active rooms lose their oldest messages first, so
    /// that rooms created by anyone cannot fill the disk. Default 10 GiB; at least 1 MiB.
    /// (Redis is bounded by its own `maxmemory`.)
    pub fn retention_bytes(mut self, bytes: u64) -> Self {
        self.config.hub.retention.bytes = bytes;
        self
    }

    /// Bytes of history held over all rooms. Past it, the least recently active rooms lose
    /// their oldest messages first (a resume that needed them is told `gap`). Default
    /// 256 MiB; at least two frames of `max_frame_bytes`.
    pub fn history_bytes(mut self, bytes: usize) -> Self {
        self.config.hub.history_bytes = bytes;
        self
    }

    /// Client message ids remembered per room, so that a retried send is acknowledged again
    /// instead of stored twice. Default 1000: more than `history`, since a retry may come
    /// late.
    pub fn dedupe_window(mut self, ids: usize) -> Self {
        self.config.hub.dedupe_window = ids;
        self
    }

    /// Rooms held in memory. At the limit the least recently active empty room is dropped
    /// (with its history) to make space; if none is empty, new rooms are refused. Default
    /// 10,000.
    pub fn max_rooms(mut self, rooms: usize) -> Self {
        self.config.hub.max_rooms = rooms;
        self
    }

    /// Distinct rooms the connections of one client address may hold open at once (a
    /// signed-in user's connections count as that user's, wherever they come from); past
    /// it a join of another room gets `too_many_rooms`. A room someone is in cannot be
    /// evicted, so without this one address's connections could fill `max_rooms`.
    /// Default 256.
    pub fn max_rooms_per_ip(mut self, rooms: usize) -> Self {
        self.config.max_rooms_per_ip = rooms;
        self
    }

    /// Rooms one client address (or signed-in user) may create per minute, as many at
    /// once; past it a join of a room that does not exist yet gets `rate_limited`.
    /// Default 120.
    pub fn max_new_rooms_per_minute_per_ip(mut self, rooms: u32) -> Self {
        self.config.max_new_rooms_per_minute_per_ip = rooms;
        self
    }

    /// Rooms one client address (or signed-in user) may create per day, as many at once:
    /// on a durable engine each room may stay on disk for `retention_age`, and a creator
    /// within the per-minute budget must not fill the disk either. Past it a join of a room
    /// that does not exist yet gets `rate_limited`. Counted in memory (a restart forgets
    /// it). Default 1000.
    pub fn max_new_rooms_per_day_per_ip(mut self, rooms: u32) -> Self {
        self.config.max_new_rooms_per_day_per_ip = rooms;
        self
    }

    /// Frames queued per connection before it counts as too slow and is disconnected
    /// (close code 4001; it can resume). Default 8192. It must hold a join's replay in every
    /// room a connection may be in: at least the larger of `history` and `max_replay`, ×
    /// `max_rooms_per_connection`. A queue takes memory only while frames wait in it.
    pub fn outbound_queue(mut self, frames: usize) -> Self {
        self.config.hub.outbound_queue = frames;
        self
    }

    /// Bytes of live frames queued per connection before it counts as too slow (a join's
    /// replay does not count: it is queued at once on purpose). Default 1 MiB: a reader
    /// that stopped pins at most this much, not `outbound_queue` large frames. At least
    /// four frames of `max_frame_bytes`.
    pub fn outbound_bytes(mut self, bytes: usize) -> Self {
        self.config.hub.outbound_bytes = bytes;
        self
    }

    /// Connections one client address may hold at once, over all transports; past it a
    /// WebSocket or WebTransport connection is told `busy` (`error {code: "busy",
    /// retryAfterMs}`, then `bye` 4004: browsers cannot read a refused handshake's status)
    /// and SSE or long polling gets 429 with `Retry-After`. Default 1000 (an office behind
    /// one address is many users). Counted where the peer's
    /// address is known: always over WebTransport, over WebSocket where the HTTP server
    /// gives it (`wtchat serve` does; a host's server does with
    /// `into_make_service_with_connect_info::<SocketAddr>()`).
    pub fn max_connections_per_ip(mut self, connections: usize) -> Self {
        self.config.max_connections_per_ip = connections;
        self
    }

    /// Connections one signed-in user (a token's, a ticket's, the auth hook's) may hold
    /// over every transport; past it, the connection is told `busy` as for
    /// `max_connections_per_ip`. Once identified, a signed-in connection counts against its
    /// user and leaves its address's count, so that many users behind one carrier NAT are
    /// not one client. Default 100.
    pub fn max_connections_per_user(mut self, connections: usize) -> Self {
        self.config.max_connections_per_user = connections;
        self
    }

    /// Ticket requests (`POST /wtchat/ticket`, each a call to the host's login) one client
    /// address may make per second, sustained; past it, 429 with `Retry-After`, which the
    /// browser client waits out. Default 5: a page asks once per connection attempt, and an
    /// office behind one address reconnects at once after a restart. Counted where the
    /// peer's address is known (as for `max_connections_per_ip`).
    pub fn ticket_rate(mut self, per_second: u32) -> Self {
        self.config.ticket_rate = per_second;
        self
    }

    /// Ticket requests one client address may make at once, above `ticket_rate`.
    /// Default 20.
    pub fn ticket_burst(mut self, requests: u32) -> Self {
        self.config.ticket_burst = requests;
        self
    }

    /// [`Server`](crate::Server) only (a host's own HTTP server sets its own): how long a
    /// client may take to send a request's headers before its connection is closed.
    /// Default 10 s.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.config.header_read_timeout = timeout;
        self
    }

    /// [`Server`](crate::Server) only: HTTP connections held at once that have not become
    /// WebSockets (page loads, fetches, half-sent requests); past it, a new one is answered
    /// 503 with `Retry-After` and closed at once. WebSockets count against
    /// `max_connections` instead, SSE streams and held polls against
    /// `max_streams_per_ip`. Default 1024.
    pub fn max_http_connections(mut self, connections: usize) -> Self {
        self.config.max_http_connections = connections;
        self
    }

    /// [`Server`](crate::Server) only: HTTP connections not yet upgraded that one client
    /// address may hold (its share of `max_http_connections`, so that one address cannot
    /// take them all); past it, 429 with `Retry-After` and closed at once. A trusted
    /// proxy's connections are not counted per address (they carry everyone's requests).
    /// Default 32: a browser opens at most 6 per server.
    pub fn max_http_connections_per_ip(mut self, connections: usize) -> Self {
        self.config.max_http_connections_per_ip = connections;
        self
    }

    /// SSE streams and held long polls one client address may have open at once (through
    /// a trusted proxy, the address the proxy names); past it, 429 with `Retry-After`.
    /// Each long-polling session holds one poll at a time: a second poll of the same
    /// session answers the first at once. Default 64.
    pub fn max_streams_per_ip(mut self, streams: usize) -> Self {
        self.config.max_streams_per_ip = streams;
        self
    }

    /// How many leading bits of an IPv6 address name one client for every per-address
    /// budget (connections, streams, tickets): whoever holds one address of a /64 (a home,
    /// a host at a provider) holds them all, so by default a /64 is one client. 128
    /// counts each address apart. Between 1 and 128; default 64.
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.config.ipv6_prefix = bits;
        self
    }

    /// Connections held at once, over all transports; past it a WebSocket or WebTransport
    /// connection is told `busy` (as for `max_connections_per_ip`), SSE or long polling
    /// gets 503 with `Retry-After`. Default 50,000.
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.config.hub.max_connections = connections;
        self
    }

    /// How long shutdown waits for sessions to say goodbye before returning anyway.
    /// Default 5 s.
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.config.shutdown_grace = grace;
        self
    }

    /// How long a closing connection may take to receive its last frames and `bye`.
    /// Default 5 s.
    pub fn close_grace(mut self, grace: Duration) -> Self {
        self.config.close_grace = grace;
        self
    }

    /// How long after sending a message its sender may still edit it (its own messages
    /// only; the host edits any, at any time). Zero: messages are never edited by their
    /// senders. Deleting one's own message has no window. Default 15 minutes.
    pub fn edit_window(mut self, window: Duration) -> Self {
        self.config.limits.edit_window = window;
        self
    }

    /// Distinct reactions one message may carry (a 21st different emoji is refused with
    /// `too_many_reactions`). Default 20.
    pub fn reactions_per_message(mut self, reactions: usize) -> Self {
        self.config.limits.reactions_per_message = reactions;
        self
    }

    /// Reactions one member may add to one message. Default 3.
    pub fn reactions_per_member(mut self, reactions: usize) -> Self {
        self.config.limits.reactions_per_member = reactions;
        self
    }

    /// A name members may react with besides an emoji (repeatable): the host's own set,
    /// such as `plus-one` or `done`, each 1 to 32 characters without spaces. Default: none,
    /// emojis only.
    pub fn reaction_name(mut self, name: impl Into<String>) -> Self {
        self.config.limits.reaction_names.push(name.into());
        self
    }

    /// A client that sends nothing for this long — not a frame, not a ping — is closed with
    /// code 4003 `idle_timeout` and leaves its rooms: it may have vanished without a word
    /// (a closed laptop, a lost network). Advertised in `/wtchat/config`; the browser client
    /// pings well within it. Default 60 s.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.config.idle_timeout = timeout;
        self
    }

    /// Members at which a room becomes *big*: its `joined` carries the count and the first
    /// page of members instead of everyone, and joins and leaves are told in one update per
    /// `presence_interval` instead of one frame each — filling a room then costs its size,
    /// not its square. Default 100; at least 2. A host sets it per room with
    /// [`Chat::set_presence`](crate::Chat::set_presence).
    pub fn presence_threshold(mut self, members: usize) -> Self {
        self.config.hub.presence.threshold = members;
        self
    }

    /// How often a big room tells its members who joined and left. Default 1 s; from
    /// 10 ms to 1 minute.
    pub fn presence_interval(mut self, interval: Duration) -> Self {
        self.config.presence_interval = interval;
        self
    }

    /// A development certificate is replaced when it has less than this left; less than
    /// the 14 days it is valid. Default 1 day.
    pub fn renew_before(mut self, window: Duration) -> Self {
        self.config.renew_before = window;
        self
    }

    /// Serves the demo chat page at `/`. Default `true`; a host with its own `/` turns it
    /// off.
    pub fn demo_page(mut self, serve: bool) -> Self {
        self.config.demo_page = serve;
        self
    }

    /// The host's authentication hook: it sees each connection's request and returns who it
    /// is, or why it is refused (the client gets `bye` 4401 with that reason). Takes
    /// precedence over [`token_secret`](Self::token_secret).
    pub fn auth<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(ConnectRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Identity, Refusal>> + Send + 'static,
    {
        self.config.authenticate = Some(Arc::new(move |request| Box::pin(hook(request))));
        self
    }

    /// Accepts signed tokens (`?token=`, HS256 JWT) made with this secret, and refuses
    /// connections without a valid one. At least 32 bytes.
    pub fn token_secret(mut self, secret: impl Into<String>) -> Self {
        self.config.token_secret = Some(secret.into());
        self
    }

    /// The message hook: called for every message before it is stored; store, moderate,
    /// or reject it.
    pub fn message_hook<F>(mut self, hook: F) -> Self
    where
        F: Fn(&MessageEvent<'_>) -> Result<(), Refusal> + Send + Sync + 'static,
    {
        self.config.on_message = Some(Arc::new(hook));
        self
    }

    /// The message webhook: an `http://` URL of the host's backend (a PHP or Django
    /// endpoint) that is asked about every client message before it is stored (after the
    /// [`message_hook`](Self::message_hook), if both are set) and accepts, rejects or
    /// rewrites it. The sender waits for its answer; other connections do not. See the
    /// README, "Webhooks". Needs a [`webhook_secret`](Self::webhook_secret).
    pub fn message_webhook(mut self, url: impl Into<String>) -> Self {
        self.config.webhooks.message = Some(url.into());
        self
    }

    /// The events webhook: an `http://` URL the chat posts what happened to (messages
    /// stored, members joined and left), in order, in batches, with retries, after the fact.
    /// Needs a [`webhook_secret`](Self::webhook_secret).
    pub fn events_webhook(mut self, url: impl Into<String>) -> Self {
        self.config.webhooks.events = Some(url.into());
        self
    }

    /// The auth webhook: an `http://` URL that is sent each connection's credentials
    /// (cookies, `Authorization`, origin, `?token=`) and names the user, or refuses. It is
    /// the authentication hook of hosts not written in Rust (browsers reach it through
    /// tickets, like [`auth`](Self::auth)); it fails closed. Not with `auth`. Needs a
    /// [`webhook_secret`](Self::webhook_secret).
    pub fn auth_webhook(mut self, url: impl Into<String>) -> Self {
        self.config.webhooks.auth = Some(url.into());
        self
    }

    /// The secret every webhook request is signed with (`Wtchat-Signature`), shared with
    /// the backend, which checks it. At least 32 bytes; required with any webhook.
    pub fn webhook_secret(mut self, secret: impl Into<String>) -> Self {
        self.config.webhooks.secret = Some(secret.into());
        self
    }

    /// How long a webhook call may take, connecting included; then it counts as
    /// unanswered. Default 2 s; from 10 ms to 1 minute.
    pub fn webhook_timeout(mut self, timeout: Duration) -> Self {
        self.config.webhooks.timeout = timeout;
        self
    }

    /// What becomes of a message the message webhook did not answer for (in time, or with
    /// a valid answer): `true` accepts it as it is (fail open: the chat goes on while the
    /// backend is down, unmoderated); `false` rejects it with `rejected` (fail closed:
    /// nothing unchecked gets through). Default `false`. The auth webhook always fails
    /// closed.
    pub fn webhook_fail_open(mut self, open: bool) -> Self {
        self.config.webhooks.fail_open = open;
        self
    }

    /// Enables the HTTP API (`/wtchat/api/...`) for requests bearing this key
    /// (`Authorization: Bearer KEY`). At least 32 bytes. Default: no API.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.config.api_key = Some(key.into());
        self
    }

    /// Serves Prometheus metrics (OpenMetrics text) at `/wtchat/metrics`. Default `false`
    /// in the library (a host may have its own); `wtchat serve` turns it on.
    pub fn metrics(mut self, serve: bool) -> Self {
        self.config.metrics = serve;
        self
    }

    /// Serves `/wtchat/metrics` only to requests bearing the API key
    /// (`Authorization: Bearer KEY`); needs [`api_key`](Self::api_key). Default `false`:
    /// metrics carry no message, name or address, and scrapers usually sit on a private
    /// network.
    pub fn metrics_auth(mut self, behind: bool) -> Self {
        self.config.metrics_auth = behind;
        self
    }

    /// On shutdown (SIGTERM), how long the server takes to tell its clients to reconnect
    /// (4000), each at a random moment within it, so that they do not all land on the other
    /// nodes at once. Meanwhile it refuses new connections, `/wtchat/ready` says 503, and
    /// every connection is served as before. Default 0: all at once.
    pub fn drain_window(mut self, window: Duration) -> Self {
        self.config.drain_window = window;
        self
    }

    /// The read buffer of each WebSocket, in bytes. Chat frames are small; a small buffer
    /// keeps an idle WebSocket under a few KiB of memory. Default 1024.
    pub fn ws_read_buffer(mut self, bytes: usize) -> Self {
        self.config.ws_read_buffer = bytes;
        self
    }

    /// Checks every setting; the first that cannot work is refused with its name and the
    /// reason.
    pub fn build(self) -> Result<Config, ConfigError> {
        let config = self.config;
        let limits = &config.limits;
        let hub = &config.hub;
        let positive = [
            ("max_frame_bytes", limits.max_frame_bytes),
            ("max_text_chars", limits.max_text_chars),
            ("max_name_chars", limits.max_name_chars),
            ("max_room_chars", limits.max_room_chars),
            ("max_id_bytes", limits.max_id_bytes),
            ("max_rooms_per_connection", limits.max_rooms_per_connection),
            ("frames_per_second", limits.frames_per_second as usize),
            ("frame_burst", limits.frame_burst as usize),
            (
                "max_new_rooms_per_minute",
                limits.new_rooms_per_minute as usize,
            ),
            ("dedupe_window", hub.dedupe_window),
            ("max_replay", hub.max_replay),
            ("retention_messages", hub.retention.messages as usize),
            ("max_rooms", hub.max_rooms),
            ("outbound_queue", hub.outbound_queue),
            ("max_connections", hub.max_connections),
            ("max_connections_per_ip", config.max_connections_per_ip),
            ("max_connections_per_user", config.max_connections_per_user),
            ("ticket_rate", config.ticket_rate as usize),
            ("ticket_burst", config.ticket_burst as usize),
            ("max_http_connections", config.max_http_connections),
            (
                "max_http_connections_per_ip",
                config.max_http_connections_per_ip,
            ),
            ("max_streams_per_ip", config.max_streams_per_ip),
            ("max_rooms_per_ip", config.max_rooms_per_ip),
            (
                "max_new_rooms_per_minute_per_ip",
                config.max_new_rooms_per_minute_per_ip as usize,
            ),
            (
                "max_new_rooms_per_day_per_ip",
                config.max_new_rooms_per_day_per_ip as usize,
            ),
            ("ws_read_buffer", config.ws_read_buffer),
            ("reactions_per_message", limits.reactions_per_message),
            ("reactions_per_member", limits.reactions_per_member),
        ];
        if let Some(name) = limits.reaction_names.iter().find(|n| {
            n.is_empty()
                || n.chars().count() > crate::protocol::MAX_REACTION_NAME
                || n.chars().any(|c| c.is_whitespace() || c.is_control())
        }) {
            return Err(ConfigError::new(
                "reaction_name",
                format!("must be 1 to 32 characters without spaces; got {name:?}"),
            ));
        }
        if config.metrics_auth && config.api_key.is_none() {
            return Err(ConfigError::new(
                "metrics_auth",
                "needs api_key: the key scrapers present",
            ));
        }
        for (setting, value) in positive {
            if value == 0 {
                return Err(ConfigError::new(
                    setting,
                    "must be at least 1: with 0 nothing could ever pass",
                ));
            }
        }
        if !(1..=128).contains(&config.ipv6_prefix) {
            return Err(ConfigError::new(
                "ipv6_prefix",
                format!(
                    "must be between 1 and 128 bits (0 would make every IPv6 client one); got {}",
                    config.ipv6_prefix
                ),
            ));
        }
        // The longest text, in ASCII, with the longest room and id, in a `send` frame.
        let longest_send = limits.max_text_chars + limits.max_room_chars + limits.max_id_bytes + 64;
        if limits.max_frame_bytes < longest_send {
            return Err(ConfigError::new(
                "max_frame_bytes",
                format!(
                    "must be at least {longest_send} bytes to carry a send frame with a text of \
                     max_text_chars ({}) characters; got {}",
                    limits.max_text_chars, limits.max_frame_bytes
                ),
            ));
        }
        if hub.history_bytes < 2 * limits.max_frame_bytes {
            return Err(ConfigError::new(
                "history_bytes",
                format!(
                    "must hold at least two messages of max_frame_bytes ({} bytes); got {}",
                    2 * limits.max_frame_bytes,
                    hub.history_bytes
                ),
            ));
        }
        let one_replay = hub.history_len.max(hub.max_replay);
        let replay = one_replay.saturating_mul(limits.max_rooms_per_connection);
        if hub.outbound_queue < replay {
            return Err(ConfigError::new(
                "outbound_queue",
                format!(
                    "must hold at least max(history, max_replay) × max_rooms_per_connection = \
                     {one_replay} × {} = {replay} frames, or a client joining its rooms would \
                     be cut off as too slow by their history alone; got {}",
                    limits.max_rooms_per_connection, hub.outbound_queue
                ),
            ));
        }
        if hub.outbound_bytes < 4 * limits.max_frame_bytes {
            return Err(ConfigError::new(
                "outbound_bytes",
                format!(
                    "must hold at least four frames of max_frame_bytes ({} bytes), or one \
                     long message could cut a client off as too slow; got {}",
                    4 * limits.max_frame_bytes,
                    hub.outbound_bytes
                ),
            ));
        }
        if let Some((setting, reason)) = config.engine.problem() {
            return Err(ConfigError::new(setting, reason));
        }
        if hub.retention.messages < hub.history_len as u64 {
            return Err(ConfigError::new(
                "retention_messages",
                format!(
                    "must be at least history ({}): memory would replay messages that storage \
                     no longer has; got {}",
                    hub.history_len, hub.retention.messages
                ),
            ));
        }
        if hub.presence.threshold < 2 {
            return Err(ConfigError::new(
                "presence_threshold",
                format!(
                    "must be at least 2: a room of one has nobody to tell; got {}",
                    hub.presence.threshold
                ),
            ));
        }
        if !(Duration::from_millis(10)..=Duration::from_secs(60))
            .contains(&config.presence_interval)
        {
            return Err(ConfigError::new(
                "presence_interval",
                format!(
                    "must be from 10 ms to 1 minute; got {} ms",
                    config.presence_interval.as_millis()
                ),
            ));
        }
        if hub.retention.age_ms < 1000 {
            return Err(ConfigError::new(
                "retention_age",
                format!("must be at least 1 s; got {} ms", hub.retention.age_ms),
            ));
        }
        if hub.retention.bytes < 1 << 20 {
            return Err(ConfigError::new(
                "retention_bytes",
                format!("must be at least 1 MiB; got {} bytes", hub.retention.bytes),
            ));
        }
        if config.idle_timeout < Duration::from_secs(1) {
            return Err(ConfigError::new(
                "idle_timeout",
                format!(
                    "must be at least 1 s: clients keep alive within it, and cannot ping many \
                     times a second; got {} ms",
                    config.idle_timeout.as_millis()
                ),
            ));
        }
        for (setting, grace) in [
            ("shutdown_grace", config.shutdown_grace),
            ("close_grace", config.close_grace),
            ("header_read_timeout", config.header_read_timeout),
        ] {
            if grace.is_zero() {
                return Err(ConfigError::new(
                    setting,
                    "must be more than 0: clients need time to receive their last frames and bye",
                ));
            }
        }
        let max_validity = Duration::from_secs(u64::from(MAX_DAYS) * 86_400);
        if config.renew_before.is_zero() || config.renew_before >= max_validity {
            return Err(ConfigError::new(
                "renew_before",
                format!(
                    "must be more than 0 and less than {MAX_DAYS} days, the longest a development \
                     certificate is valid (otherwise it is replaced without end, or only once it \
                     has expired); got {} s",
                    config.renew_before.as_secs()
                ),
            ));
        }
        for (setting, secret) in [
            ("token_secret", &config.token_secret),
            ("api_key", &config.api_key),
            ("webhook_secret", &config.webhooks.secret),
        ] {
            if let Some(secret) = secret
                && secret.len() < MIN_SECRET_BYTES
            {
                return Err(ConfigError::new(
                    setting,
                    format!(
                        "must be at least {MIN_SECRET_BYTES} bytes, or it can be guessed; got {} \
                         (make one with `openssl rand -hex 32`)",
                        secret.len()
                    ),
                ));
            }
        }
        if let Some(url) = &config.public_url
            && !is_base_url(url)
        {
            return Err(ConfigError::new(
                "public_url",
                format!(
                    "must be an http:// or https:// URL with a host, and a path prefix at most \
                     (like https://example.com/chat); got {url:?}"
                ),
            ));
        }
        if let Some(url) = &config.public_webtransport_url
            && !url.starts_with("https://")
        {
            return Err(ConfigError::new(
                "public_webtransport_url",
                format!("must be an https:// URL (WebTransport runs only over HTTPS); got {url:?}"),
            ));
        }
        let hooks = &config.webhooks;
        for (setting, url) in [
            ("message_webhook", &hooks.message),
            ("events_webhook", &hooks.events),
            ("auth_webhook", &hooks.auth),
        ] {
            let Some(url) = url else { continue };
            #[cfg(not(feature = "webhooks"))]
            return Err(ConfigError::new(
                setting,
                format!(
                    "needs the `webhooks` feature of wtchat, which this build lacks; got {url:?}"
                ),
            ));
            #[cfg(feature = "webhooks")]
            if let Some(problem) = crate::webhook::url_problem(url) {
                return Err(ConfigError::new(setting, format!("{problem}; got {url:?}")));
            }
        }
        if config.metrics && !cfg!(feature = "metrics") {
            return Err(ConfigError::new(
                "metrics",
                "needs the `metrics` feature of wtchat, which this build lacks",
            ));
        }
        if hooks.any() && hooks.secret.is_none() {
            return Err(ConfigError::new(
                "webhook_secret",
                "is required with a webhook: the backend tells the chat's requests from \
                 forged ones by their signature (make one with `openssl rand -hex 32`)",
            ));
        }
        if !(Duration::from_millis(10)..=Duration::from_secs(60)).contains(&hooks.timeout) {
            return Err(ConfigError::new(
                "webhook_timeout",
                format!(
                    "must be from 10 ms to 1 minute: a sender waits for the message webhook; \
                     got {} ms",
                    hooks.timeout.as_millis()
                ),
            ));
        }
        if hooks.auth.is_some() && config.authenticate.is_some() {
            return Err(ConfigError::new(
                "auth_webhook",
                "cannot be combined with an auth hook: one of them decides who connects",
            ));
        }
        for origin in config.allowed_origins.iter().flatten() {
            if !is_origin(origin) {
                return Err(ConfigError::new(
                    "allow_origin",
                    format!(
                        "must be `*` or scheme://host[:port] with no path, as browsers send it \
                         (like https://example.com); got {origin:?}"
                    ),
                ));
            }
        }
        let logs_in = config.authenticate.is_some() || hooks.auth.is_some();
        if logs_in && config.allowed_origins.iter().flatten().any(|o| o == "*") {
            return Err(ConfigError::new(
                "allow_origin",
                "cannot be `*` with an auth hook or auth webhook: a login needs named origins \
                 (like https://example.com), or any site a user visits could connect as that \
                 user with the cookies their browser sends along (tokens alone, with \
                 token_secret, may use `*`)",
            ));
        }
        Ok(config)
    }
}

/// Whether `url` is `http(s)://host[:port][/prefix]`: no query, no fragment.
fn is_base_url(url: &str) -> bool {
    let Some((scheme, rest)) = url.split_once("://") else {
        return false;
    };
    let host = rest.split('/').next().unwrap_or("");
    matches!(scheme, "http" | "https")
        && !host.is_empty()
        && !rest.contains(['?', '#', ' '])
        && !host.contains('@')
}

/// Whether `origin` can match an `Origin` header: `*`, or `http(s)://host[:port]`.
fn is_origin(origin: &str) -> bool {
    if origin == "*" {
        return true;
    }
    let origin = origin.trim_end_matches('/');
    let Some((scheme, host)) = origin.split_once("://") else {
        return false;
    };
    !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        && !host.is_empty()
        && !host.contains(['/', '?', '#', ' ', '@'])
}

/// A setting that cannot work, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    setting: &'static str,
    reason: String,
}

impl ConfigError {
    fn new(setting: &'static str, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            setting,
            reason: reason.into(),
        }
    }

    /// The setting refused, as the builder method (and the `wtchat serve` flag, with
    /// dashes) names it: `token_secret`, `outbound_queue`…
    pub fn setting(&self) -> &'static str {
        self.setting
    }

    /// Why it cannot work.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.setting, self.reason)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        let built = Config::builder().build().unwrap();
        assert_eq!(format!("{built:?}"), format!("{:?}", Config::default()));
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let secret = "s".repeat(40);
        let config = Config::builder()
            .token_secret(&secret)
            .api_key(&secret)
            .build()
            .unwrap();
        assert!(!format!("{config:?}").contains(&secret));
    }

    #[test]
    fn origins_are_scheme_host_and_port() {
        assert!(is_origin("*"));
        assert!(is_origin("https://example.com"));
        assert!(is_origin("http://localhost:8080/"));
        assert!(is_origin("http://[::1]:8080"));
        assert!(!is_origin("example.com"));
        assert!(!is_origin("https://example.com/chat"));
        assert!(!is_origin("https://"));
    }
}
