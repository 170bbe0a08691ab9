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
    use proptest::prelude::*;

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

    /// What the splitter must have returned once it has read `stream`: the non-blank lines
    /// before the first line longer than `max_frame`, and whether there is such a line,
    /// complete or still unterminated.
    fn model(stream: &[u8], max_frame: usize) -> (Vec<&[u8]>, bool) {
        let mut pieces: Vec<&[u8]> = stream.split(|&b| b == b'\n').collect();
        // What follows the last `\n` is not a line yet.
        let tail = pieces.pop().expect("split yields at least one piece");
        let mut lines = Vec::new();
        for line in pieces {
            if line.len() > max_frame {
                return (lines, true);
            }
            if !line.iter().all(u8::is_ascii_whitespace) {
                lines.push(line);
            }
        }
        (lines, tail.len() > max_frame)
    }

    /// A small frame limit, and a stream of lines around it (blank ones, and ones of any
    /// bytes that matter: `\n`, ASCII whitespace and not quite, others), some of them
    /// unterminated, cut into reads of arbitrary sizes.
    fn streams() -> impl Strategy<Value = (usize, Vec<u8>, Vec<usize>)> {
        const BLANK: &[u8] = b" \t\r\x0c";
        const ANY: &[u8] = b" \t\r\x0c\x0b\n\0{}aaaa\x85\xff";
        prop_oneof![4 => 0..=24usize, 1 => 25..=300usize]
            .prop_flat_map(|max_frame| {
                let bytes = |alphabet| {
                    prop::collection::vec(prop::sample::select(alphabet), 0..=max_frame + 2)
                };
                let line = (
                    prop_oneof![1 => bytes(BLANK), 3 => bytes(ANY)],
                    prop::bool::weighted(0.9),
                );
                let read = prop_oneof![
                    1..=4usize,
                    1..=max_frame + 2,
                    1..=max_frame * 2 + READ_RESERVE
                ];
                let reads = prop::collection::vec(read, 1..16);
                (Just(max_frame), prop::collection::vec(line, 0..12), reads)
            })
            .prop_map(|(max_frame, lines, reads)| {
                let mut stream = Vec::new();
                for (line, terminated) in lines {
                    stream.extend_from_slice(&line);
                    if terminated {
                        stream.push(b'\n');
                    }
                }
                (max_frame, stream, reads)
            })
    }

    proptest! {
        #![proptest_config(crate::fuzz_config(256))]

        /// After every read, what the splitter returned is what the model says of all the
        /// bytes read so far: so the lines are the same however the stream was cut, an
        /// oversized line is refused as soon as it is longer than the limit, and nothing
        /// after it is returned, whatever more is read.
        #[test]
        fn fuzz_lines_are_the_streams_lines_however_it_is_cut(
            (max_frame, stream, reads) in streams()
        ) {
            let mut splitter = LineSplitter::new(max_frame);
            let mut lines: Vec<Bytes> = Vec::new();
            let mut too_large = false;
            let mut read = 0;
            for size in reads.iter().cycle() {
                if read == stream.len() {
                    break;
                }
                let chunk = &stream[read..stream.len().min(read + size)];
                read += chunk.len();
                let before = splitter.buf.len();
                splitter.read_buf().extend_from_slice(chunk);
                if !too_large {
                    // Reads happen only after NeedMore: at most max_frame bytes were held,
                    // and the allocation is within a constant factor of that and a read
                    // (the buffer's growth doubles at most).
                    prop_assert!(before <= max_frame, "{before} bytes held before a read");
                    let most = max_frame + reads.iter().max().unwrap() + READ_RESERVE;
                    prop_assert!(splitter.buf.capacity() <= 4 * most, "{most}");
                }
                // Each line returned ends at a `\n` read: more lines than that is a loop.
                let newlines = stream[..read].iter().filter(|&&b| b == b'\n').count();
                loop {
                    match splitter.next_line() {
                        Line::Frame(line) => {
                            prop_assert!(!too_large, "a line after TooLarge");
                            lines.push(line);
                            prop_assert!(lines.len() <= newlines);
                        }
                        Line::NeedMore => {
                            prop_assert!(!too_large, "NeedMore after TooLarge");
                            break;
                        }
                        Line::TooLarge => {
                            too_large = true;
                            break;
                        }
                    }
                }
                let (want, want_too_large) = model(&stream[..read], max_frame);
                prop_assert_eq!(&lines, &want);
                prop_assert_eq!(too_large, want_too_large);
            }
        }
    }
}
