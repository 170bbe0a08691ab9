//! The engine seam: where the room state that must outlive the process lives.
//!
//! The [hub](crate::hub) keeps what must be fast in memory — members, their queues, the
//! encode-once fan-out, a recent tail of each room's history — and hands what must survive
//! to an engine: the messages with their sequence numbers, each room's epoch, the client ids
//! of idempotent retries, deletions and bans. Only publishing and history reads cross the
//! seam; delivering a message to N members costs the same whatever the engine.
//!
//! - [`Engine::Memory`]: nothing crosses; a message is delivered as soon as it is numbered,
//!   and nothing survives a restart.
//! - [`Engine::Sqlite`]: a file on disk. The hub numbers a message and hands it over; one
//!   writer thread commits everything that arrived while its last commit ran in one
//!   transaction, then tells each room how far it got; the room delivers and acknowledges
//!   only then (see [`sqlite`]).
//!
//! - [`Engine::Redis`]: several processes ("nodes") share Redis, and are one chat. Redis
//!   numbers the messages, and every node delivers them to its own members in that order
//!   as they come back on the room's channel (see [`redis`]).

pub(crate) mod redis;
pub(crate) mod sqlite;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use crate::auth::random_bytes;
use crate::hub::{MemberPage, MemberSummary, Room};
use crate::metrics::EngineStats;

/// Where rooms keep their messages. Chosen with
/// [`ConfigBuilder::engine`](crate::ConfigBuilder::engine).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Engine {
    /// In this process's memory: fast, and gone on every restart. The library's default.
    #[default]
    Memory,
    /// An SQLite database file, created on first start: every acknowledged message survives
    /// a crash or `kill -9`, and a restart keeps each room's epoch, numbers and history.
    /// One process serves one file at a time.
    Sqlite(PathBuf),
    /// A Redis server (6.2 or later) shared by several wtchat processes, which then serve
    /// one chat: the same rooms, messages, numbers and members on every process. `url` is
    /// `redis://HOST:PORT[/DB]`; every key starts with `prefix`, so that several sites can
    /// share one Redis.
    Redis {
        /// `redis://HOST:PORT[/DB]`.
        url: String,
        /// The start of every key and channel name (`wtchat` when parsed from a URL).
        prefix: String,
    },
}

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
        }
    }
}

/// Why the engine could not store or read something: the disk is full, the database is
/// read-only, locked by another process, or corrupt. The message says which, in words an
/// operator can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageError {
    message: Arc<str>,
}

impl StorageError {
    pub(crate) fn new(message: impl Into<Arc<str>>) -> StorageError {
        StorageError {
            message: message.into(),
        }
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StorageError {}

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
    /// The text.
    pub text: String,
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

/// How long stored history lasts, per room.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retention {
    /// Messages kept per room; older ones are deleted as new ones arrive.
    pub messages: u64,
    /// Milliseconds a message is kept.
    pub age_ms: u64,
}

/// A room's lasting state, as the engine read it back.
#[derive(Debug)]
pub(crate) struct LoadedRoom {
    pub epoch: u64,
    /// The last sequence number handed out.
    pub seq: u64,
    /// The newest messages, oldest first.
    pub tail: Vec<StoredMessage>,
    /// (sender's dedupe id, client id, seq) of the newest messages that had a client id.
    pub dedupe: Vec<(String, String, u64)>,
    /// Its members connected to other nodes (a shared engine only).
    pub members: Vec<MemberSummary>,
}

/// A ban as stored: `room` is None for the whole server.
#[derive(Debug, Clone)]
pub(crate) struct Ban {
    pub room: Option<String>,
    pub user: String,
    /// Milliseconds since 1970.
    pub until: u64,
}

/// What a room hands the engine to store.
#[derive(Debug)]
pub(crate) struct Record {
    /// Its number (0 for an engine that numbers messages itself).
    pub seq: u64,
    /// Names it when an engine that numbers messages sends it back.
    pub token: u64,
    pub time: u64,
    pub from: Arc<str>,
    pub sender: Option<Box<str>>,
    /// What the sender's retries are matched by (see [`crate::hub::Sender`]), with
    /// `client_id`: not the public id.
    pub dedupe_id: Option<Box<str>>,
    pub client_id: Option<Box<str>>,
    pub text: Box<str>,
}

/// The engine a hub runs on. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) enum Store {
    Memory,
    Sqlite(Arc<sqlite::Sqlite>),
    Redis(Arc<redis::Redis>),
}

impl Store {
    /// Opens the engine `engine` names: creates, checks and locks its files, or connects.
    pub(crate) async fn open(
        engine: &Engine,
        retention: Retention,
        dedupe_window: usize,
        stats: EngineStats,
    ) -> Result<Store, StorageError> {
        Ok(match engine {
            Engine::Memory => Store::Memory,
            Engine::Sqlite(path) => {
                Store::Sqlite(Arc::new(sqlite::Sqlite::open(path, retention, stats)?))
            }
            Engine::Redis { url, prefix } => Store::Redis(Arc::new(
                redis::Redis::open(url, prefix, retention, dedupe_window, stats).await?,
            )),
        })
    }

    /// The engine's own secret for public sender ids, when there is no token secret to
    /// derive them from (see [`crate::hub::SenderKey`]): made once and kept with what the
    /// engine stores, so that ids stay the same across restarts and nodes. The memory
    /// engine keeps nothing: a random one per process. Read once, at start.
    pub(crate) async fn sender_key(&self) -> Result<Vec<u8>, StorageError> {
        match self {
            Store::Memory => Ok(random_bytes::<32>().to_vec()),
            Store::Sqlite(db) => db.sender_key(),
            Store::Redis(redis) => redis.sender_key().await,
        }
    }

    /// Whether the engine can store messages now: for SQLite, its last commit went
    /// through (`stats` says); Redis answers a PING.
    pub(crate) async fn reachable(&self, stats: &EngineStats) -> Result<(), String> {
        match self {
            Store::Memory => Ok(()),
            Store::Sqlite(_) if stats.failing() => {
                Err("the last write to the database failed".into())
            }
            Store::Sqlite(_) => Ok(()),
            Store::Redis(redis) => redis.ping().await,
        }
    }

    /// Whether messages wait for the engine before they are delivered.
    pub(crate) fn is_durable(&self) -> bool {
        !matches!(self, Store::Memory)
    }

    /// Whether the engine numbers messages itself (it is shared by several nodes).
    pub(crate) fn numbers_messages(&self) -> bool {
        matches!(self, Store::Redis(_))
    }

    /// This node's number on a shared engine (0 on one process).
    pub(crate) fn node(&self) -> u64 {
        match self {
            Store::Redis(redis) => redis.node(),
            _ => 0,
        }
    }

    /// The first connection id this process hands out: on a shared engine, ids are unique
    /// over all nodes (and below 2^53).
    pub(crate) fn first_id(&self) -> u64 {
        match self {
            Store::Redis(redis) => redis.first_id(),
            _ => 1,
        }
    }

    /// A room's lasting state, None when the engine has never stored it (or keeps
    /// nothing). On a shared engine, the node subscribes to the room first: what arrives
    /// meanwhile waits for [`Store::attach`].
    pub(crate) async fn load(
        &self,
        room: &str,
        tail: usize,
        dedupe: usize,
    ) -> Result<Option<LoadedRoom>, StorageError> {
        match self {
            Store::Memory => Ok(None),
            Store::Sqlite(db) => db.load(room, tail, dedupe),
            Store::Redis(redis) => redis.load(room, tail).await.map(Some),
        }
    }

    /// Room `room`, just loaded, is held here now.
    pub(crate) fn attach(&self, room: &Arc<Room>) {
        if let Store::Redis(redis) = self {
            redis.attach(room);
        }
    }

    /// Room `name` is no longer held here (or its load failed).
    pub(crate) fn detach(&self, name: &str) {
        if let Store::Redis(redis) = self {
            redis.detach(name);
        }
    }

    /// Hands `record` of `room` to the engine; the room hears back through
    /// [`Room::committed`] or [`Room::failed`] (Redis: [`Room::outcome`], and the message
    /// itself through [`Room::receive`]). Records of one room arrive in order.
    pub(crate) fn append(&self, room: &Arc<Room>, generation: u64, record: Record) {
        match self {
            Store::Memory => unreachable!("the memory engine delivers at once"),
            Store::Sqlite(db) => db.append(room.clone(), generation, record),
            Store::Redis(redis) => redis.append(room.clone(), record.token, record),
        }
    }

    /// Reads what room `room` missed after `after` from a shared engine, and hands it to
    /// [`Room::caught_up`].
    pub(crate) fn catch_up(&self, room: &Arc<Room>, after: u64) {
        if let Store::Redis(redis) = self {
            redis.catch_up(room, after);
        }
    }

    /// Members connected here join room `room`: a shared engine lists them, and this
    /// resolves once it does.
    pub(crate) async fn joined(&self, room: &str, members: Vec<MemberSummary>) {
        if let Store::Redis(redis) = self {
            redis.joined(room, members).await;
        }
    }

    /// Member `id` (`name`) here is typing in room `room`: a shared engine tells the other
    /// nodes (and keeps nothing).
    pub(crate) fn typing(&self, room: &str, id: u64, name: &str) {
        if let Store::Redis(redis) = self {
            redis.typing(room, id, name);
        }
    }

    /// Members connected here left room `room`.
    pub(crate) fn left(&self, room: &str, ids: Vec<u64>) {
        if let Store::Redis(redis) = self {
            redis.left(room, ids);
        }
    }

    /// Sends a request for a session node `node` holds (or an answer) to it; false without
    /// a shared engine.
    pub(crate) fn forward(&self, node: u64, post: redis::Forwarded) -> bool {
        match self {
            Store::Redis(redis) => {
                redis.forward(node, post);
                true
            }
            _ => false,
        }
    }

    /// Tells the other nodes of a shared engine (a kick, a ban).
    pub(crate) fn control(&self, control: redis::Control) {
        if let Store::Redis(redis) = self {
            redis.control(control);
        }
    }

    /// A page of room `room`'s members over all nodes, for a room not held here; None when
    /// the engine does not list members.
    pub(crate) fn members_page(
        &self,
        room: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Option<Result<MemberPage, StorageError>> {
        match self {
            Store::Redis(redis) => Some(redis.members_page(room, after, limit)),
            _ => None,
        }
    }

    /// Stored messages of `room` with `from <= seq < to`, oldest first; None when the
    /// engine keeps nothing beyond the rooms' tails.
    pub(crate) fn range(
        &self,
        room: &str,
        from: u64,
        to: u64,
    ) -> Option<Result<Vec<StoredMessage>, StorageError>> {
        match self {
            Store::Memory => None,
            Store::Sqlite(db) => Some(db.range(room, from, to)),
            Store::Redis(redis) => Some(redis.range(room, from, to)),
        }
    }

    /// The newest `limit` stored messages of `room` below `before`, oldest first, and
    /// whether there are older ones; None when the engine keeps nothing beyond the tails.
    pub(crate) fn page(
        &self,
        room: &str,
        before: u64,
        limit: usize,
    ) -> Option<Result<HistoryPage, StorageError>> {
        match self {
            Store::Memory => None,
            Store::Sqlite(db) => Some(db.page(room, before, limit)),
            Store::Redis(redis) => Some(redis.page(room, before, limit)),
        }
    }

    /// Deletes message `seq` of `room` from storage; whether it was there. None when the
    /// engine keeps nothing beyond the tails.
    pub(crate) async fn delete(&self, room: &str, seq: u64) -> Option<Result<bool, StorageError>> {
        match self {
            Store::Memory => None,
            Store::Sqlite(db) => Some(db.delete(room, seq).await),
            Store::Redis(redis) => Some(redis.delete(room, seq).await),
        }
    }

    /// Stores a ban (`until` Some) or lifts one (None).
    pub(crate) async fn ban(
        &self,
        room: Option<&str>,
        user: &str,
        until: Option<u64>,
    ) -> Result<(), StorageError> {
        match self {
            Store::Memory => Ok(()),
            Store::Sqlite(db) => db.ban(room, user, until).await,
            Store::Redis(redis) => redis.ban(room, user, until).await,
        }
    }

    /// The bans in force.
    pub(crate) fn bans(&self) -> Result<Vec<Ban>, StorageError> {
        match self {
            Store::Memory => Ok(Vec::new()),
            Store::Sqlite(db) => db.bans(),
            Store::Redis(redis) => redis.bans(),
        }
    }

    /// Leaves a shared engine: the other nodes stop waiting for this one's beat.
    pub(crate) async fn close(&self) {
        if let Store::Redis(redis) = self {
            redis.close().await;
        }
    }

    /// Resolves once everything handed over so far is committed (or failed).
    pub(crate) async fn flush(&self) {
        match self {
            Store::Memory => {}
            Store::Sqlite(db) => db.flush().await,
            Store::Redis(redis) => redis.flush().await,
        }
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
}
