//! A real `redis-server` for the tests that need one: in a directory of its own, on a port
//! of its own, stopped (or killed) and started again on the same port as a test asks.
//! Without `redis-server` a test skips loudly, and fails under `CI=true` (`scripts/test`
//! installs it).

#![allow(dead_code)] // each test file uses what it needs

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::common::{DEADLINE, tail};

/// `redis-server` on the PATH, if any.
pub fn redis_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| candidate.is_file())
}

/// A port nobody listens on, below the ephemeral range (32768 and up), so that no outgoing
/// connection of this or a parallel test takes it while a Redis that owns it is down.
pub fn quiet_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    for _ in 0..1000 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        let port = 20_000 + (hasher.finish() % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between 20000 and 32000")
}

/// What Redis keeps on disk.
#[derive(Clone, Copy, PartialEq)]
pub enum Persistence {
    /// Nothing: a restarted Redis is empty.
    None,
    /// An append-only file synced on every write: a restart (even after `kill -9`) has every
    /// write Redis answered.
    Aof,
}

/// A real `redis-server` in a directory of its own, on its own port, killed on drop.
pub struct Redis {
    binary: PathBuf,
    child: Option<Child>,
    port: u16,
    persistence: Persistence,
    dir: tempfile::TempDir,
}

impl Redis {
    /// Starts one, or says loudly why the test is skipped (and fails under CI).
    pub async fn start_or_skip(test: &str, persistence: Persistence) -> Option<Redis> {
        let Some(binary) = redis_binary() else {
            assert!(
                std::env::var("CI").is_err(),
                "redis-server is required under CI (scripts/test installs it)"
            );
            eprintln!("SKIPPED {test}: redis-server is not installed (run scripts/test)");
            return None;
        };
        let mut redis = Redis {
            binary,
            child: None,
            port: quiet_port(),
            persistence,
            dir: tempfile::tempdir().unwrap(),
        };
        redis.run().await;
        Some(redis)
    }

    /// The engine URL nodes are given.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again: same port, same directory) and waits until it answers.
    pub async fn run(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.path().join("redis.log"))
            .unwrap();
        let mut command = Command::new(&self.binary);
        command
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", ""])
            .arg("--dir")
            .arg(self.dir.path());
        match self.persistence {
            Persistence::None => command.args(["--appendonly", "no"]),
            Persistence::Aof => command.args(["--appendonly", "yes", "--appendfsync", "always"]),
        };
        let child = command
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + DEADLINE;
        while !self.pings().await {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("redis-server exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "redis-server does not answer PING:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether it answers `PING` with `+PONG` (in the inline protocol, as a person would
    /// type it).
    pub async fn pings(&self) -> bool {
        let exchange = async {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
            stream.write_all(b"PING\r\n").await?;
            let mut answer = [0u8; 7];
            stream.read_exact(&mut answer).await?;
            Ok::<_, std::io::Error>(&answer == b"+PONG\r\n")
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), exchange).await,
            Ok(Ok(true))
        )
    }

    /// Stops it the way an operator does: `SHUTDOWN` (redis-cli, or the inline command over
    /// TCP without it), and waits until the process is gone.
    pub async fn shutdown(&mut self) {
        let cli = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "shutdown"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if cli.is_err()
            && let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await
        {
            let _ = stream.write_all(b"SHUTDOWN\r\n").await;
            let mut rest = Vec::new();
            let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut rest)).await;
        }
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + DEADLINE;
        while child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "redis-server still runs after SHUTDOWN"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `kill -9`: no goodbye, no flush.
    pub fn kill(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- redis-server log ---\n{}", tail(&self.log()));
        }
    }
}
