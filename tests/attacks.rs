//! What anyone on the Internet can try against a chat, made as an attacker makes it: plain
//! HTTP with a forged `Origin` and someone's `Cookie`, a loop counting up user ids against
//! the public sender ids, bodies too large or too slow, a burst of ticket requests. Each is
//! answered without giving anything away, and the server goes on serving everyone else.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Client, DEADLINE, Serve, TestServer, http_exchange, start_with};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wtchat::auth::{Claims, mint, unix_now};
use wtchat::{Config, Identity, Refusal};

/// The shop's own origin: the one page allowed to log its users in to the chat.
const SHOP: &str = "https://shop.example";

/// A server whose login is the shop's cookie (`session=ann` is user 42), for the shop's
/// pages only.
async fn shop_chat() -> TestServer {
    start_with(|c| {
        c.allow_origin(SHOP).auth(|request| async move {
            match request.cookie("session").as_deref() {
                Some("ann") => Ok(Identity::new("42", "Ann")),
                _ => Err(Refusal::new("log in first")),
            }
        })
    })
    .await
}

/// `POST /wtchat/ticket` with `headers`: (status, body, response head in lowercase).
async fn ask_ticket(server: &TestServer, headers: &[(&str, &str)]) -> (u16, String, String) {
    let ((status, body), head) =
        http_exchange(server.http, "POST", "/wtchat/ticket", headers, None).await;
    (status, body, head.to_lowercase())
}

#[test]
fn a_login_cannot_be_offered_to_every_origin() {
    type Login = fn(wtchat::ConfigBuilder) -> wtchat::ConfigBuilder;
    let logins: [(&str, Login); 2] = [
        ("auth hook", |b| {
            b.auth(|_| async { Ok::<_, Refusal>(Identity::new("42", "Ann")) })
        }),
        ("auth webhook", |b| {
            b.auth_webhook("http://127.0.0.1:9/auth")
                .webhook_secret("s".repeat(32))
        }),
    ];
    for (login, builder) in logins {
        let refused = builder(Config::builder().allow_origin("*"))
            .build()
            .expect_err(login);
        assert_eq!(refused.setting(), "allow_origin", "{login}: {refused}");
        assert!(refused.reason().contains("named origins"), "{refused}");
        // Named origins are what a login needs.
        assert!(
            builder(Config::builder().allow_origin(SHOP))
                .build()
                .is_ok()
        );
    }
    // Tokens are not ambient: a page must hold its token, so any origin may use them.
    let tokens = Config::builder()
        .token_secret("t".repeat(32))
        .allow_origin("*")
        .build();
    assert!(tokens.is_ok(), "{tokens:?}");
}

#[tokio::test]
async fn a_foreign_page_with_the_users_cookie_gets_no_ticket() {
    let server = shop_chat().await;
    let cookie = ("cookie", "session=ann");
    for forged in ["https://evil.example", "null"] {
        let (status, body, head) = ask_ticket(&server, &[("origin", forged), cookie]).await;
        assert_eq!(status, 403, "Origin: {forged}: {body}");
        assert!(!body.contains("tickets"), "Origin: {forged}: {body}");
        assert!(
            !head.contains("access-control-allow"),
            "Origin: {forged}: {head}"
        );
    }
    // The shop's own page gets its user's tickets, readable there and only there.
    let (status, body, head) = ask_ticket(&server, &[("origin", SHOP), cookie]).await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["tickets"].as_object().map(|t| t.len()), Some(4));
    assert!(
        head.contains(&format!("access-control-allow-origin: {SHOP}\r\n")),
        "{head}"
    );
    assert!(
        head.contains("access-control-allow-credentials: true"),
        "{head}"
    );
    assert!(
        head.contains("access-control-expose-headers: retry-after"),
        "{head}"
    );

    // The preflight allows what the route reads, not whatever it is asked for.
    let ((status, _), head) = http_exchange(
        server.http,
        "OPTIONS",
        "/wtchat/ticket",
        &[
            ("origin", SHOP),
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "x-evil, authorization"),
        ],
        None,
    )
    .await;
    let head = head.to_lowercase();
    assert_eq!(status, 204, "{head}");
    assert!(
        head.contains("access-control-allow-methods: post\r\n"),
        "{head}"
    );
    assert!(
        head.contains("access-control-allow-headers: authorization\r\n"),
        "{head}"
    );
    assert!(!head.contains("x-evil"), "{head}");
    // A foreign page's preflight is refused.
    let ((status, _), head) = http_exchange(
        server.http,
        "OPTIONS",
        "/wtchat/ticket",
        &[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "POST"),
        ],
        None,
    )
    .await;
    assert_eq!(status, 403);
    assert!(
        !head.to_lowercase().contains("access-control-allow"),
        "{head}"
    );
    server.stop().await;
}

#[tokio::test]
async fn an_opaque_origin_is_never_named_even_where_any_origin_may_connect() {
    // Tokens alone may be offered to every origin.
    let server = start_with(|c| c.token_secret("t".repeat(32)).allow_origin("*")).await;
    // A sandboxed frame of any site says `Origin: null`.
    for (origin, named) in [("null", false), ("https://anyone.example", true)] {
        let ((status, _), head) = http_exchange(
            server.http,
            "POST",
            "/wtchat/poll",
            &[("origin", origin)],
            None,
        )
        .await;
        assert_eq!(status, 200, "Origin: {origin}: {head}");
        let head = head.to_lowercase();
        assert_eq!(
            head.contains(&format!("access-control-allow-origin: {origin}\r\n")),
            named,
            "Origin: {origin}: {head}"
        );
        assert!(
            !head.contains("access-control-allow-origin: null"),
            "{head}"
        );
    }
    server.stop().await;
}

/// The token secret of [`counting_user_ids_finds_nobody_behind_a_sender_id`].
const SECRET: &str = "tokens-are-signed-with-32-bytes-or-more";

/// A token for user `user` on a server with `secret`.
fn token(secret: &str, user: &str) -> String {
    mint(
        secret.as_bytes(),
        &Claims {
            sub: user.into(),
            name: user.into(),
            rooms: vec!["*".into()],
            exp: unix_now() + 600,
        },
    )
}

/// A WebSocket client of user `user` (also its name), with a token made with `secret`.
async fn logged_in(server: &TestServer, secret: &str, user: &str) -> Client {
    let query = format!("?token={}", token(secret, user));
    Client::ws_request(server, &query, &[]).await.unwrap()
}

/// The public sender id of user `user` on `server` (tokens made with `secret`), as its own
/// `joined` tells it.
async fn sender_of(server: &TestServer, secret: &str, user: &str) -> Value {
    let (joined, _) = logged_in(server, secret, user)
        .await
        .join("lobby", user)
        .await;
    joined["you"]["sender"].clone()
}

#[tokio::test]
async fn counting_user_ids_finds_nobody_behind_a_sender_id() {
    let server = start_with(|c| c.token_secret(SECRET)).await;
    let mut bob = logged_in(&server, SECRET, "7").await;
    bob.join("lobby", "Bob").await;
    let mut ann = logged_in(&server, SECRET, "42").await;
    ann.join("lobby", "Ann").await;
    ann.say("lobby", "hello", "m1").await;
    let message = bob
        .next_matching("Ann's message", |f| f["text"] == "hello")
        .await;
    let sender = message["sender"].as_str().unwrap().to_string();

    // What the attacker ran: the digest of "u:" and each user id, against the id.
    let found = std::process::Command::new("python3")
        .args([
            "-c",
            "import base64,hashlib,sys\n\
             for n in range(100000):\n\
             \x20   d = hashlib.sha256(f'u:{n}'.encode()).digest()[:12]\n\
             \x20   if base64.urlsafe_b64encode(d).rstrip(b'=').decode() == sys.argv[1]:\n\
             \x20       print(n); break\n\
             else:\n\
             \x20   print('nobody')",
        ])
        .arg(&sender)
        .output()
        .unwrap();
    assert!(found.status.success(), "{found:?}");
    assert_eq!(String::from_utf8_lossy(&found.stdout).trim(), "nobody");

    // Every node with the same token secret names Ann alike; a server with another does not.
    let node = start_with(|c| c.token_secret(SECRET)).await;
    assert_eq!(sender_of(&node, SECRET, "42").await, json!(sender));
    let other = "another-secret-of-thirty-two-bytes-at-least";
    let elsewhere = start_with(move |c| c.token_secret(other)).await;
    assert_ne!(sender_of(&elsewhere, other, "42").await, json!(sender));
    for server in [server, node, elsewhere] {
        server.stop().await;
    }
}

/// Sends `head` (a request head, without its final blank line) and then `body` in pieces,
/// reading the answer meanwhile (a server may answer before the body is all sent, and close
/// the connection): the status and head of the answer, within the deadline.
async fn send_streaming(
    server: &TestServer,
    head: &str,
    pieces: Vec<Vec<u8>>,
    pause: Duration,
) -> (u16, String) {
    let (mut read, mut write) = TcpStream::connect(server.http).await.unwrap().into_split();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // A reset after the answer is how a server drops an upload it refused.
        while let Ok(n) = read.read(&mut buf).await {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            if got.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        got
    });
    let head = format!("{head}Host: {}\r\n\r\n", server.http);
    let writer = tokio::spawn(async move {
        if write.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        for piece in pieces {
            tokio::time::sleep(pause).await;
            if write.write_all(&piece).await.is_err() {
                return;
            }
        }
        // Keep the connection open, sending nothing more: a slow client.
        tokio::time::sleep(DEADLINE * 2).await;
    });
    let got = tokio::time::timeout(DEADLINE, reader)
        .await
        .expect("an answer before the deadline")
        .unwrap();
    writer.abort();
    let text = String::from_utf8_lossy(&got).to_lowercase();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

/// A chunked body of `total` bytes in chunks of `chunk`, blank lines (no frames) for a post.
fn chunked(total: usize, chunk: usize) -> Vec<Vec<u8>> {
    let mut pieces = Vec::new();
    let mut left = total;
    while left > 0 {
        let n = left.min(chunk);
        let mut piece = format!("{n:x}\r\n").into_bytes();
        piece.extend(std::iter::repeat_n(b'\n', n));
        piece.extend_from_slice(b"\r\n");
        pieces.push(piece);
        left -= n;
    }
    pieces.push(b"0\r\n\r\n".to_vec());
    pieces
}

#[tokio::test]
async fn bodies_larger_than_a_route_needs_are_refused_and_slow_ones_hold_nothing() {
    const API_KEY: &str = "the-backend-presents-this-32-byte-key";
    let server = start_with(|c| {
        c.api_key(API_KEY)
            .auth(|_| async { Ok::<_, Refusal>(Identity::new("42", "Ann")) })
    })
    .await;
    let mut bystander = Client::ws(&server).await;
    bystander.join("lobby", "Bystander").await;
    let sse = Client::sse(&server).await;
    let post = sse.post_url().to_string();
    let (_, config) = server.get("/wtchat/config").await;
    let config: Value = serde_json::from_str(&config).unwrap();
    // 64 frames of the default 16 KiB, up to 1 MiB.
    assert_eq!(config["limits"]["maxPostBytes"], 1 << 20, "{config}");
    let auth = format!("Bearer {API_KEY}");

    // Declared too large: refused at once, before a byte of the body is read, the upload
    // left hanging as a slow client leaves it.
    let declared = [
        ("/wtchat/ticket", 2048),
        ("/wtchat/poll", 2048),
        (post.as_str(), (1 << 20) + 1),
        ("/wtchat/api/publish", 10_000_000),
    ];
    for (path, length) in declared {
        let started = Instant::now();
        let head = format!(
            "POST {path} HTTP/1.1\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\n\
             Content-Length: {length}\r\n"
        );
        let (status, answer) =
            send_streaming(&server, &head, vec![b"{\"room\":".to_vec()], Duration::ZERO).await;
        assert_eq!(status, 413, "{path} with {length} bytes declared: {answer}");
        assert!(
            started.elapsed() < DEADLINE / 2,
            "{path}: answered without waiting"
        );
    }
    // Chunked, with no length declared: refused once past the limit.
    let head = |path: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\n\
             Transfer-Encoding: chunked\r\n"
        )
    };
    let over = [
        (post.as_str(), (1 << 20) + 64 * 1024),
        ("/wtchat/api/publish", 64 * 1024),
    ];
    for (path, total) in over {
        let pieces = chunked(total, 16 * 1024);
        let (status, answer) =
            send_streaming(&server, &head(path), pieces, Duration::from_millis(1)).await;
        assert_eq!(status, 413, "{path} with {total} bytes chunked: {answer}");
    }
    // Within the limits, everything works as before, for everyone.
    let (status, _) = common::http_request(
        server.http,
        "POST",
        "/wtchat/api/publish",
        &[("authorization", &auth)],
        Some(&json!({"room": "lobby", "from": "Shop", "text": "é".repeat(4000)})),
    )
    .await;
    assert_eq!(status, 200);
    let seen = bystander
        .next_matching("the shop's message", |f| f["from"] == "Shop")
        .await;
    assert_eq!(seen["text"].as_str().map(|t| t.chars().count()), Some(4000));
    let (status, body, _) = ask_ticket(&server, &[]).await;
    assert_eq!(status, 200, "{body}");
    let frames: Vec<String> = (0..64)
        .map(|i| json!({"type": "ping", "pad": "x".repeat(16 * 1024 - 40), "i": i}).to_string())
        .collect();
    let lines: Vec<&[u8]> = frames.iter().take(63).map(|f| f.as_bytes()).collect();
    assert_eq!(
        sse.post_lines(&lines).await,
        204,
        "63 frames of nearly 16 KiB"
    );
    server.stop().await;
}

/// A backend whose login is down: every call answered 500, and counted.
async fn broken_backend() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let app = axum::Router::new().route(
        "/auth",
        axum::routing::post(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async { axum::http::StatusCode::INTERNAL_SERVER_ERROR }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, calls)
}

/// The lines of `log` that contain `what`.
fn lines<'a>(log: &'a str, what: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(what)).collect()
}

/// `wtchat serve`'s log without its colours (ANSI escapes `ESC [ … m`).
fn plain(log: &str) -> String {
    let mut text = String::with_capacity(log.len());
    let mut rest = log;
    while let Some(at) = rest.find("\x1b[") {
        text.push_str(&rest[..at]);
        rest = rest[at..].split_once('m').map_or("", |(_, after)| after);
    }
    text.push_str(rest);
    text
}

#[tokio::test]
async fn a_burst_of_ticket_requests_reaches_the_login_at_its_rate_and_logs_a_line_a_second() {
    const BURST: usize = 300;
    const FAILED: &str = "the auth webhook failed";
    let (backend, calls) = broken_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let mut command = common::serve_command(dir.path());
    command.args(["--engine", "memory", "--auth-webhook"]);
    command.arg(format!("http://{backend}/auth"));
    command.args(["--webhook-secret", &"w".repeat(32)]);
    let server = Serve::start(command, dir.path()).await;

    // 300 at once, as the attacker sent them (the default rate: 20 at once, 5 a second).
    let started = Instant::now();
    let asks = (0..BURST).map(|_| {
        http_exchange(
            server.http,
            "POST",
            "/wtchat/ticket",
            &[("cookie", "session=x")],
            None,
        )
    });
    let answers = futures_util::future::join_all(asks).await;
    let took = started.elapsed().as_secs_f64();
    let allowed = 20 + (5.0 * took).ceil() as usize;
    let refused: Vec<&String> = answers
        .iter()
        .filter(|((status, _), _)| *status == 429)
        .map(|(_, head)| head)
        .collect();
    let failed = answers
        .iter()
        .filter(|((status, _), _)| *status == 401)
        .count();
    assert_eq!(failed + refused.len(), BURST, "401 or 429, nothing else");
    assert!(
        failed <= allowed,
        "{failed} reached the login in {took:.2} s"
    );
    assert!(failed >= 20, "a burst of 20 is let through: {failed}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        failed,
        "one call per ticket asked"
    );
    for head in &refused {
        let head = head.to_lowercase();
        let after: u64 = head
            .split("\r\nretry-after: ")
            .nth(1)
            .and_then(|rest| rest.split("\r\n").next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("a 429 says when to come back: {head}"));
        assert!((1..=2).contains(&after), "{head}");
    }

    // The log: a line a second at most of each, not one per request.
    let log = plain(&server.log());
    let most = took.ceil() as usize + 1;
    let warned = lines(&log, FAILED);
    assert!(!warned.is_empty() && warned.len() <= most, "{warned:#?}");
    let limited = lines(&log, "ticket refused: too many");
    assert!(!limited.is_empty() && limited.len() <= most, "{limited:#?}");

    // Once the wait is over the login is asked again, and its line (the last second's
    // first) says how many failures were not logged: every line counts what it left out.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let ((status, _), _) = http_exchange(
        server.http,
        "POST",
        "/wtchat/ticket",
        &[("cookie", "session=x")],
        None,
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(calls.load(Ordering::SeqCst), failed + 1);
    let log = plain(&server.log());
    let warned = lines(&log, FAILED);
    let unlogged: usize = warned
        .iter()
        .map(|line| {
            line.split("unlogged=")
                .nth(1)
                .and_then(|rest| rest.split(' ').next())
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or_else(|| panic!("{line}"))
        })
        .sum();
    assert!(warned.len() <= most + 1, "{warned:#?}");
    assert_eq!(warned.len() + unlogged, failed + 1, "{warned:#?}");
}

#[tokio::test]
async fn a_token_is_exchanged_in_a_header_for_single_use_tickets() {
    const SECRET: &str = "a-secret-of-32-bytes-or-more-for-tickets";
    let server = start_with(|c| c.token_secret(SECRET)).await;
    let ann = token(SECRET, "ann");
    // The page's token in a header, never in a URL: four single-use tickets, 30 s each.
    let (status, body, _) =
        ask_ticket(&server, &[("authorization", &format!("Bearer {ann}"))]).await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["expiresIn"], 30);
    let ticket = answer["tickets"]["websocket"].as_str().unwrap().to_owned();
    assert_eq!(answer["tickets"].as_object().unwrap().len(), 4, "{answer}");
    assert!(!ticket.contains(&ann), "a ticket is not the token");
    // The ticket logs in once, as the token's user...
    let mut first = Client::ws_request(&server, &format!("?ticket={ticket}"), &[])
        .await
        .unwrap();
    let (joined, _) = first.join("tickets", "someone else").await;
    assert_eq!(joined["you"]["name"], "ann", "{joined}");
    // ...and never again: copied from a log, it is worth nothing.
    let mut again = Client::ws_request(&server, &format!("?ticket={ticket}"), &[])
        .await
        .unwrap();
    assert_eq!(again.ended().await, common::Ended::Code(4401));
    // No token, or a forged one: 401 and no ticket.
    for headers in [
        vec![],
        vec![(
            "authorization",
            format!("Bearer {}", token("not the secret at all, no", "ann")),
        )],
        vec![("authorization", ann.clone())],
    ] {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, body, _) = ask_ticket(&server, &headers).await;
        assert_eq!(status, 401, "{headers:?}: {body}");
        assert!(!body.contains("tickets"), "{body}");
    }
    // A script may still carry the token itself (proxies log it: the book says so).
    let mut script = Client::ws_request(&server, &format!("?token={ann}"), &[])
        .await
        .unwrap();
    let (joined, _) = script.join("tickets", "x").await;
    assert_eq!(joined["you"]["name"], "ann");
    server.stop().await;
}
