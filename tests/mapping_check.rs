//! `halong check` on broken routes and mappings: every problem at once, compiler style,
//! exact texts.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_halong");

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// `halong check --config CONFIG`, run from another directory than the config's.
fn check(config: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(["check", "--config"])
        .arg(config)
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap()
}

#[test]
fn check_names_file_line_column_for_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "halong.toml",
        "[data]\ndir = \"data\"\n\n[[listener]]\nname = \"lab\"\nkind = \"mllp\"\nbind = \"127.0.0.1:0\"\n",
    );
    write(
        d,
        "routes/lab.toml",
        "[[route]]\nname = \"lab-results\"\nfrom = [\"lab\"]\nmessage = [\"ORU^R01\"]\nmapping = \"oru_r1\"\n\n[[route]]\nname = \"x\"\nfrom = [\"labb\"]\nmessage = [\"ORU^R01^A^B\"]\nmapping = \"oru_r01\"\n",
    );
    write(d, "mappings/tables/v2_gender.csv", "code,value\nM,male\n");
    write(
        d,
        "mappings/oru_r01.toml",
        r#"description = "broken on purpose"

[[resource]]
type = "Patient"
id = "hash(PID-3.1)"
[resource.set]
"gender" = "lookup(v2_gendr, PID-8)"
"birthDate" = "dat(PID-7)"
"name[*]" = "human_name('x')"

[[resource]]
type = "Observaton"
id = "hash(OBX-1)"

[[resource]]
type = "Observation"
each = "OBX"
id = "hash(OBX-x)"
[resource.set]
"subject" = "ref(Patiant)"

[[resource]]
type = "Specimen"
each = "SPN"
id = "hash(PID-3.1)"
[resource.set]
"type" = "codeable_concept(SMP-4)"
"notes[0].text" = "ZNT-1"
"#,
    );
    write(
        d,
        "mappings/dup.toml",
        "[[resource]]\ntype = \"Patient\"\nid = \"hash(PID-3.1)\"\n[resource.set]\n\"gender\" = \"PID-8\"\n\"gender\" = \"PID-8\"\n",
    );
    let out = check(&d.join("halong.toml"));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let m = d.join("mappings/oru_r01.toml").display().to_string();
    let r = d.join("routes/lab.toml").display().to_string();
    let dup = d.join("mappings/dup.toml").display().to_string();
    let want = format!(
        "{dup}:6:1: TOML syntax: `\"gender\"` is set twice in the same table
{m}:7:20: unknown table \"v2_gendr\" (did you mean \"v2_gender\"?) (tables are mappings/tables/<name>.csv)
{m}:8:16: unknown function \"dat\" (did you mean \"date\"?)
{m}:9:14: the arguments of human_name() must be HL7 field paths, e.g. human_name(PID-5[*])
{m}:12:8: unknown resource type \"Observaton\" (did you mean \"Observation\"?)
{m}:18:16: expected a field number, found 'x'
{m}:20:18: ref() to \"Patiant\", which this mapping does not produce (did you mean \"Patient\"?)
{m}:24:9: unknown segment \"SPN\" (did you mean \"SPM\"?); a site-defined segment starts with Z
{m}:27:28: unknown segment \"SMP\" (did you mean \"SPM\"?); a site-defined segment starts with Z
{m}:28:2: Specimen has no element \"notes\" (did you mean \"note\"?)
{r}:5:11: unknown mapping \"oru_r1\" (did you mean \"oru_r01\"?)
{r}:9:9: unknown listener \"labb\" (did you mean \"lab\"?)
{r}:10:12: message pattern \"ORU^R01^A^B\" has more than 3 parts (TYPE^TRIGGER^STRUCTURE)
"
    );
    let got: String = stderr
        .lines()
        .filter(|l| l.contains(".toml:"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(got, want, "{stderr}");
    assert!(stderr.ends_with(" problems found\n"), "{stderr}");
}

/// `halong map` with the shipped config, in the repository.
fn map(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("map")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

fn records(out: &std::process::Output) -> Vec<serde_json::Value> {
    serde_json::from_slice(&out.stdout).expect("a JSON array on stdout")
}

#[test]
fn map_maps_each_message_of_a_file_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (adt, oru) = (
        "samples/adt_a04_dang_van_duc.hl7",
        "samples/oru_r01_nguyen_thi_ngoc_anh_cbc.hl7",
    );
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut both = std::fs::read(repo.join(adt)).unwrap();
    both.extend(std::fs::read(repo.join(oru)).unwrap());
    let two = dir.path().join("two.hl7");
    std::fs::write(&two, both).unwrap();
    let two = two.to_str().unwrap();

    let out = map(&[two]);
    assert!(out.status.success(), "{out:?}");
    let alone = records(&map(&[adt])).len() + records(&map(&[oru])).len();
    assert_eq!(records(&out).len(), alone);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let reports: Vec<&str> = stderr.lines().collect();
    assert_eq!(reports.len(), 2, "{stderr}");
    assert!(
        reports[0].starts_with(&format!("{two}#1: mapping \"adt\"")),
        "{stderr}"
    );
    assert!(
        reports[1].starts_with(&format!("{two}#2: mapping \"oru_r01\"")),
        "{stderr}"
    );
}

#[test]
fn map_names_an_unknown_route_mapping_or_listener_with_a_suggestion() {
    let adt = "samples/adt_a04_dang_van_duc.hl7";
    for (flag, value, message) in [
        (
            "--listener",
            "labb",
            "halong map: no listener named \"labb\" in halong.toml (did you mean \"lab\"?)",
        ),
        (
            "--route",
            "lab-result",
            "halong map: no route named \"lab-result\" (did you mean \"lab-results\"?)",
        ),
        (
            "--mapping",
            "adtt",
            "halong map: no mapping named \"adtt\" in ./mappings (did you mean \"adt\"?)",
        ),
    ] {
        let out = map(&[flag, value, adt]);
        assert_eq!(out.status.code(), Some(2), "{flag}");
        assert_eq!(String::from_utf8_lossy(&out.stderr).trim_end(), message);
    }
    // A listener that exists but takes no such message says which listener it tried.
    let out = map(&["--listener", "lab", adt]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        format!("{adt}: no route takes ADT^A04^ADT_A01 from listener \"lab\"")
    );
}

/// Runs `check` on a site of `files` (path, text), which must fail; its stderr lines
/// and a function giving a file's full path, as check names it.
fn failed_check(files: &[(&str, &str)]) -> (Vec<String>, impl Fn(&str) -> String) {
    let dir = tempfile::tempdir().unwrap();
    for (rel, text) in files {
        write(dir.path(), rel, text);
    }
    let out = check(&dir.path().join("halong.toml"));
    assert_eq!(out.status.code(), Some(1));
    let lines = String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_string)
        .collect();
    (lines, move |rel: &str| {
        dir.path().join(rel).display().to_string()
    })
}

#[test]
fn check_reports_every_wrong_entry_of_a_config_or_route_file_at_once() {
    let (lines, at) = failed_check(&[
        (
            "halong.toml",
            "[data]\ncache_mb = 64\n\n[[listener]]\nname = \"lab\"\nkind = \"mllp\"\nbind = \"127.0.0.1:0\"\nmax_conections = 9\n",
        ),
        (
            "routes/lab.toml",
            "[[route]]\nname = \"a\"\nfrom = [\"lab\"]\nmesage = [\"ORU^R01\"]\nmapping = \"m\"\n\n[[route]]\nname = \"b\"\nfrom = [\"lab\"]\nmessage = [\"ADT^A01\"]\nmaping = \"m\"\n",
        ),
        ("mappings/m.toml", "[[resource]]\ntype = \"Patient\"\nid = \"hash(PID-3.1)\"\n"),
    ]);
    assert_eq!(
        lines,
        [
            format!(
                "{}:2:1: unknown key `cache_mb` (did you mean `cache_mib`?)",
                at("halong.toml")
            ),
            format!(
                "{}:8:1: unknown key `max_conections` (did you mean `max_connections`?)",
                at("halong.toml")
            ),
            format!(
                "{}:4:1: unknown key `mesage` (did you mean `message`?)",
                at("routes/lab.toml")
            ),
            format!(
                "{}:11:1: unknown key `maping` (did you mean `mapping`?)",
                at("routes/lab.toml")
            ),
            "4 problems found".to_string(),
        ]
    );
}

/// After misspelt keys, the checks that need the whole file still run (two listeners
/// named alike, a route's unknown mapping) and a field really missing is reported; an
/// unknown key whose value spans lines does not stop the report.
#[test]
fn check_runs_every_check_on_a_file_as_its_misspelt_keys_meant_it() {
    let listener = "[[listener]]\nkind = \"mllp\"\nbind = \"127.0.0.1:0\"\n";
    let (lines, at) = failed_check(&[
        (
            "halong.toml",
            &format!("{listener}name = \"lab\"\nmax_conections = 5\n\n{listener}nam = \"lab\"\n"),
        ),
        (
            "routes/a.toml",
            "[[route]]\nname = \"a\"\nfrom = [\"lab\"]\nmesage = [\"ORU^R01\"]\nmapping = \"nosuch\"\n",
        ),
        (
            "routes/b.toml",
            "[[route]]\nname = \"b\"\nfrom = [\"lab\"]\nnotes = [\n  \"x\",\n]\nmessage = [\"ADT^A01\"]\nmaping = \"m\"\n",
        ),
        (
            "routes/c.toml",
            "[[route]]\nname = \"c\"\nfrom = [\"lab\"]\nmesage = [\"ADT^A04\"]\n",
        ),
        ("mappings/m.toml", "[[resource]]\ntype = \"Patient\"\nid = \"hash(PID-3.1)\"\n"),
    ]);
    let (config, a, b, c) = (
        at("halong.toml"),
        at("routes/a.toml"),
        at("routes/b.toml"),
        at("routes/c.toml"),
    );
    assert_eq!(
        lines,
        [
            format!("{config}:5:1: unknown key `max_conections` (did you mean `max_connections`?)"),
            format!("{config}:10:1: unknown key `nam` (did you mean `name`?)"),
            format!("{config}:7:1: duplicate listener name \"lab\""),
            format!("{a}:4:1: unknown key `mesage` (did you mean `message`?)"),
            format!("{a}:5:11: unknown mapping \"nosuch\" (no mappings/nosuch.toml)"),
            format!("{b}:4:1: unknown key `notes`; expected one of `name`, `description`, `from`, `message`, `sending_application`, `sending_facility`, `processing_id`, `mapping`, `calling_ae`"),
            format!("{b}:8:1: unknown key `maping` (did you mean `mapping`?)"),
            format!("{c}:1:1: missing field `mapping`"),
            format!("{c}:4:1: unknown key `mesage` (did you mean `message`?)"),
            "9 problems found".to_string(),
        ]
    );
}

#[test]
fn check_still_checks_routes_and_mappings_when_the_config_has_problems() {
    let (lines, at) = failed_check(&[
        (
            "halong.toml",
            "[log]\nlevel = \"verbose\"\n\n[[listener]]\nname = \"lab\"\nkind = \"mllp\"\nbind = \"127.0.0.1:0\"\n",
        ),
        (
            "routes/lab.toml",
            "[[route]]\nname = \"r\"\nfrom = [\"lab\", \"labb\"]\nmessage = [\"ORU^R01\"]\nmapping = \"m\"\n",
        ),
        ("mappings/m.toml", "[[resource]]\ntype = \"Patient\"\nid = \"hash(PDI-3)\"\n"),
    ]);
    assert_eq!(
        lines,
        [
            format!("{}:2:1: log level \"verbose\": \"verbose\" is not a level; give one of off, error, warn, info, debug, trace, optionally followed by MODULE=LEVEL items (e.g. \"info,lapin=warn\")", at("halong.toml")),
            format!("{}:3:12: unknown segment \"PDI\" (did you mean \"PID\"?); a site-defined segment starts with Z", at("mappings/m.toml")),
            format!("{}:3:16: unknown listener \"labb\" (did you mean \"lab\"?)", at("routes/lab.toml")),
            "3 problems found".to_string(),
        ]
    );
}

#[test]
fn map_of_an_empty_directory_and_check_of_a_missing_config_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("empty")).unwrap();
    let out = map(&[d.join("empty").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        "halong map: no messages found (a directory is read for *.hl7, *.txt and *.msg)"
    );
    // A config that cannot be read names no listeners: routes beside it are checked,
    // but not against listeners.
    write(
        d,
        "routes/lab.toml",
        "[[route]]\nname = \"r\"\nfrom = [\"lab\"]\nmessage = [\"ORU^R01\"]\nmapping = \"m\"\n",
    );
    let out = check(&d.join("halong.tml"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("cannot read config"), "{stderr}");
    assert!(stderr.contains("unknown mapping \"m\""), "{stderr}");
    assert!(!stderr.contains("unknown listener"), "{stderr}");
}
