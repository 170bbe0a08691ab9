//! Transports: each file adapts one kind of connection to the session contract
//! ([`FrameReader`](crate::session::FrameReader), [`FrameWriter`](crate::session::FrameWriter)):
//! accepting, framing and close codes. No room logic lives here.
//!
//! `lines` is the WebTransport stream's framing (lines of at most `max_frame_bytes`), kept
//! apart from its I/O so that it can be tested on its own.
//!
//! Every transport is handed one [`Context`]: what accepting a connection needs (the
//! sessions' shared context, the origin policy, the task tracker), and nothing of the
//! module that mounts the transports.

use std::net::SocketAddr;

use tokio_util::task::TaskTracker;

use crate::session::SessionContext;

mod lines;
pub(crate) mod websocket;
pub(crate) mod webtransport;

/// What every transport needs to accept connections and run their sessions.
pub(crate) struct Context {
    pub session: SessionContext,
    pub origins: OriginPolicy,
    /// Every session task, so that shutdown can wait for them (axum's graceful shutdown
    /// does not track upgraded WebSockets).
    pub tracker: TaskTracker,
    /// tungstenite's read buffer per WebSocket.
    pub ws_read_buffer: usize,
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
    /// The policy for the configured origins (`None`: the server's own origins, given the
    /// HTTP address actually bound).
    pub(crate) fn new(
        configured: Option<&[String]>,
        allow_missing: bool,
        http: SocketAddr,
    ) -> OriginPolicy {
        let allowed: Vec<String> = match configured {
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
            allow_missing,
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
        let policy = OriginPolicy::new(None, true, http);
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
        let http = "127.0.0.1:80".parse().unwrap();
        let configured = ["https://chat.example.com/".to_string()];
        let policy = OriginPolicy::new(Some(&configured), false, http);
        assert!(policy.allows(Some("https://chat.example.com")));
        assert!(!policy.allows(Some("http://localhost:80")));
        assert!(!policy.allows(None));
        let policy = OriginPolicy::new(Some(&["*".to_string()]), true, http);
        assert!(policy.allows(Some("https://anything.example")));
    }
}
