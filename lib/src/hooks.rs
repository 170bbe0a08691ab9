//! The host's say over each message before it is stored: its Rust message hook (quick,
//! synchronous) and its backend (the message webhook, awaited), as the sessions call them.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::auth::Refusal;
use crate::hub::Member;

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
pub(crate) enum Verdict {
    /// Stored and delivered as it is.
    Accept,
    /// Stored and delivered with this text instead.
    Rewrite(String),
    /// Not stored; the sender gets `rejected` with this reason.
    Reject(String),
}
