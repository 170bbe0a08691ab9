//! The connection's life at its edges: a slow reader cut off without holding up the room,
//! shutdown closing everyone with the documented code, origins refused on both transports,
//! and the development certificate renewed while the server runs.

mod common;

use std::time::Duration;

use common::{Client, Ended, TestServer, start_with};
use serde_json::{Value, json};

async fn client(server: &TestServer, transport: &str) -> Client {
    match transport {
        "websocket" => Client::ws(server).await,
        _ => Client::wt(server).await,
    }
}

/// Waits for the next message in `room` and returns (seq, text).
async fn message(client: &mut Client, room: &str) -> (u64, String) {
    let m = client
        .next_matching("message", |f| f["type"] == "message" && f["room"] == room)
        .await;
    (
        m["seq"].as_u64().unwrap(),
        m["text"].as_str().unwrap().to_string(),
    )
}

#[tokio::test]
async fn a_reader_that_stops_is_cut_off_as_too_slow_and_the_room_goes_on() {
    let server = start_with(|c| {
        c.outbound_queue(32)
            .max_replay(2)
            .history(2)
            .frames_per_second(100_000)
            .frame_burst(100_000)
            .close_grace(Duration::from_secs(20))
    })
    .await;
    for transport in ["websocket", "webtransport"] {
        let room = format!("slow-{transport}");
        let mut slow = client(&server, transport).await;
        slow.join(&room, "sloth").await;
        let mut fast_ws = Client::ws(&server).await;
        let mut fast_wt = Client::wt(&server).await;
        let mut talker = Client::ws(&server).await;
        fast_ws.join(&room, "fast-ws").await;
        fast_wt.join(&room, "fast-wt").await;
        talker.join(&room, "talker").await;
        // The sloth now reads nothing while the talker sends big messages: its socket
        // buffers and then its queue fill up.
        let text = "x".repeat(3900);
        let mut sent = 0u64;
        let sloth_left = loop {
            sent += 1;
            talker
                .send(json!({"type":"send","room":room,"text":text,"id":format!("m{sent}")}))
                .await;
            // Meanwhile the others keep up, message by message.
            assert_eq!(message(&mut fast_ws, &room).await.0, sent);
            assert_eq!(message(&mut fast_wt, &room).await.0, sent);
            if !server
                .chat
                .members(&room)
                .await
                .unwrap()
                .iter()
                .any(|m| m.name == "sloth")
            {
                break sent;
            }
            assert!(sent < 20_000, "the slow reader was never cut off");
        };
        // The others were told it left.
        let leave = fast_wt
            .next_matching("sloth's leave", |f| {
                f["type"] == "presence" && f["member"]["name"] == "sloth"
            })
            .await;
        assert_eq!(leave["event"], "leave");
        // The room goes on for everyone else.
        talker
            .send(json!({"type":"send","room":room,"text":"after","id":"after"}))
            .await;
        assert_eq!(
            message(&mut fast_ws, &room).await,
            (sloth_left + 1, "after".into())
        );
        assert_eq!(
            message(&mut fast_wt, &room).await,
            (sloth_left + 1, "after".into())
        );
        // When the sloth reads again, it finds what was queued for it, in order, then the
        // reason it was cut off: too slow, reconnect and resume.
        let mut last_seq = 0;
        let end = loop {
            match slow.try_next().await {
                Some(f) if f["type"] == "message" => {
                    let seq = f["seq"].as_u64().unwrap();
                    assert_eq!(seq, last_seq + 1, "no gap in what it did receive");
                    last_seq = seq;
                }
                Some(f) if f["type"] == "bye" => break f,
                Some(_) => {}
                None => panic!("closed without a bye frame"),
            }
        };
        assert_eq!(
            end,
            json!({"type":"bye","code":4001,"reason":"too_slow","reconnect":true})
        );
        assert!(last_seq < sloth_left, "it was cut off before the end");
        assert_eq!(slow.ended().await, Ended::Code(4001));
    }
    server.stop().await;
}

#[tokio::test]
async fn shutdown_tells_every_client_and_the_server_stops_in_time() {
    let mut server = start_with(|c| c.shutdown_grace(Duration::from_secs(3))).await;
    let mut ws = Client::ws(&server).await;
    let mut wt = Client::wt(&server).await;
    ws.join("bye", "walt").await;
    wt.join("bye", "wendy").await;
    // A message accepted just before shutdown still reaches everyone before `bye`.
    ws.send(json!({"type":"send","room":"bye","text":"last words","id":"l"}))
        .await;
    let got = wt.next_of("message").await;
    assert_eq!(got["text"], "last words");
    server.begin_shutdown();
    for client in [&mut ws, &mut wt] {
        let bye = client.next_of("bye").await;
        assert_eq!(
            bye,
            json!({"type":"bye","code":4000,"reason":"shutdown","reconnect":true})
        );
        assert_eq!(
            client.ended().await,
            Ended::Code(4000),
            "{}",
            client.transport()
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn origins_other_than_the_servers_own_are_refused_on_both_transports() {
    let server = common::start().await;
    let own = format!("http://127.0.0.1:{}", server.http.port());
    // Cross-site WebSocket hijacking: a page on another site opening our socket.
    assert_eq!(
        Client::ws_with_origin(&server, Some("https://evil.example"))
            .await
            .err(),
        Some(403)
    );
    let mut ok = Client::ws_with_origin(&server, Some(&own)).await.unwrap();
    ok.send(json!({"type":"ping"})).await;
    assert_eq!(ok.next().await["type"], "pong");
    // The same over WebTransport.
    assert!(
        Client::wt_with(&server, "/wtchat", Some("https://evil.example"))
            .await
            .is_err()
    );
    let mut ok = Client::wt_with(&server, "/wtchat", Some(&own))
        .await
        .unwrap();
    ok.send(json!({"type":"ping"})).await;
    assert_eq!(ok.next().await["type"], "pong");
    server.stop().await;

    // Configured: only the named origin, and no Origin header at all is refused too.
    let strict = start_with(|c| {
        c.allow_origin("https://chat.example.com")
            .require_origin(true)
    })
    .await;
    assert_eq!(Client::ws_with_origin(&strict, None).await.err(), Some(403));
    assert!(Client::wt_with(&strict, "/wtchat", None).await.is_err());
    assert!(
        Client::ws_with_origin(&strict, Some("https://chat.example.com"))
            .await
            .is_ok()
    );
    assert!(
        Client::wt_with(&strict, "/wtchat", Some("https://chat.example.com"))
            .await
            .is_ok()
    );
    strict.stop().await;
}

#[tokio::test]
async fn the_development_certificate_is_renewed_while_running() {
    // Renew whenever less than 14 days minus 62 s are left: a fresh certificate (valid
    // from a minute ago) is due about two seconds after it was made.
    let server = start_with(|c| c.renew_before(Duration::from_secs(14 * 24 * 3600 - 62))).await;
    let first = server.digests[0];
    let mut before = Client::wt(&server).await;
    before.join("renew", "early").await;
    let digest_now = || async {
        let (_, body) = server.get("/wtchat/config").await;
        let config: Value = serde_json::from_str(&body).unwrap();
        config["certificateHashes"][0]["value"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let deadline = tokio::time::Instant::now() + common::DEADLINE;
    let renewed = loop {
        let current = digest_now().await;
        if current != wtchat::certs::hex(&first) {
            break current;
        }
        assert!(tokio::time::Instant::now() < deadline, "never renewed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The session opened before the renewal is untouched.
    assert_eq!(before.say("renew", "still here", "s").await, 1);
    // A new client pinning the digest the server now serves connects. (The server may have
    // renewed again since: read the digest and connect until one matches.)
    let mut digest = renewed;
    let deadline = tokio::time::Instant::now() + common::DEADLINE;
    let mut after = loop {
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&digest[2 * i..2 * i + 2], 16).unwrap();
        }
        if let Ok(client) = Client::wt_pinning(&server, &[bytes], "/wtchat", None).await {
            break client;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no client could pin the served digest"
        );
        digest = digest_now().await;
    };
    after.join("renew", "late").await;
    assert_eq!(after.say("renew", "hello", "h").await, 2);
    // The first certificate is no longer the one presented.
    assert!(
        Client::wt_pinning(&server, &[first], "/wtchat", None)
            .await
            .is_err()
    );
    server.stop().await;
}

#[tokio::test]
async fn a_ca_issued_certificate_is_served_as_given_with_no_digest() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use wtransport::tls::rustls;

    // A private CA and a leaf for localhost, as a real deployment would have (chain file =
    // leaf then CA).
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let chain = dir.path().join("fullchain.pem");
    let key = dir.path().join("privkey.pem");
    std::fs::write(&chain, format!("{}{}", leaf.pem(), ca_cert.pem())).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();

    let server = start_with(|c| {
        c.tls(wtchat::Tls::Files {
            cert: chain.clone(),
            key: key.clone(),
        })
    })
    .await;
    assert!(server.digests.is_empty());
    let (_, body) = server.get("/wtchat/config").await;
    let config: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(config["certificateHashes"], json!([]));

    // A client that trusts the CA (as a browser trusts public CAs) connects by name.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone()).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let endpoint = wtransport::Endpoint::client(
        wtransport::ClientConfig::builder()
            .with_bind_default()
            .with_custom_tls(tls)
            .build(),
    )
    .unwrap();
    let url = format!("https://localhost:{}/wtchat", server.webtransport.port());
    let connection = endpoint
        .connect(url)
        .await
        .expect("the CA-issued chain verifies");
    let (mut send, mut recv) = connection.open_bi().await.unwrap().await.unwrap();
    send.write_all(b"{\"type\":\"ping\"}\n").await.unwrap();
    let mut reply = Vec::new();
    while !reply.ends_with(b"\n") {
        let mut chunk = [0u8; 64];
        let n = tokio::time::timeout(common::DEADLINE, recv.read(&mut chunk))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        reply.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(reply, b"{\"type\":\"pong\"}\n");
    server.stop().await;
}

#[tokio::test]
async fn shutdown_is_bounded_even_when_a_client_stops_reading() {
    let mut server = start_with(|c| {
        c.shutdown_grace(Duration::from_secs(1))
            .close_grace(Duration::from_secs(30))
            .outbound_queue(100_000)
            .outbound_bytes(64 << 20)
    })
    .await;
    let mut stuck = Client::ws(&server).await;
    stuck.join("stuck", "stuck").await;
    let mut watcher = Client::wt(&server).await;
    watcher.join("stuck", "watcher").await;
    // Fill the stuck client's socket buffers (it never reads) and leave frames queued for
    // it: 12 MB of messages from the host.
    let text = "x".repeat(3900);
    for _ in 0..3000 {
        server.chat.publish("stuck", "host", &text).await.unwrap();
    }
    server.begin_shutdown();
    // The watcher, who reads, gets everything and is told; the server does not wait for
    // the one who does not read longer than shutdown_grace (stop() fails the test past its
    // own deadline).
    let bye = watcher.next_of("bye").await;
    assert_eq!(bye["code"], 4000);
    server.stop().await;
    drop(stuck);
}

/// A storm of connects (a restart's clients all coming back at once) waits in the listen
/// queue rather than overflowing it: 1,000 connections reach a server that is bound but not
/// yet accepting, all at once, each within a second (a dropped SYN is retried only after
/// one). With the usual queue of 128 all but about 129 of them would wait.
#[tokio::test]
async fn a_storm_of_connects_waits_in_the_listen_queue() {
    const STORM: usize = 1000;
    let certs = tempfile::tempdir().unwrap();
    let config = wtchat::Config::builder()
        .http("127.0.0.1:0".parse().unwrap())
        .webtransport("127.0.0.1:0".parse().unwrap())
        .tls(wtchat::Tls::Dev {
            dir: certs.path().to_path_buf(),
        })
        .build()
        .unwrap();
    // Bound, not run: nothing accepts, every connection stays in the queue.
    let server = wtchat::Server::bind(config).await.unwrap();
    let addr = server.http_addr();
    let connects: Vec<_> = (0..STORM)
        .map(|_| {
            tokio::spawn(tokio::time::timeout(
                std::time::Duration::from_millis(900),
                tokio::net::TcpStream::connect(addr),
            ))
        })
        .collect();
    let mut connected = Vec::new();
    for connect in connects {
        if let Ok(Ok(stream)) = connect.await.unwrap() {
            connected.push(stream);
        }
    }
    // The kernel caps the queue at net.core.somaxconn (4096 on kernels since 5.4).
    let cap: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn").map_or(STORM, |max| {
        max.trim().parse::<usize>().unwrap_or(STORM) + 1
    });
    assert_eq!(
        connected.len(),
        STORM.min(cap),
        "connected within the second"
    );
}

#[tokio::test]
async fn a_server_that_cannot_start_says_what_and_why() {
    use std::error::Error;
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let config = wtchat::Config::builder()
        .http(addr)
        .webtransport("127.0.0.1:0".parse().unwrap())
        .tls(wtchat::Tls::Dev {
            dir: certs.path().to_path_buf(),
        })
        .build()
        .unwrap();
    let error = wtchat::Server::bind(config).await.unwrap_err();
    assert!(
        matches!(&error, wtchat::StartError::Bind { listener: "HTTP (TCP)", addr: a, source }
            if *a == addr && source.kind() == std::io::ErrorKind::AddrInUse),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .starts_with(&format!("cannot listen for HTTP (TCP) on {addr}: ")),
        "{error}"
    );
    assert!(error.source().is_some());

    let missing = certs.path().join("no-such-cert.pem");
    let config = wtchat::Config::builder()
        .http("127.0.0.1:0".parse().unwrap())
        .webtransport("127.0.0.1:0".parse().unwrap())
        .tls(wtchat::Tls::Files {
            cert: missing.clone(),
            key: missing.clone(),
        })
        .build()
        .unwrap();
    let error = wtchat::Chat::new(config).await.unwrap_err();
    assert!(
        matches!(error, wtchat::StartError::Certificate(_)),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("no-such-cert.pem"),
        "names the file: {error}"
    );
}

#[tokio::test]
async fn a_client_that_sends_nothing_is_closed_and_its_rooms_are_told() {
    let server = start_with(|c| c.idle_timeout(Duration::from_secs(1))).await;
    // The watcher keeps alive as the browser client does: a ping well within the timeout.
    let mut watcher = Client::ws(&server).await;
    watcher.join("quiet", "watcher").await;
    let mut ghost_ws = Client::ws(&server).await;
    let mut ghost_wt = Client::wt(&server).await;
    // Before their last frames: neither may be closed sooner than a second after this.
    let started = std::time::Instant::now();
    ghost_ws.join("quiet", "ghost-ws").await;
    ghost_wt.join("quiet", "ghost-wt").await;

    let mut left = Vec::new();
    let mut keepalive = tokio::time::interval(Duration::from_millis(300));
    let deadline = tokio::time::Instant::now() + common::DEADLINE;
    while left.len() < 2 {
        tokio::select! {
            _ = keepalive.tick() => watcher.send(json!({"type":"ping"})).await,
            frame = watcher.next() => {
                if frame["type"] == "presence" && frame["event"] == "leave" {
                    left.push(frame["member"]["name"].as_str().unwrap().to_string());
                }
            }
            () = tokio::time::sleep_until(deadline) => panic!("only {left:?} left"),
        }
    }
    left.sort();
    assert_eq!(left, ["ghost-ws", "ghost-wt"]);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "not before the timeout"
    );
    for ghost in [&mut ghost_ws, &mut ghost_wt] {
        let bye = ghost.next_of("bye").await;
        assert_eq!(
            (bye["reason"].as_str(), bye["reconnect"].as_bool()),
            (Some("idle_timeout"), Some(true))
        );
        assert_eq!(ghost.ended().await, Ended::Code(4003));
    }
    // The watcher, who kept alive, is still served.
    let names: Vec<String> = server
        .chat
        .members("quiet")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, ["watcher"]);
    assert_eq!(watcher.say("quiet", "still here", "w1").await, 1);
    // The timeout is advertised, for clients to keep alive within it.
    let (_, body) = server.get("/wtchat/config").await;
    let config: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(config["limits"]["idleTimeoutMs"], 1000);
    server.stop().await;
}

/// A WebSocket to the server from another loopback address (127.0.0.2 is this machine
/// too): a second client address. The HTTP status when refused.
async fn ws_from(
    server: &TestServer,
    source: &str,
) -> Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, u16> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let tcp = socket.connect(server.http).await.unwrap();
    match tokio_tungstenite::client_async(server.ws_url(), tcp).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn one_address_cannot_take_every_connection() {
    use futures_util::{SinkExt, StreamExt};
    let server = start_with(|c| c.max_connections_per_ip(3)).await;
    let mut held = vec![
        Client::ws(&server).await,
        Client::wt(&server).await,
        Client::ws(&server).await,
    ];
    // A fourth from the same address, over either transport: refused, over the connection
    // (browsers cannot read a refused handshake's status), with a wait.
    let mut refused = Client::ws_with_origin(&server, None).await.unwrap();
    assert_eq!(refused.expect_busy().await, 5000);
    assert_eq!(Client::wt(&server).await.expect_busy().await, 5000);
    // Another address is served as usual, and chats with the first.
    let mut other = ws_from(&server, "127.0.0.2")
        .await
        .expect("another address");
    other
        .send(tokio_tungstenite::tungstenite::Message::text(
            json!({"type":"join","room":"shared","name":"other"}).to_string(),
        ))
        .await
        .unwrap();
    let joined: Value = loop {
        if let Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) = other.next().await {
            break serde_json::from_str(&text).unwrap();
        }
    };
    assert_eq!(joined["type"], "joined");
    held[1].join("shared", "first").await;
    assert_eq!(held[1].say("shared", "hello", "h1").await, 1);
    // A connection that ends gives its place back.
    drop(held.pop());
    Client::ws_when_admitted(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn a_connection_creates_rooms_at_a_bounded_rate() {
    let server = start_with(|c| c.max_new_rooms_per_minute(3)).await;
    let mut maker = Client::ws(&server).await;
    let mut host = Client::wt(&server).await;
    host.join("existing", "host").await;
    for room in ["new-1", "new-2", "new-3"] {
        maker.join(room, "maker").await;
    }
    maker
        .send(json!({"type":"join","room":"new-4","name":"maker"}))
        .await;
    let error = maker.next_of("error").await;
    assert_eq!(
        (error["code"].as_str(), error["room"].as_str()),
        (Some("rate_limited"), Some("new-4"))
    );
    assert!(server.chat.members("new-4").await.unwrap().is_empty());
    // Joining a room that exists creates nothing, and is allowed.
    let (joined, _) = maker.join("existing", "maker").await;
    assert_eq!(joined["type"], "joined");
    // Others create their own rooms as usual.
    host.join("hosts-own", "host").await;
    assert_eq!(host.say("hosts-own", "mine", "m1").await, 1);
    server.stop().await;
}

/// Reads `stream` until the server closes it; how long that took, or None at the deadline.
async fn closed_within(stream: &mut tokio::net::TcpStream, deadline: Duration) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let started = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(deadline, async {
        // A 408 or nothing, then the end.
        while !matches!(stream.read(&mut buf).await, Ok(0) | Err(_)) {}
    })
    .await
    .ok()
    .map(|()| started.elapsed())
}

#[tokio::test]
async fn slow_http_clients_are_cut_off_and_capped_while_the_chat_goes_on() {
    use tokio::io::AsyncWriteExt;
    let server = start_with(|c| {
        c.header_read_timeout(Duration::from_secs(1))
            .max_http_connections(10)
    })
    .await;
    // A chat under way over both transports: upgraded WebSockets do not count as pending.
    let mut ws = Client::ws(&server).await;
    let mut wt = Client::wt(&server).await;
    ws.join("steady", "ws").await;
    wt.join("steady", "wt").await;
    // Ten clients send half a request's headers and stop.
    let mut slow = Vec::new();
    for _ in 0..10 {
        let mut tcp = tokio::net::TcpStream::connect(server.http).await.unwrap();
        tcp.write_all(b"GET /wtchat/config HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(tcp);
    }
    // An eleventh connection is over the cap: answered 503 (no request read) and closed
    // at once.
    let mut over = tokio::net::TcpStream::connect(server.http).await.unwrap();
    let _ = over
        .write_all(b"GET /wtchat/config HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert!(
        closed_within(&mut over, Duration::from_secs(5))
            .await
            .is_some(),
        "the connection over the cap is closed"
    );
    // The chat goes on meanwhile.
    assert_eq!(ws.say("steady", "still here", "s1").await, 1);
    assert_eq!(wt.messages("steady", 1).await[0].2, "still here");
    // The slow ones are cut off after the header deadline...
    for tcp in &mut slow {
        let took = closed_within(tcp, common::DEADLINE).await;
        assert!(
            took.is_some_and(|t| t <= Duration::from_secs(5)),
            "closed after the header deadline: {took:?}"
        );
    }
    // ...and their places serve new clients.
    assert_eq!(server.get("/wtchat/config").await.0, 200);
    server.stop().await;
}
