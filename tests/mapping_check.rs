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
"#,
    );
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(d.join("halong.toml"))
        .current_dir(d)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let m = d.join("mappings/oru_r01.toml").display().to_string();
    let r = d.join("routes/lab.toml").display().to_string();
    let want = format!(
        "{m}:7:20: unknown table \"v2_gendr\" (did you mean \"v2_gender\"?) (tables are mappings/tables/<name>.csv)
{m}:8:16: unknown function \"dat\" (did you mean \"date\"?)
{m}:9:14: the arguments of human_name() must be HL7 field paths, e.g. human_name(PID-5[*])
{m}:11:1: resource #2 has no \"type\"
{m}:12:8: unknown resource type \"Observaton\" (did you mean \"Observation\"?)
{m}:18:16: expected a field number, found 'x'
{m}:20:18: ref() to \"Patiant\", which this mapping does not produce (did you mean \"Patient\"?)
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
