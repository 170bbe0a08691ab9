//! The Redis engine: many wtchat processes ("nodes"), one chat.
//!
//! Redis numbers the messages. One Lua script assigns a room's next sequence number, appends
//! the message to the room's stream (its history), records its client id for idempotent
//! retries and publishes it on the room's channel, atomically: no two nodes hand out the
//! same number, and a node that sees message 9 after 7 knows it missed 8.
//!
//! Each node subscribes to the channels of the rooms it holds (those with members here)
//! and delivers what arrives to its own members, encoding each message once per node as on
//! one process. A node's own sends come back the same way, in the room's one order; the
//! message names the node and a token, so the node finds the sender it owes a copy and an
//! acknowledgement. A gap in the numbers, a lost subscription or a late message is filled
//! from the stream by sequence number (see [`Room::receive`]).
//!
//! Membership lives in Redis too (a sorted set per room, by member id) and every change is
//! published on the room's channel, so that each node keeps the whole room's list beside
//! its own members and presence works as on one process. Nodes beat every second; a node
//! silent for [`NODE_TIMEOUT`] is dead, and the next live node's beat removes its members
//! (one script, which publishes their departure).
//!
//! Writes go through one task that sends everything queued as one pipeline of script calls,
//! in order: a room's messages keep the order they were sent in, and a join is in Redis
//! before the same member's leave. Reads that callers make synchronously (resumes beyond the
//! memory tail, history pages, member pages of rooms not held here) use blocking
//! connections of their own, like the SQLite engine's readers.
//!
//! Keys, under the prefix `P` (`--redis-prefix`), for room `R` (room names have no `/`):
//! `P:R/meta` (epoch, seq), `P:R/log` (stream, entry id `seq-0`), `P:R/ids` and
//! `P:R/ids-old` (the dedupe window), `P:R/m` (members by id), channel `P:R/c`; and
//! `P/nodes` (beats), `P/node/N` (node N's members), `P/nodeseq`, `P/bans`,
//! `P/sender-key` (the key of public sender ids, when there is no token secret), channels
//! `P/ctl` (kicks and bans for every node) and `P/inbox/N` (posts for sessions node N
//! holds, that reached another node).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::{FutureExt, StreamExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink};
use redis::{Client, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{Ban, HistoryPage, LoadedRoom, Record, Retention, StorageError, StoredMessage};
use crate::auth::random_bytes;
use crate::hub::{MemberPage, MemberSummary, Room};
use crate::metrics::EngineStats;

/// A node that has not beaten for this long is dead: its members leave every room.
pub(crate) const NODE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a node beats (and looks for dead ones).
const BEAT_EVERY: Duration = Duration::from_secs(1);
/// How long a command may wait for Redis before its sender is told `storage_failed`.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Most script calls in one pipeline.
const MAX_BATCH: usize = 1024;
/// Node numbers wrap here: ids are `node << 32 | n`, below 2^52, so below the 2^53 a
/// browser reads exactly.
const NODE_BITS: u32 = 20;

/// Numbers a message, stores it, remembers its client id and publishes it (see the module
/// documentation). Returns {1, seq, epoch}, or {0, seq} for a client id already stored.
/// Client ids are remembered by the sender's dedupe id (ARGV[14]), not its public id
/// (ARGV[4]): see `crate::hub::sender`.
/// Client ids are remembered in two generations: once the current one holds the dedupe
/// window's count it becomes the old one (replacing the older), so between one and two
/// windows' worth are known, for four cheap calls a message.
/// Every 64th message of a room also drops its messages past the retention age (reads skip
/// them anyway; looking on every message would cost Redis a stream read each). Every
/// message pushes back the room's keys' expiry: an idle room's keys go with its history.
const PUBLISH: &str = r#"
local dk = nil
if ARGV[5] ~= '' then
  dk = ARGV[14] .. '\0' .. ARGV[5]
  local seen = redis.call('HGET', KEYS[3], dk) or redis.call('HGET', KEYS[4], dk)
  if seen then return {0, tonumber(seen)} end
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  redis.call('HSET', KEYS[1], 'epoch', ARGV[1])
  epoch = ARGV[1]
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[9], seq .. '-0', 't', ARGV[2], 'f', ARGV[3],
  's', ARGV[4], 'c', ARGV[5], 'x', ARGV[6], 'o', ARGV[7])
if dk and redis.call('HSET', KEYS[3], dk, seq) == 1
    and redis.call('HLEN', KEYS[3]) >= tonumber(ARGV[10]) then
  redis.call('RENAME', KEYS[3], KEYS[4])
end
if seq % 64 == 1 then
  for _ = 1, 256 do
    local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
    if not first or tonumber(first[2][2]) >= tonumber(ARGV[12]) then break end
    redis.call('XDEL', KEYS[2], first[1])
  end
end
for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], ARGV[11]) end
redis.call('PUBLISH', ARGV[13], '{"seq":' .. seq .. ',"epoch":' .. epoch .. ARGV[8])
return {1, seq, epoch}
"#;

/// A room as a node takes it up: its epoch (made if new), last number, the messages after
/// ARGV[2] (or the newest ARGV[3] when empty) and its members.
const LOAD: &str = r#"
if redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1]) == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local seq = redis.call('HGET', KEYS[1], 'seq') or '0'
local entries
if ARGV[2] == '' then
  entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[3])
else
  entries = redis.call('XRANGE', KEYS[2], '(' .. ARGV[2] .. '-0', '+')
end
return {epoch, seq, entries, redis.call('ZRANGE', KEYS[3], 0, -1)}
"#;

/// Members of this node join a room (KEYS: the room's members, the node's; ARGV: channel,
/// event, room, then id/entry pairs).
const JOIN: &str = r#"
for i = 4, #ARGV, 2 do
  redis.call('ZREMRANGEBYSCORE', KEYS[1], ARGV[i], ARGV[i])
  redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('HSET', KEYS[2], ARGV[3] .. '/' .. ARGV[i], 1)
end
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
"#;

/// Members of this node leave a room (KEYS as for JOIN; ARGV: channel, event, room, ids).
const LEAVE: &str = r#"
for i = 4, #ARGV do
  redis.call('ZREMRANGEBYSCORE', KEYS[1], ARGV[i], ARGV[i])
  redis.call('HDEL', KEYS[2], ARGV[3] .. '/' .. ARGV[i])
end
redis.call('PUBLISH', ARGV[1], ARGV[2])
return 1
"#;

/// A node's beat, by Redis's clock: returns whether the node was missing (reaped, or Redis
/// lost its data), and, when ARGV[3] is 1, removes the members of nodes silent for ARGV[2]
/// ms and publishes their departure. With ARGV[5] `gone`, the node's last word: it marks
/// itself silent since 1970.
const BEAT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[5] == 'gone' then
  redis.call('ZADD', KEYS[1], 0, ARGV[1])
  return 0
end
local missing = redis.call('ZADD', KEYS[1], now, ARGV[1])
if ARGV[3] == '1' then
  local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[2])))
  for _, node in ipairs(dead) do
    local hk = ARGV[4] .. '/node/' .. node
    local rooms = {}
    for _, field in ipairs(redis.call('HKEYS', hk)) do
      local room, id = string.match(field, '^(.*)/(%d+)$')
      if room then
        redis.call('ZREMRANGEBYSCORE', ARGV[4] .. ':' .. room .. '/m', id, id)
        rooms[room] = rooms[room] and (rooms[room] .. ',' .. id) or id
      end
    end
    for room, ids in pairs(rooms) do
      redis.call('PUBLISH', ARGV[4] .. ':' .. room .. '/c',
        '{"kind":"leave","node":' .. node .. ',"ids":[' .. ids .. ']}')
    end
    redis.call('DEL', hk)
    redis.call('ZREM', KEYS[1], node)
  end
end
return missing
"#;

/// Deletes message ARGV[1] from a room's stream and tells every node (ARGV[2]: channel,
/// ARGV[3]: event). Returns whether it was there.
const DELETE: &str = r#"
local n = redis.call('XDEL', KEYS[1], ARGV[1] .. '-0')
if n > 0 then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
return n
"#;

/// The scripts, loaded once (and again after a restart of Redis forgot them).
#[derive(Debug)]
struct Scripts {
    publish: redis::Script,
    load: redis::Script,
    join: redis::Script,
    leave: redis::Script,
    beat: redis::Script,
    delete: redis::Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            publish: redis::Script::new(PUBLISH),
            load: redis::Script::new(LOAD),
            join: redis::Script::new(JOIN),
            leave: redis::Script::new(LEAVE),
            beat: redis::Script::new(BEAT),
            delete: redis::Script::new(DELETE),
        }
    }

    fn all(&self) -> [&redis::Script; 6] {
        [
            &self.publish,
            &self.load,
            &self.join,
            &self.leave,
            &self.beat,
            &self.delete,
        ]
    }
}

/// What a node hears on a room's channel.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub(crate) enum Event {
    Message(Published),
    Join {
        node: u64,
        members: Vec<Listed>,
    },
    Leave {
        node: u64,
        ids: Vec<u64>,
    },
    Deleted {
        node: u64,
        seq: u64,
    },
    /// A typing notice: published, never stored.
    Typing {
        node: u64,
        id: u64,
        name: String,
    },
}

/// A message as Redis numbered it.
#[derive(Debug, Deserialize)]
pub(crate) struct Published {
    pub seq: u64,
    pub epoch: u64,
    pub time: u64,
    pub from: String,
    pub sender: Option<String>,
    pub text: String,
    /// `node:token` of the publishing node's submission.
    pub origin: String,
}

impl Published {
    /// The token of this node's submission, when this node published it.
    pub(crate) fn token_of(&self, node: u64) -> Option<u64> {
        let (n, token) = self.origin.split_once(':')?;
        (n.parse::<u64>().ok()? == node)
            .then(|| token.parse().ok())
            .flatten()
    }
}

/// A member as Redis lists it.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
pub(crate) struct Listed {
    pub id: u64,
    pub name: String,
    pub user: Option<String>,
}

/// What kicks and bans tell every node.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub(crate) enum Control {
    /// Close `user`'s connections in `room` (every room: None) with close code `code`.
    Kick {
        node: u64,
        room: Option<String>,
        user: String,
        code: u16,
    },
    /// Close member `member` of `room` with close code `code`.
    Disconnect {
        node: u64,
        room: String,
        member: u64,
        code: u16,
    },
    /// A ban set (`until` Some) or lifted.
    Ban {
        node: u64,
        room: Option<String>,
        user: String,
        until: Option<u64>,
    },
}

impl Control {
    fn node(&self) -> u64 {
        match self {
            Control::Kick { node, .. }
            | Control::Disconnect { node, .. }
            | Control::Ban { node, .. } => *node,
        }
    }
}

/// The outcome of a published message, for the room that sent it.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Stored under this number: the message as every node receives it, so that the node
    /// that sent it can deliver it at once when it is the next one.
    Stored(Published),
    /// A retry of a client id stored before as this number.
    Duplicate(u64),
}

/// A room's state as read from Redis: to take it up, or to catch up.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub epoch: u64,
    pub seq: u64,
    /// (message, origin) oldest first.
    pub messages: Vec<(StoredMessage, String)>,
    pub members: Vec<Listed>,
}

/// A room's subscription.
#[derive(Debug)]
enum Sub {
    /// Being read: what arrives waits, and is applied once the read is (for a room taken
    /// up, `room` is None until it exists).
    Syncing {
        room: Option<Arc<Room>>,
        waiting: Vec<Event>,
    },
    Live(Arc<Room>),
}

/// One command of the writing task.
enum Command {
    Publish {
        room: Arc<Room>,
        token: u64,
        record: Record,
    },
    Join {
        room: Arc<str>,
        members: Vec<Listed>,
        /// Dropped once the write went to Redis (or failed).
        written: Option<tokio::sync::oneshot::Sender<()>>,
    },
    Leave {
        room: Arc<str>,
        ids: Vec<u64>,
    },
    /// A message for channel `.0` that is not stored (typing, a forwarded post).
    Notice(Arc<str>, String),
    /// A kick or a ban for every node.
    Control(Control),
    /// Resolves once the commands before it went to Redis.
    Flush(tokio::sync::oneshot::Sender<()>),
}

type ControlHandler = Box<dyn Fn(Control) + Send + Sync>;

/// A request for a session that another node holds (SSE and long polling need no sticky
/// load balancer), or the answer to one.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Forwarded {
    /// A post's frames (`body`, one per line), from `origin`.
    Post {
        session: String,
        origin: Option<String>,
        body: String,
    },
    /// A long poll from `after`: answer node `reply` with `token`.
    Poll {
        session: String,
        origin: Option<String>,
        after: u64,
        reply: u64,
        token: u64,
    },
    /// The answer to the poll this node forwarded with `token`: an HTTP status and body.
    Polled {
        token: u64,
        status: u16,
        body: String,
    },
}

type PostHandler = Box<dyn Fn(Forwarded) + Send + Sync>;

/// A connection to Redis, shared by the node's rooms.
pub(crate) struct Redis {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("prefix", &self.inner.prefix)
            .field("node", &self.inner.node)
            .finish()
    }
}

struct Inner {
    url: String,
    prefix: String,
    node: u64,
    retention: Retention,
    /// Client ids remembered per room for idempotent retries.
    dedupe_window: usize,
    client: Client,
    conn: ConnectionManager,
    readers: Mutex<Vec<redis::Connection>>,
    scripts: Scripts,
    commands: mpsc::UnboundedSender<Command>,
    subs: Mutex<HashMap<Arc<str>, Sub>>,
    sink: tokio::sync::Mutex<Option<PubSubSink>>,
    control: OnceLock<ControlHandler>,
    /// Where posts forwarded to this node go.
    posts: OnceLock<PostHandler>,
    stats: EngineStats,
}

fn failed(url: &str, e: &redis::RedisError) -> StorageError {
    StorageError::new(format!("Redis at {url}: {e}"))
}

impl Redis {
    /// Connects to Redis at `url`, checks its version (6.2 or later: the scripts use
    /// exclusive stream ranges), takes a node number, and starts the node's tasks: writing,
    /// subscriptions, beats.
    pub(crate) async fn open(
        url: &str,
        prefix: &str,
        retention: Retention,
        dedupe_window: usize,
        stats: EngineStats,
    ) -> Result<Redis, StorageError> {
        let client = Client::open(url).map_err(|e| failed(url, &e))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let mut conn = tokio::time::timeout(
            RESPONSE_TIMEOUT * 2,
            client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(|_| StorageError::new(format!("Redis at {url}: no answer")))?
        .map_err(|e| failed(url, &e))?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await
            .map_err(|e| failed(url, &e))?;
        check_version(url, &info)?;
        let n: u64 = redis::cmd("INCR")
            .arg(format!("{prefix}/nodeseq"))
            .query_async(&mut conn)
            .await
            .map_err(|e| failed(url, &e))?;
        let node = n % (1 << NODE_BITS);
        let (commands, queue) = mpsc::unbounded_channel();
        let redis = Redis {
            inner: Arc::new(Inner {
                url: url.to_owned(),
                prefix: prefix.to_owned(),
                node,
                retention,
                dedupe_window,
                client,
                conn,
                readers: Mutex::new(Vec::new()),
                scripts: Scripts::new(),
                commands,
                subs: Mutex::new(HashMap::new()),
                sink: tokio::sync::Mutex::new(None),
                control: OnceLock::new(),
                posts: OnceLock::new(),
                stats,
            }),
        };
        redis.inner.load_scripts().await?;
        let (connected, ready) = tokio::sync::oneshot::channel();
        tokio::spawn(subscriber(redis.inner.clone(), connected));
        ready
            .await
            .map_err(|_| StorageError::new(format!("Redis at {url}: could not subscribe")))??;
        tokio::spawn(writer(Arc::downgrade(&redis.inner), queue));
        tokio::spawn(beats(Arc::downgrade(&redis.inner)));
        tracing::info!(url, prefix, node, "joined the Redis cluster");
        Ok(redis)
    }

    /// Whether Redis answers a PING within the response timeout.
    pub(crate) async fn ping(&self) -> Result<(), String> {
        let mut conn = self.inner.conn.clone();
        let ping = redis::cmd("PING");
        match tokio::time::timeout(RESPONSE_TIMEOUT, ping.query_async::<String>(&mut conn)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("Redis at {}: {e}", self.inner.url)),
            Err(_) => Err(format!("Redis at {}: no answer", self.inner.url)),
        }
    }

    /// The key of public sender ids (see [`Store::sender_key`]): made by the first node
    /// that asks, the same for every node after it.
    ///
    /// [`Store::sender_key`]: super::Store::sender_key
    pub(crate) async fn sender_key(&self) -> Result<Vec<u8>, StorageError> {
        let key = format!("{}/sender-key", self.inner.prefix);
        let (value,): (Vec<u8>,) = redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(&key)
            .arg(&random_bytes::<32>()[..])
            .arg("NX")
            .ignore()
            .cmd("GET")
            .arg(&key)
            .query_async(&mut self.inner.conn.clone())
            .await
            .map_err(|e| failed(&self.inner.url, &e))?;
        Ok(value)
    }

    /// The first connection id of this node: ids are unique over all nodes.
    pub(crate) fn first_id(&self) -> u64 {
        (self.inner.node << 32) + 1
    }

    /// Where kicks and bans from other nodes go.
    pub(crate) fn on_control(&self, handler: ControlHandler) {
        let _ = self.inner.control.set(handler);
    }

    /// Where posts forwarded to this node go.
    pub(crate) fn on_post(&self, handler: PostHandler) {
        let _ = self.inner.posts.set(handler);
    }

    /// Sends a request (or an answer) to node `node`.
    pub(crate) fn forward(&self, node: u64, post: Forwarded) {
        let payload = serde_json::to_string(&post).expect("serializable");
        let channel = format!("{}/inbox/{node}", self.inner.prefix);
        let _ = self
            .inner
            .commands
            .send(Command::Notice(channel.into(), payload));
    }

    /// Subscribes to room `name` and reads it: its epoch, number, newest `tail` messages
    /// and members. What arrives on its channel meanwhile waits for [`Redis::attach`].
    pub(crate) async fn load(&self, name: &str, tail: usize) -> Result<LoadedRoom, StorageError> {
        let key: Arc<str> = name.into();
        self.inner.subs.lock().unwrap().insert(
            key.clone(),
            Sub::Syncing {
                room: None,
                waiting: Vec::new(),
            },
        );
        let loaded = async {
            self.inner.subscribe(name).await?;
            self.inner.read(name, None, tail).await
        }
        .await;
        match loaded {
            Ok(snapshot) => Ok(LoadedRoom {
                epoch: snapshot.epoch,
                seq: snapshot.seq,
                tail: snapshot.messages.into_iter().map(|(m, _)| m).collect(),
                dedupe: Vec::new(),
                members: snapshot
                    .members
                    .into_iter()
                    .map(MemberSummary::from)
                    .collect(),
            }),
            Err(e) => {
                self.detach(name);
                Err(e)
            }
        }
    }

    /// Room `room`, loaded with [`Redis::load`], exists now: what waited is applied.
    pub(crate) fn attach(&self, room: &Arc<Room>) {
        let mut subs = self.inner.subs.lock().unwrap();
        let waiting = match subs.insert(room.name().into(), Sub::Live(room.clone())) {
            Some(Sub::Syncing { waiting, .. }) => waiting,
            _ => Vec::new(),
        };
        room.receive(waiting);
    }

    /// This node no longer holds room `name`: unsubscribes.
    pub(crate) fn detach(&self, name: &str) {
        self.inner.subs.lock().unwrap().remove(name);
        let inner = self.inner.clone();
        let channel = inner.channel(name);
        let name: Arc<str> = name.into();
        tokio::spawn(async move {
            let mut sink = inner.sink.lock().await;
            // Taken up again meanwhile (it is in `subs` before it subscribes): keep it.
            if inner.subs.lock().unwrap().contains_key(&name) {
                return;
            }
            if let Some(sink) = sink.as_mut() {
                let _ = tokio::time::timeout(RESPONSE_TIMEOUT, sink.unsubscribe(channel)).await;
            }
        });
    }

    /// Reads what room `room` missed after `after` (and its members), and applies it.
    pub(crate) fn catch_up(&self, room: &Arc<Room>, after: u64) {
        let inner = self.inner.clone();
        let room = room.clone();
        tokio::spawn(async move {
            match inner.read(room.name(), Some(after), 0).await {
                Ok(snapshot) => room.caught_up(snapshot),
                Err(e) => {
                    tracing::warn!(room = room.name(), error = %e, "could not catch up");
                    room.catch_up_failed();
                }
            }
        });
    }

    /// This node's id, as messages and events name it.
    pub(crate) fn node(&self) -> u64 {
        self.inner.node
    }

    /// Hands a message to Redis; the room hears back through [`Room::outcome`].
    pub(crate) fn append(&self, room: Arc<Room>, token: u64, record: Record) {
        let command = Command::Publish {
            room,
            token,
            record,
        };
        if let Err(mpsc::error::SendError(Command::Publish { room, token, .. })) =
            self.inner.commands.send(command)
        {
            room.outcome(token, Err(StorageError::new("the Redis writer stopped")));
        }
    }

    /// Members of this node join room `room`: resolves once Redis lists them (or could
    /// not be reached), so that a member told it joined is listed on every node.
    pub(crate) async fn joined(&self, room: &str, members: Vec<MemberSummary>) {
        let (written, done) = tokio::sync::oneshot::channel();
        let command = Command::Join {
            room: room.into(),
            members: members.into_iter().map(Listed::from).collect(),
            written: Some(written),
        };
        if self.inner.commands.send(command).is_ok() {
            let _ = done.await;
        }
    }

    /// Member `id` of this node is typing in room `room`.
    pub(crate) fn typing(&self, room: &str, id: u64, name: &str) {
        let event =
            serde_json::json!({"kind": "typing", "node": self.inner.node, "id": id, "name": name});
        let channel = self.inner.channel(room);
        let _ = self
            .inner
            .commands
            .send(Command::Notice(channel.into(), event.to_string()));
    }

    /// Members of this node left room `room`.
    pub(crate) fn left(&self, room: &str, ids: Vec<u64>) {
        let _ = self.inner.commands.send(Command::Leave {
            room: room.into(),
            ids,
        });
    }

    /// Tells every other node, after the writes queued before.
    pub(crate) fn control(&self, control: Control) {
        let _ = self.inner.commands.send(Command::Control(control));
    }

    /// Stored messages of `room` with `from <= seq < to`, oldest first.
    pub(crate) fn range(
        &self,
        room: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<StoredMessage>, StorageError> {
        if to <= from {
            return Ok(Vec::new());
        }
        let entries: Value = self.inner.blocking(|conn| {
            redis::cmd("XRANGE")
                .arg(self.inner.key(room, "log"))
                .arg(format!("{from}-0"))
                .arg(format!("{}-0", to - 1))
                .query(conn)
        })?;
        let cutoff = self.inner.cutoff();
        Ok(entries_of(entries)
            .into_iter()
            .map(|(m, _)| m)
            .filter(|m| m.time >= cutoff)
            .collect())
    }

    /// The newest `limit` messages of `room` below `before`, and whether there are older.
    pub(crate) fn page(
        &self,
        room: &str,
        before: u64,
        limit: usize,
    ) -> Result<HistoryPage, StorageError> {
        if before <= 1 || limit == 0 {
            return Ok(HistoryPage::default());
        }
        let entries: Value = self.inner.blocking(|conn| {
            redis::cmd("XREVRANGE")
                .arg(self.inner.key(room, "log"))
                .arg(format!("({}-0", before.min(i64::MAX as u64)))
                .arg("-")
                .arg("COUNT")
                .arg(limit + 1)
                .query(conn)
        })?;
        let cutoff = self.inner.cutoff();
        let mut messages: Vec<StoredMessage> = entries_of(entries)
            .into_iter()
            .map(|(m, _)| m)
            .filter(|m| m.time >= cutoff)
            .collect();
        let more = messages.len() > limit;
        messages.truncate(limit);
        messages.reverse();
        Ok(HistoryPage { messages, more })
    }

    /// Members of `room` (over all nodes) with ids above `after`, at most `limit`, the
    /// room's count, and the `after` of the next page.
    pub(crate) fn members_page(
        &self,
        room: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<MemberPage, StorageError> {
        let key = self.inner.key(room, "m");
        let (count, listed): (usize, Vec<String>) = self.inner.blocking(|conn| {
            redis::pipe()
                .cmd("ZCARD")
                .arg(&key)
                .cmd("ZRANGEBYSCORE")
                .arg(&key)
                .arg(after.map_or("-inf".to_owned(), |a| format!("({a}")))
                .arg("+inf")
                .arg("LIMIT")
                .arg(0)
                .arg(limit.min(i64::MAX as usize - 1) + 1)
                .query(conn)
        })?;
        let mut members: Vec<MemberSummary> = listed
            .iter()
            .filter_map(|entry| serde_json::from_str::<Listed>(entry).ok())
            .map(MemberSummary::from)
            .collect();
        let next = (members.len() > limit).then(|| members[limit - 1].id);
        members.truncate(limit);
        Ok((members, count, next))
    }

    /// Deletes message `seq` of `room`; every node holding the room tells its members.
    pub(crate) async fn delete(&self, room: &str, seq: u64) -> Result<bool, StorageError> {
        let inner = &self.inner;
        let event = format!(r#"{{"kind":"deleted","node":{},"seq":{seq}}}"#, inner.node);
        let deleted: u64 = inner
            .scripts
            .delete
            .key(inner.key(room, "log"))
            .arg(seq)
            .arg(inner.channel(room))
            .arg(event)
            .invoke_async(&mut inner.conn.clone())
            .await
            .map_err(|e| failed(&inner.url, &e))?;
        Ok(deleted > 0)
    }

    /// Stores a ban (`until` Some) or lifts one, and tells every node.
    pub(crate) async fn ban(
        &self,
        room: Option<&str>,
        user: &str,
        until: Option<u64>,
    ) -> Result<(), StorageError> {
        let inner = &self.inner;
        let field = format!("{}\0{user}", room.unwrap_or(""));
        let cmd = match until {
            Some(until) => redis::cmd("HSET")
                .arg(format!("{}/bans", inner.prefix))
                .arg(field)
                .arg(until)
                .to_owned(),
            None => redis::cmd("HDEL")
                .arg(format!("{}/bans", inner.prefix))
                .arg(field)
                .to_owned(),
        };
        cmd.query_async::<()>(&mut inner.conn.clone())
            .await
            .map_err(|e| failed(&inner.url, &e))?;
        self.control(Control::Ban {
            node: inner.node,
            room: room.map(Into::into),
            user: user.into(),
            until,
        });
        Ok(())
    }

    /// The bans stored.
    pub(crate) fn bans(&self) -> Result<Vec<Ban>, StorageError> {
        let stored: HashMap<String, u64> = self.inner.blocking(|conn| {
            redis::cmd("HGETALL")
                .arg(format!("{}/bans", self.inner.prefix))
                .query(conn)
        })?;
        Ok(stored
            .into_iter()
            .filter_map(|(field, until)| {
                let (room, user) = field.split_once('\0')?;
                Some(Ban {
                    room: (!room.is_empty()).then(|| room.to_owned()),
                    user: user.to_owned(),
                    until,
                })
            })
            .collect())
    }

    /// This node stops: it no longer beats, and any member it still lists (one whose
    /// leave failed) is removed by the next beat of another node.
    pub(crate) async fn close(&self) {
        // A beat from long ago: the next node to beat finds this one dead.
        let _ = self.inner.beat(false, "gone").await;
    }

    /// Resolves once every write queued so far went to Redis.
    pub(crate) async fn flush(&self) {
        let (done, flushed) = tokio::sync::oneshot::channel();
        if self.inner.commands.send(Command::Flush(done)).is_ok() {
            let _ = flushed.await;
        }
    }
}

fn check_version(url: &str, info: &str) -> Result<(), StorageError> {
    let version = info
        .lines()
        .find_map(|line| line.strip_prefix("redis_version:"))
        .unwrap_or("")
        .trim();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < (6, 2) {
        return Err(StorageError::new(format!(
            "Redis at {url} is version {version}; wtchat needs 6.2 or later"
        )));
    }
    Ok(())
}

impl From<Listed> for MemberSummary {
    fn from(m: Listed) -> MemberSummary {
        MemberSummary {
            id: m.id,
            name: m.name.into(),
            user: m.user.map(Into::into),
        }
    }
}

impl From<MemberSummary> for Listed {
    fn from(m: MemberSummary) -> Listed {
        Listed {
            id: m.id,
            name: m.name.to_string(),
            user: m.user.map(|u| u.to_string()),
        }
    }
}

impl Inner {
    /// How a message names the submission it came from: `node:token`.
    fn origin(&self, token: u64) -> String {
        format!("{}:{token}", self.node)
    }

    fn key(&self, room: &str, what: &str) -> String {
        format!("{}:{room}/{what}", self.prefix)
    }

    fn channel(&self, room: &str) -> String {
        self.key(room, "c")
    }

    /// Messages older than this (ms since 1970) are past their retention age.
    fn cutoff(&self) -> u64 {
        crate::hub::now_ms().saturating_sub(self.retention.age_ms)
    }

    async fn load_scripts(&self) -> Result<(), StorageError> {
        for script in self.scripts.all() {
            script
                .prepare_invoke()
                .load_async(&mut self.conn.clone())
                .await
                .map_err(|e| failed(&self.url, &e))?;
        }
        Ok(())
    }

    /// Runs the beat script: `judge` removes the nodes silent for `NODE_TIMEOUT`; `mode`
    /// `gone` marks this node silent since 1970. Returns whether Redis had forgotten it.
    async fn beat(
        &self,
        judge: bool,
        mode: &str,
    ) -> Result<redis::RedisResult<u64>, tokio::time::error::Elapsed> {
        let mut call = self.scripts.beat.key(format!("{}/nodes", self.prefix));
        call.arg(self.node)
            .arg(NODE_TIMEOUT.as_millis() as u64)
            .arg(if judge { "1" } else { "0" })
            .arg(&self.prefix)
            .arg(mode);
        tokio::time::timeout(RESPONSE_TIMEOUT, call.invoke_async(&mut self.conn.clone())).await
    }

    /// Runs `read` on a blocking connection of its own.
    fn blocking<T>(
        &self,
        read: impl Fn(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, StorageError> {
        let pooled = self.readers.lock().unwrap().pop();
        let (mut conn, fresh) = match pooled {
            Some(conn) => (conn, false),
            None => (self.connect()?, true),
        };
        let mut result = read(&mut conn);
        if !fresh && result.as_ref().is_err_and(|e| e.is_io_error()) {
            // A pooled connection from before Redis restarted: once more, on a new one.
            conn = self.connect()?;
            result = read(&mut conn);
        }
        if result.is_ok() {
            self.readers.lock().unwrap().push(conn);
        }
        result.map_err(|e| failed(&self.url, &e))
    }

    /// A new blocking connection, with timeouts.
    fn connect(&self) -> Result<redis::Connection, StorageError> {
        let conn = self
            .client
            .get_connection_with_timeout(RESPONSE_TIMEOUT)
            .map_err(|e| failed(&self.url, &e))?;
        conn.set_read_timeout(Some(RESPONSE_TIMEOUT))
            .and_then(|()| conn.set_write_timeout(Some(RESPONSE_TIMEOUT)))
            .map_err(|e| failed(&self.url, &e))?;
        Ok(conn)
    }

    async fn subscribe(&self, room: &str) -> Result<(), StorageError> {
        let mut sink = self.sink.lock().await;
        let sink = sink
            .as_mut()
            .ok_or_else(|| StorageError::new(format!("Redis at {}: not connected", self.url)))?;
        tokio::time::timeout(RESPONSE_TIMEOUT, sink.subscribe(self.channel(room)))
            .await
            .map_err(|_| StorageError::new(format!("Redis at {}: no answer", self.url)))?
            .map_err(|e| failed(&self.url, &e))
    }

    /// A room's epoch, number, messages after `after` (or the newest `tail`) and members.
    async fn read(
        &self,
        room: &str,
        after: Option<u64>,
        tail: usize,
    ) -> Result<Snapshot, StorageError> {
        let mut invocation = self.scripts.load.key(self.key(room, "meta"));
        invocation
            .key(self.key(room, "log"))
            .key(self.key(room, "m"))
            .arg(crate::hub::now_ms())
            .arg(after.map(|a| a.to_string()).unwrap_or_default())
            .arg(tail)
            .arg(self.retention.age_ms);
        let reply: Value = tokio::time::timeout(
            RESPONSE_TIMEOUT,
            invocation.invoke_async(&mut self.conn.clone()),
        )
        .await
        .map_err(|_| StorageError::new(format!("Redis at {}: no answer", self.url)))?
        .map_err(|e| failed(&self.url, &e))?;
        let Value::Array(mut parts) = reply else {
            return Err(StorageError::new("Redis: unexpected answer to a room read"));
        };
        let members: Vec<String> =
            redis::from_redis_value(parts.pop().unwrap_or(Value::Nil)).unwrap_or_default();
        let entries = parts.pop().unwrap_or(Value::Nil);
        let seq: String =
            redis::from_redis_value(parts.pop().unwrap_or(Value::Nil)).unwrap_or_default();
        let epoch: String =
            redis::from_redis_value(parts.pop().unwrap_or(Value::Nil)).unwrap_or_default();
        let mut messages = entries_of(entries);
        if after.is_none() {
            messages.reverse();
        }
        let cutoff = self.cutoff();
        messages.retain(|(m, _)| m.time >= cutoff);
        Ok(Snapshot {
            epoch: epoch.parse().unwrap_or(0),
            seq: seq.parse().unwrap_or(0),
            messages,
            members: members
                .iter()
                .filter_map(|entry| serde_json::from_str(entry).ok())
                .collect(),
        })
    }
}

/// Stream entries as messages with their origins.
fn entries_of(entries: Value) -> Vec<(StoredMessage, String)> {
    let entries: Vec<(String, HashMap<String, String>)> =
        redis::from_redis_value(entries).unwrap_or_default();
    entries
        .into_iter()
        .filter_map(|(id, mut fields)| {
            let seq = id.split_once('-')?.0.parse().ok()?;
            let sender = fields.remove("s").filter(|s| !s.is_empty());
            Some((
                StoredMessage {
                    seq,
                    time: fields.get("t")?.parse().ok()?,
                    from: fields.remove("f")?,
                    sender,
                    text: fields.remove("x")?,
                },
                fields.remove("o").unwrap_or_default(),
            ))
        })
        .collect()
}

/// The writing task: everything queued goes to Redis as one pipeline, in order.
async fn writer(inner: std::sync::Weak<Inner>, mut queue: mpsc::UnboundedReceiver<Command>) {
    let mut batch = Vec::new();
    // Leaves Redis did not get (it was away) go first with the next batch: a member must
    // not stay listed for a leave Redis never heard.
    let mut unsent: Vec<Command> = Vec::new();
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if !unsent.is_empty() {
            batch.splice(0..0, unsent.drain(..));
        }
        let mut pipe = redis::pipe();
        for command in &batch {
            inner.add(&mut pipe, command);
        }
        let mut result = inner.run(&pipe).await;
        if let Err(e) = &result
            && e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript)
        {
            // Redis restarted and forgot the scripts: none of them ran.
            result = match inner.load_scripts().await {
                Ok(()) => inner.run(&pipe).await,
                Err(_) => result,
            };
        }
        match result {
            Ok(replies) => {
                for (command, reply) in batch.drain(..).zip(replies) {
                    match command {
                        Command::Publish {
                            room,
                            token,
                            record,
                        } => {
                            room.outcome(token, outcome(reply, record, inner.origin(token)));
                        }
                        Command::Join {
                            written: Some(done),
                            ..
                        }
                        | Command::Flush(done) => {
                            let _ = done.send(());
                        }
                        Command::Join { .. }
                        | Command::Leave { .. }
                        | Command::Notice(..)
                        | Command::Control(_) => {}
                    }
                }
            }
            Err(e) => {
                let error = failed(&inner.url, &e);
                tracing::warn!(error = %error, "a write to Redis failed");
                for command in batch.drain(..) {
                    match command {
                        Command::Publish { room, token, .. } => {
                            room.outcome(token, Err(error.clone()));
                        }
                        command @ Command::Leave { .. } => unsent.push(command),
                        // Joins are written again when the subscription comes back; waiting
                        // joins and flushes go on (their senders are dropped).
                        Command::Join { .. }
                        | Command::Notice(..)
                        | Command::Control(_)
                        | Command::Flush(_) => {}
                    }
                }
            }
        }
    }
}

/// What the publish script said of `record`.
fn outcome(reply: Value, record: Record, origin: String) -> Result<Outcome, StorageError> {
    match redis::from_redis_value::<Vec<u64>>(reply).as_deref() {
        Ok(&[1, seq, epoch]) => Ok(Outcome::Stored(Published {
            seq,
            epoch,
            time: record.time,
            from: record.from.to_string(),
            sender: record.sender.map(String::from),
            text: record.text.into(),
            origin,
        })),
        Ok(&[0, seq]) => Ok(Outcome::Duplicate(seq)),
        Ok(other) => Err(StorageError::new(format!(
            "Redis: the publish script answered {other:?}"
        ))),
        Err(e) => Err(StorageError::new(format!("Redis: {e}"))),
    }
}

impl Inner {
    fn add(&self, pipe: &mut redis::Pipeline, command: &Command) {
        match command {
            Command::Publish {
                room,
                token,
                record,
            } => {
                let name = room.name();
                let origin = self.origin(*token);
                let fragment = serde_json::json!({
                    "kind": "message",
                    "time": record.time,
                    "from": &*record.from,
                    "sender": record.sender.as_deref(),
                    "text": &*record.text,
                    "origin": origin,
                })
                .to_string();
                // `{"seq":N,"epoch":E` comes from the script: the rest of the object.
                let fragment = format!(",{}", &fragment[1..]);
                pipe.invoke_script(
                    self.scripts
                        .publish
                        .key(self.key(name, "meta"))
                        .key(self.key(name, "log"))
                        .key(self.key(name, "ids"))
                        .key(self.key(name, "ids-old"))
                        .arg(crate::hub::now_ms())
                        .arg(record.time)
                        .arg(&*record.from)
                        .arg(record.sender.as_deref().unwrap_or(""))
                        .arg(record.client_id.as_deref().unwrap_or(""))
                        .arg(&*record.text)
                        .arg(origin)
                        .arg(fragment)
                        .arg(self.retention.messages)
                        .arg(self.dedupe_window)
                        .arg(self.retention.age_ms)
                        .arg(self.cutoff())
                        .arg(self.channel(name))
                        .arg(record.dedupe_id.as_deref().unwrap_or("")),
                );
            }
            Command::Join { room, members, .. } => {
                let event =
                    serde_json::json!({"kind": "join", "node": self.node, "members": members});
                let mut call = self.scripts.join.key(self.key(room, "m"));
                call.key(format!("{}/node/{}", self.prefix, self.node))
                    .arg(self.channel(room))
                    .arg(event.to_string())
                    .arg(&**room);
                for member in members {
                    call.arg(member.id)
                        .arg(serde_json::to_string(member).expect("serializable"));
                }
                pipe.invoke_script(&call);
            }
            Command::Notice(channel, event) => {
                pipe.cmd("PUBLISH").arg(&**channel).arg(event);
            }
            Command::Control(control) => {
                pipe.cmd("PUBLISH")
                    .arg(format!("{}/ctl", self.prefix))
                    .arg(serde_json::to_string(control).expect("serializable"));
            }
            Command::Flush(_) => {
                pipe.cmd("PING");
            }
            Command::Leave { room, ids } => {
                let event = serde_json::json!({"kind": "leave", "node": self.node, "ids": ids});
                let mut call = self.scripts.leave.key(self.key(room, "m"));
                call.key(format!("{}/node/{}", self.prefix, self.node))
                    .arg(self.channel(room))
                    .arg(event.to_string())
                    .arg(&**room);
                for id in ids {
                    call.arg(id);
                }
                pipe.invoke_script(&call);
            }
        }
    }

    async fn run(&self, pipe: &redis::Pipeline) -> redis::RedisResult<Vec<Value>> {
        let started = Instant::now();
        let result =
            match tokio::time::timeout(RESPONSE_TIMEOUT, pipe.query_async(&mut self.conn.clone()))
                .await
            {
                Ok(result) => result,
                Err(_) => Err(redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no answer",
                ))),
            };
        self.stats.wrote(started.elapsed(), result.is_ok());
        result
    }
}

/// The subscribing task: holds the node's one subscription connection, hands each room's
/// events to it, and when the connection comes back after a loss, subscribes again and
/// has every room catch up.
async fn subscriber(
    inner: Arc<Inner>,
    connected: tokio::sync::oneshot::Sender<Result<(), StorageError>>,
) {
    let mut connected = Some(connected);
    let mut delay = Duration::from_millis(100);
    let weak = Arc::downgrade(&inner);
    drop(inner);
    loop {
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let attempt = async {
            let pubsub = inner.client.get_async_pubsub().await?;
            let (mut sink, stream) = pubsub.split();
            sink.subscribe(format!("{}/ctl", inner.prefix)).await?;
            sink.subscribe(format!("{}/inbox/{}", inner.prefix, inner.node))
                .await?;
            redis::RedisResult::Ok((sink, stream))
        };
        let (sink, mut stream) = match tokio::time::timeout(RESPONSE_TIMEOUT, attempt).await {
            Ok(Ok(pair)) => pair,
            failure => {
                let error = match failure {
                    Ok(Err(e)) => failed(&inner.url, &e),
                    _ => StorageError::new(format!("Redis at {}: no answer", inner.url)),
                };
                if let Some(connected) = connected.take() {
                    let _ = connected.send(Err(error));
                    return;
                }
                drop(inner);
                tokio::time::sleep(delay).await;
                // At most a quarter second: until it subscribes again, a node serves joins
                // from what it holds, and catches up after.
                delay = (delay * 2).min(Duration::from_millis(250));
                continue;
            }
        };
        delay = Duration::from_millis(100);
        *inner.sink.lock().await = Some(sink);
        if let Some(connected) = connected.take() {
            let _ = connected.send(Ok(()));
        } else {
            tracing::info!(url = %inner.url, "subscribed to Redis again; rooms catch up");
            resubscribe(&inner).await;
        }
        let ctl = format!("{}/ctl", inner.prefix);
        let inbox = format!("{}/inbox/{}", inner.prefix, inner.node);
        drop(inner);
        let mut batch = Vec::new();
        while let Some(first) = stream.next().await {
            let Some(inner) = weak.upgrade() else {
                return;
            };
            // What else has arrived goes with it: a room's messages that follow each other
            // are delivered together, one push per member.
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match stream.next().now_or_never() {
                    Some(Some(msg)) => batch.push(msg),
                    _ => break,
                }
            }
            inner.dispatch(&ctl, &inbox, batch.drain(..));
        }
        let Some(inner) = weak.upgrade() else {
            return;
        };
        tracing::warn!(url = %inner.url, "lost the Redis subscription; reconnecting");
        *inner.sink.lock().await = None;
    }
}

impl Inner {
    /// Hands what arrived on the subscription to the rooms (in order, per room), kicks and
    /// bans to the hub, and posts forwarded to this node to their sessions.
    fn dispatch(&self, ctl: &str, inbox: &str, messages: impl Iterator<Item = redis::Msg>) {
        let mut rooms: Vec<(Arc<Room>, Vec<Event>)> = Vec::new();
        for msg in messages {
            let channel = msg.get_channel_name();
            if channel == inbox {
                if let Ok(post) = serde_json::from_slice::<Forwarded>(msg.get_payload_bytes())
                    && let Some(handler) = self.posts.get()
                {
                    handler(post);
                }
                continue;
            }
            if channel == ctl {
                if let Ok(control) = serde_json::from_slice::<Control>(msg.get_payload_bytes())
                    && control.node() != self.node
                    && let Some(handler) = self.control.get()
                {
                    handler(control);
                }
                continue;
            }
            let Some(name) = channel
                .strip_prefix(self.prefix.as_str())
                .and_then(|rest| rest.strip_prefix(':'))
                .and_then(|rest| rest.strip_suffix("/c"))
            else {
                continue;
            };
            let event = match serde_json::from_slice::<Event>(msg.get_payload_bytes()) {
                Ok(event) => event,
                Err(e) => {
                    tracing::warn!(room = name, error = %e, "an unreadable event from Redis");
                    continue;
                }
            };
            let mut subs = self.subs.lock().unwrap();
            match subs.get_mut(name) {
                Some(Sub::Live(room)) => match rooms.iter_mut().find(|(r, _)| Arc::ptr_eq(r, room))
                {
                    Some((_, events)) => events.push(event),
                    None => rooms.push((room.clone(), vec![event])),
                },
                Some(Sub::Syncing { waiting, .. }) => waiting.push(event),
                None => {}
            }
        }
        for (room, events) in rooms {
            room.receive(events);
        }
    }
}

/// After a lost subscription: every room held subscribes again, reads what it missed and
/// its members, and writes its own members back (Redis may have lost them) and the leaves
/// it missed.
async fn resubscribe(inner: &Arc<Inner>) {
    let rooms: Vec<Arc<Room>> = {
        let mut subs = inner.subs.lock().unwrap();
        subs.values_mut()
            .filter_map(|sub| {
                let room = match sub {
                    Sub::Live(room) => room.clone(),
                    Sub::Syncing { room, .. } => room.clone()?,
                };
                *sub = Sub::Syncing {
                    room: Some(room.clone()),
                    waiting: Vec::new(),
                };
                Some(room)
            })
            .collect()
    };
    for room in rooms {
        let name = room.name();
        let read = async {
            inner.subscribe(name).await?;
            inner.read(name, Some(room.delivered()), 0).await
        };
        match read.await {
            Ok(snapshot) => {
                room.caught_up(snapshot);
                let members = room.members_here();
                if !members.is_empty() {
                    let _ = inner.commands.send(Command::Join {
                        room: name.into(),
                        members: members.into_iter().map(Listed::from).collect(),
                        written: None,
                    });
                }
            }
            Err(e) => {
                // Redis went away again: the room catches up at the next tick, or when
                // the subscription comes back once more.
                tracing::warn!(room = name, error = %e, "could not catch up after reconnecting");
                room.catch_up_failed();
            }
        }
        let mut subs = inner.subs.lock().unwrap();
        if let Some(sub) = subs.get_mut(name)
            && let Sub::Syncing { waiting, .. } = std::mem::replace(sub, Sub::Live(room.clone()))
        {
            room.receive(waiting);
        }
    }
    // The writer's next batch carries the leaves Redis missed, even with nothing else to
    // write.
    let _ = inner
        .commands
        .send(Command::Flush(tokio::sync::oneshot::channel().0));
}

/// The beating task: every second, this node tells Redis it is alive (by Redis's clock)
/// and, once it has itself been alive for a whole timeout, removes nodes that stopped.
async fn beats(inner: std::sync::Weak<Inner>) {
    let mut every = tokio::time::interval(BEAT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut alive_since: Option<Instant> = None;
    loop {
        every.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        // Only a node that has beaten for a whole timeout may judge others: after Redis
        // was away, every node's last beat is old, and they all need one beat first.
        let judge = alive_since.is_some_and(|t| t.elapsed() >= NODE_TIMEOUT);
        match inner.beat(judge, "beat").await {
            Ok(Ok(missing)) => {
                if alive_since.is_none() {
                    alive_since = Some(Instant::now());
                }
                if missing == 1 {
                    // Redis forgot this node (it lost its data, or judged the node dead
                    // while it could not beat): write its members back.
                    let rooms: Vec<Arc<Room>> = inner
                        .subs
                        .lock()
                        .unwrap()
                        .values()
                        .filter_map(|sub| match sub {
                            Sub::Live(room) => Some(room.clone()),
                            Sub::Syncing { .. } => None,
                        })
                        .collect();
                    for room in rooms {
                        let members = room.members_here();
                        if !members.is_empty() {
                            let _ = inner.commands.send(Command::Join {
                                room: room.name().into(),
                                members: members.into_iter().map(Listed::from).collect(),
                                written: None,
                            });
                        }
                    }
                }
            }
            Ok(Err(e))
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                let _ = inner.load_scripts().await;
                alive_since = None;
            }
            _ => alive_since = None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_older_than_6_2_is_refused_with_its_version() {
        let info = |v: &str| format!("# Server\r\nredis_version:{v}\r\nredis_mode:standalone\r\n");
        for ok in ["6.2.0", "7.0.15", "10.0.1"] {
            assert!(check_version("redis://r", &info(ok)).is_ok(), "{ok}");
        }
        for old in ["6.0.16", "5.0.7", "garbage"] {
            let refused = check_version("redis://r", &info(old))
                .unwrap_err()
                .to_string();
            assert!(
                refused.contains(old) && refused.contains("6.2 or later"),
                "{refused}"
            );
        }
    }

    #[test]
    fn a_message_names_the_node_that_published_it() {
        let message = |origin: &str| Published {
            seq: 1,
            epoch: 1,
            time: 1,
            from: "ann".into(),
            sender: None,
            text: "hi".into(),
            origin: origin.into(),
        };
        assert_eq!(message("7:42").token_of(7), Some(42));
        assert_eq!(message("7:42").token_of(8), None);
        assert_eq!(message("").token_of(7), None);
    }
}
