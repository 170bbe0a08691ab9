//! The book's HTTP API block — the curl commands a backend in PHP, Django, Node… starts
//! from — read from docs/src/backend.md (not copied) and run by `bash` and `curl` as pasted, with
//! curl's defaults (no `~/.curlrc`): only the address changes (the book's
//! `127.0.0.1:8080` becomes the test server's), and the key is `WTCHAT_API_KEY` in the
//! environment, exported as the book says. A command that does not put the key in the
//! header (single quotes keep the shell from expanding it) gets 401 and fails here.
//!
//! Every answer is the one its comment shows (`…` stands for any value; a list shown may be
//! the first of a longer one), and every call does what it says to real WebSocket clients
//! logged in with tokens: the published message reaches Ann, the members are hers, a kick
//! closes her connection with 4403, history has what was said, a deleted message leaves it
//! and members hear of it, a ban closes and refuses her until the unban.
//!
//! Without curl the test skips loudly (and fails under `CI=true`; scripts/test installs it).

mod common;

use std::process::Stdio;

use common::{Client, Ended, TestServer, start_with};
use serde_json::{Value, json};
use wtchat::auth::{Claims, mint, unix_now};

/// The server's token secret (at least 32 bytes).
const TOKEN_SECRET: &str = "tokens-are-signed-with-32-bytes-or-more";
/// The API key, as `openssl rand -hex 32` makes one (the book's way).
const API_KEY: &str = "5f0c2a9e41d7b3868e2f1c0a7d94b5e3a1c6f8027e9d4b3a5c1e0f2d8b7a6c94";
/// Where the book's commands send their requests.
const BOOK_ADDRESS: &str = "127.0.0.1:8080";

/// One command of the book's block: the comment above it and its lines.
struct Call {
    comment: String,
    command: String,
}

/// The book's HTTP API commands not run yet.
struct Readme {
    calls: Vec<Call>,
}

impl Readme {
    /// The `sh` block of the HTTP API (its `publish` call), split into commands (a command
    /// goes on while its line ends with `\`), each with the comment lines above it.
    fn read() -> Readme {
        let block = common::book_block("backend", "sh", "/wtchat/api/publish");
        let mut calls = Vec::new();
        let mut comment = String::new();
        let mut command = String::new();
        for line in block.lines() {
            if command.is_empty() && line.starts_with('#') {
                comment.push_str(line);
                comment.push('\n');
                continue;
            }
            command.push_str(line);
            command.push('\n');
            if !line.ends_with('\\') {
                calls.push(Call {
                    comment: std::mem::take(&mut comment),
                    command: std::mem::take(&mut command),
                });
            }
        }
        assert!(command.is_empty(), "a command left unfinished: {command}");
        Readme { calls }
    }

    /// The one command that names `path` and contains `marker` (its body, say); taken, so
    /// that the end can check every command was run.
    fn take(&mut self, path: &str, marker: &str) -> Call {
        let found: Vec<usize> = (0..self.calls.len())
            .filter(|&i| {
                let command = &self.calls[i].command;
                command.contains(&format!("/wtchat/api/{path}")) && command.contains(marker)
            })
            .collect();
        assert_eq!(found.len(), 1, "one book command for {path} {marker}");
        self.calls.remove(found[0])
    }
}

impl Call {
    /// The answer its comment shows after `→`, if any; a bare `…` (any value) made a string.
    fn documented(&self) -> Option<Value> {
        let line = self.comment.lines().find(|l| l.contains('→'))?;
        let shown = line
            .split_once('→')
            .unwrap()
            .1
            .trim()
            .replace(":…", ":\"…\"");
        Some(
            serde_json::from_str(&shown)
                .unwrap_or_else(|e| panic!("the book's answer {shown:?} is not JSON ({e})")),
        )
    }

    /// Runs the command with bash, as pasted into a shell where `WTCHAT_API_KEY` is exported;
    /// its answer (curl prints the body, whatever the status).
    async fn run(&self, server: &TestServer) -> Value {
        assert!(self.command.contains(BOOK_ADDRESS), "{}", self.command);
        let command = self.command.replace(BOOK_ADDRESS, &server.http.to_string());
        // An empty home: no ~/.curlrc of whoever runs the tests, curl as it comes.
        let home = tempfile::tempdir().unwrap();
        let out = tokio::process::Command::new("bash")
            .args(["-c", &command])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", home.path())
            .env("WTCHAT_API_KEY", API_KEY)
            .stdin(Stdio::null())
            .output()
            .await
            .expect("bash runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{command}\nexited with {}: {stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let answer: Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("{command}\nanswered {stdout:?}, not JSON ({e})"));
        assert_ne!(
            answer["error"], "unauthorized",
            "{command}\nwas refused: the key did not reach the header (is it in single quotes?)"
        );
        answer
    }

    /// Runs the command; its answer, checked against the one the book shows.
    async fn answered(&self, server: &TestServer) -> Value {
        let answer = self.run(server).await;
        if let Some(documented) = self.documented() {
            assert!(
                fits(&documented, &answer),
                "{}{}\nanswered {answer}, the book shows {documented}",
                self.comment,
                self.command
            );
        }
        answer
    }
}

/// Whether `real` is what the book shows: the same keys and values, a string with `…`
/// standing for any value, a list shown standing for the first items of the real one.
fn fits(documented: &Value, real: &Value) -> bool {
    match (documented, real) {
        (Value::String(s), _) if s.contains('…') => true,
        (Value::Object(d), Value::Object(r)) => {
            d.len() == r.len() && d.iter().all(|(k, v)| r.get(k).is_some_and(|r| fits(v, r)))
        }
        (Value::Array(d), Value::Array(r)) => {
            d.len() <= r.len() && d.iter().zip(r).all(|(d, r)| fits(d, r))
        }
        _ => documented == real,
    }
}

/// A history answer's messages as (seq, from, text).
fn messages(history: &Value) -> Vec<(u64, String, String)> {
    history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(common::seq_text)
        .collect()
}

/// User `user`'s public sender id, as a connection of its names it in its `joined`: the
/// one a reaction the host makes on its behalf carries.
async fn sender_of(server: &TestServer, user: &str) -> Value {
    let mut client = arrive(server, user, "Someone").await;
    let (joined, _) = client.join("lobby", "Someone").await;
    joined["you"]["sender"].clone()
}

/// Whether `curl` runs here.
fn curl_installed() -> bool {
    std::process::Command::new("curl")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A WebSocket client logged in as `user` (`name`) with a token for the lobby, as the
/// book's PHP page makes one.
async fn arrive(server: &TestServer, user: &str, name: &str) -> Client {
    let token = mint(
        TOKEN_SECRET.as_bytes(),
        &Claims {
            sub: user.into(),
            name: name.into(),
            rooms: vec!["lobby".into()],
            exp: unix_now() + 600,
        },
    );
    Client::ws_request(server, &format!("?token={token}"), &[])
        .await
        .expect("a token's connection is accepted")
}

/// Expects `client`'s connection to be closed as a kick closes it: `bye` 4403, no reconnect.
async fn assert_kicked(client: &mut Client) {
    let bye = client.next_of("bye").await;
    assert_eq!(
        (bye["code"].as_u64(), bye["reconnect"].as_bool()),
        (Some(4403), Some(false)),
        "{bye}"
    );
    assert_eq!(client.ended().await, Ended::Code(4403));
}

#[tokio::test]
async fn the_readme_curl_commands_of_the_http_api_work_as_pasted_into_bash() {
    if !curl_installed() {
        assert!(
            std::env::var("CI").is_err(),
            "curl is required under CI (scripts/test installs it)"
        );
        eprintln!("SKIPPED: curl is not installed (run scripts/test)");
        return;
    }
    let mut readme = Readme::read();
    let server = start_with(|c| c.token_secret(TOKEN_SECRET).api_key(API_KEY)).await;

    // The book's numbers: six earlier visits of seven messages each (Ann's first is "hi")
    // leave messages 1 to 42 in the lobby and member ids 1 to 6 handed out; Ann, user 42,
    // is back as member 7.
    let visitors = [
        ("42", "Ann"),
        ("43", "Bob"),
        ("44", "Cid"),
        ("45", "Dee"),
        ("46", "Eve"),
        ("47", "Fay"),
    ];
    for (user, name) in visitors {
        let mut visitor = arrive(&server, user, name).await;
        visitor.join("lobby", name).await;
        for i in 1..=7 {
            let text = match (name, i) {
                ("Ann", 1) => "hi".to_string(),
                _ => format!("{name}'s message {i}"),
            };
            visitor.say("lobby", &text, &format!("m{i}")).await;
        }
        visitor
            .send(json!({"type": "leave", "room": "lobby"}))
            .await;
        visitor.next_of("left").await;
    }
    let mut ann = arrive(&server, "42", "Ann").await;
    let (joined, _) = ann.join("lobby", "Ann").await;
    assert_eq!(joined["you"]["id"], 7, "{joined}");

    // Publish: message 43, and Ann sees it.
    readme
        .take("publish", "Order #42 shipped")
        .answered(&server)
        .await;
    assert_eq!(
        ann.messages("lobby", 1).await,
        [(43, "Shop".to_string(), "Order #42 shipped".to_string())]
    );

    // Members: Ann, member 7, user 42.
    readme.take("members", "").answered(&server).await;

    // The two kicks are alternatives; by member id first, as member 7 is Ann now. Then she
    // comes back (a new connection, a new member id) for the kick by user id.
    let answer = readme.take("kick", r#""member":7"#).answered(&server).await;
    assert_eq!(answer, json!({"room": "lobby", "kicked": 1}));
    assert_kicked(&mut ann).await;
    let mut ann = arrive(&server, "42", "Ann").await;
    ann.join("lobby", "Ann").await;
    readme
        .take("kick", r#""user":"42""#)
        .answered(&server)
        .await;
    assert_kicked(&mut ann).await;
    assert!(server.chat.members("lobby").await.unwrap().is_empty());

    // History: all 43, oldest first, Ann's "hi" first and the published message last.
    let mut bob = arrive(&server, "43", "Bob").await;
    bob.join("lobby", "Bob").await;
    let history = readme.take("history", "");
    let said = messages(&history.answered(&server).await);
    assert_eq!(said.len(), 43);
    assert!(said.iter().map(|m| m.0).eq(1..=43), "{said:?}");
    assert_eq!(said[0], (1, "Ann".into(), "hi".into()));
    assert_eq!(said[42], (43, "Shop".into(), "Order #42 shipped".into()));

    // User 43 (Bob) reacts to message 41 through the host: Bob's own connection sees the
    // count, and who reacted names him.
    readme.take("react", "-d ").answered(&server).await;
    let reacted = bob.next_of("update").await;
    assert_eq!(
        (&reacted["seq"], &reacted["reactions"]),
        (&json!(41), &json!([{"reaction": "👍", "count": 1}]))
    );
    let who = readme.take("reactions", "").answered(&server).await;
    assert_eq!(who["reactors"][0]["sender"], sender_of(&server, "43").await);

    // The shop mentions Ann (user 42), who is away: Bob sees the message naming her, and
    // her counts have it. Ann read up to her own last message, 7: 8 to 43 and 45 are
    // unread (44 is Bob's reaction), one mentions her.
    readme.take("publish", "mentions").answered(&server).await;
    let mentioning = bob.next_of("message").await;
    assert_eq!(mentioning["seq"], 45);
    assert_eq!(
        mentioning["mentions"],
        json!([sender_of(&server, "42").await])
    );
    readme.take("unread", "").answered(&server).await;
    // Bob's mark moves to 45: his connection is told.
    readme.take("read", "").answered(&server).await;
    let read = bob.next_of("read").await;
    assert_eq!((&read["seq"], &read["unread"]), (&json!(45), &json!(0)));

    // Edit message 42: Bob gets its new text, and so does history.
    readme.take("edit", "").answered(&server).await;
    let edited = bob.next_of("update").await;
    assert_eq!(
        (&edited["seq"], &edited["text"]),
        (&json!(42), &json!("[removed by a moderator]"))
    );
    let said = messages(&history.answered(&server).await);
    assert_eq!(
        (said[41].0, said[41].2.as_str()),
        (42, "[removed by a moderator]")
    );

    // Delete message 42: Bob hears of it, and history no longer has it.
    readme.take("delete", "").answered(&server).await;
    let deleted = bob.next_of("update").await;
    assert_eq!(
        (&deleted["room"], &deleted["seq"]),
        (&json!("lobby"), &json!(42))
    );
    let said = messages(&history.answered(&server).await);
    assert!(
        said.iter().map(|m| m.0).eq((1..=41).chain([43, 45])),
        "{said:?}"
    );

    // Ban user 42 from the lobby: Ann, back again, is closed, and refused on rejoining ...
    let mut ann = arrive(&server, "42", "Ann").await;
    ann.join("lobby", "Ann").await;
    readme.take("ban", "").answered(&server).await;
    assert_kicked(&mut ann).await;
    let mut ann = arrive(&server, "42", "Ann").await;
    ann.send(json!({"type": "join", "room": "lobby", "name": "Ann"}))
        .await;
    let refused = ann.next_of("error").await;
    assert_eq!(
        (refused["code"].as_str(), refused["room"].as_str()),
        (Some("banned"), Some("lobby")),
        "{refused}"
    );
    // ... until the unban: then she joins.
    readme.take("unban", "").answered(&server).await;
    let (joined, _) = ann.join("lobby", "Ann").await;
    assert_eq!(joined["you"]["name"], "Ann");

    assert!(
        readme.calls.is_empty(),
        "book commands this test does not run: {:?}",
        readme.calls.iter().map(|c| &c.command).collect::<Vec<_>>()
    );
    server.stop().await;
}
