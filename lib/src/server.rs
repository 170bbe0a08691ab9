//! The standalone server behind `wtchat serve`: binds the HTTP listener, mounts the chat's
//! router on it, and runs both until shutdown.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;

use crate::chat::Chat;
use crate::config::Config;
use crate::hub::Hub;

/// A bound, not yet running chat server.
pub struct Server {
    listener: TcpListener,
    chat: Chat,
}

impl Server {
    /// Binds both addresses and loads (or creates) the certificate. Nothing is served until
    /// [`run`](Self::run).
    pub async fn bind(mut config: Config) -> io::Result<Server> {
        let listener = TcpListener::bind(config.http).await?;
        // The address actually bound (port 0 picks one) is the origin pages will have.
        config.http = listener.local_addr()?;
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

    /// The broadcast core, to look at rooms and members or disconnect a client.
    pub fn hub(&self) -> Hub {
        self.chat.hub()
    }

    /// SHA-256 digests of the development certificate (empty with a CA-issued certificate).
    pub fn certificate_digests(&self) -> Vec<[u8; 32]> {
        self.chat.certificate_digests()
    }

    /// Serves until `shutdown` resolves, then closes every connection with the shutdown code
    /// and returns once they are closed or `shutdown_grace` has passed.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> io::Result<()> {
        let stopping = self.chat.stopping();
        // Chat frames are small and latency matters: no Nagle delay. It also sends a close
        // frame at once, before a socket with unread input is reset (see session::goodbye).
        let listener = self.listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
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
        Ok(())
    }
}
