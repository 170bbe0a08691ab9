//! The lean host, as built (no default features of wtchat): a WebSocket client and a
//! WebTransport client chat in one room through it.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;
use wtransport::tls::Sha256Digest;
use wtransport::{ClientConfig, Endpoint};

/// Everything the test waits for: far longer than it takes, short enough to fail.
const DEADLINE: Duration = Duration::from_secs(20);

/// The next text frame of a WebSocket.
async fn ws_frame<S>(ws: &mut S) -> Value
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        if let Message::Text(text) = ws.next().await.unwrap().unwrap() {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

/// The next frame on a WebTransport stream, which carries one JSON line per frame.
async fn wt_frame(recv: &mut wtransport::RecvStream, buf: &mut Vec<u8>) -> Value {
    loop {
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            return serde_json::from_slice(&line).unwrap();
        }
        let mut chunk = [0u8; 4096];
        let n = recv
            .read(&mut chunk)
            .await
            .unwrap()
            .expect("the stream is open");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn a_host_without_default_features_chats_over_webtransport_and_websocket() {
    let mut host = tokio::process::Command::new(env!("CARGO_BIN_EXE_wtchat-lean-host"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(host.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect("the host says where it listens")
        .unwrap()
        .unwrap();
    let at: Value = serde_json::from_str(&first).unwrap();
    let http = at["http"].as_str().unwrap();
    let wt_port = at["webtransport"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap();
    let hex = at["digest"].as_str().unwrap();
    let digest: [u8; 32] = (0..32)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect::<Vec<u8>>()
        .try_into()
        .unwrap();

    let run = async {
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{http}/wtchat/ws"))
            .await
            .unwrap();
        let endpoint = Endpoint::client(
            ClientConfig::builder()
                .with_bind_default()
                .with_server_certificate_hashes([Sha256Digest::new(digest)])
                .build(),
        )
        .unwrap();
        let session = endpoint
            .connect(format!("https://127.0.0.1:{wt_port}/wtchat"))
            .await
            .unwrap();
        let (mut send, mut recv) = session.open_bi().await.unwrap().await.unwrap();
        let mut buf = Vec::new();

        let join = |name: &str| json!({"type": "join", "room": "lean", "name": name}).to_string();
        send.write_all(format!("{}\n", join("wt")).as_bytes())
            .await
            .unwrap();
        assert_eq!(wt_frame(&mut recv, &mut buf).await["type"], "joined");
        ws.send(Message::text(join("ws"))).await.unwrap();
        assert_eq!(ws_frame(&mut ws).await["type"], "joined");

        let said = json!({"type": "send", "room": "lean", "text": "over WebSocket", "id": "a"});
        ws.send(Message::text(said.to_string())).await.unwrap();
        let said = json!({"type": "send", "room": "lean", "text": "over WebTransport", "id": "b"});
        send.write_all(format!("{said}\n").as_bytes())
            .await
            .unwrap();

        let mut wt_texts = Vec::new();
        while wt_texts.len() < 2 {
            let frame = wt_frame(&mut recv, &mut buf).await;
            if frame["type"] == "message" {
                wt_texts.push(frame["text"].as_str().unwrap().to_string());
            }
        }
        let mut ws_texts = Vec::new();
        while ws_texts.len() < 2 {
            let frame = ws_frame(&mut ws).await;
            if frame["type"] == "message" {
                ws_texts.push(frame["text"].as_str().unwrap().to_string());
            }
        }
        // Sent at once from two connections: either may be first, but both see one order.
        let mut both = wt_texts.clone();
        both.sort();
        assert_eq!(both, ["over WebSocket", "over WebTransport"]);
        assert_eq!(ws_texts, wt_texts, "one order for both");
    };
    tokio::time::timeout(DEADLINE, run)
        .await
        .expect("the chat answers");
    host.start_kill().unwrap();
}
