//! Deep history and the clients that read it, for `fanout`: `--prefill` fills the room
//! before anyone joins, and `--resumers` rejoin it in a loop with a `since` far behind the
//! head, so that each of their joins reads older messages from the engine while the
//! members go on receiving. The members' latency with and without them says whether a
//! resume that reads the store holds the room up (issue 22: a slow store must not stall a
//! room).
//!
//! A resumer is not a member: it is left out of every delivery figure, and its frames go
//! through [`Link`], a plain reader of whole frames, not the members' hot path. Each resume
//! is checked: its replay must be exactly the messages after its `since`, in order.

use std::io;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::account::{self, Kind};
use crate::client::{self, ReadBuf, Run, Target, Transport};
use crate::{ws, wt};

/// One connection that hands out whole frames (WebSocket text frames or WebTransport
/// lines) one at a time. Not for the members' hot path: the resumers' and the prefill's
/// frames are few, and each is looked at.
pub struct Link {
    wire: Wire,
    buf: ReadBuf,
    /// WebSocket: the size of a frame only partly read, once its header says it.
    need: Option<usize>,
    /// WebTransport: unconsumed bytes already known to hold no line end.
    scanned: usize,
}

enum Wire {
    Ws(TcpStream),
    /// Boxed: a session (endpoint, connection, streams) is ten times a socket's size.
    Wt(Box<wt::Session>),
}

impl Link {
    /// Connects to `target` over `transport` (WebSocket or WebTransport).
    pub async fn open(
        target: &Target,
        transport: Transport,
        udp_buffer: usize,
        read_buffer: usize,
    ) -> io::Result<Link> {
        let wire = match transport {
            Transport::Ws => Wire::Ws(ws::connect(target.http, &target.ws_url).await?),
            Transport::Wt => Wire::Wt(Box::new(
                wt::connect(&target.wt_url, &target.wt_hashes, udp_buffer).await?,
            )),
            Transport::Sse | Transport::Poll => {
                return Err(io::Error::other(
                    "resumers and the prefill speak WebSocket or WebTransport",
                ));
            }
        };
        Ok(Link {
            wire,
            buf: ReadBuf::new(read_buffer),
            need: None,
            scanned: 0,
        })
    }

    /// Sends frames: `frames` holds JSON objects, one per line, each ending in `\n`.
    pub async fn send(&mut self, frames: &[u8]) -> io::Result<()> {
        match &mut self.wire {
            Wire::Ws(tcp) => {
                let mut out = Vec::with_capacity(frames.len() + 16 * 8);
                for json in frames.split(|&b| b == b'\n').filter(|f| !f.is_empty()) {
                    ws::encode_frame(&mut out, ws::OP_TEXT, json);
                }
                tcp.write_all(&out).await
            }
            Wire::Wt(session) => session
                .send
                .write_all(frames)
                .await
                .map_err(io::Error::other),
        }
    }

    /// Hands each frame to `f` until it returns true; frames read after that one stay for
    /// the next call.
    pub async fn read_until(&mut self, mut f: impl FnMut(&[u8]) -> bool) -> io::Result<()> {
        loop {
            while let Some((start, end, total)) = self.next_frame()? {
                let done = f(&self.buf.data()[start..end]);
                self.buf.consume(total);
                if done {
                    return Ok(());
                }
            }
            let space = self.buf.space(self.need);
            let n = match &mut self.wire {
                Wire::Ws(tcp) => tcp.read(space).await?,
                Wire::Wt(session) => session
                    .recv
                    .read(space)
                    .await
                    .map_err(io::Error::other)?
                    .unwrap_or(0),
            };
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.end += n;
        }
    }

    /// Where the next whole frame's payload is in the buffer, and how many bytes it takes
    /// with its framing; None until one has been read whole.
    fn next_frame(&mut self) -> io::Result<Option<(usize, usize, usize)>> {
        match self.wire {
            Wire::Ws(_) => loop {
                match ws::parse_frame(self.buf.data()) {
                    Ok(frame) if frame.opcode == ws::OP_TEXT && frame.fin => {
                        self.need = None;
                        return Ok(Some((frame.payload.0, frame.payload.1, frame.total)));
                    }
                    Ok(frame) if frame.opcode == ws::OP_CLOSE => {
                        let payload = &self.buf.data()[frame.payload.0..frame.payload.1];
                        let code = payload
                            .get(..2)
                            .map_or(0, |c| u16::from_be_bytes([c[0], c[1]]));
                        return Err(io::Error::other(format!("closed by server ({code})")));
                    }
                    // The server fragments nothing and sends no pings: nothing else to read.
                    Ok(frame) => self.buf.consume(frame.total),
                    Err(ws::Incomplete::More { need }) => {
                        self.need = need;
                        return Ok(None);
                    }
                    Err(ws::Incomplete::Masked) => {
                        return Err(io::Error::other("masked frame from the server"));
                    }
                }
            },
            Wire::Wt(_) => {
                Ok(client::next_line(self.buf.data(), &mut self.scanned)
                    .map(|pos| (0, pos, pos + 1)))
            }
        }
    }
}

/// Appends a `join` of `room` as `name` (resuming after `since` under `epoch`, if given).
pub fn join_frame(out: &mut Vec<u8>, room: &str, name: &str, resume: Option<(u64, u64)>) {
    use std::io::Write;
    let _ = write!(out, r#"{{"type":"join","room":"{room}","name":"{name}""#);
    if let Some((since, epoch)) = resume {
        let _ = write!(out, r#","since":{since},"epoch":{epoch}"#);
    }
    out.extend_from_slice(b"}\n");
}

/// What a `joined` frame says about the room and the replay that follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Joined {
    epoch: u64,
    /// The room's head: the last replayed message's number.
    seq: u64,
    gap: bool,
    /// Frames of history that follow.
    replay: u64,
}

impl Joined {
    fn parse(frame: &[u8]) -> Option<Joined> {
        Some(Joined {
            epoch: account::u64_after(frame, b"\"epoch\":")?,
            seq: account::u64_after(frame, account::SEQ_KEY)?,
            gap: account::find(frame, b"\"gap\":true").is_some(),
            replay: account::u64_after(frame, b"\"replay\":")?,
        })
    }
}

/// Reads a `joined` and the replay after it; the replay's sequence numbers go to `seen`.
async fn read_join(link: &mut Link, seen: &mut Vec<u64>) -> io::Result<Joined> {
    let mut joined = None;
    let mut refused = None;
    link.read_until(|frame| match account::kind(frame) {
        Kind::Joined => {
            joined = Joined::parse(frame);
            true
        }
        Kind::Error | Kind::Bye => {
            refused = Some(String::from_utf8_lossy(frame).into_owned());
            true
        }
        _ => false,
    })
    .await?;
    if let Some(refused) = refused {
        return Err(io::Error::other(refused));
    }
    let joined = joined.ok_or_else(|| io::Error::other("a joined frame without its figures"))?;
    seen.clear();
    if joined.replay > 0 {
        // The replay is the next `replay` frames: the room queues them with the `joined`.
        link.read_until(|frame| {
            // A frame that is not a message has no place in the replay: it counts as out of
            // order (0 is below every number).
            seen.push(account::u64_after(frame, account::SEQ_KEY).unwrap_or(0));
            seen.len() as u64 == joined.replay
        })
        .await?;
    }
    Ok(joined)
}

/// How a replay differs from the messages `from..=to`, in order: (missing, duplicated or
/// out of order).
fn check_replay(seen: &[u64], from: u64, to: u64) -> (u64, u64) {
    let (mut missing, mut duplicated) = (0, 0);
    let mut next = from;
    for &seq in seen {
        if seq < next {
            duplicated += 1;
        } else {
            missing += seq - next;
            next = seq + 1;
        }
    }
    missing += (to + 1).saturating_sub(next);
    (missing, duplicated)
}

/// Publishes `count` messages of about `pad` bytes into the room before anyone joins, over
/// a few WebSocket connections (the prefill is setup, not measured, and every wtchat serves
/// WebSocket), each with sends in flight, as fast as acknowledgements come; spread over the
/// nodes.
pub async fn prefill(
    targets: &[Target],
    room: &str,
    count: u64,
    pad: usize,
    read_buffer: usize,
) -> Result<(), String> {
    const PUBLISHERS: u64 = 4;
    const WINDOW: u64 = 32;
    let publishers = PUBLISHERS.min(count.max(1));
    let tasks: Vec<_> = (0..publishers)
        .map(|k| {
            let target = targets[k as usize % targets.len()].clone();
            let room = room.to_string();
            // Publisher k sends its share: the first ones one more when it does not divide.
            let share = count / publishers + u64::from(k < count % publishers);
            tokio::spawn(async move {
                let fail = |e: io::Error| format!("prefill (node {}): {e}", target.http);
                let mut link = Link::open(&target, Transport::Ws, 0, read_buffer)
                    .await
                    .map_err(fail)?;
                let mut out = Vec::new();
                join_frame(&mut out, &room, &format!("prefill{k}"), None);
                link.send(&out).await.map_err(fail)?;
                read_join(&mut link, &mut Vec::new()).await.map_err(fail)?;
                let (mut sent, mut acked) = (0u64, 0u64);
                while acked < share {
                    out.clear();
                    while sent < share && sent - acked < WINDOW {
                        use std::io::Write;
                        let _ = write!(out, r#"{{"type":"send","room":"{room}","text":"prefill"#);
                        out.resize(out.len() + pad, b'x');
                        let _ = writeln!(out, r#"","id":"f{k}-{sent}"}}"#);
                        sent += 1;
                    }
                    if !out.is_empty() {
                        link.send(&out).await.map_err(fail)?;
                    }
                    let mut refused = None;
                    link.read_until(|frame| match account::kind(frame) {
                        Kind::Ack => {
                            acked += 1;
                            true
                        }
                        Kind::Error | Kind::Bye => {
                            refused = Some(String::from_utf8_lossy(frame).into_owned());
                            true
                        }
                        _ => false,
                    })
                    .await
                    .map_err(fail)?;
                    if let Some(refused) = refused {
                        return Err(format!("prefill: the server refused a send: {refused}"));
                    }
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// What the resumers did, shared by their tasks.
#[derive(Debug)]
pub struct Resumes {
    /// From sending the `join` to the last replayed frame, for resumes whose join was sent
    /// in the measured window, ns.
    took: Mutex<Histogram<u64>>,
    /// Of those: frames replayed, resumes the server answered with `gap`, and the replays'
    /// messages missing or repeated (against the messages after `since`, or the newest
    /// ones after a gap).
    replayed: AtomicU64,
    gaps: AtomicU64,
    missing: AtomicU64,
    duplicated: AtomicU64,
    /// Resumes that failed (connect, refused, connection lost), at any time; the first
    /// reason.
    failures: AtomicU64,
    first_failure: Mutex<Option<String>>,
}

/// The resumers' figures, in the fan-out's JSON line.
#[derive(Debug, Serialize)]
pub struct ResumeReport {
    pub resumers: usize,
    /// How far behind the head each resume starts (`since` = head − this).
    pub resume_back: u64,
    /// Resumes whose join was sent in the measured window (and that completed).
    pub resumes: u64,
    /// From sending the `join` to the last replayed frame, ms.
    pub resume_ms: crate::Percentiles,
    /// Frames each of those replayed, on average.
    pub resume_replay_mean: f64,
    /// Of those: answered with `gap: true` (they replayed the newest `max_replay`), and
    /// the messages their replays missed or repeated.
    pub resume_gaps: u64,
    pub resume_missing: u64,
    pub resume_duplicated: u64,
    /// Resumes that failed, over the whole run, and why the first one did.
    pub resume_failures: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume_failure: Option<String>,
}

impl Resumes {
    /// Spawns `count` resumers, resumer `i` on the node client `first + i` would use, each
    /// looping until the run stops: connect, join, read the replay, disconnect. The first
    /// join of each is a plain one (for the room's epoch); every later one resumes from
    /// `back` messages behind the head.
    pub fn spawn(
        run: &Arc<Run>,
        count: usize,
        first: usize,
        back: u64,
        transport: impl Fn(usize) -> Transport,
    ) -> (Arc<Resumes>, Vec<tokio::task::JoinHandle<()>>) {
        let resumes = Arc::new(Resumes {
            took: Mutex::new(client::new_histogram()),
            replayed: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            missing: AtomicU64::new(0),
            duplicated: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            first_failure: Mutex::new(None),
        });
        let tasks = (0..count)
            .map(|i| {
                let (run, resumes) = (run.clone(), resumes.clone());
                let transport = transport(first + i);
                tokio::spawn(async move { resumes.resumer(&run, first + i, back, transport).await })
            })
            .collect();
        (resumes, tasks)
    }

    async fn resumer(&self, run: &Run, idx: usize, back: u64, transport: Transport) {
        let target = run.target(idx);
        let name = format!("r{idx}");
        let mut epoch = None;
        // The head this resumer last saw in a `joined` (the publishers' acks may lag it).
        let mut head = 0;
        let mut out = Vec::new();
        let mut seen = Vec::new();
        while run.phase() < client::PHASE_STOP {
            let mut link = match Link::open(
                target,
                transport,
                run.plan.udp_buffer,
                run.plan.read_buffer,
            )
            .await
            {
                Ok(link) => link,
                Err(e) => {
                    self.failed(e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let since = epoch.map(|epoch| {
                let head = head.max(run.acked_head.load(Relaxed));
                (head.saturating_sub(back), epoch)
            });
            out.clear();
            join_frame(&mut out, &run.plan.room, &name, since);
            let sent = run.now_ns();
            let joined = match link.send(&out).await {
                Ok(()) => read_join(&mut link, &mut seen).await,
                Err(e) => Err(e),
            };
            let done = run.now_ns();
            // Gone: the server sees the connection end, and the member leave.
            drop(link);
            let joined = match joined {
                Ok(joined) => joined,
                Err(e) => {
                    self.failed(e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            epoch = Some(joined.epoch);
            head = head.max(joined.seq);
            let Some((since, _)) = since else {
                continue;
            };
            if sent < run.measure_from.load(Relaxed) || sent >= run.measure_to.load(Relaxed) {
                continue;
            }
            // The messages after `since`; after a gap, the newest `replay` of them.
            let from = if joined.gap {
                (joined.seq + 1).saturating_sub(joined.replay)
            } else {
                since + 1
            };
            let (missing, duplicated) = check_replay(&seen, from, joined.seq);
            self.took
                .lock()
                .unwrap()
                .saturating_record(done.saturating_sub(sent).max(1_000));
            self.replayed.fetch_add(seen.len() as u64, Relaxed);
            self.gaps.fetch_add(u64::from(joined.gap), Relaxed);
            self.missing.fetch_add(missing, Relaxed);
            self.duplicated.fetch_add(duplicated, Relaxed);
        }
    }

    fn failed(&self, e: io::Error) {
        self.failures.fetch_add(1, Relaxed);
        self.first_failure
            .lock()
            .unwrap()
            .get_or_insert_with(|| e.to_string());
    }

    pub fn report(&self, resumers: usize, back: u64) -> ResumeReport {
        let took = self.took.lock().unwrap();
        let resumes = took.len();
        ResumeReport {
            resumers,
            resume_back: back,
            resumes,
            resume_ms: crate::Percentiles::of_ms(&took),
            resume_replay_mean: (self.replayed.load(Relaxed) as f64 / resumes.max(1) as f64 * 10.0)
                .round()
                / 10.0,
            resume_gaps: self.gaps.load(Relaxed),
            resume_missing: self.missing.load(Relaxed),
            resume_duplicated: self.duplicated.load(Relaxed),
            resume_failures: self.failures.load(Relaxed),
            resume_failure: self.first_failure.lock().unwrap().clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_joined_frame_gives_its_figures() {
        let frame = br#"{"type":"joined","room":"r","epoch":1764116958123,"seq":2041,"you":{"id":7,"name":"r1","sender":"Xy3"},"members":[],"count":1001,"gap":false,"replay":500}"#;
        assert_eq!(
            Joined::parse(frame),
            Some(Joined {
                epoch: 1764116958123,
                seq: 2041,
                gap: false,
                replay: 500
            })
        );
        let gap = br#"{"type":"joined","room":"r","epoch":1,"seq":9,"gap":true,"replay":0}"#;
        assert!(Joined::parse(gap).unwrap().gap);
    }

    #[test]
    fn a_replay_is_checked_against_the_messages_after_since() {
        assert_eq!(check_replay(&[5, 6, 7], 5, 7), (0, 0));
        assert_eq!(check_replay(&[], 8, 7), (0, 0));
        // One skipped, one repeated, the last two never came.
        assert_eq!(check_replay(&[5, 7, 7, 8], 5, 10), (3, 1));
        // Out of order: 6 after 7 was already passed over.
        assert_eq!(check_replay(&[5, 7, 6], 5, 7), (1, 1));
        // A frame that was no message (0) among them: out of place.
        assert_eq!(check_replay(&[5, 0, 6], 5, 6), (0, 1));
    }

    #[test]
    fn join_frames_resume_when_told_to() {
        let mut out = Vec::new();
        join_frame(&mut out, "bench-1", "r3", None);
        join_frame(&mut out, "bench-1", "r3", Some((1500, 42)));
        let lines: Vec<serde_json::Value> = out
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines[0]["since"], serde_json::Value::Null);
        assert_eq!(
            (&lines[1]["since"], &lines[1]["epoch"]),
            (&1500.into(), &42.into())
        );
    }
}
