//! The HTTP side of the load tool, for the two transports whose frames come down an HTTP
//! response and go up as posts: Server-Sent Events (one long `text/event-stream` response,
//! chunked) and long polling (`GET …/poll/ID?after=N`, answered `{"next":M,"frames":[…]}`).
//! Both post the client's frames, one per line, to the session's `post` URL.
//!
//! A minimal HTTP/1.1 client over tokio's `TcpStream`, written for the tool's hot loop as
//! the WebSocket side is: a response head is found by byte search, an event stream's
//! chunked coding is undone into one buffer and its `data:` lines handed out in place, and
//! a poll answer's frames are cut apart where the next `{"type":"` starts. Nothing parses
//! JSON per frame, nothing allocates per frame.
//!
//! What it relies on (true of wtchat's server, checked by the runs' loss accounting): every
//! frame is one line of JSON starting with `{"type":"` (serde writes the tag first), and no
//! frame holds an object whose first key is `type` (so `{"type":"` only ever starts a frame:
//! inside a JSON string its quotes would be escaped).

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::account;

/// Most frames one post may carry (the server answers 413 past it).
pub const MAX_FRAMES_PER_POST: usize = 64;

/// The server closes a keep-alive connection that sent no request for its header read
/// timeout (10 s by default): a poster idle for this long opens a new one, as a browser's
/// connection pool would rather than post into a connection about to close.
const KEEP_IDLE: Duration = Duration::from_secs(5);

/// Connects with Nagle off: a post, a poll, must leave at once.
pub async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// How a response's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    Length(usize),
    Chunked,
    /// Until the server closes the connection.
    UntilClose,
}

/// A response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// Bytes the head takes, its blank line included: where the body starts.
    pub len: usize,
    pub body: Body,
    /// The server closes the connection after this response.
    pub close: bool,
}

/// The response head at the start of `buf`; None while incomplete.
pub fn parse_head(buf: &[u8]) -> io::Result<Option<Head>> {
    let bad = |why: &str| io::Error::new(io::ErrorKind::InvalidData, format!("HTTP: {why}"));
    let Some(end) = account::find(buf, b"\r\n\r\n") else {
        return if buf.len() > 64 * 1024 {
            Err(bad("response head over 64 KiB"))
        } else {
            Ok(None)
        };
    };
    let head = &buf[..end];
    if !head.starts_with(b"HTTP/1.") || head.len() < 12 {
        return Err(bad("not an HTTP/1 response"));
    }
    let status = std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad("no status"))?;
    let mut body = if status == 204 || status == 304 || status < 200 {
        Body::Length(0)
    } else {
        Body::UntilClose
    };
    let mut close = head.starts_with(b"HTTP/1.0");
    for line in head.split(|&b| b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") && body != Body::Chunked {
            let n = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad("bad content-length"))?;
            body = Body::Length(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            && contains_ignore_case(value, b"chunked")
        {
            body = Body::Chunked;
        } else if name.eq_ignore_ascii_case(b"connection") && contains_ignore_case(value, b"close")
        {
            close = true;
        }
    }
    Ok(Some(Head {
        status,
        len: end + 4,
        body,
        close,
    }))
}

fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

/// Appends a `POST` of `body` (frames, one per line) to `out`, bearing the session's
/// `secret` when it has one (servers before it had none).
pub fn post_request(
    out: &mut Vec<u8>,
    host: &str,
    path: &str,
    secret: Option<&str>,
    body: &[u8],
    close: bool,
) {
    use std::io::Write;
    let _ = write!(
        out,
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: text/plain\r\n\
         Content-Length: {}\r\n{}",
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    );
    secret_header(out, secret);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// Writes `request` and reads its whole response (a `Content-Length` body, or one that ends
/// with the connection) into `buf`: the head, and where the body is in `buf`.
pub async fn exchange(
    tcp: &mut TcpStream,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> io::Result<(Head, std::ops::Range<usize>)> {
    tcp.write_all(request).await?;
    buf.clear();
    loop {
        if let Some(head) = parse_head(buf)? {
            match head.body {
                Body::Length(n) if buf.len() >= head.len + n => {
                    return Ok((head, head.len..head.len + n));
                }
                Body::Chunked => {
                    return Err(io::Error::other("HTTP: a chunked answer to a request"));
                }
                _ => {}
            }
        }
        buf.reserve(4096);
        if tcp.read_buf(buf).await? == 0 {
            return match parse_head(buf)? {
                Some(head) if head.body == Body::UntilClose => Ok((head, head.len..buf.len())),
                _ => Err(io::ErrorKind::UnexpectedEof.into()),
            };
        }
    }
}

/// One post on a connection of its own (`Connection: close`): a subscriber's join. A
/// browser's connection pool would keep it a while, then the server closes it (its header
/// read timeout): an idle subscriber holds its stream only.
pub async fn post_once(
    addr: SocketAddr,
    path: &str,
    secret: Option<&str>,
    body: &[u8],
) -> io::Result<()> {
    let mut tcp = connect(addr).await?;
    let mut request = Vec::with_capacity(256 + body.len());
    post_request(&mut request, &addr.to_string(), path, secret, body, true);
    let mut buf = Vec::new();
    let (head, _) = exchange(&mut tcp, &request, &mut buf).await?;
    posted(head.status, path)
}

/// A post's answer: 204 (the session is here) or 202 (sent on to its node).
fn posted(status: u16, path: &str) -> io::Result<()> {
    match status {
        202 | 204 => Ok(()),
        _ => Err(io::Error::other(format!("POST {path}: HTTP {status}"))),
    }
}

/// A publisher's posts, on a keep-alive connection of their own (the stream or the held
/// poll has the other one), one at a time: as the browser client posts, what was written
/// while a post was under way goes in the next one.
pub struct Poster {
    addr: SocketAddr,
    host: String,
    path: String,
    secret: Option<String>,
    tcp: Option<TcpStream>,
    used: Instant,
    request: Vec<u8>,
    response: Vec<u8>,
}

impl Poster {
    pub fn new(addr: SocketAddr, path: String, secret: Option<String>) -> Poster {
        Poster {
            addr,
            host: addr.to_string(),
            path,
            secret,
            tcp: None,
            used: Instant::now(),
            request: Vec::with_capacity(4096),
            response: Vec::with_capacity(512),
        }
    }

    /// Posts `lines` (frames, each ending in `\n`), at most [`MAX_FRAMES_PER_POST`] a post.
    pub async fn post(&mut self, mut lines: &[u8]) -> io::Result<()> {
        while !lines.is_empty() {
            let cut = after_nth_line(lines, MAX_FRAMES_PER_POST);
            self.post_one(&lines[..cut]).await?;
            lines = &lines[cut..];
        }
        Ok(())
    }

    async fn post_one(&mut self, body: &[u8]) -> io::Result<()> {
        if self.tcp.is_none() || self.used.elapsed() >= KEEP_IDLE {
            self.tcp = Some(connect(self.addr).await?);
        }
        let tcp = self.tcp.as_mut().expect("connected");
        self.request.clear();
        let secret = self.secret.as_deref();
        post_request(
            &mut self.request,
            &self.host,
            &self.path,
            secret,
            body,
            false,
        );
        let (head, _) = exchange(tcp, &self.request, &mut self.response).await?;
        self.used = Instant::now();
        if head.close {
            self.tcp = None;
        }
        posted(head.status, &self.path)
    }
}

/// Appends the header line that bears a session's secret, when there is one.
pub fn secret_header(out: &mut Vec<u8>, secret: Option<&str>) {
    if let Some(secret) = secret {
        out.extend_from_slice(b"Wtchat-Secret: ");
        out.extend_from_slice(secret.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// Where the `n`th line of `text` ends (past its `\n`), or its length.
fn after_nth_line(text: &[u8], n: usize) -> usize {
    let mut seen = 0;
    for (i, &b) in text.iter().enumerate() {
        if b == b'\n' {
            seen += 1;
            if seen == n {
                return i + 1;
            }
        }
    }
    text.len()
}

/// An event stream's body as it arrives: undoes the chunked coding into one buffer and hands
/// out each `data:` line. The server writes every frame as one event with one `data:` line
/// (after an `id:` line for messages), so a data line is a frame; `id:`, `retry:`, comments
/// (the keepalive `:`) and the blank lines between events are skipped.
#[derive(Debug)]
pub struct EventStream {
    chunked: bool,
    /// Data bytes of the current chunk still to come.
    chunk_left: usize,
    /// Bytes of the CRLF after a chunk's data still to come.
    crlf_left: usize,
    /// The last chunk's header came: the CRLF that ends the body (no trailers) follows.
    last: bool,
    /// The last chunk came: the stream is over.
    ended: bool,
    /// Decoded bytes not yet handed out: at most one partial line between calls.
    text: Vec<u8>,
    /// Bytes at the start of `text` known to hold no line end.
    scanned: usize,
}

impl EventStream {
    pub fn new(chunked: bool) -> EventStream {
        EventStream {
            chunked,
            chunk_left: 0,
            crlf_left: 0,
            last: false,
            ended: false,
            text: Vec::new(),
            scanned: 0,
        }
    }

    /// Whether the response ended (its last chunk came).
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Takes what it can of `raw`, the response body as read; returns the bytes it used
    /// (the rest is part of a chunk header: give it again with more).
    pub fn feed(&mut self, raw: &[u8]) -> io::Result<usize> {
        if !self.chunked {
            self.text.extend_from_slice(raw);
            return Ok(raw.len());
        }
        let mut at = 0;
        while at < raw.len() && !self.ended {
            let rest = &raw[at..];
            if self.crlf_left > 0 {
                let n = self.crlf_left.min(rest.len());
                if rest[..n] != b"\r\n"[2 - self.crlf_left..2 - self.crlf_left + n] {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "HTTP: no CRLF after a chunk",
                    ));
                }
                self.crlf_left -= n;
                at += n;
                self.ended = self.last && self.crlf_left == 0;
            } else if self.chunk_left > 0 {
                let n = self.chunk_left.min(rest.len());
                self.text.extend_from_slice(&rest[..n]);
                self.chunk_left -= n;
                if self.chunk_left == 0 {
                    self.crlf_left = 2;
                }
                at += n;
            } else {
                // A chunk header: the size in hex, maybe extensions, CRLF.
                let Some(eol) = account::find(rest, b"\r\n") else {
                    if rest.len() > 1024 {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "HTTP: chunk header over 1 KiB",
                        ));
                    }
                    break;
                };
                let size = std::str::from_utf8(&rest[..eol])
                    .ok()
                    .and_then(|h| usize::from_str_radix(h.split(';').next()?.trim(), 16).ok())
                    .ok_or_else(|| {
                        io::Error::new(io::ErrorKind::InvalidData, "HTTP: bad chunk size")
                    })?;
                at += eol + 2;
                if size == 0 {
                    self.last = true;
                    self.crlf_left = 2;
                } else {
                    self.chunk_left = size;
                }
            }
        }
        Ok(at)
    }

    /// Calls `frame` with the value of each complete `data:` line, in order.
    pub fn data_lines(&mut self, mut frame: impl FnMut(&[u8])) {
        let text = &self.text[..];
        let mut start = 0;
        let mut from = self.scanned;
        while let Some(at) = text[from..].iter().position(|&b| b == b'\n') {
            let end = from + at;
            let line = &text[start..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if let Some(value) = line.strip_prefix(b"data:") {
                frame(value.strip_prefix(b" ").unwrap_or(value));
            }
            start = end + 1;
            from = start;
        }
        self.scanned = text.len() - start;
        self.text.drain(..start);
    }
}

/// A poll answer's frames (`{"next":M,"frames":[F,F,…]}`), each handed to `frame` in
/// order; returns `next`, the `after` of the next poll. None for anything else.
pub fn poll_frames(body: &[u8], mut frame: impl FnMut(&[u8])) -> Option<u64> {
    const START: &[u8] = b"{\"type\":\"";
    let next = account::u64_after(body, b"\"next\":")?;
    let list = account::find(body, b"\"frames\":[")? + b"\"frames\":[".len();
    let end = body.len().checked_sub(2)?;
    if body.get(end..)? != b"]}" || list > end {
        return None;
    }
    let frames = &body[list..end];
    if frames.is_empty() {
        return Some(next);
    }
    if !frames.starts_with(START) {
        return None;
    }
    // Each frame ends where the next starts: `},{"type":"` (see the module's comment).
    let mut start = 0;
    loop {
        match account::find(&frames[start + START.len()..], START) {
            Some(at) => {
                let next_start = start + START.len() + at;
                if frames[next_start - 1] != b',' {
                    return None;
                }
                frame(&frames[start..next_start - 1]);
                start = next_start;
            }
            None => {
                frame(&frames[start..]);
                return Some(next);
            }
        }
    }
}

/// The string value of `key` in a small JSON object (a `session` frame), parsed properly:
/// once per client, not per frame.
pub fn json_str(json: &[u8], key: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(json).ok()?;
    value[key].as_str().map(str::to_string)
}

/// The path of `url` (`http://host:port/wtchat/sse` → `/wtchat/sse`); a path stays as it is.
pub fn path_of(url: &str) -> &str {
    match url.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |at| &rest[at..]),
        None => url,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_say_status_length_and_framing() {
        let head = parse_head(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Length: 12\r\n\r\n{}",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (head.status, head.body, head.close),
            (200, Body::Length(12), false)
        );
        assert_eq!(head.len, 71);
        let stream = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(
            parse_head(stream).unwrap().unwrap().body,
            Body::Chunked,
            "chunked"
        );
        let empty = parse_head(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((empty.body, empty.close), (Body::Length(0), true));
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-le").unwrap(), None);
        assert!(parse_head(b"SSH-2.0\r\n\r\n").is_err());
    }

    #[test]
    fn posts_are_cut_at_64_frames() {
        let lines = "{}\n".repeat(130);
        assert_eq!(after_nth_line(lines.as_bytes(), 64), 64 * 3);
        assert_eq!(after_nth_line(b"{}\n{}", 64), 5);
        let mut request = Vec::new();
        post_request(
            &mut request,
            "h:1",
            "/wtchat/sse/x",
            Some("s"),
            b"{}\n",
            false,
        );
        assert_eq!(
            request,
            b"POST /wtchat/sse/x HTTP/1.1\r\nHost: h:1\r\nContent-Type: text/plain\r\n\
              Content-Length: 3\r\nWtchat-Secret: s\r\n\r\n{}\n"
        );
    }

    /// An event stream as hyper sends it: one chunk per batch of events.
    fn chunked(parts: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for part in parts {
            out.extend_from_slice(format!("{:x}\r\n{part}\r\n", part.len()).as_bytes());
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    #[test]
    fn event_streams_yield_their_data_lines_however_they_are_cut() {
        let body = chunked(&[
            "retry: 1000\ndata: {\"type\":\"session\",\"post\":\"/wtchat/sse/1.x\"}\n\n",
            "id: eyJyIjp7fX0\ndata: {\"type\":\"joined\",\"seq\":0}\n\n:\n\n",
            "id: a\ndata: {\"type\":\"message\",\"seq\":1}\n\nid: b\ndata: {\"type\":\"mess",
            "age\",\"seq\":2}\n\n",
        ]);
        let expected = [
            "{\"type\":\"session\",\"post\":\"/wtchat/sse/1.x\"}",
            "{\"type\":\"joined\",\"seq\":0}",
            "{\"type\":\"message\",\"seq\":1}",
            "{\"type\":\"message\",\"seq\":2}",
        ];
        // Every way of cutting the body into two reads, and byte by byte.
        for cut in (0..body.len()).chain([usize::MAX]) {
            let reads: Vec<&[u8]> = if cut == usize::MAX {
                body.chunks(1).collect()
            } else {
                vec![&body[..cut], &body[cut..]]
            };
            let mut stream = EventStream::new(true);
            let mut pending = Vec::new();
            let mut got = Vec::new();
            for read in reads {
                pending.extend_from_slice(read);
                let used = stream.feed(&pending).unwrap();
                pending.drain(..used);
                stream.data_lines(|d| got.push(String::from_utf8(d.to_vec()).unwrap()));
            }
            assert_eq!(got, expected, "cut at {cut}");
            assert!(stream.ended() && pending.is_empty(), "cut at {cut}");
        }
        let mut broken = EventStream::new(true);
        assert!(
            broken.feed(b"3\r\nabcXY").is_err(),
            "no CRLF after the data"
        );
        let mut plain = EventStream::new(false);
        plain.feed(b"data: {}\n").unwrap();
        let mut got = 0;
        plain.data_lines(|d| {
            assert_eq!(d, b"{}");
            got += 1;
        });
        assert_eq!(got, 1);
    }

    #[test]
    fn poll_answers_are_cut_into_their_frames() {
        let body = br#"{"next":7,"frames":[{"type":"joined","room":"r","you":{"id":1,"name":"a"},"members":[{"id":1,"name":"a"}]},{"type":"message","text":"},{\"type\":\"x","seq":6},{"type":"ack","seq":7}]}"#;
        let mut frames = Vec::new();
        let next = poll_frames(body, |f| {
            frames.push(String::from_utf8(f.to_vec()).unwrap())
        });
        assert_eq!(next, Some(7));
        assert_eq!(
            frames,
            [
                r#"{"type":"joined","room":"r","you":{"id":1,"name":"a"},"members":[{"id":1,"name":"a"}]}"#,
                r#"{"type":"message","text":"},{\"type\":\"x","seq":6}"#,
                r#"{"type":"ack","seq":7}"#,
            ]
        );
        for f in &frames {
            serde_json::from_str::<serde_json::Value>(f).unwrap();
        }
        assert_eq!(
            poll_frames(br#"{"next":3,"frames":[]}"#, |_| panic!()),
            Some(3)
        );
        assert_eq!(poll_frames(b"no such session", |_| {}), None);
    }

    #[test]
    fn urls_give_their_paths() {
        assert_eq!(path_of("http://127.0.0.1:8080/wtchat/sse"), "/wtchat/sse");
        assert_eq!(path_of("/wtchat/poll/1.x"), "/wtchat/poll/1.x");
        assert_eq!(path_of("http://h"), "/");
    }
}
