//! The hub's behaviour on the memory engine, without a socket: joins, resumes, ordering,
//! idempotent retries, slow members, budgets, bans, big rooms.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::*;
use crate::engine::RecordKind;
use crate::engine::memory::Memory;
use crate::protocol::{self, now_ms};
use crate::queue::{Bounds, Inbox, Outbox};

impl Hub {
    /// `join` on the memory engine, which never waits.
    fn join_now(&self, name: &str, member: Member, resume: Resume) -> Result<Arc<Room>, ErrorCode> {
        futures_util::FutureExt::now_or_never(self.join(name, member, resume))
            .expect("the memory engine joins at once")
    }
}
use serde_json::{Value, json};

fn hub_on_memory(config: HubConfig) -> Hub {
    let engine = Arc::new(Memory::new(crate::engine::Options::for_tests(
        config.dedupe_window,
    )));
    block_on(Hub::new(config, engine, Arc::default())).unwrap()
}

/// A queue of `frames` frames, unbounded in bytes.
fn queue(frames: usize) -> (Outbox, Inbox, crate::queue::Closing) {
    crate::queue::queue(Bounds {
        frames,
        bytes: usize::MAX,
    })
}

/// A member's message: the memory engine is never busy.
fn say(room: &Arc<Room>, member: &Member, text: &str, id: Option<&str>) {
    assert!(room.publish(member, text, id, None, Box::default()).is_ok());
}

/// An anonymous member whose resume key is derived from its name (unique per test).
fn member(hub: &Hub, name: &str, capacity: usize) -> (Member, Inbox) {
    let (outbox, inbox, _) = queue(capacity);
    (
        anonymous(hub, name, &format!("key-of-{name}"), outbox),
        inbox,
    )
}

fn anonymous(hub: &Hub, name: &str, key: &str, outbox: Outbox) -> Member {
    Member {
        id: hub.next_id(),
        name: name.into(),
        user: None,
        sender: Arc::new(SenderKey::new(b"the hub tests' key").resume_key(key)),
        outbox,
    }
}

/// Everything queued so far, parsed.
fn frames(inbox: &mut Inbox) -> Vec<Value> {
    let mut batch = Vec::new();
    inbox.drain_now(&mut batch);
    batch
        .iter()
        .map(|o| serde_json::from_slice(&o.frame).unwrap())
        .collect()
}

fn texts(frames: &[Value]) -> Vec<(u64, String)> {
    frames
        .iter()
        .filter(|f| f["type"] == "message")
        .map(|f| {
            (
                f["seq"].as_u64().unwrap(),
                f["text"].as_str().unwrap().into(),
            )
        })
        .collect()
}

#[test]
fn join_gets_members_and_history_then_presence_goes_to_others() {
    let hub = hub_on_memory(HubConfig::default());
    let (ann, mut ann_in) = member(&hub, "ann", 64);
    let room = hub.join_now("r", ann.clone(), Resume::default()).unwrap();
    say(&room, &ann, "one", None);
    say(&room, &ann, "two", None);
    let (bob, mut bob_in) = member(&hub, "bob", 64);
    hub.join_now("r", bob.clone(), Resume::default()).unwrap();

    let got = frames(&mut bob_in);
    assert_eq!(got[0]["type"], "joined");
    assert_eq!(got[0]["seq"], 2);
    assert_eq!(got[0]["gap"], false);
    assert_eq!(got[0]["you"]["name"], "bob");
    let names: Vec<&str> = got[0]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ann", "bob"]);
    assert_eq!(texts(&got[1..]), [(1, "one".into()), (2, "two".into())]);

    let ann_got = frames(&mut ann_in);
    let last = ann_got.last().unwrap();
    assert_eq!(last["type"], "presence");
    assert_eq!(last["event"], "join");
    assert_eq!(last["member"]["name"], "bob");
}

#[test]
fn publish_orders_messages_and_acks_the_sender_after_its_message() {
    let hub = hub_on_memory(HubConfig::default());
    let (ann, mut ann_in) = member(&hub, "ann", 64);
    let (bob, mut bob_in) = member(&hub, "bob", 64);
    let room = hub.join_now("r", ann.clone(), Resume::default()).unwrap();
    hub.join_now("r", bob.clone(), Resume::default()).unwrap();
    frames(&mut ann_in);
    frames(&mut bob_in);

    say(&room, &ann, "a1", Some("x1"));
    say(&room, &bob, "b1", Some("y1"));
    let ann_got = frames(&mut ann_in);
    let bob_got = frames(&mut bob_in);
    assert_eq!(texts(&ann_got), texts(&bob_got));
    assert_eq!(texts(&ann_got), [(1, "a1".into()), (2, "b1".into())]);
    assert_eq!(ann_got[0]["from"], "ann");
    assert_eq!(ann_got[0]["id"], "x1");
    assert!(ann_got[0]["time"].as_u64().unwrap() > 1_600_000_000_000);
    assert_eq!(ann_got[1]["type"], "ack");
    assert_eq!(
        (ann_got[1]["id"].as_str(), ann_got[1]["seq"].as_u64()),
        (Some("x1"), Some(1))
    );
    assert!(
        bob_got
            .iter()
            .all(|f| f["id"] != "x1" || f["type"] == "message")
    );
}

#[test]
fn a_retried_id_is_acknowledged_again_and_stored_once() {
    let hub = hub_on_memory(HubConfig::default());
    let (ann, mut ann_in) = member(&hub, "ann", 64);
    let (bob, mut bob_in) = member(&hub, "bob", 64);
    let room = hub.join_now("r", ann.clone(), Resume::default()).unwrap();
    hub.join_now("r", bob.clone(), Resume::default()).unwrap();
    frames(&mut ann_in);
    frames(&mut bob_in);
    say(&room, &ann, "hello", Some("k"));
    say(&room, &ann, "hello", Some("k"));
    // The same id from another sender is another message.
    say(&room, &bob, "hello", Some("k"));
    let ann_got = frames(&mut ann_in);
    let acks: Vec<u64> = ann_got
        .iter()
        .filter(|f| f["type"] == "ack")
        .map(|f| f["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(acks, [1, 1]);
    assert_eq!(texts(&frames(&mut bob_in)).len(), 2);
}

#[test]
fn a_name_is_not_an_identity_the_sender_is() {
    let hub = hub_on_memory(HubConfig::default());
    let (outbox, mut ann_in, _) = queue(64);
    let ann = anonymous(&hub, "ann", "AAAAAAAAAAAAAAAAAAAAAA", outbox);
    let (outbox, mut fake_in, _) = queue(64);
    let impostor = anonymous(&hub, "ann", "BBBBBBBBBBBBBBBBBBBBBB", outbox);
    let room = hub.join_now("r", ann.clone(), Resume::default()).unwrap();
    hub.join_now("r", impostor.clone(), Resume::default())
        .unwrap();
    frames(&mut ann_in);
    frames(&mut fake_in);
    // Same name, same client ids: two senders, two messages each, each acked its own.
    say(&room, &impostor, "fake 1", Some("1"));
    say(&room, &ann, "real 1", Some("1"));
    say(&room, &ann, "real 1", Some("1"));
    let ann_got = frames(&mut ann_in);
    assert_eq!(
        texts(&ann_got),
        [(1, "fake 1".into()), (2, "real 1".into())]
    );
    let acks: Vec<u64> = ann_got
        .iter()
        .filter(|f| f["type"] == "ack")
        .map(|f| f["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(acks, [2, 2]);
    // Ann's own copy names her client id and her public sender id; the impostor's
    // message, as Ann sees it, has no id and another sender.
    let own = &ann_got[1];
    assert_eq!(
        (own["id"].as_str(), own["sender"].as_str()),
        (Some("1"), Some(ann.sender.public()))
    );
    let theirs = &ann_got[0];
    assert_eq!(theirs.get("id"), None);
    assert_eq!(theirs["sender"], impostor.sender.public());
    assert_ne!(ann.sender.public(), impostor.sender.public());
    // The impostor never learns Ann's client ids.
    let fake_got = frames(&mut fake_in);
    assert!(
        fake_got
            .iter()
            .filter(|f| f["seq"] == 2)
            .all(|f| f.get("id").is_none())
    );
    // The public id gives nothing of the key away.
    assert!(!ann.sender.public().contains("AAAA"));
}

#[test]
fn resume_replays_exactly_what_was_missed_or_reports_a_gap() {
    let hub = hub_on_memory(HubConfig {
        history_len: 5,
        ..HubConfig::default()
    });
    let (ann, _ann_in) = member(&hub, "ann", 64);
    let room = hub.join_now("r", ann.clone(), Resume::default()).unwrap();
    for i in 1..=8 {
        say(&room, &ann, &format!("m{i}"), None);
    }
    let epoch = {
        let (probe, mut probe_in) = member(&hub, "probe", 64);
        hub.join_now("r", probe.clone(), Resume::default()).unwrap();
        let got = frames(&mut probe_in);
        assert_eq!(
            texts(&got).first().unwrap().0,
            4,
            "only the last 5 are kept"
        );
        room.leave(probe.id);
        got[0]["epoch"].as_u64().unwrap()
    };
    let resume = |since, epoch| {
        let (m, mut inbox) = member(&hub, "bob", 64);
        hub.join_now("r", m.clone(), Resume { since, epoch })
            .unwrap();
        room.leave(m.id);
        let got = frames(&mut inbox);
        (
            got[0]["gap"].as_bool().unwrap(),
            texts(&got).iter().map(|t| t.0).collect::<Vec<_>>(),
        )
    };
    assert_eq!(resume(Some(6), Some(epoch)), (false, vec![7, 8]));
    assert_eq!(resume(Some(3), Some(epoch)), (false, vec![4, 5, 6, 7, 8]));
    assert_eq!(resume(Some(8), Some(epoch)), (false, vec![]));
    assert_eq!(resume(Some(2), Some(epoch)), (true, vec![4, 5, 6, 7, 8]));
    assert_eq!(
        resume(Some(6), Some(epoch + 1)),
        (true, vec![4, 5, 6, 7, 8])
    );
    assert_eq!(resume(Some(6), None), (false, vec![7, 8]));
}

#[test]
fn a_full_queue_drops_only_that_member_and_tells_it_why() {
    let hub = hub_on_memory(HubConfig::default());
    let (ann, mut ann_in) = member(&hub, "ann", 1024);
    let (outbox, _slow_in, closing) = queue(8);
    let slow = anonymous(&hub, "slow", "key-of-slow", outbox);
    let room = hub.join_now("r", ann.clone(), Resume::default()).unwrap();
    hub.join_now("r", slow.clone(), Resume::default()).unwrap();
    for i in 0..20 {
        say(&room, &ann, &format!("m{i}"), None);
    }
    let members: Vec<_> = room
        .members_page(None, usize::MAX)
        .0
        .into_iter()
        .map(|m| m.name.to_string())
        .collect();
    assert_eq!(members, ["ann"]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    assert_eq!(rt.block_on(closing.wait()), CloseCode::TooSlow);
    let got = frames(&mut ann_in);
    assert_eq!(texts(&got).len(), 20, "the fast member got everything");
    assert!(got.iter().any(|f| f["type"] == "presence"
        && f["event"] == "leave"
        && f["member"]["name"] == "slow"));
    assert!(!room.leave(slow.id), "already gone: no second leave event");
}

#[test]
fn many_slow_members_leave_together_in_one_frame_without_recursion() {
    // A small room of a thousand (a big one tells leaves in its next update): joining
    // it costs the square of its size, 1000 keeps this quick.
    const N: usize = 1000;
    let hub = hub_on_memory(HubConfig {
        presence: Policy {
            threshold: 10_000,
            counts_only: false,
        },
        ..HubConfig::default()
    });
    let (ann, mut ann_in) = member(&hub, "ann", N + 10);
    let room = hub.join_now("r", ann.clone(), Resume::default()).unwrap();
    // N members whose sessions are gone (their queues refuse everything), and one whose
    // queue takes the message but not what follows: it leaves in the second round.
    let mut gone = Vec::new();
    for i in 0..N {
        let (m, inbox) = member(&hub, &format!("s{i}"), N + 10);
        hub.join_now("r", m, Resume::default()).unwrap();
        gone.push(inbox);
    }
    let (edge, mut edge_in) = member(&hub, "edge", 8);
    hub.join_now("r", edge.clone(), Resume::default()).unwrap();
    frames(&mut ann_in);
    frames(&mut edge_in);
    for _ in 0..7 {
        assert!(edge.outbox.push(Bytes::from_static(b"{}\n")));
    }
    drop(gone);
    say(&room, &ann, "hello", None);
    let got = frames(&mut ann_in);
    assert_eq!(texts(&got), [(1, "hello".into())]);
    let leaves: Vec<usize> = got
        .iter()
        .filter(|f| f["type"] == "presence" && f["event"] == "leave")
        .map(|f| f["members"].as_array().map_or(1, Vec::len))
        .collect();
    assert_eq!(leaves, [N, 1], "one frame for the N, then one for the edge");
    let names: Vec<String> = room
        .members_page(None, usize::MAX)
        .0
        .iter()
        .map(|m| m.name.to_string())
        .collect();
    assert_eq!(names, ["ann"]);
}

#[test]
fn history_over_its_budget_leaves_the_least_active_rooms_first() {
    let hub = hub_on_memory(HubConfig {
        history_bytes: 20_000,
        ..HubConfig::default()
    });
    let (ann, _a) = member(&hub, "ann", 1024);
    let (bob, _b) = member(&hub, "bob", 1024);
    let quiet = hub
        .join_now("quiet", ann.clone(), Resume::default())
        .unwrap();
    let busy = hub
        .join_now("busy", bob.clone(), Resume::default())
        .unwrap();
    let text = "x".repeat(1000);
    for _ in 0..10 {
        say(&quiet, &ann, &text, None);
    }
    // The busy room takes the total over 20 KB: the quiet room's oldest go first.
    for _ in 0..12 {
        say(&busy, &bob, &text, None);
        hub.keep_history_budget();
    }
    let held = hub.inner.budget.held.load(Ordering::Relaxed);
    assert!(held <= 20_000, "{held} bytes held");
    let kept = |room: &Room| room.tail_len();
    assert_eq!(kept(&busy), 12, "the active room keeps its history");
    assert!(kept(&quiet) < 10, "the quiet room gave some up");
    // A resume from before what the quiet room kept is told it missed some.
    let (probe, mut probe_in) = member(&hub, "probe", 1024);
    let epoch = quiet.epoch();
    let resume = Resume {
        since: Some(0),
        epoch: Some(epoch),
    };
    hub.join_now("quiet", probe, resume).unwrap();
    assert_eq!(frames(&mut probe_in)[0]["gap"], true);
    // The count is exact: what the rooms hold, to the byte.
    let bytes = |room: &Room| room.tail_bytes();
    assert_eq!(bytes(&quiet) + bytes(&busy), held);
}

#[test]
fn typing_is_ephemeral_and_never_disconnects() {
    let hub = hub_on_memory(HubConfig::default());
    let (ann, _ann_in) = member(&hub, "ann", 64);
    let (bob, mut bob_in) = member(&hub, "bob", 4);
    let room = hub.join_now("r", ann.clone(), Resume::default()).unwrap();
    hub.join_now("r", bob.clone(), Resume::default()).unwrap();
    for _ in 0..10 {
        room.typing(&ann);
    }
    assert_eq!(
        room.members_page(None, usize::MAX).0.len(),
        2,
        "a full queue drops typing, not the member"
    );
    let got = frames(&mut bob_in);
    assert!(
        got.iter()
            .any(|f| f["type"] == "typing" && f["from"] == "ann")
    );
}

#[test]
fn at_the_room_limit_the_oldest_empty_room_makes_space() {
    let hub = hub_on_memory(HubConfig {
        max_rooms: 2,
        ..HubConfig::default()
    });
    let (ann, _a) = member(&hub, "ann", 64);
    let busy = hub
        .join_now("busy", ann.clone(), Resume::default())
        .unwrap();
    let (bob, _b) = member(&hub, "bob", 64);
    let idle = hub
        .join_now("idle", bob.clone(), Resume::default())
        .unwrap();
    idle.leave(bob.id);
    let (cid, _c) = member(&hub, "cid", 64);
    hub.join_now("new", cid.clone(), Resume::default()).unwrap();
    assert!(hub.room("idle").is_none());
    assert!(hub.room("busy").is_some());
    let (dan, _d) = member(&hub, "dan", 64);
    assert_eq!(
        hub.join_now("fourth", dan, Resume::default()).unwrap_err(),
        ErrorCode::ServerFull
    );
    assert_eq!(busy.members_page(None, usize::MAX).0.len(), 1);
}

#[test]
fn connection_permits_count_against_the_limit() {
    let hub = hub_on_memory(HubConfig {
        max_connections: 2,
        ..HubConfig::default()
    });
    let a = hub.try_connect().unwrap();
    let _b = hub.try_connect().unwrap();
    assert!(hub.try_connect().is_none());
    drop(a);
    assert!(hub.try_connect().is_some());
}

fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(future)
}

#[test]
fn the_hosts_changes_reach_the_members_in_order_and_history_keeps_the_current_state() {
    let hub = hub_on_memory(HubConfig::default());
    let (ann, mut ann_in) = member(&hub, "ann", 64);
    let room = hub.join_now("r", ann.clone(), Resume::default()).unwrap();
    for text in ["one", "two", "three"] {
        say(&room, &ann, text, None);
    }
    frames(&mut ann_in);
    let delete = |seq| block_on(hub.change_as("r", RecordKind::Delete, seq, "")).unwrap();
    let edit = |seq, text| block_on(hub.change_as("r", RecordKind::Edit, seq, text)).unwrap();
    assert!(delete(2));
    assert!(edit(3, "THREE"));
    let got = frames(&mut ann_in);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        (
            &got[0]["type"],
            &got[0]["seq"],
            &got[0]["at"],
            &got[0]["deleted"]
        ),
        (&json!("update"), &json!(2), &json!(4), &json!(true))
    );
    assert_eq!(
        (&got[1]["seq"], &got[1]["at"], &got[1]["text"]),
        (&json!(3), &json!(5), &json!("THREE"))
    );
    assert!(got[1]["edited"].as_u64().is_some());
    // Not a message (any more): nothing to change, nothing said.
    assert!(!delete(2));
    assert!(!edit(2, "back"));
    assert!(!delete(99));
    assert!(frames(&mut ann_in).is_empty());
    let (bob, mut bob_in) = member(&hub, "bob", 64);
    hub.join_now("r", bob, Resume::default()).unwrap();
    assert_eq!(
        texts(&frames(&mut bob_in)),
        [(1, "one".into()), (3, "THREE".into())]
    );
    let page = block_on(hub.history("r", None, 10)).unwrap();
    let shown: Vec<(u64, &str, bool)> = page
        .messages
        .iter()
        .map(|m| (m.seq, m.text.as_str(), m.edited.is_some()))
        .collect();
    assert_eq!(shown, [(1, "one", false), (3, "THREE", true)]);
}

#[test]
fn a_resume_gets_each_changed_message_once_in_its_current_state_and_counts_messages_only() {
    let hub = hub_on_memory(HubConfig {
        max_replay: 2,
        ..HubConfig::default()
    });
    let (ann, _ann_in) = member(&hub, "ann", 256);
    let room = hub.join_now("r", ann.clone(), Resume::default()).unwrap();
    for i in 1..=5 {
        say(&room, &ann, &format!("m{i}"), None);
    }
    let (bob, mut bob_in) = member(&hub, "bob", 256);
    hub.join_now("r", bob.clone(), Resume::default()).unwrap();
    let epoch = frames(&mut bob_in)[0]["epoch"].as_u64().unwrap();
    room.leave(bob.id);
    // Away: 2 edited three times, 3 deleted, 4 edited then deleted, a new message 6
    // edited; then forty edits of 1: far more changes than max_replay.
    let change = |kind, seq, text: &str| {
        assert!(room.change(&ann, kind, seq, text, None).is_ok());
    };
    for text in ["two", "TWO", "Two!"] {
        change(RecordKind::Edit, 2, text);
    }
    change(RecordKind::Delete, 3, "");
    change(RecordKind::Edit, 4, "four");
    change(RecordKind::Delete, 4, "");
    say(&room, &ann, "m6", None);
    change(RecordKind::Edit, 12, "six");
    say(&room, &ann, "m7", None);
    for i in 0..40 {
        change(RecordKind::Edit, 1, &format!("one {i}"));
    }
    let (back, mut back_in) = member(&hub, "bob", 256);
    hub.join_now(
        "r",
        back,
        Resume {
            since: Some(5),
            epoch: Some(epoch),
        },
    )
    .unwrap();
    let got = frames(&mut back_in);
    assert_eq!(got[0]["gap"], json!(false), "two messages fit max_replay 2");
    let replay: Vec<String> = got[1..]
        .iter()
        .map(|f| match f["type"].as_str().unwrap() {
            "message" => format!("message {} {}", f["seq"], f["text"]),
            _ if f["deleted"] == json!(true) => format!("deleted {}", f["seq"]),
            _ => format!("update {} {}", f["seq"], f["text"]),
        })
        .collect();
    assert_eq!(
        replay,
        [
            "update 2 \"Two!\"",
            "deleted 3",
            "deleted 4",
            "update 1 \"one 39\"",
            "message 12 \"six\"",
            "message 14 \"m7\"",
        ]
    );
    assert_eq!(got[0]["replay"], json!(replay.len()));
    assert!(got[5]["edited"].as_u64().is_some(), "m6 comes edited");
}

#[test]
fn history_pages_go_back_from_the_newest() {
    let hub = hub_on_memory(HubConfig::default());
    let (ann, _ann_in) = member(&hub, "ann", 64);
    let room = hub.join_now("r", ann.clone(), Resume::default()).unwrap();
    for i in 1..=7 {
        say(&room, &ann, &format!("m{i}"), None);
    }
    let page = |before, limit| {
        let page = block_on(hub.history("r", before, limit)).unwrap();
        (
            page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            page.more,
        )
    };
    assert_eq!(page(None, 3), (vec![5, 6, 7], true));
    assert_eq!(page(Some(5), 3), (vec![2, 3, 4], true));
    assert_eq!(page(Some(2), 3), (vec![1], false));
    assert_eq!(page(Some(100), 10).0.len(), 7, "nothing beyond the newest");
    assert_eq!(
        block_on(hub.history("nowhere", None, 3)).unwrap().messages,
        []
    );
}

#[test]
fn a_ban_keeps_a_user_out_of_its_room_or_everywhere_until_it_ends() {
    let hub = hub_on_memory(HubConfig::default());
    let (outbox, mut inbox, _closing) = queue(64);
    let mut bob = anonymous(&hub, "bob", "key-of-bob", outbox);
    bob.user = Some("u-bob".into());
    let room = hub.join_now("r", bob.clone(), Resume::default()).unwrap();
    assert!(!hub.banned("r", "u-bob"));
    let kicked = block_on(hub.ban(Some("r"), "u-bob", now_ms() + 60_000)).unwrap();
    assert_eq!(kicked, 1);
    // Out of that room, and told so; the connection's session sees it (and closes the
    // connection with 4403 if that was its last room).
    assert_eq!(
        frames(&mut inbox).last(),
        Some(&serde_json::json!({"type": "left", "room": "r", "code": 4403, "reason": "kicked"}))
    );
    assert!(inbox.rooms_removed());
    assert!(!room.lists(bob.id));
    assert!(hub.banned("r", "u-bob"));
    assert!(!hub.banned("elsewhere", "u-bob"));
    assert!(!hub.banned("r", "u-ann"));
    block_on(hub.ban(None, "u-bob", now_ms() + 60_000)).unwrap();
    assert!(hub.banned("elsewhere", "u-bob"));
    block_on(hub.unban(None, "u-bob")).unwrap();
    block_on(hub.unban(Some("r"), "u-bob")).unwrap();
    assert!(!hub.banned("r", "u-bob"));
    // A ban that ended is no ban.
    block_on(hub.ban(Some("r"), "u-bob", now_ms() - 1)).unwrap();
    assert!(!hub.banned("r", "u-bob"));
}

fn big_at(threshold: usize) -> HubConfig {
    HubConfig {
        presence: Policy {
            threshold,
            counts_only: false,
        },
        ..HubConfig::default()
    }
}

/// What a client makes of its room's presence frames: the members it knows and the
/// count it shows.
#[derive(Default)]
struct View {
    members: std::collections::BTreeMap<u64, String>,
    count: u64,
}

impl View {
    fn apply(&mut self, frame: &Value) {
        let entries = |key: &str| -> Vec<(u64, String)> {
            frame[key]
                .as_array()
                .map(|list| {
                    list.iter()
                        .map(|m| {
                            (
                                m["id"].as_u64().unwrap(),
                                m["name"].as_str().unwrap().into(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        match (frame["type"].as_str(), frame["event"].as_str()) {
            (Some("joined"), _) | (Some("presence"), Some("sync")) => {
                self.members = entries("members").into_iter().collect();
            }
            (Some("presence"), Some("join")) => {
                let m = &frame["member"];
                self.members.insert(
                    m["id"].as_u64().unwrap(),
                    m["name"].as_str().unwrap().into(),
                );
            }
            (Some("presence"), Some("leave")) => {
                let ids = entries("members").into_iter().map(|(id, _)| id);
                for id in ids.chain(frame["member"]["id"].as_u64()) {
                    self.members.remove(&id);
                }
            }
            (Some("presence"), Some("update")) => {
                self.members.extend(entries("joined"));
                for (id, _) in entries("left") {
                    self.members.remove(&id);
                }
            }
            _ => return,
        }
        self.count = frame["count"].as_u64().unwrap();
    }
}

fn truth(room: &Room) -> std::collections::BTreeMap<u64, String> {
    room.members_page(None, usize::MAX)
        .0
        .into_iter()
        .map(|m| (m.id, m.name.to_string()))
        .collect()
}

#[test]
fn a_big_room_joins_with_a_count_and_a_first_page_and_tells_changes_in_updates() {
    let hub = hub_on_memory(big_at(5));
    let (ann, mut ann_in) = member(&hub, "ann", 10_000);
    let room = hub.join_now("r", ann.clone(), Resume::default()).unwrap();
    let mut others = Vec::new();
    for i in 0..149 {
        let (m, inbox) = member(&hub, &format!("m{i}"), 10_000);
        hub.join_now("r", m.clone(), Resume::default()).unwrap();
        others.push((m, inbox));
    }
    // Small until five: one frame per join, with the count; then nothing until the update.
    let got = frames(&mut ann_in);
    let counts: Vec<u64> = got
        .iter()
        .filter(|f| f["type"] == "presence")
        .map(|f| f["count"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [2, 3, 4]);
    // The last to join gets the count and the first page, not everyone.
    let joined = &frames(&mut others.last_mut().unwrap().1)[0];
    assert_eq!(joined["count"], 150);
    let page = joined["members"].as_array().unwrap();
    assert_eq!(page.len(), protocol::MEMBERS_PAGE);
    assert_eq!(page[0]["name"], "ann", "the lowest ids first");
    // 146 joins since the room became big: more than one update lists, so counts only.
    hub.tick();
    let update = frames(&mut ann_in);
    assert_eq!(update.len(), 1);
    assert_eq!(
        update[0],
        serde_json::json!({"type":"presence","room":"r","event":"update","count":150})
    );
    // A few leave: the next update names them.
    for (m, _) in others.drain(..3) {
        room.leave(m.id);
    }
    assert!(frames(&mut ann_in).is_empty(), "nothing until the update");
    hub.tick();
    let update = &frames(&mut ann_in)[0];
    assert_eq!(update["count"], 147);
    let left: Vec<&str> = update["left"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(left, ["m0", "m1", "m2"]);
    assert_eq!(update["joined"], serde_json::json!([]));
    hub.tick();
    assert!(frames(&mut ann_in).is_empty(), "no change, no update");
    // Pages cover everyone once, in id order.
    let mut listed = Vec::new();
    let mut after = None;
    loop {
        let (page, count, next) = room.members_page(after, 40);
        assert_eq!(count, 147);
        listed.extend(page.into_iter().map(|m| m.id));
        match next {
            Some(id) => after = Some(id),
            None => break,
        }
    }
    assert_eq!(listed, truth(&room).into_keys().collect::<Vec<_>>());
    // Below the threshold again: everyone gets the whole list, and it is small again.
    let keep = 3;
    for (m, _) in others.drain(keep..) {
        room.leave(m.id);
    }
    let sync = frames(&mut ann_in);
    let sync = sync.last().unwrap();
    assert_eq!(
        (sync["event"].as_str(), sync["count"].as_u64()),
        (Some("sync"), Some(4))
    );
    assert_eq!(sync["members"].as_array().unwrap().len(), 4);
    room.leave(others[0].0.id);
    let leave = frames(&mut ann_in);
    assert_eq!(
        (leave[0]["event"].as_str(), leave[0]["count"].as_u64()),
        (Some("leave"), Some(3))
    );
}

#[test]
fn after_a_join_and_leave_storm_every_members_view_converges_to_the_truth() {
    let hub = hub_on_memory(big_at(20));
    let mut clients: Vec<(Member, Inbox, View)> = Vec::new();
    let mut left = Vec::new();
    let room = |hub: &Hub| hub.room("r").unwrap();
    for round in 0..30 {
        // Five join, two leave, an update every other round: some changes cross the
        // threshold, some updates list a dozen changes.
        for i in 0..5 {
            let (m, inbox) = member(&hub, &format!("r{round}-{i}"), 10_000);
            hub.join_now("r", m.clone(), Resume::default()).unwrap();
            clients.push((m, inbox, View::default()));
        }
        for _ in 0..2 {
            let (m, inbox, _) = clients.remove((round * 7) % clients.len());
            room(&hub).leave(m.id);
            left.push(inbox);
        }
        if round % 2 == 1 {
            hub.tick();
        }
        for (_, inbox, view) in &mut clients {
            for frame in frames(inbox) {
                view.apply(&frame);
            }
        }
    }
    hub.tick();
    let truth = truth(&room(&hub));
    assert!(truth.len() > 20, "the room is big");
    for (m, inbox, view) in &mut clients {
        for frame in frames(inbox) {
            view.apply(&frame);
        }
        assert_eq!(view.count, truth.len() as u64, "{}'s count", m.name);
        // Under a hundred: a big room's first page is everyone, and every update
        // listed its changes, so each list is exact.
        assert_eq!(view.members, truth, "{}'s list", m.name);
    }
}

#[test]
fn a_room_set_to_counts_only_never_lists_who_came_or_went() {
    let hub = hub_on_memory(big_at(100));
    let (ann, mut ann_in) = member(&hub, "ann", 1000);
    hub.join_now("r", ann, Resume::default()).unwrap();
    hub.set_policy(
        "r",
        Policy {
            threshold: 2,
            counts_only: true,
        },
    );
    let (bob, _b) = member(&hub, "bob", 1000);
    hub.join_now("r", bob, Resume::default()).unwrap();
    hub.tick();
    let got = frames(&mut ann_in);
    let update = got.last().unwrap();
    assert_eq!(update["event"], "update");
    assert_eq!(update["count"], 2);
    assert!(update.get("joined").is_none() && update.get("left").is_none());
}

#[test]
fn a_big_room_relays_at_most_three_typists_a_tick_and_a_small_one_at_once() {
    let hub = hub_on_memory(big_at(5));
    let (mut typists, mut inboxes) = (Vec::new(), Vec::new());
    for i in 0..8 {
        let (m, inbox) = member(&hub, &format!("m{i}"), 256);
        hub.join_now("big", m.clone(), Resume::default()).unwrap();
        typists.push(m);
        inboxes.push(inbox);
    }
    let room = hub.room("big").unwrap();
    for inbox in &mut inboxes {
        frames(inbox);
    }
    // Everyone types, twice: nothing goes out until the tick.
    for _ in 0..2 {
        for typist in &typists {
            room.typing(typist);
        }
    }
    let typing = |got: &[Value]| -> Vec<String> {
        got.iter()
            .filter(|f| f["type"] == "typing")
            .map(|f| f["from"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(
        typing(&frames(&mut inboxes[0])).is_empty(),
        "not before the tick"
    );
    hub.tick();
    // Then the last three who typed, to everyone but themselves.
    assert_eq!(typing(&frames(&mut inboxes[0])), ["m5", "m6", "m7"]);
    assert_eq!(typing(&frames(&mut inboxes[7])), ["m5", "m6"]);
    hub.tick();
    assert!(typing(&frames(&mut inboxes[0])).is_empty(), "told once");

    // A small room tells each notice at once.
    let (ann, _ann_in) = member(&hub, "ann", 64);
    let (bob, mut bob_in) = member(&hub, "bob", 64);
    let small = hub
        .join_now("small", ann.clone(), Resume::default())
        .unwrap();
    hub.join_now("small", bob, Resume::default()).unwrap();
    frames(&mut bob_in);
    small.typing(&ann);
    small.typing(&ann);
    assert_eq!(typing(&frames(&mut bob_in)), ["ann", "ann"]);
}

#[test]
fn a_member_that_holds_too_many_bytes_is_cut_off_and_a_replay_does_not_count() {
    let hub = hub_on_memory(HubConfig::default());
    let (ann, mut ann_in) = member(&hub, "ann", 1024);
    let room = hub.join_now("r", ann.clone(), Resume::default()).unwrap();
    let text = "x".repeat(4000);
    for i in 0..5 {
        say(&room, &ann, &format!("{i}{text}"), None);
    }
    // Bob's queue takes 8 frames of any size, or 10 KB of live frames: the replay of
    // five 4 KB messages fits, two more live ones do not.
    let (outbox, mut bob_in, closing) = crate::queue::queue(Bounds {
        frames: 64,
        bytes: 10_000,
    });
    let bob = anonymous(&hub, "bob", "key-of-bob", outbox);
    hub.join_now("r", bob.clone(), Resume::default()).unwrap();
    let got = frames(&mut bob_in);
    assert_eq!(got[0]["replay"], 5);
    assert_eq!(
        texts(&got).len(),
        5,
        "the whole replay, past the byte bound"
    );
    for i in 5..8 {
        say(&room, &ann, &format!("{i}{text}"), None);
    }
    assert_eq!(block_on(closing.wait()), CloseCode::TooSlow);
    assert_eq!(room.members_page(None, usize::MAX).0.len(), 1);
    assert_eq!(texts(&frames(&mut ann_in)).len(), 8, "Ann got everything");
}
