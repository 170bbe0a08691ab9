//! What the host application does to the rooms, from Rust ([`Chat`](crate::Chat)) or from
//! its backend over the HTTP API: publish a message, list a room's members, kick a user
//! or a member, read a room's history, delete a message, ban a user. One implementation
//! for both, checked against the same limits as a client's frames.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::{
    HistoryPage, MemberInfo, MembersPage, Reacted, ReactorsPage, ReadState, Record, RecordKind,
    StorageError,
};
use crate::hub::{Hub, Policy, SenderKey};
use crate::protocol::{CloseCode, ErrorCode, Limits, MAX_MENTIONS, now_ms};

/// A user's read state in one room: see [`Chat::unread`](crate::Chat::unread).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct RoomUnread {
    /// The room.
    pub room: String,
    /// What the user read up to there, and what it has not read since.
    #[serde(flatten)]
    pub state: ReadState,
}

/// The host's handle on the hub.
#[derive(Clone)]
pub(crate) struct Host {
    pub hub: Hub,
    pub limits: Arc<Limits>,
    /// What makes a user's public sender id, for reactions on its behalf.
    pub senders: Arc<SenderKey>,
}

/// Why [`Chat::react`](crate::Chat::react) or [`Chat::unreact`](crate::Chat::unreact)
/// changed nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReactError {
    /// The reaction is not one emoji, nor a name from the server's list.
    InvalidReaction,
    /// The room has no such message (never had, or no longer).
    UnknownMessage,
    /// The message was deleted.
    MessageDeleted,
    /// The message has as many distinct reactions as allowed, or the user as many on it.
    TooManyReactions,
    /// The room name or the user's name is not one the limits allow.
    Invalid(ErrorCode),
    /// The reaction could not be stored, or the message read.
    Storage(StorageError),
}

impl ReactError {
    /// The wire code the HTTP API answers with: the same as a client's `error` frame.
    pub(crate) fn code(&self) -> ErrorCode {
        match self {
            ReactError::InvalidReaction => ErrorCode::InvalidReaction,
            ReactError::UnknownMessage => ErrorCode::UnknownMessage,
            ReactError::MessageDeleted => ErrorCode::MessageDeleted,
            ReactError::TooManyReactions => ErrorCode::TooManyReactions,
            ReactError::Invalid(code) => *code,
            ReactError::Storage(_) => ErrorCode::StorageFailed,
        }
    }
}

impl fmt::Display for ReactError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReactError::InvalidReaction => {
                "a reaction is one emoji, or a name from the server's list"
            }
            ReactError::UnknownMessage => "the room has no such message",
            ReactError::MessageDeleted => "the message was deleted",
            ReactError::TooManyReactions => {
                "the message has as many reactions as allowed, or the user as many on it"
            }
            ReactError::Invalid(code) => return write!(f, "invalid: {}", code.as_str()),
            ReactError::Storage(e) => return write!(f, "the reaction could not be stored: {e}"),
        })
    }
}

impl std::error::Error for ReactError {}

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
    /// More than 20 mentions, or one named twice.
    InvalidMentions,
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
            PublishError::InvalidMentions => ErrorCode::InvalidMentions,
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
            PublishError::InvalidMentions => "mentions are up to 20 distinct user ids",
            PublishError::ServerFull => "the server holds max_rooms rooms and none is empty",
            PublishError::Storage(e) => return write!(f, "the message could not be stored: {e}"),
        })
    }
}

impl std::error::Error for PublishError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PublishError::Storage(e) => Some(e),
            _ => None,
        }
    }
}

impl Host {
    /// See [`Chat::publish`](crate::Chat::publish).
    pub(crate) async fn publish(
        &self,
        room: &str,
        from: &str,
        text: &str,
        mentions: &[&str],
    ) -> Result<u64, PublishError> {
        let limits = &self.limits;
        limits
            .check_room(room)
            .map_err(|_| PublishError::InvalidRoom)?;
        limits
            .check_name(from)
            .map_err(|_| PublishError::InvalidSender)?;
        self.check_text(text)?;
        let distinct = mentions
            .iter()
            .enumerate()
            .all(|(i, user)| !mentions[..i].contains(user));
        if mentions.len() > MAX_MENTIONS || !distinct {
            return Err(PublishError::InvalidMentions);
        }
        let mentions = mentions
            .iter()
            .map(|user| self.senders.user(user).public().into())
            .collect();
        let published = self
            .hub
            .publish_as(room, from, text, mentions)
            .await
            .map_err(|code| match code {
                ErrorCode::StorageFailed => {
                    PublishError::Storage(StorageError::new("the room could not be read"))
                }
                _ => PublishError::ServerFull,
            })?;
        published.map_err(PublishError::Storage)
    }

    pub(crate) async fn history(
        &self,
        room: &str,
        before: Option<u64>,
        limit: usize,
    ) -> Result<HistoryPage, StorageError> {
        self.hub.history(room, before, limit).await
    }

    /// A message's text, as a publish or an edit checks it.
    fn check_text(&self, text: &str) -> Result<(), PublishError> {
        self.limits
            .check_message(text, None)
            .map_err(|(code, _)| match code {
                ErrorCode::TextTooLong => PublishError::TextTooLong,
                _ => PublishError::EmptyText,
            })
    }

    pub(crate) async fn delete(&self, room: &str, seq: u64) -> Result<bool, StorageError> {
        self.hub.change_as(room, RecordKind::Delete, seq, "").await
    }

    /// See [`Chat::edit_message`](crate::Chat::edit_message).
    pub(crate) async fn edit(
        &self,
        room: &str,
        seq: u64,
        text: &str,
    ) -> Result<bool, PublishError> {
        self.check_text(text)?;
        self.hub
            .change_as(room, RecordKind::Edit, seq, text)
            .await
            .map_err(PublishError::Storage)
    }

    /// See [`Chat::react`](crate::Chat::react): `kind` adds or takes back.
    pub(crate) async fn react(
        &self,
        room: &str,
        seq: u64,
        user: &str,
        name: &str,
        reaction: &str,
        kind: RecordKind,
    ) -> Result<Vec<String>, ReactError> {
        let limits = &self.limits;
        let invalid = |(code, _)| ReactError::Invalid(code);
        limits.check_room(room).map_err(invalid)?;
        if kind == RecordKind::React {
            limits.check_name(name).map_err(invalid)?;
        }
        limits
            .check_reaction(reaction)
            .map_err(|_| ReactError::InvalidReaction)?;
        let mut record = Record::change(kind, seq, now_ms(), name, reaction);
        record.sender = Some(self.senders.user(user).public().into());
        let (_, reacted) = self
            .hub
            .react_as(room, record)
            .await
            .map_err(ReactError::Storage)?;
        match reacted {
            Some(Reacted::Counts { mine, .. }) => Ok(mine),
            Some(Reacted::TooMany) => Err(ReactError::TooManyReactions),
            Some(Reacted::Gone { deleted: true }) => Err(ReactError::MessageDeleted),
            Some(Reacted::Gone { .. }) => Err(ReactError::UnknownMessage),
            None => Err(ReactError::Storage(StorageError::new(
                "this server's engine keeps no reactions",
            ))),
        }
    }

    /// See [`Chat::reactions`](crate::Chat::reactions).
    pub(crate) async fn reactors(
        &self,
        room: &str,
        seq: u64,
        after: Option<u64>,
        limit: usize,
    ) -> Result<ReactorsPage, StorageError> {
        self.hub
            .reactors(room, seq, after.unwrap_or(0), limit)
            .await
    }

    /// See [`Chat::mark_read`](crate::Chat::mark_read).
    pub(crate) async fn mark_read(
        &self,
        user: &str,
        room: &str,
        seq: u64,
    ) -> Result<ReadState, StorageError> {
        let reader = self.senders.user(user);
        let (state, _) = self.hub.mark_read(room, reader.public(), Some(seq)).await?;
        Ok(state)
    }

    /// See [`Chat::unread`](crate::Chat::unread).
    pub(crate) async fn unread(&self, user: &str) -> Result<Vec<RoomUnread>, StorageError> {
        let reader = self.senders.user(user);
        let mut rooms: Vec<RoomUnread> = self
            .hub
            .unread(reader.public())
            .await?
            .into_iter()
            .map(|(room, state)| RoomUnread { room, state })
            .collect();
        rooms.sort_unstable_by(|a, b| a.room.cmp(&b.room));
        Ok(rooms)
    }

    pub(crate) async fn ban(
        &self,
        room: Option<&str>,
        user: &str,
        duration: Duration,
    ) -> Result<usize, StorageError> {
        let until = now_ms().saturating_add(duration.as_millis().min(u64::MAX as u128) as u64);
        self.hub.ban(room, user, until).await
    }

    pub(crate) async fn unban(&self, room: Option<&str>, user: &str) -> Result<(), StorageError> {
        self.hub.unban(room, user).await
    }

    /// See [`Chat::members`](crate::Chat::members).
    pub(crate) async fn members(&self, room: &str) -> Result<Vec<MemberInfo>, StorageError> {
        Ok(self.members_page(room, None, usize::MAX).await?.members)
    }

    pub(crate) async fn members_page(
        &self,
        room: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<MembersPage, StorageError> {
        self.hub.members_page(room, after, limit).await
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
    pub(crate) async fn disconnect_member(
        &self,
        room: &str,
        member: u64,
        code: CloseCode,
    ) -> Result<bool, StorageError> {
        self.hub.disconnect_member(room, member, code).await
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::*;

    #[test]
    fn a_storage_failure_says_what_and_keeps_its_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left");
        let failed = PublishError::Storage(StorageError::caused_by("the disk is full", io));
        assert_eq!(
            failed.to_string(),
            "the message could not be stored: the disk is full"
        );
        let storage = failed.source().expect("the storage error is the source");
        assert_eq!(storage.to_string(), "the disk is full");
        let io = storage.source().expect("and its cause");
        assert_eq!(io.to_string(), "no space left");
        assert!(PublishError::EmptyText.source().is_none());
    }
}
