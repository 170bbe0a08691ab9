//! The host's say over what happens: its Rust message hook (quick, synchronous), and its
//! backend's webhooks as the chat calls them — the message webhook (awaited by the
//! sessions), the auth webhook (a hook like the Rust one) and the events webhook (told by
//! the hub), and their settings. With the `webhooks` feature they come from the
//! `webhook` module; without it there are none (the builder refuses their settings).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::auth::{AuthHook, Refusal};
use crate::hub::{Member, Mentioned, Observer};

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

/// The webhook settings, as the configuration builder collects them.
#[derive(Clone)]
pub(crate) struct WebhookConfig {
    /// The message webhook's URL.
    pub message: Option<String>,
    /// The events webhook's URL.
    pub events: Option<String>,
    /// The auth webhook's URL.
    pub auth: Option<String>,
    /// What every request is signed with: the backend's proof that a call is the chat's.
    pub secret: Option<String>,
    /// How long a call may take, connecting included.
    pub timeout: Duration,
    /// Whether a message the message webhook did not answer for is accepted (`true`) or
    /// rejected (`false`).
    pub fail_open: bool,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            message: None,
            events: None,
            auth: None,
            secret: None,
            timeout: Duration::from_secs(2),
            fail_open: false,
        }
    }
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("message", &self.message)
            .field("events", &self.events)
            .field("auth", &self.auth)
            .field("secret", &self.secret.as_ref().map(|_| "<secret>"))
            .field("timeout", &self.timeout)
            .field("fail_open", &self.fail_open)
            .finish()
    }
}

impl WebhookConfig {
    /// Whether any webhook is set.
    pub(crate) fn any(&self) -> bool {
        self.message.is_some() || self.events.is_some() || self.auth.is_some()
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
    /// The text (of an edit: the new text).
    pub text: &'a str,
    /// A new message, or an edit of one.
    pub kind: MessageKind,
    /// The message an edit changes (its sequence number); None for a new message.
    pub seq: Option<u64>,
}

/// Whether the message hook or webhook is asked about a new message or an edit of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum MessageKind {
    /// A `send`.
    Send,
    /// An `edit` of the sender's own message.
    Edit,
}

/// The host's message hook: `Ok` lets the message through, `Err(refusal)` rejects it (the
/// sender gets error `rejected` with the refusal's message, nobody else sees it). It runs
/// on the sender's session before the message is stored: keep it quick (spawn slow work).
pub(crate) type MessageHook = Arc<dyn Fn(&MessageEvent<'_>) -> Result<(), Refusal> + Send + Sync>;

/// What the host's backend decides of a message before it is stored.
pub(crate) trait MessageCheck: Send + Sync {
    /// The verdict on `text`, sent by `sender` into `room` with client id `id`: a new
    /// message, or (`edits` Some) the new text of the sender's message `edits`.
    fn check<'a>(
        &'a self,
        room: &'a str,
        sender: &'a Member,
        text: &'a str,
        id: Option<&'a str>,
        edits: Option<u64>,
        mentions: &'a [Mentioned],
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
