//! A host that depends on the library compiles the library's dependencies and nothing of
//! the `wtchat` command's or the load tool's; with `default-features = false`, none of the
//! optional ones either: a throwaway host crate of each kind, built alone, and its
//! `cargo tree`.

use std::path::Path;
use std::process::Command;

/// Crates only the command (clap, tracing-subscriber) or the load tool (hdrhistogram,
/// libc for its own use) need.
const NOT_FOR_HOSTS: [&str; 3] = ["clap", "tracing-subscriber", "hdrhistogram"];

/// Crates only a feature brings: `sqlite`, `redis`, `metrics`.
const OPTIONAL: [&str; 3] = ["rusqlite", "redis", "prometheus-client"];

/// `cargo tree` of a throwaway host crate whose dependency on the library is `wtchat`
/// (a TOML value), with `edges`: one package per line.
fn host_tree(wtchat: &str, edges: &str, invert: Option<&str>) -> String {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"));
    let host = tempfile::tempdir().unwrap();
    std::fs::write(
        host.path().join("Cargo.toml"),
        format!(
            "[package]\nname = \"host\"\nversion = \"0.0.0\"\nedition = \"2024\"\n\n\
             [dependencies]\nwtchat = {}\n\n[workspace]\n",
            wtchat.replace("LIB", &format!("{:?}", workspace.join("lib")))
        ),
    )
    .unwrap();
    std::fs::create_dir(host.path().join("src")).unwrap();
    std::fs::write(host.path().join("src/main.rs"), "fn main() {}\n").unwrap();
    // The workspace's lock file: the same versions, resolved without the network.
    std::fs::copy(workspace.join("Cargo.lock"), host.path().join("Cargo.lock")).unwrap();
    let mut args = vec!["tree", "--offline", "--edges", edges, "--prefix", "none"];
    if let Some(package) = invert {
        args.extend(["--invert", package]);
    } else {
        args.extend(["--format", "{p}"]);
    }
    let out = Command::new(env!("CARGO"))
        .args(&args)
        .current_dir(host.path())
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The first word of each line: the packages.
fn crates(tree: &str) -> Vec<&str> {
    tree.lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect()
}

#[test]
fn a_host_crate_compiles_none_of_the_commands_crates() {
    let tree = host_tree("{ path = LIB }", "normal,build", None);
    let crates = crates(&tree);
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
    // The default features bring the optional crates.
    for optional in OPTIONAL {
        assert!(
            crates.contains(&optional),
            "{optional} missing from:\n{tree}"
        );
    }
}

#[test]
fn a_host_without_default_features_compiles_none_of_the_optional_crates() {
    let lean = "{ path = LIB, default-features = false }";
    let tree = host_tree(lean, "normal,build", None);
    let crates = crates(&tree);
    for needed in ["wtchat", "wtransport", "axum", "tokio", "hyper"] {
        assert!(crates.contains(&needed), "{needed} missing from:\n{tree}");
    }
    for optional in OPTIONAL {
        assert!(
            !crates.contains(&optional),
            "a host without default features compiles {optional}:\n{tree}"
        );
    }
    // hyper serves HTTP (axum's), but its client is the webhooks' only.
    let hyper = host_tree(lean, "features", Some("hyper"));
    assert!(hyper.contains("hyper feature \"server\""), "{hyper}");
    assert!(!hyper.contains("hyper feature \"client\""), "{hyper}");
    let full = host_tree("{ path = LIB }", "features", Some("hyper"));
    assert!(full.contains("hyper feature \"client\""), "{full}");
}
