//! The host's say over what happens: its Rust message hook (quick, synchronous), and its
//! backend's webhooks as the chat calls them — the message webhook (awaited by the
//! sessions), the auth webhook (a hook like the Rust one) and the events webhook (told by
//! the hub). With the `webhooks` feature they come from [`crate::webhook`]; without it
//! there are none (the builder refuses their settings).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthHook, Refusal};
use crate::config::Config;
use crate::hub::{Member, Observer};
use crate::metrics::Metrics;

/// The webhooks a configuration sets, ready to be called.
#[derive(Default)]
pub(crate) struct Webhooks {
    /// For the sessions, which await it.
    pub message: Option<Arc<dyn MessageCheck>>,
    /// For the hub, which tells it, and the chat, which runs its sender.
    pub events: Option<Arc<dyn EventsSender>>,
    /// For the authenticator, as the host's hook.
    pub auth: Option<AuthHook>,
}

impl Webhooks {
    /// The webhooks `config` sets (none in a build without the `webhooks` feature: the
    /// builder refused their settings there).
    pub(crate) fn of(config: &Config, metrics: &Arc<Metrics>) -> Webhooks {
        #[cfg(feature = "webhooks")]
        return Webhooks::new(&config.webhooks, &config.limits, metrics);
        #[cfg(not(feature = "webhooks"))]
        {
            let _ = (config, metrics);
            Webhooks::default()
        }
    }
}

/// The events webhook, as the chat runs it.
pub(crate) trait EventsSender: Send + Sync {
    /// What the hub tells: each event is queued.
    fn observer(self: Arc<Self>) -> Observer;

    /// Posts the queued events until `stop`, then what is left within `grace`.
    fn run(self: Arc<Self>, stop: CancellationToken, grace: Duration) -> BoxFuture<'static, ()>;
}

/// What the host's message hook sees of a message before it is stored.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct MessageEvent<'a> {
    /// The room.
    pub room: &'a str,
    /// The sender's display name.
    pub from: &'a str,
    /// The sender's user id, when authenticated.
    pub user: Option<&'a str>,
    /// The text.
    pub text: &'a str,
}

/// The host's message hook: `Ok` lets the message through, `Err(refusal)` rejects it (the
/// sender gets error `rejected` with the refusal's message, nobody else sees it). It runs
/// on the sender's session before the message is stored: keep it quick (spawn slow work).
pub(crate) type MessageHook = Arc<dyn Fn(&MessageEvent<'_>) -> Result<(), Refusal> + Send + Sync>;

/// What the host's backend decides of a message before it is stored.
pub(crate) trait MessageCheck: Send + Sync {
    /// The verdict on `text`, sent by `sender` into `room` with client id `id`.
    fn check<'a>(
        &'a self,
        room: &'a str,
        sender: &'a Member,
        text: &'a str,
        id: Option<&'a str>,
    ) -> BoxFuture<'a, Verdict>;
}

/// What becomes of a message.
#[derive(Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "webhooks"), allow(dead_code))]
pub(crate) enum Verdict {
    /// Stored and delivered as it is.
    Accept,
    /// Stored and delivered with this text instead.
    Rewrite(String),
    /// Not stored; the sender gets `rejected` with this reason.
    Reject(String),
}
