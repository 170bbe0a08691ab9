//! What happens in the rooms, told to whoever follows it from outside the hub (the events
//! webhook). A room tells its observer under its own lock, at the moment a member sees the
//! same thing, so that the observer hears a room's events in the order its members do. The
//! observer must only queue what it is told: it runs on the room's hot path.
//!
//! Only this node's own doings are told — its members' joins and leaves, and the messages
//! its members and its host published — so that with several nodes on one engine, each
//! event is told once, by the node where it happened.

// Only the events webhook follows what happens.
#![cfg_attr(not(feature = "webhooks"), allow(dead_code))]

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use super::member::MemberSummary;

/// One thing that happened in a room.
#[derive(Debug)]
pub(crate) enum Happened {
    /// A message or a change to one (an edit, a deletion) published here — by a member
    /// connected here, or by the host — was stored and delivered: its frame as every member
    /// got it (`message`, or `update`), and its sender's user id.
    Message {
        frame: Bytes,
        user: Option<Arc<str>>,
        /// Whom a message mentions.
        mentions: Vec<Mentioned>,
    },
    /// A member connected here joined `room`.
    Joined {
        room: Arc<str>,
        member: MemberSummary,
    },
    /// A member connected here is no longer in `room`: it left, disconnected, was kicked or
    /// was cut off as too slow.
    Left {
        room: Arc<str>,
        member: MemberSummary,
    },
}

/// A member a message mentions: its public sender id, and its user id when the room
/// lists it (a member of the room connected to any node, signed in).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Mentioned {
    pub sender: String,
    pub user: Option<String>,
}

/// Told of everything that [happens](Happened), under the room's lock.
#[derive(Clone)]
pub(crate) struct Observer(Arc<dyn Fn(Happened) + Send + Sync>);

impl Observer {
    pub(crate) fn new(tell: impl Fn(Happened) + Send + Sync + 'static) -> Observer {
        Observer(Arc::new(tell))
    }

    pub(crate) fn tell(&self, happened: Happened) {
        (self.0)(happened)
    }
}

impl fmt::Debug for Observer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Observer")
    }
}
