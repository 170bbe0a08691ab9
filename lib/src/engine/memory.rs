//! The memory engine: rooms numbered in this process, and nothing kept beyond the hub's
//! recent tail but the reactions to its messages (who reacted is not in the tail). A
//! record is numbered, applied and handed to its room's sink at once, inside its append;
//! a room the hub lets go of is forgotten, and comes back under a new epoch.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use super::{
    Appended, Broker, Busy, Decision, Dedupe, EngineFuture, Epochs, Loaded, Numbered, Options,
    Position, Reacted, ReactionCount, Reactor, ReactorsPage, Record, RecordKind, RoomEvent,
    RoomSink, StorageError,
};

/// The rooms the hub holds, by name.
pub(crate) struct Memory {
    options: Options,
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
    /// The reactions to the room's messages, by message: of `retention.messages` messages
    /// at most, the newest.
    reactions: BTreeMap<u64, OnMessage>,
}

/// A message's reactions.
#[derive(Default)]
struct OnMessage {
    counts: Vec<ReactionCount>,
    /// In their order.
    reactors: Vec<Reactor>,
    /// Each member's own, by public sender id.
    mine: HashMap<Arc<str>, Vec<String>>,
}

impl Numbers {
    /// Applies reaction `record`, numbered `seq`, within `options`' limits.
    fn react(&mut self, seq: u64, record: &Record, options: &Options) -> Reacted {
        // Bounded: the oldest reacted-to messages are forgotten first.
        if !self.reactions.contains_key(&record.target)
            && self.reactions.len() as u64 >= options.retention.messages
        {
            self.reactions.pop_first();
        }
        let who: Arc<str> = record.sender.clone().unwrap_or_else(|| "".into());
        let on = self.reactions.entry(record.target).or_default();
        let mine = on.mine.entry(who.clone()).or_default();
        let reaction = &*record.text;
        let decision = Decision::of(record.kind, reaction, &on.counts, mine, options.reactions);
        if decision == Decision::TooMany {
            return Reacted::TooMany;
        }
        let changed = decision.apply(reaction, &mut on.counts, mine);
        let mine = mine.clone();
        match decision {
            Decision::Add => on.reactors.push(Reactor::new(
                reaction.to_owned(),
                record.from.to_string(),
                who.to_string(),
                seq,
            )),
            Decision::Remove => on
                .reactors
                .retain(|r| r.reaction != reaction || *r.sender != *who),
            _ => {}
        }
        Reacted::Counts {
            counts: on.counts.clone(),
            mine,
            changed,
        }
    }
}

impl Memory {
    pub(crate) fn new(options: Options) -> Memory {
        Memory {
            options,
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
                reactions: BTreeMap::new(),
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
            numbers
                .dedupe
                .insert(key.clone(), seq, self.options.dedupe_window);
        }
        let mut numbered = Numbered::new(seq, 0, record);
        match numbered.record.kind {
            kind if kind.is_reaction() => {
                numbered.reacted = Some(numbers.react(seq, &numbered.record, &self.options));
            }
            RecordKind::Delete => drop(numbers.reactions.remove(&numbered.record.target)),
            _ => {}
        }
        held.sink.receive(vec![RoomEvent::Record(numbered)]);
        drop(numbers);
        let stored = Appended::Stored(Position { epoch, seq });
        Ok(Box::pin(std::future::ready(Ok(stored))))
    }

    fn reactors(
        &self,
        room: &str,
        seq: u64,
        after: u64,
        limit: usize,
    ) -> EngineFuture<'_, ReactorsPage> {
        let held = self.rooms.read().unwrap().get(room).cloned();
        let page = held.and_then(|held| {
            let numbers = held.numbers.lock().unwrap();
            let on = numbers.reactions.get(&seq)?;
            let read = on.reactors.iter().filter(|r| r.at > after).take(limit + 1);
            Some(ReactorsPage::of(read.cloned().collect(), limit))
        });
        Box::pin(std::future::ready(Ok(page.unwrap_or_default())))
    }

    fn reacted_by(
        &self,
        room: &str,
        sender: &str,
        from: u64,
    ) -> EngineFuture<'_, Vec<(u64, String)>> {
        let held = self.rooms.read().unwrap().get(room).cloned();
        let mut own = Vec::new();
        if let Some(held) = held {
            let numbers = held.numbers.lock().unwrap();
            for (&seq, on) in numbers.reactions.range(from..) {
                for reaction in on.mine.get(sender).into_iter().flatten() {
                    own.push((seq, reaction.clone()));
                }
            }
        }
        Box::pin(std::future::ready(Ok(own)))
    }
}
