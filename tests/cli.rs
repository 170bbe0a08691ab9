//! The `wtchat` command: `certs` writes what a client pinning the printed digest accepts
//! and refuses a validity browsers would refuse; `serve` prints where it listens, makes its
//! certificate, serves, and stops cleanly on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use common::{Client, start_with};
use wtchat::Tls;

fn wtchat(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wtchat"))
        .args(args)
        .output()
        .expect("the wtchat binary runs")
}

#[tokio::test]
async fn the_printed_digest_is_what_a_pinning_client_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let out = wtchat(&[
        "certs",
        "--dir",
        dir.path().to_str().unwrap(),
        "--days",
        "14",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let digest_hex = stdout
        .lines()
        .find_map(|l| l.strip_prefix("sha-256: "))
        .expect("the digest is printed")
        .trim()
        .to_string();
    assert!(stdout.contains("expires: "), "{stdout}");
    let key = std::fs::metadata(dir.path().join("key.pem")).unwrap();
    assert_eq!(
        key.permissions().mode() & 0o777,
        0o600,
        "the key is private"
    );
    assert!(dir.path().join("cert.pem").exists());

    let mut digest = [0u8; 32];
    for (i, b) in digest.iter_mut().enumerate() {
        *b = u8::from_str_radix(&digest_hex[2 * i..2 * i + 2], 16).unwrap();
    }
    // A server using that directory serves that certificate, unchanged.
    let certs = dir.path().to_path_buf();
    let server = start_with(move |c| c.tls(Tls::Dev { dir: certs })).await;
    assert_eq!(server.digests, [digest]);
    let mut client = Client::wt_pinning(&server, &[digest], "/wtchat", None)
        .await
        .expect("a client pinning the printed digest connects");
    client.join("pinned", "pat").await;
    assert_eq!(client.say("pinned", "hello", "1").await, 1);
    // Pinning anything else fails the handshake.
    let mut other = digest;
    other[0] ^= 0xff;
    assert!(
        Client::wt_pinning(&server, &[other], "/wtchat", None)
            .await
            .is_err()
    );
    server.stop().await;
}

#[test]
fn more_than_fourteen_days_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let out = wtchat(&[
        "certs",
        "--dir",
        dir.path().to_str().unwrap(),
        "--days",
        "15",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("14 days"), "{stderr}");
    assert!(!dir.path().join("key.pem").exists(), "nothing is written");
}

#[test]
fn names_can_be_chosen() {
    let dir = tempfile::tempdir().unwrap();
    let out = wtchat(&[
        "certs",
        "--dir",
        dir.path().to_str().unwrap(),
        "--san",
        "chat.test",
        "--san",
        "10.1.2.3",
    ]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("names:   chat.test, 10.1.2.3"), "{stdout}");
}

#[tokio::test]
async fn serve_prints_its_addresses_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let mut child = Command::new(env!("CARGO_BIN_EXE_wtchat"))
        // The default engine's database is created in the working directory.
        .current_dir(dir.path())
        .args([
            "serve",
            "--http",
            "127.0.0.1:0",
            "--webtransport",
            "[::]:0",
            "--certs",
        ])
        .arg(&certs)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let done = line.starts_with("Press Ctrl-C");
        printed.push(line);
        if done {
            break;
        }
    }
    let text = printed.join("\n");
    // The real ports, not 0.
    let http = text
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the HTTP address is printed")
        .to_string();
    assert!(!http.ends_with(":0"), "{text}");
    assert!(text.contains("sha-256 "), "{text}");
    assert!(
        certs.join("cert.pem").exists(),
        "a certificate was generated"
    );
    let (status, body) = common::http_get(http.parse().unwrap(), "/wtchat/config", &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("certificateHashes"));
    // The default engine: a database in the working directory, named where it is printed.
    assert!(text.contains("rooms         sqlite:wtchat.db"), "{text}");
    assert!(dir.path().join("wtchat.db").exists());

    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = std::time::Instant::now() + common::DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running after SIGTERM"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
}

#[test]
fn token_mints_what_the_server_verifies() {
    let secret = "the-same-secret-as-serve-is-given-32";
    let out = wtchat(&[
        "token", "--secret", secret, "--user", "42", "--name", "Ann", "--room", "lobby", "--room",
        "help", "--ttl", "600",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    let now = wtchat::auth::unix_now();
    let claims = wtchat::auth::verify(secret.as_bytes(), token.trim(), now).unwrap();
    assert_eq!((claims.sub.as_str(), claims.name.as_str()), ("42", "Ann"));
    assert_eq!(claims.rooms, ["lobby", "help"]);
    assert!(claims.exp > now + 590 && claims.exp <= now + 600);
    assert!(wtchat::auth::verify(b"other", token.trim(), now).is_err());
}

/// `serve` started with a soft open-file limit of 1,024 (a common default) raises it to the
/// hard limit, since each connection is a socket; and it logs a warning when even the hard
/// limit is below what its configuration may hold (`max_connections` +
/// `max_http_connections` + 64).
#[test]
fn serve_raises_its_open_file_limit_and_warns_when_the_hard_one_is_too_low() {
    // (hard limit, max connections, whether it warns)
    for (hard, max_connections, warns) in [(8192, "1000", false), (1500, "50000", true)] {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("prlimit")
            .arg(format!("--nofile=1024:{hard}"))
            .arg(env!("CARGO_BIN_EXE_wtchat"))
            .args(["serve", "--engine", "memory", "--http", "127.0.0.1:0"])
            .args([
                "--webtransport",
                "127.0.0.1:0",
                "--max-http-connections",
                "100",
            ])
            .args(["--max-connections", max_connections, "--certs"])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("prlimit (util-linux) runs");
        let stderr = child.stderr.take().unwrap();
        let said = std::thread::spawn(move || {
            BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<_>>()
        });
        // prlimit runs the command in its own place: the child is the server.
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            if line.unwrap().starts_with("Press Ctrl-C") {
                break;
            }
        }
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
        let open_files = limits
            .lines()
            .find(|line| line.starts_with("Max open files"))
            .unwrap()
            .split_whitespace()
            .skip(3)
            .take(2)
            .collect::<Vec<_>>();
        let hard = hard.to_string();
        assert_eq!(
            open_files,
            [hard.as_str(), hard.as_str()],
            "soft raised to hard"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        let said = said.join().unwrap().join("\n");
        let warning = format!("at most {hard} open files");
        assert_eq!(said.contains(&warning), warns, "stderr: {said}");
        if warns {
            assert!(said.contains("may hold 50164"), "{said}");
        }
    }
}
