//! The `wtchat` command: `serve` runs the chat server, `config --check` validates and prints
//! its configuration, `certs` writes a development certificate, `token` mints a signed token.

mod config_file;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use wtchat::certs::{self, DevCert};
use wtchat::{Config, ConfigError, Engine, Server, Tls};

#[derive(Parser)]
#[command(
    name = "wtchat",
    version,
    about = "Chat rooms over WebTransport with a WebSocket fallback"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Said under `serve --help` and `config --help`.
const SOURCES: &str = "Every flag may also be set by an environment variable, WTCHAT_ and \
    the flag's name in capitals with underscores (WTCHAT_MAX_FRAME_BYTES), or by a key of \
    the --config file, the flag's name with underscores (max_frame_bytes = 16384). A flag \
    beats the environment, which beats the file, which beats the default.";

#[derive(Subcommand)]
enum Command {
    /// Run the chat server.
    #[command(after_help = SOURCES)]
    Serve(Box<ServeCommand>),
    /// Check a configuration as `serve` would and print it, secrets masked.
    #[command(after_help = SOURCES)]
    Config(Box<ConfigCommand>),
    /// Mint a signed token for trying things out (a host's backend mints its own).
    Token {
        /// The shared secret (as given to `serve --token-secret`).
        #[arg(long, env = "WTCHAT_TOKEN_SECRET", hide_env_values = true)]
        secret: String,
        /// The user id.
        #[arg(long)]
        user: String,
        /// The display name.
        #[arg(long)]
        name: String,
        /// A room the user may join (repeatable; `*` for any).
        #[arg(long = "room", required = true)]
        rooms: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// Write a development certificate browsers accept by digest (at most 14 days).
    Certs {
        /// Where to write cert.pem and key.pem.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Validity in days, 1 to 14.
        #[arg(long, default_value_t = certs::MAX_DAYS)]
        days: u32,
        /// Subject alternative names (repeatable). Default: localhost, 127.0.0.1, ::1.
        #[arg(long = "san")]
        sans: Vec<String>,
    },
}

/// `serve`'s settings and where else they come from.
#[derive(Args)]
struct ServeCommand {
    /// A TOML file of settings: each key is a flag's name with underscores
    /// (max_frame_bytes = 16384).
    // Read (as `config_file::FILE_ARG`) before the settings are parsed, not from here.
    #[arg(long, env = "WTCHAT_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: ServeArgs,
}

/// `wtchat config`'s arguments: what it does, and the configuration to do it with.
#[derive(Args)]
struct ConfigCommand {
    /// Validate the configuration (flags, environment, file) as `serve` would and print it,
    /// one `key = value` a line (TOML), secrets masked; exit 1 if it is refused.
    #[arg(long, required = true)]
    check: bool,
    #[command(flatten)]
    serve: ServeCommand,
}

/// `wtchat serve`'s settings. Each is the library's builder setting of the same name (with
/// dashes): unset, the library's default applies, and the builder refuses what cannot work
/// with the same words for both. Defaults are in README.md. Each field is also an
/// environment variable and a file key (config_file.rs derives both from the flag).
#[derive(Args)]
struct ServeArgs {
    /// HTTP address (TCP): configuration, WebSocket fallback, client. Port 0 picks one.
    #[arg(long)]
    http: Option<SocketAddr>,
    /// WebTransport address (UDP). `[::]` is dual-stack. Port 0 picks one.
    #[arg(long)]
    webtransport: Option<SocketAddr>,
    /// Directory of the development certificate (created and renewed as needed).
    #[arg(long, default_value = "certs")]
    certs: PathBuf,
    /// A CA-issued certificate chain (PEM) instead of the development certificate.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// The WebTransport URL handed to browsers when they reach the UDP port under another
    /// name or port (https://chat.example.com:443/wtchat).
    #[arg(long)]
    public_webtransport_url: Option<String>,
    /// Where pages reach this server's HTTP side when the request does not say it: a
    /// public name, port or path prefix behind a proxy (https://example.com/chat).
    #[arg(long)]
    public_url: Option<String>,
    /// A proxy whose X-Forwarded-For/-Proto/-Host/-Prefix headers are believed
    /// (repeatable); nobody else's are.
    #[arg(long = "trusted-proxy")]
    trusted_proxy: Vec<IpAddr>,
    /// An origin whose pages may connect (repeatable; `*` for any, but not with
    /// --auth-webhook: a login needs named origins). Default: this server's own HTTP
    /// origins.
    #[arg(long = "allow-origin")]
    allow_origin: Vec<String>,
    /// Refuse connections that carry no Origin header (non-browser clients).
    #[arg(long)]
    require_origin: bool,
    /// Frames per second one connection may send, sustained.
    #[arg(long, alias = "max-frames-per-second")]
    frames_per_second: Option<u32>,
    /// Frames one connection may send in a burst.
    #[arg(long)]
    frame_burst: Option<u32>,
    /// Largest frame a client may send, in bytes.
    #[arg(long)]
    max_frame_bytes: Option<usize>,
    /// Longest message text, in characters.
    #[arg(long)]
    max_text_chars: Option<usize>,
    /// Rooms one connection may be in at once.
    #[arg(long)]
    max_rooms_per_connection: Option<usize>,
    /// Rooms held in memory; at the limit the least recently active empty room is
    /// dropped, and if none is empty a new room is refused (server_full).
    #[arg(long)]
    max_rooms: Option<usize>,
    /// Distinct rooms the connections of one address (or signed-in user) may hold open.
    #[arg(long)]
    max_rooms_per_ip: Option<usize>,
    /// Rooms one address (or signed-in user) may create per minute.
    #[arg(long)]
    max_new_rooms_per_minute_per_ip: Option<u32>,
    /// Rooms one address (or signed-in user) may create per day.
    #[arg(long)]
    max_new_rooms_per_day_per_ip: Option<u32>,
    /// Rooms one connection may create per minute (joining rooms that do not exist yet).
    #[arg(long)]
    max_new_rooms_per_minute: Option<u32>,
    /// Connections held at once, over every transport.
    #[arg(long)]
    max_connections: Option<usize>,
    /// Connections one client address may hold at once.
    #[arg(long)]
    max_connections_per_ip: Option<usize>,
    /// Connections one signed-in user may hold at once (they leave their address's count
    /// once identified).
    #[arg(long)]
    max_connections_per_user: Option<usize>,
    /// Ticket requests (POST /wtchat/ticket) one client address may make per second;
    /// past it, 429 with Retry-After.
    #[arg(long)]
    ticket_rate: Option<u32>,
    /// Ticket requests one client address may make at once, above --ticket-rate.
    #[arg(long)]
    ticket_burst: Option<u32>,
    /// HTTP connections held at once that have not become WebSockets.
    #[arg(long)]
    max_http_connections: Option<usize>,
    /// HTTP connections not yet upgraded that one client address may hold.
    #[arg(long)]
    max_http_connections_per_ip: Option<usize>,
    /// SSE streams and held long polls one client address may have open.
    #[arg(long)]
    max_streams_per_ip: Option<usize>,
    /// Leading bits of an IPv6 address that name one client for the per-address limits
    /// (64: a /64 is one client; 128: each address apart).
    #[arg(long)]
    ipv6_prefix: Option<u8>,
    /// How long a client may take to send a request's headers (like 10s).
    #[arg(long, value_parser = duration)]
    header_read_timeout: Option<Duration>,
    /// Where rooms keep their messages: sqlite:PATH (durable; the file is created on first
    /// start), redis://HOST:PORT[/DB] (several wtchat processes share Redis 6.2+ and serve
    /// one chat) or memory (gone on every restart).
    #[arg(long, default_value = "sqlite:wtchat.db")]
    engine: Engine,
    /// With a Redis engine: the start of every key and channel name, so that several sites
    /// can share one Redis.
    #[arg(long, default_value = wtchat::DEFAULT_REDIS_PREFIX)]
    redis_prefix: String,
    /// Messages of history kept in memory per room and replayed on join.
    #[arg(long)]
    history: Option<usize>,
    /// Most messages a resuming client is sent at once (past it: the newest and a gap).
    #[arg(long)]
    max_replay: Option<usize>,
    /// Messages stored per room; older ones are deleted.
    #[arg(long)]
    retention_messages: Option<u64>,
    /// How long stored messages are kept (like 30d, 12h).
    #[arg(long, value_parser = duration)]
    retention_age: Option<Duration>,
    /// Bytes the stored messages may take in SQLite (the least active rooms lose their
    /// oldest first).
    #[arg(long)]
    retention_bytes: Option<u64>,
    /// Client message ids remembered per room: a retry of one is acknowledged again, not
    /// stored twice.
    #[arg(long)]
    dedupe_window: Option<usize>,
    /// Bytes of history held over all rooms (the least active rooms lose theirs first).
    #[arg(long)]
    history_bytes: Option<usize>,
    /// Members at which a room becomes big: count and first page on join, presence in
    /// periodic updates.
    #[arg(long)]
    presence_threshold: Option<usize>,
    /// How often a big room tells its members who joined and left (like 1s, 500ms).
    #[arg(long, value_parser = duration)]
    presence_interval: Option<Duration>,
    /// Frames queued per connection before it is cut off as too slow.
    #[arg(long)]
    outbound_queue: Option<usize>,
    /// Bytes of live frames queued per connection before it is cut off as too slow (a
    /// join's replay does not count).
    #[arg(long)]
    outbound_bytes: Option<usize>,
    /// Replace the development certificate when it has less than this left (90s, 30m,
    /// 12h, 1d).
    #[arg(long, value_parser = duration)]
    renew_before: Option<Duration>,
    /// How long a sender may edit its message after sending it (15m; 0 = never).
    #[arg(long, value_parser = duration)]
    edit_window: Option<Duration>,
    /// Distinct reactions one message may carry (20).
    #[arg(long)]
    reactions_per_message: Option<usize>,
    /// Reactions one member may add to one message (3).
    #[arg(long)]
    reactions_per_member: Option<usize>,
    /// A name members may react with besides an emoji (repeatable), like plus-one.
    #[arg(long = "reaction-name")]
    reaction_name: Vec<String>,
    /// Close a client that sends nothing, not even a ping, for this long (60, 90s, 2m).
    #[arg(long, value_parser = duration)]
    idle_timeout: Option<Duration>,
    /// How long shutdown waits for clients to receive their last frames (like 5s).
    #[arg(long, value_parser = duration)]
    shutdown_grace: Option<Duration>,
    /// Require signed tokens (`?token=`, HS256) made with this secret (32 bytes or more).
    #[arg(long)]
    token_secret: Option<String>,
    /// Enable the HTTP API for the host's backend with this key (32 bytes or more;
    /// Authorization: Bearer KEY).
    #[arg(long)]
    api_key: Option<String>,
    /// Ask this http:// URL of the host's backend about every client message before it is
    /// stored: it accepts, rejects or rewrites it (README: Webhooks).
    #[arg(long, value_name = "URL")]
    message_webhook: Option<String>,
    /// Post the messages stored, the joins and the leaves to this http:// URL, in order,
    /// retrying until it takes them.
    #[arg(long, value_name = "URL")]
    events_webhook: Option<String>,
    /// Ask this http:// URL who connects, from the connection's cookies, Authorization
    /// header or token; it fails closed.
    #[arg(long, value_name = "URL")]
    auth_webhook: Option<String>,
    /// Sign every webhook request with this secret (Wtchat-Signature; 32 bytes or more).
    #[arg(long)]
    webhook_secret: Option<String>,
    /// How long a webhook call may take, connecting included (like 2s, 500ms).
    #[arg(long, value_parser = duration)]
    webhook_timeout: Option<Duration>,
    /// Accept a message the message webhook did not answer for (fail open); by default it
    /// is rejected (fail closed).
    #[arg(long)]
    webhook_fail_open: bool,
    /// Do not serve Prometheus metrics at /wtchat/metrics.
    #[arg(long)]
    no_metrics: bool,
    /// Serve /wtchat/metrics only with the API key (Authorization: Bearer KEY).
    #[arg(long)]
    metrics_auth: bool,
    /// On SIGTERM, tell clients to reconnect (4000) spread over this long, so that they do
    /// not all land on the other nodes at once (like 10s). Default 0: all at once.
    #[arg(long, value_parser = duration)]
    drain_window: Option<Duration>,
    /// How log lines are written (to stderr): text, or json (one object a line).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// How `wtchat serve` writes its log.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// For people: one line per event.
    Text,
    /// For log collectors: one JSON object per line, with the connection's fields.
    Json,
}

/// The ids of `serve`'s settings: every field of `ServeArgs`.
fn setting_ids() -> Vec<clap::Id> {
    ServeArgs::augment_args(clap::Command::new("serve"))
        .get_arguments()
        .map(|arg| arg.get_id().clone())
        .collect()
}

impl ServeArgs {
    /// The configuration these flags ask for, checked by the library's builder.
    fn config(self) -> Result<Config, ConfigError> {
        let tls = match (self.cert, self.key) {
            (Some(cert), Some(key)) => Tls::Files { cert, key },
            _ => Tls::Dev { dir: self.certs },
        };
        let engine = match self.engine {
            Engine::Redis { url, .. } => Engine::Redis {
                url,
                prefix: self.redis_prefix,
            },
            other => other,
        };
        let mut b = Config::builder()
            .tls(tls)
            .engine(engine)
            .require_origin(self.require_origin)
            .webhook_fail_open(self.webhook_fail_open)
            .metrics(!self.no_metrics)
            .metrics_auth(self.metrics_auth);
        for origin in self.allow_origin {
            b = b.allow_origin(origin);
        }
        for name in self.reaction_name {
            b = b.reaction_name(name);
        }
        for proxy in self.trusted_proxy {
            b = b.trusted_proxy(proxy);
        }
        /// Applies each flag that was given to the builder method of the same name.
        macro_rules! given {
            ($($setting:ident),* $(,)?) => {
                $(if let Some(value) = self.$setting {
                    b = b.$setting(value);
                })*
            };
        }
        given!(
            http,
            webtransport,
            public_webtransport_url,
            public_url,
            frames_per_second,
            frame_burst,
            max_frame_bytes,
            max_text_chars,
            max_rooms_per_connection,
            max_rooms,
            max_rooms_per_ip,
            max_new_rooms_per_minute_per_ip,
            max_new_rooms_per_day_per_ip,
            max_new_rooms_per_minute,
            max_connections,
            max_connections_per_ip,
            max_connections_per_user,
            ticket_rate,
            ticket_burst,
            max_http_connections,
            max_http_connections_per_ip,
            max_streams_per_ip,
            ipv6_prefix,
            header_read_timeout,
            history,
            max_replay,
            retention_messages,
            retention_age,
            retention_bytes,
            dedupe_window,
            history_bytes,
            presence_threshold,
            presence_interval,
            outbound_queue,
            outbound_bytes,
            renew_before,
            edit_window,
            reactions_per_message,
            reactions_per_member,
            idle_timeout,
            shutdown_grace,
            drain_window,
            token_secret,
            api_key,
            message_webhook,
            events_webhook,
            auth_webhook,
            webhook_secret,
            webhook_timeout,
        );
        b.build()
    }
}

/// `90s`, `30m`, `12h`, `1d`, `500ms`; a bare number is seconds.
fn duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 30m, 12h or 1d"))?;
    let seconds = match unit {
        "ms" => return Ok(Duration::from_millis(number)),
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {text:?}: use ms, s, m, h or d"
            ));
        }
    };
    Ok(Duration::from_secs(number.saturating_mul(seconds)))
}

/// Logs to stderr, `RUST_LOG` choosing what (default: wtchat's info lines).
fn init_logging(format: LogFormat) {
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "wtchat=info".into()),
        );
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}

fn main() -> ExitCode {
    let command = Cli::command();
    let ids = setting_ids();
    let (cli, completed) = match parse(&command, &ids) {
        Ok(parsed) => parsed,
        Err(config_file::Error::Usage(error)) => error.exit(),
        Err(config_file::Error::Setting(message)) => {
            eprintln!("wtchat: {message}");
            return ExitCode::FAILURE;
        }
    };
    init_logging(match &cli.command {
        Command::Serve(args) => args.settings.log_format,
        _ => LogFormat::Text,
    });
    let result = match cli.command {
        Command::Certs { dir, days, sans } => write_certs(dir, days, sans),
        Command::Token {
            secret,
            user,
            name,
            rooms,
            ttl,
        } => {
            // A secret `serve` would refuse must not mint tokens either: same check, same words.
            match Config::builder().token_secret(secret.as_str()).build() {
                Ok(_) => {
                    let claims = wtchat::auth::Claims {
                        sub: user,
                        name,
                        rooms,
                        exp: wtchat::auth::unix_now() + ttl,
                    };
                    println!("{}", wtchat::auth::mint(secret.as_bytes(), &claims));
                    Ok(())
                }
                Err(e) => Err(format!("invalid configuration: {e}")),
            }
        }
        Command::Serve(args) => args
            .settings
            .config()
            .map_err(|e| format!("invalid configuration: {e}"))
            .and_then(serve),
        Command::Config(args) => args
            .serve
            .settings
            .config()
            .map(|_| print!("{}", completed.describe(&command, &ids)))
            .map_err(|e| format!("invalid configuration: {e}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("wtchat: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The command line, each setting it does not give taken from the environment or the file.
fn parse(
    command: &clap::Command,
    ids: &[clap::Id],
) -> Result<(Cli, config_file::Completed), config_file::Error> {
    let args = std::env::args_os().collect();
    let completed = config_file::complete(command, args, ids, &|name| std::env::var_os(name))?;
    let cli = Cli::from_arg_matches(&completed.matches).map_err(config_file::Error::Usage)?;
    Ok((cli, completed))
}

fn write_certs(dir: PathBuf, days: u32, sans: Vec<String>) -> Result<(), String> {
    let sans = if sans.is_empty() {
        certs::DEFAULT_SANS.iter().map(|s| s.to_string()).collect()
    } else {
        sans
    };
    let cert = DevCert::generate(&sans, days).map_err(|e| e.to_string())?;
    cert.write(&dir).map_err(|e| e.to_string())?;
    let expires = time::OffsetDateTime::from(cert.not_after);
    println!(
        "wrote {}/{} and {}/{} (key mode 0600)",
        dir.display(),
        certs::CERT_FILE,
        dir.display(),
        certs::KEY_FILE
    );
    println!("names:   {}", sans.join(", "));
    println!("sha-256: {}", cert.digest_hex());
    println!("expires: {expires} ({days} days)");
    Ok(())
}

fn serve(config: Config) -> Result<(), String> {
    raise_open_files(config.open_files_needed());
    let engine = match config.engine() {
        Engine::Redis { url, prefix } => format!("{url}  (key prefix {prefix})"),
        other => other.to_string(),
    };
    let runtime = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let server = Server::bind(config).await.map_err(|e| e.to_string())?;
        let http = server.http_addr();
        let wt = server.webtransport_addr();
        println!("wtchat is running");
        println!("  HTTP          http://{http}  (configuration: http://{http}/wtchat/config)");
        println!("  WebSocket     ws://{http}/wtchat/ws");
        println!(
            "  WebTransport  https://localhost:{}/wtchat  (UDP {wt})",
            wt.port()
        );
        for digest in server.certificate_digests() {
            println!("  certificate   sha-256 {}", certs::hex(&digest));
        }
        println!("  rooms         {engine}");
        println!("Press Ctrl-C to stop.");
        server.run(shutdown_signal()).await;
        Ok(())
    })
}

/// Raises the soft open-file limit to the hard one: each connection is a socket, and the
/// usual soft limit of 1,024 would stop the node at about a thousand connections whatever it
/// is configured for. Logs a warning when even the hard limit is below what the
/// configuration may hold (`needed`), saying what to raise.
fn raise_open_files(needed: u64) {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit only read and write the struct passed.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            // SAFETY: as above.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                limit = raised;
            }
        }
        let open: u64 = limit.rlim_cur;
        if open < needed {
            tracing::warn!(
                "at most {open} open files (the hard limit), while this configuration may hold \
                 {needed} (max_connections + max_http_connections + 64): connections past the \
                 limit are refused; raise it (systemd LimitNOFILE=, docker --ulimit nofile=, \
                 ulimit -Hn) or lower max_connections"
            );
        }
    }
    #[cfg(not(unix))]
    let _ = needed;
}

/// Ctrl-C, or SIGTERM (what service managers and containers send). The handlers are
/// installed when this is called, not when the future is first polled: a signal that comes
/// right after the server says it is running must stop it cleanly, not kill it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt()).ok();
        let mut terminate = signal(SignalKind::terminate()).ok();
        async move {
            tokio::select! {
                () = received(interrupt.as_mut()) => {}
                () = received(terminate.as_mut()) => {}
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Resolves when `signal` arrives; never, when it could not be installed.
#[cfg(unix)]
async fn received(signal: Option<&mut tokio::signal::unix::Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use super::*;
    use config_file::{Completed, Origin};

    /// `wtchat ARGS`, completed from `env` (a variable's name and value) and the files it names.
    fn complete(args: &[&str], env: &[(String, String)]) -> Completed {
        let argv = ["wtchat"].iter().chain(args).map(OsString::from).collect();
        let lookup = |name: &str| {
            env.iter()
                .find(|(variable, _)| variable == name)
                .map(|(_, value)| OsString::from(value))
        };
        match config_file::complete(&Cli::command(), argv, &setting_ids(), &lookup) {
            Ok(completed) => completed,
            Err(config_file::Error::Usage(error)) => panic!("{error}"),
            Err(config_file::Error::Setting(message)) => panic!("{message}"),
        }
    }

    /// The printed configuration without where each value came from.
    fn values(described: &str) -> Vec<&str> {
        described
            .lines()
            .map(|line| line.split("  # ").next().unwrap())
            .collect()
    }

    /// Every `serve` flag — those added later too — has an environment variable named after
    /// it and is a key of the file, for `serve` and `config --check` alike: each is given a
    /// value through its variable alone, then through the file alone, and reaches the
    /// settings the same way.
    #[test]
    fn every_serve_flag_has_an_environment_variable_and_a_file_key() {
        let command = Cli::command();
        command.clone().debug_assert();
        let ids = setting_ids();
        let serve = command.find_subcommand("serve").unwrap();
        let settings = config_file::settings(serve, &ids);
        assert_eq!(settings.len(), ids.len(), "every setting is a --flag");
        let mut env = Vec::new();
        let mut switches = Vec::new();
        for setting in &settings {
            let arg = serve
                .get_arguments()
                .find(|arg| arg.get_id() == setting.id())
                .unwrap();
            let long = arg.get_long().unwrap();
            let variable = format!("WTCHAT_{}", long.to_uppercase().replace('-', "_"));
            assert_eq!(setting.env, variable, "--{long}");
            assert_eq!(setting.key, long.replace('-', "_"), "--{long}");
            // A value this flag takes (a flag of a new type that takes none of these: add
            // one of its values here).
            let value = if matches!(arg.get_action(), clap::ArgAction::SetTrue) {
                switches.push(setting.id());
                "true"
            } else {
                ["1", "127.0.0.1:1", "127.0.0.1", "memory", "json"]
                    .into_iter()
                    .find(|text| setting.check(text).is_ok())
                    .unwrap_or_else(|| panic!("no sample value for --{long}"))
            };
            env.push((variable, value.to_owned()));
        }

        for subcommand in ["serve", "config"] {
            let mut args = vec![subcommand];
            if subcommand == "config" {
                args.push("--check");
            }
            let from_env = complete(&args, &env);
            let matches = from_env.matches.subcommand_matches(subcommand).unwrap();
            for (setting, (variable, value)) in settings.iter().zip(&env) {
                assert_eq!(
                    from_env.origin(setting.id()),
                    Some(&Origin::Env(variable.clone())),
                    "{variable}"
                );
                let id = setting.id();
                let given: Vec<_> = if switches.contains(&id) {
                    vec![matches.get_flag(id).to_string()]
                } else {
                    matches
                        .get_raw(id)
                        .unwrap()
                        .map(|raw| raw.to_string_lossy().into_owned())
                        .collect()
                };
                assert_eq!(given, [value.as_str()], "{variable}");
            }

            // What `config --check` prints of it, as a file, gives the same settings.
            let described = from_env.describe(&command, &ids);
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("wtchat.toml");
            std::fs::write(&file, &described).unwrap();
            let mut with_file = args.clone();
            with_file.extend(["--config", file.to_str().unwrap()]);
            let from_file = complete(&with_file, &[]);
            for setting in &settings {
                assert_eq!(
                    from_file.origin(setting.id()),
                    Some(&Origin::File(file.clone())),
                    "{}",
                    setting.key
                );
            }
            assert_eq!(
                values(&from_file.describe(&command, &ids)),
                values(&described),
                "{described}"
            );
        }
    }

    #[test]
    fn a_flag_beats_the_environment_which_beats_the_file_and_lists_are_not_merged() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("wtchat.toml");
        std::fs::write(
            &file,
            "max_frame_bytes = 9000\nframes_per_second = 7\nmax_text_chars = 1000\n\
             allow_origin = [\"https://file.example\"]\n\
             trusted_proxy = [\"10.0.0.1\"]\nrequire_origin = true\n",
        )
        .unwrap();
        let env = [
            ("WTCHAT_MAX_FRAME_BYTES", "10000"),
            ("WTCHAT_FRAMES_PER_SECOND", "9"),
            (
                "WTCHAT_ALLOW_ORIGIN",
                "https://a.example, https://b.example",
            ),
            ("WTCHAT_REQUIRE_ORIGIN", "false"),
        ]
        .map(|(name, value)| (name.to_owned(), value.to_owned()));
        let file_arg = file.to_str().unwrap();
        let completed = complete(
            &[
                "serve",
                "--config",
                file_arg,
                "--max-frame-bytes",
                "12000",
                "--trusted-proxy",
                "10.0.0.2",
            ],
            &env,
        );
        let matches = completed.matches.subcommand_matches("serve").unwrap();
        let all = |id: &str| -> Vec<String> {
            matches
                .get_raw(id)
                .unwrap()
                .map(|raw| raw.to_string_lossy().into_owned())
                .collect()
        };
        assert_eq!(all("max_frame_bytes"), ["12000"]);
        assert_eq!(all("frames_per_second"), ["9"]);
        assert_eq!(all("max_text_chars"), ["1000"]);
        assert_eq!(
            all("allow_origin"),
            ["https://a.example", "https://b.example"]
        );
        assert_eq!(all("trusted_proxy"), ["10.0.0.2"]);
        assert!(
            !matches.get_flag("require_origin"),
            "false in the environment"
        );
        let origin = |id: &str| completed.origin(id).cloned();
        assert_eq!(origin("max_frame_bytes"), Some(Origin::CommandLine));
        assert_eq!(
            origin("frames_per_second"),
            Some(Origin::Env("WTCHAT_FRAMES_PER_SECOND".into()))
        );
        assert_eq!(origin("max_text_chars"), Some(Origin::File(file.clone())));
        assert_eq!(origin("max_connections"), None);
    }
}
