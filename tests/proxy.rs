//! Behind a real reverse proxy, as the book tells it: Debian's nginx, started here on a
//! free port with the book's own `location` block (read from docs/src/proxy.md, not copied), in
//! front of a server; a Chromium page loaded through the proxy chats over the proxied
//! WebSocket with a client connected directly, and the per-address cap counts the addresses
//! the proxy forwards. And in front of two nodes sharing Redis, nginx taking turns between
//! them request by request (no sticky sessions): Chromium pages on SSE and on long polling
//! chat with clients of both nodes. Mounted under a path prefix as the book's text says,
//! pages on SSE and long polling chat through it; behind a proxy that buffers the event
//! stream, a page falls back to long polling. The book's access log keeps no token or
//! ticket of the URLs that carry them. Without nginx (or redis-server) the tests skip loudly
//! (and fail under `CI=true`).

#[path = "common/browser.rs"]
mod browser;
mod common;
#[path = "common/redis.rs"]
mod redis;

use std::path::Path;
use std::process::{Command, Stdio};

use browser::{Browser, DemoPage, Drive, NO_EVENT_SOURCE, NO_STREAMS};
use common::{Client, free_port, start_with};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// The book's nginx `location` block, for an upstream at `upstream` (the book's says
/// `127.0.0.1:8080`).
fn readme_location(upstream: &str) -> String {
    let block = common::book_block("proxy", "nginx", "proxy_pass");
    assert!(block.contains("127.0.0.1:8080"), "{block}");
    block.replace("127.0.0.1:8080", upstream)
}

/// Whether nginx is here; without it the test says it skips (and fails under `CI=true`).
fn nginx_or_skip() -> bool {
    if nginx_path().is_some() {
        return true;
    }
    assert!(
        std::env::var("CI").is_err(),
        "nginx is required under CI (scripts/test installs it)"
    );
    eprintln!("SKIPPED: nginx is not installed (run scripts/test)");
    false
}

/// The book's block mounted under `prefix` (`/chat`) as its text says: `location
/// /chat/wtchat/`, `proxy_pass` to the upstream's `/wtchat/`, and `X-Forwarded-Prefix`.
fn readme_location_under(prefix: &str, upstream: &str) -> String {
    let block = readme_location(upstream);
    let under = block
        .replacen(
            "location /wtchat/ {",
            &format!("location {prefix}/wtchat/ {{"),
            1,
        )
        .replacen(
            &format!("proxy_pass http://{upstream};"),
            &format!("proxy_pass http://{upstream}/wtchat/;"),
            1,
        )
        .replacen(
            "    proxy_read_timeout",
            &format!("    proxy_set_header X-Forwarded-Prefix {prefix};\n    proxy_read_timeout"),
            1,
        );
    assert_eq!(under.lines().count(), block.lines().count() + 1, "{block}");
    assert!(
        under.contains(&format!("location {prefix}/wtchat/")),
        "{under}"
    );
    assert!(under.contains("/wtchat/;"), "{under}");
    under
}

/// nginx in the foreground with its own prefix directory; stopped on drop.
struct Nginx {
    _child: common::KillOnDrop,
    port: u16,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// What nginx wrote to the book's access log so far.
    fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }
}

fn nginx_path() -> Option<&'static str> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
}

/// Starts nginx on `port` with the book's block in front of `upstreams` (several: nginx
/// takes turns between them, request by request), and the page at `/` from the first (a
/// site serves its own pages; here the demo page stands in).
async fn nginx(port: u16, upstreams: &[String]) -> Nginx {
    let site = format!("location = / {{ proxy_pass http://{}; }}", upstreams[0]);
    nginx_with(
        port,
        upstreams,
        &format!("{site}\n{}", readme_location("chat")),
    )
    .await
}

/// Starts nginx on `port` with `locations`, where `chat` is the upstream of `upstreams`.
async fn nginx_with(port: u16, upstreams: &[String], locations: &str) -> Nginx {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let servers: String = upstreams.iter().map(|u| format!("server {u}; ")).collect();
    // The book's log format, and its log written here.
    let log_format = common::book_block("proxy", "nginx", "log_format wtchat");
    let locations = locations.replace("/var/log/nginx/access.log", &format!("{d}/access.log"));
    let conf = format!(
        "daemon off; master_process off; user root; pid {d}/nginx.pid; error_log {d}/error.log;
events {{}}
http {{
    access_log off;
    {log_format}
    client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
    upstream chat {{ {servers} }}
    server {{
        listen 127.0.0.1:{port};
        {locations}
    }}
}}
"
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
    let child = Command::new(nginx_path().unwrap())
        .args(["-p", &d.to_string(), "-c", &format!("{d}/nginx.conf")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nginx starts");
    common::wait_listening(port, "nginx", || {
        std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
    })
    .await;
    Nginx {
        _child: common::KillOnDrop(child),
        port,
        dir,
    }
}

/// A WebSocket through the proxy from client address `source`: the joined frame of
/// `name` in `room`, or the refusal: `HTTP <status>`, or the code of the error frame that
/// answered the join (`busy`).
async fn ws_via(
    proxy: u16,
    source: &str,
    room: &str,
    name: &str,
) -> Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, String> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let tcp = socket
        .connect(format!("127.0.0.1:{proxy}").parse().unwrap())
        .await
        .unwrap();
    let url = format!("ws://127.0.0.1:{proxy}/wtchat/ws");
    let mut ws = match tokio_tungstenite::client_async(url, tcp).await {
        Ok((ws, _)) => ws,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            return Err(format!("HTTP {}", response.status().as_u16()));
        }
        Err(e) => panic!("{e}"),
    };
    ws.send(Message::text(
        json!({"type":"join","room":room,"name":name}).to_string(),
    ))
    .await
    .unwrap();
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let frame: Value = serde_json::from_str(&text).unwrap();
                if frame["type"] == "error" {
                    return Err(frame["code"].as_str().unwrap().to_owned());
                }
                assert_eq!(frame["type"], "joined", "{frame}");
                return Ok(ws);
            }
            Some(Ok(_)) => {}
            other => panic!("no joined: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_page_through_nginx_chats_over_the_proxied_websocket() {
    if !nginx_or_skip() {
        return;
    }
    let Some(browser) =
        Browser::launch_or_skip("a_page_through_nginx_chats_over_the_proxied_websocket").await
    else {
        return;
    };
    let port = free_port();
    let site = format!("http://127.0.0.1:{port}");
    let site_origin = site.clone();
    let server = start_with(move |c| {
        c.trusted_proxy("127.0.0.1".parse().unwrap())
            .allow_origin(site_origin)
            .max_connections_per_ip(3)
    })
    .await;
    let proxy = nginx(port, &[server.http.to_string()]).await;

    // The configuration, fetched through the proxy, names the proxy, not the backend.
    let (status, body) = common::http_get(
        format!("127.0.0.1:{}", proxy.port).parse().unwrap(),
        "/wtchat/config",
        &[("host", &format!("127.0.0.1:{port}"))],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let config: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        config["websocket"],
        format!("ws://127.0.0.1:{port}/wtchat/ws")
    );

    // A page of the site, loaded through the proxy, without WebTransport: over the proxied
    // WebSocket it chats with a client connected directly over WebTransport.
    let page = browser
        .page("P", 1024, 768, Some("delete window.WebTransport;"))
        .await;
    page.goto(&format!("{site}/?room=proxied&name=pat")).await;
    page.wait_for(
        "connected over the proxied WebSocket",
        "window.chat?.status === 'connected' && window.chat.transport === 'websocket'",
    )
    .await;
    let mut direct = Client::wt(&server).await;
    direct.join("proxied", "dan").await;
    assert_eq!(direct.say("proxied", "hello through nginx", "d1").await, 1);
    page.wait_for(
        "the direct client's message",
        "document.querySelectorAll('[data-testid=message]').length === 1",
    )
    .await;
    page.eval("window.chat.send('and back')").await;
    assert_eq!(
        direct.messages("proxied", 1).await,
        [(2, "pat".to_string(), "and back".to_string())]
    );

    // The per-address cap (3) counts the addresses nginx forwards, not nginx's own: 127.0.0.1
    // holds two (the page through the proxy, the direct client); one more from there is let
    // in, a fourth refused (`busy`, which a browser can read); a client at 127.0.0.2 is
    // served all the same.
    let second = ws_via(proxy.port, "127.0.0.1", "proxied", "second").await;
    assert!(second.is_ok());
    assert_eq!(
        ws_via(proxy.port, "127.0.0.1", "proxied", "third")
            .await
            .err()
            .as_deref(),
        Some("busy")
    );
    assert!(
        ws_via(proxy.port, "127.0.0.2", "proxied", "elsewhere")
            .await
            .is_ok()
    );
    assert!(
        page.console_errors().is_empty(),
        "{:?}",
        page.console_errors()
    );
    server.stop().await;
}

/// How many requests node `server` sent on to another node, by kind (`post`, `poll`).
async fn forwarded(server: &common::TestServer, request: &str) -> u64 {
    let (_, metrics) = server.get("/wtchat/metrics").await;
    let sample = format!("wtchat_forwarded_requests_total{{request=\"{request}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(sample.as_str()))
        .map_or(0, |n| n.trim().parse().unwrap())
}

#[tokio::test]
async fn pages_on_sse_and_long_polling_chat_through_nginx_taking_turns_between_two_nodes() {
    const TEST: &str = "pages_on_sse_and_long_polling_chat_through_nginx_taking_turns";
    if !nginx_or_skip() {
        return;
    }
    let Some(redis) = redis::Redis::start_or_skip(TEST, redis::Persistence::None).await else {
        return;
    };
    let Some(browser) = Browser::launch_or_skip(TEST).await else {
        return;
    };
    let port = free_port();
    let site = format!("http://127.0.0.1:{port}");
    let node = async || {
        let (site, url) = (site.clone(), redis.url());
        start_with(move |c| {
            c.engine(url.parse().unwrap())
                .trusted_proxy("127.0.0.1".parse().unwrap())
                .allow_origin(site)
                .metrics(true)
        })
        .await
    };
    let (a, b) = (node().await, node().await);
    let _proxy = nginx(port, &[a.http.to_string(), b.http.to_string()]).await;
    let mut ann = Client::wt(&a).await;
    ann.join("lb", "ann").await;
    let mut bob = Client::ws(&b).await;
    bob.join("lb", "bob").await;

    // SSE first, alone: its stream stays on one node, and nginx sends its posts to each in
    // turn, so that one of every two reaches the other node.
    let eve = browser.page("E", 1024, 768, Some(NO_STREAMS)).await;
    eve.goto(&format!("{site}/?room=lb&name=eve")).await;
    eve.wait_connected("sse").await;
    eve.type_and_enter("[data-testid=message-input]", "eve through nginx")
        .await;
    eve.type_and_enter("[data-testid=message-input]", "eve again")
        .await;
    assert_eq!(
        ann.messages("lb", 2).await,
        [
            (1, "eve".to_string(), "eve through nginx".to_string()),
            (2, "eve".to_string(), "eve again".to_string())
        ]
    );
    assert_eq!(bob.messages("lb", 2).await.len(), 2);
    let posts = forwarded(&a, "post").await + forwarded(&b, "post").await;
    assert!(posts >= 1, "a post reached the node without the stream");

    // Long polling: every other poll reaches the node without the session.
    let pol = browser.page("P", 1024, 768, Some(NO_EVENT_SOURCE)).await;
    pol.goto(&format!("{site}/?room=lb&name=pol")).await;
    pol.wait_connected("longpoll").await;
    pol.type_and_enter("[data-testid=message-input]", "pol through nginx")
        .await;
    assert_eq!(
        bob.messages("lb", 1).await,
        [(3, "pol".to_string(), "pol through nginx".to_string())]
    );
    assert_eq!(ann.messages("lb", 1).await.len(), 1);
    assert_eq!(bob.say("lb", "bob on B", "b1").await, 4);
    assert_eq!(ann.say("lb", "ann on A", "a1").await, 5);
    let want = browser::numbered(&[
        ("eve", "eve through nginx"),
        ("eve", "eve again"),
        ("pol", "pol through nginx"),
        ("bob", "bob on B"),
        ("ann", "ann on A"),
    ]);
    for page in [&eve, &pol] {
        assert_eq!(page.messages(5).await, want, "[{}]", page.label());
    }
    let polls = forwarded(&a, "poll").await + forwarded(&b, "poll").await;
    assert!(polls >= 1, "a poll reached the node without the session");
    eprintln!("sent on to the session's node: {posts} posts, {polls} polls");
    for page in [&eve, &pol] {
        let errors = page.console_errors();
        assert!(errors.is_empty(), "[{}] {errors:?}", page.label());
    }
    a.stop().await;
    b.stop().await;
}

/// A connect of the client, loaded from `server` (the chat's URL under its prefix), to room
/// `prefixed`: its transport and name, then a message sent, answered `[transport, seq]`;
/// or `[code, message]` when it fails.
fn connect_under(server: &str, name: &str) -> String {
    format!(
        r#"(async () => {{
            const {{ connect }} = await import("{server}/wtchat/wtchat.js");
            try {{
                const started = performance.now();
                window.chat = await connect({{ server: "{server}", room: "prefixed", name: "{name}" }});
                window.connectMs = Math.round(performance.now() - started);
                const ack = await window.chat.send("{name} via " + window.chat.transport);
                return [window.chat.transport, ack.seq];
            }} catch (e) {{
                return [e.code, e.message];
            }}
        }})()"#
    )
}

/// Under a path prefix, as the book says to mount it (`location /chat/wtchat/` and
/// `X-Forwarded-Prefix`): pages left with SSE and with long polling are handed their
/// sessions' URLs under the prefix, and chat. And behind a proxy that buffers streamed
/// answers (nginx compressing them, ignoring `X-Accel-Buffering`: gzip holds small events
/// back until its buffer fills), where an SSE stream opens but its events never come, a
/// page lands on long polling by itself.
#[tokio::test]
async fn pages_chat_under_a_path_prefix_and_through_a_proxy_that_buffers_streams() {
    const TEST: &str = "pages_chat_under_a_path_prefix_and_through_a_proxy_that_buffers_streams";
    if !nginx_or_skip() {
        return;
    }
    let Some(browser) = Browser::launch_or_skip(TEST).await else {
        return;
    };
    let port = free_port();
    let site = format!("http://127.0.0.1:{port}");
    let site_origin = site.clone();
    let server = start_with(move |c| {
        c.trusted_proxy("127.0.0.1".parse().unwrap())
            .allow_origin(site_origin)
    })
    .await;
    // The site's own page, the book's block under /chat, and a proxy under /buffered
    // that compresses streamed answers, holding them back until its buffers fill.
    let buffered = readme_location_under("/buffered", "chat").replacen(
        "    proxy_read_timeout",
        "    proxy_buffering on;\n    proxy_ignore_headers X-Accel-Buffering;\n    gzip on;\n    gzip_types text/event-stream;\n    gzip_min_length 1;\n    proxy_read_timeout",
        1,
    );
    let locations = format!(
        "location = / {{ default_type text/html; return 200 '<!doctype html><title>site</title><link rel=icon href=data:,>'; }}\n{}\n{buffered}",
        readme_location_under("/chat", "chat")
    );
    let _proxy = nginx_with(port, &[server.http.to_string()], &locations).await;
    let mut dan = Client::wt(&server).await;
    dan.join("prefixed", "dan").await;

    let chat = format!("{site}/chat");
    let mut pages = Vec::new();
    for (label, init, name, transport) in [
        ("S", NO_STREAMS, "sue", "sse"),
        ("L", NO_EVENT_SOURCE, "lou", "longpoll"),
    ] {
        let page = browser.page(label, 1024, 768, Some(init)).await;
        page.goto(&format!("{site}/")).await;
        let seq = pages.len() + 1;
        assert_eq!(
            page.eval(&connect_under(&chat, name)).await,
            json!([transport, seq]),
            "[{label}] {:?}",
            page.console()
        );
        assert_eq!(
            dan.messages("prefixed", 1).await,
            [(
                seq as u64,
                name.to_string(),
                format!("{name} via {transport}")
            )]
        );
        pages.push(page);
    }
    // The buffering proxy lets the stream open and keeps its events: long polling starts
    // after the fallback's 1.5 s of silence and wins.
    let bea = browser.page("B", 1024, 768, Some(NO_STREAMS)).await;
    bea.goto(&format!("{site}/")).await;
    assert_eq!(
        bea.eval(&connect_under(&format!("{site}/buffered"), "bea"))
            .await,
        json!(["longpoll", 3]),
        "{:?}",
        bea.console()
    );
    let took = bea.eval("window.connectMs").await;
    eprintln!("behind the buffering proxy: connected over long polling in {took} ms");
    pages.push(bea);
    assert_eq!(dan.say("prefixed", "dan to all", "d1").await, 4);
    let want = browser::numbered(&[
        ("sue", "sue via sse"),
        ("lou", "lou via longpoll"),
        ("bea", "bea via longpoll"),
        ("dan", "dan to all"),
    ]);
    for page in &pages {
        let seen = page
            .wait_for(
                "all four messages",
                "window.chat.messages.length === 4 \
                   && window.chat.messages.map((m) => [m.seq, m.from, m.text])",
            )
            .await;
        assert_eq!(
            serde_json::from_value::<Vec<(u64, String, String)>>(seen).unwrap(),
            want,
            "[{}]",
            page.label()
        );
        let errors = page.console_errors();
        assert!(errors.is_empty(), "[{}] {errors:?}", page.label());
    }
    server.stop().await;
}

#[tokio::test]
async fn the_books_proxy_log_keeps_no_token_or_ticket() {
    if !nginx_or_skip() {
        return;
    }
    const SECRET: &str = "a-secret-of-32-bytes-or-more-for-logs";
    let server = start_with(|c| {
        c.trusted_proxy("127.0.0.1".parse().unwrap())
            .token_secret(SECRET)
    })
    .await;
    let proxy = nginx(free_port(), &[server.http.to_string()]).await;
    let token = common::token(SECRET, "u1", "Ann");
    // A client with its token in the URL, as WebSocket clients must carry it, through the
    // proxy; and a request with a ticket in its query.
    let url = format!("ws://127.0.0.1:{}/wtchat/ws?token={token}", proxy.port);
    let mut client = Client::ws_at(&url, &[]).await.expect("the token is taken");
    let (joined, _) = client.join("logged", "whoever").await;
    assert_eq!(joined["you"]["name"], "Ann", "{joined}");
    drop(client);
    let (status, _) = common::http_get(
        format!("127.0.0.1:{}", proxy.port).parse().unwrap(),
        "/wtchat/config?ticket=a-ticket-that-must-not-be-logged",
        &[],
    )
    .await;
    assert_eq!(status, 200);
    // nginx logs a request when it ends: the WebSocket's once it closed.
    let deadline = std::time::Instant::now() + common::DEADLINE;
    let log = loop {
        let log = proxy.access_log();
        if log.contains("GET /wtchat/ws ") && log.contains("GET /wtchat/config ") {
            break log;
        }
        assert!(std::time::Instant::now() < deadline, "not logged: {log}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    for secret in [token.as_str(), "token=", "ticket=", "a-ticket-that-must"] {
        assert!(!log.contains(secret), "{secret:?} is in the log:\n{log}");
    }
    server.stop().await;
}
