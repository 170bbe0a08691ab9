//! Test harness: a wtchat server on port 0 (its own certificate in a temporary directory),
//! and real clients over loopback — tokio-tungstenite for the WebSocket fallback, wtransport's
//! client (pinning the server's certificate digest) for WebTransport, and plain HTTP/1.1 over
//! a TCP stream for Server-Sent Events and long polling (the event stream and the chunked
//! encoding parsed here, by hand) — behind one `Client` type, so a test reads the same
//! whatever the transport. Every wait has a deadline.
#![allow(dead_code)] // each test binary uses its own part of the harness

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wtchat::{Config, ConfigBuilder, Server, Tls};
use wtransport::endpoint::ConnectOptions;
use wtransport::tls::Sha256Digest;
use wtransport::{ClientConfig, Connection, Endpoint, RecvStream, SendStream};

/// How long any single expected event may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

pub struct TestServer {
    /// The host's handle on the chat (publish, members, kick).
    pub chat: wtchat::Chat,
    pub http: SocketAddr,
    pub webtransport: SocketAddr,
    pub digests: Vec<[u8; 32]>,
    pub cert_dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

/// A token for `user` named `name`, for every room, valid ten minutes, signed with
/// `secret`: what a host's backend mints.
pub fn token(secret: &str, user: &str, name: &str) -> String {
    wtchat::auth::mint(
        secret.as_bytes(),
        &wtchat::auth::Claims {
            sub: user.into(),
            name: name.into(),
            rooms: vec!["*".into()],
            exp: wtchat::auth::unix_now() + 600,
        },
    )
}

/// The fenced code blocks of a Markdown text, in order: each block's info string (its
/// language, ```` ```sh ````) and its text, the fences left out.
pub fn code_blocks(markdown: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(String, String, String)> = None; // (fence indent, lang, text)
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        match &mut open {
            None => {
                if let Some(lang) = trimmed.strip_prefix("```") {
                    open = Some((indent.to_owned(), lang.trim().to_owned(), String::new()));
                }
            }
            Some((fence, lang, text)) => {
                if trimmed.starts_with("```") && trimmed.trim() == "```" {
                    blocks.push((std::mem::take(lang), std::mem::take(text)));
                    open = None;
                } else {
                    // A block inside a list item is indented like the item's text.
                    text.push_str(line.strip_prefix(fence.as_str()).unwrap_or(line));
                    text.push('\n');
                }
            }
        }
    }
    blocks
}

/// The text of `docs/src/<page>.md`, a page of the book.
pub fn book_page(page: &str) -> String {
    let path = format!("{}/docs/src/{page}.md", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path} is readable: {e}"))
}

/// The first ```` ```lang ```` block of the book's page `page` (`docs/src/<page>.md`) that
/// contains `marker`: what a user copies from the book, read from it rather than copied
/// into the test, so that what the book shows is what runs. tests/book.rs checks that
/// every code block of README.md is one of these (or otherwise checked).
pub fn book_block(page: &str, lang: &str, marker: &str) -> String {
    code_blocks(&book_page(page))
        .into_iter()
        .find(|(block_lang, text)| block_lang == lang && text.contains(marker))
        .map(|(_, text)| text)
        .unwrap_or_else(|| panic!("docs/src/{page}.md has a {lang} block with {marker:?}"))
}

/// The clock of [`read_at`]: when this test process first asked.
fn arrival_clock() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

/// When a room stream's frame was read off its stream (a client with room streams marks
/// each), else None.
pub fn read_at(frame: &Value) -> Option<Instant> {
    let us = frame.get("_read_us")?.as_u64()?;
    Some(arrival_clock() + Duration::from_micros(us))
}

/// A server with the default configuration on free ports.
pub async fn start() -> TestServer {
    start_with(|config| config).await
}

/// A server on free ports, with `tweak` applied to its configuration.
pub async fn start_with(tweak: impl FnOnce(ConfigBuilder) -> ConfigBuilder) -> TestServer {
    let cert_dir = tempfile::tempdir().unwrap();
    let builder = Config::builder()
        .http("127.0.0.1:0".parse().unwrap())
        .webtransport("[::]:0".parse().unwrap())
        .tls(Tls::Dev {
            dir: cert_dir.path().to_path_buf(),
        });
    let config = tweak(builder).build().expect("a valid configuration");
    // A server restarted on the ports of one just stopped: the old UDP socket closes when
    // its endpoint's last handle is dropped and its closed connections have drained, just
    // after `stop` returns. Free ports (0) are never in use.
    let deadline = Instant::now() + Duration::from_secs(5);
    let server = loop {
        match Server::bind(config.clone()).await {
            Err(wtchat::StartError::Bind { source, .. })
                if source.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            bound => break bound.expect("server binds"),
        }
    };
    let (chat, http) = (server.chat(), server.http_addr());
    TestServer::spawn(chat, http, cert_dir, |stopped| async move {
        server
            .run(async {
                let _ = stopped.await;
            })
            .await;
        Ok(())
    })
}

/// A host application on free ports: `config` gets the HTTP and WebTransport addresses and a
/// certificate directory; `app` builds the host's router around the chat (as
/// examples/axum_host.rs does).
pub async fn start_host(
    config: impl FnOnce(
        SocketAddr,
        SocketAddr,
        std::path::PathBuf,
    ) -> Result<Config, wtchat::ConfigError>,
    app: impl FnOnce(&wtchat::Chat) -> axum::Router,
) -> TestServer {
    let cert_dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = listener.local_addr().unwrap();
    let config = config(
        http,
        "[::]:0".parse().unwrap(),
        cert_dir.path().to_path_buf(),
    )
    .expect("a valid configuration");
    let chat = wtchat::Chat::new(config).await.expect("chat starts");
    let router = app(&chat);
    TestServer::spawn(chat.clone(), http, cert_dir, move |stopped| async move {
        let token = tokio_util::sync::CancellationToken::new();
        let serving = token.clone();
        let http = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(serving.cancelled_owned())
                .await
        });
        chat.run(async {
            let _ = stopped.await;
        })
        .await;
        token.cancel();
        http.await.unwrap()
    })
}

impl TestServer {
    /// Runs `serve` (a server around `chat`) in a task until the receiver it gets fires.
    fn spawn<F>(
        chat: wtchat::Chat,
        http: SocketAddr,
        cert_dir: tempfile::TempDir,
        serve: impl FnOnce(oneshot::Receiver<()>) -> F,
    ) -> TestServer
    where
        F: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel();
        TestServer {
            webtransport: chat.webtransport_addr(),
            digests: chat.certificate_digests(),
            chat,
            http,
            cert_dir,
            stop: Some(stop),
            task: Some(tokio::spawn(serve(stopped))),
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/wtchat/ws", self.http)
    }

    pub fn wt_url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.webtransport.port())
    }

    /// Starts the shutdown (as ctrl-c would).
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Shuts down and waits until `run` returned.
    pub async fn stop(mut self) {
        self.begin_shutdown();
        let task = self.task.take().unwrap();
        tokio::time::timeout(DEADLINE, task)
            .await
            .expect("the server stops within the deadline")
            .unwrap()
            .unwrap();
    }

    /// GET a path on the HTTP side: (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.http, path, &[]).await
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.begin_shutdown();
    }
}

/// A port nobody listens on right now on 127.0.0.1, for programs that take a port number
/// rather than a socket (nginx, a WebDriver).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A minimal HTTP/1.1 GET over a fresh connection: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    http_request(addr, "GET", path, headers, None).await
}

/// A minimal HTTP/1.1 request over a fresh connection: (status, body). With a body, it is
/// sent as JSON.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> (u16, String) {
    http_exchange(addr, method, path, headers, body).await.0
}

/// Like [`http_request`], also returning the raw response head (status line and headers).
pub async fn http_exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> ((u16, String), String) {
    use tokio::io::AsyncWriteExt;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        request.push_str(&format!("Host: {addr}\r\n"));
    }
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    if !body.is_empty() {
        request.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(&body);
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    let response = String::from_utf8_lossy(&response).to_string();
    let status = response[9..12].parse().unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_string(), b.to_string()))
        .unwrap_or_default();
    ((status, body), head)
}

/// A message frame as (seq, from, text).
pub fn seq_text(m: &Value) -> (u64, String, String) {
    (
        m["seq"].as_u64().unwrap(),
        m["from"].as_str().unwrap().to_string(),
        m["text"].as_str().unwrap().to_string(),
    )
}

/// How a connection ended, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// A WebSocket close frame with this code, or over WebTransport (whose close codes do
    /// not reach clients reliably), SSE and long polling (which have none) the code of the
    /// `bye` frame before the end.
    Code(u16),
    /// The connection ended with no code.
    NoCode,
}

pub enum Client {
    Ws {
        socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
        /// The code of a `bye` frame seen, if any.
        bye: Option<u16>,
    },
    Wt {
        connection: Connection,
        send: SendStream,
        recv: RecvStream,
        buf: BytesMut,
        bye: Option<u16>,
        /// From protocol 4 on ([`Client::with_room_streams`]): the frames of the rooms'
        /// streams, as a task reads them.
        rooms: Option<tokio::sync::mpsc::UnboundedReceiver<Value>>,
        _endpoint: Endpoint<wtransport::endpoint::endpoint_side::Client>,
    },
    /// Server-Sent Events: a task reads the `GET /wtchat/sse` event stream into `events`
    /// (the `session` event already read); frames go up as `POST`s to `post`. The stream
    /// ending is the connection's end: there is no close code, the `bye` before it says why.
    Sse {
        http: SocketAddr,
        post: String,
        /// The session's secret: its posts bear it (`Wtchat-Secret`).
        secret: String,
        events: mpsc::UnboundedReceiver<SseEvent>,
        /// The id of the last event read that had one (what `Last-Event-ID` would say).
        last_event_id: Option<String>,
        bye: Option<u16>,
        _reader: AbortOnDrop,
    },
    /// Long polling: a task polls `GET poll` with `Wtchat-After: N` (one poll at a time, `N`
    /// the last frame number it got) into `frames`; frames go up as `POST`s to `post`. Both
    /// bear the session's secret. A poll answered 404 is the end: after a `bye`, once it was
    /// fetched.
    Poll {
        http: SocketAddr,
        post: String,
        secret: String,
        frames: mpsc::UnboundedReceiver<Value>,
        bye: Option<u16>,
        _poller: AbortOnDrop,
    },
}

/// One event of an SSE stream: its `id` (if it had one) and its `data`, as JSON.
#[derive(Debug)]
pub struct SseEvent {
    pub id: Option<String>,
    pub data: Value,
}

/// A background task of a client, stopped with it: dropping an SSE or polling client closes
/// its connections as dropping a socket would.
pub struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long a long poll may be held (the server holds it at most 25 s) before the test fails.
const POLL_HOLD: Duration = Duration::from_secs(40);

/// The head of an HTTP/1.1 request `method path` to `addr`, with `headers` (and `Host`).
fn request_head(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head
}

/// An HTTP/1.1 response read off its connection as it arrives: the head, then the body piece
/// by piece, whatever its framing (chunked, a length, or until the connection closes).
struct HttpResponse {
    tcp: TcpStream,
    buf: BytesMut,
    status: u16,
    headers: Vec<(String, String)>,
    framing: Framing,
}

enum Framing {
    /// Chunked: a size line is due next.
    ChunkSize,
    /// Chunked: this many bytes of the current chunk are still to come.
    ChunkData(usize),
    /// Chunked: the `\r\n` after a chunk's data is due.
    ChunkEnd,
    /// This many bytes are still to come (`Content-Length`).
    Length(usize),
    /// Until the connection closes.
    UntilClose,
    /// The body is over.
    Done,
}

impl HttpResponse {
    /// Reads the response head from `tcp`.
    async fn read(mut tcp: TcpStream) -> std::io::Result<HttpResponse> {
        let mut buf = BytesMut::new();
        let end = loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos;
            }
            if tcp.read_buf(&mut buf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        };
        let head = buf.split_to(end + 4);
        let head = String::from_utf8_lossy(&head[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|line| line.split(' ').nth(1))
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP response: {head}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
            .collect();
        let mut response = HttpResponse {
            tcp,
            buf,
            status,
            headers,
            framing: Framing::UntilClose,
        };
        response.framing = if response
            .header("transfer-encoding")
            .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"))
        {
            Framing::ChunkSize
        } else if let Some(length) = response.header("content-length") {
            Framing::Length(length.parse().expect("a numeric Content-Length"))
        } else {
            Framing::UntilClose
        };
        Ok(response)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Reads more into `buf`; false when the connection ended.
    async fn fill(&mut self) -> std::io::Result<bool> {
        self.buf.reserve(4096);
        Ok(self.tcp.read_buf(&mut self.buf).await? > 0)
    }

    /// The next piece of the body as it arrived; None at its end. A connection that ends
    /// inside a chunked or sized body is an error.
    async fn piece(&mut self) -> std::io::Result<Option<bytes::Bytes>> {
        let cut = || std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        loop {
            match self.framing {
                Framing::Done | Framing::Length(0) => return Ok(None),
                Framing::ChunkSize => {
                    let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") else {
                        if !self.fill().await? {
                            return Err(cut());
                        }
                        continue;
                    };
                    let line = String::from_utf8_lossy(&self.buf[..pos]).into_owned();
                    self.buf.advance(pos + 2);
                    let hex = line.split(';').next().unwrap_or_default().trim();
                    let size = usize::from_str_radix(hex, 16)
                        .unwrap_or_else(|_| panic!("a chunk size, not {line:?}"));
                    // The last chunk: trailers, if any, are not read.
                    self.framing = if size == 0 {
                        Framing::Done
                    } else {
                        Framing::ChunkData(size)
                    };
                }
                Framing::ChunkEnd => {
                    if self.buf.len() < 2 {
                        if !self.fill().await? {
                            return Err(cut());
                        }
                        continue;
                    }
                    assert_eq!(&self.buf[..2], b"\r\n", "a chunk ends with CRLF");
                    self.buf.advance(2);
                    self.framing = Framing::ChunkSize;
                }
                Framing::ChunkData(left) | Framing::Length(left) => {
                    if self.buf.is_empty() && !self.fill().await? {
                        return Err(cut());
                    }
                    let take = left.min(self.buf.len());
                    let piece = self.buf.split_to(take).freeze();
                    self.framing = match self.framing {
                        Framing::ChunkData(_) if take == left => Framing::ChunkEnd,
                        Framing::ChunkData(_) => Framing::ChunkData(left - take),
                        _ => Framing::Length(left - take),
                    };
                    return Ok(Some(piece));
                }
                Framing::UntilClose => {
                    if self.buf.is_empty() && !self.fill().await? {
                        self.framing = Framing::Done;
                        return Ok(None);
                    }
                    return Ok(Some(self.buf.split().freeze()));
                }
            }
        }
    }

    /// The whole body.
    async fn body(&mut self) -> std::io::Result<Vec<u8>> {
        let mut body = Vec::new();
        while let Some(piece) = self.piece().await? {
            body.extend_from_slice(&piece);
        }
        Ok(body)
    }
}

/// One request over a fresh connection (`Connection: close`), `body` sent as is:
/// (status, body). Fails the test if the answer takes longer than `wait`.
async fn http_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    wait: Duration,
) -> (u16, Vec<u8>) {
    use tokio::io::AsyncWriteExt;
    let exchange = async {
        let mut tcp = TcpStream::connect(addr).await?;
        let mut request = request_head(addr, method, path, headers).into_bytes();
        request.extend_from_slice(
            format!(
                "Connection: close\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        request.extend_from_slice(body);
        tcp.write_all(&request).await?;
        let mut response = HttpResponse::read(tcp).await?;
        let body = response.body().await?;
        std::io::Result::Ok((response.status, body))
    };
    tokio::time::timeout(wait, exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer within {wait:?}"))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// Parses a text/event-stream as it arrives (`data:` lines, `id:`, comments; a blank line
/// ends an event) and hands each event on, until the stream or the receiver ends.
async fn read_events(mut response: HttpResponse, events: mpsc::UnboundedSender<SseEvent>) {
    let mut line = Vec::new();
    let (mut id, mut data): (Option<String>, Option<String>) = (None, None);
    loop {
        let piece = match response.piece().await {
            Ok(Some(piece)) => piece,
            // The end of the stream, or of the connection: the end either way.
            Ok(None) | Err(_) => return,
        };
        for &byte in piece.iter() {
            if byte != b'\n' {
                line.push(byte);
                continue;
            }
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let text =
                String::from_utf8(std::mem::take(&mut line)).expect("the event stream is UTF-8");
            if text.is_empty() {
                // The end of an event; one without data is not dispatched.
                if let Some(data) = data.take() {
                    let data = serde_json::from_str(&data)
                        .unwrap_or_else(|e| panic!("event data is JSON ({e}): {data}"));
                    if events
                        .send(SseEvent {
                            id: id.take(),
                            data,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
                id = None;
                continue;
            }
            if text.starts_with(':') {
                continue; // a comment: the keepalive
            }
            let (field, value) = text.split_once(':').unwrap_or((&text, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "data" => match &mut data {
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => data = Some(value.to_string()),
                },
                "id" => id = Some(value.to_string()),
                _ => {} // `retry`, `event`: not used by the server's frames
            }
        }
    }
}

/// Polls `url` from frame 0 on, one poll at a time, handing on each frame, until a poll is
/// answered 404 (the session is over) or the receiver ends.
async fn poll_frames(
    http: SocketAddr,
    url: String,
    secret: String,
    frames: mpsc::UnboundedSender<Value>,
) {
    let mut after = 0;
    loop {
        let after_header = after.to_string();
        let headers = [
            ("wtchat-secret", secret.as_str()),
            ("wtchat-after", &after_header),
        ];
        let (status, body) = http_bytes(http, "GET", &url, &headers, b"", POLL_HOLD).await;
        match status {
            404 => return,
            200 => {}
            other => panic!(
                "GET {url} after {after}: {other} {}",
                String::from_utf8_lossy(&body)
            ),
        }
        let answer: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("a poll answers JSON ({e}): {body:?}"));
        let next = answer["next"].as_u64().expect("a poll answer has `next`");
        let got = answer["frames"]
            .as_array()
            .expect("a poll answer has `frames`");
        if next < after || (next == after && !got.is_empty()) {
            panic!("poll after {after} answered {answer}");
        }
        for frame in got {
            if frames.send(frame.clone()).is_err() {
                return;
            }
        }
        after = next;
    }
}

/// A WebTransport client endpoint that pins `digests`.
pub fn wt_endpoint(digests: &[[u8; 32]]) -> Endpoint<wtransport::endpoint::endpoint_side::Client> {
    let config = ClientConfig::builder()
        .with_bind_default()
        .with_server_certificate_hashes(digests.iter().map(|d| Sha256Digest::new(*d)))
        .build();
    Endpoint::client(config).unwrap()
}

impl Client {
    /// A WebSocket client with no Origin header.
    pub async fn ws(server: &TestServer) -> Client {
        Client::ws_with_origin(server, None)
            .await
            .expect("websocket connects")
    }

    /// A WebSocket client; Err(status) when the upgrade is refused.
    pub async fn ws_with_origin(server: &TestServer, origin: Option<&str>) -> Result<Client, u16> {
        let headers: Vec<(&str, &str)> = origin.map(|o| ("origin", o)).into_iter().collect();
        Client::ws_request(server, "", &headers).await
    }

    /// A WebSocket client with a query string (`?token=...`, or empty) and extra headers;
    /// Err(status) when the upgrade is refused.
    pub async fn ws_request(
        server: &TestServer,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, u16> {
        Client::ws_at(&format!("{}{query}", server.ws_url()), headers).await
    }

    /// A WebSocket client of the server at `url`; Err(status) when the upgrade is refused.
    pub async fn ws_at(url: &str, headers: &[(&str, &str)]) -> Result<Client, u16> {
        let mut request = url.into_client_request().unwrap();
        for (name, value) in headers {
            request.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())
                    .unwrap(),
                value.parse().unwrap(),
            );
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((socket, _)) => Ok(Client::Ws { socket, bye: None }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                Err(response.status().as_u16())
            }
            Err(e) => panic!("websocket connect failed: {e}"),
        }
    }

    /// A WebTransport client on path /wtchat, no Origin header.
    pub async fn wt(server: &TestServer) -> Client {
        Client::wt_with(server, "/wtchat", None)
            .await
            .expect("webtransport connects")
    }

    /// A WebTransport client; Err(description) when the session is refused.
    pub async fn wt_with(
        server: &TestServer,
        path: &str,
        origin: Option<&str>,
    ) -> Result<Client, String> {
        Client::wt_pinning(server, &server.digests, path, origin).await
    }

    /// A WebTransport client on `path_and_query` with extra headers.
    pub async fn wt_request(
        server: &TestServer,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, String> {
        Client::wt_connect(server, &server.digests, path_and_query, headers).await
    }

    /// A WebTransport client that pins `digests` instead of the server's.
    pub async fn wt_pinning(
        server: &TestServer,
        digests: &[[u8; 32]],
        path: &str,
        origin: Option<&str>,
    ) -> Result<Client, String> {
        let headers: Vec<(&str, &str)> = origin.map(|o| ("origin", o)).into_iter().collect();
        Client::wt_connect(server, digests, path, &headers).await
    }

    async fn wt_connect(
        server: &TestServer,
        digests: &[[u8; 32]],
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, String> {
        Client::wt_at(&server.wt_url(path), digests, headers).await
    }

    /// This WebTransport client speaks protocol 4 (its `hello`, answered): each room's frames
    /// come on a stream of the room's own, which a task reads into the client's frames.
    pub async fn with_room_streams(mut self) -> Client {
        self.send(json!({"type": "hello", "protocol": 4})).await;
        let answer = self.next_of("hello").await;
        assert_eq!(answer["protocol"], 4, "{answer}");
        let Client::Wt {
            connection, rooms, ..
        } = &mut self
        else {
            panic!("room streams are WebTransport's");
        };
        let (frames, read) = tokio::sync::mpsc::unbounded_channel();
        let connection = connection.clone();
        tokio::spawn(async move {
            // Each frame says which stream it came on (`_stream`: 0 for the first opened).
            let mut opened = 0;
            while let Ok(mut stream) = connection.accept_uni().await {
                let frames = frames.clone();
                let number = opened;
                opened += 1;
                tokio::spawn(async move {
                    let mut buf = BytesMut::new();
                    loop {
                        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                            let line = buf.split_to(pos + 1);
                            let mut frame: Value = serde_json::from_slice(&line[..pos]).unwrap();
                            // When it came off its stream, before it waits behind other
                            // rooms' frames in this client: `read_at`.
                            frame["_read_us"] = json!(arrival_clock().elapsed().as_micros() as u64);
                            frame["_stream"] = json!(number);
                            if frames.send(frame).is_err() {
                                return;
                            }
                        }
                        buf.reserve(4096);
                        match stream.read_buf(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                    }
                });
            }
        });
        *rooms = Some(read);
        self
    }

    /// A WebTransport client of `server` on path /wtchat whose packets go to `addr` instead
    /// of the server's UDP address: through a relay in front of it (tests/common/relay.rs).
    pub async fn wt_via(server: &TestServer, addr: SocketAddr) -> Client {
        let url = format!("https://{addr}/wtchat");
        Client::wt_at(&url, &server.digests, &[])
            .await
            .expect("webtransport connects through the relay")
    }

    /// A WebTransport client of the server at `url` whose certificate has one of `digests`;
    /// Err(description) when the session is refused.
    pub async fn wt_at(
        url: &str,
        digests: &[[u8; 32]],
        headers: &[(&str, &str)],
    ) -> Result<Client, String> {
        let endpoint = wt_endpoint(digests);
        let mut options = ConnectOptions::builder(url);
        for (name, value) in headers {
            options = options.add_header(*name, *value);
        }
        let connection = endpoint
            .connect(options.build())
            .await
            .map_err(|e| e.to_string())?;
        let (send, recv) = connection
            .open_bi()
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        Ok(Client::Wt {
            connection,
            send,
            recv,
            buf: BytesMut::new(),
            bye: None,
            rooms: None,
            _endpoint: endpoint,
        })
    }

    /// A Server-Sent Events client, no Origin header.
    pub async fn sse(server: &TestServer) -> Client {
        Client::sse_request(server, "", &[])
            .await
            .expect("the event stream opens")
    }

    /// A Server-Sent Events client with a query string (`?token=...`, or empty) and extra
    /// headers (`Last-Event-ID`, `Origin`); Err(status) when the stream is refused.
    pub async fn sse_request(
        server: &TestServer,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, u16> {
        Client::sse_at(server.http, query, headers).await
    }

    /// A Server-Sent Events client of the server at `http`; Err(status) when refused.
    pub async fn sse_at(
        http: SocketAddr,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, u16> {
        Client::sse_under(http, "", query, headers).await
    }

    /// A Server-Sent Events client of a chat under path `prefix` (`/chat`) at `http`; it
    /// posts where the stream's first event says.
    pub async fn sse_under(
        http: SocketAddr,
        prefix: &str,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, u16> {
        use tokio::io::AsyncWriteExt;
        let open = async {
            let mut tcp = TcpStream::connect(http).await.unwrap();
            let path = format!("{prefix}/wtchat/sse{query}");
            let mut request = request_head(http, "GET", &path, headers);
            request.push_str("Accept: text/event-stream\r\n\r\n");
            tcp.write_all(request.as_bytes()).await.unwrap();
            HttpResponse::read(tcp).await.expect("an HTTP response")
        };
        let response = tokio::time::timeout(DEADLINE, open)
            .await
            .expect("the stream is answered before the deadline");
        if response.status != 200 {
            return Err(response.status);
        }
        assert_eq!(
            response.header("content-type"),
            Some("text/event-stream"),
            "an event stream"
        );
        let (sender, mut events) = mpsc::unbounded_channel();
        let reader = AbortOnDrop(tokio::spawn(read_events(response, sender)));
        let session = tokio::time::timeout(DEADLINE, events.recv())
            .await
            .expect("the session event before the deadline")
            .expect("the stream's first event");
        assert_eq!(session.data["type"], "session", "{:?}", session);
        let post = session.data["post"].as_str().unwrap().to_string();
        let secret = session.data["secret"].as_str().unwrap().to_string();
        Ok(Client::Sse {
            http,
            post,
            secret,
            events,
            last_event_id: None,
            bye: None,
            _reader: reader,
        })
    }

    /// A long-polling client, no Origin header.
    pub async fn poll(server: &TestServer) -> Client {
        Client::poll_request(server, "", &[])
            .await
            .expect("a polling session opens")
    }

    /// A long-polling client with a query string and extra headers; Err(status) when the
    /// session is refused.
    pub async fn poll_request(
        server: &TestServer,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, u16> {
        Client::poll_at(server.http, query, headers).await
    }

    /// A long-polling client of the server at `http`; Err(status) when refused.
    pub async fn poll_at(
        http: SocketAddr,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, u16> {
        Client::poll_under(http, "", query, headers).await
    }

    /// A long-polling client of a chat under path `prefix` (`/chat`) at `http`; it polls
    /// and posts where the session's answer says.
    pub async fn poll_under(
        http: SocketAddr,
        prefix: &str,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, u16> {
        let path = format!("{prefix}/wtchat/poll{query}");
        let (status, body) = http_bytes(http, "POST", &path, headers, b"", DEADLINE).await;
        if status != 200 {
            return Err(status);
        }
        let session: Value = serde_json::from_slice(&body).expect("the session is JSON");
        assert_eq!(session["type"], "session", "{session}");
        let post = session["post"].as_str().unwrap().to_string();
        let poll = session["poll"].as_str().unwrap().to_string();
        let secret = session["secret"].as_str().unwrap().to_string();
        let (sender, frames) = mpsc::unbounded_channel();
        let poller = AbortOnDrop(tokio::spawn(poll_frames(
            http,
            poll,
            secret.clone(),
            sender,
        )));
        Ok(Client::Poll {
            http,
            post,
            secret,
            frames,
            bye: None,
            _poller: poller,
        })
    }

    pub fn transport(&self) -> &'static str {
        match self {
            Client::Ws { .. } => "websocket",
            Client::Wt { .. } => "webtransport",
            Client::Sse { .. } => "sse",
            Client::Poll { .. } => "longpoll",
        }
    }

    /// Where an SSE or long-polling client posts its frames.
    pub fn post_url(&self) -> &str {
        match self {
            Client::Sse { post, .. } | Client::Poll { post, .. } => post,
            _ => panic!("{} clients do not post their frames", self.transport()),
        }
    }

    /// The id of the last SSE event read that had one: what a reconnecting `EventSource`
    /// sends as `Last-Event-ID`.
    pub fn last_event_id(&self) -> Option<&str> {
        match self {
            Client::Sse { last_event_id, .. } => last_event_id.as_deref(),
            _ => panic!("event ids are SSE only"),
        }
    }

    /// The secret an SSE or long-polling client's posts bear.
    pub fn secret(&self) -> &str {
        match self {
            Client::Sse { secret, .. } | Client::Poll { secret, .. } => secret,
            _ => panic!("{} clients have no session secret", self.transport()),
        }
    }

    /// POSTs `body` as is to this SSE or long-polling client's session, bearing its secret
    /// (with `headers`): its status.
    pub async fn post_body(&self, body: &[u8], headers: &[(&str, &str)]) -> u16 {
        let http = match self {
            Client::Sse { http, .. } | Client::Poll { http, .. } => *http,
            _ => panic!("{} clients do not post their frames", self.transport()),
        };
        let mut headers = headers.to_vec();
        headers.push(("wtchat-secret", self.secret()));
        http_bytes(http, "POST", self.post_url(), &headers, body, DEADLINE)
            .await
            .0
    }

    /// POSTs `lines` in one request, one frame per line: its status (204 when they were
    /// taken).
    pub async fn post_lines(&self, lines: &[&[u8]]) -> u16 {
        self.post_body(&lines.join(&b'\n'), &[]).await
    }

    /// Sends one frame as JSON.
    pub async fn send(&mut self, frame: Value) {
        self.send_raw(frame.to_string().as_bytes()).await;
    }

    /// Sends raw bytes as one frame (a text message, a line, or a `POST` of its own, which
    /// must be answered 204).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        // A send that cannot complete (a peer that stopped reading) fails the test instead
        // of hanging it.
        let sent = async {
            match self {
                Client::Ws { socket, .. } => {
                    let text = String::from_utf8(bytes.to_vec())
                        .expect("WebSocket text is UTF-8 (send invalid bytes as a raw frame)");
                    socket.send(Message::text(text)).await.unwrap();
                }
                Client::Wt { send, .. } => {
                    let mut line = bytes.to_vec();
                    line.push(b'\n');
                    send.write_all(&line).await.unwrap();
                }
                Client::Sse { .. } | Client::Poll { .. } => {
                    let status = self.post_lines(&[bytes]).await;
                    assert_eq!(status, 204, "a frame posted to {}", self.post_url());
                }
            }
        };
        tokio::time::timeout(DEADLINE, sent)
            .await
            .expect("the frame is sent before the deadline");
    }

    /// Sends a frame as a WebTransport datagram.
    pub fn send_datagram(&self, frame: Value) {
        match self {
            Client::Wt { connection, .. } => connection
                .send_datagram(frame.to_string().as_bytes())
                .unwrap(),
            _ => panic!("datagrams are WebTransport only"),
        }
    }

    /// The next frame (stream or datagram), or None when the connection ended.
    pub async fn try_next(&mut self) -> Option<Value> {
        tokio::time::timeout(DEADLINE, self.next_inner())
            .await
            .expect("a frame arrives before the deadline")
    }

    /// The frames that still arrive until the connection ends or is quiet for `quiet`: what
    /// a client got of a server that died without closing (a QUIC peer that vanished is
    /// only noticed at the idle timeout).
    pub async fn drain(&mut self, quiet: Duration) -> Vec<Value> {
        let mut frames = Vec::new();
        while let Ok(Some(frame)) = tokio::time::timeout(quiet, self.next_inner()).await {
            frames.push(frame);
        }
        frames
    }

    async fn next_inner(&mut self) -> Option<Value> {
        match self {
            Client::Ws { socket, bye } => loop {
                match socket.next().await {
                    Some(Ok(Message::Text(text))) => {
                        let v: Value = serde_json::from_str(&text).unwrap();
                        if v["type"] == "bye" {
                            *bye = v["code"].as_u64().map(|c| c as u16);
                        }
                        break Some(v);
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break None,
                    Some(Ok(_)) => continue,
                }
            },
            Client::Wt {
                connection,
                recv,
                buf,
                bye,
                rooms,
                ..
            } => loop {
                if let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                    let line = buf.split_to(pos + 1);
                    let v: Value = serde_json::from_slice(&line[..pos]).unwrap();
                    if v["type"] == "bye" {
                        *bye = v["code"].as_u64().map(|c| c as u16);
                    }
                    break Some(v);
                }
                buf.reserve(4096);
                tokio::select! {
                    read = recv.read_buf(buf) => match read {
                        Ok(0) | Err(_) => break None,
                        Ok(_) => {}
                    },
                    datagram = connection.receive_datagram() => match datagram {
                        Ok(d) => break Some(serde_json::from_slice(d.payload().chunk()).unwrap()),
                        Err(_) => break None,
                    },
                    frame = async { rooms.as_mut()?.recv().await }, if rooms.is_some() => {
                        match frame {
                            Some(frame) => break Some(frame),
                            None => *rooms = None,
                        }
                    }
                }
            },
            Client::Sse {
                events,
                last_event_id,
                bye,
                ..
            } => {
                let event = events.recv().await?;
                if event.id.is_some() {
                    *last_event_id = event.id;
                }
                if event.data["type"] == "bye" {
                    *bye = event.data["code"].as_u64().map(|c| c as u16);
                }
                Some(event.data)
            }
            Client::Poll { frames, bye, .. } => {
                let frame = frames.recv().await?;
                if frame["type"] == "bye" {
                    *bye = frame["code"].as_u64().map(|c| c as u16);
                }
                Some(frame)
            }
        }
    }

    /// The next frame; fails the test if the connection ended.
    pub async fn next(&mut self) -> Value {
        self.try_next().await.expect("connection still open")
    }

    /// Skips frames until one matches; fails on the deadline or if the connection ends.
    pub async fn next_matching(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.next_inner())
                .await
                .unwrap_or_else(|_| panic!("no {what} before the deadline"))
                .unwrap_or_else(|| panic!("connection ended while waiting for {what}"));
            if pred(&frame) {
                return frame;
            }
        }
    }

    /// The next frame of this type, skipping others.
    pub async fn next_of(&mut self, kind: &str) -> Value {
        self.next_matching(kind, |f| f["type"] == kind).await
    }

    /// Joins `room` as `name`: returns the `joined` frame and the replayed history.
    pub async fn join(&mut self, room: &str, name: &str) -> (Value, Vec<Value>) {
        self.join_frame(json!({"type": "join", "room": room, "name": name}))
            .await
    }

    /// Sends a join frame; returns `joined` and the replay: the messages up to its `seq`,
    /// after the updates of older messages that changed (when resuming).
    pub async fn join_frame(&mut self, frame: Value) -> (Value, Vec<Value>) {
        let room = frame["room"].as_str().unwrap().to_string();
        self.send(frame).await;
        let joined = self
            .next_matching("joined", |f| {
                f["type"] == "joined" && f["room"] == room.as_str()
            })
            .await;
        let mut history = Vec::new();
        // The replayed frames of this room follow `joined` at once (frames of other
        // rooms may interleave).
        for _ in 0..joined["replay"].as_u64().unwrap() {
            let m = self
                .next_matching("history", |f| {
                    (f["type"] == "message" || f["type"] == "update") && f["room"] == room.as_str()
                })
                .await;
            history.push(m);
        }
        (joined, history)
    }

    /// The next `n` messages of `room`, as (seq, from, text).
    pub async fn messages(&mut self, room: &str, n: usize) -> Vec<(u64, String, String)> {
        let mut got = Vec::new();
        while got.len() < n {
            let m = self
                .next_matching("message", |f| f["type"] == "message" && f["room"] == room)
                .await;
            got.push(seq_text(&m));
        }
        got
    }

    /// Waits for the answer to the frame sent with client id `id`: Ok(its `ack`), or
    /// Err(the code of the `error` about it).
    pub async fn answer(&mut self, id: &str) -> Result<Value, String> {
        let answer = self
            .next_matching("ack or error", |f| {
                (f["type"] == "ack" || f["type"] == "error") && f["id"] == id
            })
            .await;
        match answer["type"].as_str() {
            Some("ack") => Ok(answer),
            _ => Err(answer["code"].as_str().unwrap().to_owned()),
        }
    }

    /// Sends a message mentioning `mentions` (public sender ids) and waits for its ack;
    /// returns its number.
    pub async fn say_mentioning(
        &mut self,
        room: &str,
        text: &str,
        id: &str,
        mentions: &[&str],
    ) -> u64 {
        self.send(
            json!({"type": "send", "room": room, "text": text, "id": id, "mentions": mentions}),
        )
        .await;
        self.answer(id).await.unwrap()["seq"].as_u64().unwrap()
    }

    /// Sends a message and waits for its ack; returns the acknowledged sequence number.
    pub async fn say(&mut self, room: &str, text: &str, id: &str) -> u64 {
        self.send(json!({"type": "send", "room": room, "text": text, "id": id}))
            .await;
        let ack = self
            .next_matching("ack", |f| f["type"] == "ack" && f["id"] == id)
            .await;
        ack["seq"].as_u64().unwrap()
    }

    /// A WebSocket client once the server admits one: connections refused as `busy` are
    /// tried again until the deadline (a place freed elsewhere is noticed by the server
    /// only once that connection's end reached it).
    pub async fn ws_when_admitted(server: &TestServer) -> Client {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let mut client = Client::ws(server).await;
            client.send(json!({"type": "ping"})).await;
            let answer = client.next().await;
            if answer["type"] == "pong" {
                return client;
            }
            assert_eq!(answer["code"], "busy", "{answer}");
            assert!(tokio::time::Instant::now() < deadline, "never admitted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What a connection refused for load is told over WebSocket or WebTransport (browsers
    /// cannot read a refused handshake's status): `error {code: "busy", retryAfterMs}`, then
    /// `bye` 4004 with the same wait, then the close (4004 over WebSocket). Returns the wait,
    /// in ms.
    pub async fn expect_busy(&mut self) -> u64 {
        let error = self.next().await;
        assert_eq!(error["type"], "error", "{error}");
        assert_eq!(error["code"], "busy", "{error}");
        let wait = error["retryAfterMs"].as_u64().expect("a retryAfterMs");
        let bye = self.next().await;
        assert_eq!(
            (
                &bye["type"],
                &bye["code"],
                &bye["reason"],
                &bye["reconnect"]
            ),
            (&json!("bye"), &json!(4004), &json!("busy"), &json!(true)),
            "{bye}"
        );
        assert_eq!(bye["retryAfterMs"], wait, "{bye}");
        assert_eq!(self.ended().await, Ended::Code(4004));
        wait
    }

    /// Waits until the connection ends; returns how (close code or `bye` code).
    pub async fn ended(&mut self) -> Ended {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            match tokio::time::timeout_at(deadline, self.next_raw_end()).await {
                Err(_) => panic!("connection still open at the deadline"),
                Ok(Some(end)) => return end,
                Ok(None) => continue,
            }
        }
    }

    /// One step of reading towards the end: Some(end) when it ended.
    async fn next_raw_end(&mut self) -> Option<Ended> {
        match self {
            Client::Ws { socket, bye } => match socket.next().await {
                Some(Ok(Message::Close(Some(frame)))) => Some(Ended::Code(frame.code.into())),
                // No close frame: whatever `bye` said, the close itself carried no code.
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => Some(Ended::NoCode),
                Some(Ok(Message::Text(text))) => {
                    let v: Value = serde_json::from_str(&text).unwrap();
                    if v["type"] == "bye" {
                        *bye = v["code"].as_u64().map(|c| c as u16);
                    }
                    None
                }
                Some(Ok(_)) => None,
            },
            // No close code on these: the end (WebTransport's stream, the event stream, a
            // poll answered 404) after a `bye` is that `bye`'s code.
            Client::Wt { .. } | Client::Sse { .. } | Client::Poll { .. } => {
                match self.next_inner().await {
                    Some(_) => None,
                    None => {
                        let (Client::Wt { bye, .. }
                        | Client::Sse { bye, .. }
                        | Client::Poll { bye, .. }) = self
                        else {
                            unreachable!()
                        };
                        Some(bye.map_or(Ended::NoCode, Ended::Code))
                    }
                }
            }
        }
    }
}

/// A directory mounted for a test (a small tmpfs, or a read-only view), unmounted after.
/// Mounting needs root, which CI has.
pub struct Mount(std::path::PathBuf);

impl Mount {
    pub fn new(args: &[&str], at: &std::path::Path) -> Mount {
        let status = std::process::Command::new("mount")
            .args(args)
            .arg(at)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mount {args:?} failed: these tests need root (CI runs as root)"
        );
        Mount(at.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A 1 MiB disk of its own (a tmpfs), to fill up: what a server sees when its disk is full.
pub struct SmallDisk {
    dir: std::path::PathBuf,
    _mount: Mount,
}

impl SmallDisk {
    /// Mounts it in a new directory under `parent`.
    pub fn new(parent: &std::path::Path) -> SmallDisk {
        let dir = parent.join("disk");
        std::fs::create_dir(&dir).unwrap();
        let mount = Mount::new(&["-t", "tmpfs", "-o", "size=1m", "tmpfs"], &dir);
        SmallDisk { dir, _mount: mount }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.dir
    }

    /// Fills it but for `room` bytes.
    pub fn fill(&self, room: u64) {
        let out = std::process::Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.dir)
            .output()
            .unwrap();
        let free: u64 = String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|line| line.trim().parse().ok())
            .expect("df prints the free bytes");
        let filler = vec![0u8; free.saturating_sub(room) as usize];
        std::fs::write(self.dir.join("filler"), filler).unwrap();
    }

    /// Gives the filled space back.
    pub fn free(&self) {
        std::fs::remove_file(self.dir.join("filler")).unwrap();
    }
}

/// What a `wtchat serve` process printed at start (its stdout lines), for tests that run the
/// real command.
/// Where a `wtchat serve` listens and its certificate digests, as it printed them.
pub struct Started {
    pub http: SocketAddr,
    pub wt_port: u16,
    pub digests: Vec<[u8; 32]>,
}

/// Parses the startup lines until "Press Ctrl-C"; None if the output ended first.
pub fn parse_startup(lines: &mut impl Iterator<Item = String>) -> Option<Started> {
    let (mut http, mut wt_port, mut digests) = (None, None, Vec::new());
    for line in lines {
        let word_after = |marker: &str| {
            line.split(marker)
                .nth(1)
                .and_then(|rest| rest.split(|c: char| c.is_whitespace() || c == ')').next())
                .map(str::to_string)
        };
        if line.trim_start().starts_with("HTTP") {
            http = word_after("http://").map(|a| a.parse().unwrap());
        } else if line.trim_start().starts_with("WebTransport") {
            let udp: SocketAddr = word_after("(UDP ").unwrap().parse().unwrap();
            wt_port = Some(udp.port());
        } else if let Some(hex) = word_after("sha-256 ") {
            let bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            digests.push(bytes.try_into().unwrap());
        } else if line.starts_with("Press Ctrl-C") {
            return Some(Started {
                http: http.expect("the HTTP address is printed"),
                wt_port: wt_port.expect("the WebTransport address is printed"),
                digests,
            });
        }
    }
    None
}

/// What a reader saw of a room: seq → text, and the room's epoch.
#[derive(Default)]
pub struct Seen {
    pub epoch: u64,
    pub texts: std::collections::BTreeMap<u64, String>,
}

impl Seen {
    /// Adds a `message` frame; a message seen twice fails the test.
    pub fn add(&mut self, message: &Value) {
        let seq = message["seq"].as_u64().unwrap();
        let text = message["text"].as_str().unwrap().to_string();
        assert!(
            self.texts.insert(seq, text).is_none(),
            "message {seq} arrived twice"
        );
    }

    /// The last sequence number seen (0 for none).
    pub fn last(&self) -> u64 {
        self.texts.keys().next_back().copied().unwrap_or(0)
    }

    /// Rejoins `room` as `name` (with its resume `key`), saying what it saw; returns
    /// `joined` and adds the replay.
    pub async fn resume(
        &mut self,
        client: &mut Client,
        room: &str,
        name: &str,
        key: Option<&str>,
    ) -> Value {
        let mut join = json!({"type": "join", "room": room, "name": name,
                              "since": self.last(), "epoch": self.epoch});
        if let Some(key) = key {
            join["key"] = key.into();
        }
        let (joined, replay) = client.join_frame(join).await;
        for message in &replay {
            self.add(message);
        }
        joined
    }
}

/// A raw `POST` of `body` (text, not JSON) to `path` with `headers`: its status.
pub async fn post_text(addr: SocketAddr, path: &str, body: &str, headers: &[(&str, &str)]) -> u16 {
    use tokio::io::AsyncWriteExt;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(DEADLINE, tcp.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&response)[9..12].parse().unwrap()
}

/// `wtchat ARGS` in `cwd`, with `env` as its only `WTCHAT_` variables: the test runner's
/// own would change what it reads (every setting is one).
pub fn wtchat_command(
    args: &[&str],
    env: &[(&str, &str)],
    cwd: &std::path::Path,
) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_wtchat"));
    command.current_dir(cwd).args(args);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("WTCHAT_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    command
}

/// Runs `command` to its end, which must come within the deadline (one that does not, a
/// server that failed to refuse its configuration, is killed and the test fails); its
/// output.
pub fn run_to_end(mut command: std::process::Command) -> std::process::Output {
    use std::process::Stdio;
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the wtchat binary runs");
    let deadline = std::time::Instant::now() + DEADLINE;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("{command:?} is still running after {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// Waits until something listens on loopback `port` (a server the test started), for at
/// most [`DEADLINE`]; `log` says what the server said, for the failure message.
pub async fn wait_listening(port: u16, what: &str, log: impl Fn() -> String) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not listen: {}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A server process a test started (nginx, PHP): killed, and reaped, when dropped.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `wtchat serve` on free loopback ports, working in `dir`, its certificates in `dir/certs`
/// (the caller adds the engine and whatever else).
pub fn serve_command(dir: &std::path::Path) -> std::process::Command {
    let certs = dir.join("certs");
    let args = [
        "serve",
        "--http",
        "127.0.0.1:0",
        "--webtransport",
        "127.0.0.1:0",
        "--certs",
        certs.to_str().unwrap(),
    ];
    wtchat_command(&args, &[], dir)
}

/// A real `wtchat serve` process, started from a [`serve_command`]: its stdout (the startup
/// lines, then anything else) and stderr (the log) kept in files of `dir`, shown when the
/// test fails; killed when dropped.
pub struct Serve {
    child: std::process::Child,
    pub http: SocketAddr,
    pub wt_port: u16,
    pub digests: Vec<[u8; 32]>,
    dir: std::path::PathBuf,
}

impl Serve {
    /// Starts `command` and waits until it says it serves.
    pub async fn start(mut command: std::process::Command, dir: &std::path::Path) -> Serve {
        use std::io::{BufRead, Write};
        use std::process::Stdio;
        let stderr = std::fs::File::create(dir.join("stderr.log")).unwrap();
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .unwrap();
        // Stdout is read to its end in a thread of its own, into stdout.log, so that nothing
        // the server prints later ever finds a closed pipe.
        let stdout = child.stdout.take().unwrap();
        let mut log = std::fs::File::create(dir.join("stdout.log")).unwrap();
        let (started, startup) = oneshot::channel();
        std::thread::spawn(move || {
            let mut lines = std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .inspect(|line| {
                    let _ = writeln!(log, "{line}");
                });
            let _ = started.send(parse_startup(&mut lines));
            lines.for_each(drop);
        });
        let started = match tokio::time::timeout(DEADLINE, startup).await {
            Ok(Ok(Some(started))) => started,
            outcome => {
                let _ = child.kill();
                let status = child.wait().unwrap();
                let what = if outcome.is_err() {
                    "did not start before the deadline"
                } else {
                    "exited before serving"
                };
                panic!("wtchat serve {what} ({status}):\n{}", logs(dir));
            }
        };
        Serve {
            child,
            http: started.http,
            wt_port: started.wt_port,
            digests: started.digests,
            dir: dir.to_path_buf(),
        }
    }

    /// A WebSocket client; `query` is `?token=…` or empty.
    pub async fn ws_query(&self, query: &str) -> Client {
        let url = format!("ws://{}/wtchat/ws{query}", self.http);
        Client::ws_at(&url, &[]).await.expect("websocket connects")
    }

    /// A WebTransport client; `query` is `?token=…` or empty.
    pub async fn wt_query(&self, query: &str) -> Client {
        let url = format!("https://127.0.0.1:{}/wtchat{query}", self.wt_port);
        Client::wt_at(&url, &self.digests, &[])
            .await
            .expect("webtransport connects")
    }

    pub async fn ws(&self) -> Client {
        self.ws_query("").await
    }

    pub async fn wt(&self) -> Client {
        self.wt_query("").await
    }

    /// `kill -9`: no goodbye, no flush.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, as a service manager stops it.
    pub fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit by itself; its status.
    pub async fn exited(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "still running after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What it printed on stdout (its startup lines).
    pub fn output(&self) -> String {
        std::fs::read_to_string(self.dir.join("stdout.log")).unwrap_or_default()
    }

    /// What it wrote to stderr: its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.log")).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- wtchat serve ---\n{}", tail(&logs(&self.dir)));
        }
    }
}

/// What a [`Serve`] in `dir` printed: stdout, then stderr.
fn logs(dir: &std::path::Path) -> String {
    let read = |name| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    format!(
        "{}--- stderr ---\n{}",
        read("stdout.log"),
        read("stderr.log")
    )
}

/// The end of a log: enough to see what went wrong.
pub fn tail(log: &str) -> &str {
    let mut start = log.len().saturating_sub(6000);
    while !log.is_char_boundary(start) {
        start += 1;
    }
    &log[start..]
}

/// Whether `python3` can import `module`; under CI it must (`scripts/test` installs it).
pub fn python_has(module: &str) -> bool {
    let found = std::process::Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("CI").is_err(),
            "python3 with `{module}` is required under CI (scripts/test installs it)"
        );
        eprintln!("SKIPPED: python3 with `{module}` is not installed (run scripts/test)");
    }
    found
}
