//! The headline promise, run for real: a PHP site beside the `wtchat` server. The book's
//! own PHP snippet (read from docs/src/backend.md, not copied) is served by PHP's built-in server
//! (Debian's `php-cli`) on another origin than the chat server, minting an HS256 token with
//! `hash_hmac` from `WTCHAT_TOKEN_SECRET`; Chromium loads that page over each transport in
//! turn (WebTransport, then with the newer ones deleted: WebSocket, SSE, long polling). The
//! server lists the user the token names, the page shows the room's history and a message
//! a Rust client sends, as text, and nothing goes to the console. The book's PHP message
//! webhook runs the same way, as the chat's message webhook. Without PHP the tests skip
//! loudly (and fail under `CI=true`).

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use browser::{Browser, Drive, EVERY_TRANSPORT, under_ci};
use common::{Client, TestServer, free_port, http_get, start_with};
use serde_json::json;

/// The token secret the chat server checks and the PHP page signs with (at least 32 bytes).
const SECRET: &str = "php-host-test-secret-0123456789abcdef";

/// The webhook secret the chat server signs with and the book's PHP webhook checks.
const WEBHOOK_SECRET: &str = "php-webhook-test-secret-0123456789abcdef";

/// The user the page's preamble stands in for: what a PHP site's session would hold.
const PREAMBLE: &str = "<?php $user = (object)['id' => 42, 'name' => 'Ann']; ?>\n";

/// The book's ```php block, with the chat server it names (`127.0.0.1:8080`) replaced by
/// `chat`.
fn readme_php(chat: &str) -> String {
    let block = common::book_block("backend", "php", "hash_hmac");
    assert!(block.contains("127.0.0.1:8080"), "{block}");
    block.replace("127.0.0.1:8080", chat)
}

/// PHP's built-in web server serving one directory; stopped on drop.
struct PhpServer {
    _child: common::KillOnDrop,
    dir: tempfile::TempDir,
}

impl PhpServer {
    /// What PHP logged (requests, warnings), for failure messages.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("php.log")).unwrap_or_default()
    }
}

/// Whether PHP is installed; when not, says loudly that the book's `what` did not run
/// (a failure under CI, where scripts/test installs it).
fn php_or_skip(what: &str) -> bool {
    let installed = Command::new("php")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        assert!(
            !under_ci(),
            "php is required under CI (scripts/test installs php-cli)"
        );
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: php not installed: the book's {what} did not run \
             (apt-get install php-cli, or run scripts/test) ***"
        );
    }
    installed
}

/// `php -S 127.0.0.1:port` serving `files` (path, content), with the token and webhook
/// secrets in its environment as the book says to run it.
async fn php_server(port: u16, files: &[(&str, &str)]) -> PhpServer {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    for (path, content) in files {
        let path = site.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    // A site has its icon: without one, the browser's request for it is a 404 error in the
    // page's console, which would hide a real error there.
    std::fs::write(site.join("favicon.ico"), b"").unwrap();
    let log = std::fs::File::create(dir.path().join("php.log")).unwrap();
    let child = Command::new("php")
        .args(["-S", &format!("127.0.0.1:{port}"), "-t"])
        .arg(&site)
        .env("WTCHAT_TOKEN_SECRET", SECRET)
        .env("WTCHAT_WEBHOOK_SECRET", WEBHOOK_SECRET)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("php starts");
    let php = PhpServer {
        _child: common::KillOnDrop(child),
        dir,
    };
    common::wait_listening(port, "php -S", || php.log()).await;
    php
}

/// The server's open connections by transport, from `/wtchat/metrics`.
async fn connections(server: &TestServer) -> Vec<(String, f64)> {
    let (status, text) = http_get(server.http, "/wtchat/metrics", &[]).await;
    assert_eq!(status, 200, "{text}");
    ["webtransport", "websocket", "sse", "longpoll"]
        .into_iter()
        .map(|t| {
            let name = format!("wtchat_connections{{transport=\"{t}\"}} ");
            let line = text
                .lines()
                .find_map(|l| l.strip_prefix(&name))
                .unwrap_or_else(|| panic!("no {name} in the metrics:\n{text}"));
            (t.to_string(), line.trim().parse().unwrap())
        })
        .collect()
}

/// Polls `what` on the server side until it is true, for at most the harness's deadline.
async fn wait_until(what: &str, mut ready: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + common::DEADLINE;
    while !ready().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One page load of the book's PHP page on a fresh PHP site and chat server: with
/// `init` run first (deleting what the browser should lack), it must connect over
/// `transport` as the token's user, show the history and a live message as text, and
/// log no error.
async fn php_page_chats_over(browser: &Browser, init: Option<&str>, transport: &str) {
    let php_port = free_port();
    let site = format!("http://127.0.0.1:{php_port}");
    let origin = site.clone();
    let server =
        start_with(move |c| c.token_secret(SECRET).allow_origin(origin).metrics(true)).await;
    let index = format!("{PREAMBLE}{}", readme_php(&server.http.to_string()));
    let php = php_server(php_port, &[("index.php", &index)]).await;

    // Said before the page loads: the room's history, which a user expects to see.
    server
        .chat
        .publish("lobby", "Shop", "Order #42 shipped")
        .await
        .unwrap();

    let page = browser.page(transport, 1024, 768, init).await;
    page.goto(&format!("{site}/")).await;

    // The server names the member after the token PHP signed: Ann, user 42.
    wait_until(&format!("[{transport}] Ann joins the lobby"), async || {
        !server.chat.members("lobby").await.unwrap().is_empty()
    })
    .await;
    let members = server.chat.members("lobby").await.unwrap();
    assert_eq!(members.len(), 1, "{members:?}\n{}", php.log());
    assert_eq!(members[0].name, "Ann", "{members:?}");
    assert_eq!(members[0].user.as_deref(), Some("42"), "{members:?}");
    // Over the transport this browser has, and only that one.
    let open = connections(&server).await;
    let expected: Vec<(String, f64)> = open
        .iter()
        .map(|(t, _)| (t.clone(), if t == transport { 1.0 } else { 0.0 }))
        .collect();
    assert_eq!(open, expected, "[{transport}] connections by transport");

    page.wait_for(
        "the room's history in the list",
        "[...document.querySelectorAll('#messages li')].some(li => li.textContent === 'Shop: Order #42 shipped')",
    )
    .await;

    // A live message from a Rust client (with its own token: the server requires one)
    // shows up, as text (its markup is not markup).
    let bob_token = wtchat::auth::mint(
        SECRET.as_bytes(),
        &wtchat::auth::Claims {
            sub: "7".into(),
            name: "bob".into(),
            rooms: vec!["lobby".into()],
            exp: wtchat::auth::unix_now() + 600,
        },
    );
    let mut bob = Client::ws_request(&server, &format!("?token={bob_token}"), &[])
        .await
        .expect("bob's token is accepted");
    bob.join("lobby", "bob").await;
    let text = "<b>hi</b> from PHP's neighbour & co";
    bob.say("lobby", text, "b1").await;
    page.wait_for(
        "bob's message in the list",
        &format!(
            "[...document.querySelectorAll('#messages li')].some(li => li.textContent === {})",
            json!(format!("bob: {text}"))
        ),
    )
    .await;
    assert_eq!(
        page.eval("document.querySelectorAll('#messages b').length")
            .await,
        json!(0),
        "a message's text became markup"
    );
    assert_eq!(
        page.eval("[...document.querySelectorAll('#messages li')].map(li => li.textContent)")
            .await,
        json!(["Shop: Order #42 shipped", format!("bob: {text}")]),
    );

    let errors = page.console_errors();
    assert!(
        errors.is_empty(),
        "[{transport}] console errors: {errors:#?}\nphp: {}",
        php.log()
    );
}

#[tokio::test]
async fn the_readme_php_page_chats_beside_wtchat_over_every_transport() {
    if !php_or_skip("PHP page") {
        return;
    }
    let Some(browser) =
        Browser::launch_or_skip("the_readme_php_page_chats_beside_wtchat_over_every_transport")
            .await
    else {
        return;
    };
    for (init, transport) in EVERY_TRANSPORT {
        php_page_chats_over(&browser, init, transport).await;
    }
}

/// The book's PHP message webhook (`chat/message.php`, read from docs/src/webhooks.md), served by
/// `php -S` and checking every call's signature with the book's `wtchat_verified`:
/// a link is rejected with its reason, "darn" is rewritten, the rest accepted, as the
/// sender (a protocol client, then the demo page in Chromium) and the room see it; with
/// another secret it refuses every call (403), and the chat, failing closed, refuses the
/// message.
#[tokio::test]
async fn the_readme_php_message_webhook_rejects_rewrites_and_accepts() {
    if !php_or_skip("PHP webhook") {
        return;
    }
    let webhook = common::book_block("webhooks", "php", "chat/message.php");
    let port = free_port();
    let php = php_server(port, &[("chat/message.php", &webhook)]).await;
    let url = format!("http://127.0.0.1:{port}/chat/message.php");
    for (secret, refused) in [(WEBHOOK_SECRET, false), (OTHER_SECRET, true)] {
        let url = url.clone();
        let server = start_with(move |c| c.message_webhook(url).webhook_secret(secret)).await;
        let mut ann = Client::ws(&server).await;
        let mut bob = Client::wt(&server).await;
        ann.join("lobby", "ann").await;
        bob.join("lobby", "bob").await;
        if refused {
            ann.send(json!({"type": "send", "room": "lobby", "text": "hello", "id": "m1"}))
                .await;
            let error = ann.next_of("error").await;
            assert_eq!(
                (&error["code"], &error["id"]),
                (&json!("rejected"), &json!("m1")),
                "{error}\nphp: {}",
                php.log()
            );
            server.stop().await;
            continue;
        }
        assert_eq!(ann.say("lobby", "hello", "m1").await, 1, "{}", php.log());
        ann.send(json!({"type": "send", "room": "lobby",
                        "text": "see http://spam.example", "id": "m2"}))
            .await;
        let error = ann.next_of("error").await;
        assert_eq!(
            (&error["code"], &error["message"], &error["id"]),
            (&json!("rejected"), &json!("no links, please"), &json!("m2"))
        );
        ann.send(json!({"type": "send", "room": "lobby", "text": "Darn it", "id": "m3"}))
            .await;
        let own = ann
            .next_matching("own copy", |f| f["type"] == "message" && f["id"] == "m3")
            .await;
        assert_eq!((&own["seq"], &own["text"]), (&json!(2), &json!("d*rn it")));
        assert_eq!(
            bob.messages("lobby", 2).await,
            [
                (1, "ann".to_string(), "hello".to_string()),
                (2, "ann".into(), "d*rn it".into())
            ]
        );
        // The same in the demo page, as a user types: the link stays on the page marked
        // not sent, with the webhook's reason; the rewritten text is what the page shows.
        if let Some(browser) =
            Browser::launch_or_skip("the_readme_php_message_webhook_rejects_rewrites_and_accepts")
                .await
        {
            let page = browser.page("sender", 1024, 768, None).await;
            page.goto(&format!(
                "http://127.0.0.1:{}/?room=lobby&name=cy",
                server.http.port()
            ))
            .await;
            page.wait_for(
                "connected",
                "document.querySelector('[data-testid=status]').dataset.status === 'connected'",
            )
            .await;
            page.type_and_enter("[data-testid=message-input]", "more at http://spam.example")
                .await;
            page.wait_for(
                "the reason the message was not sent",
                "document.querySelector('[data-testid=pending-message].failed .state')?.textContent
                    === 'not sent: no links, please'",
            )
            .await;
            page.type_and_enter("[data-testid=message-input]", "darn, says cy")
                .await;
            page.wait_for(
                "the rewritten message",
                "[...document.querySelectorAll('[data-testid=message-text]')]
                    .some((p) => p.textContent === 'd*rn, says cy')",
            )
            .await;
            assert_eq!(
                bob.messages("lobby", 1).await,
                [(3, "cy".to_string(), "d*rn, says cy".to_string())],
                "the link never reached the room"
            );
            let errors = page.console_errors();
            assert!(errors.is_empty(), "console errors: {errors:#?}");
        }
        server.stop().await;
    }
}

/// A webhook secret the PHP webhook does not know.
const OTHER_SECRET: &str = "not-the-php-sites-secret-0123456789abcdef";
