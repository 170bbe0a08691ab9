//! Where the frames meant for one user go, whatever rooms its connections are in: its read
//! state when another of its tabs marks a room read, and the mentions of it. Connections
//! are found by public sender id (a signed-in user's connections all share one; an
//! anonymous client's is its resume key's), here and — through the engine's broadcast — on
//! every other node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::moderation::Control;
use crate::engine::Broker;
use crate::queue::Outbox;

/// Connections (id, where their frames go), by public sender id.
type BySender = HashMap<Arc<str>, Vec<(u64, Outbox)>>;

/// The connections of this node, by public sender id.
pub(crate) struct Readers {
    connections: Mutex<BySender>,
    engine: Arc<dyn Broker>,
}

/// A connection listed under its sender id until dropped.
pub(crate) struct Listing {
    readers: Arc<Readers>,
    sender: Arc<str>,
    id: u64,
}

impl Drop for Listing {
    fn drop(&mut self) {
        let mut connections = self.readers.connections.lock().unwrap();
        if let Some(listed) = connections.get_mut(&self.sender) {
            listed.retain(|(id, _)| *id != self.id);
            if listed.is_empty() {
                connections.remove(&self.sender);
            }
        }
    }
}

impl Readers {
    pub(crate) fn new(engine: Arc<dyn Broker>) -> Readers {
        Readers {
            connections: Mutex::new(HashMap::new()),
            engine,
        }
    }

    /// Lists connection `id` (whose frames go to `outbox`) under `sender`, until the
    /// listing is dropped.
    pub(crate) fn list(self: &Arc<Self>, sender: &str, id: u64, outbox: Outbox) -> Listing {
        let sender: Arc<str> = sender.into();
        let mut connections = self.connections.lock().unwrap();
        connections
            .entry(sender.clone())
            .or_default()
            .push((id, outbox));
        Listing {
            readers: self.clone(),
            sender,
            id,
        }
    }

    /// Pushes `frame` to `sender`'s connections here.
    pub(crate) fn send_here(&self, sender: &str, frame: &Bytes) {
        let connections = self.connections.lock().unwrap();
        for (_, outbox) in connections.get(sender).into_iter().flatten() {
            outbox.push(frame.clone());
        }
    }

    /// Pushes `frame` to the connections of each of `senders`, here and on every other
    /// node.
    pub(crate) fn tell(&self, senders: &[Arc<str>], frame: Bytes) {
        for sender in senders {
            self.send_here(sender, &frame);
        }
        let control = Control::Tell {
            senders: senders.iter().map(|s| s.to_string()).collect(),
            frame: String::from_utf8_lossy(&frame).into_owned(),
        };
        let payload = serde_json::to_vec(&control).expect("serializable");
        self.engine.broadcast(payload.into());
    }
}
