//! `halong send`: an MLLP client, and with `--repeat`/`--concurrency` a load generator.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::FramedRead;

use crate::listeners::mllp::{frame, MllpCodec};

/// One message to send, with where it came from.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub origin: String,
    pub bytes: Vec<u8>,
}

/// The files `paths` name, a directory standing for its `*.hl7`, `*.txt` and `*.msg`
/// files, sorted by name.
pub fn message_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut inside: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| format!("{}: {e}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| {
                    f.extension()
                        .is_some_and(|x| x == "hl7" || x == "txt" || x == "msg")
                })
                .collect();
            inside.sort();
            files.extend(inside);
        } else {
            files.push(p.clone());
        }
    }
    Ok(files)
}

/// The messages of one file, each named by the file (and `#n` when it holds several).
/// Segment separators are normalised to `\r` as on the wire; a file holding several
/// messages (each starting with `MSH`) yields each one.
pub fn file_messages(f: &std::path::Path) -> Result<Vec<Outgoing>, String> {
    let data = std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?;
    messages_of(f, &data)
}

/// [`file_messages`] of bytes already read from `f`.
pub fn messages_of(f: &std::path::Path, data: &[u8]) -> Result<Vec<Outgoing>, String> {
    let msgs = split_messages(data);
    if msgs.is_empty() {
        return Err(format!(
            "{}: no HL7 message (no line starts with MSH)",
            f.display()
        ));
    }
    let n = msgs.len();
    Ok(msgs
        .into_iter()
        .enumerate()
        .map(|(i, bytes)| {
            let origin = if n == 1 {
                f.display().to_string()
            } else {
                format!("{}#{}", f.display(), i + 1)
            };
            Outgoing { origin, bytes }
        })
        .collect())
}

/// Reads messages from files and directories (see [`message_files`] and
/// [`file_messages`]).
pub fn load_messages(paths: &[PathBuf]) -> Result<Vec<Outgoing>, String> {
    let mut out = Vec::new();
    for f in message_files(paths)? {
        out.extend(file_messages(&f)?);
    }
    if out.is_empty() {
        return Err("no messages found".into());
    }
    Ok(out)
}

fn split_messages(data: &[u8]) -> Vec<Vec<u8>> {
    let data = data.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(data);
    let mut msgs: Vec<Vec<u8>> = Vec::new();
    for line in data.split(|b| *b == b'\r' || *b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if line.starts_with(b"MSH") || msgs.is_empty() {
            msgs.push(Vec::new());
        }
        let m = msgs.last_mut().expect("one message");
        m.extend_from_slice(line);
        m.push(b'\r');
    }
    msgs.retain(|m| m.starts_with(b"MSH"));
    msgs
}

/// Replaces MSH-10 with `<MSH-10>-<n>` so repeated sends are distinct messages.
pub fn with_unique_control_id(msg: &[u8], n: u64) -> Vec<u8> {
    if msg.len() < 4 {
        return msg.to_vec();
    }
    let sep = msg[3];
    let seg_end = msg.iter().position(|b| *b == b'\r').unwrap_or(msg.len());
    // MSH-10 is the 9th separator-delimited piece after "MSH" (MSH-1 is the separator).
    let seps: Vec<usize> = msg[..seg_end]
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == sep)
        .map(|(i, _)| i)
        .collect();
    let (Some(&start), end) = (seps.get(8), seps.get(9).copied().unwrap_or(seg_end)) else {
        return msg.to_vec();
    };
    let mut out = Vec::with_capacity(msg.len() + 12);
    out.extend_from_slice(&msg[..end]);
    if end == start + 1 {
        out.extend_from_slice(format!("HALONG{n}").as_bytes());
    } else {
        out.extend_from_slice(format!("-{n}").as_bytes());
    }
    out.extend_from_slice(&msg[end..]);
    out
}

/// The MSA-1 code and MSA-3 text of an ACK.
pub fn ack_code(ack: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(ack);
    let sep = text.chars().nth(3).unwrap_or('|');
    for seg in text.split(['\r', '\n']) {
        if let Some(rest) = seg.strip_prefix("MSA") {
            let fields: Vec<&str> = rest.split(sep).collect();
            let code = fields.get(1).copied().unwrap_or("").to_string();
            let msg = fields.get(3).copied().unwrap_or("").to_string();
            return (code, msg);
        }
    }
    ("??".into(), "no MSA segment in the reply".into())
}

/// Options for a run.
pub struct SendOptions {
    pub to: String,
    pub repeat: u64,
    pub concurrency: usize,
    pub unique_ids: bool,
    pub timeout: Duration,
    /// Print progress and a summary instead of one line per message.
    pub load: bool,
}

/// Result of a run.
#[derive(Debug, Default)]
pub struct Summary {
    pub sent: u64,
    pub accepted: u64,
    pub other: u64,
    pub elapsed: Duration,
    pub latencies_us: Vec<u32>,
}

impl Summary {
    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        f64::from(self.latencies_us[i]) / 1000.0
    }

    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Sends every message `repeat` times over `concurrency` connections.
pub async fn run(messages: Vec<Outgoing>, opts: SendOptions) -> Result<Summary, String> {
    let messages = Arc::new(messages);
    let total = messages.len() as u64 * opts.repeat;
    let next = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let progress = if opts.load {
        let (accepted, other) = (accepted.clone(), other.clone());
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let done = accepted.load(Ordering::Relaxed) + other.load(Ordering::Relaxed);
                let rate = done as f64 / started.elapsed().as_secs_f64();
                eprintln!(
                    "  {done}/{total} acknowledged ({} AA/CA, {} other), {rate:.0} msg/s",
                    accepted.load(Ordering::Relaxed),
                    other.load(Ordering::Relaxed)
                );
            }
        }))
    } else {
        None
    };
    let mut workers = Vec::new();
    for _ in 0..opts.concurrency.max(1) {
        let stream = TcpStream::connect(&opts.to)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", opts.to))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let (messages, next, accepted, other) = (
            messages.clone(),
            next.clone(),
            accepted.clone(),
            other.clone(),
        );
        let (unique, timeout, load) = (opts.unique_ids, opts.timeout, opts.load);
        workers.push(tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut acks = FramedRead::new(read, MllpCodec::new(64 << 20));
            let mut lat = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                let m = &messages[(n % messages.len() as u64) as usize];
                let bytes = if unique {
                    with_unique_control_id(&m.bytes, n + 1)
                } else {
                    m.bytes.clone()
                };
                let t0 = Instant::now();
                write
                    .write_all(&frame(&bytes))
                    .await
                    .map_err(|e| format!("send failed: {e}"))?;
                let ack = match tokio::time::timeout(timeout, acks.next()).await {
                    Err(_) => {
                        return Err(format!(
                            "no ACK within {} s for {}",
                            timeout.as_secs(),
                            m.origin
                        ))
                    }
                    Ok(None) => {
                        return Err(format!("connection closed before the ACK for {}", m.origin))
                    }
                    Ok(Some(Err(e))) => {
                        return Err(format!("reading the ACK for {}: {e}", m.origin))
                    }
                    Ok(Some(Ok(a))) => a,
                };
                lat.push(t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                let (code, text) = ack_code(&ack);
                if code == "AA" || code == "CA" {
                    accepted.fetch_add(1, Ordering::Relaxed);
                } else {
                    other.fetch_add(1, Ordering::Relaxed);
                }
                if !load {
                    if text.is_empty() {
                        println!("{}: {code}", m.origin);
                    } else {
                        println!("{}: {code} {text}", m.origin);
                    }
                }
            }
            Ok::<Vec<u32>, String>(lat)
        }));
    }
    let mut latencies = Vec::new();
    let mut first_error = None;
    for w in workers {
        match w.await {
            Ok(Ok(l)) => latencies.extend(l),
            Ok(Err(e)) => first_error = first_error.or(Some(e)),
            Err(e) => first_error = first_error.or(Some(e.to_string())),
        }
    }
    if let Some(p) = progress {
        p.abort();
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    latencies.sort_unstable();
    Ok(Summary {
        sent: latencies.len() as u64,
        accepted: accepted.load(Ordering::Relaxed),
        other: other.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        latencies_us: latencies,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_files_into_messages_with_cr() {
        let data = b"\xEF\xBB\xBFMSH|^~\\&|A\nPID|1\r\n\nMSH|^~\\&|B\rPID|2\n";
        let msgs = split_messages(data);
        assert_eq!(
            msgs,
            vec![
                b"MSH|^~\\&|A\rPID|1\r".to_vec(),
                b"MSH|^~\\&|B\rPID|2\r".to_vec()
            ]
        );
    }

    #[test]
    fn control_ids_become_unique() {
        let m = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|CTRL1|P|2.5\rPID|1\r";
        assert_eq!(
            with_unique_control_id(m, 7),
            b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|CTRL1-7|P|2.5\rPID|1\r".to_vec()
        );
        let empty = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01||P|2.5\r";
        assert_eq!(
            with_unique_control_id(empty, 3),
            b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|HALONG3|P|2.5\r".to_vec()
        );
    }

    #[test]
    fn reads_msa() {
        assert_eq!(
            ack_code(b"MSH|^~\\&|X\rMSA|AE|C1|bad thing\rERR|||"),
            ("AE".into(), "bad thing".into())
        );
        assert_eq!(
            ack_code(b"MSH|^~\\&|X\rMSA|AA|C1"),
            ("AA".into(), String::new())
        );
    }
}
