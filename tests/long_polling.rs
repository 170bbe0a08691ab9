//! Long polling with a plain HTTP client: one room with a WebSocket client in one order; a
//! poll whose answer was lost is asked again and loses nothing; a session nobody polls
//! leaves its rooms; bad requests get their answers. Every case of tests/bad_input.rs that
//! applies runs there over long polling too; tests/sse.rs has clients of all four
//! transports in one room, and a new session that joins with `since` getting exactly what
//! an abandoned one missed.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Client, DEADLINE, TestServer, http_request, start_with};
use serde_json::{Value, json};

/// A long-polling session, as a client without streaming keeps it.
struct Polling {
    http: SocketAddr,
    url: String,
    /// The last frame number received.
    after: u64,
}

impl Polling {
    async fn open(http: SocketAddr) -> Polling {
        let (status, body) = http_request(http, "POST", "/wtchat/poll", &[], None).await;
        assert_eq!(status, 200, "{body}");
        let session: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(session["type"], "session");
        assert_eq!(session["post"], session["poll"]);
        Polling {
            http,
            url: session["poll"].as_str().unwrap().to_string(),
            after: 0,
        }
    }

    /// Posts `frames`; the status.
    async fn post(&self, frames: &[Value]) -> u16 {
        let body: Vec<String> = frames.iter().map(Value::to_string).collect();
        common::post_text(self.http, &self.url, &body.join("\n"), &[]).await
    }

    /// One poll from `after`: (next, frames).
    async fn poll_from(&self, after: u64) -> (u64, Vec<Value>) {
        let path = format!("{}?after={after}", self.url);
        let (status, body) = http_request(self.http, "GET", &path, &[], None).await;
        assert_eq!(status, 200, "{body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        let frames = answer["frames"].as_array().unwrap().clone();
        (answer["next"].as_u64().unwrap(), frames)
    }

    /// Polls until a frame of type `kind` came; returns it (earlier ones are dropped).
    async fn next_of(&mut self, kind: &str) -> Value {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let (next, frames) = tokio::time::timeout_at(deadline, self.poll_from(self.after))
                .await
                .unwrap_or_else(|_| panic!("no {kind} before the deadline"));
            self.after = next;
            if let Some(frame) = frames.into_iter().find(|f| f["type"] == kind) {
                return frame;
            }
        }
    }
}

async fn server(idle: Duration) -> TestServer {
    start_with(move |config| {
        config
            .frames_per_second(10_000)
            .frame_burst(10_000)
            .idle_timeout(idle)
    })
    .await
}

#[tokio::test]
async fn a_polling_client_and_a_websocket_client_share_one_room_in_one_order() {
    let server = server(Duration::from_secs(60)).await;
    let mut polling = Polling::open(server.http).await;
    assert_eq!(
        polling
            .post(&[json!({"type": "join", "room": "r", "name": "pol"})])
            .await,
        204
    );
    assert_eq!(polling.next_of("joined").await["you"]["name"], "pol");
    let mut ws = Client::ws(&server).await;
    ws.join("r", "wes").await;
    for i in 0..5 {
        let send =
            json!({"type": "send", "room": "r", "text": format!("p{i}"), "id": format!("p{i}")});
        assert_eq!(polling.post(&[send]).await, 204);
        ws.send(
            json!({"type": "send", "room": "r", "text": format!("w{i}"), "id": format!("w{i}")}),
        )
        .await;
    }
    let over_ws = ws.messages("r", 10).await;
    let mut over_poll = Vec::new();
    while over_poll.len() < 10 {
        let (next, frames) = polling.poll_from(polling.after).await;
        polling.after = next;
        over_poll.extend(
            frames
                .iter()
                .filter(|f| f["type"] == "message")
                .map(common::seq_text),
        );
    }
    assert_eq!(over_poll, over_ws);
    server.stop().await;
}

#[tokio::test]
async fn a_poll_whose_answer_was_lost_is_answered_again() {
    let server = server(Duration::from_secs(60)).await;
    let mut polling = Polling::open(server.http).await;
    polling
        .post(&[json!({"type": "join", "room": "r", "name": "pol"})])
        .await;
    polling.next_of("joined").await;
    let mut ws = Client::ws(&server).await;
    ws.join("r", "wes").await;
    for i in 1..=3 {
        ws.say("r", &format!("m{i}"), &format!("m{i}")).await;
    }
    // The answer to this poll is "lost": the client asks again from the same place.
    let (mut first, mut next) = (Vec::new(), polling.after);
    while first.len() < 3 {
        let (n, frames) = polling.poll_from(polling.after).await;
        next = n;
        first = frames
            .into_iter()
            .filter(|f| f["type"] == "message")
            .collect();
    }
    let (again_next, again) = polling.poll_from(polling.after).await;
    let again: Vec<Value> = again
        .into_iter()
        .filter(|f| f["type"] == "message")
        .collect();
    assert_eq!(
        (again_next, &again),
        (next, &first),
        "the same frames, again"
    );
    // Acknowledged: the next poll has only what came after.
    ws.say("r", "m4", "m4").await;
    let (_, later) = polling.poll_from(next).await;
    let texts: Vec<&str> = later.iter().filter_map(|f| f["text"].as_str()).collect();
    assert_eq!(texts, ["m4"]);
    server.stop().await;
}

#[tokio::test]
async fn a_session_nobody_polls_leaves_its_rooms() {
    // Expiry is half the idle timeout: 1 s here.
    let server = server(Duration::from_secs(2)).await;
    let polling = Polling::open(server.http).await;
    polling
        .post(&[json!({"type": "join", "room": "r", "name": "gone"})])
        .await;
    let mut ws = Client::ws(&server).await;
    let (joined, _) = ws.join("r", "wes").await;
    assert_eq!(joined["count"], 2, "{joined}");
    let left = ws.next_of("presence").await;
    assert_eq!(
        (&left["event"], &left["member"]["name"]),
        (&json!("leave"), &json!("gone"))
    );
    // Its polls are over.
    let (status, _) = http_request(server.http, "GET", &polling.url, &[], None).await;
    assert_eq!(status, 404);
    server.stop().await;
}

#[tokio::test]
async fn bad_polls_and_posts_get_their_answers() {
    let server = server(Duration::from_secs(60)).await;
    let mut polling = Polling::open(server.http).await;
    let (status, _) = http_request(server.http, "GET", "/wtchat/poll/nosuch", &[], None).await;
    assert_eq!(status, 404);
    let elsewhere = [("Origin", "https://evil.example")];
    let (status, _) = http_request(server.http, "GET", &polling.url, &elsewhere, None).await;
    assert_eq!(status, 403);
    assert_eq!(
        common::post_text(server.http, "/wtchat/poll/nosuch", "{}", &[]).await,
        404
    );
    // Bad frames get error frames, and the session goes on.
    assert_eq!(
        common::post_text(server.http, &polling.url, "not json", &[]).await,
        204
    );
    assert_eq!(polling.next_of("error").await["code"], "invalid_json");
    polling.post(&[json!({"type": "ping"})]).await;
    polling.next_of("pong").await;
    server.stop().await;
}
