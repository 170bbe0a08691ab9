//! What an operator sees and relies on: `/wtchat/metrics` read with Prometheus's own
//! parser (Python's `prometheus_client`, the reference implementation) before and after
//! real clients chat, its counters moved by exactly what they did; the metrics' access
//! rules; `/wtchat/health` and `/wtchat/ready` as a load balancer polls them, readiness
//! flipping when a real `redis-server` goes away and comes back.

mod common;
#[path = "common/redis.rs"]
mod redis;

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use common::{Client, DEADLINE, Ended, Serve, http_get, start_with};
use redis::{Persistence, Redis};
use wtchat::Engine;

const API_KEY: &str = "an-api-key-of-at-least-32-bytes-long!!";

/// Prints every sample of the OpenMetrics text on stdin as `[name, labels, value]`.
const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
samples = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        samples.append([s.name, s.labels, s.value])
print(json.dumps(samples))
"#;

/// One scrape: sample (name and labels, as `name{k="v",…}` with sorted labels) → value.
type Scrape = HashMap<String, f64>;

async fn scrape(http: SocketAddr) -> Scrape {
    let (status, text) = http_get(http, "/wtchat/metrics", &[]).await;
    assert_eq!(status, 200, "{text}");
    let mut parser = std::process::Command::new("python3")
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    parser
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = parser.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the reference parser refuses the metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<(String, BTreeMap<String, String>, f64)> =
        serde_json::from_slice(&out.stdout).unwrap();
    samples
        .into_iter()
        .map(|(name, labels, value)| (key(&name, &labels), value))
        .collect()
}

fn key(name: &str, labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return name.to_string();
    }
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", labels.join(","))
}

/// A sample's value (0 when the scrape does not have it: a counter never touched).
fn value(scrape: &Scrape, sample: &str) -> f64 {
    scrape.get(sample).copied().unwrap_or(0.0)
}

/// How much `sample` grew from `before` to `after`.
fn grew(before: &Scrape, after: &Scrape, sample: &str) -> f64 {
    value(after, sample) - value(before, sample)
}

/// Scrapes until `done` holds (what a client did shows once its session noticed).
async fn scrape_until(http: SocketAddr, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let now = scrape(http).await;
        if done(&now) {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never: {what}\n{now:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_metrics_count_what_clients_did_by_the_right_amounts() {
    if !common::python_has("prometheus_client") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("wtchat.db");
    let server = start_with(|c| c.metrics(true).engine(Engine::Sqlite(db))).await;
    let before = scrape(server.http).await;
    assert_eq!(value(&before, "wtchat_rooms"), 0.0);
    assert_eq!(
        value(&before, r#"wtchat_connections{transport="websocket"}"#),
        0.0
    );
    assert!(value(&before, "wtchat_certificate_expiry_timestamp_seconds") > 1.7e9);

    let mut ann = Client::ws(&server).await;
    let mut bob = Client::wt(&server).await;
    ann.join("metered", "ann").await;
    bob.join("metered", "bob").await;
    for n in 1..=3 {
        ann.say("metered", &format!("m{n}"), &format!("a{n}")).await;
    }
    assert_eq!(bob.messages("metered", 3).await.len(), 3);
    bob.send_raw(b"not json").await;
    assert_eq!(bob.next_of("error").await["code"], "invalid_json");

    let after = scrape(server.http).await;
    let moved = |sample: &str| grew(&before, &after, sample);
    assert_eq!(moved("wtchat_joins_total"), 2.0);
    assert_eq!(moved("wtchat_messages_published_total"), 3.0);
    // Each message to both members, the sender's own copy included.
    assert_eq!(moved("wtchat_deliveries_total"), 6.0);
    assert_eq!(
        moved(r#"wtchat_frames_refused_total{code="invalid_json"}"#),
        1.0
    );
    assert_eq!(
        value(&after, r#"wtchat_connections{transport="websocket"}"#),
        1.0
    );
    assert_eq!(
        value(&after, r#"wtchat_connections{transport="webtransport"}"#),
        1.0
    );
    assert_eq!(value(&after, r#"wtchat_connections{transport="sse"}"#), 0.0);
    assert_eq!(value(&after, "wtchat_rooms"), 1.0);
    assert_eq!(value(&after, "wtchat_members"), 2.0);
    // Frames: joined, presence, 3 messages and 3 acks, the error...: at least the six
    // messages' bytes.
    assert!(moved("wtchat_frames_sent_total") >= 6.0 + 3.0 + 1.0);
    assert!(moved("wtchat_sent_bytes_total") >= 6.0 * 60.0, "{after:#?}");
    // The latency histogram: one observation per write that carried a message.
    let observed = moved("wtchat_delivery_latency_seconds_count");
    assert!((2.0..=6.0).contains(&observed), "{observed}");
    assert_eq!(
        value(
            &after,
            r#"wtchat_delivery_latency_seconds_bucket{le="+Inf"}"#
        ),
        value(&after, "wtchat_delivery_latency_seconds_count")
    );
    assert!(
        value(
            &after,
            r#"wtchat_delivery_latency_seconds_bucket{le="1.0"}"#
        ) >= value(
            &before,
            r#"wtchat_delivery_latency_seconds_bucket{le="1.0"}"#
        ) + observed,
        "on loopback, every message is written within a second"
    );
    // SQLite committed each message and each member's first read mark (a first join
    // makes it; one commit may carry several), and none failed.
    let commits = moved("wtchat_engine_write_duration_seconds_count");
    assert!((1.0..=5.0).contains(&commits), "{commits}");
    assert_eq!(moved("wtchat_engine_errors_total"), 0.0);

    // Disconnects by close code: an oversized frame (4409), a client that leaves (1000).
    bob.send_raw(&vec![b'x'; 20 * 1024]).await;
    assert_eq!(bob.ended().await, Ended::Code(4409));
    drop(ann);
    let closed = scrape_until(server.http, "both disconnects counted", |now| {
        value(now, r#"wtchat_connections{transport="websocket"}"#) == 0.0
            && value(now, r#"wtchat_connections{transport="webtransport"}"#) == 0.0
    })
    .await;
    let gone = |sample: &str| grew(&after, &closed, sample);
    assert_eq!(
        gone(r#"wtchat_disconnects_total{code="4409",reason="frame_too_large"}"#),
        1.0
    );
    assert_eq!(
        gone(r#"wtchat_disconnects_total{code="1000",reason="client"}"#),
        1.0
    );
    assert_eq!(value(&closed, "wtchat_members"), 0.0);
    // What closed connections sent stays counted.
    assert!(value(&closed, "wtchat_deliveries_total") >= value(&after, "wtchat_deliveries_total"));
    server.stop().await;
}

#[tokio::test]
async fn metrics_are_off_in_the_library_and_can_be_kept_behind_the_api_key() {
    let off = start_with(|c| c).await;
    assert_eq!(http_get(off.http, "/wtchat/metrics", &[]).await.0, 404);
    off.stop().await;

    let keyed = start_with(|c| c.metrics(true).api_key(API_KEY).metrics_auth(true)).await;
    assert_eq!(http_get(keyed.http, "/wtchat/metrics", &[]).await.0, 401);
    let bearer = format!("Bearer {API_KEY}");
    let (status, text) =
        http_get(keyed.http, "/wtchat/metrics", &[("authorization", &bearer)]).await;
    assert_eq!(status, 200);
    assert!(text.contains("wtchat_connections"), "{text}");
    keyed.stop().await;

    let refused = wtchat::Config::builder()
        .metrics(true)
        .metrics_auth(true)
        .build();
    assert_eq!(
        refused.unwrap_err().to_string(),
        "metrics_auth: needs api_key: the key scrapers present"
    );
}

/// `/wtchat/health` and `/wtchat/ready`: (status, body) each.
async fn probes(http: SocketAddr) -> ((u16, String), (u16, String)) {
    (
        http_get(http, "/wtchat/health", &[]).await,
        http_get(http, "/wtchat/ready", &[]).await,
    )
}

#[tokio::test]
async fn readiness_follows_the_engine_and_health_stays() {
    let Some(mut redis) =
        Redis::start_or_skip("readiness_follows_the_engine", Persistence::None).await
    else {
        return;
    };
    let url = redis.url();
    let server = start_with(|c| c.engine(url.parse().unwrap()).metrics(true)).await;
    let ok = (200, "ok\n".to_string());
    assert_eq!(probes(server.http).await, (ok.clone(), ok.clone()));

    redis.kill();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let (health, ready) = loop {
        let (health, ready) = probes(server.http).await;
        if ready.0 != 200 || tokio::time::Instant::now() > deadline {
            break (health, ready);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(ready.0, 503, "{ready:?}");
    assert!(
        ready.1.starts_with("engine unreachable: Redis at"),
        "{ready:?}"
    );
    assert_eq!(health, ok, "alive all the same");

    redis.run().await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while probes(server.http).await.1 != ok {
        assert!(tokio::time::Instant::now() < deadline, "never ready again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And it serves: a client chats through the engine again.
    let mut ann = Client::ws(&server).await;
    ann.join("back", "ann").await;
    assert_eq!(ann.say("back", "hello again", "a1").await, 1);
    server.stop().await;
}

/// `wtchat serve` with `args`, working (and keeping its output) in `dir`.
async fn serve(dir: &std::path::Path, args: &[&str]) -> Serve {
    let mut command = common::serve_command(dir);
    command.args(args);
    Serve::start(command, dir).await
}

/// Every message of `room` the server has, oldest first, as (seq, text), read a page at a
/// time with `history` frames.
async fn stored(client: &mut Client, room: &str) -> Vec<(u64, String)> {
    let mut all = Vec::new();
    let mut before: Option<u64> = None;
    loop {
        let mut ask = serde_json::json!({"type": "history", "room": room, "limit": 100});
        if let Some(before) = before {
            ask["before"] = before.into();
        }
        client.send(ask).await;
        let page = client.next_of("history").await;
        let messages = page["messages"].as_array().unwrap();
        let mut older: Vec<(u64, String)> = messages
            .iter()
            .map(|m| {
                (
                    m["seq"].as_u64().unwrap(),
                    m["text"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        before = older.first().map(|m| m.0);
        older.append(&mut all);
        all = older;
        if page["more"] != true {
            return all;
        }
    }
}

#[tokio::test]
async fn sigterm_spreads_the_4000s_over_the_drain_window_and_loses_nothing_acknowledged() {
    const WINDOW: Duration = Duration::from_secs(2);
    let dir = tempfile::tempdir().unwrap();
    let engine = format!("sqlite:{}", dir.path().join("wtchat.db").display());
    let mut node = serve(
        dir.path(),
        &[
            "--engine",
            &engine,
            "--drain-window",
            "2s",
            "--log-format",
            "json",
            "--frames-per-second",
            "1000",
            "--frame-burst",
            "1000",
        ],
    )
    .await;
    let mut members = Vec::new();
    for i in 0..8 {
        let mut client = if i % 2 == 0 {
            node.ws().await
        } else {
            node.wt().await
        };
        client.join("deploy", &format!("m{i}")).await;
        members.push(client);
    }
    // A publisher that keeps talking through the drain, noting what was acknowledged.
    let mut publisher = node.ws().await;
    publisher.join("deploy", "pub").await;
    let (acked_tx, acked_rx) = tokio::sync::watch::channel(Vec::<(u64, String)>::new());
    let talking = tokio::spawn(async move {
        for n in 1.. {
            let text = format!("p{n}");
            publisher
                .send(
                    serde_json::json!({"type": "send", "room": "deploy", "text": text, "id": text}),
                )
                .await;
            // Its ack, unless the server says goodbye first.
            let answer = loop {
                match publisher.try_next().await {
                    None => return publisher,
                    Some(f) if f["type"] == "ack" || f["type"] == "bye" => break f,
                    Some(_) => {}
                }
            };
            if answer["type"] == "bye" {
                assert_eq!(answer["code"], 4000);
                return publisher;
            }
            acked_tx.send_modify(|acked| acked.push((answer["seq"].as_u64().unwrap(), text)));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        unreachable!()
    });
    let mut acked_rx = acked_rx;
    acked_rx.wait_for(|acked| acked.len() >= 10).await.unwrap();

    node.terminate();
    let terminated = tokio::time::Instant::now();
    // Refusing newcomers at once, and telling load balancers so.
    let deadline = terminated + DEADLINE;
    while http_get(node.http, "/wtchat/ready", &[]).await.0 != 503 {
        assert!(tokio::time::Instant::now() < deadline, "still ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let url = format!("ws://{}/wtchat/ws", node.http);
    assert_eq!(Client::ws_at(&url, &[]).await.err(), Some(503));
    // Everyone is told 4000, each at its own moment within the window.
    let told: Vec<Duration> = futures_util::future::join_all(members.iter_mut().map(|c| async {
        let transport = c.transport();
        assert_eq!(c.ended().await, Ended::Code(4000), "{transport}");
        terminated.elapsed()
    }))
    .await;
    let (first, last) = (told.iter().min().unwrap(), told.iter().max().unwrap());
    eprintln!("told 4000 from {first:?} to {last:?} after SIGTERM (window {WINDOW:?})");
    assert!(*last <= WINDOW + Duration::from_millis(500), "{told:?}");
    assert!(
        *last - *first >= WINDOW / 8,
        "spread over the window, not all at once: {told:?}"
    );
    let publisher = talking.await.unwrap();
    drop(publisher);
    // Drained: the process ends by itself, cleanly.
    assert!(node.exited(WINDOW + Duration::from_secs(5)).await.success());

    // Its connection log: one line when each opened and one when each closed, in JSON.
    let log: Vec<serde_json::Value> = node
        .log()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let closed: Vec<&serde_json::Value> = log
        .iter()
        .filter(|line| line["fields"]["message"] == "connection closed")
        .collect();
    let opened = log
        .iter()
        .filter(|line| line["fields"]["message"] == "connection opened")
        .count();
    assert_eq!(opened, 9);
    assert_eq!(closed.len(), 9, "{closed:#?}");
    for line in &closed {
        assert_eq!(line["fields"]["close"], 4000, "{line}");
        assert!(line["fields"]["duration_ms"].as_u64().is_some(), "{line}");
        let transport = &line["span"]["transport"];
        assert!(
            transport == "websocket" || transport == "webtransport",
            "{line}"
        );
        assert!(
            line["span"]["peer"]
                .as_str()
                .unwrap()
                .starts_with("127.0.0.1:"),
            "{line}"
        );
    }

    // The next node on the same database has every acknowledged message.
    let acked = acked_rx.borrow().clone();
    assert!(acked.len() >= 10);
    let next = serve(dir.path(), &["--engine", &engine]).await;
    let mut reader = next.ws().await;
    reader.join("deploy", "reader").await;
    let history = stored(&mut reader, "deploy").await;
    for message in &acked {
        assert!(
            history.contains(message),
            "{message:?} was acknowledged, then lost"
        );
    }
}
