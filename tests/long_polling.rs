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
    /// The session's secret, borne by its posts and polls.
    secret: String,
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
            secret: session["secret"].as_str().unwrap().to_string(),
            after: 0,
        }
    }

    /// Posts `frames`; the status.
    async fn post(&self, frames: &[Value]) -> u16 {
        let body: Vec<String> = frames.iter().map(Value::to_string).collect();
        let secret = [("wtchat-secret", self.secret.as_str())];
        common::post_text(self.http, &self.url, &body.join("\n"), &secret).await
    }

    /// One poll from `after`, in the query as a script may ask (the browser client sends
    /// a header): (next, frames).
    async fn poll_from(&self, after: u64) -> (u64, Vec<Value>) {
        let path = format!("{}?after={after}", self.url);
        let secret = [("wtchat-secret", self.secret.as_str())];
        let (status, body) = http_request(self.http, "GET", &path, &secret, None).await;
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
    // The URL alone (as a proxy's log has it), or with a wrong secret, is no key: 403,
    // for polls and posts, and what such a post carried is not taken.
    let secret = polling.secret.clone();
    let no_secret = "no session secret, or not this session's (header Wtchat-Secret)";
    for bearing in [vec![], vec![("wtchat-secret", "guessed")]] {
        let (status, body) = http_request(server.http, "GET", &polling.url, &bearing, None).await;
        assert_eq!((status, body.as_str()), (403, no_secret));
        let join = json!({"type": "join", "room": "r", "name": "mallory"}).to_string();
        assert_eq!(
            common::post_text(server.http, &polling.url, &join, &bearing).await,
            403
        );
    }
    // The secret from another origin than the session's: 403 too.
    let elsewhere = [
        ("Origin", "https://evil.example"),
        ("wtchat-secret", secret.as_str()),
    ];
    let (status, body) = http_request(server.http, "GET", &polling.url, &elsewhere, None).await;
    assert_eq!((status, body.as_str()), (403, "not the session's origin"));
    // A frame number that is not one.
    let bad_after = [("wtchat-secret", secret.as_str()), ("wtchat-after", "x")];
    let (status, body) = http_request(server.http, "GET", &polling.url, &bad_after, None).await;
    assert_eq!(
        (status, body.as_str()),
        (400, "Wtchat-After is not a frame number")
    );
    assert_eq!(
        common::post_text(server.http, "/wtchat/poll/nosuch", "{}", &[]).await,
        404
    );
    // Bad frames get error frames, and the session goes on.
    let bearing = [("wtchat-secret", secret.as_str())];
    assert_eq!(
        common::post_text(server.http, &polling.url, "not json", &bearing).await,
        204
    );
    // The first frame the session answers: the refused join was never read.
    let (next, frames) = polling.poll_from(polling.after).await;
    polling.after = next;
    assert_eq!(frames[0]["code"], "invalid_json", "{frames:?}");
    polling.post(&[json!({"type": "ping"})]).await;
    polling.next_of("pong").await;
    server.stop().await;
}

/// `curl -si` with `args`, started at once: the answer's status line and headers,
/// lower-cased.
fn curl_head(args: &[&str]) -> impl Future<Output = String> + use<> {
    let curl = tokio::process::Command::new("curl")
        .args(["-si", "--max-time", "10"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("curl runs");
    async move {
        let out = curl.wait_with_output().await.expect("curl runs");
        let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
        text.split("\r\n\r\n")
            .next()
            .unwrap_or_default()
            .to_string()
    }
}

/// A page on another origin than the chat's (a PHP site beside it) polls and posts with the
/// secret's header: its browser asks first (a CORS preflight), once per session — the URL
/// stays the same, `after` being a header — and the answer allows exactly the two headers,
/// for an allowed origin only.
#[tokio::test]
async fn another_origins_page_is_allowed_the_secrets_header_by_a_cached_preflight() {
    let server = start_with(|c| c.allow_origin("https://site.example")).await;
    let mut polling = Polling::open(server.http).await;
    let url = format!("http://{}{}", server.http, polling.url);
    let preflight = |origin: &'static str| {
        let url = url.clone();
        async move {
            curl_head(&[
                "-X",
                "OPTIONS",
                "-H",
                &format!("Origin: {origin}"),
                "-H",
                "Access-Control-Request-Method: GET",
                "-H",
                "Access-Control-Request-Headers: wtchat-after,wtchat-secret",
                &url,
            ])
            .await
        }
    };
    let allowed = preflight("https://site.example").await;
    assert!(allowed.starts_with("http/1.1 204"), "{allowed}");
    for line in [
        "access-control-allow-origin: https://site.example",
        "access-control-allow-methods: get, post",
        "access-control-allow-headers: wtchat-secret, wtchat-after",
        "access-control-max-age: 86400",
    ] {
        assert!(allowed.contains(line), "{line} in {allowed}");
    }
    let refused = preflight("https://evil.example").await;
    assert!(refused.starts_with("http/1.1 403"), "{refused}");
    assert!(!refused.contains("access-control-allow"), "{refused}");
    // The poll itself, from the allowed page, is readable there.
    let poll = curl_head(&[
        "-H",
        "Origin: https://site.example",
        "-H",
        &format!("Wtchat-Secret: {}", polling.secret),
        "-H",
        "Wtchat-After: 0",
        &url,
    ]);
    polling
        .post(&[json!({"type": "join", "room": "r", "name": "pol"})])
        .await;
    let poll = poll.await;
    assert!(poll.starts_with("http/1.1 200"), "{poll}");
    assert!(
        poll.contains("access-control-allow-origin: https://site.example"),
        "{poll}"
    );
    polling.next_of("joined").await;
    server.stop().await;
}
