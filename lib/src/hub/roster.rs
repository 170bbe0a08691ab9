//! A room's members, and how their comings and goings are told.
//!
//! Members connected here live in a `Vec`, so that the fan-out is one pass over contiguous
//! memory; on an engine shared by several nodes, the members connected to other nodes are
//! listed beside them (they count, page and are told about, but receive nothing from here).
//! An index by id covers both, so that a leave costs O(log n) and the list pages in id
//! order.
//!
//! A small room tells every join and leave to every member at once, and `joined` lists
//! everyone. Past its threshold a room is *big*: that would cost the square of its size to
//! fill, so `joined` carries the count and the first page, and joins and leaves are
//! gathered into one `presence` update per interval (the hub's ticker sends it). When it
//! shrinks below the threshold again, every member gets the whole list once, and it is
//! small again.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::member::{Member, MemberSummary};
use crate::protocol::{MEMBERS_PAGE, MemberRef};

/// Most joins and leaves one `presence` update lists; past it, the update carries only the
/// count, and clients that show a list page it again.
pub(crate) const UPDATE_MAX_CHANGES: usize = 100;

/// How a room tells its members who is there, once it is big.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Policy {
    /// Members at which the room becomes big.
    pub threshold: usize,
    /// A big room's updates carry only the count, never who came or went.
    pub counts_only: bool,
}

#[derive(Debug)]
pub(crate) struct Roster {
    /// Connected here: the room delivers to them.
    members: Vec<Member>,
    /// Connected to other nodes (on a shared engine).
    elsewhere: Vec<MemberSummary>,
    /// id → where the member is.
    index: BTreeMap<u64, Slot>,
    pub policy: Policy,
    big: bool,
    changes: Changes,
}

/// Where a member is listed.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Here(usize),
    Elsewhere(usize),
}

/// A member as listed: connected here or elsewhere.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Listed<'a> {
    pub id: u64,
    pub name: &'a Arc<str>,
    pub user: Option<&'a Arc<str>>,
    pub sender: Option<&'a str>,
}

impl<'a> Listed<'a> {
    pub(crate) fn as_ref(&self) -> MemberRef<'a> {
        MemberRef {
            id: self.id,
            name: self.name,
            sender: self.sender,
        }
    }

    pub(crate) fn summary(&self) -> MemberSummary {
        MemberSummary {
            id: self.id,
            name: self.name.clone(),
            user: self.user.cloned(),
            sender: self.sender.map(Into::into),
        }
    }
}

/// A member who left, and whether it was connected here.
#[derive(Debug)]
pub(crate) struct Gone {
    pub member: MemberSummary,
    pub here: bool,
}

/// Joins and leaves since a big room's last update.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    pub joined: Vec<(u64, Arc<str>)>,
    pub left: Vec<(u64, Arc<str>)>,
    /// More changed than one update lists (or the policy lists none): counts only.
    pub overflow: bool,
    /// Something changed: an update is due.
    pub due: bool,
}

/// What a membership change asks the room to send now.
pub(crate) enum Told {
    /// Nothing now: the change waits for the next update.
    Later,
    /// A small room: tell everyone about this change.
    Now,
    /// The room just became small again: send everyone the whole list.
    Everyone,
}

impl Roster {
    pub(crate) fn new(policy: Policy) -> Roster {
        Roster {
            members: Vec::new(),
            elsewhere: Vec::new(),
            index: BTreeMap::new(),
            policy,
            big: false,
            changes: Changes::default(),
        }
    }

    /// Members over all nodes.
    pub(crate) fn len(&self) -> usize {
        self.members.len() + self.elsewhere.len()
    }

    /// Whether the room is big: its joins, leaves and typing go out once per interval.
    pub(crate) fn is_big(&self) -> bool {
        self.big
    }

    /// Whether no member is connected here.
    pub(crate) fn none_here(&self) -> bool {
        self.members.is_empty()
    }

    /// The members connected here.
    pub(crate) fn iter(&self) -> std::slice::Iter<'_, Member> {
        self.members.iter()
    }

    /// The user id of the member with public sender id `sender` (None: anonymous), if the
    /// room lists one, here or on another node.
    pub(crate) fn user_of(&self, sender: &str) -> Option<Option<&Arc<str>>> {
        let here = self.members.iter().find(|m| m.sender.public() == sender);
        match here {
            Some(member) => Some(member.user.as_ref()),
            None => self
                .elsewhere
                .iter()
                .find(|m| m.sender.as_deref() == Some(sender))
                .map(|m| m.user.as_ref()),
        }
    }

    /// Adds a member connected here; says how to tell the others.
    pub(crate) fn add(&mut self, member: Member) -> Told {
        self.index.insert(member.id, Slot::Here(self.members.len()));
        let change = (member.id, member.name.clone());
        self.members.push(member);
        self.added(change)
    }

    /// Adds a member connected to another node, unless it is listed already; says how to
    /// tell the others.
    pub(crate) fn add_elsewhere(&mut self, member: MemberSummary) -> Option<Told> {
        if self.index.contains_key(&member.id) {
            return None;
        }
        self.index
            .insert(member.id, Slot::Elsewhere(self.elsewhere.len()));
        let change = (member.id, member.name.clone());
        self.elsewhere.push(member);
        Some(self.added(change))
    }

    /// The ids of the members connected to other nodes.
    pub(crate) fn ids_elsewhere(&self) -> Vec<u64> {
        self.elsewhere.iter().map(|m| m.id).collect()
    }

    fn added(&mut self, change: (u64, Arc<str>)) -> Told {
        if !self.big && self.len() >= self.policy.threshold {
            self.big = true;
        }
        if !self.big {
            return Told::Now;
        }
        self.note(|changes| changes.joined.push(change));
        Told::Later
    }

    /// Removes the members `ids` (those still here); returns them, and how to tell the
    /// others.
    pub(crate) fn remove(&mut self, ids: &[u64]) -> (Vec<Gone>, Told) {
        let mut gone = Vec::new();
        for id in ids {
            match self.index.remove(id) {
                None => continue,
                Some(Slot::Here(at)) => {
                    let member = self.members.swap_remove(at);
                    if let Some(moved) = self.members.get(at) {
                        self.index.insert(moved.id, Slot::Here(at));
                    }
                    gone.push(Gone {
                        member: member.summary(),
                        here: true,
                    });
                }
                Some(Slot::Elsewhere(at)) => {
                    let member = self.elsewhere.swap_remove(at);
                    if let Some(moved) = self.elsewhere.get(at) {
                        self.index.insert(moved.id, Slot::Elsewhere(at));
                    }
                    gone.push(Gone {
                        member,
                        here: false,
                    });
                }
            }
        }
        if gone.is_empty() || !self.big {
            return (gone, Told::Now);
        }
        if self.len() < self.policy.threshold {
            self.big = false;
            self.changes = Changes::default();
            return (gone, Told::Everyone);
        }
        for gone in &gone {
            let change = (gone.member.id, gone.member.name.clone());
            self.note(|changes| changes.left.push(change));
        }
        (gone, Told::Later)
    }

    fn note(&mut self, change: impl FnOnce(&mut Changes)) {
        let changes = &mut self.changes;
        changes.due = true;
        if changes.overflow || self.policy.counts_only {
            changes.overflow = true;
            return;
        }
        change(changes);
        if changes.joined.len() + changes.left.len() > UPDATE_MAX_CHANGES {
            changes.overflow = true;
            changes.joined = Vec::new();
            changes.left = Vec::new();
        }
    }

    /// The changes an update is due for, if one is; the room starts gathering anew.
    pub(crate) fn take_changes(&mut self) -> Option<Changes> {
        (self.big && self.changes.due).then(|| std::mem::take(&mut self.changes))
    }

    /// Applies a new policy: a room now past its threshold becomes big, one now under it
    /// small (`Told::Everyone`: send the list).
    pub(crate) fn set_policy(&mut self, policy: Policy) -> Told {
        self.policy = policy;
        if !self.big && self.len() >= policy.threshold {
            self.big = true;
        } else if self.big && self.len() < policy.threshold {
            self.big = false;
            self.changes = Changes::default();
            return Told::Everyone;
        }
        Told::Later
    }

    /// Up to `limit` members with ids above `after`, in id order, and the id to ask after
    /// for the next page (None at the end).
    pub(crate) fn page(&self, after: Option<u64>, limit: usize) -> (Vec<Listed<'_>>, Option<u64>) {
        let from = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        let mut range = self.index.range((from, std::ops::Bound::Unbounded));
        let page: Vec<Listed<'_>> = range
            .by_ref()
            .take(limit)
            .map(|(_, &slot)| match slot {
                Slot::Here(at) => {
                    let m = &self.members[at];
                    Listed {
                        id: m.id,
                        name: &m.name,
                        user: m.user.as_ref(),
                        sender: Some(m.sender.public()),
                    }
                }
                Slot::Elsewhere(at) => {
                    let m = &self.elsewhere[at];
                    Listed {
                        id: m.id,
                        name: &m.name,
                        user: m.user.as_ref(),
                        sender: m.sender.as_deref(),
                    }
                }
            })
            .collect();
        let next = range.next().and(page.last().map(|m| m.id));
        (page, next)
    }

    /// The members a `joined` lists: everyone in a small room, the first page in a big one.
    pub(crate) fn first_page(&self) -> Vec<MemberRef<'_>> {
        let limit = if self.big { MEMBERS_PAGE } else { usize::MAX };
        self.page(None, limit)
            .0
            .iter()
            .map(Listed::as_ref)
            .collect()
    }
}
