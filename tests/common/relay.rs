//! A lossy network for WebTransport tests, in user space (the kernel here has no netem): a
//! UDP relay between one QUIC client and the server's WebTransport socket. The client
//! dials the relay's [`addr`](Relay::addr); the relay sends what it gets on to the server
//! from a socket of its own, and the server's answers back to the client. Per direction
//! it drops a fraction of the datagrams (a seeded RNG: the same seed drops the same
//! datagrams of the same sequence) and delays the rest by a one-way delay, plus a random
//! jitter if one is set; without jitter each direction keeps its order. [`rebind`]
//! (Relay::rebind) moves the relay's side towards the server to a fresh source port, and
//! [`rebind_from`](Relay::rebind_from) to another loopback address: the server then sees
//! the client's packets come from a new address, as after a NAT rebinding or a phone
//! moving from Wi-Fi to cellular; the old socket is closed, so whatever the server still
//! sends to the old address is lost, as it would be.
//!
//! Everything binds port 0 on loopback: relays of tests running in parallel never collide.

#![allow(dead_code)] // each test file uses what it needs

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

#[path = "../../bench/src/rng.rs"]
mod rng;

use rng::XorShift;

/// What one direction of the path does to the datagrams crossing it.
#[derive(Debug, Clone, Copy)]
pub struct Link {
    /// The fraction dropped, 0.0 to 1.0.
    pub loss: f64,
    /// The one-way delay every datagram that is not dropped gets.
    pub delay: Duration,
    /// A random extra delay, uniform in `0..jitter`, per datagram: with one, datagrams may
    /// overtake each other.
    pub jitter: Duration,
    /// The RNG's seed (zero is taken as one).
    pub seed: u64,
}

impl Link {
    /// A perfect link: nothing lost, no delay.
    pub const PERFECT: Link = Link {
        loss: 0.0,
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
        seed: 1,
    };

    /// `loss` dropped, `delay` one way, no jitter, seeded with `seed`.
    pub fn lossy(loss: f64, delay: Duration, seed: u64) -> Link {
        Link {
            loss,
            delay,
            jitter: Duration::ZERO,
            seed,
        }
    }
}

/// The datagrams of one direction so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Sent on (after their delay).
    pub forwarded: u64,
    /// Dropped on purpose.
    pub dropped: u64,
}

/// The datagrams of both directions so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// From the client to the server.
    pub to_server: Counts,
    /// From the server to the client.
    pub to_client: Counts,
}

#[derive(Default)]
struct Counters {
    forwarded: AtomicU64,
    dropped: AtomicU64,
}

impl Counters {
    fn get(&self) -> Counts {
        Counts {
            forwarded: self.forwarded.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}

/// One direction's drop-and-delay decisions.
struct Shaper {
    link: Link,
    rng: XorShift,
}

impl Shaper {
    fn new(link: Link) -> Shaper {
        Shaper {
            rng: XorShift::new(link.seed),
            link,
        }
    }

    /// When a datagram that came `now` goes on; None to drop it.
    fn due(&mut self, now: Instant) -> Option<Instant> {
        if self.link.loss > 0.0 && self.rng.next_f64() < self.link.loss {
            return None;
        }
        let jitter = self.link.jitter.mul_f64(self.rng.next_f64());
        Some(now + self.link.delay + jitter)
    }
}

/// A relay between one QUIC client and a server; its tasks stop when it is dropped.
pub struct Relay {
    addr: SocketAddr,
    server: SocketAddr,
    /// The socket the relay uses towards the server: a new one on each rebinding.
    upstream: watch::Sender<Binding>,
    to_server: Arc<Counters>,
    to_client: Arc<Counters>,
    /// Datagrams received from the server on each upstream socket in turn.
    per_binding: Arc<Mutex<Vec<u64>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Relay {
    /// A relay in front of `server` (a loopback UDP address; an unspecified address such as
    /// the server's `[::]:port` is taken as 127.0.0.1), `to_server` shaping the client's
    /// datagrams, `to_client` the server's.
    pub async fn start(server: SocketAddr, to_server: Link, to_client: Link) -> Relay {
        let server = if server.ip().is_unspecified() {
            SocketAddr::new([127, 0, 0, 1].into(), server.port())
        } else {
            server
        };
        let downstream = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = downstream.local_addr().unwrap();
        let upstream = Arc::new(UdpSocket::bind(("127.0.0.1", 0)).await.unwrap());
        let (upstream, upstream_now) = watch::channel(Binding {
            index: 0,
            socket: upstream,
        });
        let per_binding = Arc::new(Mutex::new(vec![0]));
        let counters = (Arc::new(Counters::default()), Arc::new(Counters::default()));
        // The client's address, learned from its first datagram.
        let client = Arc::new(Mutex::new(None::<SocketAddr>));

        let (c2s_queue, c2s_due) = mpsc::unbounded_channel();
        let (s2c_queue, s2c_due) = mpsc::unbounded_channel();
        let tasks = vec![
            // Client → relay: shaped, then sent to the server from the current upstream socket.
            tokio::spawn(read_client(
                downstream.clone(),
                client.clone(),
                Shaper::new(to_server),
                counters.0.clone(),
                c2s_queue,
            )),
            tokio::spawn(deliver(c2s_due, counters.0.clone(), {
                let upstream = upstream_now.clone();
                move || Some((upstream.borrow().socket.clone(), server))
            })),
            // Server → relay (on whichever socket is current): shaped, then to the client.
            tokio::spawn(read_server(
                upstream_now,
                per_binding.clone(),
                Shaper::new(to_client),
                counters.1.clone(),
                s2c_queue,
            )),
            tokio::spawn(deliver(s2c_due, counters.1.clone(), {
                let downstream = downstream.clone();
                move || Some((downstream.clone(), (*client.lock().unwrap())?))
            })),
        ];
        Relay {
            addr,
            server,
            upstream,
            to_server: counters.0,
            to_client: counters.1,
            per_binding,
            tasks,
        }
    }

    /// A relay in front of `server` that shapes both directions alike (each with its own
    /// RNG, seeded `link.seed` and `link.seed + 1`).
    pub async fn symmetric(server: SocketAddr, link: Link) -> Relay {
        let back = Link {
            seed: link.seed.wrapping_add(1),
            ..link
        };
        Relay::start(server, link, back).await
    }

    /// Where the client sends: the relay's own address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server it relays to.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// The address the server sees the client's packets come from now.
    pub fn upstream_addr(&self) -> SocketAddr {
        self.upstream.borrow().socket.local_addr().unwrap()
    }

    /// Moves the relay's side towards the server to a fresh port on the same address (a NAT
    /// rebinding); returns the new address the server will see. The old socket is closed:
    /// what the server still sends there is lost.
    pub async fn rebind(&self) -> SocketAddr {
        let ip = self.upstream_addr().ip();
        self.rebind_from(ip).await
    }

    /// Moves the relay's side towards the server to a fresh port on `ip` (a loopback address
    /// such as 127.0.0.2: a phone changing networks); returns the new address.
    pub async fn rebind_from(&self, ip: IpAddr) -> SocketAddr {
        let old = self.upstream_addr();
        let socket = UdpSocket::bind((ip, 0)).await.unwrap();
        let new = socket.local_addr().unwrap();
        assert_ne!(old, new, "a rebinding gets a fresh address");
        let index = {
            let mut per_binding = self.per_binding.lock().unwrap();
            per_binding.push(0);
            per_binding.len() - 1
        };
        self.upstream.send_replace(Binding {
            index,
            socket: Arc::new(socket),
        });
        new
    }

    /// How many times it was rebound.
    pub fn rebinds(&self) -> usize {
        self.per_binding.lock().unwrap().len() - 1
    }

    /// The datagrams received from the server on each of the relay's upstream sockets, the
    /// first one first: after a rebinding, the server answering on the new one.
    pub fn server_datagrams_per_binding(&self) -> Vec<u64> {
        self.per_binding.lock().unwrap().clone()
    }

    /// The datagrams so far, per direction.
    pub fn stats(&self) -> Stats {
        Stats {
            to_server: self.to_server.get(),
            to_client: self.to_client.get(),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The relay's socket towards the server, and its place among those it had.
#[derive(Clone)]
struct Binding {
    index: usize,
    socket: Arc<UdpSocket>,
}

/// A datagram waiting for its time: (due, arrival order, bytes).
type Due = (Instant, u64, Vec<u8>);

/// The largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;

/// Reads the client's datagrams, remembering where it sends from.
async fn read_client(
    socket: Arc<UdpSocket>,
    client: Arc<Mutex<Option<SocketAddr>>>,
    mut shaper: Shaper,
    counters: Arc<Counters>,
    queue: mpsc::UnboundedSender<Due>,
) {
    let mut buf = vec![0; MAX_DATAGRAM];
    let mut order = 0;
    loop {
        // An error here is an ICMP report about an earlier send: not fatal.
        let Ok((len, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        *client.lock().unwrap() = Some(from);
        if !pass(&mut shaper, &counters, &queue, &mut order, &buf[..len]) {
            return;
        }
    }
}

/// Drops `datagram` (counted) or queues it for its due time, as `shaper` says; false once
/// nobody delivers any more.
fn pass(
    shaper: &mut Shaper,
    counters: &Counters,
    queue: &mpsc::UnboundedSender<Due>,
    order: &mut u64,
    datagram: &[u8],
) -> bool {
    match shaper.due(Instant::now()) {
        None => {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            true
        }
        Some(due) => {
            *order += 1;
            queue.send((due, *order, datagram.to_vec())).is_ok()
        }
    }
}

/// Reads the server's datagrams on the current upstream socket, moving to the new one on a
/// rebinding (the old one is then dropped: closed once its sends are done).
async fn read_server(
    mut upstream: watch::Receiver<Binding>,
    per_binding: Arc<Mutex<Vec<u64>>>,
    mut shaper: Shaper,
    counters: Arc<Counters>,
    queue: mpsc::UnboundedSender<Due>,
) {
    let mut buf = vec![0; MAX_DATAGRAM];
    let mut order = 0;
    let mut binding = upstream.borrow_and_update().clone();
    loop {
        tokio::select! {
            changed = upstream.changed() => {
                if changed.is_err() {
                    return;
                }
                binding = upstream.borrow_and_update().clone();
            }
            read = binding.socket.recv_from(&mut buf) => {
                let Ok((len, _)) = read else { continue };
                per_binding.lock().unwrap()[binding.index] += 1;
                if !pass(&mut shaper, &counters, &queue, &mut order, &buf[..len]) {
                    return;
                }
            }
        }
    }
}

/// Sends each queued datagram when it is due, in order of due time (then of arrival), on
/// the socket and to the address `route` gives at that moment (none yet: dropped).
async fn deliver(
    mut queue: mpsc::UnboundedReceiver<Due>,
    counters: Arc<Counters>,
    route: impl Fn() -> Option<(Arc<UdpSocket>, SocketAddr)>,
) {
    let mut waiting: BinaryHeap<Reverse<Due>> = BinaryHeap::new();
    loop {
        let next = waiting.peek().map(|Reverse((due, _, _))| *due);
        tokio::select! {
            biased;
            () = async { tokio::time::sleep_until(next.unwrap()).await }, if next.is_some() => {
                let Reverse((_, _, datagram)) = waiting.pop().unwrap();
                if let Some((socket, to)) = route() {
                    // A send can fail (a full buffer, an ICMP report): the datagram is lost,
                    // as on a network.
                    let _ = socket.send_to(&datagram, to).await;
                    counters.forwarded.fetch_add(1, Ordering::Relaxed);
                }
            }
            queued = queue.recv() => match queued {
                Some(datagram) => waiting.push(Reverse(datagram)),
                None => return,
            },
        }
    }
}
