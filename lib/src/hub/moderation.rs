//! What the host decided about users and rooms: bans (and their expiry), each room's
//! presence policy, and the kicks and bans every node must apply, as they travel between
//! nodes.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::roster::Policy;
use crate::engine::Ban;
use crate::protocol::{CloseCode, now_ms};

/// What one node tells every other through the engine: kicks and bans, and the frames
/// meant for one user's connections wherever they are (see [`super::readers`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub(crate) enum Control {
    /// Close `user`'s connections in `room` (every room: None) with close code `code`.
    Kick {
        room: Option<String>,
        user: String,
        code: u16,
    },
    /// Close member `member` of `room` with close code `code`.
    Disconnect {
        room: String,
        member: u64,
        code: u16,
    },
    /// A ban set (`until` Some) or lifted.
    Ban {
        room: Option<String>,
        user: String,
        until: Option<u64>,
    },
    /// `frame` (a server frame, `\n` included) for the connections of each of `senders`
    /// (public sender ids).
    Tell { senders: Vec<String>, frame: String },
    /// `reader` (a public sender id) moved its mark in `room` to `seq`: its connections
    /// get `frame` (its `read` state), and a small room's members a receipt.
    Read {
        room: String,
        reader: String,
        seq: u64,
        frame: String,
    },
}

/// A close code another node sent, as ours.
pub(crate) fn close_code(code: u16) -> CloseCode {
    match code {
        4000 => CloseCode::Shutdown,
        4002 => CloseCode::Reconnect,
        _ => CloseCode::Kicked,
    }
}

/// (room, or "" for the whole server; user) → banned until, in ms since 1970.
type Bans = HashMap<(Box<str>, Box<str>), u64>;

/// The bans in force and the rooms' policies.
#[derive(Debug)]
pub(crate) struct Moderation {
    /// Read on every join of an identified user, written by the host.
    bans: Mutex<Bans>,
    /// Rooms whose presence policy the host set, by name: kept for rooms not in memory yet.
    policies: Mutex<HashMap<Box<str>, Policy>>,
    /// The policy of every other room.
    default_policy: Policy,
}

impl Moderation {
    /// With the bans the engine stored.
    pub(crate) fn new(bans: Vec<Ban>, default_policy: Policy) -> Moderation {
        let bans = bans
            .into_iter()
            .map(|ban| {
                let room = ban.room.unwrap_or_default().into_boxed_str();
                ((room, ban.user.into_boxed_str()), ban.until)
            })
            .collect();
        Moderation {
            bans: Mutex::new(bans),
            policies: Mutex::new(HashMap::new()),
            default_policy,
        }
    }

    /// Whether `user` is banned from `room` (or from the whole server) right now.
    pub(crate) fn banned(&self, room: &str, user: &str) -> bool {
        let bans = self.bans.lock().unwrap();
        if bans.is_empty() {
            return false;
        }
        let now = now_ms();
        [room, ""].into_iter().any(|scope| {
            bans.get(&(scope.into(), user.into()))
                .is_some_and(|&until| until > now)
        })
    }

    /// Notes a ban (`until` Some) or its lifting.
    pub(crate) fn note_ban(&self, room: Option<&str>, user: &str, until: Option<u64>) {
        let key = (room.unwrap_or("").into(), user.into());
        let mut bans = self.bans.lock().unwrap();
        match until {
            Some(until) => bans.insert(key, until),
            None => bans.remove(&key),
        };
    }

    /// Room `name`'s presence policy: the host's for it, else the server's.
    pub(crate) fn policy(&self, name: &str) -> Policy {
        let policies = self.policies.lock().unwrap();
        policies.get(name).copied().unwrap_or(self.default_policy)
    }

    /// Sets room `name`'s presence policy, for whenever it is created again too.
    pub(crate) fn set_policy(&self, name: &str, policy: Policy) {
        self.policies.lock().unwrap().insert(name.into(), policy);
    }
}
