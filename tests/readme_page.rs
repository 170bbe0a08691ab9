//! The book's "on any page" snippet, run as a user pastes it: the ```html block (read from
//! docs/src/client.md, not copied) is the whole page of a site on another origin than the chat
//! server, and Chromium loads it over each transport in turn (WebTransport, then with the
//! newer ones deleted: WebSocket, SSE, long polling). The page shows the room's history,
//! then its own "hello" once the server numbered it; the server lists Ann; when the server
//! drops the connection, the page's status log says so and then that it is back over the
//! same transport; nothing goes to the console as an error.

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::sync::{Arc, Mutex};

use axum::response::Html;
use browser::{Browser, Drive, EVERY_TRANSPORT};
use common::start_with;
use serde_json::json;

/// The book's ```html block, with the chat server it names (`localhost:8080`) replaced by
/// `chat`.
fn readme_page(chat: &str) -> String {
    let block = common::book_block("client", "html", "chat.send(\"hello\")");
    assert!(block.contains("http://localhost:8080"), "{block}");
    block.replace("localhost:8080", chat)
}

/// A site on a free port of its own serving whatever `page` holds at `/` (and an empty
/// icon, so the browser's request for one is no error in the console); its origin. The page
/// is set later: it names the chat server, which must allow the site's origin first.
async fn site(page: Arc<Mutex<String>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new()
        .route(
            "/",
            axum::routing::get(move || async move { Html(page.lock().unwrap().clone()) }),
        )
        .route("/favicon.ico", axum::routing::get(|| async { "" }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://localhost:{port}")
}

#[tokio::test]
async fn the_readme_snippet_chats_on_a_page_of_another_site_over_every_transport() {
    let Some(browser) = Browser::launch_or_skip(
        "the_readme_snippet_chats_on_a_page_of_another_site_over_every_transport",
    )
    .await
    else {
        return;
    };
    for (init, transport) in EVERY_TRANSPORT {
        let page = Arc::new(Mutex::new(String::new()));
        let origin = site(page.clone()).await;
        let allowed = origin.clone();
        let server = start_with(move |c| c.allow_origin(allowed)).await;
        *page.lock().unwrap() = readme_page(&format!("localhost:{}", server.http.port()));
        server
            .chat
            .publish("lobby", "Shop", "Order #42 shipped")
            .await
            .unwrap();

        let page = browser.page(transport, 1024, 768, init).await;
        page.goto(&format!("{origin}/")).await;
        let shown = page
            .wait_for(
                "the history, then hello",
                "(() => { const shown = [...document.querySelectorAll('#messages li')]
                    .map(li => li.textContent);
                  return shown.length >= 2 && shown; })()",
            )
            .await;
        assert_eq!(
            shown,
            json!(["Shop: Order #42 shipped", "Ann: hello"]),
            "[{transport}]"
        );
        let members = server.chat.members("lobby").await.unwrap();
        assert_eq!(
            members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
            ["Ann"],
            "[{transport}]"
        );
        // The snippet logs the status as it changes: the server drops the connection
        // (4002: reconnect), and the page logs that, then that it is back, and where.
        assert!(
            server
                .chat
                .reconnect_member("lobby", members[0].id)
                .await
                .unwrap()
        );
        let want = ["reconnecting".to_string(), format!("connected {transport}")];
        let deadline = tokio::time::Instant::now() + common::DEADLINE;
        loop {
            let logged: Vec<String> = page
                .console()
                .into_iter()
                .map(|e| e.text.trim().to_string())
                .collect();
            if logged == want {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline && logged.len() < 2,
                "[{transport}] the status log: {logged:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let errors = page.console_errors();
        assert!(
            errors.is_empty(),
            "[{transport}] console errors: {errors:#?}"
        );
        server.stop().await;
    }
}
