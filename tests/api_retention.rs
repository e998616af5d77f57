//! Retention: old journal segments go once every message in them is stored; nothing
//! not yet stored is ever pruned; ids continue after a restart. Archived DICOM files go
//! by age unless a journal entry still needs them, and a DICOM entry goes only after its
//! file.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use halong::dicom::{InstanceRef, FORMAT};
use halong::journal::{Journal, JournalOptions, NewEntry, Status};
use halong::listeners::dicom::Archive;
use halong::retention::{run_once, Policy};

fn entry(n: u64, received_ms: i64) -> NewEntry {
    NewEntry {
        listener: "lab".into(),
        peer: "127.0.0.1:1".into(),
        received_ms,
        message_type: "ORU^R01".into(),
        control_id: format!("C{n}"),
        status: Status::Received,
        error: None,
        // ~600 bytes: with 1 KiB segments, two entries per segment.
        raw: format!(
            "MSH|^~\\&|LAB|X|||||ORU^R01|C{n}|P|2.5\r{}",
            "x".repeat(560)
        )
        .into_bytes(),
    }
}

fn segments(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".seg"))
        .collect();
    v.sort();
    v
}

#[test]
fn prunes_only_stored_old_segments_and_keeps_ids_dense() {
    let dir = tempfile::tempdir().unwrap();
    let jdir = dir.path().join("journal");
    let options = JournalOptions {
        segment_bytes: 1024,
    };
    let journal = Journal::open(&jdir, options.clone()).unwrap();
    let old = 1_000;
    let new = 10_000;
    // ids 1..=8 old, 9..=10 new.
    for n in 1..=10u64 {
        let at = if n <= 8 { old } else { new };
        assert_eq!(journal.append_blocking(entry(n, at)).unwrap(), n);
    }
    let segs_before = segments(&jdir);
    assert!(segs_before.len() >= 4, "small segments: {segs_before:?}");
    // Nothing stored yet: nothing goes.
    let r = journal.prune(5_000).unwrap();
    assert_eq!((r.segments, r.entries, r.first_kept), (0, 0, 1));

    // 1..=5 stored, 6 is an error: only whole segments of stored messages before 6 go.
    journal.set_statuses((1..=5).map(|id| (id, Status::Stored, None)).collect());
    journal.set_status(6, Status::Error, Some("mapping failed".into()));
    journal.set_statuses((7..=10).map(|id| (id, Status::Stored, None)).collect());
    let r = journal.prune(5_000).unwrap();
    assert!(r.entries >= 2 && r.entries <= 5, "{r:?}");
    assert!(r.first_kept <= 6, "the error message is kept: {r:?}");
    for id in 1..r.first_kept {
        assert!(journal.entry(id).is_none(), "{id} pruned");
    }
    for id in r.first_kept..=10 {
        assert!(journal.entry(id).is_some(), "{id} kept");
        assert_eq!(journal.read_raw(id).unwrap().len(), entry(id, 0).raw.len());
    }
    let now = segments(&jdir);
    let (gone, kept) = segs_before.split_at(r.segments as usize);
    assert!(
        gone.iter().all(|g| !now.contains(g)),
        "{gone:?} deleted: {now:?}"
    );
    assert!(
        kept.iter().all(|k| now.contains(k)),
        "{kept:?} kept: {now:?}"
    );
    let first_kept = r.first_kept;

    // A second pass with the error still there prunes nothing more.
    let r = journal.prune(5_000).unwrap();
    assert_eq!(r.entries, 0);
    // Once replayed into stored, its segment may go, but not the new messages.
    journal.set_status(6, Status::Stored, None);
    let r = journal.prune(5_000).unwrap();
    assert!(r.first_kept > 6 && r.first_kept <= 9, "{r:?}");
    assert!(
        journal.entry(9).is_some() && journal.entry(10).is_some(),
        "new messages stay"
    );
    let first_kept = first_kept.max(r.first_kept);

    // Restart: the index starts at the oldest kept id and ids continue.
    drop(journal);
    let journal = Journal::open(&jdir, options).unwrap();
    assert!(journal.entry(first_kept - 1).is_none());
    assert_eq!(
        journal.entry(first_kept).unwrap().control_id.as_ref(),
        format!("C{first_kept}")
    );
    assert_eq!(journal.entry(10).unwrap().status, Status::Stored);
    assert_eq!(journal.durable_id(), 10);
    assert_eq!(journal.first_unprocessed(), 11);
    assert_eq!(journal.append_blocking(entry(11, new)).unwrap(), 11);
    assert_eq!(journal.first_unprocessed(), 11);
    let recent: Vec<u64> = journal.recent(100, None).iter().map(|e| e.id).collect();
    assert_eq!(recent, (first_kept..=11).rev().collect::<Vec<_>>());
}

const DAY: Duration = Duration::from_secs(86_400);

fn ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Archives one instance through the archive's own placement, last written `age` ago.
fn archived(archive: &Archive, uids: (&str, &str, &str), now: SystemTime, age: Duration) -> String {
    let (study, series, instance) = uids;
    let tmp = archive
        .root()
        .join("incoming")
        .join(format!("{instance}.part"));
    std::fs::write(&tmp, b"DICM and a dataset").unwrap();
    let file = std::fs::File::options().write(true).open(&tmp).unwrap();
    let rel = archive.place(&tmp, &file, study, series, instance).unwrap();
    file.set_modified(now - age).unwrap();
    rel
}

/// A refused instance's copy under `failed/`, written `age` ago.
fn refused(archive: &Archive, name: &str, now: SystemTime, age: Duration) -> String {
    let tmp = archive.root().join("incoming").join(format!("{name}.part"));
    std::fs::write(&tmp, b"not DICOM").unwrap();
    let rel = archive.keep_failed(&tmp).unwrap();
    std::fs::File::options()
        .write(true)
        .open(archive.root().join(&rel))
        .unwrap()
        .set_modified(now - age)
        .unwrap();
    rel
}

fn dicom_entry(rel: &str, sop_instance: &str, received_ms: i64, status: Status) -> NewEntry {
    let reference = InstanceRef {
        format: FORMAT.into(),
        path: rel.into(),
        calling_ae: "CT01".into(),
        called_ae: "HALONG".into(),
        transfer_syntax: "1.2.840.10008.1.2.1".into(),
        sop_class: "1.2.840.10008.5.1.4.1.1.2".into(),
        sop_instance: sop_instance.into(),
        dataset_bytes: 18,
        attributes: Default::default(),
        inline_bytes: 0,
    };
    NewEntry {
        listener: "pacs".into(),
        peer: "127.0.0.1:1".into(),
        received_ms,
        message_type: "DICOM^CT".into(),
        control_id: sop_instance.into(),
        status,
        error: (status == Status::Error).then(|| "mapping failed".to_string()),
        raw: reference.to_json(),
    }
}

fn exists(archive: &Archive, rel: &str) -> bool {
    archive.root().join(rel).exists()
}

#[test]
fn archive_retention_keeps_what_is_not_yet_stored() {
    let dir = tempfile::tempdir().unwrap();
    let archive = Archive::open(&dir.path().join("dicom")).unwrap();
    let journal = Journal::open(&dir.path().join("journal"), JournalOptions::default()).unwrap();
    let now = SystemTime::now();
    let old = 40 * DAY;
    let at = |age: Duration| ms(now - age);

    // (label, file, status of its entry): every file is older than the 30-day cutoff
    // except "recent".
    let stored = archived(&archive, ("1.1", "1.1.1", "1.1.1.1"), now, old);
    let stored_sibling = archived(&archive, ("1.1", "1.1.2", "1.1.2.1"), now, old);
    let waiting = archived(&archive, ("1.1", "1.1.2", "1.1.2.2"), now, old);
    let mapping_error = archived(&archive, ("1.2", "1.2.1", "1.2.1.1"), now, old);
    let unrouted = archived(&archive, ("1.2", "1.2.1", "1.2.1.2"), now, old);
    let in_outbox = archived(&archive, ("1.3", "1.3.1", "1.3.1.1"), now, old);
    let recent = archived(&archive, ("1.4", "1.4.1", "1.4.1.1"), now, DAY);
    let resent = archived(&archive, ("1.5", "1.5.1", "1.5.1.1"), now, old);
    let orphan = archived(&archive, ("1.6", "1.6.1", "1.6.1.1"), now, old);
    let refused_copy = refused(&archive, "7-1", now, old);
    let refused_recent = refused(&archive, "7-2", now, DAY);
    for (rel, sop, status) in [
        (&stored, "1.1.1.1", Status::Stored),
        (&stored_sibling, "1.1.2.1", Status::Stored),
        (&waiting, "1.1.2.2", Status::Received),
        (&mapping_error, "1.2.1.1", Status::Error),
        (&unrouted, "1.2.1.2", Status::Unrouted),
        (&in_outbox, "1.3.1.1", Status::Queued),
        (&recent, "1.4.1.1", Status::Stored),
        // Stored long ago, then the same instance arrived again and is not stored yet.
        (&resent, "1.5.1.1", Status::Stored),
        (&resent, "1.5.1.1", Status::Routed),
        (&refused_copy, "7.1", Status::Error),
        (&refused_recent, "7.2", Status::Error),
    ] {
        journal
            .append_blocking(dicom_entry(rel, sop, at(old), status))
            .unwrap();
    }

    // Retention off for the archive: nothing goes.
    let off = Policy {
        journal_days: 0,
        dicom_days: 0,
        error_days: 0,
        queued_is_done: false,
    };
    let r = run_once(&journal, Some(&archive), &off, now).unwrap();
    assert_eq!(r.archive.files, 0);
    assert!(exists(&archive, &stored) && exists(&archive, &orphan));

    let embedded = Policy {
        journal_days: 0,
        dicom_days: 30,
        error_days: 0,
        queued_is_done: false,
    };
    let r = run_once(&journal, Some(&archive), &embedded, now).unwrap();
    for gone in [&stored, &stored_sibling, &orphan, &refused_copy] {
        assert!(!exists(&archive, gone), "{gone} pruned");
    }
    for kept in [
        &waiting,
        &mapping_error,
        &unrouted,
        &in_outbox,
        &recent,
        &resent,
        &refused_recent,
    ] {
        assert!(exists(&archive, kept), "{kept} kept");
    }
    assert_eq!((r.archive.files, r.archive.held), (4, 5), "{r:?}");
    // Emptied directories go: study 1.6 and series 1.1.1 entirely; 1.1 keeps 1.1.2.
    assert!(!archive.root().join("1.6").exists());
    assert!(!archive.root().join("1.1/1.1.1").exists());
    assert!(archive.root().join("1.1/1.1.2").is_dir());
    assert!(archive.root().join("failed").is_dir());
    assert!(archive.root().join("incoming").is_dir());
    assert_eq!(r.archive.dirs, 3, "{r:?}");
    // The journal is untouched: its entries stay, with their status.
    assert_eq!(journal.entry(1).unwrap().status, Status::Stored);

    // Through RabbitMQ, `queued` is finished: the broker has the records.
    let amqp = Policy {
        error_days: 0,
        queued_is_done: true,
        ..embedded
    };
    let r = run_once(&journal, Some(&archive), &amqp, now).unwrap();
    assert_eq!(r.archive.files, 1, "{r:?}");
    assert!(!exists(&archive, &in_outbox));
    assert!(!archive.root().join("1.3").exists());

    // Once the waiting and the resent instances are stored, their files may go too; the
    // error and the unrouted instance still stay.
    journal.set_status(3, Status::Stored, None);
    journal.set_status(9, Status::Stored, None);
    let r = run_once(&journal, Some(&archive), &embedded, now).unwrap();
    assert_eq!(r.archive.files, 2, "{r:?}");
    assert!(!archive.root().join("1.1").exists() && !archive.root().join("1.5").exists());
    assert!(exists(&archive, &mapping_error) && exists(&archive, &unrouted));

    // A placement after the pass is untouched by the next one: the same instance sent
    // again is a new file, judged by its new time.
    let again = archived(&archive, ("1.1", "1.1.1", "1.1.1.1"), now, Duration::ZERO);
    assert_eq!(again, stored);
    run_once(&journal, Some(&archive), &embedded, now).unwrap();
    assert!(exists(&archive, &again));
}

/// An unfinished DICOM entry that cannot be read might name any file: the archive pass
/// fails with the entry's id and prunes nothing, rather than losing that file.
#[test]
fn an_unreadable_unfinished_entry_stops_archive_retention() {
    let dir = tempfile::tempdir().unwrap();
    let archive = Archive::open(&dir.path().join("dicom")).unwrap();
    let journal = Journal::open(&dir.path().join("journal"), JournalOptions::default()).unwrap();
    let now = SystemTime::now();
    let old = 40 * DAY;
    let waiting = archived(&archive, ("1.1", "1.1.1", "1.1.1.1"), now, old);
    let mut broken = dicom_entry(&waiting, "1.1.1.1", ms(now - old), Status::Received);
    // A reference line whose attributes cannot be read.
    let mut raw = broken.raw.clone();
    let at = raw
        .windows(2)
        .position(|w| w == b"{}")
        .expect("empty attributes");
    raw.splice(at..at + 2, br#"{"PatientName":"x"}"#.iter().copied());
    broken.raw = raw;
    journal.append_blocking(broken).unwrap();

    let policy = Policy {
        journal_days: 0,
        dicom_days: 30,
        error_days: 0,
        queued_is_done: false,
    };
    let e = run_once(&journal, Some(&archive), &policy, now).unwrap_err();
    assert!(
        e.to_string().contains("journal entry 1 cannot be read"),
        "{e}"
    );
    assert!(exists(&archive, &waiting), "the file it may need stays");
}

/// An archive and a journal with one entry per segment, so each entry can go on its own.
fn archive_and_journal() -> (tempfile::TempDir, Archive, Journal) {
    let dir = tempfile::tempdir().unwrap();
    let archive = Archive::open(&dir.path().join("dicom")).unwrap();
    let journal = Journal::open(
        &dir.path().join("journal"),
        JournalOptions { segment_bytes: 1 },
    )
    .unwrap();
    (dir, archive, journal)
}

#[test]
fn a_dicom_entry_goes_only_after_its_file() {
    let (_dir, archive, journal) = archive_and_journal();
    let now = SystemTime::now();
    let hl7 = |n: u64, age: Duration| {
        let mut e = entry(n, ms(now - age));
        e.status = Status::Stored;
        e
    };
    let old_file = archived(&archive, ("2.1", "2.1.1", "2.1.1.1"), now, 20 * DAY);
    let newer_file = archived(&archive, ("2.1", "2.1.1", "2.1.1.2"), now, 5 * DAY);
    journal.append_blocking(hl7(1, 20 * DAY)).unwrap();
    journal
        .append_blocking(dicom_entry(
            &old_file,
            "2.1.1.1",
            ms(now - 20 * DAY),
            Status::Stored,
        ))
        .unwrap();
    journal
        .append_blocking(dicom_entry(
            &newer_file,
            "2.1.1.2",
            ms(now - 5 * DAY),
            Status::Stored,
        ))
        .unwrap();
    journal.append_blocking(hl7(4, 5 * DAY)).unwrap();
    journal.append_blocking(hl7(5, Duration::ZERO)).unwrap();

    // Journal: 1 day; archive: 10 days. Entry 3 is past the journal's day but its file
    // (5 days) stays, so the entry stays, and with it everything after it.
    let policy = Policy {
        journal_days: 1,
        dicom_days: 10,
        error_days: 0,
        queued_is_done: false,
    };
    let r = run_once(&journal, Some(&archive), &policy, now).unwrap();
    assert_eq!(r.archive.files, 1);
    assert!(!exists(&archive, &old_file) && exists(&archive, &newer_file));
    assert_eq!(r.journal.first_kept, 3, "{r:?}");
    assert!(journal.entry(2).is_none() && journal.entry(3).is_some());

    // Six days later the file is 11 days old: file first, then its entry and the ones
    // after it that are past a day.
    let later = now + 6 * DAY;
    let r = run_once(&journal, Some(&archive), &policy, later).unwrap();
    assert_eq!(r.archive.files, 1);
    assert!(!exists(&archive, &newer_file));
    assert!(!archive.root().join("2.1").exists());
    assert_eq!(r.journal.first_kept, 6, "{r:?}");

    // Without archive retention a DICOM entry is never pruned (its file is kept forever).
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), JournalOptions { segment_bytes: 1 }).unwrap();
    journal
        .append_blocking(dicom_entry(
            "3.1/3.1.1/3.1.1.1.dcm",
            "3.1.1.1",
            ms(now - 20 * DAY),
            Status::Stored,
        ))
        .unwrap();
    journal.append_blocking(hl7(2, 20 * DAY)).unwrap();
    let keep_files = Policy {
        journal_days: 1,
        dicom_days: 0,
        error_days: 0,
        queued_is_done: false,
    };
    let r = run_once(&journal, None, &keep_files, now).unwrap();
    assert_eq!((r.journal.entries, r.journal.first_kept), (0, 1));
}

#[test]
fn journal_retention_through_rabbitmq_counts_queued_as_finished() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), JournalOptions { segment_bytes: 1 }).unwrap();
    let now = SystemTime::now();
    for n in 1..=3 {
        let mut e = entry(n, ms(now - 5 * DAY));
        e.status = if n == 3 {
            Status::Mapped
        } else {
            Status::Queued
        };
        journal.append_blocking(e).unwrap();
    }
    journal.append_blocking(entry(4, ms(now))).unwrap();
    let mut policy = Policy {
        journal_days: 1,
        dicom_days: 0,
        error_days: 0,
        queued_is_done: false,
    };
    // Embedded: `queued` records are still in the outbox.
    let r = run_once(&journal, None, &policy, now).unwrap();
    assert_eq!(r.journal.entries, 0);
    policy.queued_is_done = true;
    let r = run_once(&journal, None, &policy, now).unwrap();
    // 1 and 2 go; 3 (mapped, not yet confirmed by the broker) stops the pass.
    assert_eq!((r.journal.entries, r.journal.first_kept), (2, 3));
}

#[test]
fn errors_older_than_error_retention_stop_blocking_the_journal() {
    let (_dir, archive, journal) = archive_and_journal();
    let now = SystemTime::now();
    let at = |age: Duration| ms(now - age);
    // 1 stored, 2 an error (no mapping will ever take it), 3 stored, 4 unrouted, 5 a
    // DICOM instance in error with its file, 6 stored, 7 an error of last week, 8 new.
    let file = archived(&archive, ("2.1", "2.1.1", "2.1.1.1"), now, 100 * DAY);
    let mut entries = Vec::new();
    for (n, status) in [
        (1, Status::Stored),
        (2, Status::Error),
        (3, Status::Stored),
        (4, Status::Unrouted),
    ] {
        let mut e = entry(n, at(100 * DAY));
        e.status = status;
        entries.push(e);
    }
    entries.push(dicom_entry(&file, "2.1.1.1", at(100 * DAY), Status::Error));
    let mut e = entry(6, at(100 * DAY));
    e.status = Status::Stored;
    entries.push(e);
    let mut e = entry(7, at(7 * DAY));
    e.status = Status::Error;
    entries.push(e);
    entries.push(entry(8, at(Duration::ZERO)));
    for e in entries {
        journal.append_blocking(e).unwrap();
    }

    // Errors kept (the default): the error at 2 stops the journal, its file stays.
    let mut policy = Policy {
        journal_days: 30,
        dicom_days: 30,
        error_days: 0,
        queued_is_done: false,
    };
    let r = run_once(&journal, Some(&archive), &policy, now).unwrap();
    assert_eq!((r.journal.entries, r.journal.first_kept), (1, 2), "{r:?}");
    assert_eq!(r.given_up, 0);
    assert!(exists(&archive, &file));
    assert_eq!(journal.entry(2).unwrap().status, Status::Error);

    // Errors kept 90 days: the three older ones go, with the file, the DICOM entry
    // after its file; last week's error stops the pass and stays inspectable.
    policy.error_days = 90;
    let r = run_once(&journal, Some(&archive), &policy, now).unwrap();
    assert!(
        !exists(&archive, &file),
        "the given-up instance's file goes first"
    );
    assert_eq!((r.journal.entries, r.journal.first_kept), (5, 7), "{r:?}");
    // 2, 4 and 5 were never stored: counted, so the engine can say so.
    assert_eq!(r.given_up, 3);
    let kept = journal.entry(7).unwrap();
    assert_eq!((kept.status, kept.error.as_deref()), (Status::Error, None));
    assert_eq!(journal.read_raw(7).unwrap(), entry(7, 0).raw);

    // A longer error retention keeps last week's error (and so the new message too).
    policy.error_days = 365;
    let r = run_once(&journal, Some(&archive), &policy, now).unwrap();
    assert_eq!(
        (r.journal.entries, r.journal.first_kept, r.given_up),
        (0, 7, 0)
    );
}

#[test]
fn an_entry_carrying_its_instance_or_a_long_reference_still_holds_its_file() {
    let (_dir, archive, journal) = archive_and_journal();
    let now = SystemTime::now();
    let old = 40 * DAY;
    let carried = archived(&archive, ("3.1", "3.1.1", "3.1.1.1"), now, old);
    let long = archived(&archive, ("3.1", "3.1.1", "3.1.1.2"), now, old);
    let gone = archived(&archive, ("3.1", "3.1.1", "3.1.1.3"), now, old);
    // Waiting to be mapped: one entry with 200 KB of instance bytes after its
    // reference, one whose reference (many text attributes) is longer than what
    // retention reads first.
    let mut with_bytes = dicom_entry(&carried, "3.1.1.1", ms(now - old), Status::Received);
    let mut reference: InstanceRef = serde_json::from_slice(&with_bytes.raw).expect("a reference");
    with_bytes.raw = reference.to_journal_with(&vec![7u8; 200_000]);
    let mut long_entry = dicom_entry(&long, "3.1.1.2", ms(now - old), Status::Routed);
    let mut reference: InstanceRef = serde_json::from_slice(&long_entry.raw).expect("a reference");
    for n in 0..100u32 {
        reference
            .attributes
            .insert(0x0009_1000 + n, "x".repeat(1_000));
    }
    long_entry.raw = reference.to_json();
    assert!(long_entry.raw.len() > 64 << 10);
    for e in [
        with_bytes,
        long_entry,
        dicom_entry(&gone, "3.1.1.3", ms(now - old), Status::Stored),
    ] {
        journal.append_blocking(e).unwrap();
    }
    let policy = Policy {
        journal_days: 0,
        dicom_days: 30,
        error_days: 0,
        queued_is_done: false,
    };
    let r = run_once(&journal, Some(&archive), &policy, now).unwrap();
    assert_eq!((r.archive.files, r.archive.held), (1, 2), "{r:?}");
    assert!(exists(&archive, &carried) && exists(&archive, &long));
    assert!(!exists(&archive, &gone));
}
