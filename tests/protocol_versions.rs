//! Protocol versions: `/wtchat/config` names them, a client's first frame says which it
//! speaks, and clients of every version — version 1 sends no `hello`, as every client did
//! before there was one — chat in the same room, and all get a version 3 client's edit.

mod common;

use common::{Client, Ended, start};
use serde_json::{Value, json};

/// Says `hello` with `protocol` as the first frame: the server's answer.
async fn hello(client: &mut Client, protocol: u32) -> Value {
    client
        .send(json!({"type": "hello", "protocol": protocol}))
        .await;
    client.next().await
}

#[tokio::test]
async fn clients_of_protocol_1_to_4_share_a_room_on_every_transport() {
    let server = start().await;
    let (status, body) = server.get("/wtchat/config").await;
    assert_eq!(status, 200);
    let config: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (
            config["protocol"].as_u64(),
            config["oldestProtocol"].as_u64()
        ),
        (Some(4), Some(1))
    );

    // Version 1: no hello, over each transport.
    let mut old = [
        Client::ws(&server).await,
        Client::wt(&server).await,
        Client::sse(&server).await,
        Client::poll(&server).await,
    ];
    // Versions 2 to 4: hello first, answered with the version spoken (4 over WebTransport:
    // the room's frames on a stream of its own).
    let mut new = [
        Client::ws(&server).await,
        Client::wt(&server).await,
        Client::ws(&server).await,
        Client::sse(&server).await,
        Client::wt(&server).await.with_room_streams().await,
    ];
    let versions = [2, 2, 3, 3];
    for (client, version) in new.iter_mut().zip(versions) {
        let answer = hello(client, version).await;
        assert_eq!(
            answer,
            json!({"type": "hello", "protocol": version}),
            "{}",
            client.transport()
        );
    }
    for (i, client) in old.iter_mut().chain(new.iter_mut()).enumerate() {
        client.join("r", &format!("c{i}")).await;
    }
    let mut said = Vec::new();
    for (i, client) in old.iter_mut().chain(new.iter_mut()).enumerate() {
        let text = format!(
            "from {} ({})",
            client.transport(),
            ["v1", "v1", "v1", "v1", "v2", "v2", "v3", "v3", "v4"][i]
        );
        client
            .send(json!({"type": "send", "room": "r", "text": text, "id": format!("m{i}")}))
            .await;
        said.push(text);
    }
    let mut seen = Vec::new();
    for client in old.iter_mut().chain(new.iter_mut()) {
        let got: Vec<(u64, String)> = client
            .messages("r", said.len())
            .await
            .into_iter()
            .map(|(seq, _, text)| (seq, text))
            .collect();
        seen.push((client.transport(), got));
    }
    let (_, first) = &seen[0];
    let mut texts: Vec<&String> = first.iter().map(|(_, t)| t).collect();
    texts.sort();
    let mut want: Vec<&String> = said.iter().collect();
    want.sort();
    assert_eq!(texts, want, "every message, once");
    assert!(first.windows(2).all(|w| w[0].0 < w[1].0), "{first:?}");
    for (transport, got) in &seen {
        assert_eq!(
            got, first,
            "{transport}: the same messages in the same order"
        );
    }
    // A version 3 client edits its message: every client gets the same `update`, whatever
    // its version (frames are encoded once; an older client may ignore it).
    let own = first.iter().find(|(_, t)| t == "from websocket (v3)");
    let own = own.unwrap().0;
    let v3 = &mut new[2];
    v3.send(json!({"type": "edit", "room": "r", "seq": own, "text": "edited", "id": "e"}))
        .await;
    for client in old.iter_mut().chain(new.iter_mut()) {
        let update = client.next_of("update").await;
        assert_eq!(
            (&update["seq"], &update["text"]),
            (&json!(own), &json!("edited")),
            "{}",
            client.transport()
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_hello_from_the_future_is_answered_with_the_newest_and_one_from_the_past_is_refused() {
    let server = start().await;
    let mut future = Client::ws(&server).await;
    assert_eq!(
        hello(&mut future, 99).await,
        json!({"type": "hello", "protocol": 4})
    );
    future.join("r", "future").await;

    let mut past = Client::wt(&server).await;
    let refused = hello(&mut past, 0).await;
    assert_eq!(refused["code"], "unsupported_protocol", "{refused}");
    assert_eq!(past.ended().await, Ended::Code(4400));

    // Only as the first frame: later, it is an error and the connection goes on.
    let mut late = Client::ws(&server).await;
    late.join("r", "late").await;
    let error = hello(&mut late, 2).await;
    assert_eq!(error["code"], "invalid_frame", "{error}");
    assert_eq!(late.say("r", "still here", "x").await, 1);
    server.stop().await;
}

/// Protocol 4: leaving a room and joining it again at once (both frames in one write) ends
/// the room's stream with its `left` and opens a new one for the new `joined`; the room
/// then lives on the new stream. (Answers that fall into one write batch are split the
/// same way: `add_to_room`'s unit test.)
#[tokio::test]
async fn a_room_left_and_joined_again_at_once_gets_a_new_stream() {
    let server = common::start().await;
    let mut client = Client::wt(&server).await.with_room_streams().await;
    let (joined, _) = client.join("again", "ann").await;
    assert_eq!(joined["_stream"], 0, "{joined}");
    let both = format!(
        "{}\n{}",
        json!({"type": "leave", "room": "again"}),
        json!({"type": "join", "room": "again", "name": "ann"})
    );
    client.send_raw(both.as_bytes()).await;
    let left = client.next_of("left").await;
    assert_eq!(
        left["_stream"], 0,
        "the `left` ends the first stream: {left}"
    );
    let joined = client.next_of("joined").await;
    assert_eq!(
        joined["_stream"], 1,
        "the new `joined` opens a stream: {joined}"
    );
    client
        .send(json!({"type": "send", "room": "again", "text": "back", "id": "b"}))
        .await;
    let ack = client.next_of("ack").await;
    assert_eq!(
        (&ack["id"], &ack["_stream"]),
        (&json!("b"), &json!(1)),
        "{ack}"
    );
    server.stop().await;
}
