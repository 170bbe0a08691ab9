//! Big rooms over the wire: real WebSocket and WebTransport clients join and leave a room
//! past its presence threshold; each client's count and list converge to the server's.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Client, start_with};
use serde_json::{Value, json};

/// What a client knows of its room's members, from the frames it got.
#[derive(Default, Debug)]
struct View {
    members: BTreeMap<u64, String>,
    count: u64,
    /// An update carried only the count (more changed at once than one lists): the list
    /// must be paged again.
    counts_only: bool,
}

fn entries(frame: &Value, key: &str) -> Vec<(u64, String)> {
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
}

impl View {
    /// Applies a frame; false when it was not about membership.
    fn apply(&mut self, frame: &Value) -> bool {
        match (frame["type"].as_str(), frame["event"].as_str()) {
            (Some("joined"), _) | (Some("presence"), Some("sync")) => {
                self.members = entries(frame, "members").into_iter().collect();
            }
            (Some("presence"), Some("join")) => {
                let (id, name) = (&frame["member"]["id"], &frame["member"]["name"]);
                self.members
                    .insert(id.as_u64().unwrap(), name.as_str().unwrap().into());
            }
            (Some("presence"), Some("leave")) => {
                let many = entries(frame, "members").into_iter().map(|(id, _)| id);
                for id in many.chain(frame["member"]["id"].as_u64()) {
                    self.members.remove(&id);
                }
            }
            (Some("presence"), Some("update")) => {
                self.counts_only |= frame["joined"].is_null();
                self.members.extend(entries(frame, "joined"));
                for (id, _) in entries(frame, "left") {
                    self.members.remove(&id);
                }
            }
            _ => return false,
        }
        self.count = frame["count"].as_u64().unwrap();
        true
    }
}

/// Every member of `room`, paged with the `members` frame as a client would.
async fn page_all(client: &mut Client, room: &str) -> (BTreeMap<u64, String>, u64) {
    let mut all = BTreeMap::new();
    let mut after = Value::Null;
    loop {
        client
            .send(json!({"type": "members", "room": room, "after": after, "limit": 40}))
            .await;
        let page = client.next_of("members").await;
        assert!(page["members"].as_array().unwrap().len() <= 40);
        all.extend(entries(&page, "members"));
        if page["next"].is_null() {
            return (all, page["count"].as_u64().unwrap());
        }
        after = page["next"].clone();
    }
}

const KEY: &str = "an-api-key-of-at-least-32-bytes-long!!";

#[tokio::test]
async fn counts_and_lists_converge_after_a_join_and_leave_storm_on_both_transports() {
    let server = start_with(|b| {
        b.api_key(KEY)
            .presence_threshold(20)
            .presence_interval(Duration::from_millis(50))
            .max_connections_per_ip(10_000)
    })
    .await;
    // Two watchers, one per transport, in the room from the start.
    let mut watchers = [Client::ws(&server).await, Client::wt(&server).await];
    let mut views = [View::default(), View::default()];
    for (i, (watcher, view)) in watchers.iter_mut().zip(&mut views).enumerate() {
        let (joined, _) = watcher.join("big", &format!("watcher{i}")).await;
        view.apply(&joined);
    }
    // 150 more join (half on each transport), then a third of them leave.
    let mut crowd = Vec::new();
    for i in 0..150 {
        let mut client = if i % 2 == 0 {
            Client::ws(&server).await
        } else {
            Client::wt(&server).await
        };
        let (joined, _) = client.join("big", &format!("m{i}")).await;
        assert_eq!(joined["count"].as_u64(), Some(i + 3));
        assert!(joined["members"].as_array().unwrap().len() <= 100);
        crowd.push(client);
    }
    for client in crowd.iter_mut().step_by(3) {
        client.send(json!({"type": "leave", "room": "big"})).await;
        client.next_of("left").await;
    }
    let truth: BTreeMap<u64, String> = server
        .chat
        .members("big")
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.id, m.name))
        .collect();
    assert_eq!(truth.len(), 2 + 100);
    for (watcher, view) in watchers.iter_mut().zip(&mut views) {
        // Updates come within the interval: read until the view is the server's list (the
        // count alone may pass through the final one on the way), or until an update
        // carried only the count and the list must be paged.
        let settled = |view: &View| {
            view.count == truth.len() as u64 && (view.counts_only || view.members == truth)
        };
        while !settled(view) {
            let frame = tokio::time::timeout(common::DEADLINE, watcher.next())
                .await
                .unwrap_or_else(|_| panic!("{view:?} never became {truth:?}"));
            view.apply(&frame);
        }
        // A watcher from the start saw every change listed, or a count-only update
        // (more than 100 at once): then its list is paged again, as the client does.
        let (paged, count) = page_all(watcher, "big").await;
        assert_eq!(
            (&paged, count),
            (&truth, truth.len() as u64),
            "{}",
            watcher.transport()
        );
    }
    // The HTTP API pages the same list.
    let auth = format!("Bearer {KEY}");
    let headers = [("authorization", auth.as_str())];
    let path = "/wtchat/api/members?room=big&limit=60";
    let (status, body) = common::http_get(server.http, path, &headers).await;
    assert_eq!(status, 200, "{body}");
    let first: Value = serde_json::from_str(&body).unwrap();
    let path = format!(
        "/wtchat/api/members?room=big&limit=60&after={}",
        first["next"]
    );
    let (_, body) = common::http_get(server.http, &path, &headers).await;
    let rest: Value = serde_json::from_str(&body).unwrap();
    let mut listed = entries(&first, "members");
    listed.extend(entries(&rest, "members"));
    assert_eq!(listed, truth.clone().into_iter().collect::<Vec<_>>());
    assert_eq!(
        (first["count"].as_u64(), &rest["next"]),
        (Some(102), &Value::Null)
    );
    let page = server.chat.members_page("big", None, 60).await.unwrap();
    assert_eq!((page.members.len(), page.count), (60, 102));
    let rest = server
        .chat
        .members_page("big", page.next, 60)
        .await
        .unwrap();
    assert_eq!((rest.members.len(), rest.next), (42, None));
}

#[tokio::test]
async fn a_small_room_keeps_one_presence_frame_per_change() {
    let server = start_with(|b| b).await;
    let mut ann = Client::ws(&server).await;
    ann.join("small", "ann").await;
    let mut bob = Client::wt(&server).await;
    let (joined, _) = bob.join("small", "bob").await;
    let names: Vec<(u64, String)> = entries(&joined, "members");
    assert_eq!(
        names.iter().map(|(_, n)| n.as_str()).collect::<Vec<_>>(),
        ["ann", "bob"]
    );
    assert_eq!(joined["count"], 2);
    let join = ann.next_of("presence").await;
    assert_eq!(
        (
            join["event"].as_str(),
            join["member"]["name"].as_str(),
            join["count"].as_u64()
        ),
        (Some("join"), Some("bob"), Some(2))
    );
    bob.send(json!({"type": "leave", "room": "small"})).await;
    let leave = ann.next_of("presence").await;
    assert_eq!(
        (
            leave["event"].as_str(),
            leave["member"]["name"].as_str(),
            leave["count"].as_u64()
        ),
        (Some("leave"), Some("bob"), Some(1))
    );
}
