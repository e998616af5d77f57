//! What the record store's tree costs on this machine, without halong around it: sled
//! alone, configured as the engine configures it, taking the writes that lab results
//! make. Each result of the end-to-end benchmark (`scripts/bench-intake.sh`) writes
//! three new Observations, each with its record and three index keys (code, date,
//! patient), and rewrites four records it repeats (Patient, Encounter, order, report):
//! 16 tree inserts, 12 of them new keys. The batches are the store thread's (256
//! results, then a flush).
//!
//! `cargo run --release --example sled_floor [RESULTS]` (default 40,000) prints the time
//! per insert and the results per second sled alone would take on one core, which bounds
//! what the store thread can do however little else it does.

use std::time::Instant;

// The allocator the `halong` binary runs with.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A spread-out hex id, like the hashes mappings give records.
fn id(n: u64) -> String {
    format!(
        "{:032x}",
        u128::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)
    )
}

fn main() {
    let results: u64 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(40_000);
    let dir = tempfile::tempdir().expect("temporary directory");
    let db = halong::store::Store::sled_config(dir.path())
        .open()
        .expect("open sled");
    let tree = db.open_tree("records").expect("open tree");
    let record = vec![b'x'; 900];
    let patients = 500;
    let mut inserts = 0u64;
    let start = Instant::now();
    for first in (0..results).step_by(256) {
        let mut batch = sled::Batch::default();
        for r in first..(first + 256).min(results) {
            let patient = id(1_000_000 + r % patients);
            for o in 0..3 {
                let obs = id(r * 3 + o);
                batch.insert(format!("d/Observation/{obs}").as_bytes(), record.clone());
                batch.insert(
                    format!("k/Observation\0{}\0http://loinc.org\0{obs}", o + 700).as_bytes(),
                    &[][..],
                );
                batch.insert(
                    format!("t/Observation\02026-11-{:02}\0{obs}", 1 + r % 28).as_bytes(),
                    &[][..],
                );
                batch.insert(
                    format!("r/{patient}\0Observation/{obs}").as_bytes(),
                    &[][..],
                );
            }
            for kind in ["Patient", "Encounter", "ServiceRequest", "DiagnosticReport"] {
                let again = id(2_000_000 + r % patients);
                batch.insert(format!("d/{kind}/{again}").as_bytes(), record.clone());
            }
            inserts += 16;
        }
        tree.apply_batch(batch).expect("apply batch");
        db.flush().expect("flush");
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "sled alone: {results} lab results, {inserts} inserts in {secs:.2} s: {:.1} µs per insert, {:.0} results/s on one core",
        secs * 1e6 / inserts as f64,
        results as f64 / secs
    );
}
