//! The WebSocket side of the load tool: the opening handshake through tokio-tungstenite
//! (which checks the server's answer), then raw RFC 6455 frames on the TCP socket.
//!
//! Why raw frames: tungstenite hands every message over as its own `Message` through a
//! `Stream`; the tool instead reads up to a whole buffer of frames per `read` call and looks
//! at each payload in place, with no allocation per message. The tool shares two cores with
//! the server, so every cycle it spends is one the server does not get.

use std::io;
use std::net::SocketAddr;

use tokio::net::TcpStream;

/// Opcodes this client handles.
pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_CLOSE: u8 = 0x8;

/// The masking key of every frame the tool sends. RFC 6455 wants it unpredictable (a
/// defence for proxies of browsers); a fixed non-zero key still makes the server do the
/// real unmasking work, which is what a benchmark needs.
const MASK: [u8; 4] = [0x5a, 0xc3, 0x17, 0x9e];

/// Connects over TCP and performs the WebSocket upgrade for `url` (`ws://…/wtchat/ws`).
pub async fn connect(addr: SocketAddr, url: &str) -> io::Result<TcpStream> {
    let mut tcp = TcpStream::connect(addr).await?;
    // Small frames (a `send`, a `pong`) must leave at once, not wait for Nagle.
    tcp.set_nodelay(true)?;
    // The handshake runs over a borrow of the socket; the server sends nothing after its
    // 101 answer until the client's first frame, so tungstenite's read-ahead holds nothing
    // the raw reader would miss.
    tokio_tungstenite::client_async(url, &mut tcp)
        .await
        .map_err(io::Error::other)?;
    Ok(tcp)
}

/// Appends one masked, final frame with `opcode` and `payload` to `out`.
pub fn encode_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&MASK);
    let start = out.len();
    out.extend_from_slice(payload);
    for (i, b) in out[start..].iter_mut().enumerate() {
        *b ^= MASK[i & 3];
    }
}

/// One server frame found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    /// Where the payload starts and ends in the buffer.
    pub payload: (usize, usize),
    /// Bytes the whole frame takes.
    pub total: usize,
}

/// Why a buffer does not start with a complete frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incomplete {
    /// Read more; `need` is the whole frame's size when the header says it already.
    More { need: Option<usize> },
    /// Server frames are never masked (RFC 6455 5.1): the stream is broken.
    Masked,
}

/// Parses the frame at the start of `buf` (server to client: unmasked).
pub fn parse_frame(buf: &[u8]) -> Result<Frame, Incomplete> {
    if buf.len() < 2 {
        return Err(Incomplete::More { need: None });
    }
    if buf[1] & 0x80 != 0 {
        return Err(Incomplete::Masked);
    }
    let (len, header) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => {
            let mut be = [0u8; 8];
            be.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(be) as usize, 10)
        }
        126 | 127 => return Err(Incomplete::More { need: None }),
        n => (usize::from(n), 2),
    };
    let total = header + len;
    if buf.len() < total {
        return Err(Incomplete::More { need: Some(total) });
    }
    Ok(Frame {
        fin: buf[0] & 0x80 != 0,
        opcode: buf[0] & 0x0f,
        payload: (header, total),
        total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unmasked(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(&mut out, opcode, payload);
        // Turn the client frame into a server frame: clear the mask bit, drop the key,
        // unmask the payload.
        let header = match payload.len() {
            n if n < 126 => 2,
            n if n <= 65535 => 4,
            _ => 10,
        };
        out[1] &= 0x7f;
        let mut frame = out[..header].to_vec();
        frame.extend(
            out[header + 4..]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ MASK[i & 3]),
        );
        frame
    }

    #[test]
    fn frames_of_every_length_class_round_trip() {
        for len in [0usize, 5, 125, 126, 300, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut buf = unmasked(OP_TEXT, &payload);
            buf.extend_from_slice(b"next");
            let frame = parse_frame(&buf).unwrap();
            assert!(frame.fin);
            assert_eq!(frame.opcode, OP_TEXT);
            assert_eq!(&buf[frame.payload.0..frame.payload.1], &payload[..]);
            assert_eq!(&buf[frame.total..], b"next");
            // Every proper prefix is incomplete, never an error.
            for cut in [0, 1, frame.total / 2, frame.total - 1] {
                assert!(matches!(
                    parse_frame(&buf[..cut]),
                    Err(Incomplete::More { .. })
                ));
            }
        }
    }

    #[test]
    fn client_frames_are_masked() {
        let mut out = Vec::new();
        encode_frame(&mut out, OP_TEXT, b"hi");
        assert_eq!(out[0], 0x81);
        assert_eq!(out[1], 0x80 | 2);
        assert_eq!(&out[2..6], &MASK);
        assert_eq!(out[6] ^ MASK[0], b'h');
        assert_eq!(parse_frame(&out), Err(Incomplete::Masked));
    }
}
