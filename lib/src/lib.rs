//! # wtchat
//!
//! Chat rooms for web pages over **WebTransport** (HTTP/3 over QUIC), with a **WebSocket
//! fallback** for browsers without it. Both transports feed one broadcast core, so every
//! member of a room sees the same messages in the same order, whatever it connected with.
//!
//! ```text
//!  browser (WebTransport)    browser (WebSocket)
//!         │                        │
//!  transport/webtransport   transport/websocket     accept, framing, close codes
//!         └──────────┬─────────────┘
//!                 session                           one per connection: decode, check, apply
//!                    │
//!                   hub                             rooms, sequence numbers, history, presence
//! ```
//!
//! - [`protocol`]: frames, codec, limits, error and close codes (no I/O).
//! - [`hub`]: the broadcast core; a message is encoded once and its bytes shared by every
//!   recipient's bounded queue.
//! - `session`: the per-connection state machine over a two-trait transport contract.
//! - `transport`: the WebTransport and WebSocket adapters.
//! - [`certs`]: development certificates browsers accept by digest, and real ones.
//! - [`auth`]: identities from the host's hook or from signed tokens.
//! - [`Chat`]: what a host application mounts (a router, a WebTransport future, and
//!   publish / members / kick); [`Server`]: the standalone `wtchat serve`.
//! - [`config`]: one configuration with working defaults.
//!
//! ## Quick start
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let config = wtchat::Config {
//!     http: "127.0.0.1:0".parse().unwrap(),
//!     webtransport: "[::]:0".parse().unwrap(),
//!     ..wtchat::Config::default()
//! };
//! let server = wtchat::Server::bind(config).await?;
//! println!("HTTP on {}, WebTransport on {}", server.http_addr(), server.webtransport_addr());
//! server.run(async { tokio::signal::ctrl_c().await.unwrap() }).await
//! # }
//! ```

pub mod auth;
pub mod certs;
mod chat;
pub mod config;
mod http;
pub mod hub;
pub mod protocol;
mod server;
mod session;
mod transport;

pub use auth::{ConnectRequest, Identity, Rooms};
pub use chat::{Chat, MemberInfo};
pub use config::{Config, MessageEvent, Tls};
pub use server::Server;
