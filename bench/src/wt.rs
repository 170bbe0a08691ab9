//! The WebTransport side of the load tool: one session per simulated client, each on its
//! own UDP socket (its own wtransport `Endpoint`).
//!
//! Why one socket each: a client that multiplexes hundreds of sessions over one socket
//! drops datagrams in its own receive buffer under load, and counts as losses what is the
//! tool's doing (NOTES.md). Each socket gets larger kernel buffers than the 208 KiB default,
//! for the bursts of a fan-out.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use socket2::{Domain, Protocol, Socket, Type};
use wtransport::endpoint::endpoint_side::Client;
use wtransport::tls::Sha256Digest;
use wtransport::{ClientConfig, Connection, Endpoint, RecvStream, SendStream};

/// An open session and its one bidirectional stream. The endpoint and the connection are
/// held for as long as the streams are in use.
pub struct Session {
    pub endpoint: Endpoint<Client>,
    pub connection: Connection,
    pub send: SendStream,
    pub recv: RecvStream,
}

/// A UDP socket on `bind` with `buffer` bytes of kernel buffers each way (capped by
/// `net.core.rmem_max` / `wmem_max`).
fn socket(bind: IpAddr, buffer: usize) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    if buffer > 0 {
        socket.set_recv_buffer_size(buffer)?;
        socket.set_send_buffer_size(buffer)?;
    }
    socket.bind(&SocketAddr::from((bind, 0)).into())?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Opens a session to `url` (`https://127.0.0.1:PORT/wtchat`) from a loopback socket,
/// pinning the server's certificate by digest, and opens the session's one bidirectional
/// stream.
pub async fn connect(url: &str, hashes: &[[u8; 32]], udp_buffer: usize) -> io::Result<Session> {
    connect_from(Ipv4Addr::LOCALHOST.into(), url, hashes, udp_buffer).await
}

/// [`connect`] from a socket on `bind`: a server beyond loopback (the lossy path of
/// `tun.rs`) is unreachable from 127.0.0.1, so its client binds the unspecified address
/// and the kernel picks the source its route has.
pub async fn connect_from(
    bind: IpAddr,
    url: &str,
    hashes: &[[u8; 32]],
    udp_buffer: usize,
) -> io::Result<Session> {
    let config = ClientConfig::builder()
        .with_bind_socket(socket(bind, udp_buffer)?)
        .with_server_certificate_hashes(hashes.iter().map(|h| Sha256Digest::new(*h)))
        .build();
    let endpoint = Endpoint::client(config)?;
    let connection = endpoint.connect(url).await.map_err(io::Error::other)?;
    let (send, recv) = connection
        .open_bi()
        .await
        .map_err(io::Error::other)?
        .await
        .map_err(io::Error::other)?;
    Ok(Session {
        endpoint,
        connection,
        send,
        recv,
    })
}
