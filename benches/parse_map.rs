//! Parse + map throughput over the conformance corpus (`../shared/corpus/fhir-converter`
//! beside the repository) and over an ORU^R01 with 20 OBX, against hl7-parser 0.3
//! parsing the same bytes alone, measured in the same run.
//!
//! `cargo bench --bench parse_map` prints criterion's figures and, at the end, a table
//! of MB/s per core and the ratio of halong parse+map to hl7-parser parse. Parse + map
//! ends with the records ([`halong::record::Record`]); two more rows add what the
//! engine's mapper does with them (JSON bytes, then index entries for the store).
//!
//! halong runs with mimalloc, the allocator of the `halong` binary, and so does
//! hl7-parser in the main baseline. hl7-parser allocates for every segment and field,
//! so it runs much faster with mimalloc than with the system allocator, which is what
//! a program that uses it gets unless it chooses another: the summary also gives the
//! ratio to hl7-parser on the system allocator, measured in the same turns.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{black_box, Criterion, Throughput};

use halong::config::Config;
use halong::mapping::{Mapping, RunContext};
use halong::pipeline::Rules;

/// mimalloc, the allocator the `halong` binary runs with (so the figures are the
/// engine's), except on a thread inside [`on_system_allocator`]. A block goes back to
/// the allocator it came from: mimalloc knows its own (`mi_is_in_heap_region`), and
/// every system block is freed before `on_system_allocator` returns (it checks).
struct Switch;

thread_local! {
    static SYSTEM: Cell<bool> = const { Cell::new(false) };
}

/// System blocks not freed yet.
static SYSTEM_LIVE: AtomicIsize = AtomicIsize::new(0);

extern "C" {
    // In the mimalloc library the `mimalloc` crate links.
    fn mi_is_in_heap_region(p: *const std::ffi::c_void) -> bool;
}

fn on_system() -> bool {
    SYSTEM.try_with(Cell::get).unwrap_or(false)
}

/// Whether `p` is a block of the system allocator (only such blocks exist while a
/// thread is on it).
fn is_system_block(p: *mut u8) -> bool {
    SYSTEM_LIVE.load(Ordering::Relaxed) != 0 && !unsafe { mi_is_in_heap_region(p.cast()) }
}

unsafe impl GlobalAlloc for Switch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if on_system() {
            SYSTEM_LIVE.fetch_add(1, Ordering::Relaxed);
            unsafe { System.alloc(layout) }
        } else {
            unsafe { mimalloc::MiMalloc.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if on_system() {
            SYSTEM_LIVE.fetch_add(1, Ordering::Relaxed);
            unsafe { System.alloc_zeroed(layout) }
        } else {
            unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        if is_system_block(p) {
            SYSTEM_LIVE.fetch_sub(1, Ordering::Relaxed);
            unsafe { System.dealloc(p, layout) }
        } else {
            unsafe { mimalloc::MiMalloc.dealloc(p, layout) }
        }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if is_system_block(p) {
            unsafe { System.realloc(p, layout, new_size) }
        } else {
            unsafe { mimalloc::MiMalloc.realloc(p, layout, new_size) }
        }
    }
}

#[global_allocator]
static ALLOC: Switch = Switch;

/// `f` with this thread's allocations on the system allocator; every block it made
/// is freed when it returns. The bench runs on one thread, so the count of system
/// blocks is this call's.
fn on_system_allocator<T>(f: impl FnOnce() -> T) -> T {
    /// Back on mimalloc however `f` ends.
    struct Back;
    impl Drop for Back {
        fn drop(&mut self) {
            SYSTEM.with(|s| s.set(false));
        }
    }
    SYSTEM.with(|s| s.set(true));
    let back = Back;
    let out = f();
    drop(back);
    assert_eq!(
        SYSTEM_LIVE.load(Ordering::Relaxed),
        0,
        "a system block outlived the call"
    );
    out
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Corpus messages that a shipped route maps, with CR segment ends as on the wire.
fn corpus(rules: &Rules) -> Vec<(Vec<u8>, String)> {
    let dir = repo().join("../shared/corpus/fhir-converter/messages");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        let text = text.replace("\r\n", "\r").replace('\n', "\r");
        let Ok(msg) = halong::hl7::parse(text.as_bytes()) else {
            continue;
        };
        let h = msg.header();
        let Some(route) = rules.routes.routes().iter().find(|r| r.matches_message(h)) else {
            continue;
        };
        let m = rules.mappings.get(&route.mapping).expect("route's mapping");
        if m.run(&msg, &RunContext::default()).is_ok() {
            out.push((text.into_bytes(), route.mapping.clone()));
        }
    }
    out
}

/// A synthetic ORU^R01 with 20 numeric OBX (a full blood count).
fn oru_20() -> Vec<u8> {
    let mut s = String::from(
        "MSH|^~\\&|LIS|BVDK_TINH|HALONG|SO_Y_TE|20261122160000+0700||ORU^R01^ORU_R01|LAB20|P|2.5.1|||||VNM|UNICODE UTF-8\r\
PID|1||BN000777^^^BVDK_TINH^MR~079190000777^^^CCCD^NI||Đặng^Văn^Đức||19850704|M|||12 Lê Lợi^^Quận 1^Hồ Chí Minh^700000^VNM\r\
PV1|1|O|KB^01^^BVDK_TINH|||||||MED||||1|||||VN00012345\r\
ORC|RE|ORD0777|FIL0777\r\
OBR|1|ORD0777|FIL0777|58410-2^CBC panel^LN|||20261122150000+0700|||||||||||||||20261122155500+0700|||F\r",
    );
    for i in 1..=20 {
        s.push_str(&format!(
            "OBX|{i}|NM|{}-{}^Test {i}^LN||{}.{}|10*9/L^10^9/L^UCUM|4.0-10.0|{}|||F|||20261122150000+0700\r",
            6690 + i,
            i % 10,
            4 + i % 7,
            i,
            if i % 3 == 0 { "H" } else { "N" }
        ));
    }
    s.into_bytes()
}

fn hl7_parser_parse(bytes: &[u8]) -> usize {
    let text = std::str::from_utf8(bytes).expect("UTF-8");
    match hl7_parser::Message::parse_with_lenient_newlines(text, true) {
        Ok(m) => m.segments().count(),
        Err(_) => 0,
    }
}

/// The same on the system allocator.
fn hl7_parser_parse_system(bytes: &[u8]) -> usize {
    on_system_allocator(|| hl7_parser_parse(bytes))
}

fn halong_parse_map(bytes: &[u8], m: &Mapping) -> usize {
    let msg = halong::hl7::parse(bytes).expect("parses");
    m.run(&msg, &RunContext::default()).map_or(0, |r| r.len())
}

/// Parse + map, then what the engine's mapper does with the records: each written as
/// JSON bytes (what the outbox and the broker carry) and, with `index`, its index
/// entries worked out for the local record store.
fn halong_engine(bytes: &[u8], m: &Mapping, index: bool) -> usize {
    let msg = halong::hl7::parse(bytes).expect("parses");
    let Ok(records) = m.run(&msg, &RunContext::default()) else {
        return 0;
    };
    let mut n = records.iter().map(|r| r.to_json_vec().len()).sum();
    if index {
        n += records
            .iter()
            .filter_map(halong::store::index_entries_of_record)
            .map(|e| e.len())
            .sum::<usize>();
    }
    n
}

/// Bytes per second of `f` over `set`, timed for about `budget` (at least one round).
fn rate(set: &[&[u8]], budget: Duration, mut f: impl FnMut(&[u8]) -> usize) -> f64 {
    let bytes: usize = set.iter().map(|b| b.len()).sum();
    let start = Instant::now();
    let mut rounds = 0u64;
    while start.elapsed() < budget || rounds < 1 {
        for b in set {
            black_box(f(b));
        }
        rounds += 1;
    }
    (bytes as f64 * rounds as f64) / start.elapsed().as_secs_f64()
}

/// `f` against hl7-parser (`base`) on the same bytes, in short turns taken one after the other
/// (who goes first alternates), so that both see the machine as it is at that moment:
/// on a shared machine whose speed drifts by a tenth within seconds, a ratio taken from
/// two separate long runs moves by more than the changes it is meant to show.
struct Paired {
    /// Median MB/s of `f` and of hl7-parser over the turns.
    mbps: f64,
    base_mbps: f64,
    /// Median, lowest and highest ratio of one turn's pair.
    ratio: f64,
    low: f64,
    high: f64,
}

const TURNS: usize = 15;

fn paired(set: &[&[u8]], base: fn(&[u8]) -> usize, mut f: impl FnMut(&[u8]) -> usize) -> Paired {
    let slice = Duration::from_millis(150);
    let (mut xs, mut bases, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for turn in 0..TURNS {
        let (x, base) = if turn % 2 == 0 {
            let x = rate(set, slice, &mut f);
            (x, rate(set, slice, base))
        } else {
            let base = rate(set, slice, base);
            (rate(set, slice, &mut f), base)
        };
        xs.push(x / 1e6);
        bases.push(base / 1e6);
        ratios.push(x / base);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Paired {
        mbps: median(&mut xs),
        base_mbps: median(&mut bases),
        low: ratios.iter().copied().fold(f64::INFINITY, f64::min),
        high: ratios.iter().copied().fold(0.0, f64::max),
        ratio: median(&mut ratios),
    }
}

fn row(label: &str, p: &Paired, extra: &str) {
    println!(
        "  {label:<34}{:>8.1}   {:.2}   ({:.2}–{:.2}){extra}",
        p.mbps, p.ratio, p.low, p.high
    );
}

fn main() {
    let config = Config::load(&repo().join("halong.toml"))
        .unwrap_or_else(|d| panic!("{}", halong::diag::render(&d)));
    let rules = Rules::load(&config).unwrap_or_else(|d| panic!("{}", halong::diag::render(&d)));
    let corpus = corpus(&rules);
    let oru = oru_20();
    let oru_map = rules.mappings.get("oru_r01").expect("oru_r01");
    let corpus_bytes: u64 = corpus.iter().map(|(b, _)| b.len() as u64).sum();
    // `cargo test --all-targets` runs this binary without `--bench` (and with test
    // harness flags): then only check that every input maps, once.
    if !std::env::args().any(|a| a == "--bench") {
        for (m, name) in &corpus {
            assert!(halong_parse_map(m, rules.mappings.get(name).unwrap()) > 0);
        }
        assert!(halong_parse_map(&oru, oru_map) >= 22);
        // The baseline on the system allocator frees what it makes (it checks).
        for (m, _) in &corpus {
            assert_eq!(hl7_parser_parse_system(m), hl7_parser_parse(m));
        }
        println!(
            "parse_map: {} corpus messages and the 20-OBX ORU map",
            corpus.len()
        );
        return;
    }

    let mut c = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    {
        let mut g = c.benchmark_group("corpus");
        g.throughput(Throughput::Bytes(corpus_bytes));
        g.bench_function("hl7-parser parse", |b| {
            b.iter(|| {
                corpus
                    .iter()
                    .map(|(m, _)| hl7_parser_parse(m))
                    .sum::<usize>()
            })
        });
        g.bench_function("halong parse", |b| {
            b.iter(|| {
                corpus
                    .iter()
                    .map(|(m, _)| halong::hl7::parse(m).map_or(0, |m| m.segment_count()))
                    .sum::<usize>()
            })
        });
        g.bench_function("halong parse+map", |b| {
            b.iter(|| {
                corpus
                    .iter()
                    .map(|(m, name)| halong_parse_map(m, rules.mappings.get(name).unwrap()))
                    .sum::<usize>()
            })
        });
        g.finish();
    }
    {
        let mut g = c.benchmark_group("oru_r01_20_obx");
        g.throughput(Throughput::Bytes(oru.len() as u64));
        g.bench_function("hl7-parser parse", |b| b.iter(|| hl7_parser_parse(&oru)));
        g.bench_function("halong parse+map", |b| {
            b.iter(|| halong_parse_map(&oru, oru_map))
        });
        g.finish();
    }
    c.final_summary();

    // The summary: MB/s on one core and the ratio to hl7-parser, each ratio the median
    // of TURNS short turns taken one after the other, with the lowest and highest.
    let set: Vec<&[u8]> = corpus.iter().map(|(b, _)| b.as_slice()).collect();
    let base = hl7_parser_parse;
    let parse = paired(&set, base, |b| {
        halong::hl7::parse(b).map_or(0, |m| m.segment_count())
    });
    let map_corpus = |i: &mut usize, b: &[u8]| {
        let name = &corpus[*i % corpus.len()].1;
        *i += 1;
        halong_parse_map(b, rules.mappings.get(name).unwrap())
    };
    let mut i = 0;
    let full = paired(&set, base, |b| map_corpus(&mut i, b));
    let mut i = 0;
    let full_system = paired(&set, hl7_parser_parse_system, |b| map_corpus(&mut i, b));
    let mut engine = Vec::new();
    for index in [false, true] {
        let mut i = 0;
        engine.push(paired(&set, base, |b| {
            let name = &corpus[i % corpus.len()].1;
            i += 1;
            halong_engine(b, rules.mappings.get(name).unwrap(), index)
        }));
    }
    let one = [oru.as_slice()];
    let oru_full = paired(&one, base, |b| halong_parse_map(b, oru_map));
    let oru_system = paired(&one, hl7_parser_parse_system, |b| {
        halong_parse_map(b, oru_map)
    });
    let oru_engine = paired(&one, base, |b| halong_engine(b, oru_map, true));
    let oru_msgs = oru_full.mbps * 1e6 / oru.len() as f64;
    let baseline = |label: &str, p: &Paired| {
        println!("  {label:<34}{:>8.1}   1.00", p.base_mbps);
    };
    println!();
    println!("summary (one core; ratios: median of {TURNS} alternated turns, lowest–highest)");
    println!("                                        MB/s   ratio to hl7-parser");
    println!("corpus ({} messages, {} bytes)", corpus.len(), corpus_bytes);
    baseline("hl7-parser 0.3 parse", &full);
    row("halong parse", &parse, "");
    row("halong parse+map", &full, "");
    row("  + records as JSON bytes", &engine[0], "");
    row("  + JSON bytes and index entries", &engine[1], "");
    baseline("hl7-parser, system allocator", &full_system);
    row("halong parse+map", &full_system, "");
    println!("ORU^R01 with 20 OBX ({} bytes)", oru.len());
    baseline("hl7-parser 0.3 parse", &oru_full);
    row(
        "halong parse+map",
        &oru_full,
        &format!("   {oru_msgs:.0} messages/s"),
    );
    row("  + JSON bytes and index entries", &oru_engine, "");
    baseline("hl7-parser, system allocator", &oru_system);
    row("halong parse+map", &oru_system, "");
}
