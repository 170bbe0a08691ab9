//! The standalone server behind `wtchat serve`: binds the HTTP listener, mounts the chat's
//! router on it, and runs both until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::serve::ListenerExt;
use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpListener;

use crate::chat::{Chat, StartError};
use crate::config::Config;

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
        let chat = Chat::new(config).await?;
        Ok(Server { listener, chat })
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
        let stopping = self.chat.stopping();
        // Chat frames are small and latency matters: no Nagle delay. It also sends a close
        // frame at once, before a socket with unread input is reset (see session::goodbye).
        let listener = self.listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
            // A peer that vanished without a FIN (a closed laptop, a lost network) is found
            // by the kernel, not only by the idle timeout of the chat it was in.
            let keepalive = TcpKeepalive::new()
                .with_time(TCP_KEEPALIVE_IDLE)
                .with_interval(TCP_KEEPALIVE_INTERVAL);
            let _ = SockRef::from(&*tcp).set_tcp_keepalive(&keepalive);
        });
        let http = axum::serve(
            listener,
            self.chat
                .router()
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stopping.cancelled_owned());
        let http = tokio::spawn(async move { http.await });
        self.chat.run(shutdown).await;
        // Plain HTTP requests still in flight get a short deadline.
        let _ = tokio::time::timeout(Duration::from_secs(1), http).await;
    }
}
