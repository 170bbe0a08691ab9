//! Configuration and its defaults: where to listen, which certificate to use, which
//! origins may connect, and the limits. Defaults work on a laptop with no flags.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use std::future::Future;
use std::sync::Arc;

use crate::auth::{AuthHook, ConnectRequest, Identity, TokenAuth};
use crate::hub::HubConfig;
use crate::protocol::Limits;

/// The path of the chat on both the HTTP side (`/wtchat/config`, `/wtchat/ws`, …) and the
/// WebTransport side (sessions are accepted on exactly this path). A prefix of its own lets
/// a host application mount the chat beside its routes without collisions.
pub const PATH: &str = "/wtchat";

/// Where the WebTransport certificate comes from.
#[derive(Debug, Clone)]
pub enum Tls {
    /// A development certificate in this directory, generated when missing or about to
    /// expire, renewed while running, served by digest (`serverCertificateHashes`).
    Dev { dir: PathBuf },
    /// A CA-issued certificate chain and key (PEM files). No digests are served: browsers
    /// verify it the usual way.
    Files { cert: PathBuf, key: PathBuf },
}

/// What the host's message hook sees of a message before it is stored.
#[derive(Debug, Clone, Copy)]
pub struct MessageEvent<'a> {
    /// The room.
    pub room: &'a str,
    /// The sender's display name.
    pub from: &'a str,
    /// The sender's user id, when authenticated.
    pub user: Option<&'a str>,
    /// The text.
    pub text: &'a str,
}

/// The host's message hook: `Ok` lets the message through, `Err(reason)` rejects it (the
/// sender gets error `rejected` with the reason, nobody else sees it). It runs on the
/// sender's session before the message is stored: keep it quick (spawn slow work).
pub type MessageHook = Arc<dyn Fn(&MessageEvent<'_>) -> Result<(), String> + Send + Sync>;

/// Everything `wtchat serve` (or an embedding application) can set.
#[derive(Clone)]
pub struct Config {
    /// TCP address of the HTTP side. Port 0 picks a free port.
    pub http: SocketAddr,
    /// UDP address of WebTransport. The default `[::]` is dual-stack: Chromium dials `::1`
    /// for `localhost`, other clients `127.0.0.1`. Port 0 picks a free port.
    pub webtransport: SocketAddr,
    /// The certificate for WebTransport.
    pub tls: Tls,
    /// The WebTransport URL handed to clients, when it is not this server's own address as
    /// the page reached it (a public name, a port forwarded elsewhere). `None`:
    /// `https://<host the page used>:<bound UDP port>/wtchat`.
    pub public_webtransport_url: Option<String>,
    /// Origins whose pages may connect, like `https://example.com`. `None` means the
    /// server's own HTTP origins (`http://localhost:PORT`, `http://127.0.0.1:PORT`,
    /// `http://[::1]:PORT`); `"*"` in the list allows any origin.
    pub allowed_origins: Option<Vec<String>>,
    /// Whether a request without an `Origin` header (not a browser: a script, a test, a
    /// backend) may connect.
    pub allow_missing_origin: bool,
    /// Frame and connection limits.
    pub limits: Limits,
    /// Room and queue sizes.
    pub hub: HubConfig,
    /// How long shutdown waits for sessions to say goodbye before exiting anyway.
    pub shutdown_grace: Duration,
    /// How long a closing connection may take to receive its last frames and `bye`.
    pub close_grace: Duration,
    /// A development certificate is replaced when it has less than this left.
    pub renew_before: Duration,
    /// Serve the demo chat page at `/`.
    pub demo_page: bool,
    /// The host's authentication hook (see [`Config::with_auth`]); takes precedence over
    /// `token_secret`.
    pub authenticate: Option<AuthHook>,
    /// Accept signed tokens (`?token=`, HS256 JWT) made with this secret, and refuse
    /// connections without a valid one.
    pub token_secret: Option<String>,
    /// Called for every message before it is stored; may reject it.
    pub on_message: Option<MessageHook>,
    /// Enables the HTTP API (`/wtchat/api/...`) for requests bearing this key.
    pub api_key: Option<String>,
    /// tungstenite's read buffer per WebSocket. Chat frames are small; a small buffer is
    /// what keeps an idle WebSocket under a few KiB of memory.
    pub ws_read_buffer: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            http: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080),
            webtransport: SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 4433),
            tls: Tls::Dev {
                dir: PathBuf::from("certs"),
            },
            public_webtransport_url: None,
            allowed_origins: None,
            allow_missing_origin: true,
            limits: Limits::default(),
            hub: HubConfig::default(),
            shutdown_grace: Duration::from_secs(5),
            close_grace: Duration::from_secs(5),
            renew_before: Duration::from_secs(24 * 3600),
            demo_page: true,
            authenticate: None,
            token_secret: None,
            on_message: None,
            api_key: None,
            ws_read_buffer: 1024,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("http", &self.http)
            .field("webtransport", &self.webtransport)
            .field("tls", &self.tls)
            .field("allowed_origins", &self.allowed_origins)
            .field("allow_missing_origin", &self.allow_missing_origin)
            .field("limits", &self.limits)
            .field("hub", &self.hub)
            .field("authenticate", &self.authenticate.is_some())
            .field(
                "token_secret",
                &self.token_secret.as_ref().map(|_| "<secret>"),
            )
            .field("on_message", &self.on_message.is_some())
            .field("api_key", &self.api_key.as_ref().map(|_| "<secret>"))
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Sets the authentication hook: it sees each connection's request and returns who it
    /// is, or why it is refused (the client gets `bye` 4401 with that reason).
    pub fn with_auth<F, Fut>(mut self, hook: F) -> Config
    where
        F: Fn(ConnectRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Identity, String>> + Send + 'static,
    {
        self.authenticate = Some(Arc::new(move |request| Box::pin(hook(request))));
        self
    }

    /// Sets the message hook (store, moderate, reject).
    pub fn with_message_hook<F>(mut self, hook: F) -> Config
    where
        F: Fn(&MessageEvent<'_>) -> Result<(), String> + Send + Sync + 'static,
    {
        self.on_message = Some(Arc::new(hook));
        self
    }

    /// The hook in force: the host's, else token checking when a secret is set.
    pub(crate) fn auth_hook(&self) -> Option<AuthHook> {
        self.authenticate.clone().or_else(|| {
            self.token_secret
                .as_ref()
                .map(|secret| TokenAuth::new(secret.as_bytes()).into_hook())
        })
    }
}

/// Which `Origin` headers may open a connection.
#[derive(Debug, Clone)]
pub(crate) struct OriginPolicy {
    allowed: Vec<String>,
    any: bool,
    allow_missing: bool,
}

/// Origins compare without case and without a trailing slash.
fn normalize(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

impl OriginPolicy {
    /// The policy for `config`, given the HTTP address actually bound.
    pub(crate) fn new(config: &Config, http: SocketAddr) -> OriginPolicy {
        let allowed: Vec<String> = match &config.allowed_origins {
            Some(list) => list.iter().map(|o| normalize(o)).collect(),
            None => {
                let port = http.port();
                let mut own = vec![
                    format!("http://localhost:{port}"),
                    format!("http://127.0.0.1:{port}"),
                    format!("http://[::1]:{port}"),
                ];
                if !http.ip().is_loopback() && !http.ip().is_unspecified() {
                    own.push(format!("http://{http}"));
                }
                own
            }
        };
        OriginPolicy {
            any: allowed.iter().any(|o| o == "*"),
            allowed,
            allow_missing: config.allow_missing_origin,
        }
    }

    /// Whether a request with this `Origin` header (None: no header) may connect.
    pub(crate) fn allows(&self, origin: Option<&str>) -> bool {
        match origin {
            None => self.allow_missing,
            Some(_) if self.any => true,
            Some(origin) => {
                let origin = normalize(origin);
                self.allowed.contains(&origin)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_origins_are_the_servers_own() {
        let http: SocketAddr = "127.0.0.1:8123".parse().unwrap();
        let policy = OriginPolicy::new(&Config::default(), http);
        assert!(policy.allows(Some("http://localhost:8123")));
        assert!(policy.allows(Some("http://127.0.0.1:8123/")));
        assert!(policy.allows(Some("HTTP://LOCALHOST:8123")));
        assert!(!policy.allows(Some("http://localhost:8124")));
        assert!(!policy.allows(Some("https://evil.example")));
        assert!(!policy.allows(Some("null")));
        assert!(policy.allows(None));
    }

    #[test]
    fn configured_origins_replace_the_defaults() {
        let config = Config {
            allowed_origins: Some(vec!["https://chat.example.com/".into()]),
            allow_missing_origin: false,
            ..Config::default()
        };
        let policy = OriginPolicy::new(&config, "127.0.0.1:80".parse().unwrap());
        assert!(policy.allows(Some("https://chat.example.com")));
        assert!(!policy.allows(Some("http://localhost:80")));
        assert!(!policy.allows(None));
        let any = Config {
            allowed_origins: Some(vec!["*".into()]),
            ..Config::default()
        };
        let policy = OriginPolicy::new(&any, "127.0.0.1:80".parse().unwrap());
        assert!(policy.allows(Some("https://anything.example")));
    }
}
