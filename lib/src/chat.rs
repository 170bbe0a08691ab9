//! The chat as a host application mounts it: one [`Chat`] built from a [`Config`] gives an
//! axum [`Router`] (WebSocket fallback, `/wtchat/config`, the client), a future that runs
//! the WebTransport endpoint until shutdown, and the host's own handle on the rooms:
//! publish, list members, kick.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use axum::{Router, routing::get};
//!
//! let chat = wtchat::Chat::new(wtchat::Config::default()).await?;
//! let app = Router::new()
//!     .route("/", get(|| async { "the host's own page" }))
//!     .merge(chat.router());
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! tokio::spawn(chat.clone().run(shutdown.clone().cancelled_owned()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app)
//!     .with_graceful_shutdown(async move { shutdown.cancelled().await })
//!     .await
//! # }
//! ```

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use socket2::{Domain, Protocol, Socket, Type};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wtransport::endpoint::endpoint_side;
use wtransport::{Endpoint, Identity, ServerConfig};

use crate::certs::{self, DevCert};
use crate::config::{Config, OriginPolicy, Tls};
use crate::hub::Hub;
use crate::protocol::{CloseCode, ErrorCode};
use crate::session::SessionContext;
use crate::transport::webtransport;

/// UDP socket buffers for the WebTransport endpoint. With the kernel's 208 KiB default a
/// busy endpoint drops datagrams (and QUIC then retransmits); 4 MiB stopped the drops at
/// 1000 sessions here (see NOTES.md). The kernel caps it at `net.core.rmem_max`.
const UDP_BUFFER: usize = 4 << 20;

/// QUIC keep-alive: browsers time out an idle QUIC connection after about 30 s; a quiet chat
/// room must not lose its members.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// QUIC idle timeout: how long a vanished client holds its session.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Streams a client may open at once, per direction. A chat session needs two bidirectional
/// streams (the CONNECT request and the chat stream) and a few unidirectional ones (HTTP/3
/// control and QPACK). quinn reserves state for every stream the peer may open, so quinn's
/// default of 100 + 100 costs memory on every idle session for nothing.
const MAX_STREAMS: u32 = 8;

/// Receive windows sized for chat frames (at most 16 KiB each), not bulk transfer: the
/// client's side of a conversation is small.
const STREAM_RECEIVE_WINDOW: u32 = 64 * 1024;
const RECEIVE_WINDOW: u32 = 256 * 1024;
const DATAGRAM_RECEIVE_BUFFER: usize = 64 * 1024;

/// What the HTTP handlers and the WebTransport acceptor share.
pub(crate) struct Shared {
    pub session: SessionContext,
    pub origins: OriginPolicy,
    /// Every session task, so that shutdown can wait for them (axum's graceful shutdown
    /// does not track upgraded WebSockets).
    pub tracker: TaskTracker,
    pub webtransport_port: u16,
    pub public_webtransport_url: Option<String>,
    pub ws_read_buffer: usize,
    /// The key the host's backend presents to the HTTP API; None disables the API.
    pub api_key: Option<String>,
    /// SHA-256 digests of the development certificate in use (none with a CA-issued one).
    /// Replaced on renewal; read on every `/wtchat/config`.
    digests: RwLock<Vec<[u8; 32]>>,
}

impl Shared {
    /// The certificate digests clients should pin.
    pub(crate) fn digests(&self) -> Vec<[u8; 32]> {
        self.digests.read().unwrap().clone()
    }

    /// See [`Chat::publish`].
    pub(crate) fn publish(&self, room: &str, from: &str, text: &str) -> Result<u64, ErrorCode> {
        let limits = &self.session.limits;
        limits.check_room(room).map_err(|e| e.0)?;
        limits.check_name(from).map_err(|e| e.0)?;
        limits.check_message(text, None).map_err(|e| e.0)?;
        self.session.hub.publish_as(room, from, text)
    }

    /// See [`Chat::members`].
    pub(crate) fn members(&self, room: &str) -> Vec<MemberInfo> {
        self.session.hub.room(room).map_or_else(Vec::new, |room| {
            room.roster()
                .into_iter()
                .map(|m| MemberInfo {
                    id: m.id,
                    name: m.name.to_string(),
                    user: m.user.map(|u| u.to_string()),
                })
                .collect()
        })
    }

    /// See [`Chat::kick`].
    pub(crate) fn kick(&self, room: &str, user: &str) -> usize {
        let Some(room) = self.session.hub.room(room) else {
            return 0;
        };
        let ids: Vec<u64> = room
            .roster()
            .into_iter()
            .filter(|m| m.user.as_deref() == Some(user) || m.id.to_string() == user)
            .map(|m| m.id)
            .collect();
        let hub = &self.session.hub;
        ids.iter()
            .filter(|id| hub.disconnect(**id, CloseCode::Kicked))
            .count()
    }
}

/// wtchat, ready to be mounted: cheap to clone (one `Arc` inside).
#[derive(Clone)]
pub struct Chat {
    inner: Arc<ChatInner>,
}

struct ChatInner {
    config: Config,
    shared: Arc<Shared>,
    endpoint: Arc<Endpoint<endpoint_side::Server>>,
    dev_cert: Option<DevCert>,
}

/// A room member, as the host sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// The connection's id (as in `presence` frames).
    pub id: u64,
    /// The display name.
    pub name: String,
    /// The host's user id, when the connection was authenticated.
    pub user: Option<String>,
}

impl Chat {
    /// Loads (or creates) the certificate and binds the WebTransport endpoint on
    /// `config.webtransport`. `config.http` is where the host serves HTTP: its origins are
    /// the default allowed origins.
    pub async fn new(config: Config) -> io::Result<Chat> {
        let (identity, dev_cert) = match &config.tls {
            Tls::Dev { dir } => {
                let (cert, created) =
                    certs::load_or_create(dir, config.renew_before).map_err(io::Error::other)?;
                if created {
                    tracing::info!(dir = %dir.display(), "generated a development certificate");
                }
                (cert.identity().map_err(io::Error::other)?, Some(cert))
            }
            Tls::Files { cert, key } => (
                certs::load_identity(cert, key)
                    .await
                    .map_err(io::Error::other)?,
                None,
            ),
        };
        let endpoint = Endpoint::server(quic_config(identity, Some(config.webtransport))?)?;
        let webtransport_port = endpoint.local_addr()?.port();
        let shared = Arc::new(Shared {
            session: SessionContext {
                hub: Hub::new(config.hub.clone()),
                limits: Arc::new(config.limits.clone()),
                shutdown: CancellationToken::new(),
                close_grace: config.close_grace,
                auth: config.auth_hook(),
                on_message: config.on_message.clone(),
            },
            origins: OriginPolicy::new(&config, config.http),
            tracker: TaskTracker::new(),
            webtransport_port,
            public_webtransport_url: config.public_webtransport_url.clone(),
            ws_read_buffer: config.ws_read_buffer,
            api_key: config.api_key.clone(),
            digests: RwLock::new(dev_cert.iter().map(|c| c.digest).collect()),
        });
        Ok(Chat {
            inner: Arc::new(ChatInner {
                config,
                shared,
                endpoint: Arc::new(endpoint),
                dev_cert,
            }),
        })
    }

    /// The chat's HTTP routes, all under `/wtchat` (plus the demo page at `/` when
    /// `config.demo_page`): merge or nest it into the host's router.
    pub fn router(&self) -> Router {
        crate::http::router(self.inner.shared.clone(), self.inner.config.demo_page)
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
        self.inner.shared.digests()
    }

    /// The broadcast core.
    pub fn hub(&self) -> Hub {
        self.inner.shared.session.hub.clone()
    }

    /// Publishes `text` into `room` as `from` (a bot, the system, a message from the host's
    /// own form), exactly like a member's message: stored, numbered, sent to every member.
    /// Returns its sequence number.
    pub fn publish(&self, room: &str, from: &str, text: &str) -> Result<u64, ErrorCode> {
        self.inner.shared.publish(room, from, text)
    }

    /// The members of `room` (empty when it does not exist).
    pub fn members(&self, room: &str) -> Vec<MemberInfo> {
        self.inner.shared.members(room)
    }

    /// Disconnects every connection of user `user` (or, for anonymous members, of member id
    /// `user`) in `room` with close code 4403 `kicked`: the client does not reconnect.
    /// Returns how many connections were kicked.
    pub fn kick(&self, room: &str, user: &str) -> usize {
        self.inner.shared.kick(room, user)
    }

    /// Runs the WebTransport endpoint (and the certificate renewal) until `shutdown`
    /// resolves; then closes every session, WebSocket ones included, with close code 4000,
    /// and returns once they are closed or `shutdown_grace` has passed.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        let inner = &self.inner;
        let token = inner.shared.session.shutdown.clone();
        let accept = tokio::spawn(webtransport::serve(
            inner.endpoint.clone(),
            inner.shared.clone(),
        ));
        let renew = inner.dev_cert.clone().map(|cert| {
            tokio::spawn(renew(
                cert,
                inner.config.clone(),
                inner.endpoint.clone(),
                inner.shared.clone(),
            ))
        });
        tokio::select! {
            () = shutdown => {}
            () = token.cancelled() => {}
        }
        tracing::info!("shutting down: closing every connection");
        token.cancel();
        if let Some(renew) = renew {
            renew.abort();
        }
        let _ = accept.await;
        inner.shared.tracker.close();
        let grace = inner.config.shutdown_grace;
        if tokio::time::timeout(grace, inner.shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(?grace, "some sessions did not finish in time");
        }
        inner.endpoint.close(0u32.into(), b"shutdown");
        let _ = tokio::time::timeout(Duration::from_secs(1), inner.endpoint.wait_idle()).await;
    }

    /// Resolves when the chat starts shutting down (for the host's HTTP server).
    pub(crate) fn stopping(&self) -> CancellationToken {
        self.inner.shared.session.shutdown.clone()
    }
}

/// The WebTransport endpoint's configuration. `bind` None: for a reload, which keeps the
/// socket it has.
fn quic_config(identity: Identity, bind: Option<SocketAddr>) -> io::Result<ServerConfig> {
    let mut transport = wtransport::config::QuicTransportConfig::default();
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    transport.max_concurrent_bidi_streams(MAX_STREAMS.into());
    transport.max_concurrent_uni_streams(MAX_STREAMS.into());
    transport.stream_receive_window(STREAM_RECEIVE_WINDOW.into());
    transport.receive_window(RECEIVE_WINDOW.into());
    transport.datagram_receive_buffer_size(Some(DATAGRAM_RECEIVE_BUFFER));
    transport.max_idle_timeout(Some(
        IDLE_TIMEOUT
            .try_into()
            .expect("30 s is a valid idle timeout"),
    ));
    let builder = ServerConfig::builder();
    let builder = match bind {
        Some(addr) => builder.with_bind_socket(udp_socket(addr)?),
        None => builder.with_bind_default(0),
    };
    Ok(builder.with_custom_transport(identity, transport).build())
}

/// A UDP socket for the endpoint: dual-stack when bound to an IPv6 address (Chromium dials
/// `::1` for `localhost`), with buffers sized for many sessions.
fn udp_socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    // Best effort: a smaller buffer still works, only less well under load.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER);
    let _ = socket.set_send_buffer_size(UDP_BUFFER);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Replaces the development certificate before it expires, without dropping a session:
/// new sessions get the new certificate, and `/wtchat/config` serves its digest.
async fn renew(
    mut cert: DevCert,
    config: Config,
    endpoint: Arc<Endpoint<endpoint_side::Server>>,
    shared: Arc<Shared>,
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
        let reloaded =
            quic_config(identity, None).and_then(|quic| endpoint.reload_config(quic, false));
        if let Err(e) = reloaded {
            tracing::error!(error = %e, "could not load the renewed certificate; retrying in a minute");
            tokio::time::sleep(Duration::from_secs(60)).await;
            continue;
        }
        tracing::info!(digest = %fresh.digest_hex(), "renewed the development certificate");
        *shared.digests.write().unwrap() = vec![fresh.digest];
        cert = fresh;
    }
}
