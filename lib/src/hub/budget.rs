//! The memory budget of the rooms' tails: past it, the least recently active rooms lose
//! their oldest messages first (a resume that needed them reads them from the engine, or
//! is told `gap`), so that many rooms of long messages cannot take the server's memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::room::Room;

/// Bytes of history held over all rooms, and how many may be.
#[derive(Debug)]
pub(crate) struct HistoryBudget {
    /// Moved by the rooms once per message kept or dropped, never per delivery.
    pub held: Arc<AtomicUsize>,
    pub bytes: usize,
}

impl HistoryBudget {
    /// Brings the history held back under the budget, when it went over: the least recently
    /// active rooms lose their oldest messages first, down to nine tenths of the budget so
    /// that this runs once per many messages, not on each.
    pub(crate) fn keep(&self, rooms: impl FnOnce() -> Vec<Arc<Room>>) {
        if self.held.load(Ordering::Relaxed) <= self.bytes {
            return;
        }
        let target = self.bytes / 10 * 9;
        let mut by_activity: Vec<_> = rooms()
            .into_iter()
            .map(|room| (room.last_active(), room))
            .collect();
        by_activity.sort_unstable_by_key(|(last_active, _)| *last_active);
        for (_, room) in by_activity {
            if room.shed_history(target) {
                return;
            }
        }
    }
}
