//! On-disk frame encoding of the journal.
//!
//! ```text
//! frame   = len:u32le  crc:u32le  payload[len]        crc = CRC-32 (IEEE) of payload
//! payload = kind:u8 body
//! kind 1 (entry)  : id:u64le received_ms:i64le status:u8
//!                   listener:str peer:str message_type:str control_id:str error:str raw:bytes
//! kind 2 (status) : id:u64le status:u8 error:str          (written before trails were kept)
//! kind 3 (status) : id:u64le status:u8 at_ms:i64le error:str
//! kind 4 (step)   : id:u64le at_ms:i64le stage:str detail:str
//! str / bytes     = len:u32le data[len]               (strings are UTF-8)
//! ```
//!
//! Kinds 3 and 4 are the processing trail: a status change with its time, and a step
//! that changes no status (the route taken, a replay). A journal holding them cannot be
//! opened by a halong older than they are (it stops at the unknown kind).

use super::Status;

pub const HEADER_LEN: usize = 8;
pub const KIND_ENTRY: u8 = 1;
pub const KIND_STATUS: u8 = 2;
pub const KIND_STATUS_AT: u8 = 3;
pub const KIND_STEP: u8 = 4;
/// Largest payload a frame may declare; anything above is treated as corruption.
pub const MAX_PAYLOAD: usize = 1 << 30;

/// A decoded frame; `raw` is given as its offset and length within the payload so the
/// journal can remember where the message bytes live without keeping them.
#[derive(Debug)]
pub enum Frame<'a> {
    Entry {
        id: u64,
        received_ms: i64,
        status: Status,
        listener: &'a str,
        peer: &'a str,
        message_type: &'a str,
        control_id: &'a str,
        error: &'a str,
        raw_offset_in_payload: usize,
        raw_len: usize,
    },
    Status {
        id: u64,
        status: Status,
        error: &'a str,
        /// When it changed (absent in kind 2 frames).
        at_ms: Option<i64>,
    },
    Step {
        id: u64,
        at_ms: i64,
        stage: &'a str,
        detail: &'a str,
    },
}

/// Fields of an entry frame, for encoding.
pub struct EntryFields<'a> {
    pub id: u64,
    pub received_ms: i64,
    pub status: Status,
    pub listener: &'a str,
    pub peer: &'a str,
    pub message_type: &'a str,
    pub control_id: &'a str,
    pub error: &'a str,
    pub raw: &'a [u8],
}

/// Appends an entry frame to `buf`; returns the offset of the raw bytes within `buf`.
pub fn encode_entry(buf: &mut Vec<u8>, f: &EntryFields<'_>) -> usize {
    let start = begin(buf);
    buf.push(KIND_ENTRY);
    buf.extend_from_slice(&f.id.to_le_bytes());
    buf.extend_from_slice(&f.received_ms.to_le_bytes());
    buf.push(f.status as u8);
    for s in [f.listener, f.peer, f.message_type, f.control_id, f.error] {
        put_bytes(buf, s.as_bytes());
    }
    buf.extend_from_slice(&(f.raw.len() as u32).to_le_bytes());
    let raw_at = buf.len();
    buf.extend_from_slice(f.raw);
    finish(buf, start);
    raw_at
}

pub fn encode_status(buf: &mut Vec<u8>, id: u64, status: Status, at_ms: i64, error: &str) {
    let start = begin(buf);
    buf.push(KIND_STATUS_AT);
    buf.extend_from_slice(&id.to_le_bytes());
    buf.push(status as u8);
    buf.extend_from_slice(&at_ms.to_le_bytes());
    put_bytes(buf, error.as_bytes());
    finish(buf, start);
}

pub fn encode_step(buf: &mut Vec<u8>, id: u64, at_ms: i64, stage: &str, detail: &str) {
    let start = begin(buf);
    buf.push(KIND_STEP);
    buf.extend_from_slice(&id.to_le_bytes());
    buf.extend_from_slice(&at_ms.to_le_bytes());
    put_bytes(buf, stage.as_bytes());
    put_bytes(buf, detail.as_bytes());
    finish(buf, start);
}

fn begin(buf: &mut Vec<u8>) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; HEADER_LEN]);
    start
}

fn finish(buf: &mut [u8], start: usize) {
    let payload = &buf[start + HEADER_LEN..];
    let len = payload.len() as u32;
    let crc = crc32fast::hash(payload);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    buf.extend_from_slice(&(b.len() as u32).to_le_bytes());
    buf.extend_from_slice(b);
}

/// Why a frame could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes than the frame needs: a torn write at the end of the journal.
    Truncated,
    /// The checksum or structure is wrong.
    Corrupt(&'static str),
}

/// Reads the frame header at the start of `buf`: the payload length, after checking it
/// is plausible.
pub fn payload_len(buf: &[u8]) -> Result<usize, FrameError> {
    if buf.len() < HEADER_LEN {
        return Err(FrameError::Truncated);
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
    if len == 0 || len > MAX_PAYLOAD {
        return Err(FrameError::Corrupt("implausible frame length"));
    }
    Ok(len)
}

/// Decodes one whole frame (header + payload) from `buf`.
pub fn decode(buf: &[u8]) -> Result<Frame<'_>, FrameError> {
    let len = payload_len(buf)?;
    if buf.len() < HEADER_LEN + len {
        return Err(FrameError::Truncated);
    }
    let crc = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    let payload = &buf[HEADER_LEN..HEADER_LEN + len];
    if crc32fast::hash(payload) != crc {
        return Err(FrameError::Corrupt("checksum mismatch"));
    }
    let mut r = Reader {
        buf: payload,
        pos: 1,
    };
    match payload[0] {
        KIND_ENTRY => {
            let id = r.u64()?;
            let received_ms = r.u64()? as i64;
            let status = r.status()?;
            let listener = r.str()?;
            let peer = r.str()?;
            let message_type = r.str()?;
            let control_id = r.str()?;
            let error = r.str()?;
            let raw_len = r.u32()? as usize;
            let raw_offset_in_payload = r.pos;
            r.take(raw_len)?;
            Ok(Frame::Entry {
                id,
                received_ms,
                status,
                listener,
                peer,
                message_type,
                control_id,
                error,
                raw_offset_in_payload,
                raw_len,
            })
        }
        KIND_STATUS => {
            let id = r.u64()?;
            let status = r.status()?;
            let error = r.str()?;
            Ok(Frame::Status {
                id,
                status,
                error,
                at_ms: None,
            })
        }
        KIND_STATUS_AT => {
            let id = r.u64()?;
            let status = r.status()?;
            let at_ms = r.u64()? as i64;
            let error = r.str()?;
            Ok(Frame::Status {
                id,
                status,
                error,
                at_ms: Some(at_ms),
            })
        }
        KIND_STEP => {
            let id = r.u64()?;
            let at_ms = r.u64()? as i64;
            let stage = r.str()?;
            let detail = r.str()?;
            Ok(Frame::Step {
                id,
                at_ms,
                stage,
                detail,
            })
        }
        _ => Err(FrameError::Corrupt("unknown frame kind")),
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len());
        let end = end.ok_or(FrameError::Corrupt("field runs past the frame"))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn status(&mut self) -> Result<Status, FrameError> {
        Status::from_u8(self.take(1)?[0]).ok_or(FrameError::Corrupt("unknown status"))
    }
    fn str(&mut self) -> Result<&'a str, FrameError> {
        let n = self.u32()? as usize;
        std::str::from_utf8(self.take(n)?).map_err(|_| FrameError::Corrupt("string is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(raw: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        encode_entry(
            &mut buf,
            &EntryFields {
                id: 7,
                received_ms: 1_700_000_000_000,
                status: Status::Received,
                listener: "lab",
                peer: "127.0.0.1:5000",
                message_type: "ORU^R01",
                control_id: "C1",
                error: "",
                raw,
            },
        );
        buf
    }

    #[test]
    fn entry_round_trips() {
        let buf = entry(b"MSH|^~\\&|A");
        match decode(&buf).unwrap() {
            Frame::Entry {
                id,
                listener,
                raw_offset_in_payload,
                raw_len,
                status,
                ..
            } => {
                assert_eq!((id, listener, status), (7, "lab", Status::Received));
                let raw = &buf[HEADER_LEN + raw_offset_in_payload..][..raw_len];
                assert_eq!(raw, b"MSH|^~\\&|A");
            }
            f => panic!("unexpected {f:?}"),
        }
    }

    #[test]
    fn status_round_trips() {
        let mut buf = Vec::new();
        encode_status(&mut buf, 9, Status::Error, 1_700_000_000_123, "bad date");
        match decode(&buf).unwrap() {
            Frame::Status {
                id,
                status,
                error,
                at_ms,
            } => assert_eq!(
                (id, status, error, at_ms),
                (9, Status::Error, "bad date", Some(1_700_000_000_123))
            ),
            f => panic!("unexpected {f:?}"),
        }
        // A status frame written before trails were kept still reads.
        let mut old = Vec::new();
        let start = begin(&mut old);
        old.push(KIND_STATUS);
        old.extend_from_slice(&9u64.to_le_bytes());
        old.push(Status::Stored as u8);
        put_bytes(&mut old, b"");
        finish(&mut old, start);
        match decode(&old).unwrap() {
            Frame::Status {
                id, status, at_ms, ..
            } => {
                assert_eq!((id, status, at_ms), (9, Status::Stored, None))
            }
            f => panic!("unexpected {f:?}"),
        }
    }

    #[test]
    fn step_round_trips() {
        let mut buf = Vec::new();
        encode_step(&mut buf, 4, 1_700_000_000_456, "routed", "lab-results");
        match decode(&buf).unwrap() {
            Frame::Step {
                id,
                at_ms,
                stage,
                detail,
            } => assert_eq!(
                (id, at_ms, stage, detail),
                (4, 1_700_000_000_456, "routed", "lab-results")
            ),
            f => panic!("unexpected {f:?}"),
        }
    }

    #[test]
    fn torn_and_corrupt_frames_are_told_apart() {
        let buf = entry(b"hello");
        for cut in [0, 3, HEADER_LEN, buf.len() - 1] {
            assert_eq!(
                decode(&buf[..cut]).unwrap_err(),
                FrameError::Truncated,
                "cut at {cut}"
            );
        }
        let mut bad = buf.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xFF;
        assert_eq!(
            decode(&bad).unwrap_err(),
            FrameError::Corrupt("checksum mismatch")
        );
        assert_eq!(
            decode(&[0u8; 16]).unwrap_err(),
            FrameError::Corrupt("implausible frame length")
        );
    }
}
