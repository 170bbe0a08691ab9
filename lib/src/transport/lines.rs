//! The WebTransport stream's framing: `\n`-terminated lines of at most `max_frame_bytes`,
//! blank ones skipped. It owns the bytes read but not yet returned and nothing else: the
//! transport does the reading (into [`LineSplitter::read_buf`]) and asks for the next line,
//! so the rules are tested, and fuzzed, without a QUIC connection.

use bytes::{Bytes, BytesMut};

/// Room made for each read. Chat frames are small: a longer line takes a few reads.
const READ_RESERVE: usize = 1024;

/// Splits a byte stream into lines.
pub(crate) struct LineSplitter {
    /// Bytes read but not yet returned as lines. Allocated on first read, so an idle
    /// session holds none.
    buf: BytesMut,
    /// How much of `buf` is known to hold no `\n`: a line that arrives in many reads is
    /// scanned once, not once per read.
    scanned: usize,
    max_frame: usize,
}

/// What the bytes read so far hold.
pub(crate) enum Line {
    /// A complete line that is not blank, without its `\n`.
    Frame(Bytes),
    /// No complete line: read more.
    NeedMore,
    /// A line longer than `max_frame` bytes, complete or not. Final: the stream cannot be
    /// resynchronized without buffering the oversized line, so nothing after it is read.
    TooLarge,
}

impl LineSplitter {
    /// A splitter for lines of at most `max_frame` bytes (without the `\n`).
    pub(crate) fn new(max_frame: usize) -> LineSplitter {
        LineSplitter {
            buf: BytesMut::new(),
            scanned: 0,
            max_frame,
        }
    }

    /// The next line in what was read so far.
    pub(crate) fn next_line(&mut self) -> Line {
        while let Some(pos) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
            // One read may bring a whole oversized line at once: check its length, not
            // only the length of what is still unterminated.
            if self.scanned + pos > self.max_frame {
                return Line::TooLarge;
            }
            let mut line = self.buf.split_to(self.scanned + pos + 1);
            line.truncate(line.len() - 1);
            self.scanned = 0;
            if !line.iter().all(u8::is_ascii_whitespace) {
                return Line::Frame(line.freeze());
            }
        }
        self.scanned = self.buf.len();
        if self.buf.len() > self.max_frame {
            return Line::TooLarge;
        }
        Line::NeedMore
    }

    /// Where the next read goes, with room for at least [`READ_RESERVE`] more bytes. Asked
    /// for after [`Line::NeedMore`], so the buffer holds at most `max_frame` bytes before a
    /// read, and at most that plus one read after it.
    pub(crate) fn read_buf(&mut self) -> &mut BytesMut {
        self.buf.reserve(READ_RESERVE);
        &mut self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` one after the other (like reads), taking every line each makes
    /// available. Returns the lines and whether the splitter said [`Line::TooLarge`].
    fn split(max_frame: usize, chunks: &[&[u8]]) -> (Vec<Bytes>, bool) {
        let mut splitter = LineSplitter::new(max_frame);
        let mut lines = Vec::new();
        for chunk in chunks {
            splitter.read_buf().extend_from_slice(chunk);
            loop {
                match splitter.next_line() {
                    Line::Frame(line) => lines.push(line),
                    Line::NeedMore => break,
                    Line::TooLarge => return (lines, true),
                }
            }
        }
        (lines, false)
    }

    #[test]
    fn lines_come_without_their_newline_and_blank_ones_are_skipped() {
        let (lines, too_large) = split(16, &[b"{\"a\":1}\n\n \t\r\nhel", b"lo\r\nrest"]);
        assert_eq!(lines, [&b"{\"a\":1}"[..], b"hello\r"]);
        assert!(
            !too_large,
            "an unterminated line within the limit waits for more"
        );
    }

    #[test]
    fn a_line_of_exactly_max_frame_is_accepted_one_more_byte_is_not() {
        assert_eq!(split(4, &[b"abcd\n"]), (vec![Bytes::from("abcd")], false));
        assert_eq!(split(4, &[b"abcde\n"]), (vec![], true));
        // Unterminated: too large as soon as it is longer, without waiting for its end.
        assert_eq!(
            split(4, &[b"ok\nab", b"c", b"de"]),
            (vec![Bytes::from("ok")], true)
        );
        // Blank or not, an oversized line is refused: it had to be buffered all the same.
        assert_eq!(split(4, &[b"      \nok\n"]), (vec![], true));
    }
}
