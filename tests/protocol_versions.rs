//! Protocol versions: `/wtchat/config` names them, a client's first frame says which it
//! speaks, and a client of the previous version — one that sends no `hello`, as every
//! client did before there was one — chats with a client of this one in the same room.

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
async fn clients_of_protocol_1_and_2_share_a_room_on_every_transport() {
    let server = start().await;
    let (status, body) = server.get("/wtchat/config").await;
    assert_eq!(status, 200);
    let config: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (
            config["protocol"].as_u64(),
            config["oldestProtocol"].as_u64()
        ),
        (Some(2), Some(1))
    );

    // Version 1: no hello, over each transport.
    let mut old = [
        Client::ws(&server).await,
        Client::wt(&server).await,
        Client::sse(&server).await,
        Client::poll(&server).await,
    ];
    // Version 2: hello first, answered with the version spoken.
    let mut new = [Client::ws(&server).await, Client::wt(&server).await];
    for client in &mut new {
        let answer = hello(client, 2).await;
        assert_eq!(
            answer,
            json!({"type": "hello", "protocol": 2}),
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
            if i < 4 { "v1" } else { "v2" }
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
    server.stop().await;
}

#[tokio::test]
async fn a_hello_from_the_future_is_answered_with_the_newest_and_one_from_the_past_is_refused() {
    let server = start().await;
    let mut future = Client::ws(&server).await;
    assert_eq!(
        hello(&mut future, 99).await,
        json!({"type": "hello", "protocol": 2})
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
