//! What the host application does to the rooms, from Rust ([`Chat`](crate::Chat)) or from
//! its backend over the HTTP API: publish a message, list a room's members, kick a user
//! or a member, read a room's history, delete a message, ban a user. One implementation
//! for both, checked against the same limits as a client's frames.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::{HistoryPage, StorageError};
use crate::hub::{Hub, MemberSummary, Policy, now_ms};
use crate::protocol::{CloseCode, ErrorCode, Limits};

/// The host's handle on the hub.
#[derive(Clone)]
pub(crate) struct Host {
    pub hub: Hub,
    pub limits: Arc<Limits>,
}

/// One page of a room's members, in id order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct MembersPage {
    /// Up to the page's limit of members.
    pub members: Vec<MemberInfo>,
    /// How many members the room has.
    pub count: usize,
    /// Ask again with this as `after` for the next page; None at the end.
    pub next: Option<u64>,
}

impl From<MemberSummary> for MemberInfo {
    fn from(m: MemberSummary) -> MemberInfo {
        MemberInfo {
            id: m.id,
            name: m.name.to_string(),
            user: m.user.map(|u| u.to_string()),
        }
    }
}

/// A room member, as the host sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemberInfo {
    /// The member's id (as in `presence` frames): one per connection.
    pub id: u64,
    /// The display name.
    pub name: String,
    /// The host's user id, when the connection was authenticated.
    pub user: Option<String>,
}

/// Why [`Chat::publish`](crate::Chat::publish) refused a message. Nothing was stored and
/// no sequence number was used.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublishError {
    /// The room name is empty, longer than `max_room_chars`, or has characters outside
    /// `A-Z a-z 0-9 _ - . : @`.
    InvalidRoom,
    /// The sender's name is blank, longer than `max_name_chars`, or has control characters.
    InvalidSender,
    /// The text is blank.
    EmptyText,
    /// The text is longer than `max_text_chars`.
    TextTooLong,
    /// The server holds `max_rooms` rooms, none of them empty, and this room is not one.
    ServerFull,
    /// The message could not be stored; it was not delivered.
    Storage(StorageError),
}

impl PublishError {
    /// The wire code the HTTP API answers with: the same as a client's `error` frame.
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            PublishError::InvalidRoom => ErrorCode::InvalidRoom,
            PublishError::InvalidSender => ErrorCode::InvalidName,
            PublishError::EmptyText => ErrorCode::InvalidText,
            PublishError::TextTooLong => ErrorCode::TextTooLong,
            PublishError::ServerFull => ErrorCode::ServerFull,
            PublishError::Storage(_) => ErrorCode::StorageFailed,
        }
    }
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PublishError::InvalidRoom => {
                "room must be 1 to max_room_chars characters of A-Z a-z 0-9 _ - . : @"
            }
            PublishError::InvalidSender => {
                "sender name must be 1 to max_name_chars characters, not blank, without control characters"
            }
            PublishError::EmptyText => "text must not be empty",
            PublishError::TextTooLong => "text is longer than max_text_chars",
            PublishError::ServerFull => "the server holds max_rooms rooms and none is empty",
            PublishError::Storage(e) => return write!(f, "the message could not be stored: {e}"),
        })
    }
}

impl std::error::Error for PublishError {}

impl Host {
    /// See [`Chat::publish`](crate::Chat::publish).
    pub(crate) async fn publish(
        &self,
        room: &str,
        from: &str,
        text: &str,
    ) -> Result<u64, PublishError> {
        let limits = &self.limits;
        limits
            .check_room(room)
            .map_err(|_| PublishError::InvalidRoom)?;
        limits
            .check_name(from)
            .map_err(|_| PublishError::InvalidSender)?;
        limits
            .check_message(text, None)
            .map_err(|(code, _)| match code {
                ErrorCode::TextTooLong => PublishError::TextTooLong,
                _ => PublishError::EmptyText,
            })?;
        let published = self
            .hub
            .publish_as(room, from, text)
            .await
            .map_err(|code| match code {
                ErrorCode::StorageFailed => {
                    PublishError::Storage(StorageError::new("the room could not be read"))
                }
                _ => PublishError::ServerFull,
            })?;
        match published.await {
            Ok(stored) => stored.map_err(PublishError::Storage),
            Err(_) => Err(PublishError::Storage(StorageError::new(
                "the server stopped before the message was stored",
            ))),
        }
    }

    pub(crate) fn history(
        &self,
        room: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage, StorageError> {
        self.hub.history(room, before, limit)
    }

    pub(crate) async fn delete(&self, room: &str, seq: u64) -> Result<bool, StorageError> {
        self.hub.delete(room, seq).await
    }

    pub(crate) async fn ban(
        &self,
        user: &str,
        room: Option<&str>,
        duration: Duration,
    ) -> Result<usize, StorageError> {
        let until = now_ms().saturating_add(duration.as_millis().min(u64::MAX as u128) as u64);
        self.hub.ban(room, user, until).await
    }

    pub(crate) async fn unban(&self, user: &str, room: Option<&str>) -> Result<(), StorageError> {
        self.hub.unban(room, user).await
    }

    /// See [`Chat::members`](crate::Chat::members).
    pub(crate) fn members(&self, room: &str) -> Vec<MemberInfo> {
        self.members_page(room, None, usize::MAX).members
    }

    pub(crate) fn members_page(&self, room: &str, after: Option<u64>, limit: usize) -> MembersPage {
        let (members, count, next) = match self.hub.members_page(room, after, limit) {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(room, error = %e, "could not list the members");
                return MembersPage::default();
            }
        };
        MembersPage {
            members: members.into_iter().map(MemberInfo::from).collect(),
            count,
            next,
        }
    }

    pub(crate) fn set_presence(&self, room: &str, threshold: usize, counts_only: bool) {
        let threshold = threshold.max(2);
        self.hub.set_policy(
            room,
            Policy {
                threshold,
                counts_only,
            },
        );
    }

    /// See [`Chat::kick`](crate::Chat::kick).
    pub(crate) fn kick(&self, room: &str, user: &str) -> usize {
        self.hub.kick(Some(room), user, CloseCode::Kicked)
    }

    /// Closes member `member` of `room` with `code`; whether it was there. See
    /// [`Chat::kick_member`](crate::Chat::kick_member) and
    /// [`Chat::reconnect_member`](crate::Chat::reconnect_member).
    pub(crate) fn disconnect_member(&self, room: &str, member: u64, code: CloseCode) -> bool {
        self.hub.disconnect_member(room, member, code)
    }
}
