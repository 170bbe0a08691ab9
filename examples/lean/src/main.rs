//! The smallest host: an axum app with wtchat merged in, on the memory engine, with no
//! default features. It serves the chat's routes (the demo page too) on a port of its
//! own, WebTransport on another, and prints one line of JSON saying where:
//! `{"http": "127.0.0.1:PORT", "webtransport": "[::]:PORT", "digest": "HEX"}`.
//!
//! Run with: `cargo run -p wtchat-lean-host`, then open the printed HTTP address.

use std::net::SocketAddr;

use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let http = listener.local_addr()?;
    let certs = std::env::temp_dir().join(format!("wtchat-lean-{}", std::process::id()));
    let config = wtchat::Config::builder()
        .http(http)
        .webtransport(SocketAddr::from(([0u16; 8], 0)))
        .tls(wtchat::Tls::Dev { dir: certs })
        .build()?;
    let chat = wtchat::Chat::new(config).await?;
    let digest: String = chat.certificate_digests()[0]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    println!(
        r#"{{"http": "{http}", "webtransport": "{}", "digest": "{digest}"}}"#,
        chat.webtransport_addr()
    );
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    tokio::spawn(chat.clone().run(shutdown.clone().cancelled_owned()));
    axum::serve(listener, chat.router())
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}
