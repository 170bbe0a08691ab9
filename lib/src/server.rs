//! The standalone server behind `wtchat serve`: binds the HTTP listener, serves the chat's
//! router on it, and runs both until shutdown.
//!
//! Its HTTP server is hyper's, driven here rather than by `axum::serve`, for what a public
//! server needs and `axum::serve` does not offer: a deadline for a request's headers, and
//! a cap on connections that have not become WebSockets (page loads, fetches, and clients
//! that send half a request and stop), so that slow clients cannot hold every file
//! descriptor.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower_service::Service as _;

use crate::chat::{Chat, StartError};
use crate::config::Config;
use crate::throttle::throttled;

/// TCP keepalive on HTTP and WebSocket connections: the first probe after this much
/// silence...
const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// ...then one probe per interval (the kernel gives up after its default 9 probes).
const TCP_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// A bound, not yet running chat server.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    chat: Chat,
    header_read_timeout: Duration,
    max_http_connections: usize,
}

impl Server {
    /// Binds both addresses and loads (or creates) the certificate. Nothing is served until
    /// [`run`](Self::run).
    pub async fn bind(mut config: Config) -> Result<Server, StartError> {
        let bind_error = |source| StartError::Bind {
            listener: "HTTP (TCP)",
            addr: config.http,
            source,
        };
        let listener = TcpListener::bind(config.http).await.map_err(bind_error)?;
        // The address actually bound (port 0 picks one) is the origin pages will have.
        config.http = listener.local_addr().map_err(bind_error)?;
        let (header_read_timeout, max_http_connections) =
            (config.header_read_timeout, config.max_http_connections);
        let chat = Chat::new(config).await?;
        Ok(Server {
            listener,
            chat,
            header_read_timeout,
            max_http_connections,
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
        self.chat.webtransport_addr()
    }

    /// The chat, for the host API (publish, members, kick).
    pub fn chat(&self) -> Chat {
        self.chat.clone()
    }

    /// SHA-256 digests of the development certificate (empty with a CA-issued certificate).
    pub fn certificate_digests(&self) -> Vec<[u8; 32]> {
        self.chat.certificate_digests()
    }

    /// Serves until `shutdown` resolves, then closes every connection with the shutdown code
    /// and returns once they are closed or the shutdown grace has passed.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        let http = tokio::spawn(serve_http(
            self.listener,
            self.chat.router(),
            self.chat.stopping(),
            self.header_read_timeout,
            self.max_http_connections,
        ));
        self.chat.run(shutdown).await;
        // Plain HTTP requests still in flight get a short deadline.
        let _ = tokio::time::timeout(Duration::from_secs(1), http).await;
    }
}

/// Accepts HTTP connections until `stopping`, each served by hyper with a deadline for
/// its headers, at most `max_pending` at once until they become WebSockets; a connection
/// past that is closed at once.
async fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    stopping: tokio_util::sync::CancellationToken,
    header_read_timeout: Duration,
    max_pending: usize,
) {
    let pending = Arc::new(Semaphore::new(max_pending));
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, most likely: let some close first.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stopping.cancelled() => break,
        };
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            throttled!(
                warn,
                %peer,
                "HTTP connection refused: too many not yet upgraded"
            );
            continue;
        };
        tune(&tcp);
        // The peer's address, as the transports read it (`ConnectInfo`), put in each
        // request: layered onto a copy of the router it would rebuild the routes for every
        // connection, and an SSE or long-polling connection would keep them (~6 KiB).
        let router = router.clone();
        let service = service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            router.clone().call(request)
        });
        let stopping = stopping.clone();
        connections.spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = stopping.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            // Upgraded (its WebSocket runs on in a session task of its own) or done.
            drop(permit);
        });
    }
    connections.close();
    connections.wait().await;
}

/// Chat frames are small and latency matters: no Nagle delay (it also sends a close frame
/// at once, before a socket with unread input is reset: see session::goodbye). A peer that
/// vanished without a FIN (a closed laptop, a lost network) is found by the kernel's
/// keepalive, not only by the idle timeout of the chat it was in.
fn tune(tcp: &TcpStream) {
    let _ = tcp.set_nodelay(true);
    let keepalive = TcpKeepalive::new()
        .with_time(TCP_KEEPALIVE_IDLE)
        .with_interval(TCP_KEEPALIVE_INTERVAL);
    let _ = SockRef::from(tcp).set_tcp_keepalive(&keepalive);
}
