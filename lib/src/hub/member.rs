//! A room member: one connection under one display name, with where its frames go.

use std::sync::Arc;

use super::sender::Sender;
use crate::engine::MemberInfo;
use crate::protocol::MemberRef;
use crate::queue::Outbox;

/// A member of a room: one connection under one display name.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    /// The connection's id, unique over every node sharing the engine.
    pub id: u64,
    /// Display name; shared, never copied per message.
    pub name: Arc<str>,
    /// The host's user id, when the connection was authenticated.
    pub user: Option<Arc<str>>,
    /// Who sends this member's messages: the same for every room the connection is in.
    pub sender: Arc<Sender>,
    /// Where the room delivers this member's frames.
    pub outbox: Outbox,
}

impl Member {
    pub(crate) fn summary(&self) -> MemberSummary {
        MemberSummary {
            id: self.id,
            name: self.name.clone(),
            user: self.user.clone(),
            sender: Some(self.sender.public().into()),
        }
    }
}

/// A member as listed: connected here or to another node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemberSummary {
    pub id: u64,
    pub name: Arc<str>,
    pub user: Option<Arc<str>>,
    /// Its public sender id (None from an engine that lists none).
    pub sender: Option<Arc<str>>,
}

impl MemberSummary {
    pub(crate) fn as_ref(&self) -> MemberRef<'_> {
        MemberRef {
            id: self.id,
            name: &self.name,
            sender: self.sender.as_deref(),
        }
    }
}

impl From<MemberInfo> for MemberSummary {
    fn from(m: MemberInfo) -> MemberSummary {
        MemberSummary {
            id: m.id,
            name: m.name.into(),
            user: m.user.map(Into::into),
            sender: m.sender.map(Into::into),
        }
    }
}

impl From<MemberSummary> for MemberInfo {
    fn from(m: MemberSummary) -> MemberInfo {
        MemberInfo::new(m.id, m.name.to_string(), m.user.map(|u| u.to_string()))
            .with_sender(m.sender.map(|s| s.to_string()))
    }
}

/// Where a joining client left off, to resume without gaps or duplicates.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Resume {
    /// The last sequence number the client saw in this room.
    pub since: Option<u64>,
    /// The room epoch it saw them under; a different epoch means the room was recreated
    /// (its stored history lost, or evicted from memory on the memory engine) and its
    /// numbers started again.
    pub epoch: Option<u64>,
}
