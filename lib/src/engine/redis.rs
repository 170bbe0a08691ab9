//! The Redis engine: many wtchat processes ("nodes"), one chat.
//!
//! Redis numbers the messages. One Lua script assigns a room's next sequence number, appends
//! the message to the room's stream (its history), records its client id for idempotent
//! retries and publishes it on the room's channel, atomically: no two nodes hand out the
//! same number, and a node that sees message 9 after 7 knows it missed 8. An edit or a
//! deletion is a record like a message (an entry of the stream, published the same way) and
//! also updates the room's hash of current states, which history and resumes read with the
//! stream entries.
//!
//! Each node subscribes to the channels of the rooms it holds (those with members here)
//! and hands what arrives to the room, in sequence order and once: a message that comes
//! early (a number was skipped: a lost or late message, a lost subscription) waits while
//! the node reads what it missed from the stream by sequence number ([`Order`]). A node's
//! own sends come back the same way, in the room's one order; the message names the node
//! and a token, so the room finds the sender it owes a copy and an acknowledgement.
//!
//! Membership lives in Redis too (a sorted set per room, by member id) and every change is
//! published on the room's channel, so that each node keeps the whole room's list beside
//! its own members and presence works as on one process. Nodes beat every second; a node
//! silent for [`NODE_TIMEOUT`] is dead, and the next live node's beat removes its members
//! (one script, which publishes their departure).
//!
//! Writes go through one task that sends everything queued as one pipeline of script calls,
//! in order: a room's messages keep the order they were sent in, and a join is in Redis
//! before the same member's leave. Reads use the same multiplexed connection, with a
//! timeout: none blocks a thread.
//!
//! Keys, under the prefix `P` (`--redis-prefix`), for room `R` (room names have no `/`):
//! `P:R/meta` (epoch, seq), `P:R/log` (stream, entry id `seq-0`), `P:R/ids` and
//! `P:R/ids-old` (the dedupe window), `P:R/state` (each changed message's text and time of
//! its last edit, `x:N` and `e:N`, or its deletion, `d:N`), `P:R/m` (members by id),
//! `P:R/live` (the numbers of its messages not deleted), `P:R/mn:S` (the numbers of the
//! messages that mention sender S), channel `P:R/c`; and `P/reads/S` (sender S's marks, by
//! room);
//! `P/nodes` (beats), `P/node/N` (node N's members), `P/nodeseq`, `P/bans`,
//! `P/sender-key` (the key of public sender ids, when there is no token secret), channels
//! `P/ctl` (kicks and bans for every node) and `P/inbox/N` (requests for sessions node N
//! holds, that reached another node, each after its sender's node number and a space;
//! sent only to nodes alive at the last beat or heard from since, at most
//! [`MAX_FORWARDING`] bytes waiting).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink};
use redis::{Client, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::{
    Appended, Ban, Broker, Busy, EngineFuture, HistoryPage, InFlight, Loaded, MemberInfo,
    MembersPage, Missed, NodeSink, Numbered, Options, Position, Quote, Reacted, ReactionCount,
    ReactionLimits, Reactor, ReactorsPage, ReadState, Record, RecordKind, Retention, RoomEvent,
    RoomSink, StorageError, StoredMessage,
};
use crate::auth::random_bytes;
use crate::metrics::EngineStats;
use crate::protocol::now_ms;

/// Messages handed to the writing task and not yet answered, at most: past it appends are
/// busy, so that a Redis that does not keep up slows the senders instead of filling memory.
const MAX_IN_FLIGHT: usize = 2 * MAX_BATCH;

/// Bytes of forwarded requests (posts and polls for sessions on other nodes, and their
/// answers) waiting to be written to Redis, at most: past it a request is not forwarded
/// (its client is told there is no such session and opens a new one), so that requests
/// naming other nodes cannot fill this node's memory while Redis is slow or away.
const MAX_FORWARDING: usize = 8 << 20;

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

/// The start of the scripts that number a record ([`PUBLISH`], [`REACT`]): a retried client
/// id (ARGV[5], of the sender's dedupe id ARGV[14]) answers {0, seq} at once; else the room
/// gets its epoch if new (ARGV[1]) and `seq` is the record's number.
macro_rules! numbering {
    () => {
        r#"
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
"#
    };
}

/// The client id's remembering, after the record is stored: see [`PUBLISH`] (ARGV[10], the
/// dedupe window).
macro_rules! remembering {
    () => {
        r#"if dk and redis.call('HSET', KEYS[3], dk, seq) == 1
    and redis.call('HLEN', KEYS[3]) >= tonumber(ARGV[10]) then
  redis.call('RENAME', KEYS[3], KEYS[4])
end
"#
    };
}

/// Numbers a record, stores it, remembers its client id and publishes it (see the module
/// documentation). Returns {1, seq, epoch}, or {0, seq} for a client id already stored.
/// A reply keeps the message it answers (ARGV[17-19]: its number, sender's name, the start of
/// its text) in its entry. A change (ARGV[15] its kind, ARGV[16] its message) is a stream
/// entry like a message, and
/// also updates the room's hash of current states (KEYS[5]): `x:N` and `e:N` the text and
/// time of message N's last edit, `d:N` the number of its deletion (after which nothing
/// changes it).
/// Client ids are remembered by the sender's dedupe id (ARGV[14]), not its public id
/// (ARGV[4]): see `crate::hub::sender`.
/// Client ids are remembered in two generations: once the current one holds the dedupe
/// window's count it becomes the old one (replacing the older), so between one and two
/// windows' worth are known, for four cheap calls a message.
/// Every 64th message of a room also drops its messages past the retention age (reads skip
/// them anyway; looking on every message would cost Redis a stream read each). Every
/// message pushes back the room's keys' expiry: an idle room's keys go with its history.
/// Past ARGV[9] entries the stream is trimmed; after a trim, `floor` in the room's hash
/// (KEYS[1]) is the first number still in it: from there on every number is in the stream
/// but reactions', which are in none (see [`REACT`]).
/// Read state: a message adds its number to the room's live messages (KEYS[6]; a deletion
/// takes it out, a trim the numbers below the floor), raises its sender's mark in the
/// sender's hash of marks (KEYS[7], field ARGV[20], the room) and adds it to the mentions of
/// each public id in ARGV[21] (a JSON list, kept in the entry as `mn`; key ARGV[22] and the
/// id), which a deletion takes back.
const PUBLISH: &str = concat!(
    numbering!(),
    r#"local trimmed = false
local fields = {'t', ARGV[2], 'f', ARGV[3], 's', ARGV[4], 'c', ARGV[5], 'x', ARGV[6], 'o', ARGV[7]}
if ARGV[17] ~= '' then
  for _, v in ipairs({'r', ARGV[17], 'rf', ARGV[18], 'rt', ARGV[19]}) do table.insert(fields, v) end
end
if ARGV[15] ~= '' then
  for _, v in ipairs({'k', ARGV[15], 'g', ARGV[16]}) do table.insert(fields, v) end
end
if ARGV[21] ~= '' then
  table.insert(fields, 'mn')
  table.insert(fields, ARGV[21])
end
redis.call('XADD', KEYS[2], seq .. '-0', unpack(fields))
if ARGV[15] == '' then
  redis.call('ZADD', KEYS[6], seq, seq)
  if ARGV[4] ~= '' then
    local mark = tonumber(redis.call('HGET', KEYS[7], ARGV[20]) or '-1')
    if seq > mark then redis.call('HSET', KEYS[7], ARGV[20], seq) end
    redis.call('PEXPIRE', KEYS[7], ARGV[11])
  end
  if ARGV[21] ~= '' then
    for _, id in ipairs(cjson.decode(ARGV[21])) do
      redis.call('ZADD', ARGV[22] .. id, seq, seq)
      redis.call('PEXPIRE', ARGV[22] .. id, ARGV[11])
    end
  end
end
if redis.call('XLEN', KEYS[2]) > tonumber(ARGV[9]) then
  redis.call('XTRIM', KEYS[2], 'MAXLEN', '~', ARGV[9])
  trimmed = true
end
if ARGV[15] ~= '' then
  local g = ARGV[16]
  if not redis.call('HGET', KEYS[5], 'd:' .. g) then
    if ARGV[15] == 'delete' then
      redis.call('HSET', KEYS[5], 'd:' .. g, seq)
      redis.call('HDEL', KEYS[5], 'x:' .. g, 'e:' .. g, 'r:' .. g)
      redis.call('ZREM', KEYS[6], g)
      local entry = redis.call('XRANGE', KEYS[2], g .. '-0', g .. '-0')[1]
      if entry then
        for i = 1, #entry[2], 2 do
          if entry[2][i] == 'mn' then
            for _, id in ipairs(cjson.decode(entry[2][i + 1])) do
              redis.call('ZREM', ARGV[22] .. id, g)
            end
          end
        end
      end
    else
      redis.call('HSET', KEYS[5], 'x:' .. g, ARGV[6], 'e:' .. g, ARGV[2])
    end
  end
end
"#,
    remembering!(),
    r#"if seq % 64 == 1 then
  for _ = 1, 256 do
    local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
    if not first or tonumber(first[2][2]) >= tonumber(ARGV[12]) then break end
    redis.call('XDEL', KEYS[2], first[1])
    trimmed = true
  end
end
if trimmed then
  local first = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1]
  if first then
    local floor = string.match(first[1], '^%d+')
    redis.call('HSET', KEYS[1], 'floor', floor)
    redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', '(' .. floor)
  end
end
for i = 1, 6 do redis.call('PEXPIRE', KEYS[i], ARGV[11]) end
redis.call('PUBLISH', ARGV[13], '{"seq":' .. seq .. ',"epoch":' .. epoch .. ARGV[8])
return {1, seq, epoch}
"#
);

/// Numbers a reaction (ARGV[15] `react` or `unreact`) to message ARGV[16] by ARGV[4] (a
/// public sender id; ARGV[3] its name) and applies it within the limits (ARGV[9] distinct
/// reactions per message, ARGV[12] per member), in the room's order, as every node sees
/// it: `r:N` in the hash of states (KEYS[5]) holds N's counts (JSON `[["👍",2],…]`), KEYS[6]
/// (per member) N's reactions of that member, KEYS[7] who reacted to N (score: the
/// reaction's number; member: JSON `[reaction, sender, name]`), KEYS[8] the number of each
/// message's last reaction change (what a resume reads, as it reads edits in the stream).
/// A reaction is in no stream entry: thousands of them never push a message out of the
/// stream. ARGV[1-8], [10], [11], [13] and [14] are [`PUBLISH`]'s (ARGV[6]: the reaction).
/// Returns {1, seq, epoch, outcome} ({0, seq} for a
/// retry); the outcome (JSON) is also in what it publishes.
const REACT: &str = concat!(
    numbering!(),
    r#"local g, r = ARGV[16], ARGV[6]
local outcome
if redis.call('HGET', KEYS[5], 'd:' .. g) then
  outcome = '{"gone":true,"deleted":true}'
elseif #redis.call('XRANGE', KEYS[2], g .. '-0', g .. '-0') == 0 then
  outcome = '{"gone":true,"deleted":false}'
else
  local counts = cjson.decode(redis.call('HGET', KEYS[5], 'r:' .. g) or '[]')
  local mine = cjson.decode(redis.call('HGET', KEYS[6], g) or '[]')
  local had, known = nil, false
  for _, m in ipairs(mine) do if m[1] == r then had = m end end
  for _, c in ipairs(counts) do if c[1] == r then known = true end end
  local change = 'none'
  if ARGV[15] == 'unreact' then
    if had then change = 'remove' end
  elseif not had then
    if #mine >= tonumber(ARGV[12]) or (not known and #counts >= tonumber(ARGV[9])) then
      change = 'too_many'
    else
      change = 'add'
    end
  end
  if change == 'too_many' then
    outcome = '{"tooMany":true}'
  else
    if change == 'add' then
      if known then
        for _, c in ipairs(counts) do if c[1] == r then c[2] = c[2] + 1 end end
      else
        table.insert(counts, {r, 1})
      end
      table.insert(mine, {r, ARGV[3]})
      redis.call('ZADD', KEYS[7], seq, cjson.encode({r, ARGV[4], ARGV[3]}))
    elseif change == 'remove' then
      local kept, left = {}, {}
      for _, c in ipairs(counts) do
        if c[1] == r then c[2] = c[2] - 1 end
        if c[2] > 0 then table.insert(kept, c) end
      end
      for _, m in ipairs(mine) do if m[1] ~= r then table.insert(left, m) end end
      counts, mine = kept, left
      redis.call('ZREM', KEYS[7], cjson.encode({r, ARGV[4], had[2]}))
    end
    if change ~= 'none' then
      if #counts > 0 then
        redis.call('HSET', KEYS[5], 'r:' .. g, cjson.encode(counts))
      else
        redis.call('HDEL', KEYS[5], 'r:' .. g)
      end
      if #mine > 0 then
        redis.call('HSET', KEYS[6], g, cjson.encode(mine))
      else
        redis.call('HDEL', KEYS[6], g)
      end
      redis.call('ZADD', KEYS[8], seq, g)
    end
    local names = {}
    for _, m in ipairs(mine) do table.insert(names, m[1]) end
    outcome = cjson.encode({counts = counts, mine = names, changed = change ~= 'none'})
  end
end
"#,
    remembering!(),
    r#"for i = 1, 8 do redis.call('PEXPIRE', KEYS[i], ARGV[11]) end
redis.call('PUBLISH', ARGV[13],
  '{"seq":' .. seq .. ',"epoch":' .. epoch .. ',"reacted":' .. outcome .. ARGV[8])
return {1, seq, epoch, outcome}
"#
);

/// A reader's read state in a room (KEYS: the room's hash, its live messages, the reader's
/// marks, the messages that mention it; ARGV: the room, the number to raise the mark to or
/// '' to read it — made at the room's last number if there is none —, the expiry): {mark,
/// unread, mentions, head, moved}.
const READ: &str = r#"
local head = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local mark = redis.call('HGET', KEYS[3], ARGV[1])
local moved = 0
if ARGV[2] == '' then
  if not mark then
    mark = head
    redis.call('HSET', KEYS[3], ARGV[1], head)
    moved = 1
  end
else
  local to = math.min(tonumber(ARGV[2]), head)
  if not mark or to > tonumber(mark) then
    mark = to
    redis.call('HSET', KEYS[3], ARGV[1], to)
    moved = 1
  end
end
mark = tonumber(mark)
redis.call('PEXPIRE', KEYS[3], ARGV[3])
local unread = redis.call('ZCOUNT', KEYS[2], '(' .. mark, head)
local mentions = redis.call('ZCOUNT', KEYS[4], '(' .. mark, head)
return {mark, unread, mentions, head, moved}
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
/// lost its data) and the nodes that beat within ARGV[2] ms (forwarded requests go to those
/// only), and, when ARGV[3] is 1, removes the members of nodes silent for ARGV[2] ms and
/// publishes their departure. With ARGV[5] `gone`, the node's last word: it marks itself
/// silent since 1970.
const BEAT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[5] == 'gone' then
  redis.call('ZADD', KEYS[1], 0, ARGV[1])
  return {0, {}}
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
return {missing, redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[2]), '+inf')}
"#;

/// The scripts, loaded once (and again after a restart of Redis forgot them).
#[derive(Debug)]
struct Scripts {
    publish: redis::Script,
    read: redis::Script,
    react: redis::Script,
    load: redis::Script,
    join: redis::Script,
    leave: redis::Script,
    beat: redis::Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            publish: redis::Script::new(PUBLISH),
            read: redis::Script::new(READ),
            react: redis::Script::new(REACT),
            load: redis::Script::new(LOAD),
            join: redis::Script::new(JOIN),
            leave: redis::Script::new(LEAVE),
            beat: redis::Script::new(BEAT),
        }
    }

    fn all(&self) -> [&redis::Script; 7] {
        [
            &self.publish,
            &self.read,
            &self.react,
            &self.load,
            &self.join,
            &self.leave,
            &self.beat,
        ]
    }
}

/// What a node hears on a room's channel.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Event {
    Message(Published),
    Join {
        node: u64,
        members: Vec<Listed>,
    },
    Leave {
        node: u64,
        ids: Vec<u64>,
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
struct Published {
    seq: u64,
    epoch: u64,
    time: u64,
    from: String,
    sender: Option<String>,
    text: String,
    /// `node:token` of the publishing node's submission.
    origin: String,
    /// A change's kind ([`RecordKind::as_str`]); none for a message.
    #[serde(default)]
    change: Option<String>,
    /// The message a change changes.
    #[serde(default)]
    target: u64,
    /// The message a reply answers.
    #[serde(default)]
    reply: Option<PublishedQuote>,
    /// What a reaction came to, as the script applied it.
    #[serde(default)]
    reacted: Option<Box<PublishedReacted>>,
    /// The public sender ids a message mentions.
    #[serde(default)]
    mentions: Vec<String>,
}

/// A reaction's outcome, as [`REACT`] writes it (an empty list comes as `{}` from Lua).
#[derive(Debug, Clone, Default, Deserialize)]
struct PublishedReacted {
    #[serde(default)]
    counts: serde_json::Value,
    #[serde(default)]
    mine: serde_json::Value,
    #[serde(default)]
    changed: bool,
    #[serde(default, rename = "tooMany")]
    too_many: bool,
    #[serde(default)]
    gone: bool,
    #[serde(default)]
    deleted: bool,
}

impl PublishedReacted {
    fn reacted(&self) -> Reacted {
        if self.gone {
            return Reacted::Gone {
                deleted: self.deleted,
            };
        }
        if self.too_many {
            return Reacted::TooMany;
        }
        let counts: Vec<(String, u32)> =
            serde_json::from_value(self.counts.clone()).unwrap_or_default();
        Reacted::Counts {
            counts: counts
                .into_iter()
                .map(|(reaction, count)| ReactionCount::new(reaction, count))
                .collect(),
            mine: serde_json::from_value(self.mine.clone()).unwrap_or_default(),
            changed: self.changed,
        }
    }
}

/// A reply's quote, as published.
#[derive(Debug, Deserialize)]
struct PublishedQuote {
    seq: u64,
    from: String,
    text: String,
}

impl Published {
    /// The record as the room receives it.
    fn numbered(&self) -> Numbered {
        let (node, token) = origin_of(&self.origin);
        let kind = self.change.as_deref().and_then(RecordKind::parse);
        let mut record = Record::change(
            kind.unwrap_or_default(),
            self.target,
            self.time,
            self.from.as_str(),
            self.text.as_str(),
        );
        record.sender = self.sender.as_deref().map(Into::into);
        record.reply = self
            .reply
            .as_ref()
            .map(|q| Box::new(Quote::new(q.seq, q.from.clone(), &q.text)));
        record.mentions = self.mentions.iter().map(|m| m.as_str().into()).collect();
        record.token = token;
        let mut numbered = Numbered::new(self.seq, node, record);
        numbered.reacted = self.reacted.as_deref().map(PublishedReacted::reacted);
        numbered
    }
}

/// The node and token a message's `origin` names (0, 0 when it names none).
fn origin_of(origin: &str) -> (u64, u64) {
    origin
        .split_once(':')
        .and_then(|(node, token)| Some((node.parse().ok()?, token.parse().ok()?)))
        .unwrap_or((0, 0))
}

/// A member as Redis lists it.
#[derive(Debug, Clone, Deserialize, Serialize)]
struct Listed {
    id: u64,
    name: String,
    user: Option<String>,
    /// Absent in lists written before members carried it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sender: Option<String>,
}

impl From<Listed> for MemberInfo {
    fn from(m: Listed) -> MemberInfo {
        MemberInfo::new(m.id, m.name, m.user).with_sender(m.sender)
    }
}

impl From<MemberInfo> for Listed {
    fn from(m: MemberInfo) -> Listed {
        Listed {
            id: m.id,
            name: m.name,
            user: m.user,
            sender: m.sender,
        }
    }
}

/// The outcome of a published message, for the node that sent it.
#[derive(Debug)]
enum Outcome {
    /// Stored under this number: the message as every node receives it, so that the node
    /// that sent it can hand it to the room at once when it is the next one.
    Stored(Box<Published>),
    /// A retry of a client id stored before as this number.
    Duplicate(u64),
}

/// A room's state as read from Redis: to take it up, or to catch up.
#[derive(Debug)]
struct Snapshot {
    epoch: u64,
    seq: u64,
    /// The records read, oldest first.
    records: Vec<Numbered>,
    members: Vec<Listed>,
}

/// A room this node holds: where its events go, and their order.
struct Followed {
    name: Arc<str>,
    sink: Arc<dyn RoomSink>,
    /// Held while the room's events are put in order and handed to the sink: one hand-over
    /// at a time per room, whichever task brings them.
    order: Mutex<Order>,
}

/// Where a room's messages stand on this node.
#[derive(Default)]
struct Order {
    /// Being read (taken up, or again after a lost subscription): what arrives waits here,
    /// and is applied once the read is.
    syncing: Option<Vec<Event>>,
    epoch: u64,
    /// The last number handed to the room.
    delivered: u64,
    /// Messages that came before the ones they follow, waiting for a catch-up.
    early: BTreeMap<u64, Published>,
    /// A catch-up is reading what the room missed.
    fetching: bool,
    /// The highest number Redis reported for this node's messages.
    heard: u64,
    /// Behind `heard` at the last beat: the next beat catches up.
    lagging: bool,
    /// A catch-up failed (Redis was away): the next beat tries again.
    stale: bool,
    /// Redis lost the room: nothing more is handed to it.
    lost: bool,
}

/// One command of the writing task.
enum Command {
    Publish {
        room: Arc<Followed>,
        record: Record,
        done: oneshot::Sender<Result<Appended, StorageError>>,
    },
    Join {
        room: Arc<str>,
        members: Vec<Listed>,
        /// Dropped once the write went to Redis (or failed).
        written: Option<oneshot::Sender<()>>,
    },
    Leave {
        room: Arc<str>,
        ids: Vec<u64>,
    },
    /// A message for `channel` that is not stored (typing, a forwarded request, a kick);
    /// a forwarded request's bytes are counted until the command is written or dropped.
    Notice {
        channel: Arc<str>,
        payload: Bytes,
        _counted: Option<Forwarding>,
    },
    /// Resolves once the commands before it went to Redis.
    Flush(oneshot::Sender<()>),
}

/// A connection to Redis, shared by the node's rooms.
pub(crate) struct Redis {
    inner: Arc<Inner>,
}

/// A forwarded request's bytes, counted in [`Inner::forwarding`] while it waits to be
/// written.
struct Forwarding {
    queued: Arc<AtomicUsize>,
    bytes: usize,
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        self.queued.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

struct Inner {
    url: String,
    prefix: String,
    node: u64,
    retention: Retention,
    /// Client ids remembered per room for idempotent retries.
    dedupe_window: usize,
    reactions: ReactionLimits,
    client: Client,
    conn: ConnectionManager,
    scripts: Scripts,
    commands: mpsc::UnboundedSender<Command>,
    /// Publishes handed to the writer and not answered yet (at most [`MAX_IN_FLIGHT`]).
    in_flight: InFlight,
    subs: Mutex<HashMap<Arc<str>, Arc<Followed>>>,
    sink: tokio::sync::Mutex<Option<PubSubSink>>,
    /// Where what other nodes send this one goes.
    node_sink: OnceLock<Arc<dyn NodeSink>>,
    stats: EngineStats,
    /// The nodes alive at the last beat (None before the first): forwarded requests go
    /// to those only, never into the inbox of a made-up or dead node.
    alive: Mutex<Option<HashSet<u64>>>,
    /// Bytes of forwarded requests waiting to be written (at most [`MAX_FORWARDING`]).
    forwarding: Arc<AtomicUsize>,
}

fn failed(url: &str, e: &redis::RedisError) -> StorageError {
    StorageError::caused_by(format!("Redis at {url}: {e}"), e.clone())
}

fn no_answer(url: &str) -> StorageError {
    StorageError::new(format!("Redis at {url}: no answer"))
}

impl Redis {
    /// Connects to Redis at `url`, checks its version (6.2 or later: the scripts use
    /// exclusive stream ranges), takes a node number, and starts the node's tasks: writing,
    /// subscriptions, beats.
    pub(crate) async fn open(
        url: &str,
        prefix: &str,
        options: Options,
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
        .map_err(|_| no_answer(url))?
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
                retention: options.retention,
                dedupe_window: options.dedupe_window,
                reactions: options.reactions,
                client,
                conn,
                scripts: Scripts::new(),
                commands,
                in_flight: InFlight::new(MAX_IN_FLIGHT),
                subs: Mutex::new(HashMap::new()),
                sink: tokio::sync::Mutex::new(None),
                node_sink: OnceLock::new(),
                stats,
                alive: Mutex::new(None),
                forwarding: Arc::new(AtomicUsize::new(0)),
            }),
        };
        redis.inner.load_scripts().await?;
        let (connected, ready) = oneshot::channel();
        tokio::spawn(subscriber(redis.inner.clone(), connected));
        ready
            .await
            .map_err(|_| StorageError::new(format!("Redis at {url}: could not subscribe")))??;
        tokio::spawn(writer(Arc::downgrade(&redis.inner), queue));
        tokio::spawn(beats(Arc::downgrade(&redis.inner)));
        tracing::info!(url, prefix, node, "joined the Redis cluster");
        Ok(redis)
    }
}

impl Broker for Redis {
    fn node(&self) -> u64 {
        self.inner.node
    }

    fn start(&self, sink: Arc<dyn NodeSink>) {
        let _ = self.inner.node_sink.set(sink);
    }

    /// Subscribes to room `room` and reads it: its epoch, number, newest `tail` messages
    /// and members. What arrives on its channel meanwhile waits, and is applied after.
    fn attach(&self, room: &str, sink: Arc<dyn RoomSink>, tail: usize) -> EngineFuture<'_, Loaded> {
        let name: Arc<str> = room.into();
        let followed = Arc::new(Followed {
            name: name.clone(),
            sink,
            order: Mutex::new(Order {
                syncing: Some(Vec::new()),
                ..Order::default()
            }),
        });
        self.inner
            .subs
            .lock()
            .unwrap()
            .insert(name.clone(), followed.clone());
        Box::pin(async move {
            let inner = &self.inner;
            let read = async {
                inner.subscribe(&name).await?;
                let snapshot = inner.read(&name, None, tail).await?;
                // The newest messages, in their current state, and the changes among the
                // records read.
                let mut tail: Vec<StoredMessage> =
                    snapshot.records.iter().filter_map(as_message).collect();
                inner.current(&name, &mut tail).await?;
                let (from, changed) = inner.changes_among(&name, &snapshot.records, &tail).await?;
                tail.retain(|m| !m.deleted);
                let from = from.min(snapshot.seq + 1);
                Ok((snapshot, tail, (from, changed)))
            };
            match read.await {
                Ok((snapshot, tail, changes)) => {
                    let node = inner.node;
                    let mut loaded = Loaded::new(snapshot.epoch, snapshot.seq, tail);
                    loaded.changes = Some(changes);
                    // This node's own members are listed as they join here: Redis may
                    // still list some that left a moment ago.
                    loaded.members = snapshot
                        .members
                        .into_iter()
                        .filter(|m| m.id >> 32 != node)
                        .map(MemberInfo::from)
                        .collect();
                    let mut order = followed.order.lock().unwrap();
                    order.epoch = snapshot.epoch;
                    order.delivered = snapshot.seq;
                    let waiting = order.syncing.take().unwrap_or_default();
                    inner.apply(&followed, &mut order, waiting);
                    Ok(loaded)
                }
                Err(e) => {
                    self.detach(&name);
                    Err(e)
                }
            }
        })
    }

    /// This node no longer holds room `room`: unsubscribes.
    fn detach(&self, room: &str) {
        self.inner.subs.lock().unwrap().remove(room);
        let inner = self.inner.clone();
        let channel = inner.channel(room);
        let name: Arc<str> = room.into();
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

    fn release_idle_rooms(&self) -> bool {
        true
    }

    fn append(&self, room: &str, record: Record) -> Result<EngineFuture<'static, Appended>, Busy> {
        let inner = &self.inner;
        let Some(followed) = inner.subs.lock().unwrap().get(room).cloned() else {
            let error = StorageError::new(format!("room {room} is not held here"));
            return Ok(Box::pin(std::future::ready(Err(error))));
        };
        if !inner.in_flight.take() {
            return Err(Busy(record));
        }
        let (done, result) = oneshot::channel();
        let command = Command::Publish {
            room: followed,
            record,
            done,
        };
        if let Err(mpsc::error::SendError(Command::Publish { done, .. })) =
            inner.commands.send(command)
        {
            inner.in_flight.answered(1);
            let _ = done.send(Err(StorageError::new("the Redis writer stopped")));
        }
        Ok(Box::pin(async move {
            result
                .await
                .unwrap_or_else(|_| Err(StorageError::new("the Redis writer stopped")))
        }))
    }

    fn ready(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.inner.in_flight.ready())
    }

    fn range(&self, room: &str, from: u64, to: u64, limit: usize) -> EngineFuture<'_, Missed> {
        let (log, name) = (self.inner.key(room, "log"), room.to_owned());
        Box::pin(async move {
            let inner = &self.inner;
            if to <= from {
                return Ok(Missed::new(Vec::new(), Vec::new(), true));
            }
            let entries: Value = inner
                .query(
                    redis::cmd("XRANGE")
                        .arg(&log)
                        .arg(format!("{from}-0"))
                        .arg(format!("{}-0", to - 1)),
                )
                .await?;
            let records = entries_of(entries);
            // Every number from the floor on has its entry (but reactions').
            let floor: Option<u64> = inner
                .query(
                    redis::cmd("HGET")
                        .arg(inner.key(&name, "meta"))
                        .arg("floor"),
                )
                .await?;
            let whole = floor.is_none_or(|floor| floor <= from);
            let mut messages: Vec<StoredMessage> = records.iter().filter_map(as_message).collect();
            let mut targets: Vec<u64> = records
                .iter()
                .filter(|r| !r.record.is_message() && r.record.target < from)
                .map(|r| r.record.target)
                .collect();
            let reacted = inner.reacted(&name, from, to).await?;
            targets.extend(
                reacted
                    .into_iter()
                    .map(|(target, _)| target)
                    .filter(|t| *t < from),
            );
            targets.sort_unstable();
            targets.dedup();
            let changed = inner.messages(&name, &targets).await?;
            inner.current(&name, &mut messages).await?;
            messages.retain(|m| !m.deleted);
            let all = messages.len() <= limit;
            messages.drain(..messages.len().saturating_sub(limit));
            Ok(Missed::new(messages, changed, whole && all))
        })
    }

    fn message(&self, room: &str, seq: u64) -> EngineFuture<'_, Option<StoredMessage>> {
        let name = room.to_owned();
        Box::pin(async move { Ok(self.inner.messages(&name, &[seq]).await?.pop()) })
    }

    fn reactors(
        &self,
        room: &str,
        seq: u64,
        after: u64,
        limit: usize,
    ) -> EngineFuture<'_, ReactorsPage> {
        let key = self.inner.key(room, &format!("reactors:{seq}"));
        Box::pin(async move {
            let found: Vec<(String, u64)> = self
                .inner
                .query(
                    redis::cmd("ZRANGEBYSCORE")
                        .arg(&key)
                        .arg(format!("({after}"))
                        .arg("+inf")
                        .arg("WITHSCORES")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(limit + 1),
                )
                .await?;
            let read = found.into_iter().filter_map(|(entry, at)| {
                let (reaction, sender, from): (String, String, String) =
                    serde_json::from_str(&entry).ok()?;
                Some(Reactor::new(reaction, from, sender, at))
            });
            Ok(ReactorsPage::of(read.collect(), limit))
        })
    }

    fn reacted_by(
        &self,
        room: &str,
        sender: &str,
        from: u64,
    ) -> EngineFuture<'_, Vec<(u64, String)>> {
        let key = self.inner.key(room, &format!("mine:{sender}"));
        Box::pin(async move {
            let stored: HashMap<u64, String> =
                self.inner.query(redis::cmd("HGETALL").arg(&key)).await?;
            let mut own: Vec<(u64, String)> = Vec::new();
            for (seq, mine) in stored.into_iter().filter(|(seq, _)| *seq >= from) {
                let mine: Vec<(String, String)> = serde_json::from_str(&mine).unwrap_or_default();
                own.extend(mine.into_iter().map(|(reaction, _)| (seq, reaction)));
            }
            own.sort_by_key(|(seq, _)| *seq);
            Ok(own)
        })
    }

    fn page(&self, room: &str, before: u64, limit: usize) -> EngineFuture<'_, HistoryPage> {
        let (log, name) = (self.inner.key(room, "log"), room.to_owned());
        Box::pin(async move {
            let inner = &self.inner;
            let cutoff = inner.cutoff();
            // Newest first; changes and deleted messages are not history: read on until
            // the page is full or the stream ends.
            let mut messages: Vec<StoredMessage> = Vec::new();
            let mut below = before.min(i64::MAX as u64);
            let mut ended = false;
            while messages.len() <= limit && !ended && below > 1 {
                let want = limit + 1 - messages.len();
                let entries: Value = inner
                    .query(
                        redis::cmd("XREVRANGE")
                            .arg(&log)
                            .arg(format!("({below}-0"))
                            .arg("-")
                            .arg("COUNT")
                            .arg(want),
                    )
                    .await?;
                let records = entries_of(entries);
                ended = records.len() < want;
                below = records.last().map_or(1, |r| r.seq);
                let mut found: Vec<StoredMessage> = records
                    .iter()
                    .filter_map(as_message)
                    .filter(|m| m.time >= cutoff)
                    .collect();
                inner.current(&name, &mut found).await?;
                messages.extend(found.into_iter().filter(|m| !m.deleted));
            }
            let more = messages.len() > limit;
            messages.truncate(limit);
            messages.reverse();
            Ok(HistoryPage::new(messages, more))
        })
    }

    fn bans(&self) -> EngineFuture<'_, Vec<Ban>> {
        Box::pin(async move {
            let stored: HashMap<String, u64> = self
                .inner
                .query(redis::cmd("HGETALL").arg(format!("{}/bans", self.inner.prefix)))
                .await?;
            Ok(stored
                .into_iter()
                .filter_map(|(field, until)| {
                    let (room, user) = field.split_once('\0')?;
                    Some(Ban::new(
                        (!room.is_empty()).then(|| room.to_owned()),
                        user.to_owned(),
                        until,
                    ))
                })
                .collect())
        })
    }

    fn ban(&self, room: Option<&str>, user: &str, until: Option<u64>) -> EngineFuture<'_, ()> {
        let inner = &self.inner;
        let field = format!("{}\0{user}", room.unwrap_or(""));
        let key = format!("{}/bans", inner.prefix);
        let mut cmd = match until {
            Some(_) => redis::cmd("HSET"),
            None => redis::cmd("HDEL"),
        };
        cmd.arg(key).arg(field);
        if let Some(until) = until {
            cmd.arg(until);
        }
        Box::pin(async move { inner.query::<()>(&cmd).await })
    }

    /// Members of this node join room `room`: resolves once Redis lists them (or could
    /// not be reached), so that a member told it joined is listed on every node.
    fn joined(&self, room: &str, members: Vec<MemberInfo>) -> BoxFuture<'_, ()> {
        let (written, done) = oneshot::channel();
        let command = Command::Join {
            room: room.into(),
            members: members.into_iter().map(Listed::from).collect(),
            written: Some(written),
        };
        let sent = self.inner.commands.send(command).is_ok();
        Box::pin(async move {
            if sent {
                let _ = done.await;
            }
        })
    }

    fn left(&self, room: &str, ids: Vec<u64>) {
        let _ = self.inner.commands.send(Command::Leave {
            room: room.into(),
            ids,
        });
    }

    /// Members of `room` (over all nodes) with ids above `after`, at most `limit`, the
    /// room's count, and the `after` of the next page.
    fn members_page(
        &self,
        room: &str,
        after: Option<u64>,
        limit: usize,
    ) -> EngineFuture<'_, Option<MembersPage>> {
        let key = self.inner.key(room, "m");
        Box::pin(async move {
            let mut pipe = redis::pipe();
            pipe.cmd("ZCARD")
                .arg(&key)
                .cmd("ZRANGEBYSCORE")
                .arg(&key)
                .arg(after.map_or("-inf".to_owned(), |a| format!("({a}")))
                .arg("+inf")
                .arg("LIMIT")
                .arg(0)
                .arg(limit.min(i64::MAX as usize - 1) + 1);
            let (count, listed): (usize, Vec<String>) = self.inner.query_pipe(&pipe).await?;
            let mut members: Vec<MemberInfo> = listed
                .iter()
                .filter_map(|entry| serde_json::from_str::<Listed>(entry).ok())
                .map(MemberInfo::from)
                .collect();
            // One more than asked for says whether there is a next page; a page of none
            // has no next one to point to.
            let next = (limit > 0 && members.len() > limit).then(|| members[limit - 1].id);
            members.truncate(limit);
            Ok(Some(MembersPage::new(members, count, next)))
        })
    }

    fn typing(&self, room: &str, member: u64, name: &str) {
        let event = serde_json::json!({"kind": "typing", "node": self.inner.node, "id": member, "name": name});
        let channel = self.inner.channel(room);
        let _ = self.inner.commands.send(Command::Notice {
            channel: channel.into(),
            payload: event.to_string().into(),
            _counted: None,
        });
    }

    /// Tells every other node: on the control channel, after the writes queued before,
    /// naming this node (which skips its own).
    fn broadcast(&self, payload: Bytes) {
        let mut message = format!("{} ", self.inner.node).into_bytes();
        message.extend_from_slice(&payload);
        let channel = format!("{}/ctl", self.inner.prefix);
        let _ = self.inner.commands.send(Command::Notice {
            channel: channel.into(),
            payload: message.into(),
            _counted: None,
        });
    }

    /// Sends a request (or an answer) to node `node`, if it is alive and this node's
    /// forwarding budget has room for it.
    fn forward(&self, node: u64, payload: Bytes) -> bool {
        let inner = &self.inner;
        let alive = inner.alive.lock().unwrap();
        if alive.as_ref().is_some_and(|alive| !alive.contains(&node)) {
            return false;
        }
        drop(alive);
        // Named by its sender, which the receiver then knows to be alive (a node started
        // since the receiver's last beat is asked, and must be answered).
        let mut message = format!("{} ", inner.node).into_bytes();
        message.extend_from_slice(&payload);
        let bytes = message.len();
        if inner.forwarding.fetch_add(bytes, Ordering::Relaxed) + bytes > MAX_FORWARDING {
            inner.forwarding.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        let counted = Forwarding {
            queued: inner.forwarding.clone(),
            bytes,
        };
        let channel = format!("{}/inbox/{node}", inner.prefix);
        let _ = inner.commands.send(Command::Notice {
            channel: channel.into(),
            payload: message.into(),
            _counted: Some(counted),
        });
        true
    }

    /// The key of public sender ids: made by the first node that asks, the same for every
    /// node after it.
    fn sender_key(&self) -> EngineFuture<'_, Vec<u8>> {
        let key = format!("{}/sender-key", self.inner.prefix);
        Box::pin(async move {
            let mut pipe = redis::pipe();
            pipe.atomic()
                .cmd("SET")
                .arg(&key)
                .arg(&random_bytes::<32>()[..])
                .arg("NX")
                .ignore()
                .cmd("GET")
                .arg(&key);
            let (value,): (Vec<u8>,) = self.inner.query_pipe(&pipe).await?;
            Ok(value)
        })
    }

    fn mark_read(
        &self,
        room: &str,
        reader: &str,
        to: Option<u64>,
    ) -> EngineFuture<'_, (ReadState, bool)> {
        let mut pipe = redis::pipe();
        pipe.invoke_script(&self.inner.read_invocation(room, reader, to));
        Box::pin(async move {
            let (read,): (Vec<u64>,) = self.inner.query_pipe(&pipe).await?;
            match read[..] {
                [mark, unread, mentions, head, moved] => {
                    Ok((ReadState::new(mark, unread, mentions, head), moved == 1))
                }
                _ => Err(StorageError::new("Redis: unexpected answer to a read mark")),
            }
        })
    }

    fn unread(&self, reader: &str) -> EngineFuture<'_, Vec<(String, ReadState)>> {
        let (inner, reader) = (&self.inner, reader.to_owned());
        Box::pin(async move {
            let rooms: Vec<String> = inner
                .query(redis::cmd("HKEYS").arg(inner.reads_key(&reader)))
                .await?;
            if rooms.is_empty() {
                return Ok(Vec::new());
            }
            // One round trip for every room: each room's state from its mark.
            let mut pipe = redis::pipe();
            for room in &rooms {
                pipe.invoke_script(&inner.read_invocation(room, &reader, None));
            }
            let states: Vec<Vec<u64>> = inner.query_pipe(&pipe).await?;
            Ok(rooms
                .into_iter()
                .zip(states)
                .filter_map(|(room, read)| match read[..] {
                    [mark, unread, mentions, head, _] => {
                        Some((room, ReadState::new(mark, unread, mentions, head)))
                    }
                    _ => None,
                })
                .collect())
        })
    }

    /// Whether Redis answers a PING within the response timeout.
    fn reachable(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.inner
                .query::<String>(&redis::cmd("PING"))
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
    }

    /// Resolves once every write queued so far went to Redis.
    fn flush(&self) -> BoxFuture<'_, ()> {
        let (done, flushed) = oneshot::channel();
        let sent = self.inner.commands.send(Command::Flush(done)).is_ok();
        Box::pin(async move {
            if sent {
                let _ = flushed.await;
            }
        })
    }

    /// This node stops: it no longer beats, and any member it still lists (one whose
    /// leave failed) is removed by the next beat of another node.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // A beat from long ago: the next node to beat finds this one dead.
            let _ = self.inner.beat(false, "gone").await;
        })
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

impl Inner {
    /// How a message names the submission it came from: `node:token`.
    fn origin(&self, token: u64) -> String {
        format!("{}:{token}", self.node)
    }

    /// The hash of reader `reader`'s marks, by room.
    fn reads_key(&self, reader: &str) -> String {
        format!("{}/reads/{reader}", self.prefix)
    }

    /// Runs [`READ`] for `reader` in `room`, raising its mark to `to` (or reading it).
    fn read_invocation(
        &self,
        room: &str,
        reader: &str,
        to: Option<u64>,
    ) -> redis::ScriptInvocation<'_> {
        let mut invocation = self.scripts.read.key(self.key(room, "meta"));
        invocation
            .key(self.key(room, "live"))
            .key(self.reads_key(reader))
            .key(self.key(room, &format!("mn:{reader}")))
            .arg(room)
            .arg(to.map(|to| to.to_string()).unwrap_or_default())
            .arg(self.retention.age_ms);
        invocation
    }

    fn key(&self, room: &str, what: &str) -> String {
        format!("{}:{room}/{what}", self.prefix)
    }

    fn channel(&self, room: &str) -> String {
        self.key(room, "c")
    }

    /// Messages older than this (ms since 1970) are past their retention age.
    fn cutoff(&self) -> u64 {
        now_ms().saturating_sub(self.retention.age_ms)
    }

    /// Runs `cmd` on the shared connection, within the response timeout.
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StorageError> {
        tokio::time::timeout(RESPONSE_TIMEOUT, cmd.query_async(&mut self.conn.clone()))
            .await
            .map_err(|_| no_answer(&self.url))?
            .map_err(|e| failed(&self.url, &e))
    }

    /// Runs `pipe` on the shared connection, within the response timeout.
    async fn query_pipe<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, StorageError> {
        tokio::time::timeout(RESPONSE_TIMEOUT, pipe.query_async(&mut self.conn.clone()))
            .await
            .map_err(|_| no_answer(&self.url))?
            .map_err(|e| failed(&self.url, &e))
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
    ) -> Result<redis::RedisResult<(u64, Vec<u64>)>, tokio::time::error::Elapsed> {
        let mut call = self.scripts.beat.key(format!("{}/nodes", self.prefix));
        call.arg(self.node)
            .arg(NODE_TIMEOUT.as_millis() as u64)
            .arg(if judge { "1" } else { "0" })
            .arg(&self.prefix)
            .arg(mode);
        tokio::time::timeout(RESPONSE_TIMEOUT, call.invoke_async(&mut self.conn.clone())).await
    }

    async fn subscribe(&self, room: &str) -> Result<(), StorageError> {
        let mut sink = self.sink.lock().await;
        let sink = sink
            .as_mut()
            .ok_or_else(|| StorageError::new(format!("Redis at {}: not connected", self.url)))?;
        tokio::time::timeout(RESPONSE_TIMEOUT, sink.subscribe(self.channel(room)))
            .await
            .map_err(|_| no_answer(&self.url))?
            .map_err(|e| failed(&self.url, &e))
    }

    /// Messages `seqs` of `room` that its stream still has (changes' numbers are none), in
    /// their current state: one round trip for the entries, one for their states.
    async fn messages(&self, room: &str, seqs: &[u64]) -> Result<Vec<StoredMessage>, StorageError> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let log = self.key(room, "log");
        let mut pipe = redis::pipe();
        for seq in seqs {
            let id = format!("{seq}-0");
            pipe.cmd("XRANGE").arg(&log).arg(&id).arg(&id);
        }
        let found: Vec<Value> = self.query_pipe(&pipe).await?;
        let mut messages: Vec<StoredMessage> = found
            .into_iter()
            .flat_map(entries_of)
            .filter_map(|r| as_message(&r))
            .collect();
        self.current(room, &mut messages).await?;
        Ok(messages)
    }

    /// The changes among a room's newest `records` (oldest first, as a room is taken up):
    /// from the first record's number on, each changed message once, with the number of its
    /// last change there and its current state — `newest`, the messages among the records in
    /// their current state, or read. What the hub replays without asking Redis again.
    async fn changes_among(
        &self,
        room: &str,
        records: &[Numbered],
        newest: &[StoredMessage],
    ) -> Result<(u64, Vec<(u64, StoredMessage)>), StorageError> {
        let Some(first) = records.first().map(|r| r.seq) else {
            return Ok((u64::MAX, Vec::new()));
        };
        let mut last: HashMap<u64, u64> = HashMap::new();
        for r in records.iter().filter(|r| !r.record.is_message()) {
            last.insert(r.record.target, r.seq);
        }
        for (target, at) in self.reacted(room, first, u64::MAX).await? {
            let at = last.get(&target).map_or(at, |edit| at.max(*edit));
            last.insert(target, at);
        }
        let older: Vec<u64> = last.keys().copied().filter(|t| *t < first).collect();
        let read = self.messages(room, &older).await?;
        let changed = newest
            .iter()
            .filter(|m| last.contains_key(&m.seq))
            .chain(&read)
            .map(|m| (last[&m.seq], m.clone()))
            .collect();
        Ok((first, changed))
    }

    /// The messages of `room` whose reactions last changed by a reaction numbered `from <=
    /// at < to`: (message, at).
    async fn reacted(
        &self,
        room: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, u64)>, StorageError> {
        let upto = match to {
            u64::MAX => "+inf".to_owned(),
            to => format!("({to}"),
        };
        self.query(
            redis::cmd("ZRANGEBYSCORE")
                .arg(self.key(room, "reacted"))
                .arg(from)
                .arg(upto)
                .arg("WITHSCORES"),
        )
        .await
    }

    /// Brings `messages` of `room` (as their stream entries have them) to their current
    /// state, from the room's hash of states: one round trip.
    async fn current(
        &self,
        room: &str,
        messages: &mut [StoredMessage],
    ) -> Result<(), StorageError> {
        if messages.is_empty() {
            return Ok(());
        }
        // Per message: its text and time of edit, its deletion, its quote's deletion, and
        // its reactions.
        let mut fields = redis::cmd("HMGET");
        fields.arg(self.key(room, "state"));
        for m in messages.iter() {
            let quoted = m.reply.as_ref().map_or(0, |q| q.seq);
            fields
                .arg(format!("x:{}", m.seq))
                .arg(format!("e:{}", m.seq))
                .arg(format!("d:{}", m.seq))
                .arg(format!("d:{quoted}"))
                .arg(format!("r:{}", m.seq));
        }
        let states: Vec<Option<String>> = self.query(&fields).await?;
        for (m, state) in messages.iter_mut().zip(states.chunks(5)) {
            let [text, edited, deleted, quote_deleted, reactions] = state else {
                continue;
            };
            let counts: Vec<(String, u32)> = reactions
                .as_deref()
                .and_then(|json| serde_json::from_str(json).ok())
                .unwrap_or_default();
            m.reactions = counts
                .into_iter()
                .map(|(reaction, count)| ReactionCount::new(reaction, count))
                .collect();
            if deleted.is_some() {
                m.deleted = true;
                m.text.clear();
                m.reactions.clear();
            } else if let (Some(text), Some(edited)) = (text, edited) {
                m.text.clone_from(text);
                m.edited = edited.parse().ok();
            }
            if quote_deleted.is_some() {
                m.reply = m.reply.take().map(Quote::of_deleted);
            }
        }
        Ok(())
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
            .arg(now_ms())
            .arg(after.map(|a| a.to_string()).unwrap_or_default())
            .arg(tail)
            .arg(self.retention.age_ms);
        let reply: Value = tokio::time::timeout(
            RESPONSE_TIMEOUT,
            invocation.invoke_async(&mut self.conn.clone()),
        )
        .await
        .map_err(|_| no_answer(&self.url))?
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
        let mut records = entries_of(entries);
        if after.is_none() {
            records.reverse();
        }
        let cutoff = self.cutoff();
        records.retain(|r| r.record.time >= cutoff);
        Ok(Snapshot {
            epoch: epoch.parse().unwrap_or(0),
            seq: seq.parse().unwrap_or(0),
            records,
            members: members
                .iter()
                .filter_map(|entry| serde_json::from_str(entry).ok())
                .collect(),
        })
    }

    /// Puts what arrived for `room` in order and hands it on (under its order lock).
    /// Messages are handed on in sequence order: one that comes early (a number was
    /// skipped: a lost or late message) waits while the node reads what it missed.
    fn apply(self: &Arc<Self>, room: &Arc<Followed>, order: &mut Order, events: Vec<Event>) {
        if let Some(waiting) = &mut order.syncing {
            waiting.extend(events);
            return;
        }
        if order.lost {
            return;
        }
        let mut out = Vec::new();
        for event in events {
            match event {
                Event::Message(message) => {
                    if message.epoch != order.epoch {
                        order.lost = true;
                        out.push(RoomEvent::Lost);
                        break;
                    }
                    if message.seq <= order.delivered {
                        continue;
                    }
                    if order.fetching || message.seq > order.delivered + 1 {
                        order.heard = order.heard.max(message.seq);
                        order.early.insert(message.seq, message);
                        if !order.fetching {
                            order.fetching = true;
                            self.catch_up(room, order.delivered);
                        }
                        continue;
                    }
                    order.delivered = message.seq;
                    out.push(RoomEvent::Record(message.numbered()));
                }
                // This node's own events took effect here already.
                Event::Join { node, .. }
                | Event::Leave { node, .. }
                | Event::Typing { node, .. }
                    if node == self.node => {}
                Event::Join { members, .. } => {
                    out.push(RoomEvent::Joined(
                        members.into_iter().map(Into::into).collect(),
                    ));
                }
                Event::Leave { ids, .. } => out.push(RoomEvent::Left(ids)),
                Event::Typing { id, name, .. } => {
                    out.push(RoomEvent::Typing { member: id, name });
                }
            }
        }
        if !out.is_empty() {
            room.sink.receive(out);
        }
    }

    /// What Redis said of a message this node published: stored (handed to the room now if
    /// it is the next one, else when it comes back on the room's channel after the ones
    /// before it), a retry of one stored before, or not stored.
    fn outcome(&self, room: &Followed, outcome: &Result<Outcome, StorageError>) {
        let Ok(Outcome::Stored(message)) = outcome else {
            return;
        };
        let mut order = room.order.lock().unwrap();
        order.heard = order.heard.max(message.seq);
        // The next message here: handed on now, without waiting for its copy on the
        // room's channel (which is then one this room has).
        if order.syncing.is_none()
            && !order.fetching
            && !order.lost
            && message.epoch == order.epoch
            && message.seq == order.delivered + 1
        {
            order.delivered = message.seq;
            room.sink
                .receive(vec![RoomEvent::Record(message.numbered())]);
        }
    }

    /// Reads what `room` missed after `after` (and its members), and applies it.
    fn catch_up(self: &Arc<Self>, room: &Arc<Followed>, after: u64) {
        let inner = self.clone();
        let room = room.clone();
        tokio::spawn(async move {
            let read = inner.read(&room.name, Some(after), 0).await;
            let mut order = room.order.lock().unwrap();
            match read {
                Ok(snapshot) => inner.caught_up(&room, &mut order, snapshot),
                Err(e) => {
                    tracing::warn!(room = %room.name, error = %e, "could not catch up");
                    order.fetching = false;
                    order.stale = true;
                }
            }
        });
    }

    /// What the room missed, read from Redis: handed on in order with what came early, and
    /// the members elsewhere brought up to date.
    fn caught_up(&self, room: &Followed, order: &mut Order, snapshot: Snapshot) {
        if order.lost {
            return;
        }
        if snapshot.epoch != order.epoch {
            order.lost = true;
            return room.sink.receive(vec![RoomEvent::Lost]);
        }
        let mut messages: BTreeMap<u64, Numbered> = std::mem::take(&mut order.early)
            .into_iter()
            .map(|(seq, m)| (seq, m.numbered()))
            .collect();
        for record in snapshot.records {
            messages.entry(record.seq).or_insert(record);
        }
        let delivered = order.delivered;
        let mut out: Vec<RoomEvent> = messages
            .into_values()
            .filter(|m| m.seq > delivered)
            .map(RoomEvent::Record)
            .collect();
        // A number Redis handed out that is in no stream entry was trimmed.
        let last = out.iter().rev().find_map(|e| match e {
            RoomEvent::Record(r) => Some(r.seq),
            _ => None,
        });
        order.delivered = order.delivered.max(snapshot.seq).max(last.unwrap_or(0));
        order.fetching = false;
        order.lagging = false;
        order.stale = false;
        // This node's own members are listed as they join here.
        let node = self.node;
        out.push(RoomEvent::Members(
            snapshot
                .members
                .into_iter()
                .filter(|m| m.id >> 32 != node)
                .map(Into::into)
                .collect(),
        ));
        room.sink.receive(out);
    }

    /// Once a beat: rooms that fell behind what Redis reported (or whose catch-up failed)
    /// catch up.
    fn check_lag(self: &Arc<Self>) {
        let rooms: Vec<Arc<Followed>> = self.subs.lock().unwrap().values().cloned().collect();
        for room in rooms {
            let mut order = room.order.lock().unwrap();
            if order.syncing.is_some() || order.fetching || order.lost {
                continue;
            }
            if order.heard > order.delivered || order.stale {
                if order.lagging || order.stale {
                    order.fetching = true;
                    self.catch_up(&room, order.delivered);
                } else {
                    order.lagging = true;
                }
            } else {
                order.lagging = false;
            }
        }
    }

    /// Lists again (after Redis forgot them) the members connected here of every room.
    fn list_again(&self, rooms: &[Arc<Followed>]) {
        for room in rooms {
            let members = room.sink.members_here();
            if !members.is_empty() {
                let _ = self.commands.send(Command::Join {
                    room: room.name.clone(),
                    members: members.into_iter().map(Listed::from).collect(),
                    written: None,
                });
            }
        }
    }
}

/// Stream entries as messages with their origins.
fn entries_of(entries: Value) -> Vec<Numbered> {
    let entries: Vec<(String, HashMap<String, String>)> =
        redis::from_redis_value(entries).unwrap_or_default();
    entries
        .into_iter()
        .filter_map(|(id, mut fields)| {
            let seq = id.split_once('-')?.0.parse().ok()?;
            let kind = match fields.get("k") {
                Some(kind) => RecordKind::parse(kind)?,
                None => RecordKind::Message,
            };
            let target = fields.get("g").and_then(|g| g.parse().ok()).unwrap_or(0);
            let time = fields.get("t")?.parse().ok()?;
            let (node, token) = origin_of(&fields.remove("o").unwrap_or_default());
            let mut record =
                Record::change(kind, target, time, fields.remove("f")?, fields.remove("x")?);
            record.sender = fields.remove("s").filter(|s| !s.is_empty()).map(Into::into);
            if let Some(quoted) = fields.get("r").and_then(|r| r.parse().ok()) {
                let (from, text) = (fields.remove("rf"), fields.remove("rt"));
                let quote = Quote::new(quoted, from.unwrap_or_default(), &text.unwrap_or_default());
                record.reply = Some(Box::new(quote));
            }
            if let Some(mentions) = fields.get("mn") {
                let ids: Vec<String> = serde_json::from_str(mentions).unwrap_or_default();
                record.mentions = ids.into_iter().map(Into::into).collect();
            }
            record.token = token;
            Some(Numbered::new(seq, node, record))
        })
        .collect()
}

/// A stream entry that is a message, as history shows it (before its changes: see
/// [`Inner::current`]).
fn as_message(entry: &Numbered) -> Option<StoredMessage> {
    let record = &entry.record;
    let mut message = StoredMessage::new(
        entry.seq,
        record.time,
        record.from.to_string(),
        record.sender.as_deref().map(str::to_owned),
        record.text.to_string(),
    );
    message.deleted = !record.is_message();
    message.reply = record.reply.as_deref().cloned();
    message.mentions = record.mentions.iter().map(|m| m.to_string()).collect();
    record.is_message().then_some(message)
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
        let mut answered = 0;
        match result {
            Ok(replies) => {
                for (command, reply) in batch.drain(..).zip(replies) {
                    match command {
                        Command::Publish { room, record, done } => {
                            answered += 1;
                            let token = record.token;
                            let outcome = outcome(reply, record, inner.origin(token));
                            inner.outcome(&room, &outcome);
                            let _ = done.send(outcome.map(|o| match o {
                                Outcome::Stored(m) => Appended::Stored(Position {
                                    epoch: m.epoch,
                                    seq: m.seq,
                                }),
                                Outcome::Duplicate(seq) => Appended::Duplicate(Position {
                                    epoch: room.order.lock().unwrap().epoch,
                                    seq,
                                }),
                            }));
                        }
                        Command::Join {
                            written: Some(done),
                            ..
                        }
                        | Command::Flush(done) => {
                            let _ = done.send(());
                        }
                        Command::Join { .. } | Command::Leave { .. } | Command::Notice { .. } => {}
                    }
                }
            }
            Err(e) => {
                let error = failed(&inner.url, &e);
                tracing::warn!(error = %error, "a write to Redis failed");
                for command in batch.drain(..) {
                    match command {
                        Command::Publish { done, .. } => {
                            answered += 1;
                            let _ = done.send(Err(error.clone()));
                        }
                        command @ Command::Leave { .. } => unsent.push(command),
                        // Joins are written again when the subscription comes back; waiting
                        // joins and flushes go on (their senders are dropped).
                        Command::Join { .. } | Command::Notice { .. } | Command::Flush(_) => {}
                    }
                }
            }
        }
        inner.in_flight.answered(answered);
    }
}

/// What the publish script said of `record`.
fn outcome(reply: Value, record: Record, origin: String) -> Result<Outcome, StorageError> {
    // A reaction's answer ends with what it came to.
    let mut reply: Vec<Value> = redis::from_redis_value(reply).unwrap_or_default();
    let reacted = match reply.len() {
        4 => reply.pop().and_then(|outcome| {
            let outcome: String = redis::from_redis_value(outcome).ok()?;
            serde_json::from_str::<Box<PublishedReacted>>(&outcome).ok()
        }),
        _ => None,
    };
    let numbers: Result<Vec<u64>, _> = reply.into_iter().map(redis::from_redis_value).collect();
    match numbers.as_deref() {
        Ok(&[1, seq, epoch]) => Ok(Outcome::Stored(Box::new(Published {
            seq,
            epoch,
            time: record.time,
            from: record.from.to_string(),
            sender: record.sender.as_deref().map(String::from),
            text: record.text.to_string(),
            origin,
            change: (!record.is_message()).then(|| record.kind.as_str().to_owned()),
            target: record.target,
            reply: record.reply.as_deref().map(|q| PublishedQuote {
                seq: q.seq,
                from: q.from.clone(),
                text: q.text.clone(),
            }),
            reacted,
            mentions: record.mentions.iter().map(|m| m.to_string()).collect(),
        }))),
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
            Command::Publish { room, record, .. } => {
                let name = &room.name;
                let origin = self.origin(record.token);
                let change = (!record.is_message()).then(|| record.kind.as_str());
                let reply = record.reply.as_deref();
                let mentions: Vec<&str> = record.mentions.iter().map(|m| &**m).collect();
                let fragment = serde_json::json!({
                    "kind": "message",
                    "time": record.time,
                    "from": &*record.from,
                    "sender": record.sender.as_deref(),
                    "text": &*record.text,
                    "origin": origin,
                    "change": change,
                    "target": record.target,
                    "reply": reply.map(|q| serde_json::json!({
                        "seq": q.seq, "from": q.from, "text": q.text,
                    })),
                    "mentions": mentions,
                })
                .to_string();
                // `{"seq":N,"epoch":E` comes from the script: the rest of the object.
                let fragment = format!(",{}", &fragment[1..]);
                let (dedupe_id, client_id) = record.dedupe_parts().unwrap_or(("", ""));
                if record.kind.is_reaction() {
                    let who = record.sender.as_deref().unwrap_or("");
                    let target = record.target;
                    pipe.invoke_script(
                        self.scripts
                            .react
                            .key(self.key(name, "meta"))
                            .key(self.key(name, "log"))
                            .key(self.key(name, "ids"))
                            .key(self.key(name, "ids-old"))
                            .key(self.key(name, "state"))
                            .key(self.key(name, &format!("mine:{who}")))
                            .key(self.key(name, &format!("reactors:{target}")))
                            .key(self.key(name, "reacted"))
                            .arg(now_ms())
                            .arg(record.time)
                            .arg(&*record.from)
                            .arg(who)
                            .arg(client_id)
                            .arg(&*record.text)
                            .arg(origin)
                            .arg(fragment)
                            .arg(self.reactions.per_message)
                            .arg(self.dedupe_window)
                            .arg(self.retention.age_ms)
                            .arg(self.reactions.per_member)
                            .arg(self.channel(name))
                            .arg(dedupe_id)
                            .arg(record.kind.as_str())
                            .arg(target),
                    );
                    return;
                }
                pipe.invoke_script(
                    self.scripts
                        .publish
                        .key(self.key(name, "meta"))
                        .key(self.key(name, "log"))
                        .key(self.key(name, "ids"))
                        .key(self.key(name, "ids-old"))
                        .key(self.key(name, "state"))
                        .key(self.key(name, "live"))
                        .key(self.reads_key(record.sender.as_deref().unwrap_or("")))
                        .arg(now_ms())
                        .arg(record.time)
                        .arg(&*record.from)
                        .arg(record.sender.as_deref().unwrap_or(""))
                        .arg(client_id)
                        .arg(&*record.text)
                        .arg(origin)
                        .arg(fragment)
                        .arg(self.retention.messages)
                        .arg(self.dedupe_window)
                        .arg(self.retention.age_ms)
                        .arg(self.cutoff())
                        .arg(self.channel(name))
                        .arg(dedupe_id)
                        .arg(change.unwrap_or(""))
                        .arg(record.target)
                        .arg(reply.map_or(String::new(), |q| q.seq.to_string()))
                        .arg(reply.map_or("", |q| q.from.as_str()))
                        .arg(reply.map_or("", |q| q.text.as_str()))
                        .arg(&**name)
                        .arg(if mentions.is_empty() {
                            String::new()
                        } else {
                            serde_json::to_string(&mentions).expect("strings serialize")
                        })
                        .arg(self.key(name, "mn:")),
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
            Command::Notice {
                channel, payload, ..
            } => {
                pipe.cmd("PUBLISH").arg(&**channel).arg(&payload[..]);
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
async fn subscriber(inner: Arc<Inner>, connected: oneshot::Sender<Result<(), StorageError>>) {
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
                    _ => no_answer(&inner.url),
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
            // are handed on together, one push per member.
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
    /// bans and forwarded requests to the node.
    fn dispatch(
        self: &Arc<Self>,
        ctl: &str,
        inbox: &str,
        messages: impl Iterator<Item = redis::Msg>,
    ) {
        let mut rooms: Vec<(Arc<Followed>, Vec<Event>)> = Vec::new();
        for msg in messages {
            let channel = msg.get_channel_name();
            let payload = msg.get_payload_bytes();
            if channel == inbox {
                let Some(at) = payload.iter().position(|&b| b == b' ') else {
                    continue;
                };
                let sender = std::str::from_utf8(&payload[..at])
                    .ok()
                    .and_then(|n| n.parse::<u64>().ok());
                if let (Some(sender), Some(alive)) = (sender, &mut *self.alive.lock().unwrap()) {
                    alive.insert(sender);
                }
                if let Some(sink) = self.node_sink.get() {
                    sink.forwarded(Bytes::copy_from_slice(&payload[at + 1..]));
                }
                continue;
            }
            if channel == ctl {
                let from_elsewhere = payload
                    .iter()
                    .position(|&b| b == b' ')
                    .filter(|&at| payload[..at] != *self.node.to_string().as_bytes());
                if let (Some(at), Some(sink)) = (from_elsewhere, self.node_sink.get()) {
                    sink.broadcast(Bytes::copy_from_slice(&payload[at + 1..]));
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
            let event = match serde_json::from_slice::<Event>(payload) {
                Ok(event) => event,
                Err(e) => {
                    tracing::warn!(room = name, error = %e, "an unreadable event from Redis");
                    continue;
                }
            };
            let Some(room) = self.subs.lock().unwrap().get(name).cloned() else {
                continue;
            };
            match rooms.iter_mut().find(|(r, _)| Arc::ptr_eq(r, &room)) {
                Some((_, events)) => events.push(event),
                None => rooms.push((room, vec![event])),
            }
        }
        for (room, events) in rooms {
            let mut order = room.order.lock().unwrap();
            self.apply(&room, &mut order, events);
        }
    }
}

/// After a lost subscription: every room held subscribes again, reads what it missed and
/// its members, and writes its own members back (Redis may have lost them) and the leaves
/// it missed.
async fn resubscribe(inner: &Arc<Inner>) {
    let rooms: Vec<Arc<Followed>> = inner.subs.lock().unwrap().values().cloned().collect();
    for room in &rooms {
        let mut order = room.order.lock().unwrap();
        if order.syncing.is_none() {
            order.syncing = Some(Vec::new());
        }
    }
    for room in rooms {
        let after = room.order.lock().unwrap().delivered;
        let read = async {
            inner.subscribe(&room.name).await?;
            inner.read(&room.name, Some(after), 0).await
        };
        let read = read.await;
        let mut order = room.order.lock().unwrap();
        let waiting = order.syncing.take().unwrap_or_default();
        match read {
            Ok(snapshot) => {
                inner.caught_up(&room, &mut order, snapshot);
                inner.list_again(std::slice::from_ref(&room));
            }
            Err(e) => {
                // Redis went away again: the room catches up at the next beat, or when
                // the subscription comes back once more.
                tracing::warn!(room = %room.name, error = %e, "could not catch up after reconnecting");
                order.fetching = false;
                order.stale = true;
            }
        }
        inner.apply(&room, &mut order, waiting);
    }
    // The writer's next batch carries the leaves Redis missed, even with nothing else to
    // write.
    let _ = inner.commands.send(Command::Flush(oneshot::channel().0));
}

/// The beating task: every second, this node tells Redis it is alive (by Redis's clock)
/// and, once it has itself been alive for a whole timeout, removes nodes that stopped; and
/// the rooms that fell behind catch up.
async fn beats(inner: std::sync::Weak<Inner>) {
    let mut every = tokio::time::interval(BEAT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut alive_since: Option<Instant> = None;
    loop {
        every.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        inner.check_lag();
        // Only a node that has beaten for a whole timeout may judge others: after Redis
        // was away, every node's last beat is old, and they all need one beat first.
        let judge = alive_since.is_some_and(|t| t.elapsed() >= NODE_TIMEOUT);
        match inner.beat(judge, "beat").await {
            Ok(Ok((missing, alive))) => {
                *inner.alive.lock().unwrap() = Some(alive.into_iter().collect());
                if alive_since.is_none() {
                    alive_since = Some(Instant::now());
                }
                if missing == 1 {
                    // Redis forgot this node (it lost its data, or judged the node dead
                    // while it could not beat): write its members back.
                    let rooms: Vec<Arc<Followed>> =
                        inner.subs.lock().unwrap().values().cloned().collect();
                    inner.list_again(&rooms);
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
        assert_eq!(origin_of("7:42"), (7, 42));
        assert_eq!(origin_of(""), (0, 0));
        assert_eq!(origin_of("x:1"), (0, 0));
    }
}
