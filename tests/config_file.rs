//! `wtchat serve --config FILE`: every setting from a flag, else its environment variable,
//! else the file, else the default — checked on what a running server really uses; a file
//! with unknown keys, a value of the wrong type or no file at all stops it before it starts,
//! naming them; `wtchat config --check` prints the effective configuration, secrets masked,
//! as a file it would read back.

mod common;

use std::path::Path;
use std::process::Output;

use serde_json::Value;

const SECRET: &str = "a-token-secret-of-32-bytes-or-more";
const API_KEY: &str = "an-api-key-of-32-bytes-or-more-too";

use common::{Serve, wtchat_command as command};

/// Runs `wtchat ARGS` to its end, which must come within the deadline.
fn run(args: &[&str], env: &[(&str, &str)], cwd: &Path) -> Output {
    common::run_to_end(command(args, env, cwd))
}

/// Asserts that `wtchat ARGS` was refused with status 1, printing nothing to stdout and an
/// error that contains each of `words`.
fn refused(args: &[&str], env: &[(&str, &str)], cwd: &Path, words: &[&str]) -> String {
    let out = run(args, env, cwd);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(out.stdout.is_empty(), "{args:?} printed something");
    for word in words {
        assert!(stderr.contains(word), "{args:?}: {word:?} not in {stderr}");
    }
    stderr
}

#[tokio::test]
async fn serve_takes_each_setting_from_its_flag_else_the_environment_else_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wtchat.toml");
    std::fs::write(
        &file,
        r#"
# only here
max_text_chars = 1000
idle_timeout = "2m"
# here and in the environment
frames_per_second = 7
# here, in the environment and on the command line
max_frame_bytes = 9000
engine = "sqlite:from-the-file.db"
"#,
    )
    .unwrap();
    let mut serve = common::serve_command(dir.path());
    serve
        .args(["--config", file.to_str().unwrap()])
        .args(["--engine", "memory", "--max-frame-bytes", "12000"])
        .envs([
            ("WTCHAT_FRAMES_PER_SECOND", "9"),
            ("WTCHAT_MAX_FRAME_BYTES", "10000"),
            ("WTCHAT_FRAME_BURST", "50"),
        ]);
    let server = Serve::start(serve, dir.path()).await;
    let printed = server.output();
    assert!(printed.contains("rooms         memory"), "{printed}");

    let (status, body) = common::http_get(server.http, "/wtchat/config", &[]).await;
    assert_eq!(status, 200, "{body}");
    let limits = serde_json::from_str::<Value>(&body).unwrap()["limits"].clone();
    assert_eq!(limits["maxTextChars"], 1000, "the file's: {limits}");
    assert_eq!(limits["idleTimeoutMs"], 120_000, "the file's: {limits}");
    assert_eq!(limits["framesPerSecond"], 9, "the environment's: {limits}");
    assert_eq!(limits["frameBurst"], 50, "the environment's: {limits}");
    assert_eq!(limits["maxFrameBytes"], 12000, "the flag's: {limits}");
    assert!(
        !dir.path().join("from-the-file.db").exists(),
        "the flag's engine, not the file's"
    );
}

#[test]
fn a_file_with_unknown_keys_stops_serve_before_it_starts_naming_every_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wtchat.toml");
    std::fs::write(
        &file,
        "max_text_chars = 1000\nmax_frame_byte = 16384\ncolour = \"blue\"\n",
    )
    .unwrap();
    let certs = dir.path().join("certs");
    let path = file.to_str().unwrap();
    let args = [
        "serve",
        "--config",
        path,
        "--http",
        "127.0.0.1:0",
        "--webtransport",
        "127.0.0.1:0",
        "--certs",
        certs.to_str().unwrap(),
    ];
    let stderr = refused(&args, &[], dir.path(), &[path, "max_frame_byte", "colour"]);
    assert!(
        !stderr.contains("max_text_chars"),
        "a known key is not unknown: {stderr}"
    );
    assert!(!certs.exists(), "nothing was done: no certificate was made");
}

#[test]
fn a_value_of_the_wrong_type_or_a_missing_file_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wtchat.toml");
    let path = file.to_str().unwrap();
    for (text, key) in [
        ("max_frame_bytes = \"lots\"", "max_frame_bytes"),
        ("max_frame_bytes = true", "max_frame_bytes"),
        ("require_origin = \"yes\"", "require_origin"),
        ("allow_origin = [1]", "allow_origin"),
        ("idle_timeout = \"2 fortnights\"", "idle_timeout"),
        ("public_url = 8080", "public_url"),
        ("http = 8080", "http"),
    ] {
        std::fs::write(&file, text).unwrap();
        let stderr = refused(&["serve", "--config", path], &[], dir.path(), &[path, key]);
        assert_eq!(stderr.lines().count(), 1, "{text}: {stderr}");
    }
    // An environment variable that holds what the flag would refuse is named too.
    refused(
        &["serve"],
        &[("WTCHAT_MAX_FRAME_BYTES", "lots")],
        dir.path(),
        &["WTCHAT_MAX_FRAME_BYTES", "lots"],
    );
    // A file that is not there, named by the flag or by WTCHAT_CONFIG.
    let missing = dir.path().join("missing.toml");
    let missing = missing.to_str().unwrap();
    refused(&["serve", "--config", missing], &[], dir.path(), &[missing]);
    refused(
        &["config", "--check"],
        &[("WTCHAT_CONFIG", missing)],
        dir.path(),
        &[missing],
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "nothing was made"
    );
}

/// The `key = value` lines of `config --check`'s output, without where each came from.
fn values(printed: &str) -> Vec<&str> {
    printed
        .lines()
        .filter(|line| !line.starts_with('#'))
        .map(|line| line.split("  # ").next().unwrap())
        .collect()
}

#[test]
fn config_check_prints_the_effective_configuration_with_secrets_masked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wtchat.toml");
    let path = file.to_str().unwrap();
    std::fs::write(
        &file,
        format!(
            r#"
token_secret = "{SECRET}"
allow_origin = ["https://a.example", "https://b.example"]
require_origin = true
idle_timeout = "90s"
max_text_chars = 1000
frames_per_second = 7
engine = "memory"
"#
        ),
    )
    .unwrap();
    let env = [
        ("WTCHAT_CONFIG", path),
        ("WTCHAT_API_KEY", API_KEY),
        ("WTCHAT_FRAMES_PER_SECOND", "9"),
    ];
    let out = run(
        &["config", "--check", "--max-text-chars", "2000"],
        &env,
        dir.path(),
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !stdout.contains(SECRET) && !stdout.contains(API_KEY),
        "{stdout}"
    );
    let table: toml::Table = stdout.parse().expect("the output is TOML");
    let string = |key: &str| table[key].as_str().unwrap_or_default().to_owned();
    assert_eq!(string("token_secret"), "********");
    assert_eq!(string("api_key"), "********");
    assert_eq!(table["max_text_chars"].as_integer(), Some(2000));
    assert_eq!(table["frames_per_second"].as_integer(), Some(9));
    assert_eq!(string("idle_timeout"), "90s");
    assert_eq!(string("engine"), "memory");
    assert_eq!(table["require_origin"].as_bool(), Some(true));
    let origins: Vec<_> = table["allow_origin"]
        .as_array()
        .unwrap()
        .iter()
        .map(|origin| origin.as_str().unwrap())
        .collect();
    assert_eq!(origins, ["https://a.example", "https://b.example"]);
    // Each line says where its value came from.
    let line = |key: &str| {
        stdout
            .lines()
            .find(|line| line.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no {key} in {stdout}"))
    };
    assert!(line("max_text_chars").ends_with("# --max-text-chars"));
    assert!(line("frames_per_second").ends_with("# WTCHAT_FRAMES_PER_SECOND"));
    assert!(line("token_secret").ends_with(&format!("# {path}")));
    assert!(line("certs").ends_with("# default"));
    // A setting left to the library is a comment.
    assert!(
        stdout
            .lines()
            .any(|line| line.starts_with("# max_connections")),
        "{stdout}"
    );
    // Checked, not started: nothing made in the working directory.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    // Pasted into a file (without the masked secrets), it says the same.
    let pasted = dir.path().join("pasted.toml");
    let without_secrets: String = stdout
        .lines()
        .filter(|line| !line.contains("********"))
        .map(|line| format!("{line}\n"))
        .collect();
    std::fs::write(&pasted, &without_secrets).unwrap();
    let again = run(
        &["config", "--check", "--config", pasted.to_str().unwrap()],
        &[],
        dir.path(),
    );
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(
        values(&String::from_utf8(again.stdout).unwrap()),
        values(&without_secrets)
    );

    // Refused as `serve` refuses it: status 1, the builder's words, nothing printed.
    refused(
        &["config", "--check"],
        &[("WTCHAT_CONFIG", path), ("WTCHAT_API_KEY", "k3y")],
        dir.path(),
        &["wtchat: invalid configuration: api_key: "],
    );
}
