//! A room shared by WebTransport and WebSocket clients: messages both ways in one order,
//! presence, history, acknowledgements, idempotent retries, and resume across transports.

mod common;

use common::{Client, seq_text, start};
use serde_json::{Value, json};

#[tokio::test]
async fn webtransport_and_websocket_clients_share_one_room_in_one_order() {
    let server = start().await;
    let mut wt = Client::wt(&server).await;
    let mut ws = Client::ws(&server).await;
    wt.join("lobby", "wendy").await;
    ws.join("lobby", "walt").await;
    // Wendy sees Walt arrive.
    let presence = wt.next_of("presence").await;
    assert_eq!(
        (
            presence["event"].as_str(),
            presence["member"]["name"].as_str()
        ),
        (Some("join"), Some("walt"))
    );

    // Both send at once, interleaved, without waiting for acks.
    for i in 0..10 {
        wt.send(
            json!({"type":"send","room":"lobby","text":format!("wt {i}"),"id":format!("wt-{i}")}),
        )
        .await;
        ws.send(
            json!({"type":"send","room":"lobby","text":format!("ws {i}"),"id":format!("ws-{i}")}),
        )
        .await;
    }
    let seen_by_wt = wt.messages("lobby", 20).await;
    let seen_by_ws = ws.messages("lobby", 20).await;
    assert_eq!(
        seen_by_wt, seen_by_ws,
        "same messages, same order, same numbers"
    );
    let seqs: Vec<u64> = seen_by_wt.iter().map(|m| m.0).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    // Each sender's own messages keep their order.
    let wendy: Vec<&str> = seen_by_wt
        .iter()
        .filter(|m| m.1 == "wendy")
        .map(|m| m.2.as_str())
        .collect();
    assert_eq!(
        wendy,
        (0..10).map(|i| format!("wt {i}")).collect::<Vec<_>>()
    );
    let walt: Vec<&str> = seen_by_ws
        .iter()
        .filter(|m| m.1 == "walt")
        .map(|m| m.2.as_str())
        .collect();
    assert_eq!(walt, (0..10).map(|i| format!("ws {i}")).collect::<Vec<_>>());
    server.stop().await;
}

#[tokio::test]
async fn a_joiner_gets_members_and_history_and_others_see_presence() {
    let server = start().await;
    let mut ann = Client::ws(&server).await;
    ann.join("r", "ann").await;
    for i in 1..=3 {
        assert_eq!(ann.say("r", &format!("m{i}"), &format!("a{i}")).await, i);
    }
    let mut bob = Client::wt(&server).await;
    let (joined, history) = bob.join("r", "bob").await;
    let names: Vec<&str> = joined["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ann", "bob"]);
    assert_eq!(joined["you"]["name"], "bob");
    assert_eq!(joined["seq"], 3);
    let texts: Vec<String> = history.iter().map(|m| seq_text(m).2).collect();
    assert_eq!(texts, ["m1", "m2", "m3"]);
    assert!(
        history
            .iter()
            .all(|m| m["from"] == "ann" && m["time"].as_u64().unwrap() > 1_600_000_000_000)
    );

    let joined_event = ann.next_of("presence").await;
    assert_eq!(joined_event["event"], "join");
    assert_eq!(joined_event["member"]["name"], "bob");
    bob.send(json!({"type":"leave","room":"r"})).await;
    assert_eq!(bob.next_of("left").await["room"], "r");
    let left_event = ann.next_of("presence").await;
    assert_eq!(
        (
            left_event["event"].as_str(),
            left_event["member"]["name"].as_str()
        ),
        (Some("leave"), Some("bob"))
    );

    // Closing the connection counts as leaving too.
    let mut cid = Client::wt(&server).await;
    cid.join("r", "cid").await;
    assert_eq!(ann.next_of("presence").await["member"]["name"], "cid");
    drop(cid);
    let gone = ann.next_of("presence").await;
    assert_eq!(
        (gone["event"].as_str(), gone["member"]["name"].as_str()),
        (Some("leave"), Some("cid"))
    );
    server.stop().await;
}

#[tokio::test]
async fn sends_are_acknowledged_and_a_retried_id_is_stored_once() {
    let server = start().await;
    for transport in ["websocket", "webtransport"] {
        let room = format!("acks-{transport}");
        let mut sender = if transport == "websocket" {
            Client::ws(&server).await
        } else {
            Client::wt(&server).await
        };
        let mut watcher = Client::ws(&server).await;
        let (joined, _) = sender.join(&room, "sam").await;
        let key = joined["key"].as_str().unwrap().to_string();
        assert_eq!(key.len(), 22, "a 128-bit resume key: {joined}");
        watcher.join(&room, "wes").await;
        assert_eq!(sender.say(&room, "first", "id-1").await, 1);
        // The same id again (a retry after a lost ack) is acknowledged with the same number.
        assert_eq!(sender.say(&room, "first", "id-1").await, 1);
        assert_eq!(sender.say(&room, "second", "id-2").await, 2);
        // The watcher sees two messages, not three.
        let got = watcher.messages(&room, 2).await;
        assert_eq!(
            got,
            [
                (1, "sam".into(), "first".into()),
                (2, "sam".into(), "second".into())
            ]
        );
        // A retry from a new connection (after a reconnect) presenting the resume key is
        // recognized too, and its messages are still its own.
        drop(sender);
        let mut again = Client::wt(&server).await;
        let (rejoined, _) = again
            .join_frame(json!({"type":"join","room":room,"name":"sam","key":key}))
            .await;
        assert_eq!(rejoined["key"], key.as_str());
        assert_eq!(rejoined["you"]["sender"], joined["you"]["sender"]);
        assert_eq!(again.say(&room, "first", "id-1").await, 1);
        assert_eq!(again.say(&room, "third", "id-3").await, 3);
        let next = watcher.messages(&room, 1).await;
        assert_eq!(next, [(3, "sam".into(), "third".into())]);
    }
    server.stop().await;
}

#[tokio::test]
async fn a_display_name_is_not_an_identity() {
    let server = start().await;
    // Two anonymous clients named "ann", on either transport, using the same message ids,
    // the impostor first.
    let mut impostor = Client::ws(&server).await;
    let mut ann = Client::wt(&server).await;
    let mut bob = Client::ws(&server).await;
    let (fake_joined, _) = impostor.join("names", "ann").await;
    let (ann_joined, _) = ann.join("names", "ann").await;
    bob.join("names", "bob").await;
    assert_ne!(fake_joined["you"]["sender"], ann_joined["you"]["sender"]);
    assert_ne!(fake_joined["key"], ann_joined["key"]);
    // What Ann's connection receives, up to each of her acks.
    let mut ann_saw = Vec::new();
    for (i, id) in ["1", "2"].iter().enumerate() {
        let seq = impostor.say("names", &format!("fake {i}"), id).await;
        assert_eq!(seq, 2 * i as u64 + 1);
        ann.send(json!({"type":"send","room":"names","text":format!("real {i}"),"id":id}))
            .await;
        let ack = loop {
            let frame = ann.next().await;
            match frame["type"].as_str() {
                Some("ack") => break frame,
                Some("message") => ann_saw.push(frame),
                _ => {}
            }
        };
        assert_eq!(
            (ack["id"].as_str(), ack["seq"].as_u64()),
            (Some(*id), Some(seq + 1))
        );
    }
    // Everyone gets all four, each message with its own sender.
    let want: Vec<(u64, String, String)> = vec![
        (1, "ann".into(), "fake 0".into()),
        (2, "ann".into(), "real 0".into()),
        (3, "ann".into(), "fake 1".into()),
        (4, "ann".into(), "real 1".into()),
    ];
    let mut raw = Vec::new();
    for _ in 0..4 {
        raw.push(bob.next_of("message").await);
    }
    assert_eq!(raw.iter().map(seq_text).collect::<Vec<_>>(), want);
    // Nobody but the sender learns a client id; the senders tell the two anns apart.
    assert!(raw.iter().all(|m| m.get("id").is_none()), "{raw:?}");
    let senders: Vec<&Value> = raw.iter().map(|m| &m["sender"]).collect();
    assert_eq!(
        senders,
        [
            &fake_joined["you"]["sender"],
            &ann_joined["you"]["sender"],
            &fake_joined["you"]["sender"],
            &ann_joined["you"]["sender"]
        ]
    );
    // Ann's own copies carry her ids; the impostor's, as Ann sees them, do not.
    let ids: Vec<Option<&str>> = ann_saw.iter().map(|m| m["id"].as_str()).collect();
    assert_eq!(ids, [None, Some("1"), None, Some("2")]);
    // A key that is not one this server could have issued is refused; the join is not made.
    let mut forger = Client::ws(&server).await;
    forger
        .send(json!({"type":"join","room":"names","name":"ann","key":"guess"}))
        .await;
    let error = forger.next_of("error").await;
    assert_eq!(
        (error["code"].as_str(), error["room"].as_str()),
        (Some("invalid_frame"), Some("names"))
    );
    server.stop().await;
}

#[tokio::test]
async fn resume_after_a_drop_switching_transport_misses_and_duplicates_nothing() {
    let server = start().await;
    let mut talker = Client::ws(&server).await;
    talker.join("resume", "talker").await;
    for (first, second) in [("webtransport", "websocket"), ("websocket", "webtransport")] {
        let connect = |t: &str| {
            let t = t.to_string();
            let server = &server;
            async move {
                if t == "websocket" {
                    Client::ws(server).await
                } else {
                    Client::wt(server).await
                }
            }
        };
        let mut reader = connect(first).await;
        let (joined, _) = reader.join("resume", "reader").await;
        let epoch = joined["epoch"].as_u64().unwrap();
        let head = talker.say("resume", "before", &format!("b-{first}")).await;
        let seen = reader.messages("resume", 1).await;
        assert_eq!(seen[0].0, head);
        // The reader's connection drops; the room goes on without it.
        drop(reader);
        let mut missed = Vec::new();
        for i in 0..5 {
            let text = format!("while away {first} {i}");
            let seq = talker.say("resume", &text, &format!("w-{first}-{i}")).await;
            missed.push((seq, "talker".to_string(), text));
        }
        // It comes back over the other transport and names the last number it saw.
        let mut back = connect(second).await;
        let (joined, history) = back
            .join_frame(
                json!({"type":"join","room":"resume","name":"reader","since":head,"epoch":epoch}),
            )
            .await;
        assert_eq!(joined["gap"], false);
        let replayed: Vec<_> = history.iter().map(seq_text).collect();
        assert_eq!(replayed, missed, "exactly what it missed, in order");
        // And live messages continue right after, with no duplicate.
        let seq = talker.say("resume", "after", &format!("a-{first}")).await;
        let live = back.messages("resume", 1).await;
        assert_eq!(live, [(seq, "talker".to_string(), "after".to_string())]);
        back.send(json!({"type":"leave","room":"resume"})).await;
        back.next_of("left").await;
    }
    server.stop().await;
}

#[tokio::test]
async fn a_resume_older_than_history_says_gap() {
    let server = common::start_with(|c| c.history(3)).await;
    let mut talker = Client::wt(&server).await;
    let (joined, _) = talker.join("old", "talker").await;
    let epoch = joined["epoch"].as_u64().unwrap();
    for i in 1..=6 {
        talker.say("old", &format!("m{i}"), &format!("m{i}")).await;
    }
    let mut late = Client::ws(&server).await;
    let (joined, history) = late
        .join_frame(json!({"type":"join","room":"old","name":"late","since":1,"epoch":epoch}))
        .await;
    assert_eq!(joined["gap"], true, "messages 2 and 3 are gone");
    let seqs: Vec<u64> = history.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [4, 5, 6]);
    // A room that was recreated (another epoch) is a gap too, whatever the numbers.
    let mut other = Client::ws(&server).await;
    let (joined, history) = other
        .join_frame(json!({"type":"join","room":"old","name":"x","since":5,"epoch":epoch + 1}))
        .await;
    assert_eq!(joined["gap"], true);
    assert_eq!(history.len(), 3);
    server.stop().await;
}

#[tokio::test]
async fn typing_travels_as_a_datagram_over_webtransport_and_a_frame_over_websocket() {
    let server = start().await;
    let mut wt = Client::wt(&server).await;
    let mut ws = Client::ws(&server).await;
    wt.join("t", "wendy").await;
    ws.join("t", "walt").await;
    wt.next_of("presence").await;
    // From WebTransport as a datagram, to the WebSocket client as a frame.
    wt.send_datagram(json!({"type":"typing","room":"t"}));
    let typing = ws.next_of("typing").await;
    assert_eq!(
        (typing["room"].as_str(), typing["from"].as_str()),
        (Some("t"), Some("walt").filter(|_| false).or(Some("wendy")))
    );
    // From WebSocket as a frame, to the WebTransport client (as a datagram).
    ws.send(json!({"type":"typing","room":"t"})).await;
    let typing = wt.next_of("typing").await;
    assert_eq!(typing["from"], "walt");
    server.stop().await;
}

#[tokio::test]
async fn ping_is_answered() {
    let server = start().await;
    for mut client in [Client::ws(&server).await, Client::wt(&server).await] {
        client.send(json!({"type":"ping"})).await;
        assert_eq!(client.next().await, json!({"type":"pong"}));
    }
    server.stop().await;
}

#[tokio::test]
async fn config_endpoint_tells_clients_how_to_connect() {
    let server = start().await;
    let (status, body) = server.get("/wtchat/config").await;
    assert_eq!(status, 200);
    let config: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        config["webtransport"],
        format!("https://127.0.0.1:{}/wtchat", server.webtransport.port())
    );
    assert_eq!(
        config["websocket"],
        format!("ws://{}/wtchat/ws", server.http)
    );
    let hashes = config["certificateHashes"].as_array().unwrap();
    assert_eq!(hashes.len(), 1);
    assert_eq!(hashes[0]["algorithm"], "sha-256");
    assert_eq!(hashes[0]["value"], wtchat::certs::hex(&server.digests[0]));
    assert_eq!(config["limits"]["maxTextChars"], 4000);
    // X-Forwarded-* from a client that is not a trusted proxy: ignored (anyone could
    // send them), the page's own Host is used.
    let forwarded = [
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "evil.example"),
        ("host", "chat.example.com"),
    ];
    let (_, body) = common::http_get(server.http, "/wtchat/config", &forwarded).await;
    let config: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(config["websocket"], "ws://chat.example.com/wtchat/ws");
    server.stop().await;

    // Behind a trusted TLS-terminating proxy: wss://, on the name and prefix it forwards.
    let server = common::start_with(|c| c.trusted_proxy("127.0.0.1".parse().unwrap())).await;
    let (_, body) = common::http_get(
        server.http,
        "/wtchat/config",
        &[
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "chat.example.com"),
            ("x-forwarded-prefix", "/talk"),
            ("host", "127.0.0.1:8080"),
        ],
    )
    .await;
    let config: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(config["websocket"], "wss://chat.example.com/talk/wtchat/ws");
    assert_eq!(
        config["webtransport"],
        format!(
            "https://chat.example.com:{}/wtchat",
            server.webtransport.port()
        )
    );
    server.stop().await;

    // A configured public URL wins over the request.
    let server = common::start_with(|c| c.public_url("https://example.com/chat/")).await;
    let (_, body) = server.get("/wtchat/config").await;
    let config: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(config["websocket"], "wss://example.com/chat/wtchat/ws");
    server.stop().await;
}

#[tokio::test]
async fn connections_above_the_limit_are_refused_on_both_transports() {
    let server = common::start_with(|c| c.max_connections(2)).await;
    let mut first = Client::ws(&server).await;
    let _second = Client::wt(&server).await;
    // Refused over the connection itself (browsers cannot read a refused handshake's
    // status): `busy`, with a wait.
    let mut over = Client::ws_with_origin(&server, None).await.unwrap();
    assert_eq!(over.expect_busy().await, 5000);
    assert_eq!(Client::wt(&server).await.expect_busy().await, 5000);
    // The ones admitted are served as usual, and a freed place is taken again.
    first.send(json!({"type":"ping"})).await;
    assert_eq!(first.next().await["type"], "pong");
    drop(first);
    Client::ws_when_admitted(&server).await;
    server.stop().await;
}
