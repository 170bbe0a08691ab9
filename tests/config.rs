//! Every setting that cannot work is refused — by the library's builder, and by
//! `wtchat serve` (and `wtchat token`) with the very same words — before anything is bound
//! or written.

mod common;

use std::time::Duration;

use wtchat::{Config, ConfigBuilder, ConfigError};

/// A host's settings.
type Settings = fn(ConfigBuilder) -> ConfigBuilder;

/// One setting that cannot work, as a host sets it and as a command line does.
struct Case {
    setting: &'static str,
    builder: Settings,
    flags: &'static [&'static str],
}

const SHORT_SECRET: &str = "change-me";
const WEBHOOK_SECRET: &str = "a-webhook-secret-of-32-bytes-or-more";

fn cases() -> Vec<Case> {
    vec![
        Case {
            setting: "token_secret",
            builder: |b| b.token_secret(SHORT_SECRET),
            flags: &["--token-secret", SHORT_SECRET],
        },
        Case {
            setting: "token_secret",
            builder: |b| b.token_secret(""),
            flags: &["--token-secret", ""],
        },
        Case {
            setting: "api_key",
            builder: |b| b.api_key("k3y"),
            flags: &["--api-key", "k3y"],
        },
        Case {
            setting: "renew_before",
            builder: |b| b.renew_before(Duration::from_secs(14 * 86_400)),
            flags: &["--renew-before", "14d"],
        },
        Case {
            setting: "renew_before",
            builder: |b| b.renew_before(Duration::ZERO),
            flags: &["--renew-before", "0s"],
        },
        // 1000 messages of history × 16 rooms cannot fit the default queue of 8192.
        Case {
            setting: "outbound_queue",
            builder: |b| b.history(1000),
            flags: &["--history", "1000"],
        },
        Case {
            setting: "outbound_queue",
            builder: |b| b.outbound_queue(1599),
            flags: &["--outbound-queue", "1599"],
        },
        // Nor can a resume's 600 × 16.
        Case {
            setting: "outbound_queue",
            builder: |b| b.max_replay(600),
            flags: &["--max-replay", "600"],
        },
        Case {
            setting: "max_replay",
            builder: |b| b.max_replay(0),
            flags: &["--max-replay", "0"],
        },
        Case {
            setting: "retention_messages",
            builder: |b| b.retention_messages(0),
            flags: &["--retention-messages", "0"],
        },
        Case {
            setting: "retention_messages",
            builder: |b| b.retention_messages(99),
            flags: &["--retention-messages", "99"],
        },
        Case {
            setting: "presence_threshold",
            builder: |b| b.presence_threshold(1),
            flags: &["--presence-threshold", "1"],
        },
        Case {
            setting: "presence_interval",
            builder: |b| b.presence_interval(Duration::from_millis(5)),
            flags: &["--presence-interval", "5ms"],
        },
        Case {
            setting: "retention_age",
            builder: |b| b.retention_age(Duration::from_millis(500)),
            flags: &["--retention-age", "500ms"],
        },
        Case {
            setting: "retention_bytes",
            builder: |b| b.retention_bytes(1000),
            flags: &["--retention-bytes", "1000"],
        },
        Case {
            setting: "outbound_queue",
            builder: |b| b.max_rooms_per_connection(100),
            flags: &["--max-rooms-per-connection", "100"],
        },
        Case {
            setting: "outbound_queue",
            builder: |b| b.outbound_queue(0),
            flags: &["--outbound-queue", "0"],
        },
        Case {
            setting: "frames_per_second",
            builder: |b| b.frames_per_second(0),
            flags: &["--frames-per-second", "0"],
        },
        Case {
            setting: "frame_burst",
            builder: |b| b.frame_burst(0),
            flags: &["--frame-burst", "0"],
        },
        Case {
            setting: "max_connections",
            builder: |b| b.max_connections(0),
            flags: &["--max-connections", "0"],
        },
        Case {
            setting: "max_connections_per_ip",
            builder: |b| b.max_connections_per_ip(0),
            flags: &["--max-connections-per-ip", "0"],
        },
        Case {
            setting: "history_bytes",
            builder: |b| b.history_bytes(20_000),
            flags: &["--history-bytes", "20000"],
        },
        Case {
            setting: "max_http_connections",
            builder: |b| b.max_http_connections(0),
            flags: &["--max-http-connections", "0"],
        },
        Case {
            setting: "max_http_connections_per_ip",
            builder: |b| b.max_http_connections_per_ip(0),
            flags: &["--max-http-connections-per-ip", "0"],
        },
        Case {
            setting: "max_streams_per_ip",
            builder: |b| b.max_streams_per_ip(0),
            flags: &["--max-streams-per-ip", "0"],
        },
        Case {
            setting: "ipv6_prefix",
            builder: |b| b.ipv6_prefix(0),
            flags: &["--ipv6-prefix", "0"],
        },
        Case {
            setting: "ipv6_prefix",
            builder: |b| b.ipv6_prefix(129),
            flags: &["--ipv6-prefix", "129"],
        },
        Case {
            setting: "max_new_rooms_per_day_per_ip",
            builder: |b| b.max_new_rooms_per_day_per_ip(0),
            flags: &["--max-new-rooms-per-day-per-ip", "0"],
        },
        Case {
            setting: "max_rooms",
            builder: |b| b.max_rooms(0),
            flags: &["--max-rooms", "0"],
        },
        Case {
            setting: "header_read_timeout",
            builder: |b| b.header_read_timeout(Duration::ZERO),
            flags: &["--header-read-timeout", "0"],
        },
        Case {
            setting: "max_new_rooms_per_minute",
            builder: |b| b.max_new_rooms_per_minute(0),
            flags: &["--max-new-rooms-per-minute", "0"],
        },
        Case {
            setting: "max_rooms_per_connection",
            builder: |b| b.max_rooms_per_connection(0),
            flags: &["--max-rooms-per-connection", "0"],
        },
        Case {
            setting: "max_text_chars",
            builder: |b| b.max_text_chars(0),
            flags: &["--max-text-chars", "0"],
        },
        Case {
            setting: "max_frame_bytes",
            builder: |b| b.max_frame_bytes(0),
            flags: &["--max-frame-bytes", "0"],
        },
        // A frame limit that cannot carry a message of the longest allowed text.
        Case {
            setting: "max_frame_bytes",
            builder: |b| b.max_frame_bytes(4000),
            flags: &["--max-frame-bytes", "4000"],
        },
        Case {
            setting: "idle_timeout",
            builder: |b| b.idle_timeout(Duration::ZERO),
            flags: &["--idle-timeout", "0"],
        },
        Case {
            setting: "idle_timeout",
            builder: |b| b.idle_timeout(Duration::from_millis(500)),
            flags: &["--idle-timeout", "500ms"],
        },
        Case {
            setting: "shutdown_grace",
            builder: |b| b.shutdown_grace(Duration::ZERO),
            flags: &["--shutdown-grace", "0"],
        },
        Case {
            setting: "public_webtransport_url",
            builder: |b| b.public_webtransport_url("http://chat.example.com:4433/wtchat"),
            flags: &[
                "--public-webtransport-url",
                "http://chat.example.com:4433/wtchat",
            ],
        },
        Case {
            setting: "public_url",
            builder: |b| b.public_url("example.com/chat"),
            flags: &["--public-url", "example.com/chat"],
        },
        Case {
            setting: "allow_origin",
            builder: |b| b.allow_origin("https://shop.example.com/chat"),
            flags: &["--allow-origin", "https://shop.example.com/chat"],
        },
        // A login (the page's cookies) offered to every site.
        Case {
            setting: "allow_origin",
            builder: |b| {
                b.allow_origin("*")
                    .auth_webhook("http://127.0.0.1:9/auth")
                    .webhook_secret(WEBHOOK_SECRET)
            },
            flags: &[
                "--allow-origin",
                "*",
                "--auth-webhook",
                "http://127.0.0.1:9/auth",
                "--webhook-secret",
                WEBHOOK_SECRET,
            ],
        },
        Case {
            setting: "ticket_rate",
            builder: |b| b.ticket_rate(0),
            flags: &["--ticket-rate", "0"],
        },
    ]
}

fn refusal(builder: Settings) -> ConfigError {
    builder(Config::builder())
        .build()
        .expect_err("the builder refuses it")
}

#[test]
fn the_builder_names_the_setting_and_the_reason() {
    for case in cases() {
        let error = refusal(case.builder);
        assert_eq!(error.setting(), case.setting, "{error}");
        assert_eq!(
            error.to_string(),
            format!("{}: {}", case.setting, error.reason())
        );
    }
    // The reasons say what would work.
    assert_eq!(
        refusal(|b| b.token_secret(SHORT_SECRET)).to_string(),
        "token_secret: must be at least 32 bytes, or it can be guessed; got 9 (make one with \
         `openssl rand -hex 32`)"
    );
    assert_eq!(
        refusal(|b| b.retention_messages(99)).to_string(),
        "retention_messages: must be at least history (100): memory would replay messages that \
         storage no longer has; got 99"
    );
    assert_eq!(
        refusal(|b| b.history(1000)).to_string(),
        "outbound_queue: must hold at least max(history, max_replay) × max_rooms_per_connection \
         = 1000 × 16 = 16000 frames, or a client joining its rooms would be cut off as too slow \
         by their history alone; got 8192"
    );
    // The limits themselves are fine.
    let at_the_edge = Config::builder()
        .token_secret("x".repeat(32))
        .api_key("y".repeat(32))
        .history(128)
        .max_replay(128)
        .retention_messages(128)
        .retention_age(Duration::from_secs(1))
        .outbound_queue(128 * 16)
        .renew_before(Duration::from_secs(14 * 86_400 - 1))
        .public_webtransport_url("https://chat.example.com/wtchat")
        .allow_origin("https://shop.example.com")
        .allow_origin("*")
        .build();
    assert!(at_the_edge.is_ok(), "{at_the_edge:?}");
    // No history at all is a choice, not a mistake.
    assert!(Config::builder().history(0).build().is_ok());
}

#[test]
fn zero_is_refused_for_every_limit() {
    let zeroes: [(&str, Settings); 16] = [
        ("max_frame_bytes", |b| b.max_frame_bytes(0)),
        ("max_text_chars", |b| b.max_text_chars(0)),
        ("max_name_chars", |b| b.max_name_chars(0)),
        ("max_room_chars", |b| b.max_room_chars(0)),
        ("max_id_bytes", |b| b.max_id_bytes(0)),
        ("max_rooms_per_connection", |b| {
            b.max_rooms_per_connection(0)
        }),
        ("frames_per_second", |b| b.frames_per_second(0)),
        ("frame_burst", |b| b.frame_burst(0)),
        ("dedupe_window", |b| b.dedupe_window(0)),
        ("max_rooms", |b| b.max_rooms(0)),
        ("outbound_queue", |b| b.outbound_queue(0)),
        ("max_connections", |b| b.max_connections(0)),
        ("ws_read_buffer", |b| b.ws_read_buffer(0)),
        ("ticket_rate", |b| b.ticket_rate(0)),
        ("ticket_burst", |b| b.ticket_burst(0)),
        ("close_grace", |b| b.close_grace(Duration::ZERO)),
    ];
    for (setting, builder) in zeroes {
        assert_eq!(refusal(builder).setting(), setting);
    }
}

/// Runs `wtchat` with `args` and only `env` of its settings in its environment; it must
/// exit within the deadline (a server that does not refuse its configuration would run on:
/// it is killed, and the test fails).
fn wtchat(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    // In a directory of its own: a server that failed to refuse would create its database
    // there, not in the repository.
    let cwd = tempfile::tempdir().unwrap();
    common::run_to_end(common::wtchat_command(args, env, cwd.path()))
}

#[test]
fn wtchat_serve_refuses_the_same_settings_with_the_same_words() {
    for case in cases() {
        let certs = tempfile::tempdir().unwrap();
        let mut args = vec![
            "serve",
            "--http",
            "127.0.0.1:0",
            "--webtransport",
            "127.0.0.1:0",
            "--certs",
            certs.path().to_str().unwrap(),
        ];
        args.extend(case.flags);
        let out = wtchat(&args, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        let error = refusal(case.builder);
        assert_eq!(
            stderr.trim_end(),
            format!("wtchat: invalid configuration: {error}"),
            "{args:?}"
        );
        // Refused before anything was done: no certificate was made, nothing served.
        assert_eq!(
            std::fs::read_dir(certs.path()).unwrap().count(),
            0,
            "{args:?}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn secrets_from_the_environment_are_checked_too() {
    let certs = tempfile::tempdir().unwrap();
    let serve = [
        "serve",
        "--http",
        "127.0.0.1:0",
        "--certs",
        certs.path().to_str().unwrap(),
    ];
    let expected = |error: ConfigError| format!("wtchat: invalid configuration: {error}");
    let out = wtchat(&serve, &[("WTCHAT_TOKEN_SECRET", SHORT_SECRET)]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        expected(refusal(|b| b.token_secret(SHORT_SECRET)))
    );
    let out = wtchat(&serve, &[("WTCHAT_API_KEY", "k3y")]);
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        expected(refusal(|b| b.api_key("k3y")))
    );
}

#[test]
fn wtchat_token_refuses_a_secret_serve_would_refuse() {
    for secret in ["", SHORT_SECRET] {
        let out = wtchat(
            &[
                "token", "--secret", secret, "--user", "42", "--name", "Ann", "--room", "lobby",
            ],
            &[],
        );
        assert_eq!(out.status.code(), Some(1));
        assert!(out.stdout.is_empty(), "no token was printed");
        let error = Config::builder().token_secret(secret).build().unwrap_err();
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim_end(),
            format!("wtchat: invalid configuration: {error}")
        );
    }
}
