//! One connection's bounded queue of outbound frames: the only place where the rooms (and
//! the session's own replies) meet the connection's writer.
//!
//! Every connection owns an [`Outbox`]/[`Inbox`] pair. A room message is encoded once and
//! the same [`Bytes`] is pushed into each member's queue: a reference-count increment and a
//! push under that connection's own short lock — no per-recipient serialization and no
//! per-delivery allocation (a queue grows by doubling, and gives its memory back once
//! drained). A queue is bounded twice: in frames, and in the bytes of its live frames (a
//! join's replay is exempt: it is queued once, on purpose). A connection whose queue is
//! full is too slow: it is told to close with [`CloseCode::TooSlow`], and can resume later;
//! nobody waits for it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::protocol::CloseCode;

/// One queued frame for a connection.
#[derive(Debug, Clone)]
pub(crate) struct Outbound {
    /// The encoded frame, `\n`-terminated, shared with every other recipient; for
    /// [`Kind::Pong`], the ping's payload as it came.
    pub frame: Bytes,
    pub kind: Kind,
    /// Whether it counts against [`Bounds::bytes`] (all but a join's replay). Beside
    /// `kind`, in what would be padding: a queued frame stays 40 bytes.
    counted: bool,
}

impl Outbound {
    /// A frame to write that no queue holds (a last `bye`, a test's).
    pub(crate) fn new(frame: Bytes, kind: Kind) -> Outbound {
        Outbound {
            frame,
            kind,
            counted: false,
        }
    }
}

/// How a queued frame travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A protocol frame that must arrive, in order.
    Frame,
    /// A protocol frame that may be lost (typing notices): WebTransport sends it as a
    /// datagram, and a full queue drops it instead of disconnecting the client.
    Ephemeral,
    /// The answer to a WebSocket Ping (RFC 6455, section 5.5.3): a Pong control frame with
    /// the ping's payload. Queued like the rest so that it is written in order, by the one
    /// task that writes to the connection.
    Pong,
}

/// How large a queue may grow.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    /// Frames queued at once.
    pub frames: usize,
    /// Bytes of live frames queued at once (a join's replay does not count): one reader
    /// that stopped reading must not pin `frames` × the largest frame.
    pub bytes: usize,
}

/// One connection's queue of outbound frames, shared by its [`Outbox`] handles (the rooms
/// it is in) and its session.
#[derive(Debug)]
struct Queue {
    /// Held for a push or a drain, never across an `.await`. Per connection, so rooms
    /// delivering to different connections never meet here.
    frames: Mutex<Frames>,
    bounds: Bounds,
    /// Wakes the session when the queue stops being empty (not on every push: a session
    /// that has not drained yet will see the new frames anyway).
    ready: Notify,
    /// Why the session should close, from anywhere (a room that found it too slow, the host
    /// kicking it). Set once; the first reason wins.
    close: OnceLock<CloseCode>,
    closing: Notify,
}

#[derive(Debug, Default)]
struct Frames {
    queued: VecDeque<Outbound>,
    /// Bytes of the counted frames in `queued`.
    bytes: usize,
    /// The session is gone: pushes fail.
    gone: bool,
    /// A room removed the connection: its `left` is queued ([`Outbox::push_removal`]).
    removed: bool,
}

/// Frames to push to many queues, with their bytes counted once.
pub(crate) struct Shared<'a> {
    frames: &'a [Bytes],
    bytes: usize,
}

impl<'a> Shared<'a> {
    pub(crate) fn new(frames: &'a [Bytes]) -> Shared<'a> {
        Shared {
            frames,
            bytes: frames.iter().map(Bytes::len).sum(),
        }
    }
}

/// The sending side of a connection's queue, held by the rooms it is in.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    queue: Arc<Queue>,
}

/// The receiving side of a connection's queue, held by its session.
#[derive(Debug)]
pub(crate) struct Inbox {
    queue: Arc<Queue>,
    /// A room removed this connection since the session last asked ([`Inbox::rooms_removed`]).
    removed: bool,
}

/// Resolves when someone asked the connection to close. Apart from [`Inbox`] so that a
/// session can wait for frames and for this at once.
#[derive(Debug)]
pub(crate) struct Closing {
    queue: Arc<Queue>,
}

/// A connection's bounded queue of outbound frames. It allocates nothing until the first
/// frame, and gives its memory back once drained after a burst.
pub(crate) fn queue(bounds: Bounds) -> (Outbox, Inbox, Closing) {
    let queue = Arc::new(Queue {
        frames: Mutex::new(Frames::default()),
        bounds,
        ready: Notify::new(),
        close: OnceLock::new(),
        closing: Notify::new(),
    });
    (
        Outbox {
            queue: queue.clone(),
        },
        Inbox {
            queue: queue.clone(),
            removed: false,
        },
        Closing { queue },
    )
}

/// Why frames were not queued.
enum Refused {
    Full,
    Gone,
}

impl Outbox {
    /// Queues `batch`, all or none, under one lock and with at most one wake-up; `bytes` is
    /// what its frames count against the byte bound (0 for a replay). Inlined: each caller's
    /// `kind` and `counted` are constants, and a delivery (one call per member) pays for no
    /// branch it does not take.
    #[inline(always)]
    fn enqueue(
        &self,
        batch: &[Bytes],
        bytes: usize,
        kind: Kind,
        counted: bool,
    ) -> Result<(), Refused> {
        let mut frames = self.queue.frames.lock().unwrap();
        if frames.gone {
            return Err(Refused::Gone);
        }
        let bounds = &self.queue.bounds;
        if frames.queued.len() + batch.len() > bounds.frames || frames.bytes + bytes > bounds.bytes
        {
            return Err(Refused::Full);
        }
        let was_empty = frames.queued.is_empty();
        // One extend of an exact-size iterator: the queue grows once, if at all.
        frames.queued.extend(batch.iter().map(|frame| Outbound {
            frame: frame.clone(),
            kind,
            counted,
        }));
        frames.bytes += bytes;
        drop(frames);
        if was_empty && !batch.is_empty() {
            // notify_one keeps a permit if the session is not waiting right now.
            self.queue.ready.notify_one();
        }
        Ok(())
    }

    /// Queues frames that must arrive, all or none. Returns false when the connection cannot
    /// take them all: its queue is full (it is then told to close as too slow) or it is gone.
    pub(crate) fn push_many(&self, batch: &[Bytes]) -> bool {
        self.push_shared(&Shared::new(batch))
    }

    /// [`Outbox::push_many`] for frames pushed to many connections (a room's delivery),
    /// whose bytes are counted once for all of them.
    pub(crate) fn push_shared(&self, batch: &Shared<'_>) -> bool {
        self.must_arrive(batch.frames, batch.bytes, true)
    }

    /// Queues a frame that must arrive (see [`Outbox::push_many`]).
    pub(crate) fn push(&self, frame: Bytes) -> bool {
        let bytes = frame.len();
        self.must_arrive(std::slice::from_ref(&frame), bytes, true)
    }

    /// Queues a join's replay (after its `joined`): bounded in frames only, since a resume
    /// may replay up to `max_replay` messages at once, on purpose.
    pub(crate) fn push_replay(&self, batch: &[Bytes]) -> bool {
        self.must_arrive(batch, 0, false)
    }

    #[inline(always)]
    fn must_arrive(&self, batch: &[Bytes], bytes: usize, counted: bool) -> bool {
        match self.enqueue(batch, bytes, Kind::Frame, counted) {
            Ok(()) => true,
            Err(Refused::Full) => {
                self.close(CloseCode::TooSlow);
                false
            }
            Err(Refused::Gone) => false,
        }
    }

    /// Queues the `left` frame of a room the host removed this connection from, and marks
    /// the queue so that the session taking it forgets the room. Past the queue's bounds
    /// too: it is the room's last frame to this connection, and small.
    pub(crate) fn push_removal(&self, frame: Bytes) {
        let mut frames = self.queue.frames.lock().unwrap();
        if frames.gone {
            return;
        }
        frames.removed = true;
        frames.queued.push_back(Outbound::new(frame, Kind::Frame));
        let was_empty = frames.queued.len() == 1;
        drop(frames);
        if was_empty {
            self.queue.ready.notify_one();
        }
    }

    /// Queues a frame that may be lost; a full queue drops it.
    pub(crate) fn push_ephemeral(&self, frame: Bytes) {
        let bytes = frame.len();
        let _ = self.enqueue(std::slice::from_ref(&frame), bytes, Kind::Ephemeral, true);
    }

    /// Queues the answer to a WebSocket Ping; like an ephemeral frame, a full queue drops
    /// it (the client is being cut off as too slow anyway).
    pub(crate) fn push_pong(&self, payload: Bytes) {
        let bytes = payload.len();
        let _ = self.enqueue(std::slice::from_ref(&payload), bytes, Kind::Pong, true);
    }

    /// Asks the connection's session to close with `code`.
    pub(crate) fn close(&self, code: CloseCode) {
        if self.queue.close.set(code).is_ok() {
            self.queue.closing.notify_one();
        }
    }
}

/// A queue's buffer is given back when a drain leaves it empty and larger than this (in
/// frames): an idle connection holds no more than a few frames' worth after a burst.
const KEEP_CAPACITY: usize = 32;

impl Inbox {
    /// Waits for queued frames and moves up to `limit` of them into `batch`; returns how
    /// many are still queued behind them.
    pub(crate) async fn recv_many(&mut self, batch: &mut Vec<Outbound>, limit: usize) -> usize {
        loop {
            let (moved, left) = self.take(batch, limit);
            if moved > 0 {
                return left;
            }
            self.queue.ready.notified().await;
        }
    }

    /// Whether a room removed this connection since the last call (its `left` is in the
    /// frames taken): the session then forgets the rooms that no longer list it.
    pub(crate) fn rooms_removed(&mut self) -> bool {
        std::mem::take(&mut self.removed)
    }

    /// Takes frames already queued without waiting (for the final drain).
    pub(crate) fn drain_now(&mut self, batch: &mut Vec<Outbound>) {
        self.take(batch, usize::MAX);
    }

    /// Moves up to `limit` frames into `batch`: (how many, how many are left).
    fn take(&mut self, batch: &mut Vec<Outbound>, limit: usize) -> (usize, usize) {
        let mut frames = self.queue.frames.lock().unwrap();
        let n = frames.queued.len().min(limit);
        // Taking everything (the usual case) frees every counted byte: nothing to add up.
        let freed: usize = if n == frames.queued.len() {
            frames.bytes
        } else {
            let taken = frames.queued.range(..n).filter(|o| o.counted);
            taken.map(|o| o.frame.len()).sum()
        };
        frames.bytes -= freed;
        batch.extend(frames.queued.drain(..n));
        self.removed |= std::mem::take(&mut frames.removed);
        if frames.queued.is_empty() && frames.queued.capacity() > KEEP_CAPACITY {
            frames.queued = VecDeque::new();
        }
        (n, frames.queued.len())
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let mut frames = self.queue.frames.lock().unwrap();
        frames.gone = true;
        frames.queued = VecDeque::new();
        frames.bytes = 0;
    }
}

impl Closing {
    /// Resolves when someone asked this connection to close, with the reason.
    pub(crate) async fn wait(&self) -> CloseCode {
        loop {
            if let Some(code) = self.queue.close.get() {
                return *code;
            }
            self.queue.closing.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: usize) -> Bytes {
        Bytes::from(vec![b'x'; len])
    }

    #[test]
    fn live_frames_are_bounded_in_bytes_and_a_replay_is_not() {
        let (outbox, mut inbox, _closing) = queue(Bounds {
            frames: 100,
            bytes: 1000,
        });
        // A replay of 3 000 bytes fits: only the frame count bounds it.
        assert!(outbox.push_replay(&[frame(1000), frame(1000), frame(1000)]));
        assert!(outbox.push(frame(600)));
        assert!(outbox.push(frame(400)));
        // Past the byte bound: too slow.
        assert!(!outbox.push(frame(1)));
        assert_eq!(inbox.queue.close.get(), Some(&CloseCode::TooSlow));
        // Draining gives the bytes back, replay or not.
        let mut batch = Vec::new();
        inbox.drain_now(&mut batch);
        assert_eq!(batch.len(), 5);
        assert_eq!(inbox.queue.frames.lock().unwrap().bytes, 0);
    }

    #[test]
    fn a_queued_frame_takes_no_more_room_than_its_bytes_and_kind() {
        assert_eq!(std::mem::size_of::<Outbound>(), 40);
    }

    #[test]
    fn an_ephemeral_frame_past_the_bounds_is_dropped_without_a_close() {
        let (outbox, mut inbox, _closing) = queue(Bounds {
            frames: 2,
            bytes: 100,
        });
        outbox.push_ephemeral(frame(101));
        assert!(outbox.push(frame(10)));
        assert!(outbox.push(frame(10)));
        outbox.push_ephemeral(frame(1));
        let mut batch = Vec::new();
        inbox.drain_now(&mut batch);
        assert_eq!(batch.len(), 2);
        assert!(inbox.queue.close.get().is_none());
    }
}
