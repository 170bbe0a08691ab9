//! Webhooks, as a host written in another language uses them: a small HTTP backend runs in
//! the test (the "PHP or Django endpoint"), and real clients chat through the server. The
//! message webhook accepts, rejects and rewrites; a backend that never answers meets the
//! configured fail-closed or fail-open choice at the timeout; the events webhook receives
//! what happened in order, again after a failure; the auth webhook logs users in from their
//! cookies. Every request's signature is checked by the book's own Python function, with
//! the secret (it verifies) and with another (it does not). The cookie login is also driven
//! the way its users meet it: Chromium on the host's own site, the client on every transport.
//! And the message webhook is served by Python's own `http.server`, which closes its
//! connections after each answer, or when idle: calls that meet the close are not lost.

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use browser::{Browser, Drive, connect_and_send};
use bytes::Bytes;
use common::{Client, DEADLINE, http_request, start_with};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use wtchat::Config;

/// The secret shared by the server and the backend.
const SECRET: &str = "a-webhook-secret-of-at-least-32-bytes";

/// The webhook timeout of the tests that wait for it.
const TIMEOUT: Duration = Duration::from_millis(300);

/// One request the backend received, and the status it answered.
#[derive(Debug, Clone)]
struct Call {
    path: String,
    /// The `Wtchat-Webhook` header.
    webhook: String,
    /// The `Wtchat-Signature` header.
    signature: String,
    body: Bytes,
    status: u16,
    /// When the backend received it (before it answered).
    at: Instant,
}

impl Call {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("webhook bodies are JSON")
    }
}

#[derive(Clone)]
struct Shared {
    calls: mpsc::UnboundedSender<Call>,
    /// Posts to /events so far: the first is answered 500.
    events_posts: Arc<AtomicUsize>,
    /// Whether /outage is down (answers 503).
    down: Arc<AtomicBool>,
}

impl Shared {
    fn record(&self, uri: &Uri, headers: &HeaderMap, body: Bytes, status: StatusCode) {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let _ = self.calls.send(Call {
            path: uri.path().to_string(),
            webhook: header("wtchat-webhook"),
            signature: header("wtchat-signature"),
            body,
            status: status.as_u16(),
            at: Instant::now(),
        });
    }
}

/// The host's backend: `/message` (a moderator), `/hang` (never answers), `/events`
/// (fails once, then takes everything), `/outage` (events again: answers 503 while
/// [`Backend::down`], then takes everything) and `/auth` (a cookie login); and its site for
/// a browser: `/login` (sets the session cookie) and `/` (a page).
struct Backend {
    addr: SocketAddr,
    /// Whether `/outage` is down.
    down: Arc<AtomicBool>,
    calls: mpsc::UnboundedReceiver<Call>,
    /// Calls received while waiting for another path's.
    unclaimed: Vec<Call>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    async fn start() -> Backend {
        let (tx, calls) = mpsc::unbounded_channel();
        let shared = Shared {
            calls: tx,
            events_posts: Arc::default(),
            down: Arc::default(),
        };
        let down = shared.down.clone();
        let app = Router::new()
            .route("/message", post(moderate))
            .route("/hang", post(hang))
            .route("/events", post(events))
            .route("/outage", post(outage))
            .route("/auth", post(login))
            .route("/login", get(log_in))
            .route(
                "/",
                get(|| async {
                    Html("<!doctype html><title>the host's site</title><link rel=icon href=data:,>")
                }),
            )
            .with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Backend {
            addr,
            down,
            calls,
            unclaimed: Vec::new(),
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Takes `/outage` down (503) or brings it back up.
    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// The next request the backend received at `path` (the events webhook posts while
    /// the others are called).
    async fn next(&mut self, path: &str) -> Call {
        self.next_within(path, DEADLINE).await
    }

    /// [`Backend::next`], waiting for it up to `within`.
    async fn next_within(&mut self, path: &str, within: Duration) -> Call {
        if let Some(at) = self.unclaimed.iter().position(|c| c.path == path) {
            return self.unclaimed.remove(at);
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let call = tokio::time::timeout_at(deadline, self.calls.recv())
                .await
                .unwrap_or_else(|_| panic!("no call to {path} within {within:?}"))
                .unwrap();
            if call.path == path {
                return call;
            }
            self.unclaimed.push(call);
        }
    }

    /// The next `n` requests at `path`.
    async fn take(&mut self, path: &str, n: usize) -> Vec<Call> {
        let mut calls = Vec::new();
        for _ in 0..n {
            calls.push(self.next(path).await);
        }
        calls
    }

    /// Every request at `path` received so far, without waiting.
    fn received(&mut self, path: &str) -> Vec<Call> {
        while let Ok(call) = self.calls.try_recv() {
            self.unclaimed.push(call);
        }
        let (calls, others) = std::mem::take(&mut self.unclaimed)
            .into_iter()
            .partition(|c| c.path == path);
        self.unclaimed = others;
        calls
    }

    /// The events the events webhook posted, in order, until there are `n` of them that
    /// the backend took: (every call made, the events taken).
    async fn events(&mut self, n: usize) -> (Vec<Call>, Vec<Value>) {
        let (mut calls, mut taken) = (Vec::new(), Vec::new());
        while taken.len() < n {
            let call = self.next("/events").await;
            if call.status == 200 {
                taken.extend(call.json()["events"].as_array().unwrap().iter().cloned());
            }
            calls.push(call);
        }
        (calls, taken)
    }
}

/// Rejects spam, rewrites "darn", answers "quiet" texts with an empty 204, accepts the rest.
/// And rewrites beyond what a client may send: "shout" into the text in capitals followed by
/// 64 "!", "erase" into an empty text; "pad" into exactly 32 "é" (32 characters, 64 bytes).
async fn moderate(
    State(shared): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let message: Value = serde_json::from_slice(&body).unwrap();
    let text = message["text"].as_str().unwrap();
    let (status, answer) = if text.contains("spam") {
        (
            StatusCode::OK,
            json!({"action": "reject", "reason": "no spam here"}),
        )
    } else if text.contains("shout") {
        let text = text.to_uppercase() + &"!".repeat(64);
        (StatusCode::OK, json!({"action": "rewrite", "text": text}))
    } else if text.contains("erase") {
        (StatusCode::OK, json!({"action": "rewrite", "text": ""}))
    } else if text.contains("pad") {
        let text = "é".repeat(32);
        (StatusCode::OK, json!({"action": "rewrite", "text": text}))
    } else if text.contains("darn") {
        let text = text.replace("darn", "d*rn");
        (StatusCode::OK, json!({"action": "rewrite", "text": text}))
    } else if text.starts_with("quiet") {
        (StatusCode::NO_CONTENT, Value::Null)
    } else {
        (StatusCode::OK, json!({"action": "accept"}))
    };
    shared.record(&uri, &headers, body, status);
    match status {
        StatusCode::NO_CONTENT => status.into_response(),
        _ => axum::Json(answer).into_response(),
    }
}

async fn hang(State(shared): State<Shared>, uri: Uri, headers: HeaderMap, body: Bytes) {
    shared.record(&uri, &headers, body, StatusCode::REQUEST_TIMEOUT);
    std::future::pending::<()>().await;
}

async fn events(
    State(shared): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let status = match shared.events_posts.fetch_add(1, Ordering::Relaxed) {
        0 => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::OK,
    };
    shared.record(&uri, &headers, body, status);
    status
}

/// The events webhook of a backend that is down (503) while [`Backend::down`] is set, and
/// takes everything otherwise.
async fn outage(
    State(shared): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let status = match shared.down.load(Ordering::SeqCst) {
        true => StatusCode::SERVICE_UNAVAILABLE,
        false => StatusCode::OK,
    };
    shared.record(&uri, &headers, body, status);
    status
}

/// Cookie `session=good` is Ann (user u42, the lobby only); `session=django` is Bo (user 7,
/// the book's Django answer: no `rooms`); `session=star` is Cy (user 8, `"rooms": ["*"]`);
/// `session=banned` is refused with a 403; anything else with a 401.
async fn login(
    State(shared): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap();
    let (status, answer) = if request["cookies"]["session"] == "good" {
        let ann = json!({"user": "u42", "name": "Ann", "rooms": ["lobby"]});
        (StatusCode::OK, ann)
    } else if request["cookies"]["session"] == "django" {
        (StatusCode::OK, json!({"user": "7", "name": "Bo"}))
    } else if request["cookies"]["session"] == "star" {
        let cy = json!({"user": "8", "name": "Cy", "rooms": ["*"]});
        (StatusCode::OK, cy)
    } else if request["cookies"]["session"] == "banned" {
        let why = json!({"reason": "banned for spamming"});
        (StatusCode::FORBIDDEN, why)
    } else {
        (StatusCode::UNAUTHORIZED, json!({"reason": "log in first"}))
    };
    shared.record(&uri, &headers, body, status);
    (status, axum::Json(answer)).into_response()
}

/// The site's own login: the session cookie a browser then sends along, and back to `/`.
async fn log_in() -> Response {
    let cookie = "session=good; Path=/; HttpOnly; SameSite=Lax";
    (
        [(axum::http::header::SET_COOKIE, cookie)],
        Redirect::to("/"),
    )
        .into_response()
}

/// Whether the book's Python `wtchat_verified` accepts each call's signature with
/// `secret`: the signature checked by the code a Django host copies, not by wtchat's.
async fn python_verifies(secret: &str, calls: &[Call]) -> Vec<bool> {
    let snippet = common::book_block("webhooks", "python", "def wtchat_verified(");
    let script = format!(
        "{snippet}\nimport json, sys\nsecret = sys.argv[1].encode()\n\
         calls = json.load(sys.stdin)\n\
         print(json.dumps([wtchat_verified(secret, s, b.encode()) for s, b in calls]))\n"
    );
    let input: Vec<(&str, &str)> = calls
        .iter()
        .map(|c| (c.signature.as_str(), std::str::from_utf8(&c.body).unwrap()))
        .collect();
    let mut python = tokio::process::Command::new("python3")
        .args(["-c", &script, secret])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut stdin = python.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, json!(input).to_string().as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let out = python.wait_with_output().await.unwrap();
    assert!(out.status.success(), "the book's Python snippet runs");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Checks that every call verifies with the secret, and none with another.
async fn assert_signed(calls: &[Call]) {
    assert!(
        python_verifies(SECRET, calls).await.iter().all(|&ok| ok),
        "every signature verifies with the secret"
    );
    let wrong = "another-secret-of-at-least-32-bytes!!";
    assert!(
        python_verifies(wrong, calls).await.iter().all(|&ok| !ok),
        "no signature verifies with another secret"
    );
}

#[tokio::test]
async fn the_message_webhook_accepts_rejects_and_rewrites_before_a_message_is_stored() {
    let mut backend = Backend::start().await;
    let url = backend.url("/message");
    let server = start_with(|c| c.message_webhook(url).webhook_secret(SECRET)).await;
    let mut ann = Client::ws(&server).await;
    let mut bob = Client::wt(&server).await;
    let (joined, _) = ann.join("lobby", "ann").await;
    bob.join("lobby", "bob").await;

    // Accepted with {"action":"accept"}, and with an empty 204.
    assert_eq!(ann.say("lobby", "hello", "m1").await, 1);
    assert_eq!(ann.say("lobby", "quiet please", "m2").await, 2);
    // Rejected: the sender is told why.
    ann.send(json!({"type": "send", "room": "lobby", "text": "buy spam", "id": "m3"}))
        .await;
    let error = ann.next_of("error").await;
    assert_eq!(
        (&error["code"], &error["message"], &error["id"]),
        (&json!("rejected"), &json!("no spam here"), &json!("m3"))
    );
    // Rewritten: the sender's own copy and ack carry the new text, under the next number
    // (the rejected message used none).
    ann.send(json!({"type": "send", "room": "lobby", "text": "darn it", "id": "m4"}))
        .await;
    let own = ann
        .next_matching("own copy", |f| f["type"] == "message" && f["id"] == "m4")
        .await;
    assert_eq!((&own["seq"], &own["text"]), (&json!(3), &json!("d*rn it")));
    let ack = ann.next_of("ack").await;
    assert_eq!((&ack["id"], &ack["seq"]), (&json!("m4"), &json!(3)));

    // The room saw the accepted and the rewritten messages, nothing of the spam.
    let expected = [
        (1u64, "ann".to_string(), "hello".to_string()),
        (2, "ann".into(), "quiet please".into()),
        (3, "ann".into(), "d*rn it".into()),
    ];
    assert_eq!(bob.messages("lobby", 3).await, expected);
    // So does the history a newcomer gets.
    let mut cid = Client::ws(&server).await;
    let (_, history) = cid.join("lobby", "cid").await;
    let history: Vec<_> = history.iter().map(common::seq_text).collect();
    assert_eq!(history, expected);
    // The host's own messages do not go through the webhook.
    assert_eq!(
        server.chat.publish("lobby", "Shop", "spam sale").await,
        Ok(4)
    );
    // An edit is asked about too (kind "edit", the message's number): rewritten, the room
    // gets the new text; rejected, nothing changes.
    ann.send(json!({"type": "edit", "room": "lobby", "seq": 1, "text": "darn, hello", "id": "e1"}))
        .await;
    assert_eq!(ann.next_of("ack").await["seq"], 5);
    let update = bob.next_of("update").await;
    assert_eq!(
        (&update["seq"], &update["text"]),
        (&json!(1), &json!("d*rn, hello"))
    );
    ann.send(json!({"type": "edit", "room": "lobby", "seq": 1, "text": "spam", "id": "e2"}))
        .await;
    let error = ann.next_of("error").await;
    assert_eq!(
        (&error["code"], &error["id"]),
        (&json!("rejected"), &json!("e2"))
    );

    let calls = backend.take("/message", 6).await;
    assert_eq!(
        calls[0].json(),
        json!({"room": "lobby", "from": "ann", "user": null, "sender": joined["you"]["sender"],
               "text": "hello", "id": "m1", "kind": "send"})
    );
    assert_eq!(
        calls[4].json(),
        json!({"room": "lobby", "from": "ann", "user": null, "sender": joined["you"]["sender"],
               "text": "darn, hello", "id": "e1", "kind": "edit", "seq": 1})
    );
    let texts: Vec<Value> = calls.iter().map(|c| c.json()["text"].clone()).collect();
    assert_eq!(
        texts,
        [
            "hello",
            "quiet please",
            "buy spam",
            "darn it",
            "darn, hello",
            "spam"
        ]
    );
    assert_eq!(
        server
            .chat
            .history("lobby", None, 10)
            .await
            .unwrap()
            .messages[0]
            .text,
        "d*rn, hello"
    );
    assert!(
        calls
            .iter()
            .all(|c| c.path == "/message" && c.webhook == "message")
    );
    assert_signed(&calls).await;
    server.stop().await;
    assert!(
        backend.calls.try_recv().is_err() && backend.unclaimed.is_empty(),
        "six calls, no more"
    );
}

#[tokio::test]
async fn a_message_webhook_that_never_answers_fails_closed_or_open_at_the_timeout() {
    let mut backend = Backend::start().await;
    let hang = backend.url("/hang");
    let webhook = |open: bool| {
        let hang = hang.clone();
        move |c: wtchat::ConfigBuilder| {
            c.message_webhook(hang)
                .webhook_secret(SECRET)
                .webhook_timeout(TIMEOUT)
                .webhook_fail_open(open)
                .metrics(true)
        }
    };

    // Fail closed (the default): the sender is told, the room sees nothing.
    let closed = start_with(webhook(false)).await;
    let mut ann = Client::ws(&closed).await;
    let mut bob = Client::wt(&closed).await;
    ann.join("lobby", "ann").await;
    bob.join("lobby", "bob").await;
    let sent = Instant::now();
    ann.send(json!({"type": "send", "room": "lobby", "text": "anyone?", "id": "c1"}))
        .await;
    // Only the sender waits: another connection is answered meanwhile.
    bob.send(json!({"type": "ping"})).await;
    bob.next_of("pong").await;
    let pong_after = sent.elapsed();
    let error = ann.next_of("error").await;
    let rejected_after = sent.elapsed();
    assert_eq!(
        (&error["code"], &error["id"]),
        (&json!("rejected"), &json!("c1"))
    );
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("did not answer"),
        "{error}"
    );
    assert!(
        rejected_after >= TIMEOUT && rejected_after < TIMEOUT + Duration::from_secs(2),
        "rejected after {rejected_after:?}, with a timeout of {TIMEOUT:?}"
    );
    assert!(
        pong_after < rejected_after,
        "{pong_after:?} {rejected_after:?}"
    );
    // The operator sees it too.
    let (_, metrics) = closed.get("/wtchat/metrics").await;
    assert!(
        metrics.contains(r#"wtchat_webhook_calls_total{webhook="message",outcome="timeout"} 1"#),
        "{metrics}"
    );
    // No number was used: the next message is 1.
    assert_eq!(closed.chat.publish("lobby", "Shop", "hi").await, Ok(1));
    let first = bob.next_of("message").await;
    assert_eq!((&first["seq"], &first["text"]), (&json!(1), &json!("hi")));

    // Fail open: the message goes through as it is, once the timeout passed.
    let open = start_with(webhook(true)).await;
    let mut ann = Client::wt(&open).await;
    let mut bob = Client::ws(&open).await;
    ann.join("lobby", "ann").await;
    bob.join("lobby", "bob").await;
    let sent = Instant::now();
    assert_eq!(ann.say("lobby", "anyone?", "o1").await, 1);
    let accepted_after = sent.elapsed();
    assert!(
        accepted_after >= TIMEOUT && accepted_after < TIMEOUT + Duration::from_secs(2),
        "accepted after {accepted_after:?}, with a timeout of {TIMEOUT:?}"
    );
    let seen = bob.next_of("message").await;
    assert_eq!(common::seq_text(&seen), (1, "ann".into(), "anyone?".into()));

    let calls = backend.take("/hang", 2).await;
    assert_signed(&calls).await;
    tokio::join!(closed.stop(), open.stop());
}

#[tokio::test]
async fn the_events_webhook_gets_messages_joins_and_leaves_in_order_and_retries() {
    let mut backend = Backend::start().await;
    let url = backend.url("/events");
    let server = start_with(|c| c.events_webhook(url).webhook_secret(SECRET)).await;
    let mut ann = Client::ws(&server).await;
    let mut bob = Client::wt(&server).await;
    let (ann_joined, _) = ann.join("lobby", "ann").await;
    let (bob_joined, _) = bob.join("lobby", "bob").await;
    ann.say("lobby", "one", "a1").await;
    bob.say("lobby", "two", "b1").await;
    server.chat.publish("lobby", "Shop", "three").await.unwrap();
    ann.send(json!({"type": "edit", "room": "lobby", "seq": 1, "text": "one!", "id": "e1"}))
        .await;
    ann.next_of("ack").await;
    assert!(server.chat.delete_message("lobby", 3).await.unwrap());
    bob.send(json!({"type": "react", "room": "lobby", "seq": 1, "reaction": "👍", "id": "r1"}))
        .await;
    bob.next_of("ack").await;
    bob.send(json!({"type": "leave", "room": "lobby"})).await;
    bob.next_of("left").await;
    drop(ann);

    let started = Instant::now();
    let (calls, events) = backend.events(10).await;
    let (ann_id, bob_id) = (&ann_joined["you"]["id"], &bob_joined["you"]["id"]);
    let member = |kind: &str, id: &Value, name: &str| {
        json!({"type": kind, "room": "lobby", "member": id, "name": name,
               "user": null})
    };
    let message = |seq: u64, from: &str, sender: &Value, text: &str| {
        json!({"type": "message", "room": "lobby", "seq": seq, "from": from, "user": null,
               "sender": sender, "text": text})
    };
    let without_time: Vec<Value> = events
        .iter()
        .map(|e| {
            let mut e = e.clone();
            if e["type"] != "update" {
                assert!(e["time"].as_u64().unwrap() > 1_700_000_000_000, "{e}");
                e.as_object_mut().unwrap().remove("time");
            }
            e
        })
        .collect();
    let edited = &events[5]["edited"];
    assert!(edited.as_u64().unwrap() > 1_700_000_000_000, "{edited}");
    assert_eq!(
        without_time,
        [
            member("joined", ann_id, "ann"),
            member("joined", bob_id, "bob"),
            message(1, "ann", &ann_joined["you"]["sender"], "one"),
            message(2, "bob", &bob_joined["you"]["sender"], "two"),
            message(3, "Shop", &Value::Null, "three"),
            json!({"type": "update", "room": "lobby", "seq": 1, "at": 4, "text": "one!",
                   "edited": edited, "user": null}),
            json!({"type": "update", "room": "lobby", "seq": 3, "at": 5, "deleted": true,
                   "user": null}),
            json!({"type": "update", "room": "lobby", "seq": 1, "at": 6,
                   "reactions": [{"reaction": "👍", "count": 1}], "user": null}),
            member("left", bob_id, "bob"),
            member("left", ann_id, "ann"),
        ]
    );
    // The first post failed (500); its events came again, first, in a later one.
    assert_eq!(calls[0].status, 500);
    let failed = calls[0].json()["events"].as_array().unwrap().clone();
    assert!(!failed.is_empty());
    assert_eq!(events[..failed.len()], failed[..]);
    assert!(calls.iter().all(|c| c.webhook == "events"));
    assert_signed(&calls).await;
    println!(
        "{} events in {} posts (the first failed) in {:?}",
        events.len(),
        calls.len(),
        started.elapsed()
    );
    server.stop().await;
}

#[tokio::test]
async fn the_auth_webhook_logs_users_in_from_their_cookies_on_every_transport() {
    let mut backend = Backend::start().await;
    let (auth, events) = (backend.url("/auth"), backend.url("/events"));
    let server = start_with(|c| {
        c.auth_webhook(auth)
            .events_webhook(events)
            .webhook_secret(SECRET)
    })
    .await;

    // A WebSocket upgrade carries the page's cookies: the backend names the user.
    let headers = [
        ("cookie", "theme=dark; session=good"),
        ("authorization", "Bearer abc"),
    ];
    let mut ann = Client::ws_request(&server, "", &headers).await.unwrap();
    let (joined, _) = ann.join("lobby", "mallory").await;
    assert_eq!(joined["you"]["name"], "Ann");
    ann.send(json!({"type": "join", "room": "staff", "name": "x"}))
        .await;
    assert_eq!(ann.next_of("error").await["code"], "room_forbidden");
    let login = backend.next("/auth").await;
    assert_eq!(
        (login.path.as_str(), login.webhook.as_str(), login.json()),
        (
            "/auth",
            "auth",
            json!({"transport": "websocket", "origin": null,
                   "cookies": {"theme": "dark", "session": "good"},
                   "authorization": "Bearer abc", "token": null})
        )
    );

    // WebTransport carries no cookies: the page's ticket request does, and the ticket
    // carries the login.
    let origin = format!("http://127.0.0.1:{}", server.http.port());
    let page = [("origin", origin.as_str()), ("cookie", "session=good")];
    let (status, answer) = http_request(server.http, "POST", "/wtchat/ticket", &page, None).await;
    assert_eq!(status, 200, "{answer}");
    let ticket_call = backend.next("/auth").await;
    assert_eq!(
        (
            &ticket_call.json()["transport"],
            &ticket_call.json()["origin"]
        ),
        (&json!("ticket"), &json!(origin))
    );
    let answer: Value = serde_json::from_str(&answer).unwrap();
    let ticket = answer["tickets"]["webtransport"].as_str().unwrap();
    let mut ann_wt = Client::wt_request(&server, &format!("/wtchat?ticket={ticket}"), &[])
        .await
        .unwrap();
    let (joined, _) = ann_wt.join("lobby", "whoever").await;
    assert_eq!(joined["you"]["name"], "Ann");

    // Refused: the backend's reason reaches the client.
    let mut eve = Client::ws_request(&server, "?token=t0k", &[("cookie", "session=bad")])
        .await
        .unwrap();
    let bye = eve.next_of("bye").await;
    assert_eq!(
        (&bye["code"], &bye["message"]),
        (&json!(4401), &json!("log in first"))
    );
    assert_eq!(backend.next("/auth").await.json()["token"], "t0k");
    let bad_page = [("origin", origin.as_str()), ("cookie", "session=bad")];
    let (status, answer) =
        http_request(server.http, "POST", "/wtchat/ticket", &bad_page, None).await;
    assert_eq!(status, 401);
    assert!(answer.contains("log in first"), "{answer}");
    backend.next("/auth").await;

    // The backend's user id travels with the events.
    ann.say("lobby", "hi", "a1").await;
    let (mut calls, events) = backend.events(3).await;
    let users: Vec<(&Value, &Value)> = events.iter().map(|e| (&e["type"], &e["user"])).collect();
    assert_eq!(
        users,
        [
            (&json!("joined"), &json!("u42")),
            (&json!("joined"), &json!("u42")),
            (&json!("message"), &json!("u42")),
        ]
    );
    calls.extend([login, ticket_call]);
    assert_signed(&calls).await;

    // A backend that does not answer lets nobody in.
    let hang = backend.url("/hang");
    let unanswered = start_with(|c| {
        c.auth_webhook(hang)
            .webhook_secret(SECRET)
            .webhook_timeout(TIMEOUT)
    })
    .await;
    let mut nobody = Client::ws_request(&unanswered, "", &[("cookie", "session=good")])
        .await
        .unwrap();
    let bye = nobody.next_of("bye").await;
    assert_eq!(bye["code"], 4401);
    assert!(
        bye["message"].as_str().unwrap().contains("did not answer"),
        "{bye}"
    );
    tokio::join!(unanswered.stop(), server.stop());
}

/// The setting the book describes for a PHP or Django site: `wtchat` beside the site, on
/// another port of the same host, and the site's session cookie as the chat login. Chromium
/// logs in on the site, and the client on its page, loaded from the chat server, connects
/// over each transport: the browser's own ticket request carries the cookie (same site,
/// credentials included), and the ticket carries the login, WebTransport included.
#[tokio::test]
async fn a_browser_logged_in_on_the_site_chats_under_its_login_on_every_transport() {
    const TEST: &str = "a_browser_logged_in_on_the_site_chats_under_its_login_on_every_transport";
    let Some(browser) = Browser::launch_or_skip(TEST).await else {
        return;
    };
    let mut backend = Backend::start().await;
    let site = format!("http://localhost:{}", backend.addr.port());
    let server = start_with(|c| {
        c.auth_webhook(backend.url("/auth"))
            .webhook_secret(SECRET)
            .allow_origin(site.clone())
    })
    .await;
    let chat = format!("http://localhost:{}", server.http.port());
    let connect = |transport: &str| connect_and_send(&chat, transport);

    let page = browser.page("logged-in", 1024, 768, None).await;
    page.goto(&format!("{site}/login")).await;
    let mut calls = Vec::new();
    for (n, transport) in ["webtransport", "websocket", "sse", "longpoll"]
        .into_iter()
        .enumerate()
    {
        let got = page.eval(&connect(transport)).await;
        assert_eq!(
            got,
            json!([transport, "Ann", n + 1]),
            "over {transport}: {:#?}",
            page.console()
        );
        // One login per connection: the ticket request, with the site's cookie and origin.
        let call = backend.next("/auth").await;
        let asked = call.json();
        assert_eq!(
            (&asked["transport"], &asked["origin"], &asked["cookies"]),
            (&json!("ticket"), &json!(site), &json!({"session": "good"})),
            "over {transport}"
        );
        calls.push(call);
    }
    let said: Vec<(String, String)> = server
        .chat
        .history("lobby", None, 10)
        .await
        .unwrap()
        .messages
        .iter()
        .map(|m| (m.from.clone(), m.text.clone()))
        .collect();
    let over = |t: &str| ("Ann".to_string(), format!("over {t}"));
    assert_eq!(
        said,
        [
            over("webtransport"),
            over("websocket"),
            over("sse"),
            over("longpoll")
        ]
    );
    assert_signed(&calls).await;

    // A browser that has not logged in on the site is told why, on any transport.
    let stranger = browser.page("stranger", 1024, 768, None).await;
    stranger.goto(&format!("{site}/")).await;
    let refused = stranger.eval(&connect("websocket")).await;
    assert_eq!(refused, json!(["unauthorized", "log in first"]));
    assert_eq!(backend.next("/auth").await.json()["cookies"], json!({}));
    for page in [&page, &stranger] {
        let errors: Vec<_> = page
            .console_errors()
            .into_iter()
            .filter(|e| !e.text.contains("401"))
            .collect();
        assert!(errors.is_empty(), "console errors: {errors:#?}");
    }
    server.stop().await;
}

#[test]
fn webhook_settings_that_cannot_work_are_refused() {
    let refused = |builder: wtchat::ConfigBuilder| builder.build().unwrap_err();
    let url = "http://127.0.0.1:8000/hook";
    let no_secret = refused(Config::builder().message_webhook(url));
    assert_eq!(no_secret.setting(), "webhook_secret");
    let short = refused(
        Config::builder()
            .events_webhook(url)
            .webhook_secret("short"),
    );
    assert_eq!(short.setting(), "webhook_secret");
    assert!(short.reason().contains("32 bytes"), "{short}");
    let with_secret = || Config::builder().webhook_secret(SECRET);
    let https = refused(with_secret().message_webhook("https://backend/hook"));
    assert_eq!(https.setting(), "message_webhook");
    assert!(https.reason().contains("not supported"), "{https}");
    let not_a_url = refused(with_secret().events_webhook("backend/hook"));
    assert_eq!(not_a_url.setting(), "events_webhook");
    let zero = refused(
        with_secret()
            .message_webhook(url)
            .webhook_timeout(Duration::ZERO),
    );
    assert_eq!(zero.setting(), "webhook_timeout");
    let both = refused(
        with_secret()
            .auth_webhook(url)
            .auth(|_| async { Ok(wtchat::Identity::new("u", "U")) }),
    );
    assert_eq!(both.setting(), "auth_webhook");
    let fine = with_secret()
        .message_webhook(url)
        .events_webhook(url)
        .auth_webhook(url)
        .webhook_timeout(TIMEOUT)
        .webhook_fail_open(true)
        .build()
        .unwrap();
    assert!(
        !format!("{fine:?}").contains(SECRET),
        "the secret never shows"
    );
}

#[test]
fn wtchat_serve_takes_the_webhooks_from_flags_and_the_environment() {
    let check = |secret: Option<&str>| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_wtchat"));
        command
            .args(["config", "--check", "--engine", "memory"])
            .args(["--message-webhook", "http://127.0.0.1:8000/message"])
            .args(["--webhook-timeout", "500ms", "--webhook-fail-open"])
            .env_remove("WTCHAT_WEBHOOK_SECRET");
        if let Some(secret) = secret {
            command.env("WTCHAT_WEBHOOK_SECRET", secret);
        }
        let out = command.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let (ok, refused) = check(None);
    assert!(
        !ok && refused.contains("webhook_secret: is required"),
        "{refused}"
    );
    let (ok, effective) = check(Some(SECRET));
    assert!(ok, "{effective}");
    for line in [
        "message_webhook = \"http://127.0.0.1:8000/message\"",
        "webhook_timeout = \"500ms\"",
        "webhook_fail_open = true",
    ] {
        assert!(effective.contains(line), "{line} in:\n{effective}");
    }
    assert!(
        !effective.contains(SECRET),
        "the secret is masked:\n{effective}"
    );
}

/// The message webhook's backend written with Python's standard library: `http.server`, on
/// which Flask's and Django's development servers are built. Argument `http/1.0`: the
/// handler as it ships, which answers in HTTP/1.0 and closes the connection after each
/// answer; `keep-alive <seconds>`: HTTP/1.1 with keep-alive, and a connection idle for that
/// long closed (as gunicorn does after 2 s). Prints its port, then `connection` for each
/// connection it accepts and `call` for each call it answers.
const PYTHON_BACKEND: &str = r#"
import http.server, json, sys, threading

lock = threading.Lock()

def say(line):
    with lock:
        print(line, flush=True)

class Hook(http.server.BaseHTTPRequestHandler):
    def setup(self):
        super().setup()
        say("connection")

    def do_POST(self):
        text = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["text"]
        if "spam" in text:
            answer = {"action": "reject", "reason": "no spam here"}
        else:
            answer = {"action": "accept"}
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        say("call")

    def log_message(self, format, *args):
        pass

if sys.argv[1] == "keep-alive":
    Hook.protocol_version = "HTTP/1.1"
    Hook.timeout = float(sys.argv[2])
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

/// [`PYTHON_BACKEND`], running.
struct PythonBackend {
    child: tokio::process::Child,
    port: u16,
    /// What it printed after its port.
    lines: mpsc::UnboundedReceiver<String>,
    connections: usize,
    calls: usize,
}

impl PythonBackend {
    async fn start(args: &[&str]) -> PythonBackend {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new("python3")
            .args(["-c", PYTHON_BACKEND])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs");
        let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let port = tokio::time::timeout(DEADLINE, stdout.next_line())
            .await
            .expect("the backend prints its port")
            .unwrap()
            .expect("the backend runs")
            .parse()
            .unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stdout.next_line().await {
                let _ = tx.send(line);
            }
        });
        PythonBackend {
            child,
            port,
            lines,
            connections: 0,
            calls: 0,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/chat/message", self.port)
    }

    /// One call by hand, on a connection of its own: the answer's status line, and how long
    /// the backend kept the connection open after answering.
    async fn probe(&self) -> (String, Duration) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let body = r#"{"text":"probe"}"#;
        let request = format!(
            "POST /chat/message HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.port,
            body.len()
        );
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let (mut answer, mut answered) = (Vec::new(), None);
        let read = async {
            let mut buf = [0; 4096];
            loop {
                let n = stream.read(&mut buf).await.unwrap();
                answered.get_or_insert_with(Instant::now);
                if n == 0 {
                    return answered.unwrap().elapsed();
                }
                answer.extend_from_slice(&buf[..n]);
            }
        };
        let open = tokio::time::timeout(DEADLINE, read)
            .await
            .expect("the backend closes the connection");
        let answer = String::from_utf8(answer).unwrap();
        (answer.lines().next().unwrap_or_default().to_string(), open)
    }

    fn count(&mut self, line: &str) {
        match line {
            "connection" => self.connections += 1,
            "call" => self.calls += 1,
            other => panic!("the backend printed {other:?}"),
        }
    }

    /// How many connections it accepted since the last look (as far as it printed yet).
    fn new_connections(&mut self) -> usize {
        let before = self.connections;
        while let Ok(line) = self.lines.try_recv() {
            self.count(&line);
        }
        self.connections - before
    }

    /// Stops it: how many connections it accepted and how many calls it answered.
    async fn stop(mut self) -> (usize, usize) {
        self.child.kill().await.unwrap();
        while let Some(line) = self.lines.recv().await {
            self.count(&line);
        }
        (self.connections, self.calls)
    }
}

/// A message webhook served by Python's `http.server`, as a Flask or Django host runs it in
/// development: once as the handler ships (HTTP/1.0, a connection per call), once with
/// HTTP/1.1 keep-alive and a short idle timeout. A WebSocket client sends messages, some
/// back to back, most after a pause that the test keeps at the backend's idle timeout (a
/// little longer after each call that found the connection kept, shorter after each that
/// found it closed): calls keep starting as the backend closes the connection. Every
/// message is checked and stored, in order; none is rejected for a failed call (the
/// message webhook fails closed).
#[tokio::test]
async fn a_python_http_server_backend_checks_every_message_with_or_without_keep_alive() {
    if !common::python_has("http.server") {
        return;
    }
    /// The keep-alive backend's idle timeout.
    const IDLE: Duration = Duration::from_millis(100);
    const MESSAGES: usize = 60;
    /// How much the pause changes after each call.
    const STEP: Duration = Duration::from_micros(250);
    // Message 30 is rejected.
    let spam = |n: usize| n == 30;

    let idle = IDLE.as_secs_f64().to_string();
    for args in [&["http/1.0"][..], &["keep-alive", &idle]] {
        let mut backend = PythonBackend::start(args).await;
        // The backend as described: HTTP/1.0 closes at once; keep-alive closes when idle.
        let (status, open) = backend.probe().await;
        if args[0] == "http/1.0" {
            assert!(status.starts_with("HTTP/1.0 200"), "{status}");
            assert!(open < IDLE / 2, "closed {open:?} after answering");
        } else {
            assert!(status.starts_with("HTTP/1.1 200"), "{status}");
            assert!(
                open >= IDLE - IDLE / 10 && open < IDLE + Duration::from_secs(1),
                "closed {open:?} after answering, with an idle timeout of {IDLE:?}"
            );
        }

        let url = backend.url();
        let server = start_with(|c| c.message_webhook(url).webhook_secret(SECRET)).await;
        let mut ann = Client::ws(&server).await;
        ann.join("lobby", "ann").await;
        let (mut got, mut expected, mut stored) = (Vec::new(), Vec::new(), Vec::new());
        // How long the backend's connection is to have been idle when the next call reaches
        // it; and how long the last call took, which it was idle for already (the backend
        // answered at its start, or 40 ms later: it writes the body apart from the head,
        // and Nagle holds that until the chat's delayed ACK).
        let (mut idle_at_call, mut last_call) = (IDLE, Duration::ZERO);
        backend.new_connections();
        for n in 0..MESSAGES {
            // Every fourth message back to back.
            let back_to_back = n % 4 == 3;
            if !back_to_back {
                tokio::time::sleep(idle_at_call.saturating_sub(last_call)).await;
            }
            let sent = Instant::now();
            let id = format!("m{n}");
            let text = match spam(n) {
                true => "buy spam".to_string(),
                false => format!("hello {n}"),
            };
            ann.send(json!({"type": "send", "room": "lobby", "text": text, "id": id}))
                .await;
            let answer = ann
                .next_matching("its ack or error", |f| {
                    f["id"] == id.as_str() && (f["type"] == "ack" || f["type"] == "error")
                })
                .await;
            got.push(match answer["type"].as_str() {
                Some("ack") => json!({"id": id, "seq": answer["seq"]}),
                _ => json!({"id": id, answer["code"].as_str().unwrap(): answer["message"]}),
            });
            if spam(n) {
                expected.push(json!({"id": id, "rejected": "no spam here"}));
            } else {
                stored.push(("ann".to_string(), text));
                expected.push(json!({"id": id, "seq": stored.len()}));
            }
            last_call = sent.elapsed();
            let new_connection = backend.new_connections() > 0;
            if !back_to_back {
                idle_at_call = match new_connection {
                    false => idle_at_call + STEP,
                    true => idle_at_call.saturating_sub(STEP).max(IDLE / 2),
                };
            }
        }

        let failed: Vec<&Value> = (got.iter())
            .filter(|a| a["seq"].is_null() && !expected.contains(a))
            .collect();
        assert!(
            failed.is_empty(),
            "{args:?}: {} of {MESSAGES} messages failed: {failed:#?}",
            failed.len(),
        );
        assert_eq!(got, expected, "{args:?}");
        let history: Vec<(String, String)> = server
            .chat
            .history("lobby", None, MESSAGES)
            .await
            .unwrap()
            .messages
            .iter()
            .map(|m| (m.from.clone(), m.text.clone()))
            .collect();
        assert_eq!(history, stored, "{args:?}");
        server.stop().await;

        let (connections, calls) = backend.stop().await;
        println!("{args:?}: {calls} calls on {connections} connections");
        assert_eq!(calls, MESSAGES + 1, "the probe and each message");
        if args[0] == "http/1.0" {
            assert_eq!(connections, calls, "a connection per call");
        } else {
            // Kept between calls, closed in the longer pauses.
            assert!(
                connections > 2 && connections < calls,
                "{calls} calls on {connections} connections"
            );
        }
    }
}

/// The next `joined` or `error` of `room` after sending a join for it.
async fn try_join(client: &mut Client, room: &str, name: &str) -> Value {
    client
        .send(json!({"type": "join", "room": room, "name": name}))
        .await;
    client
        .next_matching("joined or error", |f| {
            f["room"] == room && (f["type"] == "joined" || f["type"] == "error")
        })
        .await
}

/// The book (docs/src/webhooks.md): the auth webhook refuses with 401 or 403 `{"reason": …}`, and the client
/// gets the reason in its `bye` 4401 (a ticket request, in its 401). A 403 is a refusal
/// like a 401, not a failed call ("the host's login service did not answer").
#[tokio::test]
async fn an_auth_webhook_403_refuses_with_its_reason_like_a_401() {
    let mut backend = Backend::start().await;
    let auth = backend.url("/auth");
    let server = start_with(|c| c.auth_webhook(auth).webhook_secret(SECRET)).await;

    let mut eve = Client::ws_request(&server, "", &[("cookie", "session=banned")])
        .await
        .unwrap();
    let bye = eve.next_of("bye").await;
    assert_eq!(
        (&bye["code"], &bye["message"]),
        (&json!(4401), &json!("banned for spamming"))
    );
    assert_eq!(eve.ended().await, common::Ended::Code(4401));
    let call = backend.next("/auth").await;
    assert_eq!(
        (call.status, &call.json()["transport"]),
        (403, &json!("websocket"))
    );

    let origin = format!("http://127.0.0.1:{}", server.http.port());
    let page = [("origin", origin.as_str()), ("cookie", "session=banned")];
    let (status, answer) = http_request(server.http, "POST", "/wtchat/ticket", &page, None).await;
    assert_eq!(status, 401, "{answer}");
    assert_eq!(
        serde_json::from_str::<Value>(&answer).unwrap(),
        json!({"error": "unauthorized", "message": "banned for spamming"})
    );
    let call = backend.next("/auth").await;
    assert_eq!(
        (call.status, &call.json()["transport"]),
        (403, &json!("ticket"))
    );
    server.stop().await;
}

/// The book (docs/src/webhooks.md): an auth webhook answer with `rooms` left out (as its Django example answers)
/// or `["*"]` lets the user into any room, under the backend's name.
#[tokio::test]
async fn an_auth_webhook_answer_without_rooms_or_with_a_star_opens_every_room() {
    let mut backend = Backend::start().await;
    let auth = backend.url("/auth");
    let server = start_with(|c| c.auth_webhook(auth).webhook_secret(SECRET)).await;
    // As the backend answers them: {"user":"7","name":"Bo"}, and the same with "rooms":["*"].
    for (cookie, name) in [("session=django", "Bo"), ("session=star", "Cy")] {
        let mut client = Client::ws_request(&server, "", &[("cookie", cookie)])
            .await
            .unwrap();
        for room in ["lobby", "staff", "a-room-nobody-named"] {
            let joined = try_join(&mut client, room, "whoever").await;
            assert_eq!(
                (&joined["type"], &joined["you"]["name"]),
                (&json!("joined"), &json!(name)),
                "{cookie} joining {room}: {joined}"
            );
        }
        let said = client.say("staff", "hello", "s1").await;
        assert_eq!(said, 1 + u64::from(name == "Cy"), "{cookie}");
        let call = backend.next("/auth").await;
        assert_eq!(call.status, 200, "{cookie}");
    }
    server.stop().await;
}

/// The book (docs/src/webhooks.md): a rewrite "is held to `max_text_chars` like a client's (past it, or empty,
/// the message is rejected…)". The sender gets `rejected` with the reason, nobody else sees anything, nothing is stored and no
/// sequence number is used; a rewrite at the limit, counted in characters like a client's
/// text, is stored.
#[tokio::test]
async fn a_message_webhook_rewrite_is_held_to_the_limits_of_a_client_text() {
    const MAX: usize = 32;
    let mut backend = Backend::start().await;
    let url = backend.url("/message");
    let server = start_with(|c| {
        c.message_webhook(url)
            .webhook_secret(SECRET)
            .max_text_chars(MAX)
    })
    .await;
    let mut ann = Client::ws(&server).await;
    let mut bob = Client::sse(&server).await;
    ann.join("lobby", "ann").await;
    bob.join("lobby", "bob").await;

    for (text, id, why) in [
        ("shout it", "s1", "max_text_chars"),
        ("erase me", "s2", "empty"),
    ] {
        ann.send(json!({"type": "send", "room": "lobby", "text": text, "id": id}))
            .await;
        let answer = ann
            .next_matching("its ack or error", |f| {
                f["id"] == id && (f["type"] == "ack" || f["type"] == "error")
            })
            .await;
        assert_eq!(
            (&answer["type"], &answer["code"], &answer["room"]),
            (&json!("error"), &json!("rejected"), &json!("lobby")),
            "{text}: {answer}"
        );
        let message = answer["message"].as_str().unwrap();
        assert!(message.contains(why), "{text}: {message}");
    }
    // At the limit: stored and delivered, as the first message of the room.
    let padded = "é".repeat(MAX);
    ann.send(json!({"type": "send", "room": "lobby", "text": "pad me", "id": "s3"}))
        .await;
    let own = ann
        .next_matching("own copy", |f| f["type"] == "message" && f["id"] == "s3")
        .await;
    assert_eq!((&own["seq"], &own["text"]), (&json!(1), &json!(padded)));
    assert_eq!(ann.next_of("ack").await["seq"], 1);
    assert_eq!(
        bob.messages("lobby", 1).await,
        [(1, "ann".to_string(), padded.clone())]
    );
    let history: Vec<(u64, String)> = server
        .chat
        .history("lobby", None, 10)
        .await
        .unwrap()
        .messages
        .iter()
        .map(|m| (m.seq, m.text.clone()))
        .collect();
    assert_eq!(history, [(1, padded)]);

    let calls = backend.take("/message", 3).await;
    let texts: Vec<Value> = calls.iter().map(|c| c.json()["text"].clone()).collect();
    assert_eq!(texts, ["shout it", "erase me", "pad me"]);
    server.stop().await;
}

/// The book (docs/src/webhooks.md): events wait in a queue of 10,000 (besides the batch being sent); "when it is
/// full the oldest is dropped", and `wtchat_webhook_events_dropped_total` counts them. The queue's size is not a setting,
/// so the test fills the real one: the backend is down (503) while the host publishes more
/// messages than the queue holds. The batch already being retried is not part of the queue
/// and survives; of the rest, the newest 10,000 arrive once the backend is back, in order.
#[tokio::test]
async fn a_full_events_queue_drops_the_oldest_events_and_counts_them() {
    /// `EVENTS_QUEUE` in lib/src/webhook.rs.
    const QUEUE: u64 = 10_000;
    const DROPPED: u64 = 150;
    let mut backend = Backend::start().await;
    backend.set_down(true);
    let url = backend.url("/outage");
    let server = start_with(|c| c.events_webhook(url).webhook_secret(SECRET).metrics(true)).await;
    let dropped_metric = || async {
        let (_, metrics) = server.get("/wtchat/metrics").await;
        let line = metrics
            .lines()
            .find(|l| l.starts_with("wtchat_webhook_events_dropped_total "))
            .unwrap_or_else(|| panic!("no dropped events counter in:\n{metrics}"))
            .to_string();
        line.rsplit(' ').next().unwrap().parse::<u64>().unwrap()
    };

    // Message 1 is taken at once; its post fails, and it waits to be sent again.
    assert_eq!(server.chat.publish("lobby", "Shop", "1").await, Ok(1));
    let failed = backend.next("/outage").await;
    assert_eq!(failed.status, 503);
    assert_eq!(dropped_metric().await, 0);

    // Then more than the queue holds, while the batch of message 1 waits.
    let started = Instant::now();
    let last = 1 + QUEUE + DROPPED;
    for seq in 2..=last {
        let published = server.chat.publish("lobby", "Shop", &seq.to_string()).await;
        assert_eq!(published, Ok(seq));
    }
    println!("{} messages published in {:?}", last - 1, started.elapsed());
    assert_eq!(dropped_metric().await, DROPPED);

    // Back up: the batch that was waiting, then the newest QUEUE events, in order. The first
    // post may wait for the backoff (up to 30 s between tries).
    backend.set_down(false);
    let mut taken = Vec::new();
    let mut failures = vec![failed];
    while taken.len() < 1 + QUEUE as usize {
        let call = backend
            .next_within("/outage", Duration::from_secs(45))
            .await;
        match call.status {
            200 => taken.extend(call.json()["events"].as_array().unwrap().iter().cloned()),
            _ => failures.push(call),
        }
    }
    let seqs: Vec<u64> = taken.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    let expected: Vec<u64> = std::iter::once(1).chain(DROPPED + 2..=last).collect();
    assert!(
        seqs == expected,
        "got {} events: not 1, then {}..={last}",
        seqs.len(),
        DROPPED + 2
    );
    assert!(
        taken.iter().all(|e| e["type"] == "message"
            && e["text"].as_str().and_then(|t| t.parse().ok()) == e["seq"].as_u64()),
        "every event is its message"
    );
    // Every failed post carried the same batch: message 1 alone.
    for call in &failures {
        let events = call.json()["events"].clone();
        assert_eq!(events, json!([taken[0]]), "a failed post");
    }
    assert_eq!(dropped_metric().await, DROPPED);
    server.stop().await;
    assert!(
        backend.received("/outage").iter().all(|c| c.status != 200),
        "nothing posted twice"
    );
}

/// The book (docs/src/webhooks.md): "At shutdown, what is still queued gets one more try within
/// `shutdown_grace`, a post under way then included". The backend is down while a member joins: that batch is being retried
/// with a growing wait. After the fourth failure, with the next try 2 s away, more happens
/// (a message of the member's, one of the host's), the backend comes back, and the server
/// stops at once: before `stop` returns the backend has every event, the member's leave at
/// the shutdown included, well before the next try was due. And a backend that does not
/// answer at all holds the exit no longer than the grace, even with a longer
/// `webhook_timeout` and a post under way when the shutdown starts.
#[tokio::test]
async fn at_shutdown_the_events_webhook_posts_what_is_queued_within_the_grace() {
    let mut backend = Backend::start().await;
    backend.set_down(true);
    let url = backend.url("/outage");
    let server = start_with(|c| c.events_webhook(url).webhook_secret(SECRET)).await;
    let mut ann = Client::ws(&server).await;
    let (joined, _) = ann.join("lobby", "ann").await;

    // Tried again after 250 ms, then 500 ms, then 1 s: after the fourth failure, 2 s.
    let failed = backend.take("/outage", 4).await;
    for (n, pair) in failed.windows(2).enumerate() {
        let gap = pair[1].at - pair[0].at;
        let wait = Duration::from_millis(250 << n);
        assert!(
            gap >= wait - wait / 10,
            "try {} came {gap:?} after the one before",
            n + 2
        );
    }
    let next_try = failed[3].at + Duration::from_secs(2);
    assert!(failed.iter().all(|c| c.status == 503));
    ann.say("lobby", "one", "a1").await;
    server.chat.publish("lobby", "Shop", "two").await.unwrap();
    backend.set_down(false);
    let ((), end) = tokio::join!(server.stop(), ann.ended());
    let stopped = Instant::now();
    assert_eq!(end, common::Ended::Code(4000));
    assert!(
        stopped < next_try,
        "the test is inconclusive: the server stopped {:?} after the next try was due",
        stopped - next_try
    );

    let calls = backend.received("/outage");
    assert!(calls.iter().all(|c| c.status == 200), "{calls:#?}");
    let events: Vec<(Value, Value)> = calls
        .iter()
        .flat_map(|c| c.json()["events"].as_array().unwrap().clone())
        .map(|e| (e["type"].clone(), e["text"].clone()))
        .collect();
    assert_eq!(
        events,
        [
            (json!("joined"), Value::Null),
            (json!("message"), json!("one")),
            (json!("message"), json!("two")),
            (json!("left"), Value::Null),
        ]
    );
    let first = calls[0].json()["events"][0].clone();
    assert_eq!(first["member"], joined["you"]["id"]);

    // A backend that never answers: the post under way when the shutdown starts, then what
    // is queued, get the grace and no more.
    const GRACE: Duration = Duration::from_millis(500);
    let hang = backend.url("/hang");
    let server = start_with(|c| {
        c.events_webhook(hang)
            .webhook_secret(SECRET)
            .webhook_timeout(Duration::from_secs(5))
            .shutdown_grace(GRACE)
    })
    .await;
    server
        .chat
        .publish("lobby", "Shop", "unheard")
        .await
        .unwrap();
    backend.next("/hang").await;
    server
        .chat
        .publish("lobby", "Shop", "queued")
        .await
        .unwrap();
    let stopping = Instant::now();
    server.stop().await;
    let took = stopping.elapsed();
    assert!(
        took >= GRACE && took < GRACE + Duration::from_secs(1),
        "stopped in {took:?}, with a grace of {GRACE:?} and a webhook timeout of 5 s"
    );
}
