//! A host that depends on the library compiles the library's dependencies and nothing of
//! the `wtchat` command's or the load tool's: a throwaway host crate, and its `cargo tree`.

use std::path::Path;
use std::process::Command;

/// Crates only the command (clap, tracing-subscriber) or the load tool (hdrhistogram,
/// libc for its own use) need.
const NOT_FOR_HOSTS: [&str; 3] = ["clap", "tracing-subscriber", "hdrhistogram"];

#[test]
fn a_host_crate_compiles_none_of_the_commands_crates() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"));
    let host = tempfile::tempdir().unwrap();
    std::fs::write(
        host.path().join("Cargo.toml"),
        format!(
            "[package]\nname = \"host\"\nversion = \"0.0.0\"\nedition = \"2024\"\n\n\
             [dependencies]\nwtchat = {{ path = {:?} }}\n\n[workspace]\n",
            workspace.join("lib")
        ),
    )
    .unwrap();
    std::fs::create_dir(host.path().join("src")).unwrap();
    std::fs::write(host.path().join("src/main.rs"), "fn main() {}\n").unwrap();
    // The workspace's lock file: the same versions, resolved without the network.
    std::fs::copy(workspace.join("Cargo.lock"), host.path().join("Cargo.lock")).unwrap();

    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "--edges",
            "normal,build",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(host.path())
        .output()
        .expect("cargo runs");
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    // It is the real tree: the library and what it is built on are there.
    for needed in ["wtchat", "wtransport", "axum", "tokio"] {
        assert!(crates.contains(&needed), "{needed} missing from:\n{tree}");
    }
    for unwanted in NOT_FOR_HOSTS {
        assert!(
            !crates.contains(&unwanted),
            "a host compiles {unwanted}:\n{tree}"
        );
    }
}
