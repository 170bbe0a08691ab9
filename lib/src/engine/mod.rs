//! The engine contract: where the room state that must outlive the process lives, and how
//! several processes ("nodes") share one chat.
//!
//! The [hub](crate) keeps what must be fast in memory — members, their queues, the
//! encode-once fan-out, a recent tail of each room's history — and talks to its engine
//! through one trait, [`Broker`] (the shape of centrifuge's broker):
//!
//! - [`Broker::append`] takes a record's place in its room's order at once, and resolves
//!   with its position (epoch, seq) once it is as durable as the engine promises; a retried
//!   client id resolves with the position it got the first time. A record is a message or
//!   a change to one (an edit, a deletion, a reaction: [`RecordKind`]): changes are
//!   numbered in the same order, so that a resume replays them with the messages around
//!   them. An engine applies a reaction in that order, against the limits
//!   ([`ReactionLimits`]), and hands back what it came to ([`Reacted`]) with the record.
//! - Every numbered record of a room — this node's and other nodes' alike — comes back
//!   through **one** handler, the room's [`RoomSink`], in order and once: a message or a
//!   change reaches its members by one route, whatever the engine.
//! - An engine that keeps messages keeps each one's current state (its text after edits,
//!   whether it was deleted): history pages and [`Broker::range`] read that state, and a
//!   range names the older messages changed within it, so that a resume is never stale.
//! - History ranges, history pages and member pages are async reads; the hub makes them
//!   outside a room's lock.
//! - Read state is the engine's too, outside the room's order: per reader (a public sender
//!   id) and room, the number read up to ([`Broker::mark_read`]), raised by the reader's
//!   own messages as they are appended; and the counts that go with it ([`ReadState`]:
//!   messages after it that are not deleted, and those of them that mention the reader).
//! - Presence across nodes (who is connected to other nodes), kicks and bans for every
//!   node, and requests for sessions another node holds are the engine's too, behind the
//!   same trait; an engine of one process leaves them at their defaults.
//!
//! The engines here: [`Engine::Memory`] (nothing survives a restart), [`Engine::Sqlite`]
//! (one process, durable on disk), [`Engine::Redis`] (many processes, one chat). A host may
//! bring its own ([`Engine::Custom`]) or wrap one of these
//! ([`ConfigBuilder::engine_layer`](crate::ConfigBuilder::engine_layer)). Nothing outside
//! this folder names an engine.

pub(crate) mod memory;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;

use crate::metrics::EngineStats;

/// Which engine rooms keep their messages in. Chosen with
/// [`ConfigBuilder::engine`](crate::ConfigBuilder::engine).
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum Engine {
    /// In this process's memory: fast, and gone on every restart. The library's default.
    #[default]
    Memory,
    /// An SQLite database file, created on first start: every acknowledged message survives
    /// a crash or `kill -9`, and a restart keeps each room's epoch, numbers and history.
    /// One process serves one file at a time. Needs the `sqlite` feature.
    Sqlite(PathBuf),
    /// A Redis server (6.2 or later) shared by several wtchat processes, which then serve
    /// one chat: the same rooms, messages, numbers and members on every process. `url` is
    /// `redis://HOST:PORT[/DB]`; every key starts with `prefix`, so that several sites can
    /// share one Redis. Needs the `redis` feature.
    Redis {
        /// `redis://HOST:PORT[/DB]`.
        url: String,
        /// The start of every key and channel name (`wtchat` when parsed from a URL).
        prefix: String,
    },
    /// The host's own engine.
    Custom(Arc<dyn Broker>),
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Engine::Memory => f.write_str("Memory"),
            Engine::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Engine::Redis { url, prefix } => f
                .debug_struct("Redis")
                .field("url", url)
                .field("prefix", prefix)
                .finish(),
            Engine::Custom(_) => f.write_str("Custom"),
        }
    }
}

impl PartialEq for Engine {
    fn eq(&self, other: &Engine) -> bool {
        match (self, other) {
            (Engine::Memory, Engine::Memory) => true,
            (Engine::Sqlite(a), Engine::Sqlite(b)) => a == b,
            (
                Engine::Redis { url, prefix },
                Engine::Redis {
                    url: url2,
                    prefix: prefix2,
                },
            ) => url == url2 && prefix == prefix2,
            (Engine::Custom(a), Engine::Custom(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for Engine {}

/// The key prefix of a Redis engine parsed from its URL.
pub const DEFAULT_REDIS_PREFIX: &str = "wtchat";

impl FromStr for Engine {
    type Err = String;

    /// `memory`, `sqlite:PATH`, or `redis://HOST:PORT[/DB]` (key prefix `wtchat`).
    fn from_str(s: &str) -> Result<Engine, String> {
        match s.split_once(':') {
            None if s == "memory" => Ok(Engine::Memory),
            Some(("sqlite", path)) if !path.is_empty() => Ok(Engine::Sqlite(path.into())),
            Some(("redis" | "rediss", rest)) if rest.len() > 2 && rest.starts_with("//") => {
                Ok(Engine::Redis {
                    url: s.to_owned(),
                    prefix: DEFAULT_REDIS_PREFIX.to_owned(),
                })
            }
            _ => Err(format!(
                "`{s}` is not an engine: use memory, sqlite:PATH or redis://HOST:PORT"
            )),
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Engine::Memory => f.write_str("memory"),
            Engine::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            Engine::Redis { url, .. } => f.write_str(url),
            Engine::Custom(_) => f.write_str("custom"),
        }
    }
}

impl Engine {
    /// The cargo feature this engine needs that this build lacks, if any.
    fn missing_feature(&self) -> Option<&'static str> {
        match self {
            Engine::Sqlite(_) if !cfg!(feature = "sqlite") => Some("sqlite"),
            Engine::Redis { .. } if !cfg!(feature = "redis") => Some("redis"),
            _ => None,
        }
    }

    /// Why this engine cannot work, if it cannot: the setting to blame and the reason.
    pub(crate) fn problem(&self) -> Option<(&'static str, String)> {
        if let Some(feature) = self.missing_feature() {
            let reason =
                format!("{self} needs the `{feature}` feature of wtchat, which this build lacks");
            return Some(("engine", reason));
        }
        match self {
            Engine::Redis { prefix, .. }
                if prefix.is_empty() || prefix.chars().any(|c| c.is_whitespace() || c == '/') =>
            {
                let reason =
                    format!("must be a non-empty name without spaces or `/`; got {prefix:?}");
                Some(("redis_prefix", reason))
            }
            _ => None,
        }
    }
}

/// Why the engine could not store or read something: the disk is full, the database is
/// read-only, locked by another process or corrupt, Redis does not answer. The message says
/// which, in words an operator can act on; [`source`](std::error::Error::source) is the
/// underlying error, when there is one.
#[derive(Debug, Clone)]
pub struct StorageError {
    message: Arc<str>,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl StorageError {
    /// An error with this message and no underlying cause.
    pub fn new(message: impl Into<Arc<str>>) -> StorageError {
        StorageError {
            message: message.into(),
            source: None,
        }
    }

    /// An error with this message, caused by `source`.
    pub fn caused_by(
        message: impl Into<Arc<str>>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> StorageError {
        StorageError {
            message: message.into(),
            source: Some(Arc::new(source)),
        }
    }
}

impl PartialEq for StorageError {
    fn eq(&self, other: &StorageError) -> bool {
        self.message == other.message
    }
}

impl Eq for StorageError {}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// A message as a room's history holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoredMessage {
    /// Its sequence number in the room.
    pub seq: u64,
    /// When the server numbered it, in milliseconds since 1970.
    pub time: u64,
    /// The sender's display name.
    pub from: String,
    /// The sender's public id; None for messages the host published.
    pub sender: Option<String>,
    /// The text (after its last edit; empty once deleted).
    pub text: String,
    /// When it was last edited, in milliseconds since 1970.
    pub edited: Option<u64>,
    /// Whether it was deleted.
    pub deleted: bool,
    /// The message it answers, if it is a reply.
    pub reply: Option<Quote>,
    /// Its reactions: how many members reacted with each, in the order they were first
    /// added (none once deleted).
    pub reactions: Vec<ReactionCount>,
    /// The public sender ids of the members it mentions.
    pub mentions: Vec<String>,
}

/// A reader's read state in a room: what it read up to, and what it has not read since.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[non_exhaustive]
pub struct ReadState {
    /// The number of the last record it read (0: none).
    pub seq: u64,
    /// The messages numbered after `seq` up to `head` that are not deleted (the reader's
    /// own are never among them: its messages raise its mark).
    pub unread: u64,
    /// How many of those mention the reader.
    pub mentions: u64,
    /// The room's last number when the counts were taken: messages numbered after it are
    /// not in them.
    pub head: u64,
}

impl ReadState {
    /// Read up to `seq`, with `unread` messages after it (`mentions` of them mentioning
    /// the reader), counted up to `head`.
    pub fn new(seq: u64, unread: u64, mentions: u64, head: u64) -> ReadState {
        ReadState {
            seq,
            unread,
            mentions,
            head,
        }
    }
}

/// How many members reacted to a message with one reaction.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct ReactionCount {
    /// The reaction: one emoji, or a name from the host's list.
    pub reaction: String,
    /// How many reacted with it (at least 1).
    pub count: u32,
}

impl ReactionCount {
    /// `count` reactions of `reaction`.
    pub fn new(reaction: impl Into<String>, count: u32) -> ReactionCount {
        ReactionCount {
            reaction: reaction.into(),
            count,
        }
    }
}

/// Who reacted to a message, and how: one entry of [`Broker::reactors`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Reactor {
    /// The reaction.
    pub reaction: String,
    /// The member's display name when it reacted.
    pub from: String,
    /// The member's public sender id.
    pub sender: String,
    /// The reaction's number in the room's order: pages go on after it.
    pub at: u64,
}

impl Reactor {
    /// `sender` (named `from`) reacted with `reaction`, numbered `at`.
    pub fn new(reaction: String, from: String, sender: String, at: u64) -> Reactor {
        Reactor {
            reaction,
            from,
            sender,
            at,
        }
    }
}

/// One page of who reacted to a message, in the order they reacted.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ReactorsPage {
    /// Up to the page's limit.
    pub reactors: Vec<Reactor>,
    /// Ask again with this as `after` for the next page; None at the end.
    pub next: Option<u64>,
}

impl ReactorsPage {
    /// A page of `reactors`, the next starting after `next`.
    pub fn new(reactors: Vec<Reactor>, next: Option<u64>) -> ReactorsPage {
        ReactorsPage { reactors, next }
    }

    /// The page of `limit` of `read`, up to `limit + 1` reactions read in their order: the
    /// one past the page says there is a next.
    pub(crate) fn of(mut read: Vec<Reactor>, limit: usize) -> ReactorsPage {
        let more = read.len() > limit;
        read.truncate(limit);
        let next = read.last().filter(|_| more).map(|r| r.at);
        ReactorsPage::new(read, next)
    }
}

/// How many reactions a message may carry: what every engine checks a reaction against,
/// in the room's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReactionLimits {
    /// Distinct reactions per message.
    pub per_message: usize,
    /// Reactions per member per message.
    pub per_member: usize,
}

impl Default for ReactionLimits {
    fn default() -> ReactionLimits {
        ReactionLimits {
            per_message: 20,
            per_member: 3,
        }
    }
}

/// What a reaction record came to, as its engine applied it in the room's order: handed
/// back with the [`Numbered`] record.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reacted {
    /// Applied: the message's reactions after it, the reacting member's own on it, and
    /// whether it changed anything (a repeated reaction, or the removal of one the member
    /// did not make, does not).
    Counts {
        /// The message's reactions now.
        counts: Vec<ReactionCount>,
        /// The reacting member's own reactions on it now.
        mine: Vec<String>,
        /// Whether the counts changed.
        changed: bool,
    },
    /// Refused: the message has as many distinct reactions as allowed, or the member as
    /// many on it.
    TooMany,
    /// Refused: the message is not there (never was, or trimmed): `deleted` when it was
    /// deleted.
    Gone {
        /// Whether it was deleted.
        deleted: bool,
    },
}

/// What one reaction does to a message that has `counts`, of which `mine` are the member's:
/// the one rule every engine applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Add,
    Remove,
    Nothing,
    TooMany,
}

impl Decision {
    /// Whether `kind` (a reaction or its removal) of `reaction` applies, given the message's
    /// `counts`, the member's own `mine`, and the limits.
    pub(crate) fn of(
        kind: RecordKind,
        reaction: &str,
        counts: &[ReactionCount],
        mine: &[String],
        limits: ReactionLimits,
    ) -> Decision {
        let had = mine.iter().any(|m| m == reaction);
        match kind {
            RecordKind::Unreact if had => Decision::Remove,
            RecordKind::React if had => Decision::Nothing,
            RecordKind::React
                if mine.len() >= limits.per_member
                    || (counts.len() >= limits.per_message
                        && !counts.iter().any(|c| c.reaction == reaction)) =>
            {
                Decision::TooMany
            }
            RecordKind::React => Decision::Add,
            _ => Decision::Nothing,
        }
    }

    /// Applies it to `counts` and `mine`: whether anything changed.
    pub(crate) fn apply(
        self,
        reaction: &str,
        counts: &mut Vec<ReactionCount>,
        mine: &mut Vec<String>,
    ) -> bool {
        match self {
            Decision::Add => {
                match counts.iter_mut().find(|c| c.reaction == reaction) {
                    Some(c) => c.count += 1,
                    None => counts.push(ReactionCount::new(reaction, 1)),
                }
                mine.push(reaction.to_owned());
                true
            }
            Decision::Remove => {
                if let Some(at) = counts.iter().position(|c| c.reaction == reaction) {
                    counts[at].count -= 1;
                    if counts[at].count == 0 {
                        counts.remove(at);
                    }
                }
                mine.retain(|m| m != reaction);
                true
            }
            Decision::Nothing | Decision::TooMany => false,
        }
    }
}

/// The message a reply answers, as the reply keeps it: enough to show the quote without
/// fetching the message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Quote {
    /// Its sequence number.
    pub seq: u64,
    /// Its sender's display name.
    pub from: String,
    /// Its first [`QUOTE_CHARS`] characters when it was answered (empty once deleted).
    pub text: String,
    /// Whether it was deleted since.
    pub deleted: bool,
}

/// The characters of a message a reply keeps.
pub const QUOTE_CHARS: usize = 100;

impl Quote {
    /// A quote of message `seq` from `from`: the start of `text`.
    pub fn new(seq: u64, from: String, text: &str) -> Quote {
        Quote {
            seq,
            from,
            text: text.chars().take(QUOTE_CHARS).collect(),
            deleted: false,
        }
    }

    /// The same quote, of a message deleted since.
    pub fn of_deleted(self) -> Quote {
        Quote {
            text: String::new(),
            deleted: true,
            ..self
        }
    }
}

impl StoredMessage {
    /// A stored message, for an engine that reads its history back: never edited, not
    /// deleted (set [`edited`](Self::edited) and [`deleted`](Self::deleted) when it was).
    pub fn new(seq: u64, time: u64, from: String, sender: Option<String>, text: String) -> Self {
        StoredMessage {
            seq,
            time,
            from,
            sender,
            text,
            edited: None,
            deleted: false,
            reply: None,
            reactions: Vec::new(),
            mentions: Vec::new(),
        }
    }
}

/// What a resume missed of a room, as its engine holds it: see [`Broker::range`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Missed {
    /// The newest messages numbered in the range (up to the limit asked for), oldest
    /// first, in their current state; deleted ones are left out.
    pub messages: Vec<StoredMessage>,
    /// The messages numbered below the range that a record in the range changed, in their
    /// current state (deleted ones too, as deleted), oldest first.
    pub changed: Vec<StoredMessage>,
    /// Whether the engine still holds every record of the range: false when some were
    /// trimmed (too old, too many) or more messages than the limit were in it.
    pub complete: bool,
}

impl Missed {
    /// What a range held: `messages`, `changed`, and whether that is all of it.
    pub fn new(messages: Vec<StoredMessage>, changed: Vec<StoredMessage>, complete: bool) -> Self {
        Missed {
            messages,
            changed,
            complete,
        }
    }
}

/// One page of a room's history, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct HistoryPage {
    /// Up to the page's limit of messages, in sequence order.
    pub messages: Vec<StoredMessage>,
    /// Whether older messages remain: ask again with `before` the first one's `seq`.
    pub more: bool,
}

impl HistoryPage {
    /// A page of `messages` (oldest first), with older ones left when `more`.
    pub fn new(messages: Vec<StoredMessage>, more: bool) -> HistoryPage {
        HistoryPage { messages, more }
    }
}

/// A room member, as the host and the engines see it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemberInfo {
    /// The member's id (as in `presence` frames): one per connection, unique over every
    /// node sharing the engine.
    pub id: u64,
    /// The display name.
    pub name: String,
    /// The host's user id, when the connection was authenticated.
    pub user: Option<String>,
    /// The member's public sender id (what its messages carry, and a mention names).
    pub sender: Option<String>,
}

impl MemberInfo {
    /// A member as listed, with no sender id.
    pub fn new(id: u64, name: String, user: Option<String>) -> MemberInfo {
        MemberInfo {
            id,
            name,
            user,
            sender: None,
        }
    }

    /// The same member, with public sender id `sender`.
    pub fn with_sender(self, sender: Option<String>) -> MemberInfo {
        MemberInfo { sender, ..self }
    }
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

impl MembersPage {
    /// A page of `members` out of `count`, the next starting after `next`.
    pub fn new(members: Vec<MemberInfo>, count: usize, next: Option<u64>) -> MembersPage {
        MembersPage {
            members,
            count,
            next,
        }
    }
}

/// A ban as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Ban {
    /// The room, or None for every room.
    pub room: Option<String>,
    /// The host's user id.
    pub user: String,
    /// Until when, in milliseconds since 1970.
    pub until: u64,
}

impl Ban {
    /// `user` banned from `room` (None: every room) until `until`.
    pub fn new(room: Option<String>, user: String, until: u64) -> Ban {
        Ban { room, user, until }
    }
}

/// How long stored history lasts, per room.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retention {
    /// Messages kept per room; older ones are deleted as new ones arrive.
    pub messages: u64,
    /// Milliseconds a message is kept.
    pub age_ms: u64,
    /// Bytes the stored messages may take over all rooms (SQLite: the database's pages in
    /// use); past it the least recently active rooms lose their oldest messages first.
    pub bytes: u64,
}

/// What the built-in engines are opened with.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    #[cfg_attr(not(any(feature = "sqlite", feature = "redis")), allow(dead_code))]
    pub retention: Retention,
    /// Client ids remembered per room, for idempotent retries.
    pub dedupe_window: usize,
    pub reactions: ReactionLimits,
}

#[cfg(test)]
impl Options {
    /// Generous retention, `dedupe_window` ids, the default reaction limits.
    pub(crate) fn for_tests(dedupe_window: usize) -> Options {
        Options {
            retention: Retention {
                messages: 100_000,
                age_ms: 3_600_000,
                bytes: 1 << 30,
            },
            dedupe_window,
            reactions: ReactionLimits::default(),
        }
    }
}

/// What a record does to its room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RecordKind {
    /// A new message.
    #[default]
    Message,
    /// Replaces the text of message [`Record::target`] with the record's text, edited at
    /// the record's time. An edit of a deleted message changes nothing.
    Edit,
    /// Deletes message [`Record::target`]: its text is forgotten, and it leaves history.
    Delete,
    /// Adds the reaction in the record's text to message [`Record::target`], by the
    /// record's sender (see [`Reacted`] for what it may come to).
    React,
    /// Takes back the sender's reaction in the record's text from message
    /// [`Record::target`].
    Unreact,
}

impl RecordKind {
    /// The kind's name, as engines store it.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Message => "message",
            RecordKind::Edit => "edit",
            RecordKind::Delete => "delete",
            RecordKind::React => "react",
            RecordKind::Unreact => "unreact",
        }
    }

    /// Whether it is a reaction or its removal.
    pub fn is_reaction(self) -> bool {
        matches!(self, RecordKind::React | RecordKind::Unreact)
    }

    /// The kind [`as_str`](Self::as_str) names.
    pub fn parse(name: &str) -> Option<RecordKind> {
        [
            RecordKind::Message,
            RecordKind::Edit,
            RecordKind::Delete,
            RecordKind::React,
            RecordKind::Unreact,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == name)
    }
}

/// A record handed to [`Broker::append`]: a message, or a change to one.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Record {
    /// A message, or which change.
    pub kind: RecordKind,
    /// The message a change changes (its sequence number); 0 for a message.
    pub target: u64,
    /// When the server took it, in milliseconds since 1970.
    pub time: u64,
    /// The sender's display name (of a change: who made it).
    pub from: Arc<str>,
    /// The sender's public id (None for the host's messages and changes).
    pub sender: Option<Arc<str>>,
    /// The text (of an edit: the new text; of a deletion: empty).
    pub text: Arc<str>,
    /// What makes a retry idempotent: the sender's dedupe id, `\0`, and its client message
    /// id. A record whose key the room saw among its last `dedupe_window` keys is not
    /// stored again; its append resolves with the first one's position.
    pub dedupe: Option<Box<str>>,
    /// The message a new message answers (None: not a reply; always None for a change).
    pub reply: Option<Box<Quote>>,
    /// The public sender ids of the members a new message mentions (always empty for a
    /// change).
    pub mentions: Box<[Arc<str>]>,
    /// The appending node's own number for the record: handed back in
    /// [`Numbered::record`] so that this node finds who is owed an acknowledgement.
    pub token: u64,
}

impl Record {
    /// A message from `from` saying `text`, taken at `time`, with no sender id, no dedupe
    /// key and token 0.
    pub fn new(time: u64, from: impl Into<Arc<str>>, text: impl Into<Arc<str>>) -> Record {
        Record {
            kind: RecordKind::Message,
            target: 0,
            time,
            from: from.into(),
            sender: None,
            text: text.into(),
            dedupe: None,
            reply: None,
            mentions: Box::default(),
            token: 0,
        }
    }

    /// The two parts of its dedupe key: the sender's dedupe id and the client message id.
    pub fn dedupe_parts(&self) -> Option<(&str, &str)> {
        self.dedupe.as_deref()?.split_once('\0')
    }

    /// A change of `kind` to message `target`, made at `time` by `from`, with `text` (an
    /// edit's new text).
    pub fn change(
        kind: RecordKind,
        target: u64,
        time: u64,
        from: impl Into<Arc<str>>,
        text: impl Into<Arc<str>>,
    ) -> Record {
        Record {
            kind,
            target,
            ..Record::new(time, from, text)
        }
    }

    /// Whether it is a message (not a change to one).
    pub fn is_message(&self) -> bool {
        self.kind == RecordKind::Message
    }
}

/// A record the engine numbered, on its way back to the room.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Numbered {
    /// Its sequence number in the room.
    pub seq: u64,
    /// The node that appended it ([`Broker::node`]).
    pub node: u64,
    /// The record as appended.
    pub record: Record,
    /// What a reaction record came to (None for other records, and from an engine that
    /// keeps no reactions).
    pub reacted: Option<Reacted>,
}

impl Numbered {
    /// Record `record`, appended by node `node`, numbered `seq`.
    pub fn new(seq: u64, node: u64, record: Record) -> Numbered {
        Numbered {
            seq,
            node,
            record,
            reacted: None,
        }
    }
}

/// Where a record stands in its room: the room's epoch (it changes when the room was lost
/// and made anew) and the record's sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The room's epoch.
    pub epoch: u64,
    /// The record's number.
    pub seq: u64,
}

/// What an append came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Appended {
    /// Stored at this position; it reaches the room's sink as a [`Numbered`] record.
    Stored(Position),
    /// A retry of a dedupe key stored before at this position: nothing new reaches the sink.
    Duplicate(Position),
}

/// The engine cannot take more records now; here is the one it was given back. Wait for
/// [`Broker::ready`] and append again: memory stays flat while a slow disk slows senders.
#[derive(Debug)]
pub struct Busy(pub Record);

/// A room as the engine held it when the hub took it up.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Loaded {
    /// The room's epoch: made now for a room the engine never held.
    pub epoch: u64,
    /// The last sequence number handed out.
    pub seq: u64,
    /// The newest messages (up to the `tail` asked for), oldest first, in their current
    /// state (deleted ones left out).
    pub tail: Vec<StoredMessage>,
    /// The changes among the room's newest records, when the engine lists them: from which
    /// number on it lists every changed message, and for each, the number of its last
    /// change and its current state (a deleted one as deleted). None: a resume from before
    /// [`seq`](Self::seq) reads [`Broker::range`].
    pub changes: Option<(u64, Vec<(u64, StoredMessage)>)>,
    /// Its members connected to other nodes.
    pub members: Vec<MemberInfo>,
}

impl Loaded {
    /// A room of epoch `epoch` whose last number is `seq`, with these newest messages.
    pub fn new(epoch: u64, seq: u64, tail: Vec<StoredMessage>) -> Loaded {
        Loaded {
            epoch,
            seq,
            tail,
            changes: None,
            members: Vec::new(),
        }
    }
}

/// What the engine hands a room.
#[derive(Debug)]
#[non_exhaustive]
pub enum RoomEvent {
    /// A numbered record: numbers only grow; a number skipped was trimmed, or its record
    /// failed to be stored.
    Record(Numbered),
    /// Members connected to another node joined.
    Joined(Vec<MemberInfo>),
    /// Members connected to another node left.
    Left(Vec<u64>),
    /// The whole list of the members connected to other nodes, as the engine holds it now
    /// (after it lost track for a while).
    Members(Vec<MemberInfo>),
    /// A member connected to another node is typing.
    Typing {
        /// Its member id.
        member: u64,
        /// Its display name.
        name: String,
    },
    /// The engine lost the room (its data is gone, and it is being made anew under
    /// another epoch): its members here reconnect and join the new one.
    Lost,
}

/// A room the hub holds, as its engine sees it: where the room's events go.
pub trait RoomSink: Send + Sync {
    /// The room's next events, in order. The engine calls this from one place at a time
    /// per room (never two calls of one room at once), so that every member sees one order.
    fn receive(&self, events: Vec<RoomEvent>);

    /// The room's members connected to this node: for an engine that lists members over
    /// every node and must list them again (Redis lost them).
    fn members_here(&self) -> Vec<MemberInfo>;
}

/// Where the engine hands what is meant for this whole node.
pub trait NodeSink: Send + Sync {
    /// Another node's [`Broker::broadcast`] (kicks and bans for every node).
    fn broadcast(&self, payload: Bytes);

    /// A request another node [forwarded](Broker::forward) to this one (a post or a poll
    /// of a session this node holds), or the answer to one this node forwarded.
    fn forwarded(&self, payload: Bytes);
}

/// A room's position as it was handed back, or a read's outcome: the engines' futures.
pub type EngineFuture<'a, T> = BoxFuture<'a, Result<T, StorageError>>;

/// The engine contract: see the [module documentation](self). Every method that reads or
/// writes storage returns a future; none blocks the caller's thread. The defaults are what
/// an engine of one process that keeps nothing beyond the hub's tail does.
pub trait Broker: Send + Sync + 'static {
    /// This node's number among the nodes sharing the engine (0 for one process): member
    /// ids are `node << 32` plus a counter, unique over every node.
    fn node(&self) -> u64 {
        0
    }

    /// Starts serving this node: what other nodes send it goes to `sink`. Called once,
    /// before the first room is attached.
    fn start(&self, sink: Arc<dyn NodeSink>) {
        let _ = sink;
    }

    /// Takes up room `room`: reads what the engine holds of it (its newest `tail`
    /// messages) and from then on hands `sink` every event of the room, starting with the
    /// records after [`Loaded::seq`], in order and each once.
    fn attach(&self, room: &str, sink: Arc<dyn RoomSink>, tail: usize) -> EngineFuture<'_, Loaded>;

    /// Lets go of room `room`: its sink hears nothing more. Called only when the room has
    /// nothing in flight (every append of it resolved).
    fn detach(&self, room: &str);

    /// Whether the hub lets go of a room as soon as no member is connected here (it takes
    /// it up again at the next join). False when letting go loses the room (memory);
    /// true for an engine shared by nodes, so that a node stops hearing rooms it does not
    /// serve.
    fn release_idle_rooms(&self) -> bool {
        false
    }

    /// Takes `record`'s place in room `room`'s order now — the order of these calls is the
    /// room's order — and resolves with its position once it is as durable as the engine
    /// promises. The numbered record reaches the room's sink (before or after the future
    /// resolves); a duplicate does not. [`Busy`] when the engine holds as many records as
    /// it allows: wait for [`Broker::ready`] and try again.
    fn append(&self, room: &str, record: Record) -> Result<EngineFuture<'static, Appended>, Busy>;

    /// Resolves when [`Broker::append`] may take a record again.
    fn ready(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }

    /// What a client that saw `room` up to `from - 1` missed of the records numbered
    /// `from <= seq < to`: the newest `limit` messages among them, and the older messages
    /// their changes changed, each in its current state (see [`Missed`]). The default holds
    /// nothing, and says so (`complete` false).
    fn range(&self, room: &str, from: u64, to: u64, limit: usize) -> EngineFuture<'_, Missed> {
        let _ = (room, from, to, limit);
        Box::pin(std::future::ready(Ok(Missed::default())))
    }

    /// Message `seq` of `room` in its current state (a deleted one as deleted), if the
    /// engine has it: what an edit or a deletion is checked against.
    fn message(&self, room: &str, seq: u64) -> EngineFuture<'_, Option<StoredMessage>> {
        let _ = (room, seq);
        Box::pin(std::future::ready(Ok(None)))
    }

    /// Who reacted to message `seq` of `room`: up to `limit` reactions numbered after
    /// `after`, in their order. The default keeps none.
    fn reactors(
        &self,
        room: &str,
        seq: u64,
        after: u64,
        limit: usize,
    ) -> EngineFuture<'_, ReactorsPage> {
        let _ = (room, seq, after, limit);
        Box::pin(std::future::ready(Ok(ReactorsPage::default())))
    }

    /// The reactions member `sender` (a public sender id) made to the messages of `room`
    /// numbered `from` or later: (message, reaction) pairs, by message.
    fn reacted_by(
        &self,
        room: &str,
        sender: &str,
        from: u64,
    ) -> EngineFuture<'_, Vec<(u64, String)>> {
        let _ = (room, sender, from);
        Box::pin(std::future::ready(Ok(Vec::new())))
    }

    /// Reader `reader`'s (a public sender id's) read state in `room`, after raising its mark
    /// to `to` (the room's last number at most; a mark never goes back), or — `to` None —
    /// as it is, made at the room's last number if the reader had none (its first join).
    /// Whether the mark moved comes with it. The default keeps none: always unread 0.
    fn mark_read(
        &self,
        room: &str,
        reader: &str,
        to: Option<u64>,
    ) -> EngineFuture<'_, (ReadState, bool)> {
        let _ = (room, reader, to);
        Box::pin(std::future::ready(Ok((ReadState::default(), false))))
    }

    /// Reader `reader`'s read state in every room where it has a mark, by room name.
    fn unread(&self, reader: &str) -> EngineFuture<'_, Vec<(String, ReadState)>> {
        let _ = reader;
        Box::pin(std::future::ready(Ok(Vec::new())))
    }

    /// The newest `limit` stored messages of `room` below `before` (deleted ones left out),
    /// oldest first, in their current state, and whether older ones remain.
    fn page(&self, room: &str, before: u64, limit: usize) -> EngineFuture<'_, HistoryPage> {
        let _ = (room, before, limit);
        Box::pin(std::future::ready(Ok(HistoryPage::default())))
    }

    /// The bans in force.
    fn bans(&self) -> EngineFuture<'_, Vec<Ban>> {
        Box::pin(std::future::ready(Ok(Vec::new())))
    }

    /// Stores a ban (`until` Some) or lifts one (None).
    fn ban(&self, room: Option<&str>, user: &str, until: Option<u64>) -> EngineFuture<'_, ()> {
        let _ = (room, user, until);
        Box::pin(std::future::ready(Ok(())))
    }

    /// Members connected here joined `room`: an engine shared by nodes lists them for the
    /// others, and resolves once it has (a member told it joined is listed everywhere).
    fn joined(&self, room: &str, members: Vec<MemberInfo>) -> BoxFuture<'_, ()> {
        let _ = (room, members);
        Box::pin(std::future::ready(()))
    }

    /// Members connected here left `room`.
    fn left(&self, room: &str, ids: Vec<u64>) {
        let _ = (room, ids);
    }

    /// A page of `room`'s members over every node, for a room not held here; None when
    /// the engine lists no members (then a room not held here has none).
    fn members_page(
        &self,
        room: &str,
        after: Option<u64>,
        limit: usize,
    ) -> EngineFuture<'_, Option<MembersPage>> {
        let _ = (room, after, limit);
        Box::pin(std::future::ready(Ok(None)))
    }

    /// Member `member` (`name`) connected here is typing in `room`: tells the other nodes
    /// holding the room, and keeps nothing.
    fn typing(&self, room: &str, member: u64, name: &str) {
        let _ = (room, member, name);
    }

    /// Tells every other node (their [`NodeSink::broadcast`]), after what this node wrote
    /// before.
    fn broadcast(&self, payload: Bytes) {
        let _ = payload;
    }

    /// Sends `payload` to node `node` (its [`NodeSink::forwarded`]); false when there is no
    /// other node.
    fn forward(&self, node: u64, payload: Bytes) -> bool {
        let _ = (node, payload);
        false
    }

    /// The engine's own secret for public sender ids, for a chat without a token secret
    /// to derive them from: made once and kept with what the engine stores, so that ids stay
    /// the same across restarts and nodes. The default keeps nothing: a random one per
    /// process. Read once, at start.
    fn sender_key(&self) -> EngineFuture<'_, Vec<u8>> {
        Box::pin(std::future::ready(Ok(
            crate::auth::random_bytes::<32>().to_vec()
        )))
    }

    /// Whether the engine can store messages now (for readiness): the last write went
    /// through, or the server answers.
    fn reachable(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// Resolves once everything appended so far is stored (or failed).
    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }

    /// This node stops: the other nodes stop waiting for it.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// Opens the engine `engine` names: creates, checks and locks its files, or connects.
pub(crate) async fn open(
    engine: &Engine,
    options: Options,
    stats: EngineStats,
) -> Result<Arc<dyn Broker>, StorageError> {
    let _ = (&options, &stats);
    Ok(match engine {
        Engine::Memory => Arc::new(memory::Memory::new(options)),
        #[cfg(feature = "sqlite")]
        Engine::Sqlite(path) => Arc::new(sqlite::Sqlite::open(path, options, stats).await?),
        #[cfg(feature = "redis")]
        Engine::Redis { url, prefix } => {
            Arc::new(redis::Redis::open(url, prefix, options, stats).await?)
        }
        Engine::Custom(broker) => broker.clone(),
        #[allow(unreachable_patterns)]
        _ => {
            return Err(StorageError::new(format!(
                "engine {engine} needs the `{}` feature of wtchat",
                engine.missing_feature().unwrap_or("?")
            )));
        }
    })
}

/// Hands out rooms' epochs: milliseconds since 1970 at a room's making, made unique here so
/// that a room made again never reuses its predecessor's.
#[derive(Debug, Default)]
pub(crate) struct Epochs(std::sync::atomic::AtomicU64);

impl Epochs {
    /// A new room's epoch.
    pub(crate) fn next(&self) -> u64 {
        use std::sync::atomic::Ordering::Relaxed;
        let now = crate::protocol::now_ms();
        let prev = self
            .0
            .fetch_update(Relaxed, Relaxed, |last| Some(now.max(last + 1)))
            .unwrap_or(0);
        now.max(prev + 1)
    }
}

/// Records an engine holds and has not answered for yet, and how many it may: past the
/// bound its appends are [`Busy`], and [`Broker::ready`] waits until it answered some. So a
/// store that does not keep up slows the senders instead of filling memory.
#[cfg_attr(not(any(feature = "sqlite", feature = "redis")), allow(dead_code))]
#[derive(Debug)]
pub(crate) struct InFlight {
    held: std::sync::atomic::AtomicUsize,
    max: usize,
    /// Wakes the senders waiting for room once some were answered.
    room: tokio::sync::Notify,
}

#[cfg_attr(not(any(feature = "sqlite", feature = "redis")), allow(dead_code))]
impl InFlight {
    pub(crate) fn new(max: usize) -> InFlight {
        InFlight {
            held: std::sync::atomic::AtomicUsize::new(0),
            max,
            room: tokio::sync::Notify::new(),
        }
    }

    /// Counts one more record in, unless the bound is reached.
    pub(crate) fn take(&self) -> bool {
        use std::sync::atomic::Ordering::{AcqRel, Acquire};
        self.held
            .fetch_update(AcqRel, Acquire, |n| (n < self.max).then_some(n + 1))
            .is_ok()
    }

    /// `n` records were answered (stored, or failed).
    pub(crate) fn answered(&self, n: usize) {
        if n > 0 {
            self.held.fetch_sub(n, std::sync::atomic::Ordering::AcqRel);
            self.room.notify_waiters();
        }
    }

    /// Resolves once there is room for a record.
    pub(crate) async fn ready(&self) {
        loop {
            let notified = self.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.held.load(std::sync::atomic::Ordering::Acquire) < self.max {
                return;
            }
            notified.await;
        }
    }
}

/// Remembers the dedupe keys of a room's newest records, for idempotent retries: what the
/// memory and SQLite engines keep per room (Redis keeps its own, in Redis).
#[derive(Debug, Default)]
pub(crate) struct Dedupe {
    seen: std::collections::HashMap<Box<str>, u64>,
    order: std::collections::VecDeque<Box<str>>,
}

impl Dedupe {
    /// The number a key was stored under, if it is still remembered.
    pub(crate) fn get(&self, key: &str) -> Option<u64> {
        self.seen.get(key).copied()
    }

    /// Remembers `key` as `seq`, forgetting the oldest past `window` keys.
    pub(crate) fn insert(&mut self, key: Box<str>, seq: u64, window: usize) {
        self.seen.insert(key.clone(), seq);
        self.order.push_back(key);
        while self.order.len() > window {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
    }

    /// Forgets the keys of the records numbered `first` or later (they were not stored
    /// after all).
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) fn forget_from(&mut self, first: u64) {
        let seen = &mut self.seen;
        self.order.retain(|key| match seen.get(key) {
            Some(&seq) if seq >= first => {
                seen.remove(key);
                false
            }
            _ => true,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_parse_from_their_flag_and_print_back() {
        for text in ["memory", "sqlite:wtchat.db", "redis://127.0.0.1:6379/2"] {
            let engine: Engine = text.parse().unwrap();
            assert_eq!(engine.to_string(), text);
        }
        assert_eq!(
            "redis://10.0.0.5:6379".parse::<Engine>().unwrap(),
            Engine::Redis {
                url: "redis://10.0.0.5:6379".into(),
                prefix: DEFAULT_REDIS_PREFIX.into(),
            }
        );
        for wrong in [
            "",
            "sqlite:",
            "redis:",
            "redis://",
            "postgres://db",
            "Memory",
        ] {
            let refused = wrong.parse::<Engine>().unwrap_err();
            assert!(refused.contains("redis://HOST:PORT"), "{wrong}: {refused}");
        }
    }

    #[test]
    fn a_dedupe_window_forgets_its_oldest_keys() {
        let mut dedupe = Dedupe::default();
        for seq in 1..=5 {
            dedupe.insert(format!("k{seq}").into(), seq, 3);
        }
        assert_eq!(dedupe.get("k1"), None);
        assert_eq!(dedupe.get("k3"), Some(3));
        dedupe.forget_from(5);
        assert_eq!(dedupe.get("k5"), None);
        assert_eq!(dedupe.get("k4"), Some(4));
    }
}
