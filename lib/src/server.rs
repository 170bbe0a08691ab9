//! The standalone server behind `wtchat serve`: binds the HTTP listener, serves the chat's
//! router on it, and runs both until shutdown.
//!
//! Its HTTP server is hyper's, driven here rather than by `axum::serve`, for what a public
//! server needs and `axum::serve` does not offer: a deadline for a request's headers, and
//! a cap on connections that have not become WebSockets (page loads, fetches, and clients
//! that send half a request and stop), with a share per client address, so that slow
//! clients cannot hold every file descriptor and one address cannot shut out the others.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_service::Service as _;

use crate::chat::{Chat, StartError};
use crate::config::Config;
use crate::throttle::{PerAddress, PoolFull, Unupgraded, throttled};

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
    pool: Pool,
}

/// The connections not yet upgraded: how many in all, how many per address, and whose
/// connections are not counted per address.
#[derive(Debug)]
struct Pool {
    header_read_timeout: Duration,
    max: usize,
    per_address: usize,
    ipv6_prefix: u8,
    trusted_proxies: Vec<IpAddr>,
}

/// Connections the kernel completes and queues for the HTTP listener before it accepts them.
/// A node restarting with thousands of clients gets them all within a second or two (each
/// reconnecting at once): with the usual 128, the queue overflowed and most of them waited
/// out a one-second SYN retransmit. The kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

/// The HTTP listener on `addr`, as `TcpListener::bind` makes it (address reuse on) but with a
/// queue of [`LISTEN_BACKLOG`].
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
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
        let listener = listen(config.http).map_err(bind_error)?;
        // The address actually bound (port 0 picks one) is the origin pages will have.
        config.http = listener.local_addr().map_err(bind_error)?;
        let pool = Pool {
            header_read_timeout: config.header_read_timeout,
            max: config.max_http_connections,
            per_address: config.max_http_connections_per_ip,
            ipv6_prefix: config.ipv6_prefix,
            trusted_proxies: config
                .trusted_proxies
                .iter()
                .map(|ip| ip.to_canonical())
                .collect(),
        };
        let chat = Chat::new(config).await?;
        Ok(Server {
            listener,
            chat,
            pool,
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
            self.pool,
        ));
        self.chat.run(shutdown).await;
        // Plain HTTP requests still in flight get a short deadline.
        let _ = tokio::time::timeout(Duration::from_secs(1), http).await;
    }
}

/// What a connection past its share of the pool is told before it is closed: a browser
/// shows the status, a script can wait `Retry-After`. No request is read for it, so its
/// origin is not known: any page may read it (it says nothing but the wait), which a page
/// on another origin than the chat's needs to see that it is told to wait, and how long
/// (`Retry-After` is not a header a page may read unless exposed).
fn refusal(full: PoolFull) -> &'static [u8] {
    // No Content-Length: the body ends where the connection does.
    match full {
        PoolFull::Address => {
            b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nConnection: close\r\n\
              Access-Control-Allow-Origin: *\r\nAccess-Control-Expose-Headers: Retry-After\r\n\
              Content-Type: text/plain\r\n\r\ntoo many HTTP connections from your address\n"
        }
        PoolFull::Server => {
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n\
              Access-Control-Allow-Origin: *\r\nAccess-Control-Expose-Headers: Retry-After\r\n\
              Content-Type: text/plain\r\n\r\ntoo many HTTP connections\n"
        }
    }
}

/// Refused connections being told so at once, at most: each holds its socket for up to
/// [`REFUSAL_LINGER`].
const MAX_REFUSING: usize = 1024;
/// How long a refused connection is given to read its answer and close.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Tells a connection past its share of the pool so ([`refusal`]), then reads and drops
/// what it sent until it closes (within [`REFUSAL_LINGER`]): a socket closed with its
/// request unread is reset, and the reset can destroy the answer before the client reads it.
async fn refuse(mut tcp: TcpStream, full: PoolFull, _lingering: OwnedSemaphorePermit) {
    let told = async {
        tcp.write_all(refusal(full)).await?;
        tcp.shutdown().await?;
        let mut unread = [0u8; 512];
        while tcp.read(&mut unread).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, told).await;
}

/// Accepts HTTP connections until `stopping`, each served by hyper with a deadline for
/// its headers, each holding a place in the pool ([`Unupgraded`]) until it becomes a
/// WebSocket (or an SSE stream or a held poll gives it back); a connection past its
/// address's share or the pool's size is answered 429 or 503 and closed at once.
async fn serve_http(
    listener: TcpListener,
    router: axum::Router,
    stopping: tokio_util::sync::CancellationToken,
    pool: Pool,
) {
    let places = Arc::new(Semaphore::new(pool.max));
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let header_read_timeout = pool.header_read_timeout;
    let addresses = PerAddress::new(pool.per_address, pool.ipv6_prefix);
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
        let ip = peer.ip().to_canonical();
        let counted = (!pool.trusted_proxies.contains(&ip)).then_some(ip);
        let place = match Unupgraded::take(&places, &addresses, counted) {
            Ok(place) => place,
            Err(full) => {
                throttled!(
                    warn,
                    %peer,
                    ?full,
                    "HTTP connection refused: too many not yet upgraded"
                );
                // Told in a task of its own (a few at once; past them, closed unanswered).
                if let Ok(lingering) = refusing.clone().try_acquire_owned() {
                    tokio::spawn(refuse(tcp, full, lingering));
                }
                continue;
            }
        };
        tune(&tcp);
        // The peer's address, as the transports read it (`ConnectInfo`), put in each
        // request: layered onto a copy of the router it would rebuild the routes for every
        // connection, and an SSE or long-polling connection would keep them (~6 KiB).
        let router = router.clone();
        let request_place = place.clone();
        let service = service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            request.extensions_mut().insert(request_place.clone());
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
            place.release();
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
