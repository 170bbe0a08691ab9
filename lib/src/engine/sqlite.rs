//! The SQLite engine: rooms in one database file, durable before they are delivered.
//!
//! One writer thread owns the only connection that writes. Rooms hand it numbered messages
//! through a channel; it takes everything queued, writes it in one transaction, commits, and
//! then tells each room the last sequence number committed — the room delivers and
//! acknowledges up to there. Messages that arrive while a commit runs wait for the next one:
//! group commit, so that a commit's cost is shared by every message in it and durability
//! costs latency (about one commit), not throughput.
//!
//! The database is in WAL mode with `synchronous = FULL`: a commit returns once the WAL is
//! on disk (fsync), so an acknowledged message survives a crash of the process *and* a power
//! loss or kernel panic. Reads (room loads, resumes from older history, history pages) use
//! their own connections and never wait for the writer.
//!
//! If a commit fails (the disk is full, the file became read-only or corrupt), its messages
//! were never delivered nor acknowledged: each room rewinds its numbering to the last
//! committed message and tells the senders `storage_failed`; a retry with the same client
//! id is safe. Messages already queued behind the failed ones belong to the room's old
//! numbering and are dropped (a room's `generation` tells them apart).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode as SqlCode, OpenFlags, OptionalExtension, params};
use tokio::sync::oneshot;

use super::{Ban, HistoryPage, LoadedRoom, Record, Retention, StorageError, StoredMessage};
use crate::auth::random_bytes;
use crate::hub::{Room, now_ms};
use crate::metrics::EngineStats;

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
const MIGRATIONS: [&str; 1] = [
    // 2: public sender ids are keyed (see `crate::hub::sender`): the engine's key, and each
    // message's dedupe id beside its public id. Messages of version 1 have none: their
    // public id was their dedupe id.
    "ALTER TABLE messages ADD COLUMN dedupe_id TEXT;
     CREATE TABLE secrets (
         name  TEXT PRIMARY KEY,
         value BLOB NOT NULL
     ) WITHOUT ROWID;",
];

/// The name of the engine's key for public sender ids in table `secrets`.
const SENDER_KEY: &str = "sender ids";

/// One open database.
#[derive(Debug)]
pub(crate) struct Sqlite {
    path: PathBuf,
    jobs: mpsc::Sender<Job>,
    /// Connections for reading, reused.
    readers: Mutex<Vec<Connection>>,
    /// Held open with an exclusive lock for as long as this process serves the file: a
    /// second wtchat on the same file would hand out the same sequence numbers.
    _lock: File,
}

enum Job {
    Message {
        room: Arc<Room>,
        generation: u64,
        record: Record,
    },
    Delete {
        room: Box<str>,
        seq: u64,
        done: oneshot::Sender<Result<bool, StorageError>>,
    },
    Ban {
        room: Box<str>,
        user: Box<str>,
        until: Option<u64>,
        done: oneshot::Sender<Result<(), StorageError>>,
    },
    Flush(oneshot::Sender<()>),
}

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

impl Sqlite {
    /// Opens (creating it if needed) the database at `path`, checks that it is a wtchat
    /// database this release can use and that it can be written, and starts its writer.
    pub(crate) fn open(
        path: &Path,
        retention: Retention,
        stats: EngineStats,
    ) -> Result<Sqlite, StorageError> {
        let refuse =
            |what: String| StorageError::new(format!("database {}: {what}", path.display()));
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| refuse(format!("cannot open or create it: {e}")))?;
        lock.try_lock().map_err(|_| {
            refuse("another process is serving it (one wtchat per database file)".into())
        })?;
        let conn = Connection::open(path).map_err(|e| describe(path, &e))?;
        setup(&conn).map_err(|e| match e {
            Setup::Sql(e) => describe(path, &e),
            Setup::Refused(what) => refuse(what),
        })?;
        let (jobs, queue) = mpsc::channel();
        let writer = Writer {
            conn,
            path: path.to_path_buf(),
            retention,
            runtime: tokio::runtime::Handle::try_current().ok(),
            stats,
        };
        std::thread::Builder::new()
            .name("wtchat-sqlite".into())
            .spawn(move || writer.run(queue))
            .map_err(|e| refuse(format!("cannot start its writer thread: {e}")))?;
        Ok(Sqlite {
            path: path.to_path_buf(),
            jobs,
            readers: Mutex::new(Vec::new()),
            _lock: lock,
        })
    }

    fn send(&self, job: Job) {
        // The writer lives as long as this sender: it cannot have gone.
        let _ = self.jobs.send(job);
    }

    pub(crate) fn append(&self, room: Arc<Room>, generation: u64, record: Record) {
        self.send(Job::Message {
            room,
            generation,
            record,
        });
    }

    pub(crate) async fn delete(&self, room: &str, seq: u64) -> Result<bool, StorageError> {
        let (done, result) = oneshot::channel();
        self.send(Job::Delete {
            room: room.into(),
            seq,
            done,
        });
        result.await.unwrap_or_else(|_| Err(self.gone()))
    }

    pub(crate) async fn ban(
        &self,
        room: Option<&str>,
        user: &str,
        until: Option<u64>,
    ) -> Result<(), StorageError> {
        let (done, result) = oneshot::channel();
        self.send(Job::Ban {
            room: room.unwrap_or("").into(),
            user: user.into(),
            until,
            done,
        });
        result.await.unwrap_or_else(|_| Err(self.gone()))
    }

    pub(crate) async fn flush(&self) {
        let (done, flushed) = oneshot::channel();
        self.send(Job::Flush(done));
        let _ = flushed.await;
    }

    fn gone(&self) -> StorageError {
        StorageError::new(format!(
            "database {}: its writer stopped",
            self.path.display()
        ))
    }

    /// Runs `read` on a reading connection.
    fn read<T>(
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

    pub(crate) fn load(
        &self,
        room: &str,
        tail: usize,
        dedupe: usize,
    ) -> Result<Option<LoadedRoom>, StorageError> {
        self.read(|conn| {
            let head: Option<(u64, u64)> = conn
                .prepare_cached("SELECT epoch, seq FROM rooms WHERE name = ?1")?
                .query_row([room], |row| Ok((uint(row, 0)?, uint(row, 1)?)))
                .optional()?;
            let Some((epoch, seq)) = head else {
                return Ok(None);
            };
            let mut tail = newest(conn, room, u64::MAX, tail)?;
            tail.reverse();
            // A message stored before version 2 has no dedupe id: its public id is it.
            let dedupe = conn
                .prepare_cached(
                    "SELECT coalesce(dedupe_id, sender), client_id, seq FROM messages
                     WHERE room = ?1 AND client_id IS NOT NULL AND sender IS NOT NULL
                     ORDER BY seq DESC LIMIT ?2",
                )?
                .query_map(params![room, dedupe as i64], |row| {
                    Ok((row.get(0)?, row.get(1)?, uint(row, 2)?))
                })?
                .collect::<rusqlite::Result<_>>()?;
            Ok(Some(LoadedRoom {
                epoch,
                seq,
                tail,
                dedupe,
                members: Vec::new(),
            }))
        })
    }

    pub(crate) fn range(
        &self,
        room: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<StoredMessage>, StorageError> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT seq, time, name, sender, text FROM messages
                 WHERE room = ?1 AND seq >= ?2 AND seq < ?3 ORDER BY seq",
            )?
            .query_map(params![room, from as i64, to as i64], message)?
            .collect()
        })
    }

    pub(crate) fn page(
        &self,
        room: &str,
        before: u64,
        limit: usize,
    ) -> Result<HistoryPage, StorageError> {
        self.read(|conn| {
            let mut messages = newest(conn, room, before, limit + 1)?;
            let more = messages.len() > limit;
            messages.truncate(limit);
            messages.reverse();
            Ok(HistoryPage { messages, more })
        })
    }

    /// The engine's key for public sender ids (see [`Store::sender_key`]), made with the
    /// schema (or its migration to version 2).
    ///
    /// [`Store::sender_key`]: super::Store::sender_key
    pub(crate) fn sender_key(&self) -> Result<Vec<u8>, StorageError> {
        self.read(|conn| {
            conn.query_row(
                "SELECT value FROM secrets WHERE name = ?1",
                [SENDER_KEY],
                |row| row.get(0),
            )
        })
    }

    pub(crate) fn bans(&self) -> Result<Vec<Ban>, StorageError> {
        self.read(|conn| {
            conn.prepare("SELECT room, user, until FROM bans WHERE until > ?1")?
                .query_map([now_ms() as i64], |row| {
                    let room: String = row.get(0)?;
                    Ok(Ban {
                        room: (!room.is_empty()).then_some(room),
                        user: row.get(1)?,
                        until: uint(row, 2)?,
                    })
                })?
                .collect()
        })
    }
}

/// The newest `limit` messages of `room` below `before`, newest first.
fn newest(
    conn: &Connection,
    room: &str,
    before: u64,
    limit: usize,
) -> rusqlite::Result<Vec<StoredMessage>> {
    conn.prepare_cached(
        "SELECT seq, time, name, sender, text FROM messages
         WHERE room = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3",
    )?
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
    Ok(StoredMessage {
        seq: uint(row, 0)?,
        time: uint(row, 1)?,
        from: row.get(2)?,
        sender: row.get(3)?,
        text: row.get(4)?,
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
    path: PathBuf,
    retention: Retention,
    /// Where committed messages are delivered: on the runtime's workers, so that fanning
    /// them out to members neither waits for nor delays the next commit, and rooms deliver
    /// in parallel. (The writer itself delivers when opened outside a runtime.)
    runtime: Option<tokio::runtime::Handle>,
    stats: EngineStats,
}

/// One room's messages in one transaction: the first and last sequence numbers.
struct Progress {
    room: Arc<Room>,
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
        }
    }

    /// Writes `batch` in one transaction, then reports to everyone waiting on it.
    fn commit(&mut self, batch: &mut Vec<Job>) {
        // Messages numbered before their room's last failure are not the room's any more.
        batch.retain(|job| match job {
            Job::Message {
                room, generation, ..
            } => *generation == room.generation(),
            _ => true,
        });
        let mut progress: Vec<Progress> = Vec::new();
        let mut index: HashMap<*const Room, usize> = HashMap::new();
        for job in batch.iter() {
            if let Job::Message {
                room,
                generation,
                record,
            } = job
            {
                let at = *index.entry(Arc::as_ptr(room)).or_insert_with(|| {
                    progress.push(Progress {
                        room: room.clone(),
                        generation: *generation,
                        first: record.seq,
                        last: 0,
                    });
                    progress.len() - 1
                });
                progress[at].last = record.seq;
            }
        }
        let started = Instant::now();
        let written = self.write(batch, &progress);
        self.stats.wrote(started.elapsed(), written.is_ok());
        match written {
            Ok(deleted) => {
                for p in progress {
                    // Out of order is fine: a room delivers everything up to the highest
                    // number it is told, and an older notice then finds nothing left.
                    match &self.runtime {
                        Some(runtime) => drop(runtime.spawn(async move {
                            p.room.committed(p.last);
                        })),
                        None => p.room.committed(p.last),
                    }
                }
                let mut deleted = deleted.into_iter();
                for job in batch.drain(..) {
                    match job {
                        Job::Message { .. } => {}
                        Job::Delete { done, .. } => {
                            let _ = done.send(Ok(deleted.next().unwrap_or(false)));
                        }
                        Job::Ban { done, .. } => drop(done.send(Ok(()))),
                        Job::Flush(done) => drop(done.send(())),
                    }
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
                        Job::Message { .. } => {}
                        Job::Delete { done, .. } => drop(done.send(Err(error.clone()))),
                        Job::Ban { done, .. } => drop(done.send(Err(error.clone()))),
                        Job::Flush(done) => drop(done.send(())),
                    }
                }
            }
        }
    }

    /// The transaction itself; returns, per delete in `batch`, whether it found its message.
    fn write(&mut self, batch: &[Job], progress: &[Progress]) -> rusqlite::Result<Vec<bool>> {
        let tx = self.conn.transaction()?;
        let mut deleted = Vec::new();
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO messages (room, seq, time, name, sender, dedupe_id, client_id, text)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for job in batch {
                match job {
                    Job::Message { room, record, .. } => {
                        insert.execute(params![
                            room.name(),
                            record.seq as i64,
                            record.time as i64,
                            &*record.from,
                            record.sender.as_deref(),
                            record.dedupe_id.as_deref(),
                            record.client_id.as_deref(),
                            &*record.text,
                        ])?;
                    }
                    Job::Delete { room, seq, .. } => {
                        let n = tx
                            .prepare_cached("DELETE FROM messages WHERE room = ?1 AND seq = ?2")?
                            .execute(params![&**room, *seq as i64])?;
                        deleted.push(n > 0);
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
                    Job::Flush(_) => {}
                }
            }
            let mut head = tx.prepare_cached(
                "INSERT INTO rooms (name, epoch, seq) VALUES (?1, ?2, ?3)
                 ON CONFLICT (name) DO UPDATE SET seq = excluded.seq",
            )?;
            let mut trim =
                tx.prepare_cached("DELETE FROM messages WHERE room = ?1 AND seq <= ?2")?;
            for p in progress {
                head.execute(params![p.room.name(), p.room.epoch() as i64, p.last as i64])?;
                if p.last > self.retention.messages {
                    trim.execute(params![
                        p.room.name(),
                        (p.last - self.retention.messages) as i64
                    ])?;
                }
            }
        }
        tx.commit()?;
        Ok(deleted)
    }

    /// Deletes messages past their age and bans past their time.
    fn sweep(&mut self) {
        let now = now_ms();
        let cutoff = now.saturating_sub(self.retention.age_ms);
        let swept = self
            .conn
            .execute("DELETE FROM messages WHERE time < ?1", [cutoff as i64])
            .and_then(|_| {
                self.conn
                    .execute("DELETE FROM bans WHERE until <= ?1", [now as i64])
            });
        if let Err(e) = swept {
            tracing::warn!(error = %describe(&self.path, &e), "could not sweep old history");
        }
    }
}
