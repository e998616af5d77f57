//! Retention: old journal segments go once every message in them is stored; nothing
//! not yet stored is ever pruned; ids continue after a restart.

use halong::journal::{Journal, JournalOptions, NewEntry, Status};

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
