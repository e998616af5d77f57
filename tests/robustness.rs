//! Bad input never panics: thousands of mutated messages go through the parser, the
//! ACK builder and every shipped mapping. Deterministic (seeded), so a failure repeats.

use std::path::Path;

use halong::hl7::{self, AckCode, AckError, Outcome};
use halong::mapping::{MappingSet, RunContext};

/// xorshift64*: small, seeded, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const INTERESTING: &[&[u8]] = &[
    b"|",
    b"^",
    b"~",
    b"\\",
    b"&",
    b"\r",
    b"\n",
    b"\\X",
    b"\\XE1\\",
    b"\\.br\\",
    b"\\",
    b"\"\"",
    b"MSH|",
    b"\xEF\xBB\xBF",
    b"\xC3",
    b"\xFF",
    "ễ".as_bytes(),
    b"\x00",
    b"99999999999999999999",
    b"-",
    b".",
    b"+0700",
];

fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut m = base.to_vec();
    for _ in 0..1 + rng.below(6) {
        let at = rng.below(m.len() + 1);
        match rng.below(5) {
            0 if !m.is_empty() => {
                let end = (at + 1 + rng.below(20)).min(m.len());
                m.drain(at.min(end)..end);
            }
            1 => {
                let ins = INTERESTING[rng.below(INTERESTING.len())];
                m.splice(at..at, ins.iter().copied());
            }
            2 if at < m.len() => m[at] = rng.next() as u8,
            3 => m.truncate(at),
            _ => {
                // Duplicate a slice: repeated segments, fields and delimiters.
                let start = rng.below(m.len());
                let end = (start + rng.below(40)).min(m.len());
                let piece = m[start..end].to_vec();
                m.splice(at..at, piece);
            }
        }
    }
    m
}

#[test]
fn mutated_messages_never_panic_anywhere() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mappings = MappingSet::load(&repo.join("mappings")).expect("shipped mappings load");
    let names: Vec<String> = mappings.names().map(str::to_string).collect();
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(repo.join("samples"))
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    seeds.sort();
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let ctx = RunContext {
        source: "urn:test".into(),
        ..Default::default()
    };
    let (mut parsed, mut mapped) = (0, 0);
    for i in 0..20_000 {
        let base = &seeds[i % seeds.len()];
        let m = mutate(&mut rng, base);
        if let Ok(h) = hl7::read_header(&m) {
            let err = AckError {
                code: 207,
                text: "x|y^z".into(),
            };
            let ack = hl7::build_ack(
                &h,
                AckCode::for_outcome(&h, Outcome::Error),
                Some(&err),
                "A1",
                "20260101000000+0700",
            );
            assert!(ack.starts_with(b"MSH"));
        }
        let Ok(msg) = hl7::parse(&m) else { continue };
        parsed += 1;
        for name in &names {
            if let Ok(records) = mappings.get(name).unwrap().run(&msg, &ctx) {
                mapped += 1;
                // A record's JSON is byte for byte what serde_json writes for its value
                // (the store compares stored bytes to tell an unchanged record).
                for r in &records {
                    let value = r.to_value();
                    assert_eq!(
                        r.to_json_vec(),
                        serde_json::to_vec(&value).unwrap(),
                        "{value}"
                    );
                }
            }
        }
    }
    // The mutations must not all be rejected early, or the mappings were never exercised.
    assert!(parsed > 2_000, "only {parsed} mutated messages parsed");
    assert!(mapped > 1_000, "only {mapped} mapping runs succeeded");
}

#[test]
fn the_mllp_codec_survives_random_streams() {
    use bytes::BytesMut;
    use tokio_util::codec::Decoder;
    let mut rng = Rng(0xC0DE_C0DE_0000_0002);
    for _ in 0..2_000 {
        let mut codec = halong::listeners::mllp::MllpCodec::new(4096);
        let mut buf = BytesMut::new();
        for _ in 0..rng.below(30) {
            let n = rng.below(300);
            for _ in 0..n {
                let b = match rng.below(8) {
                    0 => 0x0B,
                    1 => 0x1C,
                    2 => 0x0D,
                    _ => rng.next() as u8,
                };
                buf.extend_from_slice(&[b]);
            }
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(frame)) => assert!(frame.len() <= 4096),
                    Ok(None) => break,
                    Err(_) => {
                        codec = halong::listeners::mllp::MllpCodec::new(4096);
                        break;
                    }
                }
            }
        }
        let _ = codec.decode_eof(&mut buf);
    }
}
