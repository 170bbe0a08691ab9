//! The memory engine: rooms numbered in this process, and nothing kept beyond the hub's
//! recent tail but the reactions to its messages (who reacted is not in the tail) and what
//! read state needs: who read up to where, and which messages are there to be unread (and
//! whom they mention). A
//! record is numbered, applied and handed to its room's sink at once, inside its append;
//! a room the hub lets go of is forgotten, and comes back under a new epoch.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use super::{
    Appended, Broker, Busy, Decision, Dedupe, EngineFuture, Epochs, Loaded, Numbered, Options,
    Position, Reacted, ReactionCount, Reactor, ReactorsPage, ReadState, Record, RecordKind,
    RoomEvent, RoomSink, StorageError,
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
    /// The numbers of the messages not deleted, in order: the newest `retention.messages`
    /// (a count after a mark is a binary search).
    live: VecDeque<u64>,
    /// By public sender id, the numbers of the messages not deleted that mention it (the
    /// newest `retention.messages`).
    mentioned: HashMap<Arc<str>, VecDeque<u64>>,
    /// Each reader's mark, by public sender id: of [`MARKS_PER_ROOM`] readers at most.
    marks: HashMap<Arc<str>, u64>,
    /// The readers with a mark, in the order they first had one: the first forgotten.
    marked: VecDeque<Arc<str>>,
}

/// Readers whose marks a room remembers: each anonymous visitor makes one, and this process
/// keeps nothing for long anyway.
const MARKS_PER_ROOM: usize = 100_000;

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
    /// Raises `reader`'s mark to `to`; whether it moved.
    fn raise(&mut self, reader: &str, to: u64) -> bool {
        match self.marks.get_mut(reader) {
            Some(mark) if *mark >= to => false,
            Some(mark) => {
                *mark = to;
                true
            }
            None => {
                let reader: Arc<str> = reader.into();
                self.marks.insert(reader.clone(), to);
                self.marked.push_back(reader);
                if self.marked.len() > MARKS_PER_ROOM
                    && let Some(oldest) = self.marked.pop_front()
                {
                    self.marks.remove(&oldest);
                }
                true
            }
        }
    }

    /// `reader`'s read state (it has a mark).
    fn state(&self, reader: &str) -> Option<ReadState> {
        let mark = *self.marks.get(reader)?;
        let after = |numbers: &VecDeque<u64>| {
            (numbers.len() - numbers.partition_point(|seq| *seq <= mark)) as u64
        };
        let mentions = self.mentioned.get(reader).map_or(0, after);
        Some(ReadState::new(mark, after(&self.live), mentions, self.seq))
    }

    /// Message `seq` (of `mentions`), numbered: it is there to be read.
    fn add_message(&mut self, seq: u64, mentions: &[Arc<str>], keep: usize) {
        let add = |numbers: &mut VecDeque<u64>| {
            numbers.push_back(seq);
            if numbers.len() > keep {
                numbers.pop_front();
            }
        };
        add(&mut self.live);
        for reader in mentions {
            add(self.mentioned.entry(reader.clone()).or_default());
        }
    }

    /// Message `seq` was deleted: it is no longer there to be read.
    fn remove_message(&mut self, seq: u64) {
        let numbers = std::iter::once(&mut self.live).chain(self.mentioned.values_mut());
        for numbers in numbers {
            if let Ok(at) = numbers.binary_search(&seq) {
                numbers.remove(at);
            }
        }
    }

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
                live: VecDeque::new(),
                mentioned: HashMap::new(),
                marks: HashMap::new(),
                marked: VecDeque::new(),
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
            RecordKind::Delete => {
                let target = numbered.record.target;
                numbers.reactions.remove(&target);
                numbers.remove_message(target);
            }
            RecordKind::Message => {
                let record = &numbered.record;
                let keep = self.options.retention.messages as usize;
                numbers.add_message(seq, &record.mentions, keep);
                if let Some(sender) = &record.sender {
                    numbers.raise(sender, seq);
                }
            }
            _ => {}
        }
        held.sink.receive(vec![RoomEvent::Record(numbered)]);
        drop(numbers);
        let stored = Appended::Stored(Position { epoch, seq });
        Ok(Box::pin(std::future::ready(Ok(stored))))
    }

    fn mark_read(
        &self,
        room: &str,
        reader: &str,
        to: Option<u64>,
    ) -> EngineFuture<'_, (ReadState, bool)> {
        let held = self.rooms.read().unwrap().get(room).cloned();
        let marked = held.map(|held| {
            let mut numbers = held.numbers.lock().unwrap();
            let head = numbers.seq;
            let moved = match to {
                Some(to) => numbers.raise(reader, to.min(head)),
                None if numbers.marks.contains_key(reader) => false,
                None => numbers.raise(reader, head),
            };
            (numbers.state(reader).unwrap_or_default(), moved)
        });
        Box::pin(std::future::ready(Ok(marked.unwrap_or_default())))
    }

    fn unread(&self, reader: &str) -> EngineFuture<'_, Vec<(String, ReadState)>> {
        let rooms = self.rooms.read().unwrap();
        let states = rooms
            .iter()
            .filter_map(|(name, held)| {
                let state = held.numbers.lock().unwrap().state(reader)?;
                Some((name.to_string(), state))
            })
            .collect();
        Box::pin(std::future::ready(Ok(states)))
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
