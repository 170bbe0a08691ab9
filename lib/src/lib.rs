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
//!                   hub                             rooms, members, the tail of history, presence
//!                    │
//!                 engine                            numbers, stores, shares rooms between nodes
//! ```
//!
//! - `protocol`: frames, codec, limits, error and close codes (no I/O).
//! - `hub`: the broadcast core; a message comes back numbered from the engine through its
//!   room's one route, is encoded once there, and its bytes are shared by every recipient's
//!   bounded queue (`queue`).
//! - [`engine`]: the engine contract ([`engine::Broker`]), public so that a host can bring
//!   or wrap an engine, and the engines behind it: memory, SQLite, Redis.
//! - `session`: the per-connection state machine over a two-trait transport contract.
//! - `transport`: the WebTransport and WebSocket adapters, each handed a small context.
//! - [`certs`]: development certificates browsers accept by digest, and real ones.
//! - [`auth`]: identities from the host's hook (browsers reach it through single-use
//!   tickets: they send no cookies on a WebTransport CONNECT) or from signed tokens.
//! - `host`: what the host does to the rooms (publish, members, kick), for the Rust API
//!   and the HTTP API alike; `http`: the routes (configuration, WebSocket upgrade,
//!   tickets, client, API).
//! - [`Chat`]: what a host application mounts (a router, a WebTransport future, and
//!   publish / members / kick); [`Server`]: the standalone `wtchat serve`, with its own
//!   HTTP server (a header deadline, a cap on connections not yet upgraded).
//! - `webhook`: the host's backend in any language (PHP, Django…) as signed HTTP calls: a
//!   message webhook (accept, reject, rewrite), an auth webhook, and the events webhook
//!   (messages stored, joins, leaves, posted after the fact).
//!
//! Cargo features, all on by default: `sqlite` and `redis` (those engines), `metrics`
//! (`/wtchat/metrics`), `webhooks` (the webhooks' HTTP client). With `default-features =
//! false` none of their crates is compiled, and a setting that needs one is refused by
//! [`ConfigBuilder::build`] with the feature's name.
//! - [`Config`]: one configuration with working defaults, made by a builder that refuses
//!   what cannot work.
//!
//! Only what a host needs is public; the wire protocol and the core are not, so they can
//! change without breaking a host. Every error is a type of its own: [`ConfigError`],
//! [`StartError`], [`PublishError`], [`auth::TokenError`], and the hooks' [`Refusal`].
//!
//! ## Quick start
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = wtchat::Config::builder()
//!     .http("127.0.0.1:0".parse()?)
//!     .webtransport("[::]:0".parse()?)
//!     .build()?;
//! let server = wtchat::Server::bind(config).await?;
//! println!("HTTP on {}, WebTransport on {}", server.http_addr(), server.webtransport_addr());
//! server.run(async { tokio::signal::ctrl_c().await.unwrap() }).await;
//! # Ok(())
//! # }
//! ```

#![deny(missing_docs)]

pub mod auth;
pub mod certs;
mod chat;
mod config;
pub mod engine;
mod hooks;
mod host;
mod http;
mod hub;
mod metrics;
mod protocol;
mod queue;
mod server;
mod session;
mod throttle;
mod transport;
#[cfg(feature = "webhooks")]
mod webhook;

pub use auth::{ConnectRequest, Identity, Refusal, Rooms, Transport};
pub use chat::{Chat, StartError};
pub use config::{Config, ConfigBuilder, ConfigError, MIN_SECRET_BYTES, PATH, Tls};
pub use engine::{
    DEFAULT_REDIS_PREFIX, Engine, HistoryPage, MemberInfo, MembersPage, ReactionCount, Reactor,
    ReactorsPage, ReadState, StorageError, StoredMessage,
};
pub use hooks::{MessageEvent, MessageKind};
pub use host::{PublishError, ReactError, RoomUnread};
pub use server::Server;

/// The property tests' configuration: `cases` per test, few enough for `cargo test`, unless
/// `PROPTEST_CASES` asks for more (the long runs of the `fuzz_` tests, `--profile fuzz`).
#[cfg(test)]
fn fuzz_config(cases: u32) -> proptest::test_runner::Config {
    let config = proptest::test_runner::Config::default();
    if std::env::var_os("PROPTEST_CASES").is_some() {
        config
    } else {
        proptest::test_runner::Config { cases, ..config }
    }
}
