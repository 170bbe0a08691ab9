//! A lossy network path inside one machine, at the IP level, for `lossy` (issue 27): a TUN
//! device the tool opens (Linux, root), whose packets it drops at random and delays before
//! handing them back to the kernel. It works on IP packets, so a TCP connection (WebSocket)
//! and a QUIC session (WebTransport) cross the very same impairment; the kernel here has no
//! netem, and a UDP relay (as in tests/common/relay.rs) cannot impair TCP.
//!
//! One network namespace holds both ends, so the path needs a trick to make the kernel send
//! a local client's packets through the device rather than over loopback. The device gets
//! `LOCAL` = 10.227.K.1/24; the client dials the virtual server address `SERVER` = .3,
//! which is routed into the device and is nobody's. The relay turns each packet it reads
//! into one the kernel delivers locally, with addresses that route the answer back into the
//! device:
//!
//! - to `SERVER` (the client's, from `LOCAL`): becomes `CLIENT` (.2) → `LOCAL`, which the
//!   server (listening on 0.0.0.0 or `LOCAL`) takes for a client at `CLIENT`;
//! - to `CLIENT` (the server's answer, from `LOCAL`): becomes `SERVER` → `LOCAL`, which the
//!   client takes for the server's answer.
//!
//! Ports are left as they are; the IPv4 header checksum and the TCP or UDP checksum (whose
//! pseudo-header holds the addresses) are computed again. Reverse-path filtering passes:
//! each rewritten source is routed back through the device the packet came in on.
//!
//! Each direction drops a fraction of its packets (an RNG of its own, seeded: the same seed
//! drops the same packets of the same sequence) and delays the rest by one constant delay,
//! so one FIFO and one writer thread that sleeps until each packet is due keep every packet
//! in order. The device is made without `TUNSETPERSIST`: it goes away when its descriptor
//! closes, after the run, after an error, and when the process is killed.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::rng::XorShift;

/// The device's name; the kernel puts a free number in place of `%d`.
const NAME_PATTERN: &str = "wtlossy%d";

/// The path's subnets are 10.227.K.0/24, K from the device's number: two runs at once get
/// two devices and two subnets. 10.227 is private and no default of Docker (172.17),
/// libvirt (192.168.122) or a home router; an address already on the machine in the chosen
/// subnet is refused rather than shadowed.
const SUBNET: [u8; 2] = [10, 227];

/// How often the reader and the writer look whether the path is closing.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// What the path does to the packets of each direction.
#[derive(Debug, Clone, Copy)]
pub struct Impairment {
    /// The fraction dropped, 0.0 to 1.0.
    pub loss: f64,
    /// The one-way delay of every packet that is not dropped.
    pub delay: Duration,
    /// The RNG's seed; the way back uses `seed + 1`.
    pub seed: u64,
}

/// The path's three addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    /// The device's own: the server's (local) address, and the client's source.
    pub local: Ipv4Addr,
    /// Where the server sees the client.
    pub client: Ipv4Addr,
    /// Where the client dials the server.
    pub server: Ipv4Addr,
}

impl Addresses {
    fn in_subnet(k: u8) -> Addresses {
        let [a, b] = SUBNET;
        Addresses {
            local: Ipv4Addr::new(a, b, k, 1),
            client: Ipv4Addr::new(a, b, k, 2),
            server: Ipv4Addr::new(a, b, k, 3),
        }
    }
}

/// Which way a packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ToServer,
    ToClient,
}

impl Direction {
    fn index(self) -> usize {
        match self {
            Direction::ToServer => 0,
            Direction::ToClient => 1,
        }
    }
}

const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;

/// Rewrites an IPv4 packet read from the device so that the kernel delivers it locally
/// (see the module's docs), with its checksums made anew; returns which way it goes. None,
/// and the packet unchanged, for anything else: not IPv4, not TCP or UDP, a fragment (its
/// transport checksum covers bytes it does not hold; TCP and QUIC set don't-fragment), to
/// an address the path does not know, or cut short.
pub fn rewrite(packet: &mut [u8], a: &Addresses) -> Option<Direction> {
    let header = usize::from(packet.first()? & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([*packet.get(2)?, *packet.get(3)?]));
    if packet[0] >> 4 != 4 || header < 20 || total < header || packet.len() < total {
        return None;
    }
    let packet = &mut packet[..total];
    // More fragments, or an offset: a fragment.
    if u16::from_be_bytes([packet[6], packet[7]]) & 0x3fff != 0 {
        return None;
    }
    let protocol = packet[9];
    let checksum_at = match protocol {
        PROTO_TCP => header + 16,
        PROTO_UDP => header + 6,
        _ => return None,
    };
    if total < checksum_at + 2 {
        return None;
    }
    let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
    let (direction, src) = if dst == a.server {
        (Direction::ToServer, a.client)
    } else if dst == a.client {
        (Direction::ToClient, a.server)
    } else {
        return None;
    };
    packet[12..16].copy_from_slice(&src.octets());
    packet[16..20].copy_from_slice(&a.local.octets());

    packet[10..12].fill(0);
    let sum = fold(sum16(0, &packet[..header]));
    packet[10..12].copy_from_slice(&sum.to_be_bytes());

    // UDP's zero: "no checksum", left so.
    let udp_unchecked = protocol == PROTO_UDP && packet[checksum_at..checksum_at + 2] == [0, 0];
    if !udp_unchecked {
        packet[checksum_at..checksum_at + 2].fill(0);
        let segment = (total - header) as u16;
        let mut pseudo = [0u8; 12];
        pseudo[..8].copy_from_slice(&packet[12..20]);
        pseudo[9] = protocol;
        pseudo[10..].copy_from_slice(&segment.to_be_bytes());
        let mut sum = fold(sum16(sum16(0, &pseudo), &packet[header..]));
        // A computed zero is sent as all ones in UDP (zero would say "none").
        if protocol == PROTO_UDP && sum == 0 {
            sum = 0xffff;
        }
        packet[checksum_at..checksum_at + 2].copy_from_slice(&sum.to_be_bytes());
    }
    Some(direction)
}

/// Adds `data`'s 16-bit big-endian words (an odd last byte padded with zero) to `sum`: the
/// Internet checksum's sum, before folding (RFC 1071).
fn sum16(mut sum: u64, data: &[u8]) -> u64 {
    let mut words = data.chunks_exact(2);
    for word in &mut words {
        sum += u64::from(u16::from_be_bytes([word[0], word[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// The checksum of a sum: its carries folded in, complemented.
fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// One direction's packets so far.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Counts {
    /// Handed back to the kernel, after their delay.
    pub forwarded: u64,
    /// Dropped on purpose.
    pub dropped: u64,
}

/// Both directions' packets so far.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Stats {
    pub to_server: Counts,
    pub to_client: Counts,
    /// Read from the device and not on the path (IPv6 router solicitations and the like):
    /// dropped, not counted above.
    pub ignored: u64,
}

#[derive(Default)]
struct Counters {
    forwarded: AtomicU64,
    dropped: AtomicU64,
}

/// What the reader and the writer share.
struct Shared {
    tun: File,
    stop: AtomicBool,
    /// Per direction ([`Direction::index`]).
    counters: [Counters; 2],
    ignored: AtomicU64,
}

/// A packet waiting for its time: when it is due, which way it goes, its bytes.
type Due = (Instant, Direction, Vec<u8>);

/// The open path; closing it (dropping it) stops its threads and removes the device.
pub struct LossyPath {
    name: String,
    addresses: Addresses,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl LossyPath {
    /// Makes the device, gives it its subnet, brings it up and starts relaying with
    /// `impairment` each way.
    pub fn open(impairment: Impairment) -> io::Result<LossyPath> {
        let (tun, name) = open_tun()?;
        let number: u32 = name
            .strip_prefix(NAME_PATTERN.trim_end_matches("%d"))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| io::Error::other(format!("unexpected device name {name}")))?;
        let addresses = Addresses::in_subnet((number % 256) as u8);
        let taken = ip(&["-4", "-o", "addr", "show"])?;
        let subnet = format!(
            " {}.{}.{}.",
            SUBNET[0],
            SUBNET[1],
            addresses.local.octets()[2]
        );
        if taken.contains(&subnet) {
            return Err(io::Error::other(format!(
                "an address in{subnet}0/24 is already on this machine: \
                 the lossy path would shadow it"
            )));
        }
        ip(&[
            "addr",
            "add",
            &format!("{}/24", addresses.local),
            "dev",
            &name,
        ])?;
        ip(&["link", "set", &name, "up"])?;
        let shared = Arc::new(Shared {
            tun,
            stop: AtomicBool::new(false),
            counters: Default::default(),
            ignored: AtomicU64::new(0),
        });
        // Made before its threads: if the second fails to start, dropping the path stops
        // the first (and removes the device).
        let mut path = LossyPath {
            name,
            addresses,
            shared,
            threads: Vec::new(),
        };
        let (queue, due) = mpsc::channel();
        let shared = path.shared.clone();
        path.threads.push(spawn("lossy-read", move || {
            read(&shared, addresses, impairment, queue)
        })?);
        let shared = path.shared.clone();
        path.threads
            .push(spawn("lossy-write", move || write(&shared, due))?);
        Ok(path)
    }

    /// The device's name (`wtlossy0`).
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addresses(&self) -> Addresses {
        self.addresses
    }

    /// The packets so far, per direction.
    pub fn stats(&self) -> Stats {
        let counts = |d: Direction| {
            let c = &self.shared.counters[d.index()];
            Counts {
                forwarded: c.forwarded.load(Relaxed),
                dropped: c.dropped.load(Relaxed),
            }
        };
        Stats {
            to_server: counts(Direction::ToServer),
            to_client: counts(Direction::ToClient),
            ignored: self.shared.ignored.load(Relaxed),
        }
    }
}

impl Drop for LossyPath {
    fn drop(&mut self) {
        self.shared.stop.store(true, Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        // The last reference to the descriptor goes with `shared`: the device with it.
    }
}

/// Opens `/dev/net/tun` as a new TUN device (IP packets, no packet-information header);
/// returns it and the name the kernel gave it.
fn open_tun() -> io::Result<(File, String)> {
    let hint = |e: io::Error| {
        io::Error::new(
            e.kind(),
            format!("/dev/net/tun: {e} (the lossy path needs Linux's TUN driver and root)"),
        )
    };
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(hint)?;
    // SAFETY: ifreq is plain data; all zeros is a valid value of it.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (to, &from) in request.ifr_name.iter_mut().zip(NAME_PATTERN.as_bytes()) {
        *to = from as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes an ifreq, which `request` is, for the call's length.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut request) } < 0 {
        return Err(hint(io::Error::last_os_error()));
    }
    let name: Vec<u8> = request
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Ok((tun, String::from_utf8_lossy(&name).into_owned()))
}

/// Runs `ip ARGS`; its output, or an error with what it said.
fn ip(args: &[&str]) -> io::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("ip {}: {e}", args.join(" "))))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name.into()).spawn(f)
}

/// Reads the device's packets until the path closes: rewrites each, then drops it or queues
/// it for its due time. Ends the writer by dropping `queue`.
fn read(shared: &Shared, addresses: Addresses, impairment: Impairment, queue: mpsc::Sender<Due>) {
    let mut rngs = [
        XorShift::new(impairment.seed),
        XorShift::new(impairment.seed.wrapping_add(1)),
    ];
    let mut buf = vec![0u8; 65_536];
    let mut poll = libc::pollfd {
        fd: shared.tun.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    while !shared.stop.load(Relaxed) {
        // SAFETY: one valid pollfd, for the call's length.
        let ready = unsafe { libc::poll(&mut poll, 1, STOP_CHECK.as_millis() as libc::c_int) };
        if ready <= 0 {
            continue;
        }
        let Ok(n) = (&shared.tun).read(&mut buf) else {
            continue;
        };
        let packet = &mut buf[..n];
        let Some(direction) = rewrite(packet, &addresses) else {
            shared.ignored.fetch_add(1, Relaxed);
            continue;
        };
        let counters = &shared.counters[direction.index()];
        if impairment.loss > 0.0 && rngs[direction.index()].next_f64() < impairment.loss {
            counters.dropped.fetch_add(1, Relaxed);
            continue;
        }
        let due = Instant::now() + impairment.delay;
        if queue.send((due, direction, packet.to_vec())).is_err() {
            return;
        }
    }
}

/// Hands each queued packet back to the kernel when it is due (the delay is constant, so
/// the queue is in due order), until the reader is gone and the queue empty.
fn write(shared: &Shared, due: mpsc::Receiver<Due>) {
    loop {
        let (at, direction, packet) = match due.recv_timeout(STOP_CHECK) {
            Ok(next) => next,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        // A failed write loses the packet, as a network would.
        if (&shared.tun).write(&packet).is_ok() {
            shared.counters[direction.index()]
                .forwarded
                .fetch_add(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The path of the packets below: 10.227.9.0/24.
    const PATH: Addresses = Addresses {
        local: Ipv4Addr::new(10, 227, 9, 1),
        client: Ipv4Addr::new(10, 227, 9, 2),
        server: Ipv4Addr::new(10, 227, 9, 3),
    };

    /// Packets the kernel wrote into a TUN device (10.227.9.1/24), and the same rewritten:
    /// the kernel took each rewritten one (a UDP datagram reached a socket on 0.0.0.0 from
    /// 10.227.9.2, its answer came back from 10.227.9.3, a TCP connection was accepted).
    const KNOWN: [(&str, Direction, &str); 4] = [
        // UDP "hello", 10.227.9.1:40000 → 10.227.9.3:4433.
        (
            "450000219d314000401175d10ae309010ae309039c401151000de6a668656c6c6f",
            Direction::ToServer,
            "450000219d314000401175d20ae309020ae309019c401151000de6a768656c6c6f",
        ),
        // Its answer "world!", 10.227.9.1:4433 → 10.227.9.2:40000.
        (
            "450000220727400040110bdc0ae309010ae3090211519c40000edc7a776f726c6421",
            Direction::ToClient,
            "450000220727400040110bdb0ae309030ae3090111519c40000edc79776f726c6421",
        ),
        // A TCP SYN with options, to 10.227.9.3:8080.
        (
            "4500003cbc7540004006567d0ae309010ae309039c411f90a20163f700000000a002faf037ce00\
             00020405b40402080a13661844000000000103030a",
            Direction::ToServer,
            "4500003cbc7540004006567e0ae309020ae309019c411f90a20163f700000000a002faf037cf00\
             00020405b40402080a13661844000000000103030a",
        ),
        // Its SYN-ACK, to 10.227.9.2.
        (
            "4500003c00004000400612f40ae309010ae309021f909c41cd267a7ea20163f8a012fe88293600\
             00020405b40402080a05fbbd4f136618440103030a",
            Direction::ToClient,
            "4500003c00004000400612f30ae309030ae309011f909c41cd267a7ea20163f8a012fe88293500\
             00020405b40402080a05fbbd4f136618440103030a",
        ),
    ];

    #[test]
    fn known_packets_are_rewritten_as_the_kernel_took_them() {
        for (before, direction, after) in KNOWN {
            let mut packet = hex(before);
            assert_eq!(rewrite(&mut packet, &PATH), Some(direction), "{before}");
            assert_eq!(packet, hex(after), "{before}");
        }
    }

    #[test]
    fn rewritten_checksums_verify() {
        for (before, _, _) in KNOWN {
            let mut packet = hex(before);
            rewrite(&mut packet, &PATH).unwrap();
            // A header with its checksum sums to all ones.
            assert_eq!(fold(sum16(0, &packet[..20])), 0);
            let mut pseudo = packet[12..20].to_vec();
            pseudo.extend_from_slice(&[0, packet[9], 0, (packet.len() - 20) as u8]);
            assert_eq!(fold(sum16(sum16(0, &pseudo), &packet[20..])), 0);
        }
    }

    #[test]
    fn packets_off_the_path_are_left_alone() {
        let udp = hex(KNOWN[0].0);
        // To another address.
        let mut other = udp.clone();
        other[19] = 9;
        let kept = other.clone();
        assert_eq!(rewrite(&mut other, &PATH), None);
        assert_eq!(other, kept);
        // A fragment.
        let mut fragment = udp.clone();
        fragment[6] |= 0x20;
        assert_eq!(rewrite(&mut fragment, &PATH), None);
        // IPv6, cut short, not TCP or UDP (ICMP).
        let mut v6 = udp.clone();
        v6[0] = 0x60;
        assert_eq!(rewrite(&mut v6, &PATH), None);
        assert_eq!(rewrite(&mut udp[..30].to_vec(), &PATH), None);
        let mut icmp = udp.clone();
        icmp[9] = 1;
        assert_eq!(rewrite(&mut icmp, &PATH), None);
        assert_eq!(rewrite(&mut [], &PATH), None);
    }

    #[test]
    fn a_udp_datagram_without_checksum_keeps_none() {
        let mut packet = hex(KNOWN[0].0);
        packet[26..28].fill(0);
        assert_eq!(rewrite(&mut packet, &PATH), Some(Direction::ToServer));
        assert_eq!(&packet[26..28], &[0, 0]);
        assert_eq!(fold(sum16(0, &packet[..20])), 0);
    }

    #[test]
    fn odd_lengths_pad_the_last_byte() {
        assert_eq!(sum16(0, &[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
        assert_eq!(fold(0x1_fffe), !0xffffu16);
    }

    #[test]
    fn loss_is_about_the_fraction_asked_and_reproducible() {
        let draws = |seed| {
            let mut rng = XorShift::new(seed);
            (0..10_000).filter(|_| rng.next_f64() < 0.02).count()
        };
        let dropped = draws(27);
        assert!((150..=250).contains(&dropped), "{dropped}");
        assert_eq!(draws(27), dropped);
    }
}
