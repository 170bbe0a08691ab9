//! A plain axum application — pages of its own, a fake login that sets a cookie — with
//! wtchat mounted beside them, using that login: the chat knows who each user is from the
//! host's cookie, so nobody can speak under another name.
//!
//! Browsers send no cookies on a WebTransport CONNECT; the page's client asks the chat for
//! tickets first (`POST /wtchat/ticket`, cookies included), and the hook below answers that
//! request: the same hook, the same cookie, whatever transport then connects.
//!
//! Run with: `cargo run --example axum_host`, then open http://localhost:3000 (log in as
//! two different names in two browser profiles).

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::Router;
use axum::extract::Query;
use axum::http::header;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Deserialize;
use wtchat::{Chat, Config, ConfigError, Identity};

/// The chat's configuration for this host: identities come from the `user` cookie set by
/// `/login`, and messages containing "spam" are refused.
pub fn chat_config(
    http: SocketAddr,
    webtransport: SocketAddr,
    certs: PathBuf,
) -> Result<Config, ConfigError> {
    Config::builder()
        .http(http)
        .webtransport(webtransport)
        .tls(wtchat::Tls::Dev { dir: certs })
        // The host has its own `/`.
        .demo_page(false)
        .auth(|request| async move {
            let user = request
                .cookie("user")
                .filter(|u| !u.is_empty())
                .ok_or("log in first")?;
            Ok(Identity::new(&user, display_name(&user)))
        })
        .message_hook(|message| {
            if message.text.to_lowercase().contains("spam") {
                Err("no spam here".into())
            } else {
                Ok(())
            }
        })
        .build()
}

/// The host's whole app: its own routes, and the chat's merged in.
pub fn app(chat: &Chat) -> Router {
    Router::new()
        .route("/", get(home))
        .route("/login", get(login))
        .route("/logout", get(logout))
        .route("/health", get(|| async { "ok" }))
        .merge(chat.router())
}

/// "ann" → "Ann".
fn display_name(user: &str) -> String {
    let mut chars = user.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

#[derive(Deserialize)]
struct Login {
    name: String,
}

/// A fake login: whoever you say you are. A real app checks a password.
async fn login(Query(login): Query<Login>) -> Response {
    let user: String = login
        .name
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(24)
        .collect();
    (
        [(
            header::SET_COOKIE,
            format!("user={user}; Path=/; HttpOnly; SameSite=Lax"),
        )],
        Redirect::to("/"),
    )
        .into_response()
}

async fn logout() -> Response {
    (
        [(header::SET_COOKIE, "user=; Path=/; Max-Age=0".to_string())],
        Redirect::to("/"),
    )
        .into_response()
}

async fn home(headers: axum::http::HeaderMap) -> Html<String> {
    let user = headers
        .get(header::COOKIE)
        .and_then(|c| c.to_str().ok())
        .and_then(|c| {
            c.split(';')
                .filter_map(|p| p.trim().split_once('='))
                .find(|(k, _)| *k == "user")
                .map(|(_, v)| v.to_string())
        })
        // Only what /login could have set: the name goes into the page.
        .filter(|u| !u.is_empty() && u.chars().all(|c| c.is_ascii_alphanumeric()));
    let body = match user {
        None => r#"<h1>Example shop</h1>
<form action="/login"><label>Your name <input name="name" required></label>
<button>Log in</button></form>"#
            .to_string(),
        Some(user) => format!(
            r#"<h1>Example shop</h1><p>Logged in as {user}. <a href="/logout">Log out</a></p>
<ul id="messages"></ul>
<form id="send"><input id="text" aria-label="Message" autocomplete="off"><button>Send</button></form>
<script type="module">
  import {{ connect }} from "/wtchat/wtchat.js";
  // Nothing but the room: the client asks the chat for tickets with this page's cookies,
  // and the hook below says who this is, over WebTransport as over WebSocket.
  const chat = await connect({{ room: "lobby" }});
  window.chat = chat; // for the console (and the browser tests)
  const list = document.getElementById("messages");
  const show = (m) => {{
    const li = document.createElement("li");
    li.textContent = `${{m.from}}: ${{m.text}}`;
    list.append(li);
  }};
  chat.messages.forEach(show);
  chat.on("message", show);
  document.getElementById("send").addEventListener("submit", (e) => {{
    e.preventDefault();
    const input = document.getElementById("text");
    chat.send(input.value).catch((err) => alert(err.message));
    input.value = "";
  }});
</script>"#
        ),
    };
    Html(format!(
        "<!doctype html><meta charset=utf-8><title>Example shop</title><link rel=icon href=\"data:,\">{body}"
    ))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().init();
    let http: SocketAddr = "127.0.0.1:3000".parse()?;
    let config = chat_config(http, "[::]:4433".parse()?, PathBuf::from("certs"))?;
    let chat = Chat::new(config).await?;
    let listener = tokio::net::TcpListener::bind(http).await?;
    println!("open http://localhost:3000");
    // One signal stops both the host's server and the chat.
    let stop = tokio_util::sync::CancellationToken::new();
    let ctrl_c = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        ctrl_c.cancel();
    });
    let chat_task = tokio::spawn(chat.clone().run(stop.clone().cancelled_owned()));
    axum::serve(listener, app(&chat))
        .with_graceful_shutdown(stop.cancelled_owned())
        .await?;
    let _ = chat_task.await;
    Ok(())
}
