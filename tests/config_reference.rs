//! The book's configuration reference (docs/src/configuration.md) is complete and names
//! nothing that does not exist. Its tables are the one place a setting is described; the
//! settings themselves are read from what the code offers: the flags `wtchat serve --help`
//! prints, the keys `wtchat config --check` prints (every file key, set or not), and the
//! public methods of `ConfigBuilder` in lib/src/config.rs. A setting added without a line in
//! the reference, or a line left behind by a removed one, fails here.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// What the reference's tables name, column by column.
#[derive(Default, Debug)]
struct Reference {
    methods: BTreeSet<String>,
    flags: BTreeSet<String>,
    keys: BTreeSet<String>,
}

/// The `code spans` of a table cell.
fn spans(cell: &str) -> impl Iterator<Item = &str> {
    cell.split('`').skip(1).step_by(2)
}

fn reference() -> Reference {
    let page = std::fs::read_to_string(root().join("docs/src/configuration.md")).unwrap();
    let mut reference = Reference::default();
    let mut in_table = false;
    for line in page.lines() {
        if line.starts_with("| builder method | `wtchat serve` flag | file key |") {
            in_table = true;
            continue;
        }
        if !line.starts_with('|') {
            in_table = false;
            continue;
        }
        if !in_table || line.starts_with("|---") {
            continue;
        }
        let cells: Vec<&str> = line.split('|').skip(1).collect();
        assert!(cells.len() >= 5, "a row with too few cells: {line}");
        // A span that starts with a capital is an argument's value (`Engine::Redis { .. }`,
        // the form `engine(…)` takes there), not a method.
        for span in spans(cells[0]).filter(|s| !s.starts_with(|c: char| c.is_uppercase())) {
            let name: String = span
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            assert!(
                span[name.len()..].starts_with('('),
                "not a method call: `{span}` in {line}"
            );
            reference.methods.insert(name);
        }
        for span in spans(cells[1]) {
            for word in span.split_whitespace().filter(|w| w.starts_with("--")) {
                reference.flags.insert(word.to_owned());
            }
        }
        for span in spans(cells[2]) {
            reference.keys.insert(span.to_owned());
        }
    }
    reference
}

/// Runs the `wtchat` binary with no `WTCHAT_` variable of this environment, in an empty
/// directory; its standard output.
fn wtchat(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_wtchat"));
    command.args(args).current_dir(dir.path());
    for (name, _) in std::env::vars() {
        if name.starts_with("WTCHAT_") {
            command.env_remove(name);
        }
    }
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "wtchat {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The flags of `wtchat serve --help` (but `--help`).
fn serve_flags() -> BTreeSet<String> {
    wtchat(&["serve", "--help"])
        .lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let line = line.strip_prefix("-h, ").unwrap_or(line);
            let flag: String = line
                .strip_prefix("--")?
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
                .collect();
            (flag != "help").then(|| format!("--{flag}"))
        })
        .collect()
}

/// The keys `wtchat config --check` prints: `key = value  # source`, or `# key: …` for a
/// key left to the library's default.
fn file_keys() -> BTreeSet<String> {
    let out = wtchat(&["config", "--check"]);
    let mut lines = out.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("# wtchat's effective configuration"),
        "{out}"
    );
    lines
        .map(|line| {
            let line = line.strip_prefix("# ").unwrap_or(line);
            line.split([' ', ':']).next().unwrap().to_owned()
        })
        .collect()
}

/// The public methods of `impl ConfigBuilder` (but `build`).
fn builder_methods() -> BTreeSet<String> {
    let source = std::fs::read_to_string(root().join("lib/src/config.rs")).unwrap();
    let block = source
        .split_once("\nimpl ConfigBuilder {\n")
        .expect("lib/src/config.rs has `impl ConfigBuilder`")
        .1
        .split("\n}\n")
        .next()
        .unwrap();
    block
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("    pub fn ")?;
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            (name != "build").then_some(name)
        })
        .collect()
}

/// What is in `code` and not in `reference` (missing), and the other way (unknown).
fn compare(what: &str, code: &BTreeSet<String>, reference: &BTreeSet<String>) -> Vec<String> {
    let mut wrong = Vec::new();
    for missing in code.difference(reference) {
        wrong.push(format!("{what} {missing} is not in the reference"));
    }
    for unknown in reference.difference(code) {
        wrong.push(format!(
            "the reference names {what} {unknown}, which does not exist"
        ));
    }
    wrong
}

#[test]
fn every_flag_builder_method_and_file_key_is_in_the_reference_and_nothing_else() {
    let reference = reference();
    let (flags, keys, methods) = (serve_flags(), file_keys(), builder_methods());
    // The sources are read at all (a parser that finds nothing would make this pass).
    assert!(flags.len() >= 40, "{flags:?}");
    assert!(keys.len() >= 40, "{keys:?}");
    assert!(methods.len() >= 40, "{methods:?}");
    assert!(flags.contains("--max-frame-bytes") && flags.contains("--config"));
    assert!(keys.contains("max_frame_bytes") && keys.contains("allow_origin"));
    assert!(methods.contains("max_frame_bytes") && methods.contains("message_hook"));

    let mut wrong = compare("flag", &flags, &reference.flags);
    wrong.extend(compare("file key", &keys, &reference.keys));
    wrong.extend(compare("builder method", &methods, &reference.methods));
    assert!(
        wrong.is_empty(),
        "docs/src/configuration.md is out of step with the code:\n  {}",
        wrong.join("\n  ")
    );
}
