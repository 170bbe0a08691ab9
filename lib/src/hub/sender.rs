//! Who sends a member's messages: the identity behind idempotent retries and "this message
//! is mine", apart from the display name anyone may take.

use base64::Engine;

/// Who sends a member's messages. A display name is not an identity (anyone may take
/// "ann"), so neither the idempotency window nor "is this message mine" may rest on it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Sender {
    /// Secret, never sent to anyone but its owner: `u:` and the host's user id, or `k:` and
    /// the connection's resume key. Scopes the client message ids of idempotent retries.
    scope: Box<str>,
    /// Public: a digest of the scope, carried by every message this sender publishes, so
    /// that a client (told its own in `joined`) can mark its own messages, in history too.
    public: Box<str>,
}

impl Sender {
    /// The sender of an authenticated user's connections, all alike.
    pub(crate) fn user(user: &str) -> Sender {
        Sender::new(format!("u:{user}"))
    }

    /// The sender of an anonymous connection holding resume key `key`.
    pub(crate) fn key(key: &str) -> Sender {
        Sender::new(format!("k:{key}"))
    }

    fn new(scope: String) -> Sender {
        let digest = ring::digest::digest(&ring::digest::SHA256, scope.as_bytes());
        // 96 bits: no two senders of a room collide, and nothing can be learned of the
        // scope (the key is 128 random bits; a user id is hashed with its prefix).
        let public =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest.as_ref()[..12]);
        Sender {
            scope: scope.into(),
            public: public.into(),
        }
    }

    /// The public id.
    pub(crate) fn public(&self) -> &str {
        &self.public
    }

    /// An anonymous connection's resume key, for its own `joined`.
    pub(crate) fn resume_key(&self) -> Option<&str> {
        self.scope.strip_prefix("k:")
    }

    /// What makes this sender's message with client id `id` idempotent: the engine
    /// stores it once per room, however often it is retried.
    pub(crate) fn dedupe_key(&self, id: &str) -> Box<str> {
        format!("{}\0{id}", self.public).into_boxed_str()
    }
}
