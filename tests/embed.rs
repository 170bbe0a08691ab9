//! wtchat embedded in a host application: the wiring of examples/axum_host.rs (the host's
//! own routes, a cookie login, identities from it, a message hook), and the way hosts in any
//! other language use it (signed tokens, the HTTP API with an API key).

mod common;

#[allow(dead_code)] // its `main` is the example's, not the test's
#[path = "../examples/axum_host.rs"]
mod host;

use common::{Client, Ended, TestServer, http_request, start_host, start_with};
use serde_json::{Value, json};
use wtchat::auth::{Claims, mint, unix_now};

async fn start_example() -> TestServer {
    start_host(host::chat_config, host::app).await
}

/// `POST /wtchat/ticket` as the page of the host's own origin sends it: with the page's
/// cookies (`cookie` None: not logged in). Returns the status and the JSON answer.
async fn tickets(server: &TestServer, cookie: Option<&str>) -> (u16, Value) {
    let origin = format!("http://127.0.0.1:{}", server.http.port());
    let mut headers = vec![("origin", origin.as_str())];
    if let Some(cookie) = cookie {
        headers.push(("cookie", cookie));
    }
    let (status, body) = http_request(server.http, "POST", "/wtchat/ticket", &headers, None).await;
    (status, serde_json::from_str(&body).unwrap())
}

/// A WebTransport session as a browser opens it for a logged-in user: no cookie on the
/// CONNECT (browsers send none there), a ticket from the page's credentialed request.
async fn wt_with_ticket(server: &TestServer, cookie: &str) -> Client {
    let (status, answer) = tickets(server, Some(cookie)).await;
    assert_eq!(status, 200, "{answer}");
    let ticket = answer["tickets"]["webtransport"].as_str().unwrap();
    Client::wt_request(server, &format!("/wtchat?ticket={ticket}"), &[])
        .await
        .unwrap()
}

/// Ann logged in over WebTransport and Bob over WebSocket, both joined to "lobby".
async fn ann_and_bob_in_the_lobby(server: &TestServer) -> (Client, Client) {
    let mut ann = wt_with_ticket(server, "user=ann").await;
    let mut bob = Client::ws_request(server, "", &[("cookie", "user=bob")])
        .await
        .unwrap();
    ann.join("lobby", "ann").await;
    bob.join("lobby", "bob").await;
    (ann, bob)
}

/// Expects the connection to be refused after connecting: `bye` 4401 with `message`.
async fn assert_unauthorized(mut client: Client, message: &str) {
    let bye = client.next_of("bye").await;
    assert_eq!(
        bye,
        json!({"type":"bye","code":4401,"reason":"unauthorized","reconnect":false,"message":message}),
        "{}",
        client.transport()
    );
    assert_eq!(client.ended().await, Ended::Code(4401));
}

#[tokio::test]
async fn the_hosts_own_routes_work_beside_the_chat() {
    let server = start_example().await;
    assert_eq!(server.get("/health").await, (200, "ok".to_string()));
    let (status, page) = server.get("/").await;
    assert_eq!(status, 200);
    assert!(page.contains("Log in"), "{page}");
    // The login sets the cookie the chat will trust.
    let ((status, _), head) =
        common::http_exchange(server.http, "GET", "/login?name=ann", &[], None).await;
    assert_eq!(status, 303);
    assert!(
        head.to_lowercase().contains("set-cookie: user=ann;"),
        "{head}"
    );
    let (status, page) = common::http_get(server.http, "/", &[("cookie", "user=ann")]).await;
    assert_eq!(status, 200);
    assert!(page.contains("Logged in as ann") && page.contains("/wtchat/wtchat.js"));
    // And the chat's routes are there too, but not its demo page.
    assert_eq!(server.get("/wtchat/config").await.0, 200);
    assert_eq!(server.get("/wtchat/wtchat.js").await.0, 200);
    server.stop().await;
}

#[tokio::test]
async fn the_login_cookie_is_the_identity_on_both_transports() {
    let server = start_example().await;
    // Without the cookie: refused, with the reason.
    assert_unauthorized(
        Client::ws_request(&server, "", &[]).await.unwrap(),
        "log in first",
    )
    .await;
    assert_unauthorized(
        Client::wt_request(&server, "/wtchat", &[]).await.unwrap(),
        "log in first",
    )
    .await;

    let mut ann = Client::ws_request(&server, "", &[("cookie", "user=ann")])
        .await
        .unwrap();
    let mut bob = wt_with_ticket(&server, "user=bob").await;
    // Ann claims to be "Bob" in her join: the host's identity wins.
    let (joined, _) = ann.join("lobby", "Bob").await;
    assert_eq!(joined["you"]["name"], "Ann");
    let (joined, _) = bob.join("lobby", "whatever").await;
    assert_eq!(joined["you"]["name"], "Bob");
    ann.say("lobby", "hello from ann", "a1").await;
    let got = bob.messages("lobby", 1).await;
    assert_eq!(got, [(1, "Ann".to_string(), "hello from ann".to_string())]);
    server.stop().await;
}

#[tokio::test]
async fn tickets_carry_the_login_to_webtransport_once_each() {
    let server = start_example().await;
    // Not logged in: the hook's reason, as a 401 the client takes as final.
    let (status, answer) = tickets(&server, None).await;
    assert_eq!(
        (status, answer),
        (
            401,
            json!({"error":"unauthorized","message":"log in first"})
        )
    );
    // Logged in: one ticket per transport, for the cookie's user.
    let (status, answer) = tickets(&server, Some("user=cid")).await;
    assert_eq!(status, 200);
    assert_eq!(answer["expiresIn"], 30);
    let wt = answer["tickets"]["webtransport"]
        .as_str()
        .unwrap()
        .to_string();
    let ws = answer["tickets"]["websocket"].as_str().unwrap().to_string();
    assert_ne!(wt, ws);
    let mut cid = Client::wt_request(&server, &format!("/wtchat?ticket={wt}"), &[])
        .await
        .unwrap();
    let (joined, _) = cid.join("lobby", "Mallory").await;
    assert_eq!(joined["you"]["name"], "Cid");
    let mut cid_ws = Client::ws_request(&server, &format!("?ticket={ws}"), &[])
        .await
        .unwrap();
    let (joined, _) = cid_ws.join("lobby", "Mallory").await;
    assert_eq!(joined["you"]["name"], "Cid");
    // Each ticket once: a second use is refused, over either transport.
    for (transport, path) in [
        ("webtransport", format!("/wtchat?ticket={wt}")),
        ("websocket", format!("?ticket={ws}")),
    ] {
        let again = match transport {
            "webtransport" => Client::wt_request(&server, &path, &[]).await.unwrap(),
            _ => Client::ws_request(&server, &path, &[]).await.unwrap(),
        };
        assert_unauthorized(again, "this ticket was used already; fetch a new one").await;
    }
    // A token (here one signed with a made-up secret) is not a ticket.
    let forged = token(
        "a-made-up-secret-of-32-bytes-at-least",
        "cid",
        "Cid",
        &["*"],
        unix_now() + 60,
    );
    assert_unauthorized(
        Client::wt_request(&server, &format!("/wtchat?ticket={forged}"), &[])
            .await
            .unwrap(),
        "token signature is not valid",
    )
    .await;
    // The page of an origin that may not connect gets no ticket.
    let (status, _) = http_request(
        server.http,
        "POST",
        "/wtchat/ticket",
        &[("origin", "https://evil.example"), ("cookie", "user=cid")],
        None,
    )
    .await;
    assert_eq!(status, 403);
    // The answer is readable by the page that asked, credentials included (CORS).
    let origin = format!("http://localhost:{}", server.http.port());
    let ((status, _), head) = common::http_exchange(
        server.http,
        "POST",
        "/wtchat/ticket",
        &[("origin", &origin), ("cookie", "user=cid")],
        None,
    )
    .await;
    assert_eq!(status, 200);
    let head = head.to_lowercase();
    assert!(
        head.contains(&format!("access-control-allow-origin: {origin}")),
        "{head}"
    );
    assert!(
        head.contains("access-control-allow-credentials: true"),
        "{head}"
    );
    // And /wtchat/config tells the client where to ask.
    let (_, body) = server.get("/wtchat/config").await;
    let config: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        config["ticket"],
        format!("http://{}/wtchat/ticket", server.http)
    );
    server.stop().await;
}

#[tokio::test]
async fn a_message_the_hosts_hook_rejects_reaches_nobody() {
    let server = start_example().await;
    let (mut ann, mut bob) = ann_and_bob_in_the_lobby(&server).await;
    ann.send(json!({"type":"send","room":"lobby","text":"buy SPAM now","id":"s1"}))
        .await;
    let error = ann.next_of("error").await;
    assert_eq!(
        error,
        json!({"type":"error","code":"rejected","message":"no spam here","room":"lobby","id":"s1"})
    );
    // The next message Bob sees is the next good one, numbered 1: nothing was stored.
    ann.say("lobby", "a real question", "q1").await;
    assert_eq!(
        bob.messages("lobby", 1).await,
        [(1, "Ann".to_string(), "a real question".to_string())]
    );
    server.stop().await;
}

#[tokio::test]
async fn the_rust_api_publishes_lists_and_kicks() {
    let server = start_example().await;
    let (mut ann, mut bob) = ann_and_bob_in_the_lobby(&server).await;
    let chat = &server.chat;
    let seq = chat
        .publish("lobby", "Shop bot", "Sale starts now")
        .await
        .unwrap();
    for client in [&mut ann, &mut bob] {
        assert_eq!(
            client.messages("lobby", 1).await,
            [(seq, "Shop bot".to_string(), "Sale starts now".to_string())]
        );
    }
    let mut names: Vec<String> = chat
        .members("lobby")
        .await
        .unwrap()
        .iter()
        .map(|m| format!("{}={}", m.user.as_deref().unwrap_or("?"), m.name))
        .collect();
    names.sort();
    assert_eq!(names, ["ann=Ann", "bob=Bob"]);
    // Invalid input is refused, and says why.
    let refused = chat.publish("lobby", "Shop bot", " ").await.unwrap_err();
    assert_eq!(refused, wtchat::PublishError::EmptyText);
    assert_eq!(refused.to_string(), "text must not be empty");
    assert_eq!(
        chat.publish("no spaces allowed", "Shop bot", "hi").await,
        Err(wtchat::PublishError::InvalidRoom)
    );
    // Kicking Bob closes his connection for good; Ann sees him leave.
    assert_eq!(chat.kick("lobby", "bob"), 1);
    let bye = bob.next_of("bye").await;
    assert_eq!(
        (
            bye["code"].as_u64(),
            bye["reason"].as_str(),
            bye["reconnect"].as_bool()
        ),
        (Some(4403), Some("kicked"), Some(false))
    );
    let left = ann.next_of("presence").await;
    assert_eq!(
        (left["event"].as_str(), left["member"]["name"].as_str()),
        (Some("leave"), Some("Bob"))
    );
    assert_eq!(chat.members("lobby").await.unwrap().len(), 1);
    server.stop().await;
}

fn token(secret: &str, user: &str, name: &str, rooms: &[&str], exp: u64) -> String {
    mint(
        secret.as_bytes(),
        &Claims {
            sub: user.into(),
            name: name.into(),
            rooms: rooms.iter().map(|r| r.to_string()).collect(),
            exp,
        },
    )
}

/// The shared secret of the token server's tokens (32 bytes or more, as required).
const SECRET: &str = "tokens-are-signed-with-32-bytes-or-more";
/// The token server's API key.
const API_KEY: &str = "the-backend-presents-this-32-byte-key";

async fn token_server() -> TestServer {
    start_with(|c| c.token_secret(SECRET).api_key(API_KEY)).await
}

async fn with_token(server: &TestServer, transport: &str, token: &str) -> Client {
    let query = format!("?token={token}");
    match transport {
        "websocket" => Client::ws_request(server, &query, &[]).await.unwrap(),
        _ => Client::wt_request(server, &format!("/wtchat{query}"), &[])
            .await
            .unwrap(),
    }
}

#[tokio::test]
async fn tokens_are_checked_on_both_transports() {
    let server = token_server().await;
    let later = unix_now() + 600;
    for transport in ["websocket", "webtransport"] {
        let none = match transport {
            "websocket" => Client::ws_request(&server, "", &[]).await.unwrap(),
            _ => Client::wt_request(&server, "/wtchat", &[]).await.unwrap(),
        };
        assert_unauthorized(none, "a token is required (?token=...)").await;
        let forged = token("not-the-secret", "u1", "Ann", &["a"], later);
        assert_unauthorized(
            with_token(&server, transport, &forged).await,
            "token signature is not valid",
        )
        .await;
        let expired = token(SECRET, "u1", "Ann", &["a"], unix_now() - 1);
        assert_unauthorized(
            with_token(&server, transport, &expired).await,
            "token expired",
        )
        .await;

        // A good token for room "a": its name is used, room "b" is refused.
        let good = token(SECRET, "u1", "Ann", &["a"], later);
        let mut ann = with_token(&server, transport, &good).await;
        let (joined, _) = ann.join("a", "Mallory").await;
        assert_eq!(joined["you"]["name"], "Ann");
        ann.send(json!({"type":"join","room":"b","name":"Ann"}))
            .await;
        let error = ann.next_of("error").await;
        assert_eq!(
            (error["code"].as_str(), error["room"].as_str()),
            (Some("room_forbidden"), Some("b"))
        );
        assert!(server.chat.members("b").await.unwrap().is_empty());
        ann.send(json!({"type":"leave","room":"a"})).await;
        ann.next_of("left").await;
    }
    server.stop().await;
}

#[tokio::test]
async fn the_http_api_publishes_to_both_transports_and_refuses_a_wrong_key() {
    let server = token_server().await;
    let t = token(SECRET, "u1", "Ann", &["*"], unix_now() + 600);
    let mut wt = with_token(&server, "webtransport", &t).await;
    let t2 = token(SECRET, "u2", "Bob", &["lobby"], unix_now() + 600);
    let mut ws = with_token(&server, "websocket", &t2).await;
    wt.join("lobby", "x").await;
    ws.join("lobby", "x").await;

    let publish = |key: &str| {
        let key = format!("Bearer {key}");
        let server = &server;
        async move {
            http_request(
                server.http,
                "POST",
                "/wtchat/api/publish",
                &[("authorization", &key)],
                Some(&json!({"room":"lobby","from":"Backend","text":"order #42 shipped"})),
            )
            .await
        }
    };
    // A wrong key: 401, and nothing published.
    let (status, body) = publish("wrong").await;
    assert_eq!(status, 401);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"],
        "unauthorized"
    );
    let (status, body) = http_request(
        server.http,
        "POST",
        "/wtchat/api/publish",
        &[],
        Some(&json!({"room":"lobby","from":"Backend","text":"x"})),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    // Checked before the body is even read: a wrong key with a broken body is still 401.
    let (status, _) = http_request(
        server.http,
        "POST",
        "/wtchat/api/kick",
        &[("authorization", "Bearer wrong")],
        Some(&json!("not an object")),
    )
    .await;
    assert_eq!(status, 401);
    // The right key: stored as message 1 (the refused ones took no number), on both.
    let (status, body) = publish(API_KEY).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["seq"], 1);
    for client in [&mut wt, &mut ws] {
        assert_eq!(
            client.messages("lobby", 1).await,
            [(1, "Backend".to_string(), "order #42 shipped".to_string())],
            "{}",
            client.transport()
        );
    }
    // Members, then a kick: Bob's connection is closed with 4403 and does not come back.
    let (status, body) = http_request(
        server.http,
        "GET",
        "/wtchat/api/members?room=lobby",
        &[("authorization", &format!("Bearer {API_KEY}"))],
        None,
    )
    .await;
    assert_eq!(status, 200);
    let members: Value = serde_json::from_str(&body).unwrap();
    let mut users: Vec<&str> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"].as_str().unwrap())
        .collect();
    users.sort();
    assert_eq!(users, ["u1", "u2"]);
    let (status, body) = http_request(
        server.http,
        "POST",
        "/wtchat/api/kick",
        &[("authorization", &format!("Bearer {API_KEY}"))],
        Some(&json!({"room":"lobby","user":"u2"})),
    )
    .await;
    assert_eq!(
        (
            status,
            serde_json::from_str::<Value>(&body).unwrap()["kicked"].as_u64()
        ),
        (200, Some(1))
    );
    let bye = ws.next_of("bye").await;
    assert_eq!(
        (bye["code"].as_u64(), bye["reconnect"].as_bool()),
        (Some(4403), Some(false))
    );
    assert_eq!(ws.ended().await, Ended::Code(4403));
    let left = wt.next_of("presence").await;
    assert_eq!(
        (left["event"].as_str(), left["member"]["name"].as_str()),
        (Some("leave"), Some("Bob"))
    );
    server.stop().await;
}

#[tokio::test]
async fn without_an_api_key_there_is_no_api() {
    let server = common::start().await;
    let (status, _) = http_request(
        server.http,
        "POST",
        "/wtchat/api/publish",
        &[("authorization", "Bearer anything")],
        Some(&json!({"room":"r","from":"x","text":"y"})),
    )
    .await;
    assert_eq!(status, 404);
    server.stop().await;
}

#[tokio::test]
async fn mounting_the_chat_installs_nothing_global() {
    let server = start_example().await;
    let mut ann = Client::ws_request(&server, "", &[("cookie", "user=ann")])
        .await
        .unwrap();
    ann.join("lobby", "ann").await;
    ann.say("lobby", "hello", "h").await;
    // No process-wide TLS crypto provider and no tracing subscriber the host did not ask
    // for: the host keeps those choices.
    assert!(wtransport::tls::rustls::crypto::CryptoProvider::get_default().is_none());
    assert!(!tracing::dispatcher::has_been_set());
    server.stop().await;
}

#[tokio::test]
async fn anonymous_members_are_kicked_by_member_id_and_never_by_a_user_id() {
    let server = start_with(|c| c.api_key(API_KEY)).await;
    let mut ann = Client::wt(&server).await;
    let mut bob = Client::ws(&server).await;
    let mut cid = Client::ws(&server).await;
    let (ann_joined, _) = ann.join("open", "ann").await;
    let (bob_joined, _) = bob.join("open", "bob").await;
    cid.join("open", "cid").await;
    let ann_id = ann_joined["you"]["id"].as_u64().unwrap();
    let bob_id = bob_joined["you"]["id"].as_u64().unwrap();

    // A user id that spells a member's id is not that member: nobody has that user id.
    assert_eq!(server.chat.kick("open", &ann_id.to_string()), 0);
    assert_eq!(server.chat.members("open").await.unwrap().len(), 3);

    // By member id, from Rust: Ann is kicked, for good; the others see her leave.
    assert!(server.chat.kick_member("open", ann_id).await.unwrap());
    assert_eq!(ann.next_of("bye").await["code"], 4403);
    assert_eq!(ann.ended().await, Ended::Code(4403));
    assert!(
        !server.chat.kick_member("open", ann_id).await.unwrap(),
        "already gone"
    );

    // By member id, over the HTTP API.
    let kick = |body: Value| {
        let server = &server;
        async move {
            let (status, body) = http_request(
                server.http,
                "POST",
                "/wtchat/api/kick",
                &[("authorization", &format!("Bearer {API_KEY}"))],
                Some(&body),
            )
            .await;
            (status, serde_json::from_str::<Value>(&body).unwrap())
        }
    };
    let (status, body) = kick(json!({"room":"open","member":bob_id})).await;
    assert_eq!((status, body["kicked"].as_u64()), (200, Some(1)));
    assert_eq!(bob.next_of("bye").await["code"], 4403);
    // Neither or both of user and member: refused, nobody kicked.
    for body in [
        json!({"room":"open"}),
        json!({"room":"open","user":"x","member":1}),
    ] {
        let (status, body) = kick(body).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_frame"))
        );
    }
    let names: Vec<String> = server
        .chat
        .members("open")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, ["cid"]);
    server.stop().await;
}

#[tokio::test]
async fn the_http_api_says_why_a_publish_is_refused() {
    let server = start_with(|c| c.api_key(API_KEY)).await;
    for (body, code, message) in [
        (
            json!({"room":"a room","from":"Shop","text":"hi"}),
            "invalid_room",
            wtchat::PublishError::InvalidRoom.to_string(),
        ),
        (
            json!({"room":"lobby","from":"","text":"hi"}),
            "invalid_name",
            wtchat::PublishError::InvalidSender.to_string(),
        ),
        (
            json!({"room":"lobby","from":"Shop","text":"x".repeat(4001)}),
            "text_too_long",
            wtchat::PublishError::TextTooLong.to_string(),
        ),
    ] {
        let (status, reply) = http_request(
            server.http,
            "POST",
            "/wtchat/api/publish",
            &[("authorization", &format!("Bearer {API_KEY}"))],
            Some(&body),
        )
        .await;
        let reply: Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(status, 400, "{reply}");
        assert_eq!(reply, json!({"error": code, "message": message}));
    }
    server.stop().await;
}

#[tokio::test]
async fn a_chat_nested_under_a_prefix_hands_out_urls_under_it() {
    let server = start_host(
        |http, webtransport, certs| {
            wtchat::Config::builder()
                .http(http)
                .webtransport(webtransport)
                .tls(wtchat::Tls::Dev { dir: certs })
                .demo_page(false)
                .build()
        },
        |chat| axum::Router::new().nest("/chat", chat.router()),
    )
    .await;
    let (status, body) = server.get("/chat/wtchat/config").await;
    assert_eq!(status, 200, "{body}");
    let config: Value = serde_json::from_str(&body).unwrap();
    let ws_url = format!("ws://{}/chat/wtchat/ws", server.http);
    assert_eq!(config["websocket"], ws_url);
    assert_eq!(
        server.get("/wtchat/config").await.0,
        404,
        "nothing outside the prefix"
    );
    // The URL it hands out works, and the WebTransport side (its own listener) as ever.
    let (socket, _) = tokio_tungstenite::connect_async(&ws_url).await.unwrap();
    let mut ws = Client::Ws { socket, bye: None };
    let mut wt = Client::wt(&server).await;
    ws.join("nested", "ws").await;
    wt.join("nested", "wt").await;
    assert_eq!(ws.say("nested", "under a prefix", "p1").await, 1);
    assert_eq!(wt.messages("nested", 1).await[0].2, "under a prefix");
    // SSE and long polling hand out their sessions' URLs under the prefix too, and the
    // clients post (and poll) where they are told.
    assert_eq!(
        config["sse"],
        format!("http://{}/chat/wtchat/sse", server.http)
    );
    let mut sse = Client::sse_under(server.http, "/chat", "", &[])
        .await
        .unwrap();
    let mut poll = Client::poll_under(server.http, "/chat", "", &[])
        .await
        .unwrap();
    sse.join("nested", "sse").await;
    poll.join("nested", "poll").await;
    assert_eq!(sse.say("nested", "posted under it", "s1").await, 2);
    assert_eq!(poll.say("nested", "polled under it", "l1").await, 3);
    assert_eq!(
        wt.messages("nested", 2).await,
        [
            (2, "sse".to_string(), "posted under it".to_string()),
            (3, "poll".to_string(), "polled under it".to_string())
        ]
    );
    server.stop().await;
}

/// A kick (or a ban) is about one room: a connection in several rooms is taken out of that
/// one — told with a `left` carrying 4403, gone from its member list, sent nothing more of
/// it — and stays in the others; out of its last room, the connection closes with 4403.
/// On every transport.
#[tokio::test]
async fn a_kick_takes_a_connection_out_of_that_room_only_and_out_of_its_last_closes_it() {
    let server = start_with(|c| c).await;
    for transport in ["websocket", "webtransport", "sse", "longpoll"] {
        let [a, b] = ["a", "b"].map(|r| format!("{r}-{transport}"));
        let mut cat = match transport {
            "websocket" => Client::ws(&server).await,
            "webtransport" => Client::wt(&server).await,
            "sse" => Client::sse(&server).await,
            _ => Client::poll(&server).await,
        };
        let (joined, _) = cat.join(&a, "cat").await;
        let id = joined["you"]["id"].as_u64().unwrap();
        cat.join(&b, "cat").await;
        let mut owl = Client::ws(&server).await;
        owl.join(&a, "owl").await;

        assert!(server.chat.kick_member(&a, id).await.unwrap());
        assert_eq!(
            cat.next_of("left").await,
            json!({"type": "left", "room": a, "code": 4403, "reason": "kicked"}),
            "{transport}"
        );
        let gone = owl.next_of("presence").await;
        assert_eq!(
            (&gone["event"], &gone["member"]["name"]),
            (&json!("leave"), &json!("cat"))
        );
        let names: Vec<String> = server
            .chat
            .members(&a)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(names, ["owl"], "{transport}");
        // Still in the other room, and only there.
        assert_eq!(owl.say(&a, "not for cat", "o1").await, 1);
        cat.send(json!({"type": "send", "room": a, "text": "let me back", "id": "c1"}))
            .await;
        assert_eq!(
            cat.next_of("error").await["code"],
            "not_joined",
            "{transport}"
        );
        cat.send(json!({"type": "send", "room": b, "text": "still here", "id": "c2"}))
            .await;
        let first = cat.next_of("message").await;
        assert_eq!(
            (&first["room"], &first["seq"], &first["text"]),
            (&json!(b), &json!(1), &json!("still here")),
            "{transport}: nothing of room a came before"
        );
        assert_eq!(cat.next_of("ack").await["seq"], 1);

        // Out of its last room: the connection closes, and the client does not come back.
        assert!(server.chat.kick_member(&b, id).await.unwrap());
        assert_eq!(cat.next_of("left").await["room"], b.as_str());
        let bye = cat.next_of("bye").await;
        assert_eq!(
            (&bye["code"], &bye["reconnect"]),
            (&json!(4403), &json!(false)),
            "{transport}"
        );
        assert_eq!(cat.ended().await, Ended::Code(4403), "{transport}");
    }
    server.stop().await;
}

/// A WebTransport client busy elsewhere when the server says goodbye still reads the
/// `bye`: the server, its `bye` delivered, waits for the client to close before closing the
/// connection (a QUIC CONNECTION_CLOSE first would make the client drop the unread `bye`,
/// and a kicked client would take it for a lost connection and come back).
#[tokio::test]
async fn a_webtransport_client_that_reads_late_still_gets_its_bye() {
    let server = start_with(|c| c).await;
    let mut kim = Client::wt(&server).await;
    let (joined, _) = kim.join("late", "kim").await;
    let id = joined["you"]["id"].as_u64().unwrap();
    assert!(server.chat.kick_member("late", id).await.unwrap());
    // The client's application is busy while the `bye` arrives.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(kim.next_of("bye").await["code"], 4403);
    assert_eq!(kim.ended().await, Ended::Code(4403));
    server.stop().await;
}
