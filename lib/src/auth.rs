//! Who a connection is: the host's authentication hook, and signed tokens for hosts that
//! are not written in Rust.
//!
//! Before a connection becomes a session, wtchat shows the host what the client sent (path,
//! query, origin, headers: a cookie, a token) as a [`ConnectRequest`]. The host answers
//! with an [`Identity`] — user id, display name, the rooms it may join — or a refusal. With
//! an identity, the display name is the host's, not the client's, so nobody can speak as
//! somebody else. Without a hook, connections are anonymous and choose their own names.
//!
//! [`TokenAuth`] is the hook for any other stack: the host's backend mints a short-lived
//! HS256 JWT with a shared secret ([`mint`]), the page passes it as `?token=`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::hmac;
use serde::{Deserialize, Serialize};

/// What the client sent when it connected, for the host to decide who it is.
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    /// `"websocket"` or `"webtransport"`.
    pub transport: &'static str,
    /// The request path, without the query.
    pub path: String,
    /// The query string, without `?` (empty when none).
    pub query: String,
    /// The `Origin` header, if any (already checked against the allowed origins).
    pub origin: Option<String>,
    /// Every request header (cookies, authorization…), names in lowercase.
    pub headers: axum::http::HeaderMap,
}

impl ConnectRequest {
    /// The value of query parameter `name`, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        form_urlencoded_pairs(&self.query)
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// The value of cookie `name`.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all(axum::http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

/// `a=1&b=x%20y` → ("a","1"), ("b","x y").
fn form_urlencoded_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k), percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 2;
            }
            (byte, _) => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Who a connection is, as the host says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The host's user id (kicks and idempotency keys use it).
    pub user: String,
    /// The display name shown to others; the client cannot choose another.
    pub name: String,
    /// The rooms this user may join.
    pub rooms: Rooms,
}

/// Which rooms an identity may join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rooms {
    /// Any room.
    Any,
    /// Only these.
    Only(Vec<String>),
}

impl Rooms {
    /// Whether `room` is allowed.
    pub fn allows(&self, room: &str) -> bool {
        match self {
            Rooms::Any => true,
            Rooms::Only(rooms) => rooms.iter().any(|r| r == room),
        }
    }
}

/// The future an authentication hook returns: an identity, or the reason for refusing,
/// which the client receives in its `bye` frame (close code 4401).
pub type AuthFuture = Pin<Box<dyn Future<Output = Result<Identity, String>> + Send>>;

/// The host's authentication hook.
pub type AuthHook = Arc<dyn Fn(ConnectRequest) -> AuthFuture + Send + Sync>;

/// Claims of a wtchat token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Display name.
    pub name: String,
    /// Rooms the user may join; `["*"]` for any.
    pub rooms: Vec<String>,
    /// Expiry, seconds since 1970.
    pub exp: u64,
}

/// Signs `claims` as an HS256 JWT with `secret`.
pub fn mint(secret: &[u8], claims: &Claims) -> String {
    let header = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = B64.encode(serde_json::to_vec(claims).expect("claims serialize"));
    let signing_input = format!("{header}.{payload}");
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let signature = B64.encode(hmac::sign(&key, signing_input.as_bytes()).as_ref());
    format!("{signing_input}.{signature}")
}

/// Checks an HS256 JWT's signature (in constant time) and expiry; returns its claims or a
/// human reason.
pub fn verify(secret: &[u8], token: &str, now: u64) -> Result<Claims, String> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed token".into());
    };
    let header: serde_json::Value = B64
        .decode(header)
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .ok_or("malformed token header")?;
    // Only HS256: never "none", never an algorithm the client picked.
    if header["alg"] != "HS256" {
        return Err("token algorithm must be HS256".into());
    }
    let signature = B64
        .decode(signature)
        .map_err(|_| "malformed token signature")?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let signing_input = &token[..header_and_payload_len(token)];
    hmac::verify(&key, signing_input.as_bytes(), &signature)
        .map_err(|_| "token signature is not valid")?;
    let claims: Claims = B64
        .decode(payload)
        .ok()
        .and_then(|p| serde_json::from_slice(&p).ok())
        .ok_or("malformed token claims")?;
    if claims.exp <= now {
        return Err("token expired".into());
    }
    Ok(claims)
}

/// Length of `header.payload` in a JWT.
fn header_and_payload_len(token: &str) -> usize {
    token.rfind('.').unwrap_or(token.len())
}

/// Seconds since 1970.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The hook for hosts in any language: a connection must carry `?token=` signed with the
/// shared secret.
pub struct TokenAuth {
    secret: Vec<u8>,
}

impl TokenAuth {
    /// Tokens signed with `secret`.
    pub fn new(secret: impl Into<Vec<u8>>) -> TokenAuth {
        TokenAuth {
            secret: secret.into(),
        }
    }

    /// The identity a request's token proves, or why not.
    pub fn identify(&self, request: &ConnectRequest) -> Result<Identity, String> {
        let token = request
            .query_param("token")
            .ok_or("a token is required (?token=...)")?;
        let claims = verify(&self.secret, &token, unix_now())?;
        let rooms = if claims.rooms.iter().any(|r| r == "*") {
            Rooms::Any
        } else {
            Rooms::Only(claims.rooms)
        };
        Ok(Identity {
            user: claims.sub,
            name: claims.name,
            rooms,
        })
    }

    /// As an [`AuthHook`].
    pub fn into_hook(self) -> AuthHook {
        let this = Arc::new(self);
        Arc::new(move |request| {
            let result = this.identify(&request);
            Box::pin(async move { result })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "u1".into(),
            name: "Ann".into(),
            rooms: vec!["lobby".into()],
            exp,
        }
    }

    #[test]
    fn a_minted_token_verifies_until_it_expires() {
        let token = mint(b"secret", &claims(1000));
        assert_eq!(verify(b"secret", &token, 999), Ok(claims(1000)));
        assert_eq!(
            verify(b"secret", &token, 1000).unwrap_err(),
            "token expired"
        );
    }

    #[test]
    fn forged_tokens_are_refused() {
        let token = mint(b"secret", &claims(1000));
        assert_eq!(
            verify(b"other", &token, 1).unwrap_err(),
            "token signature is not valid"
        );
        // Claims changed after signing.
        let (head, rest) = token.split_once('.').unwrap();
        let sig = rest.rsplit_once('.').unwrap().1;
        let mut forged = claims(1000);
        forged.rooms = vec!["*".into()];
        let payload = B64.encode(serde_json::to_vec(&forged).unwrap());
        let tampered = format!("{head}.{payload}.{sig}");
        assert!(verify(b"secret", &tampered, 1).is_err());
        // alg "none" with no signature.
        let none = format!(
            "{}.{}.",
            B64.encode(br#"{"alg":"none"}"#),
            B64.encode(serde_json::to_vec(&claims(1000)).unwrap())
        );
        assert_eq!(
            verify(b"secret", &none, 1).unwrap_err(),
            "token algorithm must be HS256"
        );
        assert_eq!(verify(b"secret", "abc", 1).unwrap_err(), "malformed token");
    }

    #[test]
    fn requests_expose_query_parameters_and_cookies() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("cookie", "a=1; session=xyz".parse().unwrap());
        let request = ConnectRequest {
            transport: "websocket",
            path: "/wtchat/ws".into(),
            query: "token=a%2Bb&x=y+z&bad=%zz".into(),
            origin: None,
            headers,
        };
        assert_eq!(request.query_param("token").as_deref(), Some("a+b"));
        assert_eq!(request.query_param("x").as_deref(), Some("y z"));
        assert_eq!(request.query_param("bad").as_deref(), Some("%zz"));
        assert_eq!(request.query_param("nope"), None);
        assert_eq!(request.cookie("session").as_deref(), Some("xyz"));
        assert_eq!(request.cookie("b"), None);
    }
}
