//! Rooms that survive: the SQLite engine across `kill -9` and restarts, retention,
//! moderation on stored history, and what a broken disk gets.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Client, DEADLINE, Mount, Seen, Serve, SmallDisk};
use serde_json::{Value, json};
use wtchat::Engine;

/// `wtchat serve` on the SQLite database `db`, on free ports, working in `dir` (its
/// certificates in `dir/certs`).
fn serve_command(dir: &Path, db: &Path) -> Command {
    let mut command = common::serve_command(dir);
    command
        .arg("--engine")
        .arg(format!("sqlite:{}", db.display()));
    command
}

/// A real `wtchat serve` on the database `db`, certificates in `dir`, with `extra` flags.
async fn serve(dir: &Path, db: &Path, extra: &[&str]) -> Serve {
    let mut command = serve_command(dir, db);
    command
        .args(["--frames-per-second", "100000", "--frame-burst", "100000"])
        .args(extra);
    Serve::start(command, dir).await
}

/// Reads what still arrives of `room` into `seen` after the server died.
async fn read_until_dropped(client: &mut Client, room: &str, seen: &mut Seen) {
    for frame in client.drain(Duration::from_millis(300)).await {
        if frame["type"] == "message" && frame["room"] == room {
            seen.add(&frame);
        }
    }
}

#[tokio::test]
async fn kill_9_during_a_burst_loses_nothing_acknowledged() {
    const ROOM: &str = "burst";
    const SENT: usize = 3000;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    // Room for a resume of the whole burst in one replay, and for the retries of all of it
    // in the dedupe window (on a busy machine the server may have stored the whole burst
    // before the writer read a quarter of its acks).
    let flags = [
        "--max-replay",
        "5000",
        "--outbound-queue",
        "100000",
        "--dedupe-window",
        "5000",
    ];
    let mut server = serve(dir.path(), &db, &flags).await;

    // Readers on both transports, and a writer that sends without waiting for acks.
    let mut readers = [server.ws().await, server.wt().await];
    let mut seen = [Seen::default(), Seen::default()];
    for (reader, seen) in readers.iter_mut().zip(&mut seen) {
        let (joined, _) = reader.join(ROOM, "reader").await;
        seen.epoch = joined["epoch"].as_u64().unwrap();
    }
    let mut writer = server.ws().await;
    let (joined, _) = writer.join(ROOM, "writer").await;
    let key = joined["key"].as_str().unwrap().to_string();
    let epoch = joined["epoch"].as_u64().unwrap();
    for i in 0..SENT {
        writer
            .send(json!({"type": "send", "room": ROOM, "text": format!("m{i}"), "id": format!("i{i}")}))
            .await;
    }
    // Kill the server in the middle of the burst: once some, but not all, are acknowledged.
    let mut acked: HashMap<String, u64> = HashMap::new();
    while acked.len() < SENT / 4 {
        let ack = writer.next_of("ack").await;
        acked.insert(
            ack["id"].as_str().unwrap().into(),
            ack["seq"].as_u64().unwrap(),
        );
    }
    server.kill();
    for frame in writer.drain(Duration::from_millis(300)).await {
        if frame["type"] == "ack" {
            acked.insert(
                frame["id"].as_str().unwrap().into(),
                frame["seq"].as_u64().unwrap(),
            );
        }
    }
    for (reader, seen) in readers.iter_mut().zip(&mut seen) {
        read_until_dropped(reader, ROOM, seen).await;
    }
    assert!(
        acked.len() < SENT,
        "the kill came after the burst: nothing was tested"
    );

    let server = serve(dir.path(), &db, &flags).await;
    // A newcomer reads the whole room: every acknowledged message, under its number, in the
    // same epoch, numbered without holes.
    let mut probe = server.ws().await;
    let mut all = Seen::default();
    let (joined, replay) = probe
        .join_frame(
            json!({"type": "join", "room": ROOM, "name": "probe", "since": 0,
                           "epoch": epoch}),
        )
        .await;
    assert_eq!(joined["epoch"], epoch, "the room keeps its epoch");
    assert_eq!(joined["gap"], false);
    for message in &replay {
        all.add(message);
    }
    let head = joined["seq"].as_u64().unwrap();
    assert_eq!(
        all.texts.keys().copied().collect::<Vec<_>>(),
        (1..=head).collect::<Vec<_>>()
    );
    for (id, seq) in &acked {
        let i = &id[1..];
        assert_eq!(
            all.texts.get(seq),
            Some(&format!("m{i}")),
            "acknowledged {id} as {seq}"
        );
    }

    // Readers on both transports resume: exactly what they missed, no gap, no duplicate
    // (Seen::add panics on one).
    let mut readers = [server.ws().await, server.wt().await];
    for (reader, seen) in readers.iter_mut().zip(&mut seen) {
        let joined = seen.resume(reader, ROOM, "reader", None).await;
        assert_eq!(joined["gap"], false, "{}", reader.transport());
        assert_eq!(seen.texts, all.texts, "{}", reader.transport());
    }

    // The writer retries everything it never saw acknowledged, with its key: what was
    // stored is acknowledged under its first number and not stored again.
    let mut writer = server.wt().await;
    writer
        .join_frame(json!({"type": "join", "room": ROOM, "name": "writer", "key": key}))
        .await;
    // First the newest acknowledged ones (within the dedupe window): once more, same numbers.
    let mut newest: Vec<(&String, &u64)> = acked.iter().collect();
    newest.sort_by_key(|(_, seq)| std::cmp::Reverse(**seq));
    for (id, seq) in newest.into_iter().take(20) {
        assert_eq!(writer.say(ROOM, &format!("m{}", &id[1..]), id).await, *seq);
    }
    let stored: HashMap<&str, u64> = all
        .texts
        .iter()
        .map(|(seq, text)| (text.as_str(), *seq))
        .collect();
    let mut retried = 0;
    for i in 0..SENT {
        let id = format!("i{i}");
        if acked.contains_key(&id) {
            continue;
        }
        let seq = writer.say(ROOM, &format!("m{i}"), &id).await;
        match stored.get(format!("m{i}").as_str()) {
            Some(&first) => assert_eq!(seq, first, "{id} was stored before the kill"),
            None => assert!(seq > head, "{id} is new"),
        }
        retried += 1;
    }
    assert_eq!(retried, SENT - acked.len());
    let mut reader = server.ws().await;
    let (joined, _) = reader
        .join_frame(
            json!({"type": "join", "room": ROOM, "name": "reader", "since": head,
                           "epoch": epoch}),
        )
        .await;
    assert_eq!(
        joined["seq"].as_u64().unwrap() as usize,
        SENT,
        "each message once"
    );
}

/// An in-process server on the SQLite engine at `db`, with `tweak` applied.
async fn on_sqlite(
    db: &Path,
    tweak: impl FnOnce(wtchat::ConfigBuilder) -> wtchat::ConfigBuilder,
) -> common::TestServer {
    let db: PathBuf = db.to_path_buf();
    common::start_with(move |b| tweak(b.engine(Engine::Sqlite(db)))).await
}

/// The host publishes `prefix`1 … `prefix``n` into `room`, each stored before the next.
async fn publish_numbered(server: &common::TestServer, room: &str, prefix: &str, n: usize) {
    for i in 1..=n {
        let text = format!("{prefix}{i}");
        server.chat.publish(room, "host", &text).await.unwrap();
    }
}

fn texts(page: &wtchat::HistoryPage) -> Vec<(u64, &str)> {
    page.messages
        .iter()
        .map(|m| (m.seq, m.text.as_str()))
        .collect()
}

#[tokio::test]
async fn retention_by_count_keeps_the_newest_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let server = on_sqlite(&db, |b| b.history(5).retention_messages(20)).await;
    publish_numbered(&server, "r", "m", 50).await;
    let page = server.chat.history("r", None, 100).await.unwrap();
    assert_eq!(page.messages.len(), 20);
    assert_eq!(texts(&page)[0], (31, "m31"));
    assert!(!page.more);
    server.stop().await;
    let server = on_sqlite(&db, |b| b.history(5).retention_messages(20)).await;
    let page = server.chat.history("r", Some(40), 100).await.unwrap();
    let expected: Vec<(u64, String)> = (31..40).map(|i| (i, format!("m{i}"))).collect();
    let got: Vec<(u64, String)> = texts(&page)
        .iter()
        .map(|(s, t)| (*s, t.to_string()))
        .collect();
    assert_eq!(got, expected);
    // And numbering goes on where it stopped.
    assert_eq!(server.chat.publish("r", "host", "m51").await.unwrap(), 51);
}

#[tokio::test]
async fn retention_by_age_forgets_old_messages_in_storage_and_in_replays() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let server = on_sqlite(&db, |b| b.retention_age(Duration::from_secs(1))).await;
    publish_numbered(&server, "r", "old ", 3).await;
    let deadline = tokio::time::Instant::now() + DEADLINE;
    // The sweep deletes them from the database within a second or two.
    while !server
        .chat
        .history("r", None, 100)
        .await
        .unwrap()
        .messages
        .is_empty()
    {
        assert!(tokio::time::Instant::now() < deadline, "never swept");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.chat.publish("r", "host", "new").await.unwrap();
    let mut client = Client::ws(&server).await;
    let (joined, replay) = client.join("r", "ann").await;
    assert_eq!(joined["seq"], 4);
    let replayed: Vec<&str> = replay.iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(
        replayed,
        ["new"],
        "old messages are not replayed from memory either"
    );
}

#[tokio::test]
async fn a_deleted_message_and_a_ban_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let secret = "a-token-secret-of-at-least-32-bytes!";
    let token = |user: &str| {
        let claims = wtchat::auth::Claims {
            sub: user.into(),
            name: user.to_uppercase(),
            rooms: vec!["*".into()],
            exp: wtchat::auth::unix_now() + 600,
        };
        format!("?token={}", wtchat::auth::mint(secret.as_bytes(), &claims))
    };
    let config = move |b: wtchat::ConfigBuilder| b.token_secret(secret);
    let server = on_sqlite(&db, config).await;
    let mut ann = Client::ws_request(&server, &token("ann"), &[])
        .await
        .unwrap();
    let mut bob = Client::wt_request(&server, &format!("/wtchat{}", token("bob")), &[])
        .await
        .unwrap();
    ann.join("r", "").await;
    bob.join("r", "").await;
    for text in ["one", "two", "three"] {
        ann.say("r", text, text).await;
    }
    assert!(server.chat.delete_message("r", 2).await.unwrap());
    assert!(!server.chat.delete_message("r", 99).await.unwrap());
    let deleted = bob.next_of("update").await;
    assert_eq!(
        (deleted["room"].as_str(), deleted["seq"].as_u64()),
        (Some("r"), Some(2))
    );
    // Bob is banned from the room: his connection is closed, for good.
    let kicked = server
        .chat
        .ban(Some("r"), "bob", Duration::from_secs(3600))
        .await;
    assert_eq!(kicked.unwrap(), 1);
    assert_eq!(bob.ended().await, common::Ended::Code(4403));
    server.stop().await;

    let server = on_sqlite(&db, config).await;
    let mut bob = Client::ws_request(&server, &token("bob"), &[])
        .await
        .unwrap();
    bob.send(json!({"type": "join", "room": "r"})).await;
    let refused = bob.next_of("error").await;
    assert_eq!(refused["code"], "banned");
    // Another room is fine: the ban was for "r".
    bob.join("elsewhere", "").await;
    let mut ann = Client::wt_request(&server, &format!("/wtchat{}", token("ann")), &[])
        .await
        .unwrap();
    let (_, replay) = ann.join("r", "").await;
    let replayed: Vec<&str> = replay.iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(replayed, ["one", "three"]);
    assert_eq!(
        texts(&server.chat.history("r", None, 10).await.unwrap()),
        [(1, "one"), (3, "three")]
    );
    // Lifted, Bob may join again; a server-wide ban keeps him out of every room.
    server.chat.unban(Some("r"), "bob").await.unwrap();
    bob.join("r", "").await;
    server
        .chat
        .ban(None, "bob", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(bob.ended().await, common::Ended::Code(4403));
    let mut bob = Client::ws_request(&server, &token("bob"), &[])
        .await
        .unwrap();
    bob.send(json!({"type": "join", "room": "elsewhere"})).await;
    assert_eq!(bob.next_of("error").await["code"], "banned");
}

#[tokio::test]
async fn history_pages_back_through_a_room_over_the_protocol_and_the_http_api() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let key = "an-api-key-of-at-least-32-bytes-long!!";
    let server = on_sqlite(&db, |b| b.history(10).api_key(key)).await;
    publish_numbered(&server, "r", "m", 250).await;
    let mut client = Client::wt(&server).await;
    let (_, replay) = client.join("r", "ann").await;
    assert_eq!(replay.len(), 10);
    let mut before = replay[0]["seq"].as_u64().unwrap();
    let mut seqs: Vec<u64> = replay.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    loop {
        client
            .send(json!({"type": "history", "room": "r", "before": before}))
            .await;
        let page = client.next_of("history").await;
        let messages = page["messages"].as_array().unwrap();
        assert!(messages.len() <= 100);
        let mut got: Vec<u64> = messages
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect();
        assert!(
            messages
                .iter()
                .all(|m| m["type"] == "message" && m["room"] == "r")
        );
        got.append(&mut seqs);
        seqs = got;
        if page["more"] == false {
            break;
        }
        before = seqs[0];
    }
    assert_eq!(seqs, (1..=250).collect::<Vec<_>>());
    // Not a member: refused.
    client
        .send(json!({"type": "history", "room": "other"}))
        .await;
    assert_eq!(client.next_of("error").await["code"], "not_joined");

    let auth = format!("Bearer {key}");
    let headers = [("authorization", auth.as_str())];
    let (status, body) = common::http_get(
        server.http,
        "/wtchat/api/history?room=r&before=101&limit=1000",
        &headers,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    let seqs: Vec<u64> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
    assert_eq!(page["more"], false);
    assert_eq!(page["messages"][0]["text"], "m1");
    let (status, body) = common::http_request(
        server.http,
        "POST",
        "/wtchat/api/delete",
        &headers,
        Some(&json!({"room": "r", "seq": 5})),
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"deleted":true,"room":"r","seq":5}"#)
    );
    assert_eq!(client.next_of("update").await["deleted"], true);
    let (status, body) = common::http_request(
        server.http,
        "POST",
        "/wtchat/api/ban",
        &headers,
        Some(&json!({"user": "u1", "room": "r"})),
    )
    .await;
    assert_eq!(status, 400, "a ban says how long: {body}");
}

/// A server on `db` that must refuse to start: the words it prints, through `wtchat serve`
/// and through the library.
async fn refusal(db: &Path) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = common::run_to_end(serve_command(dir.path(), db));
    assert_eq!(out.status.code(), Some(1));
    let config = wtchat::Config::builder()
        .http("127.0.0.1:0".parse().unwrap())
        .webtransport("127.0.0.1:0".parse().unwrap())
        .tls(wtchat::Tls::Dev {
            dir: dir.path().join("certs"),
        })
        .engine(Engine::Sqlite(db.to_path_buf()))
        .build()
        .unwrap();
    let error = wtchat::Chat::new(config).await.unwrap_err();
    assert!(matches!(error, wtchat::StartError::Storage(_)), "{error}");
    // The reason is the last line of stderr (log lines come before it).
    let stderr = String::from_utf8_lossy(&out.stderr);
    let reason = stderr.trim().lines().last().unwrap_or_default();
    (reason.to_string(), error.to_string())
}

#[tokio::test]
async fn a_database_that_cannot_be_used_is_refused_at_start_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    // A path that cannot be created: its "directory" is a file.
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let (cli, lib) = refusal(&file.join("chat.db")).await;
    assert!(cli.starts_with("wtchat: storage: database "), "{cli}");
    assert!(
        cli.contains("cannot open or create it: Not a directory"),
        "{cli}"
    );
    assert!(lib.contains("cannot open or create it"), "{lib}");

    // A corrupt file.
    let corrupt = dir.path().join("corrupt.db");
    std::fs::write(&corrupt, vec![0x5a; 8192]).unwrap();
    let (cli, _) = refusal(&corrupt).await;
    assert!(
        cli.contains("not an SQLite database, or it is corrupt"),
        "{cli}"
    );

    // Someone else's SQLite database.
    let other = dir.path().join("other.db");
    sqlite(&other, "create table notes(x)");
    let (cli, _) = refusal(&other).await;
    assert!(cli.contains("not one of wtchat's"), "{cli}");

    // A database from a newer wtchat.
    let newer = dir.path().join("newer.db");
    on_sqlite(&newer, |b| b).await.stop().await;
    sqlite(&newer, "pragma user_version = 7");
    let (cli, _) = refusal(&newer).await;
    assert!(
        cli.contains("written by a newer wtchat (schema 7; this one knows 6)"),
        "{cli}"
    );

    // A database another server is using.
    let shared = dir.path().join("shared.db");
    let _first = on_sqlite(&shared, |b| b).await;
    let (cli, lib) = refusal(&shared).await;
    assert!(cli.contains("another process is serving it"), "{cli}");
    assert!(lib.contains("another process is serving it"), "{lib}");
}

/// Runs `statement` on the database at `path` with Python's sqlite3 (another program than
/// the server, as an operator's tool would be).
fn sqlite(path: &Path, statement: &str) {
    let done = Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(sys.argv[2]); c.commit()",
        ])
        .arg(path)
        .arg(statement)
        .status()
        .unwrap();
    assert!(done.success());
}

#[tokio::test]
async fn a_read_only_database_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let server = on_sqlite(&data.join("chat.db"), |b| b).await;
    server.chat.publish("r", "host", "kept").await.unwrap();
    server.stop().await;
    let view = dir.path().join("view");
    std::fs::create_dir(&view).unwrap();
    let data_arg = data.to_str().unwrap();
    let _mount = Mount::new(&["--bind", "-o", "ro", data_arg], &view);
    let (cli, _) = refusal(&view.join("chat.db")).await;
    assert!(
        cli.contains("Read-only file system") || cli.contains("read-only"),
        "{cli}"
    );
}

#[tokio::test]
async fn a_full_disk_fails_sends_clearly_and_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::new(dir.path());
    let server = on_sqlite(&disk.path().join("chat.db"), |b| {
        b.frames_per_second(100_000).frame_burst(100_000)
    })
    .await;
    let mut ann = Client::ws(&server).await;
    let mut bob = Client::wt(&server).await;
    ann.join("r", "ann").await;
    bob.join("r", "bob").await;
    // Fill the disk but for a little room.
    disk.fill(64 * 1024);
    let text = "x".repeat(1000);
    let mut acked = Vec::new();
    let refused = loop {
        let id = format!("i{}", acked.len());
        ann.send(json!({"type": "send", "room": "r", "text": text, "id": id}))
            .await;
        let answer = ann
            .next_matching("ack or error", |f| {
                f["id"] == id.as_str() && (f["type"] == "ack" || f["type"] == "error")
            })
            .await;
        if answer["type"] == "error" {
            break answer;
        }
        acked.push(answer["seq"].as_u64().unwrap());
        assert!(acked.len() < 2000, "the disk never filled");
    };
    assert_eq!(refused["code"], "storage_failed");
    assert_eq!(refused["room"], "r");
    // Everything acknowledged is stored and was delivered; the refused one was not.
    let stored: Vec<u64> = server
        .chat
        .history("r", None, 10_000)
        .await
        .unwrap()
        .messages
        .iter()
        .map(|m| m.seq)
        .collect();
    assert_eq!(stored, acked);
    let delivered = bob.messages("r", acked.len()).await;
    assert_eq!(delivered.iter().map(|m| m.0).collect::<Vec<_>>(), acked);
    // The server goes on serving: joins, pings, typing.
    let mut cid = Client::ws(&server).await;
    let (joined, _) = cid.join("r", "cid").await;
    assert_eq!(joined["seq"].as_u64(), acked.last().copied());
    cid.send(json!({"type": "ping"})).await;
    cid.next_of("pong").await;
    // Space again: the retry goes through, numbered right after the last one stored.
    disk.free();
    let id = format!("i{}", acked.len());
    let seq = ann.say("r", &text, &id).await;
    assert_eq!(seq, acked.last().unwrap() + 1);
    assert_eq!(bob.messages("r", 1).await[0].0, seq);
}

#[tokio::test]
async fn a_resume_reads_older_history_from_storage_up_to_max_replay_then_says_gap() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let server = on_sqlite(&db, |b| b.history(5).max_replay(20)).await;
    publish_numbered(&server, "r", "m", 50).await;
    let mut client = Client::ws(&server).await;
    let (joined, replay) = client.join("r", "probe").await;
    assert_eq!(replay.len(), 5, "a plain join replays the in-memory tail");
    let epoch = joined["epoch"].as_u64().unwrap();
    let resume = |since: u64| json!({"type": "join", "room": "r", "name": "ann", "since": since, "epoch": epoch});
    let seqs = |replay: &[Value]| {
        replay
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect::<Vec<_>>()
    };
    // 15 missed, 10 of them older than memory's tail: all of them, from the database.
    let mut ann = Client::wt(&server).await;
    let (joined, replay) = ann.join_frame(resume(35)).await;
    assert_eq!(joined["gap"], false);
    assert_eq!(seqs(&replay), (36..=50).collect::<Vec<_>>());
    // 40 missed, more than max_replay: the newest 20, and an honest gap.
    let mut bob = Client::ws(&server).await;
    let (joined, replay) = bob.join_frame(resume(10)).await;
    assert_eq!(joined["gap"], true);
    assert_eq!(seqs(&replay), (31..=50).collect::<Vec<_>>());
}

#[tokio::test]
async fn an_online_backup_is_a_database_a_server_starts_from() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let backup = dir.path().join("backup.db");
    let server = on_sqlite(&db, |b| b).await;
    publish_numbered(&server, "r", "m", 3).await;
    // SQLite's online backup, while the server runs (what `sqlite3 chat.db .backup` does).
    let copied = Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; s=sqlite3.connect(sys.argv[1]); d=sqlite3.connect(sys.argv[2]); \
             s.backup(d); d.close()",
        ])
        .args([&db, &backup])
        .status()
        .unwrap();
    assert!(copied.success());
    server
        .chat
        .publish("r", "host", "after the backup")
        .await
        .unwrap();
    let restored = on_sqlite(&backup, |b| b).await;
    let page = restored.chat.history("r", None, 10).await.unwrap();
    assert_eq!(texts(&page), [(1, "m1"), (2, "m2"), (3, "m3")]);
    assert_eq!(restored.chat.publish("r", "host", "m4").await.unwrap(), 4);
}

/// The schema of version 1 (before sender ids were keyed), as that release wrote it.
const SCHEMA_V1: &str = "
    CREATE TABLE rooms (name TEXT PRIMARY KEY, epoch INTEGER NOT NULL, seq INTEGER NOT NULL)
        WITHOUT ROWID;
    CREATE TABLE messages (room TEXT NOT NULL, seq INTEGER NOT NULL, time INTEGER NOT NULL,
        name TEXT NOT NULL, sender TEXT, client_id TEXT, text TEXT NOT NULL,
        PRIMARY KEY (room, seq)) WITHOUT ROWID;
    CREATE INDEX messages_by_time ON messages (time);
    CREATE TABLE bans (room TEXT NOT NULL, user TEXT NOT NULL, until INTEGER NOT NULL,
        PRIMARY KEY (room, user)) WITHOUT ROWID;
    PRAGMA application_id = 2004116328;
    PRAGMA user_version = 1;
";

/// A database written by the release before keyed sender ids: room `lobby` holds one
/// message, sent by the holder of resume key `key` with client id `c-1`, under the public
/// id of then (the plain digest of its scope), which this returns.
fn database_of_before(db: &Path, key: &str) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            "import base64,hashlib,sqlite3,sys,time\n\
             db, key, schema = sys.argv[1:]\n\
             c = sqlite3.connect(db)\n\
             c.executescript(schema)\n\
             old = base64.urlsafe_b64encode(hashlib.sha256(('k:' + key).encode()).digest()[:12])\n\
             old = old.rstrip(b'=').decode()\n\
             now = int(time.time() * 1000)\n\
             c.execute(\"INSERT INTO rooms VALUES ('lobby', ?, 1)\", (now - 1000,))\n\
             c.execute(\"INSERT INTO messages VALUES ('lobby', 1, ?, 'ann', ?, 'c-1', 'hello')\",\n\
             \x20         (now, old))\n\
             c.commit()\n\
             print(old)",
        ])
        .arg(db)
        .arg(key)
        .arg(SCHEMA_V1)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A client that lost the ack of a message sent before the upgrade retries it after the
/// server restarted on keyed sender ids: it is recognised (the original number, stored once),
/// though the client's public id is not the one of then any more. The new id stays the same
/// across restarts (the key is kept in the database), and so do retries of new messages.
#[tokio::test]
async fn a_retry_across_the_upgrade_to_keyed_sender_ids_is_still_recognised() {
    const KEY: &str = "upgradeKEYupgradeKEY12";
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let old = database_of_before(&db, KEY);
    let join = json!({"type": "join", "room": "lobby", "name": "ann", "key": KEY});

    let server = on_sqlite(&db, |b| b).await;
    let mut ann = Client::ws(&server).await;
    let (joined, replay) = ann.join_frame(join.clone()).await;
    assert_eq!(replay.len(), 1);
    assert_eq!(replay[0]["sender"], old, "a stored message keeps its id");
    let sender = joined["you"]["sender"].clone();
    assert_ne!(sender, old, "the new id is keyed");
    assert_eq!(ann.say("lobby", "hello", "c-1").await, 1, "recognised");
    assert_eq!(ann.say("lobby", "again", "c-2").await, 2);
    server.stop().await;

    let server = on_sqlite(&db, |b| b).await;
    let mut ann = Client::wt(&server).await;
    let (joined, _) = ann.join_frame(join).await;
    assert_eq!(
        joined["you"]["sender"], sender,
        "the same id after a restart"
    );
    assert_eq!(ann.say("lobby", "again", "c-2").await, 2, "recognised");
    assert_eq!(ann.say("lobby", "hello", "c-1").await, 1, "recognised");
    let page = server.chat.history("lobby", None, 10).await.unwrap();
    assert_eq!(
        texts(&page),
        [(1, "hello"), (2, "again")],
        "each stored once"
    );
    server.stop().await;
}

/// Every stored message of `room`, oldest first, paged back from the newest.
async fn stored(server: &common::TestServer, room: &str) -> Vec<(u64, String)> {
    let mut all = Vec::new();
    let mut before = None;
    loop {
        let page = server.chat.history(room, before, 100).await.unwrap();
        let mut older: Vec<(u64, String)> = page
            .messages
            .iter()
            .map(|m| (m.seq, m.text.clone()))
            .collect();
        before = older.first().map(|(seq, _)| *seq);
        older.append(&mut all);
        all = older;
        if !page.more || before.is_none() {
            return all;
        }
    }
}

/// The bytes of the database's pages in use, read by another program (Python's sqlite3).
fn pages_in_use(db: &Path) -> u64 {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); \
             print(c.execute('SELECT (page_count - freelist_count) * page_size \
             FROM pragma_page_count(), pragma_freelist_count(), pragma_page_size()').fetchone()[0])",
        ])
        .arg(db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Rooms anyone may create cannot fill the disk: past `retention_bytes` the least recently
/// active rooms lose their oldest stored messages first. Room `old` (about 400 KB of text,
/// some 940 KB of pages: a 2 KB text spills into an overflow page of its own) then room
/// `new` (as much) go past a 1.5 MiB budget: `new` keeps every message, `old` its newest,
/// numbered on without a hole; the database's pages in use stay within the budget. (Under
/// a budget of 1 MiB, `new` and the schema's pages alone filled it: three tables and
/// indexes more left `old` nothing.)
#[tokio::test]
async fn stored_messages_past_their_byte_budget_leave_the_least_active_rooms_oldest_first() {
    const BUDGET: u64 = 3 << 19;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let tweak =
        |b: wtchat::ConfigBuilder| b.history(5).retention_bytes(BUDGET).max_text_chars(4000);
    let server = on_sqlite(&db, tweak).await;
    let text = |room: &str, i: usize| format!("{room} {i} {}", "x".repeat(2000));
    for room in ["old", "new"] {
        for i in 1..=200 {
            server
                .chat
                .publish(room, "host", &text(room, i))
                .await
                .unwrap();
        }
    }
    server.stop().await;
    // Read back from the file alone.
    let server = on_sqlite(&db, tweak).await;
    let new = stored(&server, "new").await;
    let every: Vec<(u64, String)> = (1..=200).map(|i| (i as u64, text("new", i))).collect();
    assert!(new == every, "the newest room keeps all its messages");
    let old = stored(&server, "old").await;
    let first = old.first().expect("the older room keeps its newest").0;
    assert!(first > 1, "the older room lost its oldest");
    let kept: Vec<(u64, String)> = (first..=200)
        .map(|i| (i, text("old", i as usize)))
        .collect();
    assert!(old == kept, "the older room keeps {first}..=200, in order");
    let used = pages_in_use(&db);
    assert!(used <= BUDGET, "{used} bytes in use");
    server.stop().await;
}
