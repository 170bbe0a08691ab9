//! The npm package as a React app uses it: examples/react-chat, built by scripts/client from
//! the packed tarball (`npm pack` of lib/client) with React's development build, where
//! `<StrictMode>` runs every effect twice. Chromium loads it from a host that serves the
//! built app beside the chat, as a Rust host would; two pages chat through `useChat`, one
//! over WebTransport and one over WebSocket. The server counts the connections: strict
//! mode's discarded first attempt must not leave one open, and unmounting the component
//! must close its connection (the room sees the member leave). Without the build (Node.js
//! missing) the test says loudly that it was skipped, and fails under `CI=true`.

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::path::{Path, PathBuf};

use axum::Router;
use axum::extract::Path as UrlPath;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use browser::{Browser, Drive, Page, under_ci};
use common::{TestServer, http_get, start_host};
use serde_json::json;
use wtchat::{Config, Tls};

/// Where scripts/client leaves the example's build.
fn dist() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/react-chat/dist")
}

/// A file of the build, with its content type; 404 for anything else.
async fn built_file(name: &str) -> impl IntoResponse + use<> {
    let allowed = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !name.starts_with('.');
    let file = if name == "index.html" {
        dist().join(name)
    } else {
        dist().join("assets").join(name)
    };
    let content_type = match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        _ => "application/octet-stream",
    };
    match std::fs::read(&file) {
        Ok(bytes) if allowed => Ok(([(header::CONTENT_TYPE, content_type)], bytes)),
        _ => Err(StatusCode::NOT_FOUND),
    }
}

/// The built app at `/app/` (its asset URLs are relative), the chat merged in.
fn host(chat: &wtchat::Chat) -> Router {
    Router::new()
        .route("/app/", get(|| built_file("index.html")))
        .route(
            "/app/assets/{file}",
            get(|UrlPath(file): UrlPath<String>| async move { built_file(&file).await }),
        )
        .merge(chat.router())
}

/// `wtchat_connections{transport="…"}` of the server's metrics.
async fn connections(server: &TestServer, transport: &str) -> f64 {
    let (status, text) = http_get(server.http, "/wtchat/metrics", &[]).await;
    assert_eq!(status, 200, "{text}");
    let sample = format!("wtchat_connections{{transport=\"{transport}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&sample))
        .unwrap_or_else(|| panic!("no {sample} in the metrics:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Waits until the server holds `n` connections over `transport`.
async fn wait_connections(server: &TestServer, transport: &str, n: f64) {
    let deadline = std::time::Instant::now() + browser::WAIT;
    loop {
        let now = connections(server, transport).await;
        if now == n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{now} {transport} connections, not {n}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// Run before the app's scripts: counts the WebTransport sessions and WebSockets the page
/// opens, and how the sessions end, in `__opened`.
const COUNT_CONNECTIONS: &str = "(() => {
  const opened = (window.__opened = { webtransport: [], websocket: 0 });
  const RealWT = window.WebTransport;
  window.WebTransport = function WebTransport(url, options) {
    const session = new RealWT(url, options);
    const at = opened.webtransport.push('opening') - 1;
    session.ready.then(() => (opened.webtransport[at] = 'ready'), () => (opened.webtransport[at] = 'failed'));
    session.closed.then(() => (opened.webtransport[at] = 'closed'), () => (opened.webtransport[at] = 'closed'));
    return session;
  };
  window.WebTransport.prototype = RealWT.prototype;
  const RealWS = window.WebSocket;
  window.WebSocket = function WebSocket(url, protocols) {
    opened.websocket += 1;
    return new RealWS(url, protocols);
  };
  window.WebSocket.prototype = RealWS.prototype;
  Object.assign(window.WebSocket, { CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3 });
})()";

/// The app's messages: `[from, text]` each.
const MESSAGES: &str = "[...document.querySelectorAll('[data-testid=message]')].map(li => [
    li.querySelector('[data-testid=message-from]').textContent,
    li.querySelector('[data-testid=message-text]').textContent])";

/// The names in the app's member list, sorted.
const MEMBERS: &str =
    "[...document.querySelectorAll('[data-testid=member]')].map(li => li.textContent).sort()";

async fn open<'b>(browser: &'b Browser, server: &TestServer, name: &str, query: &str) -> Page<'b> {
    let page = browser.page(name, 1024, 768, Some(COUNT_CONNECTIONS)).await;
    page.goto(&format!(
        "http://127.0.0.1:{}/app/?room=react&name={name}{query}",
        server.http.port()
    ))
    .await;
    page
}

async fn wait_connected(page: &Page<'_>, transport: &str) {
    page.wait_for(
        &format!("connected over {transport}"),
        &format!(
            "document.querySelector('[data-testid=status]')?.dataset.status === 'connected'
             && document.querySelector('[data-testid=transport]').dataset.transport === '{transport}'"
        ),
    )
    .await;
}

async fn say(page: &Page<'_>, text: &str) {
    page.type_and_enter("[data-testid=input]", text).await;
}

fn assert_no_console_errors(page: &Page<'_>) {
    let errors = page.console_errors();
    assert!(
        errors.is_empty(),
        "[{}] console errors: {errors:#?}",
        page.name
    );
}

#[tokio::test]
async fn a_react_app_chats_through_use_chat_in_strict_mode_and_unmounting_leaves() {
    if !dist().join("index.html").is_file() {
        assert!(
            !under_ci(),
            "examples/react-chat/dist is missing and CI=true: scripts/client builds it"
        );
        eprintln!(
            "\n*** SKIPPED: examples/react-chat is not built (scripts/client, which needs \
             Node.js): the React test did not run ***\n"
        );
        return;
    }
    let Some(browser) = Browser::launch_or_skip("a_react_app_chats_through_use_chat").await else {
        return;
    };
    let server = start_host(
        |http, webtransport, dir| {
            Config::builder()
                .http(http)
                .webtransport(webtransport)
                .tls(Tls::Dev { dir })
                .metrics(true)
                .build()
        },
        host,
    )
    .await;

    // Ann's page with the client's own choice (WebTransport first), Bob's on WebSocket.
    let ann = open(&browser, &server, "ann", "").await;
    wait_connected(&ann, "webtransport").await;
    let bob = open(&browser, &server, "bob", "&transport=websocket").await;
    wait_connected(&bob, "websocket").await;
    for page in [&ann, &bob] {
        page.wait_for(
            "both members listed",
            &format!("JSON.stringify({MEMBERS}) === '[\"ann\",\"bob\"]'"),
        )
        .await;
        assert_eq!(
            page.eval("document.querySelector('[data-testid=member-count]').textContent")
                .await,
            "2"
        );
    }
    // Strict mode mounted each chat twice; the first attempt was aborted before it opened a
    // transport, so each page holds one connection, and the server sees exactly two.
    assert_eq!(
        ann.eval("window.__opened").await,
        json!({"webtransport": ["ready"], "websocket": 0})
    );
    assert_eq!(
        bob.eval("window.__opened").await,
        json!({"webtransport": [], "websocket": 1})
    );
    wait_connections(&server, "webtransport", 1.0).await;
    wait_connections(&server, "websocket", 1.0).await;
    let members = server.chat.members("react").await.unwrap();
    let mut names: Vec<_> = members.iter().map(|m| m.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["ann", "bob"]);

    // They chat; each sees both messages, in order, text as typed (React escapes it).
    say(&ann, "hello from <b>React</b> over WebTransport").await;
    bob.wait_for("ann's message", &format!("{MESSAGES}.length === 1"))
        .await;
    say(&bob, "hi ann, WebSocket here").await;
    let want = json!([
        ["ann", "hello from <b>React</b> over WebTransport"],
        ["bob", "hi ann, WebSocket here"]
    ]);
    for page in [&ann, &bob] {
        page.wait_for("both messages", &format!("{MESSAGES}.length === 2"))
            .await;
        assert_eq!(page.eval(MESSAGES).await, want, "[{}]", page.name);
    }

    // Ann unmounts the chat: her session closes, and Bob sees her leave.
    ann.click("[data-testid=toggle]").await;
    ann.wait_for(
        "the chat unmounted",
        "document.querySelector('[data-testid=outside]') !== null",
    )
    .await;
    wait_connections(&server, "webtransport", 0.0).await;
    bob.wait_for(
        "ann gone from bob's list",
        &format!("JSON.stringify({MEMBERS}) === '[\"bob\"]'"),
    )
    .await;
    ann.wait_for(
        "ann's session closed",
        "JSON.stringify(window.__opened.webtransport) === '[\"closed\"]'",
    )
    .await;

    // Mounted again: one new session, the room's history on screen, both members back.
    ann.click("[data-testid=toggle]").await;
    wait_connected(&ann, "webtransport").await;
    ann.wait_for("the history again", &format!("{MESSAGES}.length === 2"))
        .await;
    assert_eq!(ann.eval(MESSAGES).await, want);
    bob.wait_for(
        "ann back in bob's list",
        &format!("JSON.stringify({MEMBERS}) === '[\"ann\",\"bob\"]'"),
    )
    .await;
    wait_connections(&server, "webtransport", 1.0).await;
    assert_eq!(
        ann.eval("window.__opened.webtransport").await,
        json!(["closed", "ready"])
    );

    // The host edits Ann's message and deletes Bob's: the hook's list follows on both pages.
    assert!(
        server
            .chat
            .edit_message("react", 1, "hello, edited")
            .await
            .unwrap()
    );
    let edited = json!([["ann", "hello, edited"], ["bob", "hi ann, WebSocket here"]]);
    for page in [&ann, &bob] {
        page.wait_for(
            "the edit on screen",
            &format!(
                "JSON.stringify({MESSAGES}) === {}",
                json!(edited.to_string())
            ),
        )
        .await;
    }
    assert!(server.chat.delete_message("react", 2).await.unwrap());
    let after = json!([["ann", "hello, edited"]]).to_string();
    for page in [&ann, &bob] {
        page.wait_for(
            "the deletion on screen",
            &format!("JSON.stringify({MESSAGES}) === {}", json!(after)),
        )
        .await;
    }

    assert_no_console_errors(&ann);
    assert_no_console_errors(&bob);
    server.stop().await;
}
