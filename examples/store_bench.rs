//! Record-store benchmark: insert synthetic patients with Vietnamese names, then print
//! name and identifier search latency. It only prints numbers. Run with
//! `cargo run --release --example store_bench`; `HALONG_BENCH_PATIENTS`
//! overrides the number of patients (default 100,000), `HALONG_BENCH_CACHE_MB` sled's
//! cache (default [`CACHE_CAPACITY`]).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use halong::store::{PatientQuery, Store, CACHE_CAPACITY};

const FAMILIES: &[&str] = &[
    "Nguyễn", "Nguyễn", "Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Phan", "Vũ", "Võ",
    "Đặng", "Bùi", "Đỗ", "Hồ", "Ngô", "Dương", "Lý",
];
const MIDDLES: &[&str] = &["Văn", "Thị", "Hữu", "Đức", "Minh", "Ngọc", "Thanh", "Quốc"];
const GIVENS: &[&str] = &[
    "An", "Anh", "Bình", "Châu", "Cường", "Dũng", "Giang", "Hà", "Hải", "Hạnh", "Hiếu", "Hoa",
    "Hùng", "Hương", "Khánh", "Lan", "Linh", "Long", "Mai", "Nam", "Ngân", "Nga", "Ngọc", "Phúc",
    "Phương", "Quân", "Sơn", "Tâm", "Thảo", "Trang", "Tuấn", "Tuyết", "Vy", "Yến",
];

/// Small deterministic generator (xorshift64*), so runs are comparable.
struct Rng(u64);
impl Rng {
    fn pick<'a>(&mut self, list: &[&'a str]) -> &'a str {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        list[(r >> 33) as usize % list.len()]
    }
}

fn synthetic_patient(i: usize, rng: &mut Rng) -> Value {
    json!({
        "resourceType": "Patient",
        "id": format!("pt-{i:08x}"),
        "meta": {"source": "lab#journal-1"},
        "identifier": [{"system": "urn:oid:1.2.840.1", "value": format!("BN{i:09}")}],
        "name": [{"family": rng.pick(FAMILIES), "given": [rng.pick(MIDDLES), rng.pick(GIVENS)]}],
        "gender": (["female", "male"][i % 2]),
        "birthDate": format!("19{:02}-0{}-1{}", i % 100, 1 + i % 9, i % 10),
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let n: usize = std::env::var("HALONG_BENCH_PATIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let cache_mb: u64 = std::env::var("HALONG_BENCH_CACHE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CACHE_CAPACITY >> 20);
    let db = Store::sled_config(dir.path())
        .cache_capacity(cache_mb << 20)
        .open()
        .unwrap();
    println!("sled cache_capacity: {cache_mb} MB");
    let store = Store::open(db, dir.path()).unwrap();

    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let batch_size = 200;
    let started = Instant::now();
    let mut i = 0;
    while i < n {
        let batch: Vec<Value> = (i..(i + batch_size).min(n))
            .map(|k| synthetic_patient(k, &mut rng))
            .collect();
        store.upsert_batch(&batch).unwrap();
        store.sync().unwrap();
        i += batch_size;
    }
    let insert = started.elapsed();
    println!(
        "insert: {n} patients in batches of {batch_size} (sync per batch): {:.2} s, {:.0} patients/s",
        insert.as_secs_f64(),
        n as f64 / insert.as_secs_f64()
    );

    // Re-upserting identical records: the unchanged fast path.
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let started = Instant::now();
    let again: Vec<Value> = (0..10_000.min(n))
        .map(|k| synthetic_patient(k, &mut rng))
        .collect();
    for chunk in again.chunks(batch_size) {
        let s = store.upsert_batch(chunk).unwrap();
        assert_eq!(s.written, 0);
    }
    let t = started.elapsed();
    println!(
        "re-upsert unchanged: {} in {:.3} s, {:.0}/s",
        again.len(),
        t.as_secs_f64(),
        again.len() as f64 / t.as_secs_f64()
    );

    let queries = [
        "nguyen thi ngoc",
        "Nguyễn Thị Ngọc",
        "tran van hung",
        "dang",
        "nguyen",
        "ng",
        "ly quoc tuyet",
        "vo thanh",
        "nguyen x",
        "thi van",
    ];
    let reps = 200;
    println!(
        "{:<18} {:>7} {:>10} {:>10}",
        "name query", "hits", "p50 µs", "p99 µs"
    );
    for q in queries {
        let query = PatientQuery {
            name: Some(q.into()),
            ..Default::default()
        };
        let mut times = Vec::with_capacity(reps);
        let mut hits = 0;
        for _ in 0..reps {
            let t = Instant::now();
            hits = store.search_patients(&query).unwrap().len();
            times.push(t.elapsed());
        }
        times.sort();
        println!(
            "{:<18} {:>7} {:>10} {:>10}",
            q,
            hits,
            percentile(&times, 0.5).as_micros(),
            percentile(&times, 0.99).as_micros()
        );
    }

    let mut times = Vec::with_capacity(reps);
    for k in 0..reps {
        let query = PatientQuery {
            identifier: Some(format!("urn:oid:1.2.840.1|BN{:09}", (k * 7919) % n)),
            ..Default::default()
        };
        let t = Instant::now();
        assert_eq!(store.search_patients(&query).unwrap().len(), 1);
        times.push(t.elapsed());
    }
    times.sort();
    println!(
        "identifier search: p50 {} µs, p99 {} µs",
        percentile(&times, 0.5).as_micros(),
        percentile(&times, 0.99).as_micros()
    );
    println!("count(Patient) = {}", store.count("Patient").unwrap());
}
