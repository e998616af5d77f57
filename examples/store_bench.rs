//! Record-store benchmark: insert synthetic patients with Vietnamese names, each with
//! clinical records, then print name, identifier, clinical (by patient, and by code
//! without a patient) search latency. It only
//! prints numbers, and ratios against a baseline measured in the same run: the same
//! queries on the first `HALONG_BENCH_BASELINE` patients (default 10,000) before the rest
//! are loaded. Since search cost should follow the size of the answer and not of the
//! store, the ratios should stay near 1.
//!
//! `cargo run --release --example store_bench`; `HALONG_BENCH_PATIENTS` sets the number
//! of patients (default 100,000; the figure is 1,000,000),
//! `HALONG_BENCH_RECORDS` the Observations per patient (default 1, plus one Encounter),
//! `HALONG_BENCH_CACHE_MB` sled's cache (default [`CACHE_CAPACITY`]).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use halong::store::{ClinicalQuery, DateOrder, PatientQuery, Store, TokenQuery, CACHE_CAPACITY};

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

/// A patient's Encounter and `records` Observations.
fn synthetic_records(i: usize, records: usize) -> Vec<Value> {
    let pid = format!("pt-{i:08x}");
    let mut out = vec![json!({
        "resourceType": "Encounter", "id": format!("en-{i:08x}"), "status": "finished",
        "subject": {"reference": format!("Patient/{pid}")},
        "period": {"start": format!("2024-{:02}-{:02}T08:00:00+07:00", 1 + i % 12, 1 + i % 28)}
    })];
    if i < RARE_CODE_PATIENTS {
        out.push(json!({
            "resourceType": "Observation", "id": format!("ob-{i:08x}-rare"), "status": "final",
            "subject": {"reference": format!("Patient/{pid}")},
            "code": {"coding": [{"system": "http://loinc.org", "code": RARE_CODE}]},
            "valueString": "Negative",
            "effectiveDateTime": format!("2024-02-{:02}T10:00:00+07:00", 1 + i % 28)
        }));
    }
    for k in 0..records {
        out.push(json!({
            "resourceType": "Observation", "id": format!("ob-{i:08x}-{k}"), "status": "final",
            "subject": {"reference": format!("Patient/{pid}")},
            "code": {"coding": [{"system": "http://loinc.org", "code": (["2345-7", "718-7", "4548-4"][k % 3])}]},
            "valueQuantity": {"value": 5.5, "unit": "mmol/L"},
            "effectiveDateTime": format!("2024-{:02}-{:02}T09:{:02}:00+07:00", 1 + i % 12, 1 + i % 28, k % 60)
        }));
    }
    out
}

/// The first this many patients also have one Observation with [`RARE_CODE`], so a
/// code search (without a patient) has the same answer at every store size.
const RARE_CODE_PATIENTS: usize = 20;
const RARE_CODE: &str = "94500-6";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const NAME_QUERIES: [&str; 10] = [
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

/// Latency of each name query: (hits, p50, p99), and every sample of all queries.
struct Timings {
    per_query: Vec<(usize, Duration, Duration)>,
    all: Vec<Duration>,
    ident: (Duration, Duration),
    clinical: (Duration, Duration),
    by_code: (Duration, Duration),
    everything: (Duration, Duration),
}

fn time<T>(reps: usize, mut f: impl FnMut(usize) -> T) -> (Vec<Duration>, T) {
    let mut times = Vec::with_capacity(reps);
    let mut last = None;
    for k in 0..reps {
        let t = Instant::now();
        last = Some(f(k));
        times.push(t.elapsed());
    }
    times.sort();
    (times, last.expect("at least one repetition"))
}

fn p50_p99(times: &[Duration]) -> (Duration, Duration) {
    (percentile(times, 0.5), percentile(times, 0.99))
}

fn measure(store: &Store, loaded: usize, reps: usize) -> Timings {
    let mut per_query = Vec::new();
    let mut all = Vec::new();
    for q in NAME_QUERIES {
        let query = PatientQuery {
            name: Some(q.into()),
            ..Default::default()
        };
        let (times, hits) = time(reps, |_| store.search_patients(&query).unwrap().len());
        let (p50, p99) = p50_p99(&times);
        per_query.push((hits, p50, p99));
        all.extend(times);
    }
    all.sort();
    let (t, _) = time(reps, |k| {
        let query = PatientQuery {
            identifier: Some(format!("urn:oid:1.2.840.1|BN{:09}", (k * 7919) % loaded)),
            ..Default::default()
        };
        assert_eq!(store.search_patients(&query).unwrap().len(), 1);
    });
    let ident = p50_p99(&t);
    let (t, _) = time(reps, |k| {
        let q = ClinicalQuery {
            resource_type: "Observation".into(),
            patient: Some(format!("pt-{:08x}", (k * 7919) % loaded)),
            order: DateOrder::Descending,
            ..Default::default()
        };
        store.search_clinical(&q, 0, 50).unwrap().total
    });
    let clinical = p50_p99(&t);
    let (t, _) = time(reps, |_| {
        let q = ClinicalQuery {
            resource_type: "Observation".into(),
            codes: vec![TokenQuery::parse(&format!("http://loinc.org|{RARE_CODE}"))],
            order: DateOrder::Descending,
            ..Default::default()
        };
        let found = store.search_clinical(&q, 0, 50).unwrap().total;
        assert_eq!(found, RARE_CODE_PATIENTS.min(loaded));
    });
    let by_code = p50_p99(&t);
    let (t, _) = time(reps, |k| {
        let pid = format!("pt-{:08x}", (k * 7919) % loaded);
        store.everything_page(&pid, 0, 100).unwrap().unwrap().total
    });
    let everything = p50_p99(&t);
    Timings {
        per_query,
        all,
        ident,
        clinical,
        by_code,
        everything,
    }
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

fn main() {
    let n = env_or("HALONG_BENCH_PATIENTS", 100_000);
    let records = env_or("HALONG_BENCH_RECORDS", 1);
    let base_n = env_or("HALONG_BENCH_BASELINE", 10_000).min(n);
    let reps = env_or("HALONG_BENCH_REPS", 200);
    let dir = tempfile::tempdir().unwrap();
    let cache_mb = env_or("HALONG_BENCH_CACHE_MB", (CACHE_CAPACITY >> 20) as usize) as u64;
    let db = Store::sled_config(dir.path())
        .cache_capacity(cache_mb << 20)
        .open()
        .unwrap();
    println!("sled cache_capacity: {cache_mb} MB; {n} patients, each with 1 Encounter and {records} Observation(s); baseline at {base_n} patients");
    let store = Store::open(db, dir.path()).unwrap();

    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let batch_size = 200;
    let load = |from: usize, to: usize, rng: &mut Rng| {
        let started = Instant::now();
        let mut i = from;
        while i < to {
            let mut batch: Vec<Value> = Vec::new();
            for k in i..(i + batch_size).min(to) {
                batch.push(synthetic_patient(k, rng));
                batch.extend(synthetic_records(k, records));
            }
            store.upsert_batch(&batch).unwrap();
            store.sync().unwrap();
            i += batch_size;
        }
        started.elapsed()
    };
    load(0, base_n, &mut rng);
    let baseline = measure(&store, base_n, reps);
    let insert = load(base_n, n, &mut rng);
    println!(
        "insert: {} patients with their records in batches of {batch_size} patients (sync per batch): {:.1} s, {:.0} patients/s",
        n - base_n,
        insert.as_secs_f64(),
        (n - base_n) as f64 / insert.as_secs_f64()
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

    let full = measure(&store, n, reps);
    println!(
        "{:<18} {:>7} {:>9} {:>9} {:>8} {:>8}",
        "name query", "hits", "p50 µs", "p99 µs", "p50 ×", "p99 ×"
    );
    for (i, q) in NAME_QUERIES.iter().enumerate() {
        let (hits, p50, p99) = full.per_query[i];
        let (_, b50, b99) = baseline.per_query[i];
        println!(
            "{:<18} {:>7} {:>9} {:>9} {:>8.2} {:>8.2}",
            q,
            hits,
            p50.as_micros(),
            p99.as_micros(),
            ratio(p50, b50),
            ratio(p99, b99)
        );
    }
    let (a50, a99) = p50_p99(&full.all);
    let (b50, b99) = p50_p99(&baseline.all);
    println!(
        "all name searches: p50 {} µs, p99 {} µs ({:.2}× and {:.2}× the {base_n}-patient baseline: p50 {} µs, p99 {} µs)",
        a50.as_micros(),
        a99.as_micros(),
        ratio(a50, b50),
        ratio(a99, b99),
        b50.as_micros(),
        b99.as_micros()
    );
    for (what, f, b) in [
        ("identifier search", full.ident, baseline.ident),
        (
            "Observation?patient=&_sort=-date",
            full.clinical,
            baseline.clinical,
        ),
        (
            "Observation?code=http://loinc.org|94500-6&_sort=-date (no patient; 20 hits)",
            full.by_code,
            baseline.by_code,
        ),
        ("Patient/$everything", full.everything, baseline.everything),
    ] {
        println!(
            "{what}: p50 {} µs, p99 {} µs ({:.2}× and {:.2}× baseline)",
            f.0.as_micros(),
            f.1.as_micros(),
            ratio(f.0, b.0),
            ratio(f.1, b.1)
        );
    }
    println!(
        "count: Patient {}, Encounter {}, Observation {}",
        store.count("Patient").unwrap(),
        store.count("Encounter").unwrap(),
        store.count("Observation").unwrap()
    );
}
