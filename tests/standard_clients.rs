//! Clients users actually run, with their default behaviour, rather than our own test
//! client: Python's `websockets` library, which pings on its own and drops a connection
//! whose pings get no pong.
//!
//! `scripts/test` installs `websockets`; without it these tests skip loudly (and fail under
//! `CI=true`).

mod common;

use std::time::Duration;

use common::{Client, start_with};
use serde_json::Value;

/// Joins, pings explicitly and waits for the pong, stays quiet (the library's own
/// keepalive pings only) for longer than the server's idle timeout, then sends and waits
/// for the ack. Prints what it saw as one JSON line.
const SCRIPT: &str = r#"
import asyncio, json, sys
from websockets.asyncio.client import connect

async def main(url, quiet):
    # The library's keepalive as it ships (a ping, and a close when no pong comes back in
    # time), at a shorter interval so that the test need not wait 20 s for it.
    async with connect(url, ping_interval=0.2, ping_timeout=1) as ws:
        await ws.send(json.dumps({"type": "join", "room": "py", "name": "py"}))
        joined = json.loads(await ws.recv())
        pong = await ws.ping(b"are you there")
        latency = await asyncio.wait_for(pong, 5)
        await asyncio.sleep(quiet)
        await ws.send(json.dumps({"type": "send", "room": "py", "text": "still here", "id": "p1"}))
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] in ("ack", "bye", "error"):
                break
        print(json.dumps({"joined": joined["type"], "pong_ms": latency * 1000, "after_quiet": frame}))

asyncio.run(main(sys.argv[1], float(sys.argv[2])))
"#;

#[tokio::test]
async fn python_websockets_gets_its_pongs_and_its_pings_keep_it_connected() {
    if !common::python_has("websockets") {
        return;
    }
    let server = start_with(|c| c.idle_timeout(Duration::from_secs(1))).await;
    let run = tokio::process::Command::new("python3")
        .args(["-c", SCRIPT, &server.ws_url(), "3"])
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the script finishes")
        .unwrap();
    assert!(
        out.status.success(),
        "the script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["joined"], "joined");
    // Three seconds of nothing but the library's pings, with an idle timeout of one:
    // still connected, and its message is stored.
    assert_eq!(seen["after_quiet"]["type"], "ack", "{seen}");
    assert_eq!(seen["after_quiet"]["seq"], 1);
    let mut later = Client::wt(&server).await;
    let (_, history) = later.join("py", "later").await;
    let history: Vec<_> = history.iter().map(common::seq_text).collect();
    assert_eq!(history, [(1, "py".to_string(), "still here".to_string())]);
    server.stop().await;
}
