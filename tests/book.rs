//! The front page and the book say only what runs. Every code block of README.md is checked:
//! it is a block of the book that a test reads and runs (`common::book_block`, found in the
//! tests' own source, so a block no test reads any more does not count), or the code of
//! `examples/axum_host.rs` that tests/embed.rs and tests/browser.rs run, or the two commands
//! CI runs. The book's `wtchat serve` command lines and its configuration file are accepted
//! by the command as written (`wtchat config --check`, which checks what `serve` would), and
//! its Node token is one the server takes.

mod common;

use std::path::Path;
use std::process::Command;

use common::{Client, book_block, book_page, code_blocks, start_with};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The Rust string literal at the start of `text` (after blanks), and the rest.
fn string_literal(text: &str) -> Option<(String, &str)> {
    let text = text.trim_start();
    let mut chars = text.strip_prefix('"')?.char_indices();
    let mut value = String::new();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Some((value, &text[at + 2..])),
            '\\' => match chars.next()?.1 {
                'n' => value.push('\n'),
                't' => value.push('\t'),
                escaped => value.push(escaped),
            },
            c => value.push(c),
        }
    }
    None
}

/// Every `book_block("page", "lang", "marker")` call with literal arguments in the tests'
/// sources: the blocks of the book that some test reads and runs.
fn blocks_the_tests_run() -> Vec<(String, String, String)> {
    let mut calls = Vec::new();
    for entry in std::fs::read_dir(root().join("tests")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        // Comments left out: a call a comment describes is no call.
        let source: String = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .filter(|line| !line.trim_start().starts_with("//"))
            .flat_map(|line| [line, "\n"])
            .collect();
        for (at, _) in source.match_indices("book_block(") {
            let args = &source[at + "book_block(".len()..];
            let parsed = (|| {
                let (page, rest) = string_literal(args)?;
                let (lang, rest) = string_literal(rest.trim_start().strip_prefix(',')?)?;
                let (marker, _) = string_literal(rest.trim_start().strip_prefix(',')?)?;
                Some((page, lang, marker))
            })();
            calls.extend(parsed);
        }
    }
    calls
}

/// Whether the non-blank lines of `excerpt` appear in `source` in the same order (each
/// trimmed, as a whole line), skipping the excerpt's `// …` lines, which say what was cut.
fn is_excerpt_of(excerpt: &str, source: &str) -> Result<(), String> {
    let mut lines = source.lines().map(str::trim);
    for wanted in excerpt.lines().map(str::trim) {
        if wanted.is_empty() || wanted.starts_with("// …") {
            continue;
        }
        if !lines.any(|line| line == wanted) {
            return Err(format!(
                "{wanted:?} is not there (after the lines before it)"
            ));
        }
    }
    Ok(())
}

#[test]
fn every_code_block_of_the_readme_is_checked() {
    let readme = read("README.md");
    let blocks = code_blocks(&readme);
    let run: Vec<_> = blocks_the_tests_run()
        .into_iter()
        .map(|(page, lang, marker)| (lang.clone(), book_block(&page, &lang, &marker)))
        .collect();
    assert!(
        run.len() >= 8,
        "the tests read only {} blocks of the book: {run:?}",
        run.len()
    );
    let ci = read(".ci/run");
    let example = read("examples/axum_host.rs");
    let mut checked = 0;
    for (lang, text) in &blocks {
        if text.contains("cargo run --release -- serve") {
            // The two commands: CI runs each exactly as written (output redirected at most).
            assert_eq!(lang, "sh");
            for command in text.lines() {
                let command = command.split(" #").next().unwrap().trim();
                assert!(
                    ci.lines()
                        .map(str::trim)
                        .any(|line| line == command || line.starts_with(&format!("{command} "))),
                    ".ci/run does not run `{command}` as README.md writes it"
                );
            }
            assert!(book_page("getting-started").contains(text.as_str()));
        } else if lang == "rust" {
            if let Err(why) = is_excerpt_of(text, &example) {
                panic!("README.md's rust block is not trimmed from examples/axum_host.rs: {why}");
            }
        } else {
            assert!(
                run.iter()
                    .any(|(run_lang, block)| run_lang == lang && block.contains(text.as_str())),
                "README.md's {lang} block is in no block of the book that a test runs:\n{text}"
            );
        }
        checked += 1;
    }
    assert!(
        checked >= 5,
        "README.md has {checked} code blocks: {blocks:?}"
    );
}

/// The `wtchat` binary, with no `WTCHAT_` variable of this process's environment.
fn wtchat_command(dir: &Path) -> Command {
    let mut command = Command::new("bash");
    command.current_dir(dir);
    for (name, _) in std::env::vars() {
        if name.starts_with("WTCHAT_") {
            command.env_remove(name);
        }
    }
    command.env("WTCHAT_BIN", env!("CARGO_BIN_EXE_wtchat"));
    command
}

/// Runs a shell block of the book with `wtchat serve …` checked by `wtchat config --check
/// …` (the same flags, environment and file, checked as `serve` would, nothing started).
fn check_serve_block(block: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let script = format!(
        "set -euo pipefail\n\
         wtchat() {{ if [ \"$1\" = serve ]; then shift; \"$WTCHAT_BIN\" config --check \"$@\"; \
         else \"$WTCHAT_BIN\" \"$@\"; fi; }}\n{block}"
    );
    let out = wtchat_command(dir.path())
        .args(["-c", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the book's block is refused:\n{block}\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("# wtchat's effective configuration"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "checking wrote nothing"
    );
    stdout
}

#[test]
fn the_books_serve_command_lines_are_accepted_as_written() {
    if Command::new("openssl").arg("version").output().is_err() {
        assert!(std::env::var("CI").is_err(), "openssl is required under CI");
        eprintln!("\n*** SKIPPED: openssl is not installed: the book's commands did not run ***\n");
        return;
    }
    let blocks = [
        book_block(
            "backend",
            "sh",
            "wtchat serve --http 127.0.0.1:8080 --allow-origin https://shop.example.com",
        ),
        book_block("webhooks", "sh", "--message-webhook"),
        book_block("proxy", "sh", "--trusted-proxy 127.0.0.1"),
    ];
    let backend = check_serve_block(&blocks[0]);
    assert!(
        backend.contains("allow_origin = [\"https://shop.example.com\"]"),
        "{backend}"
    );
    assert!(backend.contains("token_secret = \"********\"  # WTCHAT_TOKEN_SECRET"));
    assert!(backend.contains("api_key = \"********\"  # WTCHAT_API_KEY"));
    let webhooks = check_serve_block(&blocks[1]);
    assert!(
        webhooks.contains("auth_webhook = \"http://127.0.0.1:8000/chat/auth\""),
        "{webhooks}"
    );
    let proxy = check_serve_block(&blocks[2]);
    assert!(proxy.contains("trusted_proxy = [\"127.0.0.1\"]"), "{proxy}");

    // Every shell block of the book that starts `wtchat serve` is one of these.
    for entry in std::fs::read_dir(root().join("docs/src")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "md") {
            continue;
        }
        let page = std::fs::read_to_string(&path).unwrap();
        for (lang, text) in code_blocks(&page) {
            if lang == "sh" && text.lines().any(|l| l.starts_with("wtchat serve")) {
                assert!(
                    blocks.contains(&text),
                    "{}: a `wtchat serve` block this test does not run:\n{text}",
                    path.display()
                );
            }
        }
    }
}

#[test]
fn the_books_configuration_file_is_accepted_as_written() {
    let block = book_block("configuration", "toml", "# wtchat.toml");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wtchat.toml");
    std::fs::write(&file, &block).unwrap();
    let out = wtchat_command(dir.path())
        .args(["-c", "\"$WTCHAT_BIN\" config --check --config wtchat.toml"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{block}\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "http = \"0.0.0.0:8080\"  # wtchat.toml",
        "idle_timeout = \"90s\"  # wtchat.toml",
        "require_origin = true  # wtchat.toml",
    ] {
        assert!(stdout.contains(line), "{line:?} in\n{stdout}");
    }
}

#[tokio::test]
async fn the_books_node_token_is_one_the_server_takes() {
    if Command::new("node").arg("--version").output().is_err() {
        assert!(std::env::var("CI").is_err(), "node is required under CI");
        eprintln!("\n*** SKIPPED: node is not installed: the book's Node token did not run ***\n");
        return;
    }
    const SECRET: &str = "a-secret-of-32-bytes-or-more-for-node";
    let block = book_block("backend", "js", "function wtchatToken(");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("token.mjs");
    std::fs::write(
        &script,
        format!("{block}\nconsole.log(wtchatToken({{ id: 42, name: \"Ann\" }}));\n"),
    )
    .unwrap();
    let out = Command::new("node")
        .arg(&script)
        .env("WTCHAT_TOKEN_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    let server = start_with(|c| c.token_secret(SECRET)).await;
    let mut client = Client::ws_request(&server, &format!("?token={token}"), &[])
        .await
        .expect("the token's connection is taken");
    // The name is the token's, whatever the join says.
    let (joined, _) = client.join("lobby", "someone else").await;
    assert_eq!(joined["you"]["name"], "Ann", "{joined}");
    server.stop().await;
}
