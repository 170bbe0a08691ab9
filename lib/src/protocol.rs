//! The wire protocol: client and server frames, their JSON codec, the limits a frame is
//! checked against, the error codes and the close-code table.
//!
//! Nothing here does I/O. A transport hands [`decode`] the bytes of one frame (one WebSocket
//! text message, or one `\n`-terminated line of the WebTransport stream, or one datagram) and
//! writes the bytes [`encode`] returns. Every encoded frame ends with `\n`: the WebTransport
//! stream needs it as a delimiter, the WebSocket transport slices it off for free
//! (`Bytes::slice` shares the allocation), so one encoding serves both transports.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Milliseconds since 1970: the server's clock, as frames carry it.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The protocol this server speaks: named by `/wtchat/config` and by the `hello` frames.
/// 1 had no `hello`; 2 adds it (a client's first frame, answered with the version the
/// server speaks on that connection); 3 adds `edit` and `delete`, and the `update` frame
/// that tells a change to a message (it replaces `deleted`); 4 gives each joined room a
/// WebTransport stream of its own (other transports are as in 3: see
/// [`room_stream_of`]).
pub const PROTOCOL: u32 = 4;

/// The first protocol whose WebTransport sessions carry each room's frames on a stream of
/// the room's own.
pub const ROOM_STREAMS: u32 = 4;

/// Which room's stream a server frame goes on, over WebTransport from protocol
/// [`ROOM_STREAMS`] on: the room it names, for the frames of a room the connection is in
/// (`joined`, messages, updates, acks, presence, errors about it, `left`…); None for the
/// session's own frames (`hello`, `pong`, `bye`, errors naming no room) and for those that
/// may name a room the connection is not in (`read`, `mention`), which stay on the
/// session's stream. Reads the encoder's layout: `type` first, then `room` (room names
/// need no escaping); an error names its room after its message, so it is parsed.
pub(crate) fn room_stream_of(frame: &[u8]) -> Option<&str> {
    let rest = frame.strip_prefix(br#"{"type":""#)?;
    let end = rest.iter().position(|&b| b == b'"')?;
    let (kind, rest) = (&rest[..end], &rest[end..]);
    match kind {
        b"hello" | b"pong" | b"bye" | b"session" | b"read" | b"mention" => None,
        b"error" => {
            #[derive(Deserialize)]
            struct Named<'a> {
                #[serde(borrow)]
                room: Option<&'a str>,
            }
            serde_json::from_slice::<Named<'_>>(frame).ok()?.room
        }
        _ => {
            let rest = rest.strip_prefix(br#"","room":""#)?;
            let end = rest.iter().position(|&b| b == b'"')?;
            std::str::from_utf8(&rest[..end]).ok()
        }
    }
}

/// Whether server frame `frame` is a `joined`: it opens its room's stream (protocol
/// [`ROOM_STREAMS`]). Reads the encoder's layout, `type` first, as [`room_stream_of`] does.
pub(crate) fn opens_room_stream(frame: &[u8]) -> bool {
    frame.starts_with(br#"{"type":"joined""#)
}

/// Whether server frame `frame` is a `left`: its room's stream is finished after it.
pub(crate) fn closes_room_stream(frame: &[u8]) -> bool {
    frame.starts_with(br#"{"type":"left""#)
}

/// The protocol a server's `hello` frame names, if `frame` is one: what the connection
/// speaks from then on.
pub(crate) fn hello_answer(frame: &[u8]) -> Option<u32> {
    let rest = frame.strip_prefix(br#"{"type":"hello","protocol":"#)?;
    let end = rest.iter().position(|b| !b.is_ascii_digit())?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

/// The oldest protocol the server still speaks, for a release at least: a client that
/// sends no `hello` speaks version 1, as clients did before there was one.
pub const OLDEST_PROTOCOL: u32 = 1;

/// A frame sent by a client.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// The protocol version the client speaks: its first frame, if it sends one (a client
    /// that sends none speaks version 1). Answered with `hello`.
    Hello { protocol: u32 },
    /// Join a room. `since` (with the room's `epoch` as last seen) resumes after a reconnect:
    /// the server replays every message with a larger sequence number, or says `gap`.
    Join {
        room: String,
        name: Option<String>,
        since: Option<u64>,
        epoch: Option<u64>,
        /// The resume key of an anonymous client's earlier connection (from its `joined`):
        /// its retried sends are recognised, and its messages are still its own.
        key: Option<String>,
    },
    /// Leave a room.
    Leave { room: String },
    /// Send a message. `id` is chosen by the client; resending the same `id` is idempotent.
    /// `replyTo` names the message of the room it answers.
    Send {
        room: String,
        text: String,
        id: Option<String>,
        #[serde(rename = "replyTo")]
        reply_to: Option<u64>,
        /// The public sender ids of the members it mentions (at most [`MAX_MENTIONS`]):
        /// each gets a `mention` frame, and counts it until it reads the room.
        #[serde(default)]
        mentions: Vec<String>,
    },
    /// Mark the room read up to message `seq` (a mark never goes back; past the room's
    /// newest number it stops there). Answered with `read`, which every other connection
    /// of the same user gets too when the mark moved.
    Read { room: String, seq: u64 },
    /// Replace the text of message `seq`, one of the client's own, within the edit window;
    /// acknowledged like a send (the `ack`'s `seq` is the edit's own number).
    Edit {
        room: String,
        seq: u64,
        text: String,
        id: Option<String>,
    },
    /// Delete message `seq`, one of the client's own; acknowledged like a send.
    Delete {
        room: String,
        seq: u64,
        id: Option<String>,
    },
    /// Add `reaction` (one emoji, or a name from the server's list) to message `seq`;
    /// acknowledged like a send, the `ack` naming the client's own reactions on it.
    React {
        room: String,
        seq: u64,
        reaction: String,
        id: Option<String>,
    },
    /// Take back the client's `reaction` on message `seq`; acknowledged like `react`.
    Unreact {
        room: String,
        seq: u64,
        reaction: String,
        id: Option<String>,
    },
    /// Who reacted to message `seq` of a joined room: up to `limit` (default and maximum
    /// [`REACTORS_PAGE`]) reactions after `after`, in their order; answered with
    /// `reactions`.
    Reactions {
        room: String,
        seq: u64,
        after: Option<u64>,
        limit: Option<u32>,
    },
    /// "I am typing": relayed to the room's other members, may be lost.
    Typing { room: String },
    /// Liveness check (browsers cannot send WebSocket pings); answered with `pong`.
    Ping {},
    /// One page of older messages of a joined room: up to `limit` (default and maximum
    /// [`HISTORY_PAGE`]) messages with sequence numbers below `before` (default: the
    /// newest), answered with `history`.
    History {
        room: String,
        before: Option<u64>,
        limit: Option<u32>,
    },
    /// One page of a joined room's members: up to `limit` (default and maximum
    /// [`MEMBERS_PAGE`]) with ids above `after`, in id order; answered with `members`.
    Members {
        room: String,
        after: Option<u64>,
        limit: Option<u32>,
    },
}

/// The default and largest number of members in one `members` page, and in a big room's
/// `joined`.
pub const MEMBERS_PAGE: usize = 100;

/// The default and largest number of messages in one `history` page.
pub const HISTORY_PAGE: usize = 100;

/// The default and largest number of reactions in one `reactions` page.
pub const REACTORS_PAGE: usize = 100;

/// The most members one message may mention.
pub const MAX_MENTIONS: usize = 20;

/// A member's own reactions, by message: what its `joined` and `history` name.
pub type Mine = std::collections::BTreeMap<u64, Vec<String>>;

impl ClientFrame {
    /// The room and client message id a frame names, to echo in an error about it.
    pub(crate) fn room_and_id(&self) -> (Option<&str>, Option<&str>) {
        match self {
            ClientFrame::Send { room, id, .. }
            | ClientFrame::Edit { room, id, .. }
            | ClientFrame::Delete { room, id, .. }
            | ClientFrame::React { room, id, .. }
            | ClientFrame::Unreact { room, id, .. } => (Some(room), id.as_deref()),
            ClientFrame::Join { room, .. }
            | ClientFrame::Reactions { room, .. }
            | ClientFrame::History { room, .. }
            | ClientFrame::Members { room, .. }
            | ClientFrame::Leave { room }
            | ClientFrame::Read { room, .. }
            | ClientFrame::Typing { room } => (Some(room), None),
            ClientFrame::Ping {} | ClientFrame::Hello { .. } => (None, None),
        }
    }
}

/// The message a reply answers, as the reply's frames quote it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct QuoteRef<'a> {
    pub seq: u64,
    pub from: &'a str,
    /// Its first 100 characters (empty once it was deleted).
    pub text: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

/// How many reacted to a message with one reaction, as frames carry it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CountRef<'a> {
    pub reaction: &'a str,
    pub count: u32,
}

/// Who reacted how, as a `reactions` answer names them.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ReactorRef<'a> {
    pub reaction: &'a str,
    pub from: &'a str,
    pub sender: &'a str,
    /// The reaction's number in the room's order.
    pub at: u64,
}

/// A member as the protocol shows it: the connection's id, its display name, and its
/// public sender id (what a mention names), when known.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct MemberRef<'a> {
    pub id: u64,
    pub name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender: Option<&'a str>,
}

/// A user's read state in a room, as its `joined` and `read` frames carry it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ReadRef {
    pub seq: u64,
    pub unread: u64,
    pub mentions: u64,
    pub head: u64,
}

/// A member's read mark, as a `receipts` frame names it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ReaderRef<'a> {
    pub sender: &'a str,
    pub name: &'a str,
    pub seq: u64,
}

/// The joining member, as its own `joined` shows it: its member id, its name, and its
/// public sender id.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct You<'a> {
    pub id: u64,
    pub name: &'a str,
    pub sender: &'a str,
}

/// A frame sent by the server. Borrowed fields: encoding never clones the strings it writes.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    /// Answer to `join`: the room's epoch and head sequence number, the member list,
    /// whether messages after the client's `since` are missing (`gap`), and how many
    /// frames of history follow right after (`replay`): ordinary `message` frames, after a
    /// resume's `update` frames of the older messages that changed.
    Joined {
        room: &'a str,
        epoch: u64,
        seq: u64,
        you: You<'a>,
        /// An anonymous connection's secret resume key: only in its own `joined`.
        #[serde(skip_serializing_if = "Option::is_none")]
        key: Option<&'a str>,
        /// Everyone in a small room; the first page (by id) in a big one.
        members: &'a [MemberRef<'a>],
        /// How many members the room has, you included.
        count: usize,
        gap: bool,
        replay: usize,
        /// The joining member's own reactions on the messages replayed, by message.
        #[serde(skip_serializing_if = "Option::is_none")]
        mine: Option<&'a Mine>,
        /// The joining user's read state in the room (as a `read` frame has it), when the
        /// engine could read it.
        #[serde(skip_serializing_if = "Option::is_none")]
        read: Option<ReadRef>,
    },
    /// A room message, identical bytes for every recipient.
    Message {
        room: &'a str,
        seq: u64,
        from: &'a str,
        /// The sender's public id (none for the host's messages): a client marks as its own
        /// the messages with the `sender` of its `joined.you`.
        #[serde(skip_serializing_if = "Option::is_none")]
        sender: Option<&'a str>,
        /// The message it answers, quoted.
        #[serde(rename = "replyTo", skip_serializing_if = "Option::is_none")]
        reply_to: Option<QuoteRef<'a>>,
        text: &'a str,
        time: u64,
        /// When the text was last edited (ms since 1970), for a message edited before it
        /// was sent (a replay, a history page).
        #[serde(skip_serializing_if = "Option::is_none")]
        edited: Option<u64>,
        /// How many reacted with what, in the order the reactions were first added.
        #[serde(skip_serializing_if = "<[_]>::is_empty")]
        reactions: &'a [CountRef<'a>],
        /// The public sender ids of the members it mentions.
        #[serde(skip_serializing_if = "<[_]>::is_empty")]
        mentions: &'a [&'a str],
        /// The client's message id: in its sender's own copy only.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
    },
    /// Message `seq` changed: its new `text` and when it was `edited`, or that it was
    /// `deleted` (then it leaves history, and a client removes it from view). `at` is the
    /// change's own number in the room's order; a replay sends each changed message once,
    /// in its current state.
    Update {
        room: &'a str,
        seq: u64,
        at: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        text: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        edited: Option<u64>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        deleted: bool,
        /// Its reactions now (all of them), when they changed or in a replay.
        #[serde(skip_serializing_if = "Option::is_none")]
        reactions: Option<&'a [CountRef<'a>]>,
    },
    /// The sender's acknowledgement: the message is stored under `seq`.
    Ack {
        room: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        seq: u64,
        /// Of a reaction: the sender's own reactions on the message now.
        #[serde(skip_serializing_if = "Option::is_none")]
        mine: Option<&'a [String]>,
    },
    /// Answer to `reactions`: who reacted to message `seq`, in their order; `next` is the
    /// `after` of the next page (null at the end).
    Reactions {
        room: &'a str,
        seq: u64,
        reactors: &'a [ReactorRef<'a>],
        next: Option<u64>,
    },
    /// The connection's user's read state in `room`: read up to `seq`, with `unread`
    /// messages after it from others, not deleted (`mentions` of them mentioning it),
    /// counted up to message `head` (those after it are not in the counts). Sent in answer
    /// to `read`, and to all of the user's connections whenever its mark in a room moves
    /// (it may name a room this connection has not joined); `joined` carries it too.
    Read {
        room: &'a str,
        #[serde(flatten)]
        state: ReadRef,
    },
    /// In a small room, who read up to where since the last `receipts` (at most one per
    /// presence interval); a big room sends none.
    Receipts {
        room: &'a str,
        readers: &'a [ReaderRef<'a>],
    },
    /// Message `seq` of `room` mentions the connection's user: sent to each of its
    /// connections, whatever rooms they are in. `text` is the message's start.
    Mention {
        room: &'a str,
        seq: u64,
        from: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        sender: Option<&'a str>,
        text: &'a str,
    },
    /// Someone joined or left (a small room); `count` is the members after it.
    Presence {
        room: &'a str,
        event: PresenceEvent,
        member: MemberRef<'a>,
        count: usize,
    },
    /// Several members left at once (cut off as too slow together): one frame for all of
    /// them, so that a mass departure costs every other member one frame, not one each.
    /// With event `sync`: the whole list, sent to everyone when a big room becomes small.
    #[serde(rename = "presence")]
    PresenceMany {
        room: &'a str,
        event: PresenceEvent,
        members: &'a [MemberRef<'a>],
        count: usize,
    },
    /// A big room's comings and goings since its last update, at most once per presence
    /// interval: the count, and who joined and left — or only the count, when too many
    /// changed at once or the room's policy says so.
    #[serde(rename = "presence")]
    PresenceUpdate {
        room: &'a str,
        event: PresenceEvent,
        count: usize,
        #[serde(skip_serializing_if = "Option::is_none")]
        joined: Option<&'a [MemberRef<'a>]>,
        #[serde(skip_serializing_if = "Option::is_none")]
        left: Option<&'a [MemberRef<'a>]>,
    },
    /// Answer to `members`: a page of members in id order; `next` is the `after` of the
    /// next page (null at the end).
    Members {
        room: &'a str,
        count: usize,
        members: &'a [MemberRef<'a>],
        next: Option<u64>,
    },
    /// Someone is typing.
    Typing { room: &'a str, from: &'a str },
    /// Answer to `leave`; or, with a close code and its reason, the host removed this
    /// connection from the room (a kick or a ban), and it stays in its other rooms.
    Left {
        room: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        code: Option<u16>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
    },
    /// A frame was refused; the connection stays open.
    Error {
        code: ErrorCode,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        /// When to try again (`busy`), in milliseconds.
        #[serde(rename = "retryAfterMs", skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// The server is about to close the connection, and why. Sent on both transports
    /// because WebTransport close codes do not reach browsers reliably.
    Bye {
        code: u16,
        reason: &'a str,
        reconnect: bool,
        /// A human explanation, when there is more to say than `reason`.
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<&'a str>,
        /// How long to wait before reconnecting (`busy`), in milliseconds.
        #[serde(rename = "retryAfterMs", skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// Answer to `ping`.
    Pong {},
    /// Answer to `hello`: the protocol version spoken on this connection (the client's, or
    /// the server's newest when the client's is newer still).
    Hello { protocol: u32 },
}

/// Presence event kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceEvent {
    Join,
    Leave,
    /// A big room's periodic update.
    Update,
    /// The whole list, replacing what a client had.
    Sync,
}

/// Stable, machine-readable codes of `error` frames. The connection stays open after each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not JSON.
    InvalidJson,
    /// The frame is not UTF-8 (a WebTransport line, a posted SSE or long-polling line; on
    /// WebSocket this is fatal, see [`CloseCode`]).
    InvalidUtf8,
    /// The `type` is not one this server knows.
    UnknownType,
    /// A field is missing or has the wrong type.
    InvalidFrame,
    /// A binary WebSocket message; the protocol is text only.
    BinaryUnsupported,
    /// `send`, `typing` or `leave` for a room the connection has not joined.
    NotJoined,
    /// `join` for a room the connection is already in.
    AlreadyJoined,
    /// The display name is missing, empty, too long or has control characters.
    InvalidName,
    /// The room name is empty, too long or has characters outside `A-Za-z0-9_-.:@`.
    InvalidRoom,
    /// The message text is empty, or the client message id is too long.
    InvalidText,
    /// The message text is longer than the limit.
    TextTooLong,
    /// `edit` or `delete` of a message this room does not have (never sent, or too old).
    UnknownMessage,
    /// `edit` of a message that was deleted.
    MessageDeleted,
    /// `edit` or `delete` of someone else's message.
    NotYours,
    /// `edit` of a message older than the edit window (`edit_window`).
    EditWindowPassed,
    /// A `send` whose `replyTo` is no message of the room.
    UnknownReply,
    /// A `react` whose reaction is not one emoji, nor a name from the server's list.
    InvalidReaction,
    /// A `react` to a message that has as many distinct reactions as allowed, or that the
    /// member reacted to as many times as allowed.
    TooManyReactions,
    /// A `send` whose `mentions` are more than 20, repeat one, or name something that is
    /// not a public sender id.
    InvalidMentions,
    /// The connection is already in the maximum number of rooms.
    TooManyRooms,
    /// The server holds the maximum number of rooms and none is empty.
    ServerFull,
    /// The connection sent frames faster than its rate limit; this one was dropped.
    RateLimited,
    /// The connection's identity does not allow this room.
    RoomForbidden,
    /// The host's message hook rejected the message.
    Rejected,
    /// A WebTransport datagram larger than the frame limit (on a stream or a WebSocket,
    /// an oversized frame closes the connection instead: [`CloseCode::FrameTooLarge`]).
    FrameTooLarge,
    /// The message could not be stored (the disk is full, the database is read-only or
    /// broken): it was neither acknowledged nor delivered. Retrying later with the same
    /// `id` is safe. Also answers a `join` or `history` whose room could not be read.
    StorageFailed,
    /// The host banned this user from this room, or from the server, for a while.
    Banned,
    /// The client's `hello` names a protocol older than the server still speaks: the
    /// connection closes with 4400 (the client must be updated).
    UnsupportedProtocol,
    /// The server has no room for this connection now (its address's share of
    /// connections, or the server's, is used up): `retryAfterMs` says when to try again,
    /// and the connection closes with [`CloseCode::Busy`].
    Busy,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidUtf8 => "invalid_utf8",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::InvalidFrame => "invalid_frame",
            ErrorCode::BinaryUnsupported => "binary_unsupported",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::AlreadyJoined => "already_joined",
            ErrorCode::InvalidName => "invalid_name",
            ErrorCode::InvalidRoom => "invalid_room",
            ErrorCode::InvalidText => "invalid_text",
            ErrorCode::TextTooLong => "text_too_long",
            ErrorCode::UnknownMessage => "unknown_message",
            ErrorCode::MessageDeleted => "message_deleted",
            ErrorCode::NotYours => "not_yours",
            ErrorCode::EditWindowPassed => "edit_window_passed",
            ErrorCode::UnknownReply => "unknown_reply",
            ErrorCode::InvalidReaction => "invalid_reaction",
            ErrorCode::TooManyReactions => "too_many_reactions",
            ErrorCode::InvalidMentions => "invalid_mentions",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::ServerFull => "server_full",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::RoomForbidden => "room_forbidden",
            ErrorCode::Rejected => "rejected",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::StorageFailed => "storage_failed",
            ErrorCode::Banned => "banned",
            ErrorCode::UnsupportedProtocol => "unsupported_protocol",
            ErrorCode::Busy => "busy",
        }
    }
}

/// Why the server closes a connection. One table for both transports: the WebSocket close
/// code, the WebTransport session close code, and the `code` of the `bye` frame are the
/// same number. 4000-4399 mean "reconnect (with backoff) and resume"; 1000 and 4400-4999
/// mean "do not reconnect".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum CloseCode {
    /// The client closed, or the server closes an orderly conversation.
    Normal = 1000,
    /// The server is shutting down or restarting.
    Shutdown = 4000,
    /// The client did not read fast enough and its outbound queue filled up.
    TooSlow = 4001,
    /// The host asked the client to reconnect (to authenticate again, say).
    Reconnect = 4002,
    /// The client sent nothing (not even a ping) for longer than the idle timeout: it may
    /// have vanished. A live client reconnects and resumes.
    IdleTimeout = 4003,
    /// The server had no room for the connection (see [`ErrorCode::Busy`]): reconnect
    /// after the `bye`'s `retryAfterMs`.
    Busy = 4004,
    /// The client broke the transport's framing (e.g. invalid UTF-8 in a WebSocket text
    /// message). Reconnecting would fail the same way.
    ProtocolError = 4400,
    /// Authentication failed (no token, a forged or expired one, refused by the host).
    Unauthorized = 4401,
    /// The host removed this client.
    Kicked = 4403,
    /// A frame was larger than `max_frame_bytes`.
    FrameTooLarge = 4409,
}

impl CloseCode {
    /// The numeric code.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// Whether a client should reconnect after this close.
    pub fn reconnect(self) -> bool {
        (4000..4400).contains(&self.code())
    }

    /// Short stable name, used as the close reason.
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::Shutdown => "shutdown",
            CloseCode::TooSlow => "too_slow",
            CloseCode::Reconnect => "reconnect",
            CloseCode::IdleTimeout => "idle_timeout",
            CloseCode::Busy => "busy",
            CloseCode::ProtocolError => "protocol_error",
            CloseCode::Unauthorized => "unauthorized",
            CloseCode::Kicked => "kicked",
            CloseCode::FrameTooLarge => "frame_too_large",
        }
    }
}

/// Limits every frame and connection is checked against. Defaults suit a chat on one
/// machine; every one is configuration.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest client frame in bytes. Bounds what one read can make the server buffer.
    pub max_frame_bytes: usize,
    /// Longest message text in characters.
    pub max_text_chars: usize,
    /// Longest display name in characters.
    pub max_name_chars: usize,
    /// Longest room name in characters.
    pub max_room_chars: usize,
    /// Longest client message id in bytes (ids are kept for idempotency).
    pub max_id_bytes: usize,
    /// Rooms one connection may be in at once.
    pub max_rooms_per_connection: usize,
    /// Frames per second a connection may send, sustained.
    pub frames_per_second: u32,
    /// Frames a connection may send in a burst above the sustained rate.
    pub frame_burst: u32,
    /// Rooms one connection may create per minute (joining a room that does not exist
    /// yet), sustained, with this many at once: each room holds memory of its own.
    pub new_rooms_per_minute: u32,
    /// How long after sending a message its sender may still edit it (zero: never).
    pub edit_window: std::time::Duration,
    /// Distinct reactions one message may carry.
    pub reactions_per_message: usize,
    /// Reactions one member may add to one message.
    pub reactions_per_member: usize,
    /// The names a reaction may be besides one emoji (the host's own set, each at most
    /// [`MAX_REACTION_NAME`] characters); empty: emojis only.
    pub reaction_names: Vec<String>,
}

/// The longest reaction name a host may list.
pub const MAX_REACTION_NAME: usize = 32;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: 16 * 1024,
            max_text_chars: 4000,
            max_name_chars: 32,
            max_room_chars: 64,
            max_id_bytes: 64,
            max_rooms_per_connection: 16,
            frames_per_second: 20,
            frame_burst: 40,
            new_rooms_per_minute: 30,
            edit_window: std::time::Duration::from_secs(15 * 60),
            reactions_per_message: 20,
            reactions_per_member: 3,
            reaction_names: Vec::new(),
        }
    }
}

impl Limits {
    /// Checks a display name: 1..=max_name_chars characters, not blank, no control chars.
    pub fn check_name(&self, name: &str) -> Result<(), (ErrorCode, &'static str)> {
        let chars = name.chars().count();
        if name.trim().is_empty() || chars > self.max_name_chars {
            return Err((
                ErrorCode::InvalidName,
                "name must be 1 to max_name_chars characters",
            ));
        }
        if name.chars().any(char::is_control) {
            return Err((
                ErrorCode::InvalidName,
                "name must not contain control characters",
            ));
        }
        Ok(())
    }

    /// Checks a reaction: one emoji (skin tones and other sequences of one emoji
    /// included), or one of the host's [`reaction_names`](Self::reaction_names).
    pub fn check_reaction(&self, reaction: &str) -> Result<(), (ErrorCode, &'static str)> {
        if emojis::get(reaction).is_some() || self.reaction_names.iter().any(|n| n == reaction) {
            return Ok(());
        }
        Err((
            ErrorCode::InvalidReaction,
            "a reaction is one emoji, or a name from the server's list",
        ))
    }

    /// Checks a message's mentions: at most [`MAX_MENTIONS`], distinct, each of the shape of
    /// a public sender id (16 characters of `A-Za-z0-9_-`).
    pub fn check_mentions(&self, mentions: &[String]) -> Result<(), (ErrorCode, &'static str)> {
        let id_like = |id: &String| {
            id.len() == 16
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        let distinct = mentions
            .iter()
            .enumerate()
            .all(|(i, id)| !mentions[..i].contains(id));
        if mentions.len() > MAX_MENTIONS || !distinct || !mentions.iter().all(id_like) {
            return Err((
                ErrorCode::InvalidMentions,
                "mentions are up to 20 distinct public sender ids (a member's `sender`)",
            ));
        }
        Ok(())
    }

    /// Checks a room name: 1..=max_room_chars of `A-Za-z0-9_-.:@`.
    pub fn check_room(&self, room: &str) -> Result<(), (ErrorCode, &'static str)> {
        let ok_char = |c: char| c.is_ascii_alphanumeric() || "_-.:@".contains(c);
        if room.is_empty() || room.len() > self.max_room_chars || !room.chars().all(ok_char) {
            return Err((
                ErrorCode::InvalidRoom,
                "room must be 1 to max_room_chars characters of A-Z a-z 0-9 _ - . : @",
            ));
        }
        Ok(())
    }

    /// Checks a message: non-blank text of at most max_text_chars, id of at most max_id_bytes.
    pub fn check_message(
        &self,
        text: &str,
        id: Option<&str>,
    ) -> Result<(), (ErrorCode, &'static str)> {
        if text.trim().is_empty() {
            return Err((ErrorCode::InvalidText, "text must not be empty"));
        }
        // Byte length bounds the char count from above: skip counting for short texts.
        if text.len() > self.max_text_chars && text.chars().count() > self.max_text_chars {
            return Err((ErrorCode::TextTooLong, "text is longer than max_text_chars"));
        }
        self.check_id(id)
    }

    /// Checks a client message id: 1 to max_id_bytes bytes.
    pub fn check_id(&self, id: Option<&str>) -> Result<(), (ErrorCode, &'static str)> {
        if id.is_some_and(|id| id.is_empty() || id.len() > self.max_id_bytes) {
            return Err((ErrorCode::InvalidText, "id must be 1 to max_id_bytes bytes"));
        }
        Ok(())
    }
}

/// Why a frame could not be decoded: the error code and a human explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub code: ErrorCode,
    pub message: String,
}

/// Decodes one client frame (without its `\n`).
pub fn decode(frame: &[u8]) -> Result<ClientFrame, DecodeError> {
    if std::str::from_utf8(frame).is_err() {
        return Err(DecodeError {
            code: ErrorCode::InvalidUtf8,
            message: "frame is not valid UTF-8".into(),
        });
    }
    // serde reads a tagged enum from an array too (`["send","r","hi"]`); a frame is an
    // object. Anything else that is JSON at all is a frame of the wrong shape.
    if frame.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(frame) {
                Ok(_) => DecodeError {
                    code: ErrorCode::InvalidFrame,
                    message: "a frame is a JSON object with a \"type\"".into(),
                },
                Err(e) => DecodeError {
                    code: ErrorCode::InvalidJson,
                    message: e.to_string(),
                },
            },
        );
    }
    serde_json::from_slice(frame).map_err(|e| {
        use serde_json::error::Category;
        let message = e.to_string();
        let code = match e.classify() {
            // Valid JSON whose number does not fit the field (`"since": 1e400`).
            Category::Syntax if message.starts_with("number out of range") => {
                ErrorCode::InvalidFrame
            }
            Category::Syntax | Category::Eof | Category::Io => ErrorCode::InvalidJson,
            Category::Data if message.starts_with("unknown variant") => ErrorCode::UnknownType,
            Category::Data => ErrorCode::InvalidFrame,
        };
        DecodeError { code, message }
    })
}

/// Encodes one server frame, `\n`-terminated, into shareable bytes.
pub fn encode(frame: &ServerFrame<'_>) -> Bytes {
    let mut out = Vec::with_capacity(128);
    // Serializing these types cannot fail: no maps with non-string keys, no failing impls.
    serde_json::to_writer(&mut out, frame).expect("server frames always serialize");
    out.push(b'\n');
    Bytes::from(out)
}

/// Encodes a `history` page: `{"type":"history","room":…,"more":…,"messages":[…]}`, where
/// each message is a `message` frame as [`encode`] made it (trailing `\n` and all), so
/// stored frames are copied, not decoded and encoded again.
pub fn encode_history(room: &str, messages: &[Bytes], more: bool, mine: &Mine) -> Bytes {
    let body: usize = messages.iter().map(Bytes::len).sum();
    let mut out = Vec::with_capacity(64 + room.len() + body);
    out.extend_from_slice(b"{\"type\":\"history\",\"room\":");
    serde_json::to_writer(&mut out, room).expect("a string always serializes");
    out.extend_from_slice(if more {
        b",\"more\":true,\"messages\":["
    } else {
        b",\"more\":false,\"messages\":["
    });
    for (i, message) in messages.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(message.strip_suffix(b"\n").unwrap_or(message));
    }
    out.push(b']');
    if !mine.is_empty() {
        out.extend_from_slice(b",\"mine\":");
        serde_json::to_writer(&mut out, mine).expect("a map of strings always serializes");
    }
    out.extend_from_slice(b"}\n");
    Bytes::from(out)
}

/// Encodes an `error` frame.
pub fn error_frame(code: ErrorCode, message: &str, room: Option<&str>, id: Option<&str>) -> Bytes {
    encode(&ServerFrame::Error {
        code,
        message,
        room,
        id,
        retry_after_ms: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    fn parsed(bytes: &Bytes) -> Value {
        assert_eq!(bytes.last(), Some(&b'\n'), "frames end with a newline");
        serde_json::from_slice(&bytes[..bytes.len() - 1]).unwrap()
    }

    #[test]
    fn decodes_every_client_frame() {
        assert_eq!(
            decode(br#"{"type":"join","room":"lobby","name":"ann","since":4,"epoch":9,"key":"k"}"#),
            Ok(ClientFrame::Join {
                room: "lobby".into(),
                name: Some("ann".into()),
                since: Some(4),
                epoch: Some(9),
                key: Some("k".into()),
            })
        );
        assert_eq!(
            decode(br#"{"type":"join","room":"lobby","name":"ann"}"#),
            Ok(ClientFrame::Join {
                room: "lobby".into(),
                name: Some("ann".into()),
                since: None,
                epoch: None,
                key: None,
            })
        );
        assert_eq!(
            decode(br#"{"type":"send","room":"r","text":"hi \u00e9","id":"c-1"}"#),
            Ok(ClientFrame::Send {
                room: "r".into(),
                text: "hi é".into(),
                id: Some("c-1".into()),
                reply_to: None,
                mentions: vec![],
            })
        );
        assert_eq!(
            decode(br#"{"type":"edit","room":"r","seq":7,"text":"fixed"}"#),
            Ok(ClientFrame::Edit {
                room: "r".into(),
                seq: 7,
                text: "fixed".into(),
                id: None,
            })
        );
        assert_eq!(
            decode(br#"{"type":"send","room":"r","text":"re","replyTo":7}"#),
            Ok(ClientFrame::Send {
                room: "r".into(),
                text: "re".into(),
                id: None,
                reply_to: Some(7),
                mentions: vec![],
            })
        );
        assert_eq!(
            decode(br#"{"type":"leave","room":"r"}"#),
            Ok(ClientFrame::Leave { room: "r".into() })
        );
        assert_eq!(
            decode(br#"{"type":"typing","room":"r"}"#),
            Ok(ClientFrame::Typing { room: "r".into() })
        );
        assert_eq!(decode(br#"{"type":"ping"}"#), Ok(ClientFrame::Ping {}));
    }

    #[test]
    fn unknown_fields_are_ignored_for_forward_compatibility() {
        assert_eq!(
            decode(br#"{"type":"leave","room":"r","future":true}"#),
            Ok(ClientFrame::Leave { room: "r".into() })
        );
    }

    #[test]
    fn classifies_bad_frames() {
        let code = |b: &[u8]| decode(b).unwrap_err().code;
        assert_eq!(code(b"{not json"), ErrorCode::InvalidJson);
        assert_eq!(code(b""), ErrorCode::InvalidJson);
        assert_eq!(
            code(br#"{"type":"shout","room":"r"}"#),
            ErrorCode::UnknownType
        );
        assert_eq!(
            code(br#"{"type":"send","room":"r"}"#),
            ErrorCode::InvalidFrame
        );
        assert_eq!(code(br#"{"room":"r"}"#), ErrorCode::InvalidFrame);
        assert_eq!(
            code(br#"{"type":"send","room":5,"text":"x"}"#),
            ErrorCode::InvalidFrame
        );
        assert_eq!(code(b"42"), ErrorCode::InvalidFrame);
        assert_eq!(
            code(br#"["send","r","hi","id1"]"#),
            ErrorCode::InvalidFrame,
            "an array is not a frame, even one serde could read"
        );
        assert_eq!(code(br#" "ping" "#), ErrorCode::InvalidFrame);
        assert_eq!(code(b"[1,"), ErrorCode::InvalidJson);
        assert_eq!(
            code(br#"{"type":"join","room":"r","since":1e400}"#),
            ErrorCode::InvalidFrame
        );
        assert_eq!(
            code(br#"{"type":"join","room":"r","since":-1}"#),
            ErrorCode::InvalidFrame
        );
        assert_eq!(code(b"{\"type\":\"ping\xff\"}"), ErrorCode::InvalidUtf8);
        let missing = decode(br#"{"type":"send","room":"r"}"#).unwrap_err();
        assert!(missing.message.contains("text"), "{}", missing.message);
    }

    #[test]
    fn each_frame_goes_on_its_rooms_stream_or_the_sessions() {
        let message = encode(&ServerFrame::Typing {
            room: "lobby.1:a@b",
            from: "ann",
        });
        assert_eq!(room_stream_of(&message), Some("lobby.1:a@b"));
        let history = encode_history("r", &[], false, &Mine::new());
        assert_eq!(room_stream_of(&history), Some("r"));
        let about = error_frame(
            ErrorCode::TextTooLong,
            "a \"room\":\"x\" text",
            Some("r"),
            None,
        );
        assert_eq!(room_stream_of(&about), Some("r"));
        let general = error_frame(ErrorCode::InvalidJson, "bad", None, None);
        assert_eq!(room_stream_of(&general), None);
        for own in [
            encode(&ServerFrame::Pong {}),
            encode(&ServerFrame::Hello { protocol: 4 }),
            encode(&ServerFrame::Mention {
                room: "r",
                seq: 1,
                from: "ann",
                sender: None,
                text: "hi",
            }),
        ] {
            assert_eq!(room_stream_of(&own), None, "{own:?}");
        }
        assert_eq!(
            hello_answer(&encode(&ServerFrame::Hello { protocol: 4 })),
            Some(4)
        );
        assert_eq!(hello_answer(&encode(&ServerFrame::Pong {})), None);
    }

    #[test]
    fn encodes_message_frames_with_every_field() {
        let bytes = encode(&ServerFrame::Message {
            room: "lobby",
            seq: 7,
            from: "ann",
            sender: Some("s3nd3r"),
            reply_to: None,
            text: "<b>hi</b> \"quoted\"\n",
            time: 1_700_000_000_000,
            edited: None,
            id: Some("c-1"),
            reactions: &[],
            mentions: &[],
        });
        assert_eq!(
            parsed(&bytes),
            json!({"type":"message","room":"lobby","seq":7,"from":"ann","sender":"s3nd3r",
                   "text":"<b>hi</b> \"quoted\"\n","time":1_700_000_000_000u64,"id":"c-1"})
        );
        // Exactly one newline: the terminator. Newlines inside text are escaped.
        assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 1);
    }

    #[test]
    fn encodes_control_frames() {
        let members = [
            MemberRef {
                id: 1,
                name: "ann",
                sender: None,
            },
            MemberRef {
                id: 2,
                name: "bob",
                sender: None,
            },
        ];
        let joined = encode(&ServerFrame::Joined {
            room: "r",
            epoch: 3,
            seq: 10,
            you: You {
                id: 2,
                name: "bob",
                sender: "pub",
            },
            key: Some("secret"),
            members: &members,
            count: 2,
            gap: false,
            replay: 0,
            mine: None,
            read: None,
        });
        assert_eq!(
            parsed(&joined),
            json!({"type":"joined","room":"r","epoch":3,"seq":10,
                   "you":{"id":2,"name":"bob","sender":"pub"},"key":"secret",
                   "members":[{"id":1,"name":"ann"},{"id":2,"name":"bob"}],"count":2,
                   "gap":false,"replay":0})
        );
        let err = error_frame(ErrorCode::NotJoined, "join first", Some("r"), None);
        assert_eq!(
            parsed(&err),
            json!({"type":"error","code":"not_joined","message":"join first","room":"r"})
        );
        let bye = encode(&ServerFrame::Bye {
            code: CloseCode::TooSlow.code(),
            reason: CloseCode::TooSlow.reason(),
            reconnect: CloseCode::TooSlow.reconnect(),
            message: None,
            retry_after_ms: None,
        });
        assert_eq!(
            parsed(&bye),
            json!({"type":"bye","code":4001,"reason":"too_slow","reconnect":true})
        );
        let presence = encode(&ServerFrame::Presence {
            room: "r",
            event: PresenceEvent::Leave,
            member: members[0],
            count: 1,
        });
        assert_eq!(
            parsed(&presence),
            json!({"type":"presence","room":"r","event":"leave","member":{"id":1,"name":"ann"},
                   "count":1})
        );
        let update = encode(&ServerFrame::PresenceUpdate {
            room: "r",
            event: PresenceEvent::Update,
            count: 5000,
            joined: Some(&members[1..]),
            left: Some(&[]),
        });
        assert_eq!(
            parsed(&update),
            json!({"type":"presence","room":"r","event":"update","count":5000,
                   "joined":[{"id":2,"name":"bob"}],"left":[]})
        );
        let counts_only = encode(&ServerFrame::PresenceUpdate {
            room: "r",
            event: PresenceEvent::Update,
            count: 5000,
            joined: None,
            left: None,
        });
        assert_eq!(
            parsed(&counts_only),
            json!({"type":"presence","room":"r","event":"update","count":5000})
        );
        let page = encode(&ServerFrame::Members {
            room: "r",
            count: 5000,
            members: &members,
            next: Some(2),
        });
        assert_eq!(
            parsed(&page),
            json!({"type":"members","room":"r","count":5000,
                   "members":[{"id":1,"name":"ann"},{"id":2,"name":"bob"}],"next":2})
        );
        assert_eq!(
            parsed(&encode(&ServerFrame::Pong {})),
            json!({"type":"pong"})
        );
    }

    const ERROR_CODES: [ErrorCode; 20] = [
        ErrorCode::InvalidJson,
        ErrorCode::InvalidUtf8,
        ErrorCode::UnknownType,
        ErrorCode::InvalidFrame,
        ErrorCode::BinaryUnsupported,
        ErrorCode::NotJoined,
        ErrorCode::AlreadyJoined,
        ErrorCode::InvalidName,
        ErrorCode::InvalidRoom,
        ErrorCode::InvalidText,
        ErrorCode::TextTooLong,
        ErrorCode::TooManyRooms,
        ErrorCode::ServerFull,
        ErrorCode::RateLimited,
        ErrorCode::RoomForbidden,
        ErrorCode::Rejected,
        ErrorCode::FrameTooLarge,
        ErrorCode::StorageFailed,
        ErrorCode::Banned,
        ErrorCode::UnsupportedProtocol,
    ];

    #[test]
    fn error_code_names_match_serde() {
        for code in ERROR_CODES {
            assert_eq!(serde_json::to_value(code).unwrap(), json!(code.as_str()));
        }
    }

    #[test]
    fn close_codes_say_whether_to_reconnect() {
        assert!(CloseCode::Shutdown.reconnect());
        assert!(CloseCode::TooSlow.reconnect());
        assert!(CloseCode::Reconnect.reconnect());
        assert!(CloseCode::IdleTimeout.reconnect());
        assert!(!CloseCode::Normal.reconnect());
        assert!(!CloseCode::ProtocolError.reconnect());
        assert!(!CloseCode::FrameTooLarge.reconnect());
        assert!(!CloseCode::Unauthorized.reconnect());
        assert!(!CloseCode::Kicked.reconnect());
    }

    #[test]
    fn limits_check_names_rooms_and_texts() {
        let l = Limits::default();
        assert!(l.check_name("Ann").is_ok());
        assert!(l.check_name("Zoë 🚀").is_ok());
        assert_eq!(l.check_name("  ").unwrap_err().0, ErrorCode::InvalidName);
        assert_eq!(
            l.check_name("a\u{7}b").unwrap_err().0,
            ErrorCode::InvalidName
        );
        assert_eq!(
            l.check_name(&"x".repeat(33)).unwrap_err().0,
            ErrorCode::InvalidName
        );
        assert!(
            l.check_name(&"é".repeat(32)).is_ok(),
            "limit counts characters"
        );
        assert!(l.check_room("lobby-1:dev@team.x").is_ok());
        assert_eq!(l.check_room("").unwrap_err().0, ErrorCode::InvalidRoom);
        assert_eq!(l.check_room("a b").unwrap_err().0, ErrorCode::InvalidRoom);
        assert_eq!(
            l.check_room(&"r".repeat(65)).unwrap_err().0,
            ErrorCode::InvalidRoom
        );
        assert!(l.check_message("hi", Some("id")).is_ok());
        assert_eq!(
            l.check_message(" \n", None).unwrap_err().0,
            ErrorCode::InvalidText
        );
        assert_eq!(
            l.check_message(&"x".repeat(4001), None).unwrap_err().0,
            ErrorCode::TextTooLong
        );
        assert!(l.check_message(&"é".repeat(4000), None).is_ok());
        assert_eq!(
            l.check_message("hi", Some(&"i".repeat(65))).unwrap_err().0,
            ErrorCode::InvalidText
        );
    }

    /// The codes `decode` may refuse a frame with (README, "Error codes"): the others are
    /// the session's.
    const DECODE_CODES: [ErrorCode; 4] = [
        ErrorCode::InvalidJson,
        ErrorCode::InvalidUtf8,
        ErrorCode::UnknownType,
        ErrorCode::InvalidFrame,
    ];

    /// serde_json refuses to nest arrays and objects this deep (its recursion limit).
    const TOO_DEEP: usize = 128;

    /// A JSON value, written out by hand so that it can hold what `serde_json::Value`
    /// cannot: numbers beyond `f64` and nesting beyond serde_json's recursion limit.
    #[derive(Debug, Clone)]
    enum Json {
        Null,
        Bool(bool),
        /// As written: `1e400`, `-0`, `18446744073709551616`…
        Number(String),
        String(String),
        Array(Vec<Json>),
        /// Keys are distinct: serde refuses duplicate fields, `Value` keeps the last.
        Object(Vec<(String, Json)>),
        /// This many arrays, one inside the other.
        Nested(usize),
    }

    impl Json {
        fn write(&self, out: &mut String) {
            let string = |s: &str| serde_json::to_string(s).unwrap();
            match self {
                Json::Null => out.push_str("null"),
                Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
                Json::Number(n) => out.push_str(n),
                Json::String(s) => out.push_str(&string(s)),
                Json::Array(items) => {
                    out.push('[');
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        item.write(out);
                    }
                    out.push(']');
                }
                Json::Object(fields) => {
                    out.push('{');
                    for (i, (key, value)) in fields.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        out.push_str(&string(key));
                        out.push(':');
                        value.write(out);
                    }
                    out.push('}');
                }
                Json::Nested(depth) => {
                    out.push_str(&"[".repeat(*depth));
                    out.push_str(&"]".repeat(*depth));
                }
            }
        }

        /// How many arrays and objects nest here.
        fn depth(&self) -> usize {
            match self {
                Json::Array(items) => 1 + items.iter().map(Json::depth).max().unwrap_or(0),
                Json::Object(fields) => {
                    1 + fields.iter().map(|(_, v)| v.depth()).max().unwrap_or(0)
                }
                Json::Nested(depth) => *depth,
                _ => 0,
            }
        }

        /// Whether a number here is beyond `f64` (serde_json refuses it).
        fn out_of_range(&self) -> bool {
            match self {
                Json::Number(n) => n.parse::<f64>().is_ok_and(f64::is_infinite),
                Json::Array(items) => items.iter().any(Json::out_of_range),
                Json::Object(fields) => fields.iter().any(|(_, v)| v.out_of_range()),
                _ => false,
            }
        }
    }

    fn numbers() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<u64>().prop_map(|n| n.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            // Finite ones: JSON has no NaN or infinity. (Not a filter: a run of millions
            // of cases would exceed proptest's limit on rejected values.)
            {
                use prop::num::f64::{NEGATIVE, NORMAL, POSITIVE, SUBNORMAL, ZERO};
                (POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO).prop_map(|f| format!("{f:?}"))
            },
            prop::sample::select(vec![
                "0",
                "-0",
                "0.0",
                "1E2",
                "1e-400",
                "1e400",
                "-1e400",
                "18446744073709551615",
                "18446744073709551616",
                "-9223372036854775809",
                "123456789012345678901234567890",
            ])
            .prop_map(String::from),
        ]
    }

    /// Strings a frame might hold: the protocol's names, and anything at all.
    fn strings() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "", " ", "lobby", "ann", "join", "leave", "send", "typing", "ping", "history",
                "members", "type", "before", "after", "limit",
            ])
            .prop_map(String::from),
            any::<String>(),
        ]
    }

    /// Any JSON value, nesting a few levels (and, now and then, far too many).
    fn values() -> impl Strategy<Value = Json> {
        let leaf = prop_oneof![
            2 => Just(Json::Null),
            2 => any::<bool>().prop_map(Json::Bool),
            3 => numbers().prop_map(Json::Number),
            3 => strings().prop_map(Json::String),
            1 => (1..TOO_DEEP * 2).prop_map(Json::Nested),
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Json::Array),
                prop::collection::vec((strings(), inner), 0..4).prop_map(object),
            ]
        })
    }

    /// An object of these fields, the first of each key kept.
    fn object(fields: Vec<(String, Json)>) -> Json {
        let mut seen = std::collections::HashSet::new();
        Json::Object(
            fields
                .into_iter()
                .filter(|(key, _)| seen.insert(key.clone()))
                .collect(),
        )
    }

    /// Client frames, mostly near valid: a `type` among the known ones (or not, or not a
    /// string, or none), each field of the right type or of any other, unknown fields, in
    /// any order; now and then the same as an array (which serde alone would take for a
    /// frame), or not an object at all.
    fn frames() -> impl Strategy<Value = Json> {
        let known = prop::sample::select(vec![
            "join", "leave", "send", "typing", "ping", "history", "members",
        ]);
        let kind = prop_oneof![
            6 => known.prop_map(|t| Json::String(t.into())),
            1 => strings().prop_map(Json::String),
            1 => values(),
        ];
        let string = || prop_oneof![3 => strings().prop_map(Json::String), 1 => values()];
        let number = || {
            prop_oneof![
                3 => any::<u64>().prop_map(|n| Json::Number(n.to_string())),
                1 => values(),
            ]
        };
        let field = |value: BoxedStrategy<Json>| prop::option::weighted(0.7, value);
        let fields = (
            field(kind.boxed()),
            field(string().boxed()),
            field(string().boxed()),
            field(string().boxed()),
            field(string().boxed()),
            field(number().boxed()),
            field(number().boxed()),
            prop::collection::vec((strings(), values()), 0..3),
        )
            .boxed();
        let object = fields
            .clone()
            .prop_map(|(t, room, name, text, id, since, epoch, unknown)| {
                let names = ["type", "room", "name", "text", "id", "since", "epoch"];
                let known = [t, room, name, text, id, since, epoch];
                let known = names
                    .into_iter()
                    .zip(known)
                    .filter_map(|(name, value)| Some((name.to_string(), value?)));
                known.chain(unknown).collect::<Vec<_>>()
            })
            .prop_shuffle()
            .prop_map(object);
        // The tag, then the type's fields in order: what serde reads from an array.
        let array = fields.prop_map(|(t, room, name, text, id, since, epoch, _)| {
            let t = t.unwrap_or(Json::Null);
            let mut items = vec![t.clone()];
            let mut add = |fields: Vec<Option<Json>>| {
                items.extend(fields.into_iter().map(|f| f.unwrap_or(Json::Null)));
            };
            match t {
                Json::String(t) if t == "join" => add(vec![room, name, since, epoch]),
                Json::String(t) if t == "send" => add(vec![room, text, id]),
                Json::String(t) if t == "ping" => {}
                _ => add(vec![room]),
            }
            Json::Array(items)
        });
        prop_oneof![8 => object, 1 => array, 1 => values()]
    }

    /// What `decode` must make of `json`: a frame, or the codes it may refuse it with —
    /// several when the frame has several faults, as serde stops at the first it meets,
    /// which depends on the order of the fields.
    fn model(json: &Json) -> Result<ClientFrame, Vec<ErrorCode>> {
        let mut faults = Vec::new();
        if json.depth() >= TOO_DEEP {
            faults.push(ErrorCode::InvalidJson);
        }
        if json.out_of_range() {
            faults.push(ErrorCode::InvalidFrame);
        }
        let Json::Object(fields) = json else {
            faults.push(ErrorCode::InvalidFrame);
            return Err(faults);
        };
        let get = |key: &str| fields.iter().find(|(k, _)| k == key).map(|(_, v)| v);
        let string = |key| match get(key) {
            Some(Json::String(s)) => Ok(s.clone()),
            _ => Err(ErrorCode::InvalidFrame),
        };
        let optional = |key| match get(key) {
            None | Some(Json::Null) => Ok(None),
            _ => string(key).map(Some),
        };
        let number = |key| match get(key) {
            None | Some(Json::Null) => Ok(None),
            Some(Json::Number(n)) => n
                .parse::<u64>()
                .map(Some)
                .map_err(|_| ErrorCode::InvalidFrame),
            _ => Err(ErrorCode::InvalidFrame),
        };
        let small = |key| {
            number(key)?
                .map(u32::try_from)
                .transpose()
                .map_err(|_| ErrorCode::InvalidFrame)
        };
        let frame = match get("type") {
            Some(Json::String(t)) => match t.as_str() {
                "join" => (|| {
                    Ok(ClientFrame::Join {
                        room: string("room")?,
                        name: optional("name")?,
                        since: number("since")?,
                        epoch: number("epoch")?,
                        key: optional("key")?,
                    })
                })(),
                "leave" => string("room").map(|room| ClientFrame::Leave { room }),
                "send" => (|| {
                    Ok(ClientFrame::Send {
                        room: string("room")?,
                        text: string("text")?,
                        id: optional("id")?,
                        reply_to: number("replyTo")?,
                        mentions: match get("mentions") {
                            None => Vec::new(),
                            Some(Json::Array(items)) => items
                                .iter()
                                .map(|item| match item {
                                    Json::String(s) => Ok(s.clone()),
                                    _ => Err(ErrorCode::InvalidFrame),
                                })
                                .collect::<Result<_, _>>()?,
                            Some(_) => return Err(ErrorCode::InvalidFrame),
                        },
                    })
                })(),
                "read" => (|| {
                    Ok(ClientFrame::Read {
                        room: string("room")?,
                        seq: number("seq")?.ok_or(ErrorCode::InvalidFrame)?,
                    })
                })(),
                "edit" => (|| {
                    Ok(ClientFrame::Edit {
                        room: string("room")?,
                        seq: number("seq")?.ok_or(ErrorCode::InvalidFrame)?,
                        text: string("text")?,
                        id: optional("id")?,
                    })
                })(),
                "delete" => (|| {
                    Ok(ClientFrame::Delete {
                        room: string("room")?,
                        seq: number("seq")?.ok_or(ErrorCode::InvalidFrame)?,
                        id: optional("id")?,
                    })
                })(),
                "react" | "unreact" => (|| {
                    let (room, seq) = (string("room")?, number("seq")?);
                    let seq = seq.ok_or(ErrorCode::InvalidFrame)?;
                    let (reaction, id) = (string("reaction")?, optional("id")?);
                    Ok(if t == "react" {
                        ClientFrame::React {
                            room,
                            seq,
                            reaction,
                            id,
                        }
                    } else {
                        ClientFrame::Unreact {
                            room,
                            seq,
                            reaction,
                            id,
                        }
                    })
                })(),
                "reactions" => (|| {
                    Ok(ClientFrame::Reactions {
                        room: string("room")?,
                        seq: number("seq")?.ok_or(ErrorCode::InvalidFrame)?,
                        after: number("after")?,
                        limit: small("limit")?,
                    })
                })(),
                "typing" => string("room").map(|room| ClientFrame::Typing { room }),
                "ping" => Ok(ClientFrame::Ping {}),
                "hello" => small("protocol").and_then(|protocol| {
                    let protocol = protocol.ok_or(ErrorCode::InvalidFrame)?;
                    Ok(ClientFrame::Hello { protocol })
                }),
                "history" => (|| {
                    Ok(ClientFrame::History {
                        room: string("room")?,
                        before: number("before")?,
                        limit: small("limit")?,
                    })
                })(),
                "members" => (|| {
                    Ok(ClientFrame::Members {
                        room: string("room")?,
                        after: number("after")?,
                        limit: small("limit")?,
                    })
                })(),
                _ => Err(ErrorCode::UnknownType),
            },
            // Missing, or not a string.
            _ => Err(ErrorCode::InvalidFrame),
        };
        match frame {
            Ok(frame) if faults.is_empty() => Ok(frame),
            Ok(_) => Err(faults),
            Err(code) => {
                faults.push(code);
                Err(faults)
            }
        }
    }

    /// The `type` a decoded frame came with.
    fn type_name(frame: &ClientFrame) -> &'static str {
        match frame {
            ClientFrame::Join { .. } => "join",
            ClientFrame::Leave { .. } => "leave",
            ClientFrame::Send { .. } => "send",
            ClientFrame::Read { .. } => "read",
            ClientFrame::Edit { .. } => "edit",
            ClientFrame::Delete { .. } => "delete",
            ClientFrame::React { .. } => "react",
            ClientFrame::Unreact { .. } => "unreact",
            ClientFrame::Reactions { .. } => "reactions",
            ClientFrame::Typing { .. } => "typing",
            ClientFrame::Ping {} => "ping",
            ClientFrame::Hello { .. } => "hello",
            ClientFrame::History { .. } => "history",
            ClientFrame::Members { .. } => "members",
        }
    }

    /// Bytes to decode: anything; JSON-ish text; near-valid frames with a few bytes
    /// flipped, dropped, inserted or cut off.
    fn any_bytes() -> impl Strategy<Value = Vec<u8>> {
        let mangled = (
            frames(),
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..4u8), 0..4),
        )
            .prop_map(|(frame, edits)| {
                let mut text = String::new();
                frame.write(&mut text);
                let mut bytes = text.into_bytes();
                for (at, byte, edit) in edits {
                    let i = at.index(bytes.len() + 1);
                    match edit {
                        0 if i < bytes.len() => bytes[i] = byte,
                        1 if i < bytes.len() => drop(bytes.remove(i)),
                        2 => bytes.insert(i, byte),
                        _ => bytes.truncate(i),
                    }
                }
                bytes
            });
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..256),
            "[\\[\\]{}\":, \t0-9a-z.eE+\\\\-]{0,64}".prop_map(String::into_bytes),
            mangled,
        ]
    }

    /// Server frames with arbitrary strings and numbers, and the JSON each must encode to.
    fn server_frames() -> impl Strategy<Value = (Bytes, Value)> {
        let s = any::<String>;
        let member = || (any::<u64>(), s());
        prop_oneof![
            (
                s(),
                any::<u64>(),
                any::<u64>(),
                (member(), s(), prop::option::of(s())),
                prop::collection::vec(member(), 0..4),
                any::<bool>(),
                any::<usize>()
            )
                .prop_map(
                    |(room, epoch, seq, (you, sender, key), members, gap, replay)| {
                        let refs: Vec<MemberRef> = members
                            .iter()
                            .map(|(id, name)| MemberRef {
                                id: *id,
                                name,
                                sender: None,
                            })
                            .collect();
                        let frame = encode(&ServerFrame::Joined {
                            room: &room,
                            epoch,
                            seq,
                            you: You {
                                id: you.0,
                                name: &you.1,
                                sender: &sender,
                            },
                            key: key.as_deref(),
                            members: &refs,
                            count: refs.len(),
                            gap,
                            replay,
                            mine: None,
                            read: None,
                        });
                        let members: Vec<Value> = members
                            .iter()
                            .map(|(id, name)| json!({"id": id, "name": name}))
                            .collect();
                        let mut want = json!({"type": "joined", "room": room, "epoch": epoch,
                                          "seq": seq,
                                          "you": {"id": you.0, "name": you.1, "sender": sender},
                                          "members": members, "count": members.len(),
                                          "gap": gap, "replay": replay});
                        if let Some(key) = key {
                            want["key"] = json!(key);
                        }
                        (frame, want)
                    }
                ),
            (
                s(),
                any::<u64>(),
                s(),
                s(),
                any::<u64>(),
                (prop::option::of(s()), prop::option::of(s()))
            )
                .prop_map(|(room, seq, from, text, time, (sender, id))| {
                    let frame = encode(&ServerFrame::Message {
                        room: &room,
                        seq,
                        from: &from,
                        sender: sender.as_deref(),
                        reply_to: None,
                        text: &text,
                        time,
                        edited: None,
                        id: id.as_deref(),
                        reactions: &[],
                        mentions: &[],
                    });
                    let mut want = json!({"type": "message", "room": room, "seq": seq,
                                          "from": from, "text": text, "time": time});
                    if let Some(sender) = sender {
                        want["sender"] = json!(sender);
                    }
                    if let Some(id) = id {
                        want["id"] = json!(id);
                    }
                    (frame, want)
                }),
            (s(), prop::option::of(s()), any::<u64>()).prop_map(|(room, id, seq)| {
                let frame = encode(&ServerFrame::Ack {
                    room: &room,
                    id: id.as_deref(),
                    seq,
                    mine: None,
                });
                let mut want = json!({"type": "ack", "room": room, "seq": seq});
                if let Some(id) = id {
                    want["id"] = json!(id);
                }
                (frame, want)
            }),
            (s(), any::<bool>(), member()).prop_map(|(room, join, (id, name))| {
                let event = if join {
                    PresenceEvent::Join
                } else {
                    PresenceEvent::Leave
                };
                let frame = encode(&ServerFrame::Presence {
                    room: &room,
                    event,
                    member: MemberRef {
                        id,
                        name: &name,
                        sender: None,
                    },
                    count: id as usize,
                });
                (
                    frame,
                    json!({"type": "presence", "room": room,
                               "event": if join { "join" } else { "leave" },
                               "member": {"id": id, "name": name}, "count": id}),
                )
            }),
            (s(), s()).prop_map(|(room, from)| {
                let frame = encode(&ServerFrame::Typing {
                    room: &room,
                    from: &from,
                });
                (frame, json!({"type": "typing", "room": room, "from": from}))
            }),
            s().prop_map(|room| {
                (
                    encode(&ServerFrame::Left {
                        room: &room,
                        code: None,
                        reason: None,
                    }),
                    json!({"type": "left", "room": room}),
                )
            }),
            (
                prop::sample::select(&ERROR_CODES[..]),
                s(),
                prop::option::of(s()),
                prop::option::of(s())
            )
                .prop_map(|(code, message, room, id)| {
                    let frame = error_frame(code, &message, room.as_deref(), id.as_deref());
                    let mut want =
                        json!({"type": "error", "code": code.as_str(), "message": message});
                    if let Some(room) = room {
                        want["room"] = json!(room);
                    }
                    if let Some(id) = id {
                        want["id"] = json!(id);
                    }
                    (frame, want)
                }),
            (
                any::<u16>(),
                s(),
                any::<bool>(),
                prop::option::of(s()),
                prop::option::of(any::<u64>()),
            )
                .prop_map(|(code, reason, reconnect, message, retry_after_ms)| {
                    let frame = encode(&ServerFrame::Bye {
                        code,
                        reason: &reason,
                        reconnect,
                        message: message.as_deref(),
                        retry_after_ms,
                    });
                    let mut want = json!({"type": "bye", "code": code, "reason": reason,
                                          "reconnect": reconnect});
                    if let Some(message) = message {
                        want["message"] = json!(message);
                    }
                    if let Some(ms) = retry_after_ms {
                        want["retryAfterMs"] = json!(ms);
                    }
                    (frame, want)
                }),
            Just((encode(&ServerFrame::Pong {}), json!({"type": "pong"}))),
        ]
    }

    proptest! {
        #![proptest_config(crate::fuzz_config(256))]

        /// Any bytes: no panic; a refusal carries one of the decoder's codes (`invalid_utf8`
        /// exactly when the bytes are not UTF-8); a frame comes only from a JSON object
        /// whose `type` names it; valid JSON is never called `invalid_json`.
        #[test]
        fn fuzz_decode_any_bytes(bytes in any_bytes()) {
            let decoded = decode(&bytes);
            let utf8 = std::str::from_utf8(&bytes).is_ok();
            let json = serde_json::from_slice::<Value>(&bytes);
            match &decoded {
                Ok(frame) => {
                    let json = json.map_err(|e| TestCaseError::fail(format!("decoded non-JSON: {e}")))?;
                    prop_assert_eq!(json.get("type").and_then(Value::as_str), Some(type_name(frame)));
                }
                Err(e) => {
                    prop_assert!(DECODE_CODES.contains(&e.code), "{:?}", e);
                    prop_assert_eq!(e.code == ErrorCode::InvalidUtf8, !utf8, "{:?}", e);
                    match &json {
                        Ok(value) if !value.is_object() => prop_assert_eq!(e.code, ErrorCode::InvalidFrame),
                        Ok(_) => prop_assert_ne!(e.code, ErrorCode::InvalidJson, "{:?}", e),
                        Err(_) => {}
                    }
                }
            }
        }

        /// Near-valid frames: `decode` gives exactly the frame the model reads, or refuses
        /// it with a code the model allows.
        #[test]
        fn fuzz_decode_near_valid_frames(
            frame in frames(),
            space in prop::sample::select(vec!["", " ", "\t", "\r\n", "\n "]),
        ) {
            let mut text = space.to_string();
            frame.write(&mut text);
            text.push_str(space);
            match (decode(text.as_bytes()), model(&frame)) {
                (Ok(got), Ok(want)) => prop_assert_eq!(got, want),
                (Err(e), Err(codes)) => prop_assert!(codes.contains(&e.code), "{e:?}, want one of {codes:?}"),
                (got, want) => prop_assert!(false, "{text}: got {got:?}, want {want:?}"),
            }
        }

        /// Client frames serialized from arbitrary strings and numbers decode to exactly
        /// those strings and numbers.
        #[test]
        fn fuzz_client_frames_round_trip(
            room in any::<String>(),
            name in prop::option::of(any::<String>()),
            text in any::<String>(),
            id in prop::option::of(any::<String>()),
            since in prop::option::of(any::<u64>()),
            epoch in prop::option::of(any::<u64>()),
        ) {
            let key = id.clone();
            let join = json!({"type": "join", "room": room, "name": name, "since": since,
                              "epoch": epoch, "key": key});
            prop_assert_eq!(
                decode(&serde_json::to_vec(&join).unwrap()),
                Ok(ClientFrame::Join { room: room.clone(), name, since, epoch, key })
            );
            let send = json!({"type": "send", "room": room, "text": text, "id": id});
            prop_assert_eq!(
                decode(&serde_json::to_vec(&send).unwrap()),
                Ok(ClientFrame::Send { room: room.clone(), text, id, reply_to: None, mentions: vec![] })
            );
            for (kind, want) in [
                ("leave", ClientFrame::Leave { room: room.clone() }),
                ("typing", ClientFrame::Typing { room: room.clone() }),
                ("history", ClientFrame::History { room: room.clone(), before: None, limit: None }),
                ("members", ClientFrame::Members { room: room.clone(), after: None, limit: None }),
            ] {
                let frame = json!({"type": kind, "room": room});
                prop_assert_eq!(decode(&serde_json::to_vec(&frame).unwrap()), Ok(want));
            }
        }

        /// Every server frame, whatever its strings hold, is one line: valid JSON with
        /// exactly the frame's fields, then one `\n`, the only one.
        #[test]
        fn fuzz_encode_makes_one_json_line((bytes, want) in server_frames()) {
            prop_assert_eq!(bytes.last(), Some(&b'\n'));
            prop_assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 1);
            let got: Value = serde_json::from_slice(&bytes[..bytes.len() - 1])
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(got, want);
        }
    }
}
