//! Who sends a member's messages, and the three names of a sender: its secret scope, the
//! public id every message carries, and the dedupe id its retries are matched by.
//!
//! The public id is an HMAC of the scope with the server's sender key: nobody without the
//! key can tell from it whose messages they are (a plain digest of `u:` and a user id gave
//! "user 42" away to anyone counting up from 0). The key is [`SenderKey`], derived from the
//! token secret when there is one (every node has it: they all name a sender alike), else
//! from the engine's own key, made once and kept with what the engine stores (beside the
//! SQLite database, in Redis; a new one per process on the memory engine, which keeps
//! nothing anyway). So a sender's id stays the same across restarts and nodes.
//!
//! Messages stored before the ids were keyed keep the ids they were stored with: their
//! public id was the unkeyed digest of the scope. That digest is the dedupe id, stored
//! beside each new message (and, for the old ones, in their public id): idempotent retries
//! are matched by it, so a client retrying across the upgrade is still recognised. It is
//! never sent to anyone.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::hmac;

use crate::auth::derived_key;

/// Bytes of a public or dedupe id: 96 bits, so that no two senders of a room collide.
const ID_BYTES: usize = 12;

/// Who sends a member's messages. A display name is not an identity (anyone may take
/// "ann"), so neither the idempotency window nor "is this message mine" may rest on it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Sender {
    /// Secret, never sent to anyone but its owner: `u:` and the host's user id, or `k:` and
    /// the connection's resume key.
    scope: Box<str>,
    /// Public: the keyed digest of the scope, carried by every message this sender
    /// publishes, so that a client (told its own in `joined`) can mark its own messages, in
    /// history too.
    public: Box<str>,
    /// The unkeyed digest of the scope (what the public id was before ids were keyed):
    /// scopes the client message ids of idempotent retries, in the engine too.
    dedupe: Box<str>,
}

impl Sender {
    /// The public id.
    pub(crate) fn public(&self) -> &str {
        &self.public
    }

    /// The id retries are matched by (see the module documentation): never sent.
    pub(crate) fn dedupe_id(&self) -> &str {
        &self.dedupe
    }

    /// An anonymous connection's resume key, for its own `joined`.
    pub(crate) fn resume_key(&self) -> Option<&str> {
        self.scope.strip_prefix("k:")
    }

    /// What makes this sender's message with client id `id` idempotent: its dedupe id and
    /// the client id (see [`Record::dedupe`](crate::engine::Record::dedupe)).
    pub(crate) fn dedupe_key(&self, id: &str) -> Box<str> {
        format!("{}\0{id}", self.dedupe_id()).into_boxed_str()
    }
}

/// The server's key for public sender ids; makes every [`Sender`].
pub(crate) struct SenderKey(hmac::Key);

impl SenderKey {
    /// The key derived from `secret`: the token secret, or the engine's own key.
    pub(crate) fn new(secret: &[u8]) -> SenderKey {
        SenderKey(derived_key(secret, b"wtchat sender ids v1"))
    }

    /// The sender of an authenticated user's connections, all alike.
    pub(crate) fn user(&self, user: &str) -> Sender {
        self.sender(format!("u:{user}"))
    }

    /// The sender of an anonymous connection holding resume key `key`.
    pub(crate) fn resume_key(&self, key: &str) -> Sender {
        self.sender(format!("k:{key}"))
    }

    fn sender(&self, scope: String) -> Sender {
        let public = hmac::sign(&self.0, scope.as_bytes());
        let unkeyed = ring::digest::digest(&ring::digest::SHA256, scope.as_bytes());
        Sender {
            public: B64.encode(&public.as_ref()[..ID_BYTES]).into(),
            dedupe: B64.encode(&unkeyed.as_ref()[..ID_BYTES]).into(),
            scope: scope.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_ids_need_the_key_and_dedupe_ids_are_the_ids_of_before() {
        let key = SenderKey::new(b"one server's secret");
        let ann = key.user("42");
        // The same key names a sender alike (another node, a restart); another key does not.
        assert_eq!(SenderKey::new(b"one server's secret").user("42"), ann);
        let elsewhere = SenderKey::new(b"another server's secret").user("42");
        assert_ne!(elsewhere.public(), ann.public());
        assert_eq!(elsewhere.dedupe_id(), ann.dedupe_id());
        // Counting up user ids with the digest of before finds nothing.
        let unkeyed = |scope: &str| {
            B64.encode(
                &ring::digest::digest(&ring::digest::SHA256, scope.as_bytes()).as_ref()[..12],
            )
        };
        assert!((0..1000).all(|n| unkeyed(&format!("u:{n}")) != ann.public()));
        // The dedupe id is that digest: what the messages stored before carry as their id.
        assert_eq!(ann.dedupe_id(), unkeyed("u:42"));
        assert_eq!(ann.public().len(), 16);
        let anonymous = key.resume_key("AAAAAAAAAAAAAAAAAAAAAA");
        assert_eq!(anonymous.resume_key(), Some("AAAAAAAAAAAAAAAAAAAAAA"));
        assert_eq!(ann.resume_key(), None);
        assert_ne!(
            anonymous.public(),
            key.user("AAAAAAAAAAAAAAAAAAAAAA").public()
        );
    }
}
