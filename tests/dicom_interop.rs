//! DICOM intake against real clients: dcmtk's `echoscu`/`storescu` and pynetdicom, on the
//! real `halong` binary (so it can be killed with SIGKILL).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/dicom_peer.py");
const LIMIT: Duration = Duration::from_secs(60);

/// A running `halong serve` with DICOM listeners `pacs` (any caller) and `pacs-strict`
/// (only calling AE `MODALITY1`), both with AE title `HALONG`.
struct Server {
    child: Child,
    pacs: SocketAddr,
    strict: SocketAddr,
    /// `pacs-elsewhere`: only peer 192.0.2.10 allowed.
    elsewhere: SocketAddr,
    /// `pacs-tls`, when the config has it.
    tls: Option<SocketAddr>,
    http: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn setup(dir: &Path) -> PathBuf {
    setup_with(dir, "")
}

fn setup_with(dir: &Path, extra: &str) -> PathBuf {
    let mut text =
        config_text(&dir.join("data"), "").replace("level = \"warn\"", "level = \"info\"");
    text.push_str(
        r#"
[[listener]]
name = "pacs"
kind = "dicom"
bind = "127.0.0.1:0"
ae_title = "HALONG"

[[listener]]
name = "pacs-strict"
kind = "dicom"
bind = "127.0.0.1:0"
ae_title = "HALONG"
allowed_callers = ["MODALITY1"]
allowed_peers = ["127.0.0.1", "::1"]

[[listener]]
name = "pacs-elsewhere"
kind = "dicom"
bind = "127.0.0.1:0"
allowed_peers = ["192.0.2.10"]
"#,
    );
    text.push_str(extra);
    std::fs::write(dir.join("halong.toml"), text).unwrap();
    for sub in ["routes", "mappings"] {
        let link = dir.join(sub);
        if !link.exists() {
            std::os::unix::fs::symlink(Path::new(REPO).join(sub), link).unwrap();
        }
    }
    dir.join("halong.toml")
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

fn spawn(config: &Path) -> Server {
    let (child, rx) = serve_logged(config, &[]);
    let (mut pacs, mut strict, mut elsewhere, mut tls, mut http) = (None, None, None, None, None);
    while pacs.is_none() || strict.is_none() || elsewhere.is_none() || http.is_none() {
        let line = rx.recv_timeout(LIMIT).expect("halong logs its addresses");
        if line.contains("DICOM listener ready") {
            let addr: SocketAddr = field(&line, "addr").unwrap().parse().unwrap();
            match field(&line, "listener") {
                Some("pacs") => pacs = Some(addr),
                Some("pacs-strict") => strict = Some(addr),
                Some("pacs-tls") => tls = Some(addr),
                Some("pacs-elsewhere") => elsewhere = Some(addr),
                _ => {}
            }
        } else if line.contains("HTTP API ready") {
            http = Some(field(&line, "http_addr").unwrap().parse().unwrap());
        }
    }
    std::thread::spawn(move || while rx.recv().is_ok() {});
    Server {
        child,
        pacs: pacs.unwrap(),
        strict: strict.unwrap(),
        elsewhere: elsewhere.unwrap(),
        tls,
        http: http.unwrap(),
    }
}

/// A dcmtk tool (the Debian package's, ahead of anything else called the same).
fn dcmtk(tool: &str) -> Command {
    let installed = Path::new("/usr/bin").join(tool);
    let mut c = Command::new(if installed.exists() {
        installed
    } else {
        PathBuf::from(tool)
    });
    // Without it dcmtk stalls ~90 ms per PDU on Linux loopback.
    c.env("TCP_NODELAY", "1");
    c.args(["-to", "30", "-ta", "30", "-td", "30"]);
    c
}

fn run(mut c: Command) -> (bool, String) {
    let out = c.output().expect("run a DICOM client");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn echo(addr: SocketAddr, calling: &str, called: &str) -> (bool, String) {
    echo_with(addr, calling, called, &[])
}

fn echo_with(addr: SocketAddr, calling: &str, called: &str, extra: &[&str]) -> (bool, String) {
    let mut c = dcmtk("echoscu");
    c.args(extra)
        .args(["-aet", calling, "-aec", called])
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string());
    run(c)
}

fn storescu(addr: SocketAddr, files: &[PathBuf]) -> (bool, String) {
    let mut c = dcmtk("storescu");
    c.args(["-aet", "STORESCU", "-aec", "HALONG"])
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .args(files);
    run(c)
}

fn peer(args: &[&str]) -> Value {
    let out = Command::new("python3")
        .arg(PEER)
        .args(args)
        .output()
        .expect("python3 runs the pynetdicom peer");
    assert!(
        out.status.success(),
        "peer {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the peer prints JSON")
}

fn pydicom_file(name: &str) -> PathBuf {
    let out = Command::new("python3")
        .args([
            "-c",
            &format!(
                "from pydicom.data import get_testdata_file; print(get_testdata_file({name:?}))"
            ),
        ])
        .output()
        .expect("python3 with pydicom");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The mapping's ImagingStudy id: `hash(StudyInstanceUID)`.
fn study_id(uid: &str) -> String {
    Sha256::digest(uid.as_bytes())
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn imaging_study(http: SocketAddr, uid: &str) -> Option<Value> {
    let (code, v) = http_json(http, &format!("/fhir/ImagingStudy/{}", study_id(uid)));
    (code == 200).then_some(v)
}

/// Bytes after the preamble and file meta of a Part 10 file.
fn dataset_bytes(path: &Path) -> Vec<u8> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&b[128..132], b"DICM", "{}", path.display());
    assert_eq!(&b[132..136], &[2, 0, 0, 0], "{}", path.display());
    let len = u32::from_le_bytes(b[140..144].try_into().unwrap()) as usize;
    b[144 + len..].to_vec()
}

fn archived(data: &Path, study: &str, series: &str, instance: &str) -> PathBuf {
    data.join("dicom")
        .join(study)
        .join(series)
        .join(format!("{instance}.dcm"))
}

/// Where the instance of one of the peer's send results is archived.
fn sent_file(data: &Path, result: &Value) -> PathBuf {
    let uid = |k: &str| result[k].as_str().unwrap();
    archived(data, uid("study"), uid("series"), uid("sop_instance"))
}

fn dcm_files_under(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            n += dcm_files_under(&p);
        } else if p.extension().is_some_and(|x| x == "dcm") {
            n += 1;
        }
    }
    n
}

#[test]
fn echo_store_and_rejections_with_dcmtk() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn(&setup(dir.path()));

    let (ok, out) = echo(server.pacs, "ECHOSCU", "HALONG");
    assert!(ok, "C-ECHO: {out}");
    let (ok, out) = echo(server.pacs, "ECHOSCU", "NOT-HALONG");
    assert!(!ok, "a wrong called AE must be rejected");
    assert!(out.contains("Called AE Title Not Recognized"), "{out}");
    let (ok, out) = echo(server.strict, "OTHER", "HALONG");
    assert!(!ok, "a caller outside the allowlist must be rejected");
    assert!(out.contains("Calling AE Title Not Recognized"), "{out}");
    let (ok, out) = echo(server.strict, "MODALITY1", "HALONG");
    assert!(ok, "an allowed caller from an allowed address: {out}");
    let (ok, _) = echo(server.elsewhere, "MODALITY1", "HALONG");
    assert!(!ok, "a peer address outside allowed_peers must be refused");

    // A non-storage SOP class is refused per context; the association still serves.
    let found = peer(&[
        "find",
        &server.pacs.ip().to_string(),
        &server.pacs.port().to_string(),
        "HALONG",
    ]);
    assert_eq!(found["established"], true, "{found}");
    assert_eq!(
        found["accepted"],
        serde_json::json!(["1.2.840.10008.1.1"]),
        "{found}"
    );
    assert!(
        found["rejected"]["1.2.840.10008.5.1.4.31"].is_number(),
        "worklist FIND must be a rejected context: {found}"
    );
    assert_eq!(found["echo"], 0, "{found}");

    // Junk and a connection dropped halfway through an association request end only
    // themselves.
    {
        use std::io::Write;
        let mut junk = std::net::TcpStream::connect(server.pacs).unwrap();
        junk.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let mut half = std::net::TcpStream::connect(server.pacs).unwrap();
        half.write_all(&[0x01, 0x00, 0x00, 0x00, 0x10, 0x00])
            .unwrap();
    }
    // A PDU declaring 2 GiB is refused at its header, not buffered.
    {
        use std::io::{Read, Write};
        let mut big = std::net::TcpStream::connect(server.pacs).unwrap();
        big.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        big.write_all(&[0x01, 0x00, 0x7f, 0xff, 0xff, 0xff])
            .unwrap();
        let _ = big.write_all(&[0u8; 4096]);
        let mut buf = [0u8; 64];
        let closed = match big.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => true, // an A-ABORT or A-ASSOCIATE-RJ, then the close
            Err(e) => {
                e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut
            }
        };
        assert!(closed, "an oversized PDU must end the connection");
    }
    let (ok, out) = echo(server.pacs, "ECHOSCU", "HALONG");
    assert!(ok, "the listener still serves after junk: {out}");

    // A dataset without study and series: A900, kept as evidence with status error.
    let bad = dir.path().join("no-study.dcm");
    std::fs::write(&bad, dataset_without_study()).unwrap();
    let sent = peer(&[
        "send-unchecked",
        &server.pacs.ip().to_string(),
        &server.pacs.port().to_string(),
        "HALONG",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(sent["results"][0]["status"], 0xA900, "{sent}");
    wait_until("the refused instance is journaled", LIMIT, || {
        count_status(server.http, "error") == 1
    });
    let (_, errors) = http_json(server.http, "/api/messages?status=error");
    assert_eq!(
        errors["messages"][0]["error"], "dataset lacks Study or Series Instance UID",
        "{errors}"
    );
    assert_eq!(dcm_files_under(&dir.path().join("data/dicom/failed")), 1);

    // The same instance on two associations: both succeed, one file, one instance.
    let ct = pydicom_file("CT_small.dcm");
    for _ in 0..2 {
        let (ok, out) = storescu(server.pacs, std::slice::from_ref(&ct));
        assert!(ok, "storescu: {out}");
    }
    wait_until("both C-STOREs are stored", LIMIT, || {
        count_status(server.http, "stored") == 2
    });
    let study = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322";
    let s = imaging_study(server.http, study).expect("the ImagingStudy exists");
    assert_eq!(s["numberOfSeries"], 1, "{s}");
    assert_eq!(s["numberOfInstances"], 1, "{s}");
    assert_eq!(s["modality"][0]["code"], "CT");
    assert_eq!(
        dcm_files_under(&dir.path().join("data/dicom")),
        2,
        "the instance and the refused one"
    );
}

/// A Part 10 file (explicit VR little endian) whose dataset has SOP class and instance
/// but no study or series.
fn dataset_without_study() -> Vec<u8> {
    fn el(out: &mut Vec<u8>, group: u16, element: u16, vr: &[u8; 2], value: &[u8]) {
        let mut v = value.to_vec();
        if v.len() % 2 == 1 {
            v.push(0);
        }
        out.extend_from_slice(&group.to_le_bytes());
        out.extend_from_slice(&element.to_le_bytes());
        out.extend_from_slice(vr);
        out.extend_from_slice(&(v.len() as u16).to_le_bytes());
        out.extend_from_slice(&v);
    }
    let (class, instance) = (b"1.2.840.10008.5.1.4.1.1.7", b"1.2.3.999.1");
    let mut meta = vec![0x02, 0x00, 0x01, 0x00, b'O', b'B', 0, 0, 2, 0, 0, 0, 0, 1];
    el(&mut meta, 2, 2, b"UI", class);
    el(&mut meta, 2, 3, b"UI", instance);
    el(&mut meta, 2, 0x10, b"UI", b"1.2.840.10008.1.2.1");
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    out.extend_from_slice(&[0x02, 0x00, 0x00, 0x00, b'U', b'L', 4, 0]);
    out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(&meta);
    el(&mut out, 8, 0x16, b"UI", class);
    el(&mut out, 8, 0x18, b"UI", instance);
    el(&mut out, 0x10, 0x10, b"PN", "Nguyễn^Văn A".as_bytes());
    out
}

#[test]
fn pynetdicom_sends_every_bundled_storage_object() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = spawn(&setup(dir.path()));
    let sent = peer(&[
        "send-testdata",
        &server.pacs.ip().to_string(),
        &server.pacs.port().to_string(),
        "HALONG",
    ]);
    assert_eq!(sent["established"], true);
    let results = sent["results"].as_array().unwrap();
    assert!(results.len() >= 100, "only {} files", results.len());
    let mut delivered = 0;
    let mut syntaxes = BTreeSet::new();
    for r in results {
        let name = r["path"].as_str().unwrap();
        if r["client_error"].is_string() {
            // pynetdicom could not encode it; nothing reached halong.
            eprintln!("client could not send {name}: {}", r["client_error"]);
            continue;
        }
        assert_eq!(
            r["status"], 0,
            "{name} ({}) was refused",
            r["transfer_syntax"]
        );
        delivered += 1;
        syntaxes.insert(r["transfer_syntax"].as_str().unwrap().to_string());
    }
    let skipped = results.len() - delivered;
    assert!(skipped <= 2, "the client could not send {skipped} files");
    assert!(
        results
            .iter()
            .any(|r| r["path"].as_str().unwrap().ends_with("/test-SR.dcm") && r["status"] == 0),
        "the structured report is among the objects and succeeds"
    );
    for ts in [
        "1.2.840.10008.1.2",
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2.2",
        "1.2.840.10008.1.2.1.99",
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.5",
    ] {
        assert!(syntaxes.contains(ts), "nothing sent in {ts}: {syntaxes:?}");
    }

    wait_until("every instance is stored", LIMIT, || {
        count_status(server.http, "stored") == delivered as u64
    });

    // Byte for byte: the dataset last sent for each instance (as the client put it on
    // the wire) is the one archived.
    let mut last: BTreeMap<&str, &Value> = BTreeMap::new();
    for r in results.iter().filter(|r| r["status"] == 0) {
        last.insert(r["sop_instance"].as_str().unwrap(), r);
    }
    let mut studies: BTreeMap<&str, BTreeMap<&str, BTreeSet<&str>>> = BTreeMap::new();
    let mut as_in_file = 0;
    for (instance, r) in &last {
        let (study, series) = (r["study"].as_str().unwrap(), r["series"].as_str().unwrap());
        let original = Path::new(r["path"].as_str().unwrap());
        let got = dataset_bytes(&archived(&data, study, series, instance));
        let digest: String = Sha256::digest(&got)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            r["sent_sha256"].as_str(),
            Some(digest.as_str()),
            "{} archived differently from what was sent ({} bytes sent, {} archived)",
            original.display(),
            r["sent_bytes"],
            got.len()
        );
        let offset = r["dataset_offset"].as_u64().unwrap() as usize;
        as_in_file += usize::from(got == std::fs::read(original).unwrap()[offset..]);
        studies
            .entry(study)
            .or_default()
            .entry(series)
            .or_default()
            .insert(instance);
    }
    assert_eq!(dcm_files_under(&data.join("dicom")), last.len());
    // The client re-encodes a few files (group lengths dropped, data re-deflated); the
    // rest went out, and were archived, exactly as in the file.
    assert!(
        as_in_file + 8 >= last.len(),
        "{as_in_file} of {}",
        last.len()
    );

    // One ImagingStudy per study, with every series and instance.
    for (study, series) in &studies {
        let s = imaging_study(server.http, study).unwrap_or_else(|| panic!("no study {study}"));
        let instances: usize = series.values().map(BTreeSet::len).sum();
        assert_eq!(s["numberOfSeries"], series.len(), "{study}");
        assert_eq!(s["numberOfInstances"], instances, "{study}");
        for (uid, members) in series {
            let got = s["series"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["uid"] == *uid)
                .unwrap_or_else(|| panic!("series {uid} missing in {study}"));
            assert_eq!(got["numberOfInstances"], members.len());
        }
    }
}

#[test]
fn vietnamese_names_survive_and_sigkill_after_success_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = setup(dir.path());
    let made = dir.path().join("made");
    std::fs::create_dir_all(&made).unwrap();
    let files = peer(&["make", made.to_str().unwrap()]);
    let files: Vec<&str> = files
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();

    let mut server = spawn(&config);
    let mut args = vec![
        "send".to_string(),
        server.pacs.ip().to_string(),
        server.pacs.port().to_string(),
        "HALONG".to_string(),
    ];
    args.extend(files.iter().map(|f| f.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sent = peer(&args);
    let results = sent["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert!(results.iter().all(|r| r["status"] == 0), "{sent}");

    // Success was answered: kill at once, before the pipeline may have run.
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    for r in results {
        let p = sent_file(&data, r);
        assert!(p.exists(), "{} lost", p.display());
    }

    let server = spawn(&config);
    wait_until("both instances are stored after the restart", LIMIT, || {
        count_status(server.http, "stored") == 2
    });
    for r in results {
        let p = sent_file(&data, r);
        assert_eq!(
            r["sent_sha256"].as_str().unwrap(),
            sha256_hex(&dataset_bytes(&p)),
            "{} is archived as sent",
            p.display()
        );
    }
    let first = &results[0];
    let s = imaging_study(server.http, first["study"].as_str().unwrap()).expect("study");
    assert_eq!(s["numberOfInstances"], 1);
    assert_eq!(s["description"], "CT sọ não");
    assert_eq!(s["started"], "2026-11-20T08:15:00+07:00");
    let acsn = s["identifier"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["type"]["coding"][0]["code"] == "ACSN")
        .expect("accession identifier");
    assert_eq!(acsn["value"], "ACC-0001");

    let (_, found) = http_json(
        server.http,
        &format!("/fhir/Patient?name={}", enc("nguyen thi ngoc")),
    );
    assert_eq!(found["total"], 1, "{found}");
    let p = &found["entry"][0]["resource"];
    assert_eq!(p["name"][0]["family"], "Nguyễn");
    assert_eq!(p["name"][0]["given"][0], "Thị Ngọc Anh");
    assert_eq!(p["gender"], "female");
    assert_eq!(p["birthDate"], "1990-01-01");
    assert_eq!(
        s["subject"]["reference"],
        format!("Patient/{}", p["id"].as_str().unwrap())
    );
    let (_, found) = http_json(server.http, &format!("/fhir/Patient?name={}", enc("đặng")));
    assert_eq!(found["entry"][0]["resource"]["name"][0]["family"], "Đặng");
}

#[test]
fn tls_listener_serves_tls_only() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl makes a test certificate");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let config = setup_with(
        dir.path(),
        r#"
[[listener]]
name = "pacs-tls"
kind = "dicom"
bind = "127.0.0.1:0"
tls_cert = "cert.pem"
tls_key = "key.pem"
"#,
    );
    let server = spawn(&config);
    let tls = server.tls.expect("the TLS listener is up");
    let cert = cert.to_str().unwrap();
    let (ok, out) = echo_with(tls, "ECHOSCU", "HALONG", &["+tla", "+cf", cert]);
    assert!(ok, "C-ECHO over TLS: {out}");
    let (ok, _) = echo(tls, "ECHOSCU", "HALONG");
    assert!(!ok, "plain DICOM on the TLS port must fail");

    let mut c = dcmtk("storescu");
    c.args(["+tla", "+cf", cert, "-aet", "STORESCU", "-aec", "HALONG"])
        .arg(tls.ip().to_string())
        .arg(tls.port().to_string())
        .arg(pydicom_file("CT_small.dcm"));
    let (ok, out) = run(c);
    assert!(ok, "C-STORE over TLS: {out}");
    wait_until("the instance is stored", LIMIT, || {
        count_status(server.http, "stored") == 1
    });
    assert!(imaging_study(server.http, "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322").is_some());
}

/// A DICOM listener `pacs` (AE `HALONG`, any caller) added to the shared test config.
const PACS: &str = r#"
[[listener]]
name = "pacs"
kind = "dicom"
bind = "127.0.0.1:0"
ae_title = "HALONG"
"#;

fn send_files(addr: SocketAddr, files: &[&str]) -> Vec<Value> {
    let mut args = vec![
        "send".to_string(),
        addr.ip().to_string(),
        addr.port().to_string(),
        "HALONG".to_string(),
    ];
    args.extend(files.iter().map(|f| f.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sent = peer(&args);
    assert_eq!(sent["established"], true, "{sent}");
    sent["results"].as_array().unwrap().clone()
}

/// The engine in this process, with the MLLP listeners of `config_text` and [`PACS`].
fn engine_with_pacs(data: &Path) -> (tokio::runtime::Runtime, halong::engine::Engine) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut text = config_text(data, "");
    text.push_str(PACS);
    let config =
        halong::config::Config::from_text(&Path::new(REPO).join("halong.toml"), &text, Vec::new())
            .expect("test config is valid");
    let engine = rt
        .block_on(halong::engine::Engine::start(config))
        .expect("engine starts");
    (rt, engine)
}

fn made(dir: &Path, kib: Option<u32>) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    let mut args = vec!["make".to_string(), dir.to_str().unwrap().to_string()];
    args.extend(kib.map(|k| k.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    peer(&args)
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A full archive disk (injected ENOSPC). A large instance, streamed to its file while it
/// arrives, gets A700 with a reason, nothing is journaled, the association goes on (the
/// next instance on it succeeds) and a resend of the refused one succeeds. A small one
/// is durable in its journal entry before its file is written, so it succeeds; the
/// pipeline keeps trying to write its file and processes the entry once the disk has
/// room.
#[test]
fn a_full_archive_disk_gets_a700_and_the_association_goes_on() {
    use halong::dicom::InstanceRef;
    use halong::journal::Status;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (rt, engine) = engine_with_pacs(&data);
    let pacs = engine.listener_addr("pacs").unwrap();
    let archive = engine.dicom_archive.clone().expect("the DICOM archive");
    let small = made(&dir.path().join("small"), None);
    // 3 MiB of pixel data: past the in-memory limit, so streamed to its file.
    let large = made(&dir.path().join("large"), Some(3 * 1024));
    assert!(std::fs::metadata(&large[0]).unwrap().len() > 3 << 20);

    // Small: both succeed; the first attempt to write their files fails, a later one
    // writes them.
    archive.faults().fail_next_writes(1);
    let results = send_files(pacs, &[&small[0], &small[1]]);
    for r in &results {
        assert_eq!(r["status"], 0, "{results:?}");
    }
    for id in [1, 2] {
        assert_eq!(engine.journal.wait_settled(id, LIMIT), Some(Status::Stored));
    }
    assert_eq!(
        archive.faults().pending_failures(),
        0,
        "the injected failure was met by the pipeline"
    );
    for r in &results {
        let file = sent_file(&data, r);
        assert_eq!(
            r["sent_sha256"].as_str().unwrap(),
            sha256_hex(&dataset_bytes(&file))
        );
    }

    // Large: A700 for the first, the association goes on.
    archive.faults().fail_next_writes(1);
    let results = send_files(pacs, &[&large[0], &large[1]]);
    assert_eq!(results[0]["status"], 0xA700, "{results:?}");
    assert_eq!(
        results[0]["comment"], "archive disk is full; resend later",
        "{results:?}"
    );
    assert_eq!(
        results[1]["status"], 0,
        "the association goes on: {results:?}"
    );
    assert_eq!(
        engine.journal.durable_id(),
        3,
        "only the stored instance is journaled"
    );
    assert_eq!(engine.journal.wait_settled(3, LIMIT), Some(Status::Stored));
    let r = &results[0];
    let refused = sent_file(&data, r);
    assert!(!refused.exists(), "nothing archived for the refused one");
    // The sender tries again once the disk has room.
    let again = send_files(pacs, &[&large[0]]);
    assert_eq!(again[0]["status"], 0, "{again:?}");
    assert_eq!(engine.journal.wait_settled(4, LIMIT), Some(Status::Stored));
    assert_eq!(
        again[0]["sent_sha256"].as_str().unwrap(),
        sha256_hex(&dataset_bytes(&refused))
    );
    assert_eq!(
        std::fs::read_dir(data.join("dicom/incoming"))
            .unwrap()
            .count(),
        0,
        "no partial file stays"
    );

    // A small instance's entry carries its archive file; a large one's refers to it.
    for (entry, carries) in [(1, true), (2, true), (3, false), (4, false)] {
        let raw = engine.journal.read_raw(entry).unwrap();
        let (reference, part10) = InstanceRef::read_journal(&raw).unwrap().unwrap();
        let file = std::fs::read(data.join("dicom").join(&reference.path)).unwrap();
        match part10 {
            Some(bytes) => {
                assert!(carries, "entry {entry}");
                assert_eq!(bytes, &file[..], "entry {entry} carries the archived file");
            }
            None => assert!(!carries, "entry {entry} should carry its instance"),
        }
    }
    rt.block_on(engine.shutdown());
}

/// While the archive disk refuses writes, a small instance is acknowledged (it is in the
/// journal) and waits, still `received`; an HL7 message that arrives after it is
/// processed all the same. When the disk takes writes again the instance is archived
/// and stored.
#[test]
fn a_full_archive_disk_holds_up_only_the_instances_waiting_for_it() {
    use halong::journal::Status;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (rt, engine) = engine_with_pacs(&data);
    let archive = engine.dicom_archive.clone().expect("the DICOM archive");
    let small = made(&dir.path().join("small"), None);

    archive.faults().fail_next_writes(u32::MAX);
    let results = send_files(engine.listener_addr("pacs").unwrap(), &[&small[0]]);
    assert_eq!(results[0]["status"], 0, "{results:?}");
    let mut his = Mllp::connect(engine.listener_addr("his").unwrap());
    let ack = his.send(&sample("adt_a04_dang_van_duc.hl7"));
    assert_eq!(msa_code(&ack), "AA", "{ack}");
    assert_eq!(
        engine.journal.wait_settled(2, LIMIT),
        Some(Status::Stored),
        "the admission after the waiting instance is stored"
    );
    assert_eq!(
        engine.journal.entry(1).unwrap().status,
        Status::Received,
        "the instance waits for the disk"
    );
    let r = &results[0];
    let file = sent_file(&data, r);
    assert!(!file.exists());
    let (code, ready) = http_json(engine.http_addr, "/ready");
    assert_eq!(code, 503, "{ready}");
    assert!(
        ready["problems"][0]
            .as_str()
            .unwrap()
            .contains("DICOM archive files cannot be written"),
        "{ready}"
    );

    archive.faults().fail_next_writes(0);
    assert_eq!(engine.journal.wait_settled(1, LIMIT), Some(Status::Stored));
    let (code, ready) = http_json(engine.http_addr, "/ready");
    assert_eq!(code, 200, "ready again once the files are written: {ready}");
    assert_eq!(
        r["sent_sha256"].as_str().unwrap(),
        sha256_hex(&dataset_bytes(&file))
    );
    rt.block_on(engine.shutdown());
}

/// A crash can lose a small instance's archive file (written, not yet synced, when the
/// success was sent) or leave it torn. Its journal entry carries the file: the pipeline
/// rewrites it before the entry is processed.
#[test]
fn an_archive_file_lost_in_a_crash_is_rebuilt_from_the_journal() {
    use halong::dicom::InstanceRef;
    use halong::journal::{Journal, JournalOptions, NewEntry, Status};
    use halong::listeners::dicom::file_meta;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = setup(dir.path());
    let files = made(&dir.path().join("made"), None);

    // The journal as the listener leaves it after two successes, then a crash: the first
    // file never reached the disk, the second is torn.
    let journal = Journal::open(&data.join("journal"), JournalOptions::default()).unwrap();
    let mut expected = Vec::new();
    for (n, f) in files.iter().enumerate() {
        let dataset = dataset_bytes(Path::new(f));
        let attrs = halong::dicom::extract_bytes(&std::fs::read(f).unwrap()).unwrap();
        let instance = attrs.sop_instance_uid().unwrap().to_string();
        let mut part10 = file_meta(
            attrs.sop_class_uid().unwrap(),
            &instance,
            "1.2.840.10008.1.2.1",
            "MODALITY1",
        );
        part10.extend_from_slice(&dataset);
        let path = format!(
            "{}/{}/{instance}.dcm",
            attrs.study_uid().unwrap(),
            attrs.series_uid().unwrap()
        );
        let mut reference = InstanceRef {
            format: halong::dicom::FORMAT.into(),
            path: path.clone(),
            calling_ae: "MODALITY1".into(),
            called_ae: "HALONG".into(),
            transfer_syntax: "1.2.840.10008.1.2.1".into(),
            sop_class: attrs.sop_class_uid().unwrap().into(),
            sop_instance: instance.clone(),
            dataset_bytes: dataset.len() as u64,
            inline_bytes: 0,
            attributes: attrs.clone(),
        };
        let raw = reference.to_journal_with(&part10);
        journal
            .append_blocking(NewEntry {
                listener: "pacs".into(),
                peer: "127.0.0.1:4242".into(),
                received_ms: 1_795_000_000_000,
                message_type: "DICOM^CT".into(),
                control_id: instance,
                status: Status::Received,
                error: None,
                raw,
            })
            .unwrap();
        let on_disk = data.join("dicom").join(&path);
        if n == 1 {
            std::fs::create_dir_all(on_disk.parent().unwrap()).unwrap();
            std::fs::write(&on_disk, &part10[..part10.len() / 2]).unwrap();
        }
        expected.push((on_disk, part10, attrs));
    }
    // A damaged entry naming a path outside the archive: it must be marked `error`, not
    // hold up the others.
    let part10 = &expected[0].1;
    let mut bad =
        InstanceRef::from_journal(&journal.read_raw(1).expect("the first entry reads back"))
            .expect("a DICOM entry")
            .expect("a readable reference");
    bad.path = "../outside/1.2.dcm".into();
    bad.sop_instance = "1.2".into();
    journal
        .append_blocking(NewEntry {
            listener: "pacs".into(),
            peer: "127.0.0.1:4242".into(),
            received_ms: 1_795_000_000_000,
            message_type: "DICOM^CT".into(),
            control_id: "1.2".into(),
            status: Status::Received,
            error: None,
            raw: bad.to_journal_with(part10),
        })
        .unwrap();
    drop(journal);
    assert!(!expected[0].0.exists());

    let server = spawn(&config);
    wait_until("both instances are stored after the restart", LIMIT, || {
        count_status(server.http, "stored") == 2 && count_status(server.http, "error") == 1
    });
    assert!(
        !data.join("outside").exists(),
        "nothing is written outside the archive"
    );
    for (path, part10, attrs) in &expected {
        assert_eq!(
            &std::fs::read(path).unwrap(),
            part10,
            "{} is rebuilt from the journal",
            path.display()
        );
        assert!(
            imaging_study(server.http, attrs.study_uid().unwrap()).is_some(),
            "its ImagingStudy is stored"
        );
    }
    let series_dir = expected[1].0.parent().unwrap();
    assert_eq!(
        std::fs::read_dir(series_dir).unwrap().count(),
        1,
        "no temporary file stays"
    );
}
