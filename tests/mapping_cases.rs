//! The shipped mappings' cases (mappings/cases/<mapping>/<case>.hl7 + .json), run
//! through the library and through `halong test`; and what a failing case prints.

use std::path::{Path, PathBuf};
use std::process::Command;

use halong::mapping::cases::{cases_dir, run_cases};
use halong::mapping::MappingSet;

const BIN: &str = env!("CARGO_BIN_EXE_halong");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn shipped() -> MappingSet {
    MappingSet::load(&repo().join("mappings"))
        .unwrap_or_else(|d| panic!("{}", halong::diag::render(&d)))
}

#[test]
fn every_shipped_mapping_has_passing_cases() {
    let set = shipped();
    let results = run_cases(&set, &cases_dir(&repo().join("mappings")));
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| {
            r.failure
                .as_ref()
                .map(|f| format!("{}/{}:\n{f}", r.mapping, r.case))
        })
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    for name in set.names() {
        assert!(
            results.iter().any(|r| r.mapping == name),
            "mapping {name} has no case in mappings/cases/{name}/"
        );
    }
}

#[test]
fn halong_test_passes_on_the_shipped_set() {
    let out = Command::new(BIN)
        .args(["test", "--config"])
        .arg(repo().join("halong.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("ok      oru_r01/oru_r01_dang_van_duc_glucose\n"),
        "{stdout}"
    );
    assert!(stdout.contains(" 0 failed\n"), "{stdout}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn a_failing_case_prints_a_readable_diff_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(repo().join("halong.toml"), dir.path().join("halong.toml")).unwrap();
    copy_dir(&repo().join("routes"), &dir.path().join("routes"));
    copy_dir(&repo().join("mappings"), &dir.path().join("mappings"));
    // `meta`, which `halong map` writes, may stay in an expected file: it is not compared.
    let cbc = dir
        .path()
        .join("mappings/cases/oru_r01/oru_r01_nguyen_thi_ngoc_anh_cbc.json");
    let text = std::fs::read_to_string(&cbc).unwrap();
    let with_meta = text.replacen(
        "\"resourceType\": \"Patient\",",
        "\"resourceType\": \"Patient\", \"meta\": {\"source\": \"file:x.hl7\"},",
        1,
    );
    assert_ne!(with_meta, text);
    std::fs::write(&cbc, with_meta).unwrap();
    // The expected gender of the glucose case becomes wrong.
    let case = dir
        .path()
        .join("mappings/cases/oru_r01/oru_r01_dang_van_duc_glucose.json");
    let text = std::fs::read_to_string(&case).unwrap();
    assert!(text.contains("\"gender\": \"male\""));
    std::fs::write(
        &case,
        text.replace("\"gender\": \"male\"", "\"gender\": \"female\""),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["test", "--config"])
        .arg(dir.path().join("halong.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "FAILED  oru_r01/oru_r01_dang_van_duc_glucose\n        ~ /0/gender: expected \"female\", got \"male\"\n"
        ),
        "{stdout}"
    );
    // Every other shipped case still passes.
    let cases = cases_dir(&repo().join("mappings"));
    let total = std::fs::read_dir(&cases)
        .unwrap()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten())
        .filter(|f| f.path().extension().is_some_and(|e| e == "json"))
        .count();
    let summary = format!(": {} passed, 1 failed\n", total - 1);
    assert!(stdout.contains(&summary), "{stdout}");

    // An expected output whose message was renamed away tests nothing: it fails.
    let input = case.with_extension("hl7");
    std::fs::rename(&input, input.with_file_name("renamed.hl7")).unwrap();
    let out = Command::new(BIN)
        .args(["test", "--config"])
        .arg(dir.path().join("halong.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout.contains(&format!(
            "FAILED  oru_r01/oru_r01_dang_van_duc_glucose\n        {}: no input beside it (oru_r01_dang_van_duc_glucose.hl7 or oru_r01_dang_van_duc_glucose.dicom)\n",
            case.display()
        )),
        "{stdout}"
    );
}
