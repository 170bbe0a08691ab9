//! The load tool's own bookkeeping, with no I/O and no clock, so that it can be tested
//! exactly: what kind a server frame is (by its first bytes), the numbers in it (by byte
//! search, not a JSON parse: the receive path must not allocate per message), the send-time
//! marker a publisher writes into each message's text, which of the run's rooms a send goes
//! to, and the per-subscriber tally of expected versus received messages that counts losses
//! and duplicates.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

/// What a server frame is. The server serializes the `type` tag first (serde's internally
/// tagged enums do), so the first bytes say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Message,
    Ack,
    Joined,
    Presence,
    /// A change to a message: an edit, a deletion, its reactions.
    Update,
    /// A member's read state (issue 26): after each join, in answer to a `read`, and when
    /// another of the user's connections moves its mark.
    Read,
    /// Who read up to where, in a small room (at most one per presence interval).
    Receipts,
    Error,
    Bye,
    Other,
}

/// Classifies one server frame (a WebSocket text payload or a WebTransport line).
pub fn kind(frame: &[u8]) -> Kind {
    let Some(rest) = frame.strip_prefix(b"{\"type\":\"") else {
        return Kind::Other;
    };
    KINDS
        .iter()
        .find(|(tag, _)| rest.starts_with(tag))
        .map_or(Kind::Other, |&(_, kind)| kind)
}

/// The frames' tags (with the closing quote), ordered by frequency on the hot path.
const KINDS: &[(&[u8], Kind)] = &[
    (b"message\"", Kind::Message),
    (b"ack\"", Kind::Ack),
    (b"presence\"", Kind::Presence),
    (b"update\"", Kind::Update),
    (b"read\"", Kind::Read),
    (b"joined\"", Kind::Joined),
    (b"receipts\"", Kind::Receipts),
    (b"error\"", Kind::Error),
    (b"bye\"", Kind::Bye),
];

/// Where `needle` starts in `hay`. Frames are ~150 bytes: a first-byte scan is enough.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut from = 0;
    while from + needle.len() <= hay.len() {
        let pos = from
            + hay[from..=hay.len() - needle.len()]
                .iter()
                .position(|&b| b == first)?;
        if hay[pos + 1..pos + needle.len()] == *rest {
            return Some(pos);
        }
        from = pos + 1;
    }
    None
}

/// The decimal number at the start of `bytes`, and how many bytes it took.
fn leading_u64(bytes: &[u8]) -> Option<(u64, usize)> {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    let value = bytes[..digits]
        .iter()
        .fold(0u64, |acc, &b| acc * 10 + u64::from(b - b'0'));
    Some((value, digits))
}

/// The number right after the first occurrence of `key` (e.g. `"seq":`).
pub fn u64_after(frame: &[u8], key: &[u8]) -> Option<u64> {
    let at = find(frame, key)? + key.len();
    leading_u64(&frame[at..]).map(|(v, _)| v)
}

/// The key that precedes every number the tool reads from a frame.
pub const SEQ_KEY: &[u8] = b"\"seq\":";
/// Where a frame's room name starts (the server writes `room` right after `type`).
const ROOM_KEY: &[u8] = b"\"room\":\"";

/// Which of `rooms` rooms a frame is about, when they are named `<prefix>-0`,
/// `<prefix>-1`, …: None for a frame naming no room, or another one.
pub fn room_index(frame: &[u8], prefix: &[u8]) -> Option<usize> {
    let at = find(frame, ROOM_KEY)? + ROOM_KEY.len();
    let rest = frame[at..].strip_prefix(prefix)?.strip_prefix(b"-")?;
    let (index, used) = leading_u64(rest)?;
    rest[used..].starts_with(b"\"").then_some(index as usize)
}

/// The room (of `rooms`) that publisher `publisher` sends its message `counter` to: each
/// publisher goes round the rooms, starting from a room of its own, so that at any moment
/// the publishers' sends are spread over all of them.
pub fn room_of(publisher: u32, counter: u64, rooms: usize) -> usize {
    ((u64::from(publisher) + counter) % rooms as u64) as usize
}
/// Where a message's text starts, when the text is one of our markers.
const MARKER_KEY: &[u8] = b"\"text\":\"t=";

/// What a publisher writes into each message's text: when it was sent (nanoseconds since
/// the tool started), who sent it and its number in that publisher's sequence (from 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    pub sent_ns: u64,
    pub publisher: u32,
    pub counter: u64,
}

/// Appends the marker text `t=<ns>;p=<publisher>;n=<counter>` (no quotes: the caller
/// writes it inside a JSON string; it needs no escaping), then `pad` bytes of filler.
pub fn write_marker(out: &mut Vec<u8>, marker: Marker, pad: usize) {
    use std::io::Write;
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "t={};p={};n={}",
        marker.sent_ns, marker.publisher, marker.counter
    );
    if pad > 0 {
        out.push(b';');
        out.resize(out.len() + pad - 1, b'x');
    }
}

/// Reads the marker out of a `message` frame; None for a text that is not ours.
pub fn parse_marker(frame: &[u8]) -> Option<Marker> {
    let mut at = find(frame, MARKER_KEY)? + MARKER_KEY.len();
    let (sent_ns, used) = leading_u64(&frame[at..])?;
    at += used;
    let rest = frame[at..].strip_prefix(b";p=")?;
    let (publisher, used) = leading_u64(rest)?;
    let rest = rest[used..].strip_prefix(b";n=")?;
    let (counter, _) = leading_u64(rest)?;
    Some(Marker {
        sent_ns,
        publisher: u32::try_from(publisher).ok()?,
        counter,
    })
}

/// Where a client id starts in an `ack` frame (the tool's ids are `<publisher>-<counter>`).
const ID_KEY: &[u8] = b"\"id\":\"";

/// The publisher and counter in an `ack` frame's client id (`"id":"3-17"`); None for an
/// ack without one, or with an id that is not the tool's.
pub fn parse_ack_id(frame: &[u8]) -> Option<(u32, u64)> {
    let at = find(frame, ID_KEY)? + ID_KEY.len();
    let (publisher, used) = leading_u64(&frame[at..])?;
    let rest = frame[at + used..].strip_prefix(b"-")?;
    let (counter, used) = leading_u64(rest)?;
    rest[used..].starts_with(b"\"").then_some(())?;
    Some((u32::try_from(publisher).ok()?, counter))
}

/// When each publisher sent its recent messages, so that whoever reads a message's `ack`
/// can time it (send to acknowledgement: with a durable engine, that includes the commit).
///
/// A ring of `slots` per publisher, written by the publisher before it sends, read by its
/// connection's reader when the ack arrives. Each slot remembers which message it holds:
/// if a publisher had more than `slots` messages unacknowledged (full speed never lets it:
/// the window is at most `slots`), an ack whose slot was reused is not timed rather than
/// timed wrong.
#[derive(Debug)]
pub struct SendTimes {
    mask: u64,
    slots: usize,
    /// Counter + 1 of the message a slot holds (0: none yet).
    tag: Box<[AtomicU64]>,
    sent_ns: Box<[AtomicU64]>,
}

impl SendTimes {
    /// Rings of at least `slots` (rounded up to a power of two) for `publishers`.
    pub fn new(publishers: usize, slots: usize) -> SendTimes {
        let slots = slots.max(1).next_power_of_two();
        let zeros = || (0..publishers * slots).map(|_| AtomicU64::new(0)).collect();
        SendTimes {
            mask: slots as u64 - 1,
            slots,
            tag: zeros(),
            sent_ns: zeros(),
        }
    }

    fn index(&self, publisher: u32, counter: u64) -> Option<usize> {
        let at = publisher as usize * self.slots + (counter & self.mask) as usize;
        (at < self.tag.len()).then_some(at)
    }

    /// Publisher `publisher` sends its message `counter` at `sent_ns`.
    pub fn sent(&self, publisher: u32, counter: u64, sent_ns: u64) {
        if let Some(at) = self.index(publisher, counter) {
            self.sent_ns[at].store(sent_ns, Relaxed);
            self.tag[at].store(counter + 1, Release);
        }
    }

    /// When message `counter` of `publisher` was sent, if its slot still holds it.
    pub fn sent_at(&self, publisher: u32, counter: u64) -> Option<u64> {
        let at = self.index(publisher, counter)?;
        (self.tag[at].load(Acquire) == counter + 1).then(|| self.sent_ns[at].load(Relaxed))
    }
}

/// What [`Tally::record`] made of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The next expected message of its publisher.
    New,
    /// A new message, after `missing` that never came (counted lost).
    AfterGap { missing: u64 },
    /// A message this subscriber already had (or one older than one it had: the protocol
    /// keeps each sender's messages in order, so that is an error either way).
    Duplicate,
    /// History replayed on join (`seq` at most the `seq` of `joined`): not part of the run.
    Replay,
    /// A marker naming a publisher this run does not have.
    Foreign,
}

/// One subscriber's account of the messages it received, per publisher and room.
///
/// Each publisher numbers its messages 0, 1, 2, … and sends them round its rooms
/// ([`room_of`]); a room keeps each sender's messages in order, so a subscriber expects
/// exactly the next number of each publisher in each room (with one room, the next number
/// of each publisher). A higher number means the ones between were lost; a lower one is a
/// duplicate. Messages that never arrived after the last one received are counted by
/// [`Tally::finish`]. Rooms are kept apart because nothing orders two rooms' frames
/// (protocol 4 gives each a stream of its own).
#[derive(Debug, Clone)]
pub struct Tally {
    rooms: usize,
    /// Per publisher and room (`publisher * rooms + room`): the next counter expected.
    next: Vec<u64>,
    /// Per room: its `seq` when this subscriber joined (messages at or below it are
    /// history), and the highest `seq` seen since, to count frames that go backwards.
    base_seq: Vec<u64>,
    last_seq: Vec<u64>,
    /// `joined` frames accounted.
    joined: usize,
    /// Distinct messages received.
    pub received: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// Messages whose room `seq` was not above the previous one's (order broken).
    pub out_of_order: u64,
    /// Messages naming a publisher, or a room, this run does not have.
    pub foreign: u64,
}

impl Tally {
    /// A tally for a run with `publishers` publishers, for a subscriber in `rooms` rooms (at
    /// least 1), before any of its `joined`.
    pub fn new(publishers: usize, rooms: usize) -> Tally {
        let rooms = rooms.max(1);
        Tally {
            rooms,
            // Publisher p's first message in room r is its first counter that goes there.
            next: (0..publishers * rooms)
                .map(|v| {
                    let (p, r) = ((v / rooms) as u64, (v % rooms) as u64);
                    (r + rooms as u64 - p % rooms as u64) % rooms as u64
                })
                .collect(),
            base_seq: vec![0; rooms],
            last_seq: vec![0; rooms],
            joined: 0,
            received: 0,
            lost: 0,
            duplicated: 0,
            out_of_order: 0,
            foreign: 0,
        }
    }

    /// Accounts the `joined` of room `room`, whose latest sequence number was then `seq`;
    /// true once every room's has come.
    pub fn joined(&mut self, room: usize, seq: u64) -> bool {
        if let (Some(base), Some(last)) = (self.base_seq.get_mut(room), self.last_seq.get_mut(room))
        {
            (*base, *last) = (seq, seq);
            self.joined += 1;
        }
        self.joined >= self.rooms
    }

    /// Accounts one `message` frame of room `room`, with room sequence number `seq` and
    /// marker `m`.
    pub fn record(&mut self, room: usize, seq: u64, m: &Marker) -> Outcome {
        let (Some(&base), Some(last)) = (self.base_seq.get(room), self.last_seq.get_mut(room))
        else {
            self.foreign += 1;
            return Outcome::Foreign;
        };
        if seq <= base {
            return Outcome::Replay;
        }
        if seq <= *last {
            self.out_of_order += 1;
        } else {
            *last = seq;
        }
        let at = m.publisher as usize * self.rooms + room;
        let next = match self.next.get_mut(at) {
            Some(next) if room_of(m.publisher, m.counter, self.rooms) == room => next,
            _ => {
                self.foreign += 1;
                return Outcome::Foreign;
            }
        };
        if m.counter < *next {
            self.duplicated += 1;
            return Outcome::Duplicate;
        }
        let missing = (m.counter - *next) / self.rooms as u64;
        *next = m.counter + self.rooms as u64;
        self.received += 1;
        self.lost += missing;
        if missing == 0 {
            Outcome::New
        } else {
            Outcome::AfterGap { missing }
        }
    }

    /// The highest room number of a message received, over the rooms (a room's when it
    /// joined, until one arrives).
    pub fn newest(&self) -> u64 {
        self.last_seq.iter().copied().max().unwrap_or(0)
    }

    /// Ends the account: `sent[p]` is how many messages publisher `p` sent in all; every one
    /// this subscriber never got counts as lost. Returns the total lost.
    pub fn finish(&mut self, sent: &[u64]) -> u64 {
        let rooms = self.rooms as u64;
        for (per_room, &sent) in self.next.chunks_mut(self.rooms).zip(sent) {
            for next in per_room {
                if sent > *next {
                    // Counters next, next + rooms, … below `sent`.
                    let missing = (sent - *next).div_ceil(rooms);
                    self.lost += missing;
                    *next += missing * rooms;
                }
            }
        }
        self.lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(publisher: u32, counter: u64) -> Marker {
        Marker {
            sent_ns: 1_000 + counter,
            publisher,
            counter,
        }
    }

    /// A frame exactly as the server encodes it.
    fn message(seq: u64, m: Marker) -> Vec<u8> {
        let mut text = Vec::new();
        write_marker(&mut text, m, 0);
        format!(
            r#"{{"type":"message","room":"bench","seq":{seq},"from":"p{}","text":"{}","time":1764117000000,"id":"{}-{}"}}"#,
            m.publisher,
            String::from_utf8(text).unwrap(),
            m.publisher,
            m.counter
        )
        .into_bytes()
    }

    #[test]
    fn counts_one_lost_and_one_duplicated_message() {
        // Publisher 0 sends 0..=4; the subscriber misses 2 and gets 3 twice.
        let mut tally = Tally::new(1, 1);
        assert!(tally.joined(0, 0));
        let seen = [0u64, 1, 3, 3, 4];
        for (i, &n) in seen.iter().enumerate() {
            let frame = message(i as u64 + 1, marker(0, n));
            let m = parse_marker(&frame).unwrap();
            let seq = u64_after(&frame, SEQ_KEY).unwrap();
            tally.record(0, seq, &m);
        }
        assert_eq!(tally.finish(&[5]), 1);
        assert_eq!(tally.lost, 1);
        assert_eq!(tally.duplicated, 1);
        assert_eq!(tally.received, 4);
    }

    #[test]
    fn outcomes_per_publisher() {
        let mut tally = Tally::new(2, 1);
        assert!(tally.joined(0, 10));
        assert_eq!(tally.record(0, 5, &marker(0, 0)), Outcome::Replay);
        assert_eq!(tally.record(0, 11, &marker(0, 0)), Outcome::New);
        assert_eq!(tally.record(0, 12, &marker(1, 0)), Outcome::New);
        assert_eq!(
            tally.record(0, 13, &marker(1, 3)),
            Outcome::AfterGap { missing: 2 }
        );
        assert_eq!(tally.record(0, 14, &marker(0, 0)), Outcome::Duplicate);
        assert_eq!(tally.record(0, 15, &marker(7, 0)), Outcome::Foreign);
        assert_eq!(tally.record(0, 15, &marker(0, 1)), Outcome::New);
        assert_eq!(tally.out_of_order, 1);
        // Publisher 0 sent 4 (2 never came), publisher 1 sent 4 (1 and 2 lost in the gap).
        assert_eq!(tally.finish(&[4, 4]), 4);
        assert_eq!(tally.received, 4);
        assert_eq!(tally.duplicated, 1);
        assert_eq!(tally.foreign, 1);
    }

    #[test]
    fn a_complete_run_has_nothing_lost() {
        let mut tally = Tally::new(3, 1);
        assert!(tally.joined(0, 0));
        let mut seq = 0;
        for n in 0..100 {
            for p in 0..3 {
                seq += 1;
                assert_eq!(tally.record(0, seq, &marker(p, n)), Outcome::New);
            }
        }
        assert_eq!(tally.finish(&[100, 100, 100]), 0);
        assert_eq!((tally.received, tally.duplicated), (300, 0));
    }

    #[test]
    fn each_room_keeps_its_own_order_and_count() {
        // 2 publishers round 3 rooms: publisher 1's message n goes to room (1 + n) % 3.
        let mut tally = Tally::new(2, 3);
        assert!(!tally.joined(0, 5));
        assert!(!tally.joined(2, 0));
        assert!(tally.joined(1, 7));
        assert_eq!(room_of(1, 0, 3), 1);
        assert_eq!(room_of(1, 2, 3), 0);
        // Rooms' frames come in any order between rooms (streams of their own): room 0
        // first, with publisher 1's message 2 (its first there), then room 1's 0 and 3.
        assert_eq!(tally.record(0, 6, &marker(1, 2)), Outcome::New);
        assert_eq!(tally.record(1, 8, &marker(1, 0)), Outcome::New);
        assert_eq!(tally.record(1, 9, &marker(1, 3)), Outcome::New);
        // Room 2 skips publisher 1's message 1 (its only one there so far) for 4.
        assert_eq!(
            tally.record(2, 1, &marker(1, 4)),
            Outcome::AfterGap { missing: 1 }
        );
        assert_eq!(tally.record(1, 9, &marker(1, 3)), Outcome::Duplicate);
        // History of room 1, and a message in a room its counter does not go to.
        assert_eq!(tally.record(1, 7, &marker(0, 1)), Outcome::Replay);
        assert_eq!(tally.record(1, 10, &marker(0, 0)), Outcome::Foreign);
        assert_eq!(tally.record(3, 1, &marker(0, 0)), Outcome::Foreign);
        assert_eq!(tally.out_of_order, 1);
        assert_eq!(tally.newest(), 10);
        // Publisher 0 sent 2 (to rooms 0 and 1: neither came); publisher 1 sent 6, of which
        // 1 (room 2, counted at the gap) and 5 (room 0, after its 2) never came.
        assert_eq!(tally.finish(&[2, 6]), 2 + 2);
        assert_eq!((tally.received, tally.duplicated, tally.foreign), (4, 1, 2));
        // Finishing again counts nothing twice.
        assert_eq!(tally.finish(&[2, 6]), 4);
    }

    #[test]
    fn rooms_are_named_by_their_index() {
        let frame = br#"{"type":"message","room":"bench-12","seq":3,"text":"t=1;p=0;n=0"}"#;
        assert_eq!(room_index(frame, b"bench"), Some(12));
        assert_eq!(room_index(frame, b"bench-1"), None);
        assert_eq!(room_index(frame, b"other"), None);
        assert_eq!(
            room_index(br#"{"type":"ack","room":"bench-1x","seq":3}"#, b"bench"),
            None
        );
        assert_eq!(room_index(br#"{"type":"pong"}"#, b"bench"), None);
        // Every publisher's sends go round every room.
        for p in 0..4 {
            let mut seen: Vec<usize> = (0..5).map(|n| room_of(p, n, 5)).collect();
            seen.sort_unstable();
            assert_eq!(seen, [0, 1, 2, 3, 4]);
        }
    }

    #[test]
    fn marker_round_trips_and_padding_is_ignored() {
        let m = Marker {
            sent_ns: 123_456_789_012,
            publisher: 7,
            counter: 42,
        };
        let mut text = Vec::new();
        write_marker(&mut text, m, 20);
        assert!(text.starts_with(b"t=123456789012;p=7;n=42;"));
        let frame = [
            b"{\"type\":\"message\",\"text\":\"".as_slice(),
            &text,
            b"\"}",
        ]
        .concat();
        assert_eq!(text.len(), "t=123456789012;p=7;n=42".len() + 20);
        assert_eq!(parse_marker(&frame), Some(m));
    }

    #[test]
    fn foreign_texts_are_not_markers() {
        assert_eq!(parse_marker(br#"{"type":"message","text":"hello"}"#), None);
        assert_eq!(
            parse_marker(br#"{"type":"message","text":"t=1;p=x;n=2"}"#),
            None
        );
        assert_eq!(
            parse_marker(br#"{"type":"message","text":"t=1;p=2"}"#),
            None
        );
        assert_eq!(
            parse_marker(br#"{"text":"t=99999999999999999999;p=1;n=2"}"#),
            None
        );
    }

    #[test]
    fn frames_are_classified_by_their_tag() {
        let frame = message(9, marker(1, 2));
        assert_eq!(kind(&frame), Kind::Message);
        assert_eq!(u64_after(&frame, SEQ_KEY), Some(9));
        let ack = br#"{"type":"ack","room":"bench","id":"1-2","seq":9}"#;
        assert_eq!(kind(ack), Kind::Ack);
        assert_eq!(u64_after(ack, SEQ_KEY), Some(9));
        let joined = br#"{"type":"joined","room":"r","epoch":17,"seq":41,"you":{"id":7,"name":"s"},"members":[],"gap":false,"replay":0}"#;
        assert_eq!(kind(joined), Kind::Joined);
        assert_eq!(u64_after(joined, SEQ_KEY), Some(41));
        // Issue 26: members carry their public sender id, messages their sender's and
        // whom they mention; the marker is still found.
        let joined = br#"{"type":"joined","room":"r","epoch":17,"seq":41,"you":{"id":7,"name":"s","sender":"AAAAAAAAAAAAAAAA"},"members":[{"id":7,"name":"s","sender":"AAAAAAAAAAAAAAAA"}],"count":1,"gap":false,"replay":0}"#;
        assert_eq!(u64_after(joined, SEQ_KEY), Some(41));
        let mentioning = br#"{"type":"message","room":"r","seq":12,"from":"p0","sender":"B-B_BBBBBBBBBBBB","text":"t=5;p=0;n=3","time":1,"mentions":["AAAAAAAAAAAAAAAA"]}"#;
        assert_eq!(kind(mentioning), Kind::Message);
        assert_eq!(u64_after(mentioning, SEQ_KEY), Some(12));
        assert_eq!(parse_marker(mentioning).map(|m| m.counter), Some(3));
        let read = br#"{"type":"read","room":"r","seq":40,"unread":1,"mentions":0,"head":41}"#;
        assert_eq!(kind(read), Kind::Read);
        assert_eq!(u64_after(read, SEQ_KEY), Some(40));
        let receipts = br#"{"type":"receipts","room":"r","readers":[{"sender":"AAAAAAAAAAAAAAAA","name":"s","seq":40}]}"#;
        assert_eq!(kind(receipts), Kind::Receipts);
        let mention = br#"{"type":"mention","room":"r","seq":12,"from":"p0","text":"hi"}"#;
        assert_eq!(kind(mention), Kind::Other);
        assert_eq!(
            kind(br#"{"type":"reactions","room":"r","seq":3}"#),
            Kind::Other
        );
        let bye = br#"{"type":"bye","code":4001,"reason":"too_slow","reconnect":true}"#;
        assert_eq!(kind(bye), Kind::Bye);
        assert_eq!(u64_after(bye, b"\"code\":"), Some(4001));
        assert_eq!(kind(br#"{"type":"presence","room":"r"}"#), Kind::Presence);
        assert_eq!(
            kind(br#"{"type":"error","code":"rate_limited"}"#),
            Kind::Error
        );
        assert_eq!(
            kind(br#"{"type":"update","room":"r","seq":3,"at":9}"#),
            Kind::Update
        );
        assert_eq!(kind(br#"{"type":"pong"}"#), Kind::Other);
        assert_eq!(kind(b"garbage"), Kind::Other);
    }

    #[test]
    fn ack_ids_name_publisher_and_counter() {
        let ack = br#"{"type":"ack","room":"bench","id":"3-17","seq":9}"#;
        assert_eq!(parse_ack_id(ack), Some((3, 17)));
        assert_eq!(parse_ack_id(br#"{"type":"ack","room":"r","seq":9}"#), None);
        assert_eq!(parse_ack_id(br#"{"type":"ack","id":"abc","seq":9}"#), None);
        assert_eq!(
            parse_ack_id(br#"{"type":"ack","id":"3-17x","seq":9}"#),
            None
        );
        assert_eq!(parse_ack_id(br#"{"type":"ack","id":"3-","seq":9}"#), None);
    }

    #[test]
    fn send_times_remember_what_each_slot_holds() {
        let times = SendTimes::new(2, 3);
        assert_eq!(times.slots, 4);
        assert_eq!(times.sent_at(0, 0), None);
        times.sent(0, 0, 100);
        times.sent(1, 0, 150);
        times.sent(0, 1, 200);
        assert_eq!(times.sent_at(0, 0), Some(100));
        assert_eq!(times.sent_at(1, 0), Some(150));
        assert_eq!(times.sent_at(0, 1), Some(200));
        // Message 4 takes message 0's slot: 0 is no longer timed, not timed wrong.
        times.sent(0, 4, 500);
        assert_eq!(times.sent_at(0, 0), None);
        assert_eq!(times.sent_at(0, 4), Some(500));
        // A publisher the run does not have.
        times.sent(9, 0, 1);
        assert_eq!(times.sent_at(9, 0), None);
    }

    #[test]
    fn find_handles_edges() {
        assert_eq!(find(b"abcabd", b"abd"), Some(3));
        assert_eq!(find(b"ab", b"abc"), None);
        assert_eq!(find(b"", b"a"), None);
        assert_eq!(find(b"aaa", b"aa"), Some(0));
        assert_eq!(find(b"xyz", b""), None);
    }
}
