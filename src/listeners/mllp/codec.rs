//! MLLP framing (HL7 v2 Minimal Lower Layer Protocol, release 2).
//!
//! A frame is `<SB> content <EB><CR>` with SB = 0x0B (vertical tab), EB = 0x1C (file
//! separator), CR = 0x0D. The decoder is tolerant the way real devices need:
//! bytes before a start block are skipped (and counted), a UTF-8 byte-order mark at the
//! start of the content is dropped, several frames in one read and one frame over many
//! reads both work. It is strict where leniency would lose data: content past the size
//! limit is an error (the caller answers AR and closes), and a frame still open at end
//! of stream is returned as [`MllpError::Incomplete`] so it can be kept and inspected.

use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Start block.
pub const SB: u8 = 0x0B;
/// End block.
pub const EB: u8 = 0x1C;
/// Carriage return that must follow the end block.
pub const CR: u8 = 0x0D;
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// How much of an oversized or incomplete frame is kept for inspection.
pub const KEEP_PREFIX: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum MllpError {
    #[error("message exceeds the maximum size of {max} bytes")]
    Oversized {
        max: usize,
        /// The first [`KEEP_PREFIX`] bytes, enough to read the MSH and NAK it.
        prefix: Vec<u8>,
    },
    #[error("connection closed inside a frame after {len} bytes (no end block)")]
    Incomplete { len: usize, prefix: Vec<u8> },
    #[error("network error: {0}")]
    Io(#[from] std::io::Error),
}

/// Decoder and encoder for MLLP frames.
#[derive(Debug)]
pub struct MllpCodec {
    max_len: usize,
    /// True once a start block was seen and its content is being collected.
    in_frame: bool,
    /// Content bytes already searched for the end block.
    scanned: usize,
    /// Bytes skipped outside any frame since the codec was made.
    pub junk_skipped: u64,
}

impl MllpCodec {
    pub fn new(max_len: usize) -> Self {
        MllpCodec {
            max_len,
            in_frame: false,
            scanned: 0,
            junk_skipped: 0,
        }
    }
}

impl Decoder for MllpCodec {
    type Item = BytesMut;
    type Error = MllpError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, MllpError> {
        if !self.in_frame {
            match memchr::memchr(SB, src) {
                Some(i) => {
                    self.junk_skipped += i as u64;
                    src.advance(i + 1);
                    self.in_frame = true;
                    self.scanned = 0;
                }
                None => {
                    self.junk_skipped += src.len() as u64;
                    src.clear();
                    return Ok(None);
                }
            }
        }
        // Look for EB CR in the content not yet searched.
        let mut from = self.scanned;
        while let Some(off) = memchr::memchr(EB, &src[from..]) {
            let eb = from + off;
            match src.get(eb + 1) {
                Some(&CR) => {
                    let mut content = src.split_to(eb);
                    src.advance(2);
                    self.in_frame = false;
                    self.scanned = 0;
                    if content.starts_with(BOM) {
                        content.advance(BOM.len());
                    }
                    if content.len() > self.max_len {
                        return Err(self.oversized(&content));
                    }
                    return Ok(Some(content));
                }
                Some(_) => from = eb + 1, // a stray EB inside content
                None => {
                    // EB is the last byte read; its CR may come with the next read.
                    self.scanned = eb;
                    return self.check_size(src);
                }
            }
        }
        self.scanned = src.len();
        self.check_size(src)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, MllpError> {
        if let Some(frame) = self.decode(src)? {
            return Ok(Some(frame));
        }
        if self.in_frame {
            self.in_frame = false;
            let len = src.len();
            let prefix = src[..len.min(KEEP_PREFIX)].to_vec();
            src.clear();
            if len == 0 {
                return Ok(None);
            }
            return Err(MllpError::Incomplete { len, prefix });
        }
        Ok(None)
    }
}

impl MllpCodec {
    fn check_size(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, MllpError> {
        // +2 leaves room for a BOM-less EB CR arriving next; anything beyond the limit
        // plus a BOM is too large whatever follows.
        if src.len() > self.max_len + BOM.len() {
            let err = self.oversized(src);
            src.clear();
            self.in_frame = false;
            return Err(err);
        }
        Ok(None)
    }

    fn oversized(&self, content: &[u8]) -> MllpError {
        let start = if content.starts_with(BOM) {
            BOM.len()
        } else {
            0
        };
        let end = content.len().min(start + KEEP_PREFIX);
        MllpError::Oversized {
            max: self.max_len,
            prefix: content[start..end].to_vec(),
        }
    }
}

impl Encoder<&[u8]> for MllpCodec {
    type Error = MllpError;

    fn encode(&mut self, item: &[u8], dst: &mut BytesMut) -> Result<(), MllpError> {
        dst.reserve(item.len() + 3);
        dst.extend_from_slice(&[SB]);
        dst.extend_from_slice(item);
        dst.extend_from_slice(&[EB, CR]);
        Ok(())
    }
}

/// Wraps `content` in an MLLP frame.
pub fn frame(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 3);
    out.push(SB);
    out.extend_from_slice(content);
    out.extend_from_slice(&[EB, CR]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum Out {
        Frame(Vec<u8>),
        Oversized,
        Incomplete(usize),
    }

    /// Feeds `chunks` one read at a time, then end of stream; collects what comes out.
    fn run(max: usize, chunks: &[&[u8]]) -> (Vec<Out>, u64) {
        let mut codec = MllpCodec::new(max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let push = |r: Result<Option<BytesMut>, MllpError>, out: &mut Vec<Out>| -> bool {
            match r {
                Ok(Some(f)) => {
                    out.push(Out::Frame(f.to_vec()));
                    true
                }
                Ok(None) => false,
                Err(MllpError::Oversized { .. }) => {
                    out.push(Out::Oversized);
                    false
                }
                Err(MllpError::Incomplete { len, .. }) => {
                    out.push(Out::Incomplete(len));
                    false
                }
                Err(e) => panic!("{e}"),
            }
        };
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while push(codec.decode(&mut buf), &mut out) {}
        }
        while push(codec.decode_eof(&mut buf), &mut out) {}
        (out, codec.junk_skipped)
    }

    fn f(s: &str) -> Out {
        Out::Frame(s.as_bytes().to_vec())
    }

    #[test]
    fn framing_table() {
        let msg = "MSH|^~\\&|A\rPID|1\r";
        // Name, the reads, the frames expected, the junk bytes expected.
        type Case<'a> = (&'a str, Vec<&'a [u8]>, Vec<Out>, u64);
        let cases: Vec<Case> = vec![
            (
                "one frame",
                vec![b"\x0bMSH|^~\\&|A\rPID|1\r\x1c\x0d"],
                vec![f(msg)],
                0,
            ),
            (
                "junk before start block",
                vec![b"garbage\r\n\x0bMSH|^~\\&|A\rPID|1\r\x1c\x0d"],
                vec![f(msg)],
                9,
            ),
            (
                "junk between frames",
                vec![b"\x0bA\x1c\x0d\r\n\x00\x0bB\x1c\x0d"],
                vec![f("A"), f("B")],
                3,
            ),
            (
                "BOM dropped",
                vec![b"\x0b\xef\xbb\xbfMSH|^~\\&|A\rPID|1\r\x1c\x0d"],
                vec![f(msg)],
                0,
            ),
            (
                "two frames in one read",
                vec![b"\x0bA\x1c\x0d\x0bB\x1c\x0d"],
                vec![f("A"), f("B")],
                0,
            ),
            (
                "one frame over many reads",
                vec![b"\x0bMSH|^~", b"\\&|A\rPI", b"D|1\r", b"\x1c", b"\x0d"],
                vec![f(msg)],
                0,
            ),
            (
                "LF separators kept for the parser",
                vec![b"\x0bMSH|^~\\&|A\nPID|1\n\x1c\x0d"],
                vec![f("MSH|^~\\&|A\nPID|1\n")],
                0,
            ),
            (
                "CRLF separators kept for the parser",
                vec![b"\x0bMSH|x\r\nPID|1\r\n\x1c\x0d"],
                vec![f("MSH|x\r\nPID|1\r\n")],
                0,
            ),
            (
                "stray EB inside content",
                vec![b"\x0bA\x1cB\x1c\x0d"],
                vec![f("A\x1cB")],
                0,
            ),
            (
                "missing end block at close",
                vec![b"\x0bMSH|^~\\&|A\r"],
                vec![Out::Incomplete(11)],
                0,
            ),
            (
                "EB without CR at close",
                vec![b"\x0bAB\x1c"],
                vec![Out::Incomplete(3)],
                0,
            ),
            ("only junk", vec![b"hello"], vec![], 5),
            ("empty frame", vec![b"\x0b\x1c\x0d"], vec![f("")], 0),
        ];
        for (name, chunks, want, junk) in cases {
            let (got, skipped) = run(1024, &chunks);
            assert_eq!(got, want, "{name}");
            assert_eq!(skipped, junk, "{name}: junk count");
        }
    }

    #[test]
    fn oversized_frames_are_refused() {
        let big = vec![b'x'; 2000];
        let mut framed = vec![SB];
        framed.extend_from_slice(&big);
        framed.extend_from_slice(&[EB, CR]);
        // Complete but too large, in one read.
        assert_eq!(run(1024, &[&framed]).0, vec![Out::Oversized]);
        // Too large while still arriving: refused before the end block comes.
        let (out, _) = run(1024, &[&framed[..1500]]);
        assert_eq!(out, vec![Out::Oversized]);
        // Exactly at the limit is fine.
        let exact = frame(&vec![b'y'; 1024]);
        assert_eq!(run(1024, &[&exact]).0, vec![Out::Frame(vec![b'y'; 1024])]);
    }

    #[test]
    fn oversized_keeps_a_prefix_to_nak_with() {
        let mut codec = MllpCodec::new(1024);
        let mut content = b"MSH|^~\\&|LAB|H1|||20240101||ORU^R01|CTRL9|P|2.5\r".to_vec();
        content.extend(std::iter::repeat_n(b'x', 4000));
        let mut buf = BytesMut::from(&frame(&content)[..]);
        match codec.decode(&mut buf) {
            Err(MllpError::Oversized { prefix, max }) => {
                assert_eq!(max, 1024);
                assert!(prefix.starts_with(b"MSH|^~\\&|LAB"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn encoder_wraps_content() {
        let mut codec = MllpCodec::new(10);
        let mut dst = BytesMut::new();
        codec.encode(&b"ACK"[..], &mut dst).unwrap();
        assert_eq!(&dst[..], b"\x0bACK\x1c\x0d");
    }
}
