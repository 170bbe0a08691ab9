//! The memory engine: rooms numbered in this process, and nothing kept beyond the hub's
//! recent tail. A message is numbered and handed to its room's sink at once, inside its
//! append; a room the hub lets go of is forgotten, and comes back under a new epoch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use super::{
    Appended, Broker, Busy, Dedupe, EngineFuture, Epochs, Loaded, Numbered, Position, Record,
    RoomEvent, RoomSink, StorageError,
};

/// The rooms the hub holds, by name.
pub(crate) struct Memory {
    /// Client ids remembered per room.
    dedupe_window: usize,
    /// Read on every append, written on attach and detach only.
    rooms: RwLock<HashMap<Arc<str>, Arc<Held>>>,
    epochs: Epochs,
}

struct Held {
    sink: Arc<dyn RoomSink>,
    /// Held while a record is numbered and handed to the sink: one record at a time per
    /// room, so that the sink receives them in their order.
    numbers: Mutex<Numbers>,
}

struct Numbers {
    epoch: u64,
    seq: u64,
    dedupe: Dedupe,
}

impl Memory {
    pub(crate) fn new(dedupe_window: usize) -> Memory {
        Memory {
            dedupe_window,
            rooms: RwLock::new(HashMap::new()),
            epochs: Epochs::default(),
        }
    }
}

impl Broker for Memory {
    fn attach(
        &self,
        room: &str,
        sink: Arc<dyn RoomSink>,
        _tail: usize,
    ) -> EngineFuture<'_, Loaded> {
        let epoch = self.epochs.next();
        let held = Arc::new(Held {
            sink,
            numbers: Mutex::new(Numbers {
                epoch,
                seq: 0,
                dedupe: Dedupe::default(),
            }),
        });
        self.rooms.write().unwrap().insert(room.into(), held);
        Box::pin(std::future::ready(Ok(Loaded::new(epoch, 0, Vec::new()))))
    }

    fn detach(&self, room: &str) {
        self.rooms.write().unwrap().remove(room);
    }

    fn append(&self, room: &str, record: Record) -> Result<EngineFuture<'static, Appended>, Busy> {
        let held = self.rooms.read().unwrap().get(room).cloned();
        let Some(held) = held else {
            let error = StorageError::new(format!("room {room} is not held here"));
            return Ok(Box::pin(std::future::ready(Err(error))));
        };
        let mut numbers = held.numbers.lock().unwrap();
        let epoch = numbers.epoch;
        if let Some(seq) = record.dedupe.as_deref().and_then(|k| numbers.dedupe.get(k)) {
            let duplicate = Appended::Duplicate(Position { epoch, seq });
            return Ok(Box::pin(std::future::ready(Ok(duplicate))));
        }
        numbers.seq += 1;
        let seq = numbers.seq;
        if let Some(key) = &record.dedupe {
            numbers.dedupe.insert(key.clone(), seq, self.dedupe_window);
        }
        held.sink
            .receive(vec![RoomEvent::Record(Numbered::new(seq, 0, record))]);
        drop(numbers);
        let stored = Appended::Stored(Position { epoch, seq });
        Ok(Box::pin(std::future::ready(Ok(stored))))
    }
}
