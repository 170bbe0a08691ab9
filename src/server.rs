//! Runs everything until shutdown: binds the HTTP listener and the WebTransport endpoint,
//! serves both into one hub, renews the development certificate while running, and on
//! shutdown tells every client, drains, and returns within a deadline.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wtransport::endpoint::endpoint_side;
use wtransport::{Endpoint, Identity, ServerConfig};

use crate::certs::{self, DevCert};
use crate::config::{Config, OriginPolicy, Tls};
use crate::hub::Hub;
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
#[derive(Debug)]
pub(crate) struct Shared {
    pub session: SessionContext,
    pub origins: OriginPolicy,
    /// Every session task, so that shutdown can wait for them (axum's graceful shutdown
    /// does not track upgraded WebSockets).
    pub tracker: TaskTracker,
    pub webtransport_port: u16,
    pub public_webtransport_url: Option<String>,
    pub ws_read_buffer: usize,
    pub ws_write_buffer: usize,
    /// SHA-256 digests of the development certificate in use (none with a CA-issued one).
    /// Replaced on renewal; read on every `/wtchat/config`.
    digests: RwLock<Vec<[u8; 32]>>,
}

impl Shared {
    /// The certificate digests clients should pin.
    pub(crate) fn digests(&self) -> Vec<[u8; 32]> {
        self.digests.read().unwrap().clone()
    }
}

/// A bound, not yet running chat server.
pub struct Server {
    config: Config,
    shared: Arc<Shared>,
    listener: TcpListener,
    endpoint: Arc<Endpoint<endpoint_side::Server>>,
    dev_cert: Option<DevCert>,
}

impl Server {
    /// Loads (or creates) the certificate and binds both addresses. Nothing is served until
    /// [`run`](Self::run).
    pub async fn bind(config: Config) -> io::Result<Server> {
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
        let listener = TcpListener::bind(config.http).await?;
        let http_addr = listener.local_addr()?;
        let endpoint = Endpoint::server(quic_config(identity, Some(config.webtransport))?)?;
        let webtransport_port = endpoint.local_addr()?.port();
        let shared = Arc::new(Shared {
            session: SessionContext {
                hub: Hub::new(config.hub.clone()),
                limits: Arc::new(config.limits.clone()),
                shutdown: CancellationToken::new(),
                close_grace: config.close_grace,
            },
            origins: OriginPolicy::new(&config, http_addr),
            tracker: TaskTracker::new(),
            webtransport_port,
            public_webtransport_url: config.public_webtransport_url.clone(),
            ws_read_buffer: config.ws_read_buffer,
            ws_write_buffer: config.ws_write_buffer,
            digests: RwLock::new(dev_cert.iter().map(|c| c.digest).collect()),
        });
        Ok(Server {
            config,
            shared,
            listener,
            endpoint: Arc::new(endpoint),
            dev_cert,
        })
    }

    /// The HTTP address actually bound.
    pub fn http_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The WebTransport (UDP) address actually bound.
    pub fn webtransport_addr(&self) -> SocketAddr {
        self.endpoint
            .local_addr()
            .expect("a bound endpoint has an address")
    }

    /// The broadcast core, to look at rooms and members or disconnect a client.
    pub fn hub(&self) -> Hub {
        self.shared.session.hub.clone()
    }

    /// SHA-256 digests of the development certificate (empty with a CA-issued certificate).
    pub fn certificate_digests(&self) -> Vec<[u8; 32]> {
        self.shared.digests()
    }

    /// Serves until `shutdown` resolves, then closes every connection with the shutdown code
    /// and returns once they are closed or `shutdown_grace` has passed.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> io::Result<()> {
        let token = self.shared.session.shutdown.clone();
        let router = crate::http::router(self.shared.clone(), self.config.demo_page);
        let http = axum::serve(
            self.listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(token.clone().cancelled_owned());
        let http = tokio::spawn(async move { http.await });
        let accept = tokio::spawn(webtransport::serve(
            self.endpoint.clone(),
            self.shared.clone(),
        ));
        let renew = self.dev_cert.map(|cert| {
            tokio::spawn(renew(
                cert,
                self.config.clone(),
                self.endpoint.clone(),
                self.shared.clone(),
            ))
        });

        shutdown.await;
        tracing::info!("shutting down: closing every connection");
        token.cancel();
        if let Some(renew) = renew {
            renew.abort();
        }
        let _ = accept.await;
        self.shared.tracker.close();
        let grace = self.config.shutdown_grace;
        if tokio::time::timeout(grace, self.shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(?grace, "some sessions did not finish in time");
        }
        // Plain HTTP requests still in flight get what is left of a short deadline.
        let _ = tokio::time::timeout(Duration::from_secs(1), http).await;
        self.endpoint.close(0u32.into(), b"shutdown");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
        Ok(())
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
