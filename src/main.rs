//! The `wtchat` command: `serve` runs the chat server, `certs` writes a development
//! certificate, `token` mints a signed token.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wtchat::certs::{self, DevCert};
use wtchat::{Config, Server, Tls};

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

#[derive(Subcommand)]
enum Command {
    /// Run the chat server.
    Serve {
        /// HTTP address (TCP): configuration, WebSocket fallback, client. Port 0 picks one.
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: SocketAddr,
        /// WebTransport address (UDP). `[::]` is dual-stack. Port 0 picks one.
        #[arg(long, default_value = "[::]:4433")]
        webtransport: SocketAddr,
        /// Directory of the development certificate (created and renewed as needed).
        #[arg(long, default_value = "certs")]
        certs: PathBuf,
        /// A CA-issued certificate chain (PEM) instead of the development certificate.
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// The private key (PEM) of --cert.
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
        /// An origin whose pages may connect (repeatable; `*` for any). Default: this
        /// server's own HTTP origins.
        #[arg(long = "allow-origin")]
        allow_origin: Vec<String>,
        /// Refuse connections that carry no Origin header (non-browser clients).
        #[arg(long)]
        require_origin: bool,
        /// Frames per second one connection may send, sustained.
        #[arg(long, default_value_t = wtchat::protocol::Limits::default().frames_per_second)]
        max_frames_per_second: u32,
        /// Frames one connection may send in a burst.
        #[arg(long, default_value_t = wtchat::protocol::Limits::default().frame_burst)]
        frame_burst: u32,
        /// Connections held at once, over both transports.
        #[arg(long, default_value_t = wtchat::hub::HubConfig::default().max_connections)]
        max_connections: usize,
        /// Messages of history kept per room.
        #[arg(long, default_value_t = wtchat::hub::HubConfig::default().history_len)]
        history: usize,
        /// Require signed tokens (`?token=`, HS256) made with this secret.
        #[arg(long, env = "WTCHAT_TOKEN_SECRET", hide_env_values = true)]
        token_secret: Option<String>,
        /// Enable the HTTP API for the host's backend with this key (Authorization: Bearer).
        #[arg(long, env = "WTCHAT_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
    },
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

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "wtchat=info".into()),
        )
        .init();
    let result = match Cli::parse().command {
        Command::Certs { dir, days, sans } => write_certs(dir, days, sans),
        Command::Token {
            secret,
            user,
            name,
            rooms,
            ttl,
        } => {
            let claims = wtchat::auth::Claims {
                sub: user,
                name,
                rooms,
                exp: wtchat::auth::unix_now() + ttl,
            };
            println!("{}", wtchat::auth::mint(secret.as_bytes(), &claims));
            Ok(())
        }
        Command::Serve {
            http,
            webtransport,
            certs,
            cert,
            key,
            allow_origin,
            require_origin,
            max_frames_per_second,
            frame_burst,
            max_connections,
            history,
            token_secret,
            api_key,
        } => {
            let tls = match (cert, key) {
                (Some(cert), Some(key)) => Tls::Files { cert, key },
                _ => Tls::Dev { dir: certs },
            };
            let config = Config {
                http,
                webtransport,
                tls,
                allowed_origins: (!allow_origin.is_empty()).then_some(allow_origin),
                allow_missing_origin: !require_origin,
                limits: wtchat::protocol::Limits {
                    frames_per_second: max_frames_per_second,
                    frame_burst,
                    ..Default::default()
                },
                hub: wtchat::hub::HubConfig {
                    max_connections,
                    history_len: history,
                    ..Default::default()
                },
                token_secret,
                api_key,
                ..Config::default()
            };
            serve(config)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("wtchat: {message}");
            ExitCode::FAILURE
        }
    }
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
        println!("Press Ctrl-C to stop.");
        server
            .run(shutdown_signal())
            .await
            .map_err(|e| e.to_string())
    })
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
