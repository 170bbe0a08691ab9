//! The chat as a host application mounts it: one [`Chat`] built from a [`Config`] gives an
//! axum [`Router`] (WebSocket fallback, `/wtchat/config`, the client), a future that runs
//! the WebTransport endpoint until shutdown, and the host's own handle on the rooms:
//! publish, list members, kick.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use axum::{Router, routing::get};
//!
//! let config = wtchat::Config::builder()
//!     .http("127.0.0.1:8080".parse()?)
//!     .demo_page(false)
//!     .build()?;
//! let chat = wtchat::Chat::new(config).await?;
//! let app = Router::new()
//!     .route("/", get(|| async { "the host's own page" }))
//!     .merge(chat.router());
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! tokio::spawn(chat.clone().run(shutdown.clone().cancelled_owned()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app)
//!     .with_graceful_shutdown(async move { shutdown.cancelled().await })
//!     .await?;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wtransport::Endpoint;
use wtransport::endpoint::endpoint_side;

use crate::auth::Authenticator;
use crate::certs::{self, CertError, DevCert};
use crate::config::{Config, Tls};
use crate::engine::{
    self, HistoryPage, MemberInfo, MembersPage, Options, ReactorsPage, ReadState, RecordKind,
    StorageError,
};
use crate::hooks::{EventsSender, Webhooks};
use crate::host::{Host, PublishError, ReactError, RoomUnread};
use crate::http::{Digests, HttpState, MetricsAccess};
use crate::hub::{Hub, SenderKey};
use crate::metrics::Metrics;
use crate::protocol::CloseCode;
use crate::session::SessionContext;
use crate::throttle::{HolderBudgets, PerAddress, PerAddressRate};
use crate::transport::{self, OriginPolicy, webtransport};

/// wtchat, ready to be mounted: cheap to clone (one `Arc` inside).
#[derive(Clone)]
pub struct Chat {
    inner: Arc<ChatInner>,
}

struct ChatInner {
    config: Config,
    transport: Arc<transport::Context>,
    host: Host,
    endpoint: Arc<Endpoint<endpoint_side::Server>>,
    dev_cert: Option<DevCert>,
    digests: Digests,
    /// The events webhook, whose sender runs with the chat.
    events: Option<Arc<dyn EventsSender>>,
    /// Ticket requests per client address, for every router made.
    ticket_rate: Arc<PerAddressRate>,
    /// Cancelled once every session is gone (for the host's HTTP server).
    stopped: CancellationToken,
}

impl fmt::Debug for Chat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chat")
            .field("config", &self.inner.config)
            .field("webtransport_addr", &self.webtransport_addr())
            .finish_non_exhaustive()
    }
}

/// Why a chat (or a server) could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// The development certificate could not be loaded or created, or the certificate
    /// files could not be read.
    Certificate(CertError),
    /// The engine's storage could not be opened: the database file cannot be created, is
    /// read-only, is in use by another process, or is corrupt.
    Storage(StorageError),
    /// A socket could not be bound (the address is in use, or not this machine's).
    Bind {
        /// `"HTTP (TCP)"` or `"WebTransport (UDP)"`.
        listener: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// What the operating system said.
        source: io::Error,
    },
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Certificate(e) => write!(f, "certificate: {e}"),
            StartError::Storage(e) => write!(f, "storage: {e}"),
            StartError::Bind {
                listener,
                addr,
                source,
            } => write!(f, "cannot listen for {listener} on {addr}: {source}"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Certificate(e) => Some(e),
            StartError::Storage(e) => Some(e),
            StartError::Bind { source, .. } => Some(source),
        }
    }
}

impl From<StorageError> for StartError {
    fn from(e: StorageError) -> StartError {
        StartError::Storage(e)
    }
}

impl From<CertError> for StartError {
    fn from(e: CertError) -> StartError {
        StartError::Certificate(e)
    }
}

impl Chat {
    /// Loads (or creates) the certificate and binds the WebTransport endpoint on the
    /// configured UDP address. The configured HTTP address is where the host serves HTTP:
    /// its origins are the default allowed origins.
    pub async fn new(config: Config) -> Result<Chat, StartError> {
        let (identity, dev_cert) = match &config.tls {
            Tls::Dev { dir } => {
                let (cert, created) = certs::load_or_create(dir, config.renew_before)?;
                if created {
                    tracing::info!(dir = %dir.display(), "generated a development certificate");
                }
                (cert.identity()?, Some(cert))
            }
            Tls::Files { cert, key } => (certs::load_identity(cert, key).await?, None),
        };
        let bind_error = |source| StartError::Bind {
            listener: "WebTransport (UDP)",
            addr: config.webtransport,
            source,
        };
        let not_after = dev_cert
            .as_ref()
            .map(|c| c.not_after)
            .or_else(|| certs::not_after(&identity));
        let endpoint = webtransport::endpoint(identity, config.webtransport).map_err(bind_error)?;
        endpoint.local_addr().map_err(bind_error)?;
        let metrics = Arc::new(Metrics::default());
        if let Some(not_after) = not_after {
            metrics.set_certificate_expiry(not_after);
        }
        let options = Options {
            retention: config.hub.retention,
            dedupe_window: config.hub.dedupe_window,
            reactions: engine::ReactionLimits {
                per_message: config.limits.reactions_per_message,
                per_member: config.limits.reactions_per_member,
            },
        };
        let mut engine = engine::open(&config.engine, options, metrics.engine.clone()).await?;
        if let Some(layer) = &config.engine_layer {
            engine = layer(engine);
        }
        // The webhooks' HTTP client is the `webhooks` feature's; without it the builder
        // refused their settings, and there are none.
        #[cfg(feature = "webhooks")]
        let webhooks = Webhooks::new(&config.webhooks, &config.limits, &metrics);
        #[cfg(not(feature = "webhooks"))]
        let webhooks = Webhooks::default();
        // Public sender ids are keyed: with the token secret when there is one (every node
        // has it), else with the engine's own key.
        let senders = match &config.token_secret {
            Some(secret) => SenderKey::new(secret.as_bytes()),
            None => SenderKey::new(&engine.sender_key().await?),
        };
        let session = SessionContext {
            hub: Hub::new(config.hub.clone(), engine, metrics).await?,
            limits: Arc::new(config.limits.clone()),
            shutdown: CancellationToken::new(),
            drain_window: config.drain_window,
            close_grace: config.close_grace,
            idle_timeout: config.idle_timeout,
            auth: Arc::new(Authenticator::new(
                config.authenticate.clone().or(webhooks.auth),
                config.token_secret.as_deref(),
            )),
            senders: Arc::new(senders),
            on_message: config.on_message.clone(),
            message_check: webhooks.message,
            budgets: HolderBudgets::new(
                config.max_rooms_per_ip,
                config.max_new_rooms_per_minute_per_ip,
                config.max_new_rooms_per_day_per_ip,
                config.max_connections_per_user,
                config.ipv6_prefix,
            ),
        };
        if let Some(events) = &webhooks.events {
            session.hub.observe(events.clone().observer());
        }
        let host = Host {
            hub: session.hub.clone(),
            limits: session.limits.clone(),
            senders: session.senders.clone(),
        };
        let transport = Arc::new(transport::Context {
            session,
            origins: OriginPolicy::new(
                config.allowed_origins.as_deref(),
                config.allow_missing_origin,
                config.http,
            ),
            tracker: TaskTracker::new(),
            ws_read_buffer: config.ws_read_buffer,
            per_address: PerAddress::new(config.max_connections_per_ip, config.ipv6_prefix),
            streams: PerAddress::new(config.max_streams_per_ip, config.ipv6_prefix),
            trusted_proxies: config.trusted_proxies.clone(),
            posted: transport::posted::Sessions::default(),
            polled: transport::poll::Polled::default(),
        });
        // Posts and polls for sessions held here that reached another node come through
        // the engine, and so do the answers to polls this node sent on.
        let held = Arc::downgrade(&transport);
        transport.session.hub.on_forwarded(move |request| {
            if let Some(ctx) = held.upgrade() {
                transport::relay::forwarded(ctx, request);
            }
        });
        let ticket_rate = Arc::new(PerAddressRate::new(
            f64::from(config.ticket_rate),
            f64::from(config.ticket_burst),
            config.ipv6_prefix,
        ));
        Ok(Chat {
            inner: Arc::new(ChatInner {
                digests: Arc::new(RwLock::new(dev_cert.iter().map(|c| c.digest).collect())),
                config,
                transport,
                host,
                endpoint: Arc::new(endpoint),
                dev_cert,
                events: webhooks.events,
                ticket_rate,
                stopped: CancellationToken::new(),
            }),
        })
    }

    /// The chat's HTTP routes, all under `/wtchat` (plus the demo page at `/` unless
    /// [`demo_page(false)`](crate::ConfigBuilder::demo_page)): merge or nest it into the
    /// host's router.
    pub fn router(&self) -> Router {
        let inner = &self.inner;
        crate::http::router(HttpState {
            transport: inner.transport.clone(),
            host: inner.host.clone(),
            api_key: inner.config.api_key.as_deref().map(Arc::from),
            webtransport_port: self.webtransport_addr().port(),
            public_webtransport_url: inner
                .config
                .public_webtransport_url
                .as_deref()
                .map(Arc::from),
            public_url: inner.config.public_url.as_deref().map(Arc::from),
            digests: inner.digests.clone(),
            demo_page: inner.config.demo_page,
            metrics: match (inner.config.metrics, inner.config.metrics_auth) {
                (false, _) => MetricsAccess::Off,
                (true, false) => MetricsAccess::Open,
                (true, true) => MetricsAccess::ApiKey,
            },
            ticket_rate: inner.ticket_rate.clone(),
        })
    }

    /// The WebTransport (UDP) address actually bound.
    pub fn webtransport_addr(&self) -> SocketAddr {
        self.inner
            .endpoint
            .local_addr()
            .expect("a bound endpoint has an address")
    }

    /// SHA-256 digests of the development certificate (empty with a CA-issued certificate).
    pub fn certificate_digests(&self) -> Vec<[u8; 32]> {
        self.inner.digests.read().unwrap().clone()
    }

    /// Publishes `text` into `room` as `from` (a bot, the system, a message from the host's
    /// own form), exactly like a member's message: numbered, stored, sent to every member.
    /// Resolves with its sequence number once it is stored (committed, on a durable engine).
    pub async fn publish(&self, room: &str, from: &str, text: &str) -> Result<u64, PublishError> {
        self.inner.host.publish(room, from, text, &[]).await
    }

    /// Publishes like [`Chat::publish`], mentioning `mentions` (up to 20 user ids from the
    /// host's authentication, whether or not they are in the room): each of their
    /// connections gets a `mention` frame, whatever rooms it is in, and each counts the
    /// message among its mentions until it reads the room ([`Chat::unread`]).
    pub async fn publish_mentioning(
        &self,
        room: &str,
        from: &str,
        text: &str,
        mentions: &[&str],
    ) -> Result<u64, PublishError> {
        self.inner.host.publish(room, from, text, mentions).await
    }

    /// Marks `room` read up to message `seq` for `user` (a user id from the host's
    /// authentication), as its client's `read` would (a mark never goes back; past the
    /// room's newest number it stops there): every connection of the user gets its new
    /// read state, and a small room's members a receipt. Resolves with the read state once
    /// stored.
    pub async fn mark_read(
        &self,
        user: &str,
        room: &str,
        seq: u64,
    ) -> Result<ReadState, StorageError> {
        self.inner.host.mark_read(user, room, seq).await
    }

    /// `user`'s read state in every room where it has a mark (each room it joined, or
    /// where the host marked it), by room name: for a badge in the host's own pages, or an
    /// email digest. One read of the engine, however many rooms.
    pub async fn unread(&self, user: &str) -> Result<Vec<RoomUnread>, StorageError> {
        self.inner.host.unread(user).await
    }

    /// One page of `room`'s history for an archive or an export: up to `limit` messages with
    /// sequence numbers below `before` (None: the newest), oldest first, and whether older
    /// ones remain. On the memory engine only the recent history is there.
    pub async fn history(
        &self,
        room: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage, StorageError> {
        self.inner.host.history(room, before, limit).await
    }

    /// Deletes message `seq` from `room`, whoever sent it: it leaves the stored history,
    /// and every member is sent an `update` saying so — a member that was away gets it
    /// when it resumes. Resolves with whether there was such a message (not deleted
    /// already), once the deletion is stored.
    pub async fn delete_message(&self, room: &str, seq: u64) -> Result<bool, StorageError> {
        self.inner.host.delete(room, seq).await
    }

    /// Replaces the text of message `seq` in `room`, whoever sent it and however old it is
    /// (members may edit only their own, within `edit_window`): history keeps the new text
    /// with the time of the edit, and every member is sent an `update` — a member that was
    /// away gets it when it resumes. Resolves with whether there was such a message (not
    /// deleted), once the edit is stored; the text is checked as a publish's is.
    pub async fn edit_message(
        &self,
        room: &str,
        seq: u64,
        text: &str,
    ) -> Result<bool, PublishError> {
        self.inner.host.edit(room, seq, text).await
    }

    /// Adds `reaction` (one emoji, or a name from
    /// [`reaction_name`](crate::ConfigBuilder::reaction_name)) to message `seq` of `room`
    /// on behalf of `user` (a user id from the host's authentication), shown as `name` in
    /// who reacted: as if that user's connection had reacted, within the same limits.
    /// Resolves, once stored, with the user's own reactions on the message.
    pub async fn react(
        &self,
        room: &str,
        seq: u64,
        user: &str,
        name: &str,
        reaction: &str,
    ) -> Result<Vec<String>, ReactError> {
        let kind = RecordKind::React;
        self.inner
            .host
            .react(room, seq, user, name, reaction, kind)
            .await
    }

    /// Takes back `user`'s `reaction` on message `seq` of `room`: see [`Chat::react`].
    pub async fn unreact(
        &self,
        room: &str,
        seq: u64,
        user: &str,
        reaction: &str,
    ) -> Result<Vec<String>, ReactError> {
        let kind = RecordKind::Unreact;
        self.inner
            .host
            .react(room, seq, user, "", reaction, kind)
            .await
    }

    /// Who reacted to message `seq` of `room`, in the order they did: up to `limit`
    /// reactions after `after` (the page's `next` for the next page).
    pub async fn reactions(
        &self,
        room: &str,
        seq: u64,
        after: Option<u64>,
        limit: usize,
    ) -> Result<ReactorsPage, StorageError> {
        self.inner.host.reactors(room, seq, after, limit).await
    }

    /// Bans `user` (a user id from the host's authentication) from `room`, or from every
    /// room with None, for `duration`: its joins are refused with `banned`, and its
    /// connections in the room are closed with 4403, on every node. On a durable engine the
    /// ban survives a restart. Resolves, once stored, with how many connections were closed
    /// here.
    pub async fn ban(
        &self,
        room: Option<&str>,
        user: &str,
        duration: Duration,
    ) -> Result<usize, StorageError> {
        self.inner.host.ban(room, user, duration).await
    }

    /// Lifts a ban set by [`Chat::ban`] with the same `room` and `user`.
    pub async fn unban(&self, room: Option<&str>, user: &str) -> Result<(), StorageError> {
        self.inner.host.unban(room, user).await
    }

    /// The members of `room`, over every node (none when it does not exist).
    pub async fn members(&self, room: &str) -> Result<Vec<MemberInfo>, StorageError> {
        self.inner.host.members(room).await
    }

    /// One page of `room`'s members: up to `limit` with ids above `after` (None: from the
    /// start), in id order, with the room's count and where the next page starts.
    pub async fn members_page(
        &self,
        room: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<MembersPage, StorageError> {
        self.inner.host.members_page(room, after, limit).await
    }

    /// Sets how `room` tells its members who is there: past `threshold` members (at least
    /// 2) it is big — its `joined` carries the count and the first page, and joins and
    /// leaves go out in one update per presence interval; with `counts_only`, a big room's
    /// updates carry only the count. Applies at once, and whenever the room is created
    /// again. See [`ConfigBuilder::presence_threshold`](crate::ConfigBuilder::presence_threshold).
    pub fn set_presence(&self, room: &str, threshold: usize, counts_only: bool) {
        self.inner.host.set_presence(room, threshold, counts_only);
    }

    /// Disconnects every connection of user `user` (the user id of its
    /// [`Identity`](crate::Identity)) in `room` with close code 4403 `kicked`: the client
    /// does not reconnect. Returns how many connections were kicked.
    pub fn kick(&self, room: &str, user: &str) -> usize {
        self.inner.host.kick(room, user)
    }

    /// Disconnects member `member` (its id, as [`members`](Self::members) lists it) of
    /// `room` with close code 4403 `kicked`: for anonymous members, who have no user id.
    /// Returns whether it was there.
    pub async fn kick_member(&self, room: &str, member: u64) -> Result<bool, StorageError> {
        self.inner
            .host
            .disconnect_member(room, member, CloseCode::Kicked)
            .await
    }

    /// Asks member `member` of `room` to reconnect (close code 4002 `reconnect`): its
    /// client comes back at once, authenticates again (picking up a changed identity or
    /// changed rooms) and resumes, missing no message. Returns whether it was there.
    pub async fn reconnect_member(&self, room: &str, member: u64) -> Result<bool, StorageError> {
        self.inner
            .host
            .disconnect_member(room, member, CloseCode::Reconnect)
            .await
    }

    /// Runs the WebTransport endpoint (and the certificate renewal) until `shutdown`
    /// resolves; then closes every session, WebSocket ones included, with close code 4000,
    /// and returns once they are closed or the shutdown grace has passed.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        let inner = &self.inner;
        let token = inner.transport.session.shutdown.clone();
        let accept = tokio::spawn(webtransport::serve(
            inner.endpoint.clone(),
            inner.transport.clone(),
        ));
        let ticker = tokio::spawn(ticks(
            inner.transport.session.hub.clone(),
            inner.config.presence_interval,
        ));
        let renew = inner.dev_cert.clone().map(|cert| {
            tokio::spawn(renew(
                cert,
                inner.config.clone(),
                inner.endpoint.clone(),
                inner.digests.clone(),
                inner.transport.session.hub.clone(),
            ))
        });
        // The events webhook's sender stops last: the sessions' leaves and the engine's last
        // commits are events too.
        let events_stop = CancellationToken::new();
        let events = inner.events.clone().map(|events| {
            tokio::spawn(events.run(events_stop.clone(), inner.config.shutdown_grace))
        });
        tokio::select! {
            () = shutdown => {}
            () = token.cancelled() => {}
        }
        let window = inner.config.drain_window;
        tracing::info!(
            drain_window_ms = window.as_millis() as u64,
            "shutting down: refusing new connections, telling every client to reconnect (4000)"
        );
        token.cancel();
        if let Some(renew) = renew {
            renew.abort();
        }
        ticker.abort();
        let _ = accept.await;
        let tracker = &inner.transport.tracker;
        tracker.close();
        let grace = inner.config.shutdown_grace;
        if tokio::time::timeout(window + grace, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(?grace, "some sessions did not finish in time");
        }
        // Posts and polls of the sessions above needed HTTP until now.
        inner.stopped.cancel();
        // Whatever the engine was handed is committed (or failed) before the process ends,
        // and the other nodes hear that this one left.
        inner.transport.session.hub.close().await;
        events_stop.cancel();
        if let Some(events) = events {
            let _ = events.await;
        }
        inner.endpoint.close(0u32.into(), b"shutdown");
        let _ = tokio::time::timeout(Duration::from_secs(1), inner.endpoint.wait_idle()).await;
    }

    /// Cancelled once the chat's sessions are gone, at the end of a shutdown: its HTTP
    /// server may stop then (not before: SSE and long-polling clients post and poll over
    /// HTTP until their session says goodbye).
    pub(crate) fn stopping(&self) -> CancellationToken {
        self.inner.stopped.clone()
    }
}

/// Runs the hub's [`tick`](Hub::tick) once per `interval`: big rooms' presence updates,
/// and on Redis letting go of rooms nobody here is in.
async fn ticks(hub: Hub, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        hub.tick();
    }
}

/// Replaces the development certificate before it expires, without dropping a session:
/// new sessions get the new certificate, and `/wtchat/config` serves its digest.
async fn renew(
    mut cert: DevCert,
    config: Config,
    endpoint: Arc<Endpoint<endpoint_side::Server>>,
    digests: Digests,
    hub: Hub,
) {
    let Tls::Dev { dir } = &config.tls else {
        return;
    };
    loop {
        // At least a second between renewals, whatever renew_before says.
        let wait = cert
            .remaining()
            .saturating_sub(config.renew_before)
            .max(Duration::from_secs(1));
        tokio::time::sleep(wait).await;
        let renewed = certs::load_or_create(dir, config.renew_before)
            .and_then(|(fresh, _)| Ok((fresh.identity()?, fresh)));
        let (identity, fresh) = match renewed {
            Ok(pair) => pair,
            Err(e) => {
                tracing::error!(error = %e, "could not renew the development certificate; retrying in a minute");
                tokio::time::sleep(Duration::from_secs(60)).await;
                continue;
            }
        };
        if let Err(e) = webtransport::reload(&endpoint, identity) {
            tracing::error!(error = %e, "could not load the renewed certificate; retrying in a minute");
            tokio::time::sleep(Duration::from_secs(60)).await;
            continue;
        }
        tracing::info!(digest = %fresh.digest_hex(), "renewed the development certificate");
        hub.metrics().set_certificate_expiry(fresh.not_after);
        *digests.write().unwrap() = vec![fresh.digest];
        cert = fresh;
    }
}
