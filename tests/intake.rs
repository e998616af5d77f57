//! MLLP intake end to end, in process: exact ACKs, durability before ACK, bad input,
//! and the records found over HTTP.

mod common;

use std::time::Duration;

use common::*;
use halong::journal::Status;

const SETTLE: Duration = Duration::from_secs(30);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Sends `msg` and waits until the pipeline has finished with it; returns (ACK, status).
fn send_and_settle(
    engine: &halong::engine::Engine,
    conn: &mut Mllp,
    msg: &[u8],
) -> (String, Status) {
    let before = engine.journal.durable_id();
    let ack = conn.send(msg);
    let id = engine.journal.durable_id();
    assert!(id > before, "an ACK came before anything was journaled");
    let status = engine
        .journal
        .wait_settled(id, SETTLE)
        .expect("message settles");
    (ack, status)
}

#[test]
fn accepted_messages_get_exact_acks_and_become_searchable() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let engine = rt.block_on(start(dir.path()));
    let mut his = Mllp::connect(engine.listener_addr("his").unwrap());
    let mut lab = Mllp::connect(engine.listener_addr("lab").unwrap());

    // MSH-15/16 present: enhanced mode, commit accept.
    let (ack, status) = send_and_settle(
        &engine,
        &mut his,
        &sample("adt_a01_nguyen_thi_ngoc_anh.hl7"),
    );
    assert_eq!(
        ack_segments(&ack),
        vec![
            "MSH|^~\\&|HALONG|SO_Y_TE|HIS|BVDK_TINH|<now>||ACK^A01^ACK|<id>|P|2.5|||||UNICODE UTF-8",
            "MSA|CA|ADT0001",
        ]
    );
    assert_eq!(status, Status::Stored);

    // Original mode on the same kind of path, and the connection stays open for more.
    let (ack, status) = send_and_settle(
        &engine,
        &mut lab,
        &sample("oru_r01_nguyen_thi_ngoc_anh_cbc.hl7"),
    );
    assert_eq!(
        ack_segments(&ack),
        vec![
            "MSH|^~\\&|HALONG|SO_Y_TE|LIS|BVDK_TINH|<now>||ACK^R01^ACK|<id>|P|2.5|||||UNICODE UTF-8",
            "MSA|AA|LAB0001",
        ]
    );
    assert_eq!(status, Status::Stored);
    let (_, status) = send_and_settle(&engine, &mut his, &sample("adt_a04_dang_van_duc.hl7"));
    assert_eq!(status, Status::Stored);

    let http = engine.http_addr;
    for query in [
        "nguyen thi ngoc",
        "NGUYEN",
        "Nguyễn Thị Ngọc",
        "nguye\u{0302}\u{0303}n",
        "ngoc anh",
        "thi ng",
    ] {
        let (code, bundle) = http_json(http, &format!("/fhir/Patient?name={}", enc(query)));
        assert_eq!(code, 200, "{query}");
        assert_eq!(bundle["total"], 1, "query {query:?} finds the patient");
        let p = &bundle["entry"][0]["resource"];
        assert_eq!(
            p["name"][0]["family"], "Nguyễn",
            "the name arrives exactly as sent"
        );
    }
    let (_, bundle) = http_json(http, &format!("/fhir/Patient?name={}", enc("dang duc")));
    assert_eq!(bundle["total"], 1, "đ matches d");
    assert_eq!(bundle["entry"][0]["resource"]["name"][0]["family"], "Đặng");
    let (_, bundle) = http_json(http, &format!("/fhir/Patient?name={}", enc("nguyen x")));
    assert_eq!(bundle["total"], 0);

    let (_, bundle) = http_json(http, "/fhir/Patient?identifier=079190000001");
    assert_eq!(bundle["total"], 1);
    let pid = bundle["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, patient) = http_json(http, &format!("/fhir/Patient/{pid}"));
    assert_eq!(code, 200);
    assert_eq!(patient["birthDate"], "1990-02-15");

    let (code, all) = http_json(http, &format!("/fhir/Patient/{pid}/$everything"));
    assert_eq!(code, 200);
    let types: Vec<&str> = all["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["resourceType"].as_str().unwrap())
        .collect();
    assert_eq!(types[0], "Patient");
    assert_eq!(
        types.iter().filter(|t| **t == "Observation").count(),
        4,
        "{types:?}"
    );
    assert_eq!(
        types.iter().filter(|t| **t == "DiagnosticReport").count(),
        1,
        "{types:?}"
    );
    assert!(types.contains(&"Encounter"), "{types:?}");
    let hb = all["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .find(|r| r["code"]["coding"][0]["code"] == "718-7")
        .expect("hemoglobin observation");
    assert_eq!(
        hb["valueQuantity"]["value"].to_string(),
        "13.5",
        "numeric values are numbers"
    );
    assert_eq!(hb["valueQuantity"]["unit"], "g/dL");

    let obs_id = hb["id"].as_str().unwrap();
    let (code, read) = http_json(http, &format!("/fhir/Observation/{obs_id}"));
    assert_eq!((code, &read["id"]), (200, &hb["id"]));
    let (code, missing) = http_json(http, "/fhir/Observation/nope");
    assert_eq!(code, 404);
    assert_eq!(missing["resourceType"], "OperationOutcome");
    let (code, ready) = http_json(http, "/ready");
    assert_eq!(
        (code, &ready["ready"], &ready["problems"]),
        (200, &serde_json::json!(true), &serde_json::json!([]))
    );
    let (code, bad) = http_json(http, "/fhir/Patient?nam=x");
    assert_eq!(code, 400);
    assert!(bad["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("did you mean 'name'?"));

    rt.block_on(engine.shutdown());
}

#[test]
fn updates_and_resends_never_duplicate() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let engine = rt.block_on(start(dir.path()));
    let mut his = Mllp::connect(engine.listener_addr("his").unwrap());
    let mut lab = Mllp::connect(engine.listener_addr("lab").unwrap());
    send_and_settle(
        &engine,
        &mut his,
        &sample("adt_a01_nguyen_thi_ngoc_anh.hl7"),
    );
    let (_, first) = http_json(engine.http_addr, "/fhir/Patient?identifier=079190000001");
    let (ack, status) = send_and_settle(
        &engine,
        &mut his,
        &sample("adt_a08_nguyen_thi_ngoc_anh_update.hl7"),
    );
    assert_eq!(msa_code(&ack), "AA");
    assert_eq!(status, Status::Stored);
    let (_, after) = http_json(engine.http_addr, "/fhir/Patient?identifier=079190000001");
    assert_eq!(after["total"], 1, "A08 updates the same patient");
    assert_eq!(
        first["entry"][0]["resource"]["id"],
        after["entry"][0]["resource"]["id"]
    );
    assert_eq!(
        after["entry"][0]["resource"]["address"][0]["line"][0],
        "45 Đường Hai Bà Trưng"
    );

    for _ in 0..2 {
        send_and_settle(
            &engine,
            &mut lab,
            &sample("oru_r01_nguyen_thi_ngoc_anh_cbc.hl7"),
        );
    }
    assert_eq!(
        engine.store.count("Observation").unwrap(),
        4,
        "the same results sent twice are stored once"
    );
    assert_eq!(engine.store.count("Patient").unwrap(), 1);
    rt.block_on(engine.shutdown());
}

/// A lab's preliminary that arrives after its final (a retry that came late, or an
/// operator's replay of the older message) does not undo the final: the result and its
/// report stay as finalised, the message is stored, and its trail says what was kept.
#[test]
fn a_late_preliminary_does_not_undo_the_final_result() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let engine = rt.block_on(start(dir.path()));
    let mut lab = Mllp::connect(engine.listener_addr("lab").unwrap());
    let final_cbc = String::from_utf8(sample("oru_r01_nguyen_thi_ngoc_anh_cbc.hl7")).unwrap();
    // The same order as preliminary, sent earlier by the laboratory: another message id,
    // the report and every result `P`, the haemoglobin not yet checked.
    let preliminary = final_cbc
        .replace("|LAB0001|P|2.5|", "|LAB0000|P|2.5|")
        .replace("|||F\r", "|||P\r")
        .replace("|||F|||", "|||P|||")
        .replace("||13.5|g/dL|", "||9.9|g/dL|");
    assert_eq!(preliminary.matches("|||P").count(), 5, "{preliminary}");
    let hemoglobin = || {
        let (_, bundle) = http_json(engine.http_addr, "/fhir/Observation?code=718-7");
        assert_eq!(bundle["total"], 1, "{bundle}");
        let o = &bundle["entry"][0]["resource"];
        (o["status"].clone(), o["valueQuantity"]["value"].to_string())
    };
    let (ack, status) = send_and_settle(&engine, &mut lab, final_cbc.as_bytes());
    assert_eq!((msa_code(&ack), status), ("AA".to_string(), Status::Stored));
    assert_eq!(hemoglobin(), ("final".into(), "13.5".into()));
    let kept_before = metric(engine.http_addr, "halong_store_kept_total");

    let (ack, status) = send_and_settle(&engine, &mut lab, preliminary.as_bytes());
    assert_eq!((msa_code(&ack), status), ("AA".to_string(), Status::Stored));
    assert_eq!(hemoglobin(), ("final".into(), "13.5".into()));
    let (_, reports) = http_json(engine.http_addr, "/fhir/DiagnosticReport?code=58410-2");
    assert_eq!(reports["entry"][0]["resource"]["status"], "final");
    assert_eq!(engine.store.count("Observation").unwrap(), 4);
    // Four results and the report, each named in the late message's trail.
    let id = engine.journal.durable_id();
    let kept: Vec<String> = engine
        .journal
        .trail(id)
        .into_iter()
        .filter(|s| s.stage == "kept")
        .filter_map(|s| s.detail)
        .collect();
    assert_eq!(kept.len(), 5, "{kept:?}");
    assert!(kept.iter().all(|k| k.ends_with(
        "kept as stored (final); this message's version (preliminary) is an earlier stage and was not written"
    )));
    assert_eq!(
        stages(&engine, id).last().map(String::as_str),
        Some("stored")
    );
    // The message browser shows the steps as they are (they quote no value).
    let (_, one) = http_json(engine.http_addr, &format!("/api/messages/{id}"));
    let shown: Vec<&str> = one["trail"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["stage"] == "kept")
        .filter_map(|s| s["detail"].as_str())
        .collect();
    assert_eq!(shown, kept);
    assert_eq!(
        metric(engine.http_addr, "halong_store_kept_total") - kept_before,
        5
    );

    // A correction still replaces the final.
    let corrected = final_cbc
        .replace("|LAB0001|P|2.5|", "|LAB0002|P|2.5|")
        .replace(
            "||13.5|g/dL|12.0-15.5|N|||F|",
            "||12.9|g/dL|12.0-15.5|N|||C|",
        );
    let (ack, status) = send_and_settle(&engine, &mut lab, corrected.as_bytes());
    assert_eq!((msa_code(&ack), status), ("AA".to_string(), Status::Stored));
    assert_eq!(hemoglobin(), ("corrected".into(), "12.9".into()));
    assert!(!stages(&engine, engine.journal.durable_id()).contains(&"kept".to_string()));
    rt.block_on(engine.shutdown());
}

#[test]
fn no_ack_when_the_journal_cannot_commit() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let engine = rt.block_on(start(dir.path()));
    let mut lab = Mllp::connect(engine.listener_addr("lab").unwrap());
    engine.journal.faults().fail_sync(true);
    let ack = lab.send(&sample("oru_r01_dang_van_duc_glucose.hl7"));
    let segs = ack_segments(&ack);
    assert_eq!(
        segs[1],
        "MSA|AE|LAB0002|message could not be stored durably; resend it later"
    );
    assert_eq!(segs[2], "ERR|||207^Application internal error^HL70357|E||||message could not be stored durably; resend it later");
    assert_eq!(engine.journal.durable_id(), 0, "nothing was kept");
    let (code, health) = http_json(engine.http_addr, "/health");
    assert_eq!((code, health["status"].as_str()), (503, Some("failing")));

    engine.journal.faults().fail_sync(false);
    let ack = lab.send(&sample("oru_r01_dang_van_duc_glucose.hl7"));
    assert_eq!(
        msa_code(&ack),
        "AA",
        "the same connection works once the disk does"
    );
    assert_eq!(engine.journal.durable_id(), 1);
    rt.block_on(engine.shutdown());
}

/// A failed sync of the record store is not forgotten when the disk recovers (the kernel
/// may have dropped what it could not write): `/ready` names the store, the message
/// stays `mapped` and nothing more is stored until a restart, which stores it.
#[test]
fn ready_names_the_record_store_once_a_sync_failed_until_a_restart() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let engine = rt.block_on(start(dir.path()));
    let http = engine.http_addr;
    assert_eq!(http_json(http, "/ready").0, 200);
    engine.store.faults().fail_sync(true);
    // The journal still takes the message: the store is not on the ACK path.
    let id = send_glucose(&engine);
    let mut seen = serde_json::Value::Null;
    wait_until("/ready reports the store", SETTLE, || {
        let (code, body) = http_json(http, "/ready");
        seen = body;
        code == 503
    });
    assert_eq!(seen["ready"], false);
    assert_eq!(
        seen["problems"],
        serde_json::json!([
            "the record store cannot make records durable (a sync failed; a restart recovers)"
        ])
    );
    assert_eq!(engine.journal.entry(id).unwrap().status, Status::Mapped);
    assert_eq!(outbox_waiting(http), 1);

    engine.store.faults().fail_sync(false);
    assert!(
        engine.store.sync().is_err(),
        "a sync after a failed one cannot vouch for the records"
    );
    assert_eq!(http_json(http, "/ready").0, 503);
    assert_eq!(engine.journal.entry(id).unwrap().status, Status::Mapped);
    rt.block_on(engine.shutdown());

    let engine = rt.block_on(start(dir.path()));
    ends_stored(&engine, id);
    let (code, body) = http_json(engine.http_addr, "/ready");
    assert_eq!((code, &body["problems"]), (200, &serde_json::json!([])));
    rt.block_on(engine.shutdown());
}

/// The scheduling policy (Linux `/proc/self/task/*/stat`, field 41: 0 normal, 5 idle)
/// and the I/O priority of every thread of this process with this name.
fn thread_policies(name: &str) -> Vec<(u32, i64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the parenthesised name start at field 3.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let tid: i64 = task.file_name().to_string_lossy().parse().unwrap();
        // SAFETY: ioprio_get(IOPRIO_WHO_PROCESS, tid) reads a number, no pointers.
        let io = unsafe { libc::syscall(libc::SYS_ioprio_get, 1, tid) };
        if let Some(p) = after.split_whitespace().nth(41 - 3) {
            out.push((p.parse().unwrap(), io));
        }
    }
    out
}

/// By default mapping and storing run at idle CPU priority, so that in a burst the CPU
/// goes to acknowledging first; the journal's committer, on the ACK path, does not. Their
/// disk I/O keeps the normal class (idle-class syncs could wait seconds).
#[test]
fn the_pipeline_yields_the_cpu_to_intake() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let engine = rt.block_on(start(dir.path()));
    const SCHED_IDLE: u32 = 5;
    for name in ["mapper", "store", "store-sync"] {
        wait_until(
            &format!("{name} threads run at idle priority"),
            SETTLE,
            || {
                let p = thread_policies(name);
                let normal_io = i64::from(halong::pipeline::IO_BEST_EFFORT);
                !p.is_empty() && p.iter().all(|&p| p == (SCHED_IDLE, normal_io))
            },
        );
    }
    let committers = thread_policies("journal-commit");
    assert!(!committers.is_empty() && committers.iter().all(|&(p, _)| p == 0));
    // Work still gets done at idle priority.
    let mut lab = Mllp::connect(engine.listener_addr("lab").unwrap());
    assert_eq!(
        msa_code(&lab.send(&sample("oru_r01_dang_van_duc_glucose.hl7"))),
        "AA"
    );
    let id = engine.journal.durable_id();
    assert_eq!(
        engine.journal.wait_settled(id, SETTLE),
        Some(Status::Stored)
    );
    rt.block_on(engine.shutdown());
}

/// The stages of entry `id`'s trail, in order.
fn stages(engine: &halong::engine::Engine, id: u64) -> Vec<String> {
    engine
        .journal
        .trail(id)
        .into_iter()
        .map(|s| s.stage)
        .collect()
}

/// Entries the outbox holds, as `/health` reports them.
fn outbox_waiting(http: std::net::SocketAddr) -> serde_json::Value {
    http_json(http, "/health").1["outbox"]["waiting"].clone()
}

/// Once a fault clears: the glucose result `id` becomes `stored`, the outbox lets it
/// go, and its two Observations are in the store.
fn ends_stored(engine: &halong::engine::Engine, id: u64) {
    assert_eq!(
        engine.journal.wait_settled(id, SETTLE),
        Some(Status::Stored)
    );
    wait_until("the outbox lets the entry go", SETTLE, || {
        outbox_waiting(engine.http_addr) == 0
    });
    assert_eq!(engine.store.count("Observation").unwrap(), 2);
}

/// Sends the glucose result to the `lab` listener; returns its journal id once it is
/// acknowledged.
fn send_glucose(engine: &halong::engine::Engine) -> u64 {
    let mut lab = Mllp::connect(engine.listener_addr("lab").unwrap());
    let ack = lab.send(&sample("oru_r01_dang_van_duc_glucose.hl7"));
    assert_eq!(msa_code(&ack), "AA");
    engine.journal.durable_id()
}

/// The store's records are durable, but the journal cannot record `stored`: the entry
/// stays in flight (on disk it is still `mapped`, so a crash now would map and store it
/// again, not lose it) until the journal takes writes again.
#[test]
fn stored_records_stay_in_flight_while_the_journal_cannot_sync() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let engine = rt.block_on(start(dir.path()));
    let http = engine.http_addr;
    // Held at the store's sync, so the journal can be made to fail before the store
    // stage marks it.
    engine.store.faults().hold_sync(true);
    let id = send_glucose(&engine);
    wait_until("the store stage's sync waits", SETTLE, || {
        engine.store.faults().sync_is_held()
    });
    engine.journal.faults().fail_sync(true);
    engine.store.faults().hold_sync(false);
    wait_until("the journal's sync fails", SETTLE, || {
        engine.journal.is_failing()
    });
    assert_eq!(
        outbox_waiting(http),
        1,
        "the entry is in flight until `stored` is on disk"
    );
    assert_eq!(engine.store.count("Observation").unwrap(), 2);

    engine.journal.faults().fail_sync(false);
    ends_stored(&engine, id);
    assert_eq!(
        stages(&engine, id),
        ["received", "routed", "mapped", "stored"]
    );
    rt.block_on(engine.shutdown());
    // And so on disk: the failed commit's status frames went with the next one.
    let engine = rt.block_on(start(dir.path()));
    assert_eq!(engine.journal.entry(id).unwrap().status, Status::Stored);
    assert_eq!(
        stages(&engine, id),
        ["received", "routed", "mapped", "stored"]
    );
    rt.block_on(engine.shutdown());
}

/// Records on their way to the local store live in memory only; the journal is their
/// durable copy. An entry the engine stops with before its records are durable (here the
/// store failed a sync, which stops the store stage) is still `mapped`, and the next
/// start maps and stores it.
#[test]
fn an_entry_in_flight_at_shutdown_is_stored_after_the_restart() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let engine = rt.block_on(start(dir.path()));
    engine.store.faults().fail_sync(true);
    let id = send_glucose(&engine);
    wait_until("the store's sync fails", SETTLE, || {
        engine.store.is_failing()
    });
    rt.block_on(engine.shutdown());

    let engine = rt.block_on(start(dir.path()));
    ends_stored(&engine, id);
    assert_eq!(
        stages(&engine, id),
        ["received", "routed", "mapped", "routed", "mapped", "stored"],
        "mapped again after the restart"
    );
    rt.block_on(engine.shutdown());
}

/// Every kind of bad input gets a clear answer and leaves a journal entry with its reason.
#[test]
fn bad_input_is_answered_and_kept() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let engine = rt.block_on(start(dir.path()));
    let addr = engine.listener_addr("lab").unwrap();
    let msh = "MSH|^~\\&|LIS|H1|HALONG|SO_Y_TE|20261120103000||ORU^R01|BAD1|P|2.5";
    let mut latin1 = b"MSH|^~\\&|LIS|H1|HALONG|SO_Y_TE|20261120103000||ORU^R01|L1|P|2.5|||||DEU|8859/1\rPID|1||L1^^^H1^MR||M\xfcller^Jos\xe9||19700101|M\rOBR|1|O1|F1|GLU^Glucose|||20261120090000+0700\rOBX|1|NM|GLU^Glucose||5.5|mmol/L|||||F|||20261120090000+0700\r".to_vec();
    let cases: Vec<(&str, Vec<u8>, &str, Status, &str)> = vec![
        ("no MSH", b"PID|1||X\r".to_vec(), "AR", Status::Error, "MSH"),
        ("binary garbage", vec![0, 1, 2, 0xFF], "AR", Status::Error, "MSH"),
        ("empty frame", Vec::new(), "AR", Status::Error, ""),
        ("bad segment", format!("{msh}\rP D|1\r").into_bytes(), "AE", Status::Error, "P D"),
        ("invalid UTF-8", [format!("{msh}\rPID|1||X||Nguy").as_bytes(), &[0xFF, 0xFE], b"n\r"].concat(), "AE", Status::Error, "UTF-8"),
        ("no route", b"MSH|^~\\&|LIS|H1|HALONG|SO_Y_TE|20261120103000||SIU^S12|S1|P|2.5\r".to_vec(), "AA", Status::Unrouted, "no route takes SIU^S12"),
        (
            "bad date in a result",
            format!("{msh}\rPID|1||P1^^^H1^MR||Lê^Văn||19700101|M\rOBR|1|O1|F1|GLU^Glucose|||2026132509\rOBX|1|NM|GLU^Glucose||5.5|mmol/L|||||F|||2026132509\r").into_bytes(),
            "AA",
            Status::Error,
            "2026132509",
        ),
        ("8859/1 decoded", std::mem::take(&mut latin1), "AA", Status::Stored, ""),
    ];
    let mut conn = Mllp::connect(addr);
    for (name, msg, want_code, want_status, want_error) in cases {
        let before = engine.journal.durable_id();
        let ack = conn.send(&msg);
        assert_eq!(msa_code(&ack), want_code, "{name}: {ack}");
        if want_code != "AA" {
            assert!(
                ack.contains("\rERR|"),
                "{name}: a NAK carries an ERR segment: {ack}"
            );
        }
        let id = engine.journal.durable_id();
        assert_eq!(id, before + 1, "{name}: journaled");
        let status = engine.journal.wait_settled(id, SETTLE).expect("settles");
        assert_eq!(status, want_status, "{name}");
        let entry = engine.journal.entry(id).unwrap();
        if want_status != Status::Stored {
            let error = entry.error.as_deref().unwrap_or("");
            assert!(
                !error.is_empty() && error.contains(want_error),
                "{name}: error {error:?} names {want_error:?}"
            );
        }
        assert_eq!(
            engine.journal.read_raw(id).unwrap(),
            msg,
            "{name}: raw bytes kept as sent"
        );
    }
    let (_, found) = http_json(
        engine.http_addr,
        &format!("/fhir/Patient?name={}", enc("muller jose")),
    );
    assert_eq!(
        found["entry"][0]["resource"]["name"][0]["family"], "Müller",
        "8859/1 decoded to the right characters"
    );
    let (_, listed) = http_json(engine.http_addr, "/api/messages?status=error");
    assert_eq!(listed["messages"].as_array().unwrap().len(), 6);
    rt.block_on(engine.shutdown());
}

#[test]
fn framing_tolerance_over_tcp() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let engine = rt.block_on(start(dir.path()));
    let mut conn = Mllp::connect(engine.listener_addr("lab").unwrap());
    let a = sample("oru_r01_dang_van_duc_glucose.hl7");
    // LF separators, a BOM, junk before the start block, split over several writes.
    let lf: Vec<u8> = a
        .iter()
        .map(|b| if *b == b'\r' { b'\n' } else { *b })
        .collect();
    let mut wire = b"\r\n\x00junk".to_vec();
    wire.extend(halong::listeners::mllp::frame(
        &[b"\xEF\xBB\xBF".as_slice(), &lf].concat(),
    ));
    let (first, rest) = wire.split_at(17);
    conn.send_raw(first);
    conn.send_raw(rest);
    assert_eq!(msa_code(&conn.read_frame().unwrap()), "AA");
    // Two frames in one write, CRLF separators in the second: two ACKs, in order.
    let crlf: Vec<u8> = String::from_utf8(a.clone())
        .unwrap()
        .replace('\r', "\r\n")
        .into_bytes();
    let mut two = halong::listeners::mllp::frame(&a);
    two.extend(halong::listeners::mllp::frame(&crlf));
    conn.send_raw(&two);
    assert_eq!(msa_code(&conn.read_frame().unwrap()), "AA");
    assert_eq!(msa_code(&conn.read_frame().unwrap()), "AA");
    assert_eq!(engine.journal.durable_id(), 3);
    rt.block_on(engine.shutdown());
}

#[test]
fn oversized_idle_and_incomplete_connections_are_bounded() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let config = config(
        dir.path(),
        "max_message_bytes = 2048\nidle_timeout_secs = 1",
    );
    let engine = rt.block_on(halong::engine::Engine::start(config)).unwrap();
    let addr = engine.listener_addr("lab").unwrap();

    let mut big =
        b"MSH|^~\\&|LIS|H1|HALONG|SO_Y_TE|20261120103000||ORU^R01|BIG1|P|2.5\rNTE|1||".to_vec();
    big.extend(std::iter::repeat_n(b'x', 5000));
    let mut conn = Mllp::connect(addr);
    let ack = conn.send(&big);
    let segs = ack_segments(&ack);
    assert_eq!(
        segs[1],
        "MSA|AR|BIG1|message exceeds the maximum size of 2048 bytes"
    );
    assert!(
        conn.is_closed(),
        "the connection is closed after an oversized message"
    );
    let kept = engine.journal.entry(1).unwrap();
    assert_eq!(kept.status, Status::Error);
    assert!(kept.error.as_deref().unwrap().contains("maximum size"));

    // A silent connection is closed after the idle timeout.
    let mut idle = Mllp::connect(addr);
    assert!(idle.is_closed());

    // A frame cut off by the sender is kept, with its reason.
    let mut cut = Mllp::connect(addr);
    cut.send_raw(b"\x0bMSH|^~\\&|LIS|H1|HALONG|SO_Y_TE|20261120103000||ORU^R01|CUT1|P|2.5\rPID|1");
    drop(cut);
    assert_eq!(
        engine.journal.wait_durable_beyond(1, SETTLE),
        2,
        "incomplete frame is journaled"
    );
    let kept = engine.journal.entry(2).unwrap();
    assert_eq!(&*kept.control_id, "CUT1");
    assert!(kept.error.as_deref().unwrap().contains("no end block"));
    rt.block_on(engine.shutdown());
}

#[test]
fn connections_beyond_the_limit_wait_their_turn() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let engine = rt
        .block_on(halong::engine::Engine::start(config(
            dir.path(),
            "max_connections = 1",
        )))
        .unwrap();
    let addr = engine.listener_addr("lab").unwrap();
    let msg = sample("oru_r01_dang_van_duc_glucose.hl7");
    let mut first = Mllp::connect(addr);
    assert_eq!(msa_code(&first.send(&msg)), "AA");
    // The second connection is accepted by the kernel but not served while the first
    // holds the only slot.
    let mut second = std::net::TcpStream::connect(addr).unwrap();
    std::io::Write::write_all(&mut second, &halong::listeners::mllp::frame(&msg)).unwrap();
    second
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 64];
    let waited = std::io::Read::read(&mut second, &mut buf);
    assert!(
        matches!(&waited, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "no answer while the slot is taken: {waited:?}"
    );
    assert_eq!(engine.journal.durable_id(), 1);
    drop(first);
    second
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let n = std::io::Read::read(&mut second, &mut buf).unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("\u{b}MSH|"),
        "served once the slot is free"
    );
    rt.block_on(engine.shutdown());
}

#[test]
fn unrouted_messages_can_be_naked_by_policy() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let engine = rt
        .block_on(halong::engine::Engine::start(config(
            dir.path(),
            "unrouted_ack = \"AE\"",
        )))
        .unwrap();
    let mut his = Mllp::connect(engine.listener_addr("his").unwrap());
    // A lab result on the admissions listener: no route takes it there.
    let ack = his.send(&sample("oru_r01_dang_van_duc_glucose.hl7"));
    let segs = ack_segments(&ack);
    assert_eq!(
        segs[1],
        "MSA|AE|LAB0002|no route takes ORU\\S\\R01 from listener \"his\"; the message is kept with status unrouted"
    );
    assert!(segs[2].starts_with("ERR|||200^"), "{}", segs[2]);
    assert_eq!(
        engine.journal.wait_settled(1, SETTLE),
        Some(Status::Unrouted),
        "still journaled and visible"
    );
    // Routed messages are unaffected.
    let ack = his.send(&sample("adt_a04_dang_van_duc.hl7"));
    assert_eq!(msa_code(&ack), "AA");
    rt.block_on(engine.shutdown());
}

#[test]
fn a_second_engine_on_the_same_data_directory_is_refused() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let first = rt.block_on(start(dir.path()));
    let second = rt.block_on(halong::engine::Engine::start(config(dir.path(), "")));
    let err = second
        .err()
        .expect("the second engine must not start")
        .to_string();
    assert_eq!(
        err,
        format!(
            "the data directory {0} is in use by another halong process (it holds {0}/halong.lock); stop it, or give this one its own [data] dir",
            dir.path().display()
        )
    );
    rt.block_on(first.shutdown());
    // Released with the engine: a restart in the same process works.
    let again = rt.block_on(start(dir.path()));
    rt.block_on(again.shutdown());
}
