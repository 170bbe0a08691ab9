//! Who a connection is: the host's authentication hook, and signed tokens for hosts that
//! are not written in Rust.
//!
//! Before a connection becomes a session, wtchat shows the host what the client sent (path,
//! query, origin, headers: a cookie, a token) as a [`ConnectRequest`]. The host answers
//! with an [`Identity`] — user id, display name, the rooms it may join — or a refusal. With
//! an identity, the display name is the host's, not the client's, so nobody can speak as
//! somebody else. Without a hook, connections are anonymous and choose their own names.
//!
//! For any other stack there are tokens: the host's backend mints a short-lived HS256 JWT
//! with a shared secret ([`mint`] does it in Rust), the page passes it as `?token=`, and
//! wtchat checks it ([`verify`]) when the configuration has a
//! [`token_secret`](crate::ConfigBuilder::token_secret).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::hmac;
use serde::{Deserialize, Serialize};

/// The transport a client connected with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transport {
    /// WebTransport (HTTP/3 over QUIC).
    WebTransport,
    /// The WebSocket fallback.
    WebSocket,
    /// Server-Sent Events, with frames posted back: for networks that block UDP and break
    /// WebSocket upgrades.
    Sse,
    /// Long polling, with frames posted back: for proxies that buffer even streaming
    /// responses.
    LongPoll,
    /// Not a connection yet: a browser's credentialed `POST /wtchat/ticket` before it
    /// connects, the one request of a page that carries its cookies whatever the transport.
    Ticket,
}

impl Transport {
    /// `"webtransport"`, `"websocket"`, `"sse"` or `"longpoll"`, as the browser client's
    /// `chat.transport` says; `"ticket"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::WebTransport => "webtransport",
            Transport::WebSocket => "websocket",
            Transport::Sse => "sse",
            Transport::LongPoll => "longpoll",
            Transport::Ticket => "ticket",
        }
    }
}

/// What the client sent when it connected, for the host to decide who it is.
///
/// Browsers send no cookies on a WebTransport CONNECT (the specification fixes its
/// credentials mode to "omit"): over WebTransport, only the URL (path and query) can carry
/// who the user is.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectRequest {
    /// The transport; [`Transport::Ticket`] for a browser's `POST /wtchat/ticket`.
    pub transport: Transport,
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
        self.cookies()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }

    /// Every cookie, as (name, value), in the order sent.
    pub fn cookies(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers
            .get_all(axum::http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
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

/// Who a connection is, as the host says. Made with [`Identity::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Identity {
    /// The host's user id (kicks and idempotency keys use it).
    pub user: String,
    /// The display name shown to others; the client cannot choose another.
    pub name: String,
    /// The rooms this user may join.
    pub rooms: Rooms,
}

impl Identity {
    /// User `user`, shown to others as `name`, allowed in any room.
    pub fn new(user: impl Into<String>, name: impl Into<String>) -> Identity {
        Identity {
            user: user.into(),
            name: name.into(),
            rooms: Rooms::Any,
        }
    }

    /// The same identity, allowed only in `rooms`.
    pub fn with_rooms(mut self, rooms: Rooms) -> Identity {
        self.rooms = rooms;
        self
    }
}

/// Which rooms an identity may join.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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

/// Why the host refuses a connection (authentication hook) or a message (message hook).
/// Its message is shown to the client: in the `bye` frame of a refused connection (close
/// code 4401), in the `rejected` error of a refused message.
///
/// `?` turns a `&str` or a `String` into one, so a hook can say
/// `request.cookie("session").ok_or("log in first")?`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    message: String,
}

impl Refusal {
    /// A refusal that tells the client `message`.
    pub fn new(message: impl Into<String>) -> Refusal {
        Refusal {
            message: message.into(),
        }
    }

    /// What the client is told.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refusal {}

impl From<&str> for Refusal {
    fn from(message: &str) -> Refusal {
        Refusal::new(message)
    }
}

impl From<String> for Refusal {
    fn from(message: String) -> Refusal {
        Refusal::new(message)
    }
}

impl From<TokenError> for Refusal {
    fn from(error: TokenError) -> Refusal {
        Refusal::new(error.to_string())
    }
}

/// The future an authentication hook returns.
pub(crate) type AuthFuture = Pin<Box<dyn Future<Output = Result<Identity, Refusal>> + Send>>;

/// The host's authentication hook, as the sessions call it.
pub(crate) type AuthHook = Arc<dyn Fn(ConnectRequest) -> AuthFuture + Send + Sync>;

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
    seal(&hmac::Key::new(hmac::HMAC_SHA256, secret), claims)
}

/// `payload` as an HS256 JWT signed with `key`.
pub(crate) fn seal(key: &hmac::Key, payload: &impl Serialize) -> String {
    let header = B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = B64.encode(serde_json::to_vec(payload).expect("claims serialize"));
    let signing_input = format!("{header}.{payload}");
    let signature = B64.encode(hmac::sign(key, signing_input.as_bytes()).as_ref());
    format!("{signing_input}.{signature}")
}

/// Why a token was not accepted. Its `Display` is what the client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenError {
    /// The connection carries no `?token=`.
    Missing,
    /// Not three base64url parts of JSON, as a JWT is.
    Malformed,
    /// The header names another algorithm than HS256 (`none` included).
    Algorithm,
    /// The signature does not match: another secret, or altered claims.
    Signature,
    /// `exp` has passed.
    Expired,
    /// A ticket that was used already (tickets are single-use).
    Spent,
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenError::Missing => "a token is required (?token=...)",
            TokenError::Malformed => "malformed token",
            TokenError::Algorithm => "token algorithm must be HS256",
            TokenError::Signature => "token signature is not valid",
            TokenError::Expired => "token expired",
            TokenError::Spent => "this ticket was used already; fetch a new one",
        })
    }
}

impl std::error::Error for TokenError {}

/// Checks an HS256 JWT's signature (in constant time) and expiry at `now` (seconds since
/// 1970); returns its claims.
pub fn verify(secret: &[u8], token: &str, now: u64) -> Result<Claims, TokenError> {
    let claims: Claims = open(&hmac::Key::new(hmac::HMAC_SHA256, secret), token)?;
    if claims.exp <= now {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

/// The payload of an HS256 JWT signed with `key`, signature checked in constant time.
pub(crate) fn open<T: serde::de::DeserializeOwned>(
    key: &hmac::Key,
    token: &str,
) -> Result<T, TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let header: serde_json::Value = B64
        .decode(header)
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .ok_or(TokenError::Malformed)?;
    // Only HS256: never "none", never an algorithm the client picked.
    if header["alg"] != "HS256" {
        return Err(TokenError::Algorithm);
    }
    let signature = B64.decode(signature).map_err(|_| TokenError::Malformed)?;
    let signing_input = &token[..header_and_payload_len(token)];
    hmac::verify(key, signing_input.as_bytes(), &signature).map_err(|_| TokenError::Signature)?;
    B64.decode(payload)
        .ok()
        .and_then(|p| serde_json::from_slice(&p).ok())
        .ok_or(TokenError::Malformed)
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

/// How a server tells who a connection is, as its configuration says.
pub(crate) enum Authenticator {
    /// Anyone, under the name they choose.
    Anonymous,
    /// A token signed with the shared secret: hosts in any language. A browser exchanges
    /// it (in a header) for single-use tickets, so that only those travel in URLs; a
    /// script may still put the token itself in `?token=`.
    Tokens {
        secret: Vec<u8>,
        /// Boxed, as for `Host`.
        tickets: Box<Tickets>,
    },
    /// The host's hook. Browsers send no cookies on a WebTransport CONNECT, so they come
    /// with a ticket, which their credentialed `POST /wtchat/ticket` got from the same
    /// hook; other requests go to the hook itself.
    Host {
        hook: AuthHook,
        /// Boxed: a key and a table, much larger than the other variants.
        tickets: Box<Tickets>,
    },
}

impl Authenticator {
    /// The host's hook when there is one, else tokens when there is a secret, else nobody.
    pub(crate) fn new(hook: Option<AuthHook>, token_secret: Option<&str>) -> Authenticator {
        match (hook, token_secret) {
            (Some(hook), secret) => Authenticator::Host {
                hook,
                tickets: Box::new(Tickets::new(secret.map(str::as_bytes))),
            },
            (None, Some(secret)) => Authenticator::Tokens {
                secret: secret.as_bytes().to_vec(),
                tickets: Box::new(Tickets::new(Some(secret.as_bytes()))),
            },
            (None, None) => Authenticator::Anonymous,
        }
    }

    /// Whether browsers get tickets here (`POST /wtchat/ticket`): where the host's hook
    /// decides who connects (for the page's cookies), or tokens (for the page's token,
    /// sent in a header rather than a URL).
    pub(crate) fn issues_tickets(&self) -> bool {
        !matches!(self, Authenticator::Anonymous)
    }

    /// What a ticket request is answered from: the page's `token` (in a header) or the
    /// host's `login` (the page's own request, cookies included). None without tickets.
    pub(crate) fn tickets_for(&self) -> Option<&'static str> {
        match self {
            Authenticator::Anonymous => None,
            Authenticator::Tokens { .. } => Some("token"),
            Authenticator::Host { .. } => Some("login"),
        }
    }

    /// Whether connections are identified at all (transports copy what the client sent
    /// only then).
    pub(crate) fn identifies(&self) -> bool {
        !matches!(self, Authenticator::Anonymous)
    }

    /// Who a connection is, or why it is refused.
    pub(crate) async fn identify(&self, request: ConnectRequest) -> Result<Identity, Refusal> {
        match self {
            Authenticator::Anonymous => Err(Refusal::new("this server identifies nobody")),
            Authenticator::Tokens { secret, tickets } => match request.query_param("ticket") {
                Some(ticket) => Ok(tickets.redeem(&ticket)?),
                None => {
                    let token = request.query_param("token").ok_or(TokenError::Missing)?;
                    Ok(identity(verify(secret, &token, unix_now())?))
                }
            },
            Authenticator::Host { hook, tickets } => match request.query_param("ticket") {
                Some(ticket) => Ok(tickets.redeem(&ticket)?),
                None => hook(request).await,
            },
        }
    }

    /// The tickets of `POST /wtchat/ticket`: the host's hook decides on the page's own
    /// request (cookies included), or the page's token (`Authorization: Bearer TOKEN`) is
    /// checked; a yes is `count` single-use tickets for that identity, one per transport
    /// the client may try. None where nobody is identified.
    pub(crate) async fn tickets(
        &self,
        request: ConnectRequest,
        count: usize,
    ) -> Option<Result<Vec<String>, Refusal>> {
        let (identity, tickets) = match self {
            Authenticator::Anonymous => return None,
            Authenticator::Host { hook, tickets } => (hook(request).await, tickets),
            Authenticator::Tokens { secret, tickets } => {
                let token = bearer(&request.headers).ok_or(TokenError::Missing);
                let verified = token.and_then(|token| verify(secret, token, unix_now()));
                (verified.map(identity).map_err(Refusal::from), tickets)
            }
        };
        Some(identity.map(|identity| (0..count).map(|_| tickets.issue(&identity)).collect()))
    }
}

/// A token's or a ticket's claims as an identity.
fn identity(claims: Claims) -> Identity {
    let rooms = if claims.rooms.iter().any(|r| r == "*") {
        Rooms::Any
    } else {
        Rooms::Only(claims.rooms)
    };
    Identity {
        user: claims.sub,
        name: claims.name,
        rooms,
    }
}

/// How long a ticket may wait to be used: enough for one connection attempt.
pub(crate) const TICKET_TTL_SECS: u64 = 30;

/// Single-use tickets: an identity the host's hook granted on a browser's credentialed
/// request, carried to a transport that cannot carry cookies (`?ticket=`). Signed with a
/// key of their own (derived from the token secret, or random), so that a ticket is never
/// a token and a token never a ticket; each is used at most once.
pub(crate) struct Tickets {
    key: hmac::Key,
    /// Nonces of tickets used, with their expiry: a ticket's second use is refused. Held
    /// for a lookup and an insert, never across an `.await`.
    spent: Mutex<Spent>,
}

/// Nonces of used tickets until they expire.
struct Spent {
    nonces: HashMap<String, u64>,
    /// Expired nonces are forgotten when the table reaches this size, which then doubles
    /// what is left: a sweep per so many inserts, however busy the server (amortized
    /// constant time per ticket).
    sweep_at: usize,
}

/// A ticket's payload: an identity, its expiry, and a nonce that makes it single-use.
#[derive(Serialize, Deserialize)]
struct TicketClaims {
    #[serde(flatten)]
    claims: Claims,
    nonce: String,
}

impl Tickets {
    /// Tickets signed with a key derived from `secret`; from random bytes without one
    /// (then only this process accepts them).
    fn new(secret: Option<&[u8]>) -> Tickets {
        let random;
        let secret = match secret {
            Some(secret) => secret,
            None => {
                random = random_bytes::<32>();
                &random[..]
            }
        };
        Tickets {
            key: derived_key(secret, b"wtchat ticket key v1"),
            spent: Mutex::new(Spent {
                nonces: HashMap::new(),
                sweep_at: 1024,
            }),
        }
    }

    fn issue(&self, identity: &Identity) -> String {
        let rooms = match &identity.rooms {
            Rooms::Any => vec!["*".to_string()],
            Rooms::Only(rooms) => rooms.clone(),
        };
        let claims = TicketClaims {
            claims: Claims {
                sub: identity.user.clone(),
                name: identity.name.clone(),
                rooms,
                exp: unix_now() + TICKET_TTL_SECS,
            },
            nonce: B64.encode(random_bytes::<16>()),
        };
        seal(&self.key, &claims)
    }

    fn redeem(&self, ticket: &str) -> Result<Identity, TokenError> {
        let ticket: TicketClaims = open(&self.key, ticket)?;
        let now = unix_now();
        if ticket.claims.exp <= now {
            return Err(TokenError::Expired);
        }
        let mut spent = self.spent.lock().unwrap();
        if spent.nonces.contains_key(&ticket.nonce) {
            return Err(TokenError::Spent);
        }
        // Expired tickets cannot be used anyway: forget their nonces now and then.
        if spent.nonces.len() >= spent.sweep_at {
            spent.nonces.retain(|_, exp| *exp > now);
            spent.sweep_at = (spent.nonces.len() * 2).max(1024);
        }
        spent.nonces.insert(ticket.nonce, ticket.claims.exp);
        drop(spent);
        Ok(identity(ticket.claims))
    }
}

/// A key of its own for `purpose`, derived from `secret` (HMAC(secret, purpose)): one
/// secret serves several purposes, and what is signed for one is never valid for another.
pub(crate) fn derived_key(secret: &[u8], purpose: &[u8]) -> hmac::Key {
    let derived = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), purpose);
    hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())
}

/// What an `Authorization: Bearer …` header bears (the page's token, the host's API key).
pub(crate) fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

/// Whether `given` is `secret`, compared in constant time (a password's comparison must not
/// tell how much of a guess was right).
pub(crate) fn same_secret(given: &[u8], secret: &[u8]) -> bool {
    given.len() == secret.len()
        && given
            .iter()
            .zip(secret)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

/// `N` bytes from the operating system's random source.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("the operating system provides randomness");
    bytes
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
    fn a_secret_is_the_same_only_when_every_byte_and_the_length_are() {
        assert!(same_secret(b"abc", b"abc"));
        for other in [&b"abd"[..], b"ab", b"abcd", b""] {
            assert!(!same_secret(other, b"abc"), "{other:?}");
        }
    }

    #[test]
    fn a_minted_token_verifies_until_it_expires() {
        let token = mint(b"secret", &claims(1000));
        assert_eq!(verify(b"secret", &token, 999), Ok(claims(1000)));
        assert_eq!(
            verify(b"secret", &token, 1000).unwrap_err(),
            TokenError::Expired
        );
        assert_eq!(TokenError::Expired.to_string(), "token expired");
    }

    #[test]
    fn forged_tokens_are_refused() {
        let token = mint(b"secret", &claims(1000));
        assert_eq!(
            verify(b"other", &token, 1).unwrap_err(),
            TokenError::Signature
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
            TokenError::Algorithm
        );
        assert_eq!(
            verify(b"secret", "abc", 1).unwrap_err(),
            TokenError::Malformed
        );
    }

    #[test]
    fn a_ticket_is_used_once_and_is_never_a_token() {
        let secret = b"a-secret-of-thirty-two-bytes-or-more";
        let tickets = Tickets::new(Some(secret));
        let ann = Identity::new("u1", "Ann").with_rooms(Rooms::Only(vec!["lobby".into()]));
        let (first, second) = (tickets.issue(&ann), tickets.issue(&ann));
        assert_ne!(first, second, "each ticket has its own nonce");
        assert_eq!(tickets.redeem(&first), Ok(ann.clone()));
        assert_eq!(tickets.redeem(&first), Err(TokenError::Spent));
        assert_eq!(tickets.redeem(&second), Ok(ann));
        // Signed with a key of their own: a token is not a ticket, a ticket not a token.
        let token = mint(secret, &claims(unix_now() + 60));
        assert_eq!(tickets.redeem(&token), Err(TokenError::Signature));
        let third = tickets.issue(&Identity::new("u2", "Bob"));
        assert_eq!(
            verify(secret, &third, unix_now()),
            Err(TokenError::Signature)
        );
        // Thousands of spent (still unexpired) tickets later: swept when it doubled, not on
        // every insert.
        for _ in 0..3000 {
            let ticket = tickets.issue(&Identity::new("u3", "Cid"));
            tickets.redeem(&ticket).unwrap();
        }
        let spent = tickets.spent.lock().unwrap();
        assert_eq!(spent.nonces.len(), 3002);
        assert_eq!(spent.sweep_at, 4096);
    }

    #[test]
    fn requests_expose_query_parameters_and_cookies() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("cookie", "a=1; session=xyz".parse().unwrap());
        let request = ConnectRequest {
            transport: Transport::WebSocket,
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
        let cookies: Vec<(&str, &str)> = request.cookies().collect();
        assert_eq!(cookies, [("a", "1"), ("session", "xyz")]);
        assert_eq!(request.cookie("b"), None);
    }
}
