//! The SQLite engine: rooms in one database file, durable before they are delivered.
//!
//! A room's messages are numbered here, in the order they are appended, and handed to one
//! writer thread through a bounded queue. The writer takes everything queued, writes it in
//! one transaction, commits, and only then hands each room its committed records (to the
//! room's sink, on the runtime's workers, one room at a time in order) and resolves their
//! appends: group commit, so that a commit's cost is shared by every message in it and
//! durability costs latency (about one commit), not throughput. When the queue holds
//! [`MAX_QUEUED`] messages, appends are refused as busy until the writer catches up: a slow
//! disk slows the senders, and memory stays flat. An edit or a deletion is numbered and
//! committed the same way; it updates its message's row (its current state, and the number
//! of the change that made it), so that history and resumes read messages as they are now.
//!
//! The database is in WAL mode with `synchronous = FULL`: a commit returns once the WAL is
//! on disk (fsync), so an acknowledged message survives a crash of the process *and* a power
//! loss or kernel panic. Reads (room loads, resumes from older history, history pages) use
//! their own connections, on the runtime's blocking threads, and never wait for the writer.
//!
//! If a commit fails (the disk is full, the file became read-only or corrupt), its messages
//! were never delivered nor acknowledged: each room rewinds its numbering to the last
//! committed message and its appends fail; a retry with the same client id is safe.
//! Messages already queued behind the failed ones belong to the room's old numbering and
//! fail too (a room's `generation` tells them apart).

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use rusqlite::{Connection, ErrorCode as SqlCode, OpenFlags, OptionalExtension, params};
use tokio::sync::oneshot;

use super::{
    Appended, Ban, Broker, Busy, Decision, Dedupe, EngineFuture, Epochs, HistoryPage, InFlight,
    Loaded, Missed, Numbered, Options, Position, Quote, Reacted, ReactionCount, ReactionLimits,
    Reactor, ReactorsPage, ReadState, Record, RecordKind, RoomEvent, RoomSink, StorageError,
    StoredMessage,
};
use crate::auth::random_bytes;
use crate::metrics::EngineStats;
use crate::protocol::now_ms;

/// The schema this release reads and writes, in `PRAGMA user_version`: version 1
/// ([`SCHEMA`]) and each of [`MIGRATIONS`]. An older release refuses a newer file.
const SCHEMA_VERSION: i64 = 1 + MIGRATIONS.len() as i64;

/// `PRAGMA application_id`: marks the file as wtchat's ("wtch").
const APPLICATION_ID: i64 = 0x7774_6368;

/// Most jobs in one transaction: bounds a transaction's size (and its latency) when a
/// backlog built up.
const MAX_BATCH: usize = 8192;

/// How often old messages and expired bans are swept out, at most: a short retention age
/// is swept more often (a quarter of it, at least every second).
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Messages deleted per statement when the stored-bytes budget is kept: bounds how long
/// the writer is away from commits at a time.
const SHED_ROWS: i64 = 1024;

/// Version 1 of the schema: a new file gets it, then every migration.
const SCHEMA: &str = "
    CREATE TABLE rooms (
        name  TEXT PRIMARY KEY,
        epoch INTEGER NOT NULL,
        seq   INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE messages (
        room      TEXT NOT NULL,
        seq       INTEGER NOT NULL,
        time      INTEGER NOT NULL,
        name      TEXT NOT NULL,
        sender    TEXT,
        client_id TEXT,
        text      TEXT NOT NULL,
        PRIMARY KEY (room, seq)
    ) WITHOUT ROWID;
    CREATE INDEX messages_by_time ON messages (time);
    -- room '' is the whole server
    CREATE TABLE bans (
        room  TEXT NOT NULL,
        user  TEXT NOT NULL,
        until INTEGER NOT NULL,
        PRIMARY KEY (room, user)
    ) WITHOUT ROWID;
";

/// What each version after 1 changed, in order: a file of version `v` gets the ones after
/// it, in the transaction that opens it.
const MIGRATIONS: [&str; 5] = [
    // 2: public sender ids are keyed (see `crate::hub::sender`): the engine's key, and each
    // message's dedupe id beside its public id. Messages of version 1 have none: their
    // public id was their dedupe id.
    "ALTER TABLE messages ADD COLUMN dedupe_id TEXT;
     CREATE TABLE secrets (
         name  TEXT PRIMARY KEY,
         value BLOB NOT NULL
     ) WITHOUT ROWID;",
    // 3: when each room last had a message (ms since 1970), for the stored-bytes budget
    // (see `Writer::keep_stored_budget`): the least recently active rooms lose messages
    // first. Existing rooms get their newest message's time.
    "ALTER TABLE rooms ADD COLUMN active INTEGER NOT NULL DEFAULT 0;
     UPDATE rooms SET active = coalesce(
         (SELECT max(time) FROM messages WHERE room = rooms.name), 0);
     CREATE INDEX rooms_by_activity ON rooms (active);",
    // 4: messages that change, and replies (see `Record`): each keeps its current state — the text
    // after its last edit and when that was, whether it was deleted (a deleted one keeps
    // its row without its text, so that resumes learn of it) — and the number of the last
    // record that changed it, indexed for the few that changed (a query names `changed >
    // 0` for SQLite to use the partial index): what a resume reads. A reply keeps the
    // message it answers (number, sender's name, the start of its text), marked deleted
    // when that one is.
    "ALTER TABLE messages ADD COLUMN edited INTEGER;
     ALTER TABLE messages ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE messages ADD COLUMN changed INTEGER NOT NULL DEFAULT 0;
     CREATE INDEX messages_by_change ON messages (room, changed) WHERE changed > 0;
     ALTER TABLE messages ADD COLUMN reply_seq INTEGER;
     ALTER TABLE messages ADD COLUMN reply_from TEXT;
     ALTER TABLE messages ADD COLUMN reply_text TEXT;
     ALTER TABLE messages ADD COLUMN reply_deleted INTEGER NOT NULL DEFAULT 0;
     CREATE INDEX messages_by_reply ON messages (room, reply_seq) WHERE reply_seq IS NOT NULL;",
    // 5: reactions. Who reacted how, one row each (in their order for "who reacted", by
    // member for a member's own); and each message's counts (JSON `[["👍",2],…]`, NULL
    // for none) beside its text, so that history reads no other table.
    "ALTER TABLE messages ADD COLUMN reactions TEXT;
     CREATE TABLE reactions (
         room     TEXT NOT NULL,
         seq      INTEGER NOT NULL,
         who      TEXT NOT NULL,
         reaction TEXT NOT NULL,
         name     TEXT NOT NULL,
         at       INTEGER NOT NULL,
         PRIMARY KEY (room, seq, who, reaction)
     ) WITHOUT ROWID;
     CREATE INDEX reactions_in_order ON reactions (room, seq, at);
     CREATE INDEX reactions_by_member ON reactions (room, who, seq);",
    // 6: read state. Each reader's (a public sender id's) mark per room, and when it last
    // moved (for the sweep: see `Writer::sweep`); whom each message mentions (JSON
    // `["id",…]`, NULL for none) beside its text, and one row per mention, by room and
    // reader, for the counts. A deleted message's mention rows stay: counts join the message
    // and skip deleted ones.
    "ALTER TABLE messages ADD COLUMN mentions TEXT;
     CREATE TABLE reads (
         reader  TEXT NOT NULL,
         room    TEXT NOT NULL,
         seq     INTEGER NOT NULL,
         touched INTEGER NOT NULL,
         PRIMARY KEY (reader, room)
     ) WITHOUT ROWID;
     CREATE INDEX reads_by_touch ON reads (touched);
     CREATE TABLE mentions (
         room   TEXT NOT NULL,
         reader TEXT NOT NULL,
         seq    INTEGER NOT NULL,
         PRIMARY KEY (room, reader, seq)
     ) WITHOUT ROWID;",
];

/// The name of the engine's key for public sender ids in table `secrets`.
const SENDER_KEY: &str = "sender ids";

/// Says what went wrong in words an operator can act on.
fn describe(path: &Path, e: &rusqlite::Error) -> StorageError {
    let what = match e.sqlite_error_code() {
        Some(SqlCode::DiskFull) => "the disk is full",
        Some(SqlCode::ReadOnly) => "the database is read-only",
        Some(SqlCode::DatabaseCorrupt) => "the database file is corrupt",
        Some(SqlCode::NotADatabase) => "the file is not an SQLite database, or it is corrupt",
        Some(SqlCode::DatabaseBusy | SqlCode::DatabaseLocked) => {
            "the database is locked by another process"
        }
        Some(SqlCode::CannotOpen) => "it cannot be opened or created",
        Some(SqlCode::SystemIoFailure) => "a disk I/O error",
        _ => "an SQLite error",
    };
    StorageError::new(format!("database {}: {what} ({e})", path.display()))
}

/// Messages waiting for the writer (queued or in the transaction under way) at most: past
/// it appends are busy. Two full transactions' worth: the writer always has a whole batch
/// to take while the next one fills.
const MAX_QUEUED: usize = 2 * MAX_BATCH;

/// One open database.
pub(crate) struct Sqlite {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    options: Options,
    jobs: mpsc::Sender<Job>,
    /// Connections for reading, reused.
    readers: Mutex<Vec<Connection>>,
    /// The rooms the hub holds, by name: their numbering and their sinks.
    rooms: Mutex<HashMap<Arc<str>, Arc<Held>>>,
    /// Messages handed to the writer and not yet committed or failed (at most
    /// [`MAX_QUEUED`]).
    queued: InFlight,
    /// Whether the last commit failed (readiness says so).
    failing: AtomicBool,
    epochs: Epochs,
    /// Held open with an exclusive lock for as long as this process serves the file: a
    /// second wtchat on the same file would hand out the same sequence numbers.
    _lock: File,
}

/// A room the hub holds.
struct Held {
    name: Arc<str>,
    epoch: u64,
    sink: Arc<dyn RoomSink>,
    numbers: Mutex<Numbers>,
    /// Committed records not yet handed to the sink, oldest first.
    outgoing: Mutex<VecDeque<Numbered>>,
    /// Held while handing records to the sink: one hand-over at a time per room, so that
    /// the room receives them in order whichever worker runs it.
    handing: Mutex<()>,
}

/// A room's numbering.
struct Numbers {
    /// The last number handed out.
    seq: u64,
    /// The last number committed.
    committed: u64,
    /// Bumped when a commit of the room failed and the numbering went back: jobs numbered
    /// before it are not the room's any more.
    generation: u64,
    dedupe: Dedupe,
    /// Retries of messages not yet committed: resolved with them.
    retries: Vec<(u64, oneshot::Sender<Result<Appended, StorageError>>)>,
}

enum Job {
    Message {
        room: Arc<Held>,
        generation: u64,
        seq: u64,
        record: Record,
        done: oneshot::Sender<Result<Appended, StorageError>>,
    },
    Ban {
        room: Box<str>,
        user: Box<str>,
        until: Option<u64>,
        done: oneshot::Sender<Result<(), StorageError>>,
    },
    /// A reader's mark raised (`to`), or made at the room's head if it has none (None).
    Read {
        room: Box<str>,
        reader: Box<str>,
        to: Option<u64>,
        done: oneshot::Sender<Result<(ReadState, bool), StorageError>>,
    },
    Flush(oneshot::Sender<()>),
}

impl Sqlite {
    /// Opens (creating it if needed) the database at `path`, checks that it is a wtchat
    /// database this release can use and that it can be written, and starts its writer.
    pub(crate) async fn open(
        path: &Path,
        options: Options,
        stats: EngineStats,
    ) -> Result<Sqlite, StorageError> {
        let path = path.to_path_buf();
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || Sqlite::open_blocking(path, options, stats, runtime))
            .await
            .map_err(|e| StorageError::new(format!("the database could not be opened: {e}")))?
    }

    fn open_blocking(
        path: PathBuf,
        options: Options,
        stats: EngineStats,
        runtime: tokio::runtime::Handle,
    ) -> Result<Sqlite, StorageError> {
        let refuse =
            |what: String| StorageError::new(format!("database {}: {what}", path.display()));
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| refuse(format!("cannot open or create it: {e}")))?;
        lock.try_lock().map_err(|_| {
            refuse("another process is serving it (one wtchat per database file)".into())
        })?;
        let conn = Connection::open(&path).map_err(|e| describe(&path, &e))?;
        setup(&conn).map_err(|e| match e {
            Setup::Sql(e) => describe(&path, &e),
            Setup::Refused(what) => refuse(what),
        })?;
        let (jobs, queue) = mpsc::channel();
        let shared = Arc::new(Shared {
            path: path.clone(),
            options,
            jobs,
            readers: Mutex::new(Vec::new()),
            rooms: Mutex::new(HashMap::new()),
            queued: InFlight::new(MAX_QUEUED),
            failing: AtomicBool::new(false),
            epochs: Epochs::default(),
            _lock: lock,
        });
        let writer = Writer {
            conn,
            shared: Arc::downgrade(&shared),
            path: path.clone(),
            retention: options.retention,
            reactions: options.reactions,
            runtime,
            stats,
            unchecked: 0,
            // Not known at start (a process that stopped between a deletion and its sweep):
            // the first sweep looks.
            orphaned: true,
        };
        std::thread::Builder::new()
            .name("wtchat-sqlite".into())
            .spawn(move || writer.run(queue))
            .map_err(|e| refuse(format!("cannot start its writer thread: {e}")))?;
        Ok(Sqlite { shared })
    }
}

impl Shared {
    fn send(&self, job: Job) {
        // The writer lives as long as this sender: it cannot have gone.
        let _ = self.jobs.send(job);
    }

    fn gone(&self) -> StorageError {
        StorageError::new(format!(
            "database {}: its writer stopped",
            self.path.display()
        ))
    }

    /// Runs `read` on a reading connection, on a blocking thread.
    fn read<T: Send + 'static>(
        self: &Arc<Self>,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> EngineFuture<'static, T> {
        let shared = self.clone();
        Box::pin(async move {
            let path = shared.path.clone();
            tokio::task::spawn_blocking(move || shared.read_now(read))
                .await
                .map_err(|e| StorageError::new(format!("database {}: {e}", path.display())))?
        })
    }

    fn read_now<T>(
        &self,
        read: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StorageError> {
        let pooled = self.readers.lock().unwrap().pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => {
                let conn = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(|e| describe(&self.path, &e))?;
                conn.busy_timeout(Duration::from_secs(5))
                    .map_err(|e| describe(&self.path, &e))?;
                conn
            }
        };
        let result = read(&conn).map_err(|e| describe(&self.path, &e));
        self.readers.lock().unwrap().push(conn);
        result
    }
}

/// A job's answer, awaited.
fn answer<T: Send + 'static>(
    shared: &Arc<Shared>,
    result: oneshot::Receiver<Result<T, StorageError>>,
) -> EngineFuture<'static, T> {
    let shared = shared.clone();
    Box::pin(async move { result.await.unwrap_or_else(|_| Err(shared.gone())) })
}

impl Broker for Sqlite {
    fn attach(&self, room: &str, sink: Arc<dyn RoomSink>, tail: usize) -> EngineFuture<'_, Loaded> {
        let shared = self.shared.clone();
        let name: Arc<str> = room.into();
        let dedupe = self.shared.options.dedupe_window;
        Box::pin(async move {
            let key = name.clone();
            let stored = shared
                .read(move |conn| load(conn, &key, tail, dedupe))
                .await?;
            let (loaded, seen) = match stored {
                Some(stored) => stored,
                None => (Loaded::new(shared.epochs.next(), 0, Vec::new()), Vec::new()),
            };
            let mut dedupe = Dedupe::default();
            for (key, seq) in seen.into_iter().rev() {
                dedupe.insert(key, seq, shared.options.dedupe_window);
            }
            let held = Arc::new(Held {
                name: name.clone(),
                epoch: loaded.epoch,
                sink,
                numbers: Mutex::new(Numbers {
                    seq: loaded.seq,
                    committed: loaded.seq,
                    generation: 0,
                    dedupe,
                    retries: Vec::new(),
                }),
                outgoing: Mutex::new(VecDeque::new()),
                handing: Mutex::new(()),
            });
            shared.rooms.lock().unwrap().insert(name, held);
            Ok(loaded)
        })
    }

    fn detach(&self, room: &str) {
        self.shared.rooms.lock().unwrap().remove(room);
    }

    fn append(&self, room: &str, record: Record) -> Result<EngineFuture<'static, Appended>, Busy> {
        let shared = &self.shared;
        let Some(held) = shared.rooms.lock().unwrap().get(room).cloned() else {
            let error = StorageError::new(format!("room {room} is not held here"));
            return Ok(Box::pin(std::future::ready(Err(error))));
        };
        let (done, result) = oneshot::channel();
        let mut numbers = held.numbers.lock().unwrap();
        if let Some(seq) = record.dedupe.as_deref().and_then(|k| numbers.dedupe.get(k)) {
            let duplicate = Appended::Duplicate(Position {
                epoch: held.epoch,
                seq,
            });
            if seq <= numbers.committed {
                let _ = done.send(Ok(duplicate));
            } else {
                numbers.retries.push((seq, done));
            }
            return Ok(answer(shared, result));
        }
        // Counted until the writer answers it (a duplicate above never reaches it).
        if !shared.queued.take() {
            return Err(Busy(record));
        }
        numbers.seq += 1;
        let seq = numbers.seq;
        if let Some(key) = &record.dedupe {
            numbers
                .dedupe
                .insert(key.clone(), seq, shared.options.dedupe_window);
        }
        // Under the room's numbering lock: the writer receives its records in their order.
        shared.send(Job::Message {
            room: held.clone(),
            generation: numbers.generation,
            seq,
            record,
            done,
        });
        drop(numbers);
        Ok(answer(shared, result))
    }

    fn ready(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.shared.queued.ready())
    }

    fn range(&self, room: &str, from: u64, to: u64, limit: usize) -> EngineFuture<'_, Missed> {
        let room = room.to_owned();
        self.shared.read(move |conn| {
            let (from, to) = (
                from.min(i64::MAX as u64) as i64,
                to.min(i64::MAX as u64) as i64,
            );
            let mut messages: Vec<StoredMessage> = conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM messages
                     WHERE room = ?1 AND seq >= ?2 AND seq < ?3 AND deleted = 0
                     ORDER BY seq DESC LIMIT ?4"
                ))?
                .query_map(params![room, from, to, limit as i64 + 1], message)?
                .collect::<rusqlite::Result<_>>()?;
            let all = messages.len() <= limit;
            messages.truncate(limit);
            messages.reverse();
            // By the index of changes (`+seq` and no ORDER BY keep SQLite from scanning the
            // room's messages by their key instead): sorted here.
            let mut changed: Vec<StoredMessage> = conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM messages
                     WHERE room = ?1 AND changed > 0 AND changed >= ?2 AND changed < ?3
                       AND +seq < ?2"
                ))?
                .query_map(params![room, from, to], message)?
                .collect::<rusqlite::Result<_>>()?;
            changed.sort_unstable_by_key(|m| m.seq);
            // Trimming takes a room's oldest rows (deleted ones stay as rows): the range is
            // whole when its start is still there.
            let first: Option<i64> = conn
                .prepare_cached("SELECT min(seq) FROM messages WHERE room = ?1")?
                .query_row([&room], |row| row.get(0))?;
            let kept = first.is_some_and(|first| first <= from);
            Ok(Missed::new(messages, changed, all && kept))
        })
    }

    fn message(&self, room: &str, seq: u64) -> EngineFuture<'_, Option<StoredMessage>> {
        let room = room.to_owned();
        self.shared.read(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM messages WHERE room = ?1 AND seq = ?2"
            ))?
            .query_row(params![room, seq.min(i64::MAX as u64) as i64], message)
            .optional()
        })
    }

    fn reactors(
        &self,
        room: &str,
        seq: u64,
        after: u64,
        limit: usize,
    ) -> EngineFuture<'_, ReactorsPage> {
        let room = room.to_owned();
        self.shared.read(move |conn| {
            let read: Vec<Reactor> = conn
                .prepare_cached(
                    "SELECT reaction, name, who, at FROM reactions
                     WHERE room = ?1 AND seq = ?2 AND at > ?3 ORDER BY at LIMIT ?4",
                )?
                .query_map(
                    params![
                        room,
                        seq.min(i64::MAX as u64) as i64,
                        after.min(i64::MAX as u64) as i64,
                        limit as i64 + 1
                    ],
                    |row| {
                        Ok(Reactor::new(
                            row.get(0)?,
                            row.get(1)?,
                            row.get(2)?,
                            uint(row, 3)?,
                        ))
                    },
                )?
                .collect::<rusqlite::Result<_>>()?;
            Ok(ReactorsPage::of(read, limit))
        })
    }

    fn reacted_by(
        &self,
        room: &str,
        sender: &str,
        from: u64,
    ) -> EngineFuture<'_, Vec<(u64, String)>> {
        let (room, sender) = (room.to_owned(), sender.to_owned());
        self.shared.read(move |conn| {
            conn.prepare_cached(
                "SELECT seq, reaction FROM reactions WHERE room = ?1 AND who = ?2 AND seq >= ?3
                 ORDER BY seq, at",
            )?
            .query_map(
                params![room, sender, from.min(i64::MAX as u64) as i64],
                |row| Ok((uint(row, 0)?, row.get(1)?)),
            )?
            .collect()
        })
    }

    fn page(&self, room: &str, before: u64, limit: usize) -> EngineFuture<'_, HistoryPage> {
        let room = room.to_owned();
        self.shared.read(move |conn| {
            let mut messages = newest(conn, &room, before, limit + 1)?;
            let more = messages.len() > limit;
            messages.truncate(limit);
            messages.reverse();
            Ok(HistoryPage::new(messages, more))
        })
    }

    fn mark_read(
        &self,
        room: &str,
        reader: &str,
        to: Option<u64>,
    ) -> EngineFuture<'_, (ReadState, bool)> {
        let shared = self.shared.clone();
        let (room, reader) = (Box::<str>::from(room), Box::<str>::from(reader));
        Box::pin(async move {
            // A join reads a mark it has without writing; raising one, or making the
            // first, is the writer's, in order with the reader's own messages.
            if to.is_none() {
                let (r, w) = (room.clone(), reader.clone());
                let known = shared.read(move |conn| read_state(conn, &r, &w)).await?;
                if let Some(state) = known {
                    return Ok((state, false));
                }
            }
            let (done, result) = oneshot::channel();
            shared.send(Job::Read {
                room,
                reader,
                to,
                done,
            });
            answer(&shared, result).await
        })
    }

    fn unread(&self, reader: &str) -> EngineFuture<'_, Vec<(String, ReadState)>> {
        let reader = reader.to_owned();
        self.shared.read(move |conn| {
            let rooms: Vec<String> = conn
                .prepare_cached("SELECT room FROM reads WHERE reader = ?1")?
                .query_map([&reader], |row| row.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let mut states = Vec::with_capacity(rooms.len());
            for room in rooms {
                if let Some(state) = read_state(conn, &room, &reader)? {
                    states.push((room, state));
                }
            }
            Ok(states)
        })
    }

    fn bans(&self) -> EngineFuture<'_, Vec<Ban>> {
        self.shared.read(|conn| {
            conn.prepare("SELECT room, user, until FROM bans WHERE until > ?1")?
                .query_map([now_ms() as i64], |row| {
                    let room: String = row.get(0)?;
                    Ok(Ban::new(
                        (!room.is_empty()).then_some(room),
                        row.get(1)?,
                        uint(row, 2)?,
                    ))
                })?
                .collect()
        })
    }

    fn ban(&self, room: Option<&str>, user: &str, until: Option<u64>) -> EngineFuture<'_, ()> {
        let (done, result) = oneshot::channel();
        self.shared.send(Job::Ban {
            room: room.unwrap_or("").into(),
            user: user.into(),
            until,
            done,
        });
        answer(&self.shared, result)
    }

    /// The engine's key for public sender ids, made with the schema (or its migration to
    /// version 2).
    fn sender_key(&self) -> EngineFuture<'_, Vec<u8>> {
        self.shared.read(|conn| {
            conn.query_row(
                "SELECT value FROM secrets WHERE name = ?1",
                [SENDER_KEY],
                |row| row.get(0),
            )
        })
    }

    fn reachable(&self) -> BoxFuture<'_, Result<(), String>> {
        let failing = self.shared.failing.load(Ordering::Relaxed);
        Box::pin(std::future::ready(if failing {
            Err("the last write to the database failed".into())
        } else {
            Ok(())
        }))
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        let (done, flushed) = oneshot::channel();
        self.shared.send(Job::Flush(done));
        Box::pin(async move {
            let _ = flushed.await;
        })
    }
}

/// What a room's first read brings: its state, and the dedupe keys of its newest messages
/// (newest first); None for a room never stored.
type Stored = Option<(Loaded, Vec<(Box<str>, u64)>)>;

/// Reads room `room`: its head, its newest `tail` messages and its newest `dedupe` keys.
fn load(conn: &Connection, room: &str, tail: usize, dedupe: usize) -> rusqlite::Result<Stored> {
    let head: Option<(u64, u64)> = conn
        .prepare_cached("SELECT epoch, seq FROM rooms WHERE name = ?1")?
        .query_row([room], |row| Ok((uint(row, 0)?, uint(row, 1)?)))
        .optional()?;
    let Some((epoch, seq)) = head else {
        return Ok(None);
    };
    let mut messages = newest(conn, room, u64::MAX, tail)?;
    messages.reverse();
    // The changes since the oldest of them (the newest ones, at most as many as the tail
    // has messages, and at least a few): the hub replays them without asking.
    let from = messages.first().map_or(seq + 1, |m| m.seq);
    let most = tail.max(64);
    let changed: Vec<(u64, StoredMessage)> = conn
        .prepare_cached(&format!(
            "SELECT changed, {COLUMNS} FROM messages
             WHERE room = ?1 AND changed > 0 AND changed >= ?2
             ORDER BY changed DESC LIMIT ?3"
        ))?
        .query_map(params![room, from as i64, most as i64], |row| {
            Ok((uint(row, 0)?, message_at(row, 1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let from = match changed.last() {
        Some((at, _)) if changed.len() == most => *at,
        _ => from,
    };
    let keys = conn
        .prepare_cached(
            // A message stored before version 2 has no dedupe id: its public id is it.
            "SELECT coalesce(dedupe_id, sender), client_id, seq FROM messages
             WHERE room = ?1 AND client_id IS NOT NULL AND sender IS NOT NULL
             ORDER BY seq DESC LIMIT ?2",
        )?
        .query_map(params![room, dedupe as i64], |row| {
            let (dedupe_id, id): (String, String) = (row.get(0)?, row.get(1)?);
            Ok((format!("{dedupe_id}\0{id}").into_boxed_str(), uint(row, 2)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut loaded = Loaded::new(epoch, seq, messages);
    loaded.changes = Some((from, changed));
    Ok(Some((loaded, keys)))
}

/// The columns [`message`] reads.
const COLUMNS: &str = "seq, time, name, sender, text, edited, deleted, reply_seq, reply_from, reply_text, reply_deleted, reactions, mentions";

/// `reader`'s read state in `room`, if it has a mark: the messages after it that are not
/// deleted, and those of them that mention it, up to the room's head.
fn read_state(conn: &Connection, room: &str, reader: &str) -> rusqlite::Result<Option<ReadState>> {
    let Some(mark) = mark_of(conn, room, reader)? else {
        return Ok(None);
    };
    Ok(Some(counted(
        conn,
        room,
        reader,
        mark,
        head_of(conn, room)?,
    )?))
}

/// `reader`'s mark in `room`, if it has one.
fn mark_of(conn: &Connection, room: &str, reader: &str) -> rusqlite::Result<Option<u64>> {
    conn.prepare_cached("SELECT seq FROM reads WHERE reader = ?1 AND room = ?2")?
        .query_row(params![reader, room], |row| uint(row, 0))
        .optional()
}

/// The last number of `room` stored (0 for a room with none).
fn head_of(conn: &Connection, room: &str) -> rusqlite::Result<u64> {
    conn.prepare_cached("SELECT coalesce((SELECT seq FROM rooms WHERE name = ?1), 0)")?
        .query_row([room], |row| uint(row, 0))
}

/// The read state of `reader`, read up to `mark`, in `room` whose head is `head`. A mark at
/// the head (what marking the newest message makes) has nothing after it to count.
fn counted(
    conn: &Connection,
    room: &str,
    reader: &str,
    mark: u64,
    head: u64,
) -> rusqlite::Result<ReadState> {
    if mark >= head {
        return Ok(ReadState::new(mark, 0, 0, head));
    }
    let (from, to) = (mark as i64, head as i64);
    let unread: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM messages
             WHERE room = ?1 AND seq > ?2 AND seq <= ?3 AND deleted = 0",
        )?
        .query_row(params![room, from, to], |row| row.get(0))?;
    let mentions: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM mentions n JOIN messages m ON m.room = n.room AND m.seq = n.seq
             WHERE n.room = ?1 AND n.reader = ?2 AND n.seq > ?3 AND n.seq <= ?4
               AND m.deleted = 0",
        )?
        .query_row(params![room, reader, from, to], |row| row.get(0))?;
    Ok(ReadState::new(
        mark,
        unread.max(0) as u64,
        mentions.max(0) as u64,
        head,
    ))
}

/// Raises `reader`'s mark in `room` to `to` (the head at most), or makes it at the head if
/// it has none (`to` None): its read state after, and whether the mark moved.
fn mark(
    tx: &rusqlite::Transaction<'_>,
    room: &str,
    reader: &str,
    to: Option<u64>,
) -> rusqlite::Result<(ReadState, bool)> {
    let head = head_of(tx, room)?;
    let now = now_ms() as i64;
    let moved = match to {
        None => tx
            .prepare_cached(
                "INSERT OR IGNORE INTO reads (reader, room, seq, touched) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![reader, room, head as i64, now])?,
        Some(to) => tx
            .prepare_cached(
                "INSERT INTO reads (reader, room, seq, touched) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (reader, room) DO UPDATE SET seq = excluded.seq,
                                                          touched = excluded.touched
                 WHERE excluded.seq > reads.seq",
            )?
            .execute(params![reader, room, to.min(head) as i64, now])?,
    };
    let mark = mark_of(tx, room, reader)?.unwrap_or(head);
    Ok((counted(tx, room, reader, mark, head)?, moved > 0))
}

/// The newest `limit` messages of `room` below `before` (deleted ones left out), newest
/// first.
fn newest(
    conn: &Connection,
    room: &str,
    before: u64,
    limit: usize,
) -> rusqlite::Result<Vec<StoredMessage>> {
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM messages
         WHERE room = ?1 AND seq < ?2 AND deleted = 0 ORDER BY seq DESC LIMIT ?3"
    ))?
    .query_map(
        params![room, before.min(i64::MAX as u64) as i64, limit as i64],
        message,
    )?
    .collect()
}

/// SQLite integers are signed; sequence numbers, epochs and times are far below 2^63.
fn uint(row: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<u64> {
    row.get::<_, i64>(at).map(|v| v.max(0) as u64)
}

fn message(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredMessage> {
    message_at(row, 0)
}

/// The [`COLUMNS`] of a message, from column `at` on.
fn message_at(row: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<StoredMessage> {
    let mut message = StoredMessage::new(
        uint(row, at)?,
        uint(row, at + 1)?,
        row.get(at + 2)?,
        row.get(at + 3)?,
        row.get(at + 4)?,
    );
    message.edited = row.get::<_, Option<i64>>(at + 5)?.map(|t| t.max(0) as u64);
    message.deleted = row.get(at + 6)?;
    if let Some(seq) = row.get::<_, Option<i64>>(at + 7)? {
        let (from, text): (Option<String>, Option<String>) = (row.get(at + 8)?, row.get(at + 9)?);
        let quote = Quote::new(
            seq.max(0) as u64,
            from.unwrap_or_default(),
            &text.unwrap_or_default(),
        );
        let deleted: bool = row.get(at + 10)?;
        message.reply = Some(if deleted { quote.of_deleted() } else { quote });
    }
    message.reactions = counts(row.get(at + 11)?);
    message.mentions = row
        .get::<_, Option<String>>(at + 12)?
        .and_then(|json| serde_json::from_str(&json).ok())
        .unwrap_or_default();
    Ok(message)
}

/// A message's reaction counts as its `reactions` column holds them.
fn counts(column: Option<String>) -> Vec<ReactionCount> {
    let pairs: Vec<(String, u32)> = column
        .and_then(|json| serde_json::from_str(&json).ok())
        .unwrap_or_default();
    pairs
        .into_iter()
        .map(|(reaction, count)| ReactionCount::new(reaction, count))
        .collect()
}

/// Reaction counts as the `reactions` column holds them (NULL for none).
fn counts_column(counts: &[ReactionCount]) -> Option<String> {
    let pairs: Vec<(&str, u32)> = counts.iter().map(|c| (&*c.reaction, c.count)).collect();
    (!pairs.is_empty()).then(|| serde_json::to_string(&pairs).expect("serializable"))
}

/// Applies reaction `record` (numbered `at`) in the writer's transaction: checks it against
/// the message and `limits`, and writes the reaction and the message's new counts.
fn react(
    tx: &rusqlite::Transaction<'_>,
    room: &str,
    at: u64,
    record: &Record,
    limits: ReactionLimits,
) -> rusqlite::Result<Reacted> {
    let target = record.target as i64;
    let found: Option<(bool, Option<String>)> = tx
        .prepare_cached("SELECT deleted, reactions FROM messages WHERE room = ?1 AND seq = ?2")?
        .query_row(params![room, target], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let (column, who, reaction) = match found {
        None => return Ok(Reacted::Gone { deleted: false }),
        Some((true, _)) => return Ok(Reacted::Gone { deleted: true }),
        Some((false, column)) => (
            column,
            record.sender.as_deref().unwrap_or(""),
            &*record.text,
        ),
    };
    let mut counts = counts(column);
    let mut mine: Vec<String> = tx
        .prepare_cached(
            "SELECT reaction FROM reactions WHERE room = ?1 AND seq = ?2 AND who = ?3 ORDER BY at",
        )?
        .query_map(params![room, target, who], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let decision = Decision::of(record.kind, reaction, &counts, &mine, limits);
    match decision {
        Decision::TooMany => return Ok(Reacted::TooMany),
        Decision::Add => {
            tx.prepare_cached(
                "INSERT INTO reactions (room, seq, who, reaction, name, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                room,
                target,
                who,
                reaction,
                &*record.from,
                at as i64
            ])?;
        }
        Decision::Remove => {
            tx.prepare_cached(
                "DELETE FROM reactions WHERE room = ?1 AND seq = ?2 AND who = ?3 AND reaction = ?4",
            )?
            .execute(params![room, target, who, reaction])?;
        }
        Decision::Nothing => {}
    }
    let changed = decision.apply(reaction, &mut counts, &mut mine);
    if changed {
        tx.prepare_cached(
            "UPDATE messages SET reactions = ?3, changed = ?4 WHERE room = ?1 AND seq = ?2",
        )?
        .execute(params![room, target, counts_column(&counts), at as i64])?;
    }
    Ok(Reacted::Counts {
        counts,
        mine,
        changed,
    })
}

enum Setup {
    Sql(rusqlite::Error),
    Refused(String),
}

impl From<rusqlite::Error> for Setup {
    fn from(e: rusqlite::Error) -> Setup {
        Setup::Sql(e)
    }
}

/// Sets the writer's connection up: WAL, full sync, the schema (created, migrated or
/// checked), and one real write, so that a file that cannot be written fails now and not at
/// the first message.
fn setup(conn: &Connection) -> Result<(), Setup> {
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Setup::Refused(format!(
            "cannot use write-ahead logging (journal mode is {mode})"
        )));
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    let app: i64 = conn.query_row("PRAGMA application_id", [], |row| row.get(0))?;
    let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_schema", [], |row| row.get(0))?;
    // One transaction: a file is created or migrated whole, or not at all.
    let tx = conn.unchecked_transaction()?;
    let from = match version {
        0 if tables == 0 && app == 0 => {
            tx.execute_batch(SCHEMA)?;
            tx.pragma_update(None, "application_id", APPLICATION_ID)?;
            1
        }
        v if app == APPLICATION_ID && (1..=SCHEMA_VERSION).contains(&v) => v,
        v if app == APPLICATION_ID && v > SCHEMA_VERSION => {
            return Err(Setup::Refused(format!(
                "it was written by a newer wtchat (schema {v}; this one knows {SCHEMA_VERSION})"
            )));
        }
        _ => {
            return Err(Setup::Refused(
                "it is an SQLite database, but not one of wtchat's".into(),
            ));
        }
    };
    for migration in &MIGRATIONS[(from - 1) as usize..] {
        tx.execute_batch(migration)?;
    }
    // Made on the first start, kept for good: the ids it makes are shown in history.
    tx.execute(
        "INSERT OR IGNORE INTO secrets (name, value) VALUES (?1, ?2)",
        params![SENDER_KEY, &random_bytes::<32>()[..]],
    )?;
    // Also the probe write: a read-only file or disk fails here.
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}

/// The writer thread's state.
struct Writer {
    conn: Connection,
    /// Weak: the writer stops once the engine is dropped (its job channel closes).
    shared: std::sync::Weak<Shared>,
    path: PathBuf,
    retention: super::Retention,
    reactions: ReactionLimits,
    /// Where committed records are handed to their rooms: on the runtime's workers, so
    /// that fanning them out to members neither waits for nor delays the next commit, and
    /// rooms deliver in parallel.
    runtime: tokio::runtime::Handle,
    stats: EngineStats,
    /// Bytes of messages written since the stored-bytes budget was last checked (about:
    /// their texts and names); checked again past a sixty-fourth of the budget.
    unchecked: u64,
    /// Messages went by age or by the budget since their reactions were last dropped.
    orphaned: bool,
}

/// What a job came to in the transaction, beyond being written.
#[derive(Clone)]
enum Outcome {
    None,
    /// A reaction: what it did.
    Reacted(Reacted),
    /// A read mark: the reader's state after it, and whether it moved.
    Read((ReadState, bool)),
}

/// One room's messages in one transaction: the first and last sequence numbers.
struct Progress {
    room: Arc<Held>,
    generation: u64,
    first: u64,
    last: u64,
}

impl Writer {
    fn run(mut self, queue: mpsc::Receiver<Job>) {
        let mut batch = Vec::new();
        let every = SWEEP_EVERY
            .min(Duration::from_millis(self.retention.age_ms / 4))
            .max(Duration::from_secs(1));
        let mut swept = Instant::now();
        self.sweep();
        self.keep_stored_budget();
        loop {
            match queue.recv_timeout(every.saturating_sub(swept.elapsed())) {
                Ok(job) => batch.push(job),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                self.commit(&mut batch);
            }
            if swept.elapsed() >= every {
                self.sweep();
                swept = Instant::now();
            }
            if self.unchecked >= (self.retention.bytes / 64).max(1) {
                self.keep_stored_budget();
            }
        }
    }

    /// Writes `batch` in one transaction, then reports to everyone waiting on it.
    fn commit(&mut self, batch: &mut Vec<Job>) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        // Messages numbered before their room's last failure are not the room's any more.
        let (stale, kept): (Vec<Job>, Vec<Job>) = batch.drain(..).partition(|job| {
            matches!(job, Job::Message { room, generation, .. }
                if *generation != room.numbers.lock().unwrap().generation)
        });
        *batch = kept;
        let dropped = stale.len();
        for job in stale {
            if let Job::Message { done, .. } = job {
                let _ = done.send(Err(StorageError::new(
                    "the message could not be stored: an earlier message of its room failed",
                )));
            }
        }
        let mut progress: Vec<Progress> = Vec::new();
        let mut index: HashMap<*const Held, usize> = HashMap::new();
        for job in batch.iter() {
            if let Job::Message {
                room,
                generation,
                seq,
                ..
            } = job
            {
                let at = *index.entry(Arc::as_ptr(room)).or_insert_with(|| {
                    progress.push(Progress {
                        room: room.clone(),
                        generation: *generation,
                        first: *seq,
                        last: 0,
                    });
                    progress.len() - 1
                });
                progress[at].last = *seq;
            }
        }
        let started = Instant::now();
        let written = self.write(batch, &progress);
        self.stats.wrote(started.elapsed(), written.is_ok());
        let (written, mut outcomes) = match written {
            Ok(outcomes) => (Ok(()), outcomes),
            Err(e) => (Err(e), Vec::new()),
        };
        shared.failing.store(written.is_err(), Ordering::Relaxed);
        let messages = batch
            .iter()
            .filter(|job| matches!(job, Job::Message { .. }))
            .count();
        match written {
            Ok(()) => {
                for (job, outcome) in batch.drain(..).zip(outcomes.drain(..)) {
                    match job {
                        Job::Message {
                            room,
                            seq,
                            record,
                            done,
                            ..
                        } => {
                            let position = Position {
                                epoch: room.epoch,
                                seq,
                            };
                            // About a row's size: its text and name, and its key and
                            // numbers.
                            self.unchecked +=
                                (record.text.len() + record.from.len() + room.name.len() + 32)
                                    as u64;
                            let _ = done.send(Ok(Appended::Stored(position)));
                            let mut numbered = Numbered::new(seq, 0, record);
                            if let Outcome::Reacted(reacted) = outcome {
                                numbered.reacted = Some(reacted);
                            }
                            room.outgoing.lock().unwrap().push_back(numbered);
                        }
                        Job::Ban { done, .. } => drop(done.send(Ok(()))),
                        Job::Read { done, .. } => {
                            let read = match outcome {
                                Outcome::Read(read) => read,
                                _ => (ReadState::default(), false),
                            };
                            let _ = done.send(Ok(read));
                        }
                        Job::Flush(done) => drop(done.send(())),
                    }
                }
                for p in progress {
                    p.room.committed(p.last);
                    // Out of order is fine: each hand-over takes whatever is committed.
                    self.runtime.spawn(async move { p.room.hand_over() });
                }
            }
            Err(e) => {
                let error = describe(&self.path, &e);
                tracing::error!(%error, "could not store messages; their senders are told");
                for p in &progress {
                    p.room.failed(p.generation, p.first, &error);
                }
                for job in batch.drain(..) {
                    match job {
                        Job::Message { done, .. } => drop(done.send(Err(error.clone()))),
                        Job::Ban { done, .. } => drop(done.send(Err(error.clone()))),
                        Job::Read { done, .. } => drop(done.send(Err(error.clone()))),
                        Job::Flush(done) => drop(done.send(())),
                    }
                }
            }
        }
        shared.queued.answered(messages + dropped);
    }

    /// The transaction itself: messages inserted, changes applied to their messages (an
    /// edit of a deleted message changes nothing), bans, each room's head. What each
    /// reaction came to, by job.
    fn write(&mut self, batch: &[Job], progress: &[Progress]) -> rusqlite::Result<Vec<Outcome>> {
        let tx = self.conn.transaction()?;
        let mut outcomes = vec![Outcome::None; batch.len()];
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO messages (room, seq, time, name, sender, dedupe_id, client_id, text,
                                       reply_seq, reply_from, reply_text, mentions)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?;
            let mut mention = tx.prepare_cached(
                "INSERT OR IGNORE INTO mentions (room, reader, seq) VALUES (?1, ?2, ?3)",
            )?;
            // A member's own message is read: its mark moves past it.
            let mut own = tx.prepare_cached(
                "INSERT INTO reads (reader, room, seq, touched) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (reader, room) DO UPDATE SET seq = excluded.seq,
                                                          touched = excluded.touched
                 WHERE excluded.seq > reads.seq",
            )?;
            for (at, job) in batch.iter().enumerate() {
                match job {
                    Job::Message {
                        room, seq, record, ..
                    } if record.kind.is_reaction() => {
                        let limits = self.reactions;
                        let reacted = react(&tx, &room.name, *seq, record, limits)?;
                        outcomes[at] = Outcome::Reacted(reacted);
                    }
                    Job::Message {
                        room, seq, record, ..
                    } if record.kind == RecordKind::Edit => {
                        tx.prepare_cached(
                            "UPDATE messages SET text = ?3, edited = ?4, changed = ?5
                             WHERE room = ?1 AND seq = ?2 AND deleted = 0",
                        )?
                        .execute(params![
                            &*room.name,
                            record.target as i64,
                            &*record.text,
                            record.time as i64,
                            *seq as i64,
                        ])?;
                    }
                    Job::Message {
                        room, seq, record, ..
                    } if record.kind == RecordKind::Delete => {
                        tx.prepare_cached(
                            "UPDATE messages SET text = '', edited = NULL, deleted = 1, changed = ?3,
                                                 reactions = NULL
                             WHERE room = ?1 AND seq = ?2 AND deleted = 0",
                        )?
                        .execute(params![&*room.name, record.target as i64, *seq as i64])?;
                        tx.prepare_cached("DELETE FROM reactions WHERE room = ?1 AND seq = ?2")?
                            .execute(params![&*room.name, record.target as i64])?;
                        tx.prepare_cached(
                            "UPDATE messages SET reply_text = '', reply_deleted = 1
                             WHERE room = ?1 AND reply_seq = ?2",
                        )?
                        .execute(params![&*room.name, record.target as i64])?;
                    }
                    Job::Message {
                        room, seq, record, ..
                    } => {
                        let (dedupe_id, client_id) = record.dedupe_parts().unzip();
                        let reply = record.reply.as_deref();
                        let mentions = (!record.mentions.is_empty()).then(|| {
                            let ids: Vec<&str> = record.mentions.iter().map(|m| &**m).collect();
                            serde_json::to_string(&ids).expect("strings serialize")
                        });
                        insert.execute(params![
                            &*room.name,
                            *seq as i64,
                            record.time as i64,
                            &*record.from,
                            record.sender.as_deref(),
                            dedupe_id,
                            client_id,
                            &*record.text,
                            reply.map(|q| q.seq as i64),
                            reply.map(|q| q.from.as_str()),
                            reply.map(|q| q.text.as_str()),
                            mentions,
                        ])?;
                        for reader in &record.mentions {
                            mention.execute(params![&*room.name, &**reader, *seq as i64])?;
                        }
                        if let Some(sender) = &record.sender {
                            let at = record.time as i64;
                            own.execute(params![&**sender, &*room.name, *seq as i64, at])?;
                        }
                    }
                    Job::Ban {
                        room,
                        user,
                        until: Some(until),
                        ..
                    } => {
                        tx.prepare_cached(
                            "INSERT OR REPLACE INTO bans (room, user, until) VALUES (?1, ?2, ?3)",
                        )?
                        .execute(params![
                            &**room,
                            &**user,
                            *until as i64
                        ])?;
                    }
                    Job::Ban {
                        room,
                        user,
                        until: None,
                        ..
                    } => {
                        tx.prepare_cached("DELETE FROM bans WHERE room = ?1 AND user = ?2")?
                            .execute(params![&**room, &**user])?;
                    }
                    Job::Read { .. } | Job::Flush(_) => {}
                }
            }
            let mut head = tx.prepare_cached(
                "INSERT INTO rooms (name, epoch, seq, active) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO UPDATE SET seq = excluded.seq, active = excluded.active",
            )?;
            let now = now_ms() as i64;
            // Messages count, not numbers: a burst of reactions or edits never pushes
            // messages out. The newest `retention.messages` stay (deleted ones count).
            let mut cutoff = tx.prepare_cached(
                "SELECT seq FROM messages WHERE room = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2",
            )?;
            let mut trim =
                tx.prepare_cached("DELETE FROM messages WHERE room = ?1 AND seq <= ?2")?;
            let mut trim_reactions =
                tx.prepare_cached("DELETE FROM reactions WHERE room = ?1 AND seq <= ?2")?;
            let mut trim_mentions =
                tx.prepare_cached("DELETE FROM mentions WHERE room = ?1 AND seq <= ?2")?;
            for p in progress {
                head.execute(params![
                    &*p.room.name,
                    p.room.epoch as i64,
                    p.last as i64,
                    now
                ])?;
                // Counting a room's rows takes a walk over them: done when a commit crosses
                // a multiple of a sixteenth of the retention (a room keeps up to that many
                // more messages).
                let every = (self.retention.messages / 16).max(1);
                if p.last <= self.retention.messages || (p.first - 1) / every == p.last / every {
                    continue;
                }
                let last_kept: Option<i64> = cutoff
                    .query_row(
                        params![&*p.room.name, self.retention.messages as i64],
                        |row| row.get(0),
                    )
                    .optional()?;
                if let Some(cut) = last_kept {
                    trim.execute(params![&*p.room.name, cut])?;
                    trim_reactions.execute(params![&*p.room.name, cut])?;
                    trim_mentions.execute(params![&*p.room.name, cut])?;
                }
            }
        }
        // Marks last: against the heads this transaction wrote.
        for (at, job) in batch.iter().enumerate() {
            if let Job::Read {
                room, reader, to, ..
            } = job
            {
                outcomes[at] = Outcome::Read(mark(&tx, room, reader, *to)?);
            }
        }
        tx.commit()?;
        Ok(outcomes)
    }

    /// Deletes messages past their age and bans past their time.
    fn sweep(&mut self) {
        let now = now_ms();
        let cutoff = now.saturating_sub(self.retention.age_ms);
        let swept = (|| -> rusqlite::Result<()> {
            let conn = &self.conn;
            if conn.execute("DELETE FROM messages WHERE time < ?1", [cutoff as i64])? > 0 {
                self.orphaned = true;
            }
            conn.execute("DELETE FROM bans WHERE until <= ?1", [now as i64])?;
            // Marks that have not moved for the retention age and have nothing unread after
            // them (what was after them is gone by age too): each anonymous visitor leaves
            // one per room it joined, and a mark made again at the next join loses nothing.
            conn.execute(
                "DELETE FROM reads WHERE touched < ?1 AND NOT EXISTS (SELECT 1 FROM messages m
                     WHERE m.room = reads.room AND m.seq > reads.seq AND m.deleted = 0)",
                [cutoff as i64],
            )?;
            // The reactions of the messages gone by age or by the stored-bytes budget: a
            // walk over every reaction, so only when some went.
            if self.orphaned {
                conn.execute(
                    "DELETE FROM reactions WHERE NOT EXISTS (SELECT 1 FROM messages m
                         WHERE m.room = reactions.room AND m.seq = reactions.seq)",
                    [],
                )?;
                conn.execute(
                    "DELETE FROM mentions WHERE NOT EXISTS (SELECT 1 FROM messages m
                         WHERE m.room = mentions.room AND m.seq = mentions.seq)",
                    [],
                )?;
                self.orphaned = false;
            }
            Ok(())
        })();
        if let Err(e) = swept {
            tracing::warn!(error = %describe(&self.path, &e), "could not sweep old history");
        }
    }

    /// Keeps the stored messages within `retention.bytes`: past it, the least recently
    /// active rooms lose their oldest messages first (a room's newest are the last to go),
    /// down to fifteen sixteenths of it so that this runs once per many messages. What is
    /// measured is the database's pages in use (freed pages are reused, so the file stops
    /// growing; it does not shrink). Anyone may create rooms and fill them, within the
    /// per-address budgets: this bounds the disk they can take, whatever their number.
    fn keep_stored_budget(&mut self) {
        self.unchecked = 0;
        let budget = self.retention.bytes;
        let kept = (|| -> rusqlite::Result<u64> {
            let mut shed = 0;
            if self.stored_bytes()? <= budget {
                return Ok(0);
            }
            let target = budget / 16 * 15;
            let mut oldest = self.conn.prepare_cached(
                "SELECT name FROM rooms
                 WHERE EXISTS (SELECT 1 FROM messages WHERE room = rooms.name)
                 ORDER BY active, name LIMIT 1",
            )?;
            // The room's oldest messages whose rows hold about `?2` bytes (at least one, at
            // most SHED_ROWS): a small budget is not overshot by a whole room.
            let mut delete = self.conn.prepare_cached(
                "WITH oldest AS (
                     SELECT seq, sum(length(text) + length(name) + 64) OVER (ORDER BY seq) AS upto
                     FROM messages WHERE room = ?1 ORDER BY seq LIMIT ?3)
                 DELETE FROM messages WHERE room = ?1 AND seq <= coalesce(
                     (SELECT min(seq) FROM oldest WHERE upto >= ?2),
                     (SELECT max(seq) FROM oldest))",
            )?;
            loop {
                let used = self.stored_bytes()?;
                if used <= target {
                    break;
                }
                let room: Option<String> = oldest.query_row([], |row| row.get(0)).optional()?;
                let Some(room) = room else { break };
                let excess = (used - target) as i64;
                shed += delete.execute(params![room, excess, SHED_ROWS])? as u64;
            }
            Ok(shed)
        })();
        self.orphaned |= kept.as_ref().is_ok_and(|shed| *shed > 0);
        match kept {
            Ok(0) => {}
            Ok(shed) => tracing::info!(
                shed,
                budget,
                "stored messages reached retention_bytes: the least recently active rooms \
                 lost their oldest messages"
            ),
            Err(e) => tracing::warn!(
                error = %describe(&self.path, &e),
                "could not keep the stored messages within retention_bytes"
            ),
        }
    }

    /// The bytes of the database's pages in use.
    fn stored_bytes(&self) -> rusqlite::Result<u64> {
        self.conn.query_row(
            "SELECT (page_count - freelist_count) * page_size
             FROM pragma_page_count(), pragma_freelist_count(), pragma_page_size()",
            [],
            |row| uint(row, 0),
        )
    }
}

impl Held {
    /// The room's records up to `seq` are committed: the retries waiting for them are
    /// answered.
    fn committed(&self, seq: u64) {
        let mut numbers = self.numbers.lock().unwrap();
        numbers.committed = numbers.committed.max(seq);
        let epoch = self.epoch;
        let (due, later) = std::mem::take(&mut numbers.retries)
            .into_iter()
            .partition(|(s, _)| *s <= seq);
        numbers.retries = later;
        for (s, done) in due {
            let _ = done.send(Ok(Appended::Duplicate(Position { epoch, seq: s })));
        }
    }

    /// The room's records from `first` on (of `generation`) could not be stored: numbering
    /// resumes at `first`, their keys are forgotten, and the retries of them fail.
    fn failed(&self, generation: u64, first: u64, error: &StorageError) {
        let mut numbers = self.numbers.lock().unwrap();
        if generation != numbers.generation {
            return;
        }
        numbers.generation += 1;
        numbers.seq = first - 1;
        numbers.dedupe.forget_from(first);
        let (failed, kept) = std::mem::take(&mut numbers.retries)
            .into_iter()
            .partition(|(s, _)| *s >= first);
        numbers.retries = kept;
        for (_, done) in failed {
            let _ = done.send(Err(error.clone()));
        }
    }

    /// Hands the committed records to the room's sink, in order.
    fn hand_over(&self) {
        let _one = self.handing.lock().unwrap();
        let records: Vec<RoomEvent> = self
            .outgoing
            .lock()
            .unwrap()
            .drain(..)
            .map(RoomEvent::Record)
            .collect();
        if !records.is_empty() {
            self.sink.receive(records);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counted(Mutex<Vec<u64>>);

    impl RoomSink for Counted {
        fn receive(&self, events: Vec<RoomEvent>) {
            let mut seen = self.0.lock().unwrap();
            for event in events {
                if let RoomEvent::Record(r) = event {
                    seen.push(r.seq);
                }
            }
        }
        fn members_here(&self) -> Vec<super::super::MemberInfo> {
            Vec::new()
        }
    }

    fn options() -> Options {
        Options::for_tests(100)
    }

    /// A disk that stalls (here: another process holding the write lock) fills the
    /// writer's queue; past `MAX_QUEUED` appends are busy, and `ready` resolves once the
    /// writer took them: memory stays flat, and every message is stored once, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_writer_makes_appends_busy_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.db");
        let db = Sqlite::open(&path, options(), EngineStats::default())
            .await
            .unwrap();
        let sink = Arc::new(Counted(Mutex::new(Vec::new())));
        db.attach("r", sink.clone(), 10).await.unwrap();
        // Another connection takes the write lock: the writer waits on it (busy timeout).
        let blocker = Connection::open(&path).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let mut appends = Vec::new();
        let mut busy = 0;
        let mut n = 0;
        while busy == 0 {
            n += 1;
            match db.append("r", Record::new(1, "ann", format!("m{n}"))) {
                Ok(appending) => appends.push(appending),
                Err(Busy(_)) => busy += 1,
            }
        }
        assert_eq!(appends.len(), MAX_QUEUED, "busy exactly at the bound");
        let ready = tokio::spawn(async move {
            db.ready().await;
            db
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !ready.is_finished(),
            "ready waits while the writer is stalled"
        );
        blocker.execute_batch("COMMIT").unwrap();
        let db = ready.await.unwrap();
        for appending in appends {
            assert!(matches!(appending.await, Ok(Appended::Stored(_))));
        }
        db.flush().await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while sink.0.lock().unwrap().len() < MAX_QUEUED && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let seen = sink.0.lock().unwrap().clone();
        assert_eq!(seen, (1..=MAX_QUEUED as u64).collect::<Vec<_>>());
    }
}
