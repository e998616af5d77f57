use super::*;

fn entry(n: usize) -> NewEntry {
    NewEntry {
        listener: "lab".into(),
        peer: "127.0.0.1:1".into(),
        received_ms: 1_700_000_000_000 + n as i64,
        message_type: "ORU^R01".into(),
        control_id: format!("C{n}"),
        status: Status::Received,
        error: None,
        raw: format!("MSH|^~\\&|message {n}").into_bytes(),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn appends_are_durable_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
        for n in 1..=3 {
            assert_eq!(j.append_blocking(entry(n)).unwrap(), n as u64);
        }
        j.set_status(2, Status::Error, Some("bad date in PID-7".into()));
        j.sync_blocking().unwrap();
    }
    let j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    assert_eq!(j.durable_id(), 3);
    assert_eq!(j.read_raw(3).unwrap(), b"MSH|^~\\&|message 3");
    let e = j.entry(2).unwrap();
    assert_eq!(e.status, Status::Error);
    assert_eq!(e.error.as_deref(), Some("bad date in PID-7"));
    assert_eq!(&*e.control_id, "C2");
    assert_eq!(j.first_unprocessed(), 1);
    assert_eq!(
        j.append_blocking(entry(4)).unwrap(),
        4,
        "ids continue after reopen"
    );
}

#[test]
fn concurrent_appends_share_commits_and_all_get_distinct_ids() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    let rt = runtime();
    let ids = rt.block_on(async {
        let tasks: Vec<_> = (0..200)
            .map(|n| {
                let j = j.clone();
                tokio::spawn(async move { j.append(entry(n)).await.unwrap() })
            })
            .collect();
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.unwrap());
        }
        ids
    });
    let mut sorted = ids.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (1..=200).collect::<Vec<u64>>());
    assert_eq!(j.durable_id(), 200);
}

#[test]
fn failed_sync_fails_the_batch_and_consumes_no_ids() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    assert_eq!(j.append_blocking(entry(1)).unwrap(), 1);
    j.faults().fail_sync(true);
    let err = j.append_blocking(entry(2)).unwrap_err();
    assert!(matches!(err, JournalError::CommitFailed(_)), "{err}");
    assert!(j.is_failing());
    assert_eq!(j.durable_id(), 1);
    assert!(j.entry(2).is_none());
    j.faults().fail_sync(false);
    assert_eq!(j.append_blocking(entry(3)).unwrap(), 2);
    assert!(!j.is_failing());
    drop(j);
    let j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    assert_eq!(j.durable_id(), 2);
    assert_eq!(
        &*j.entry(2).unwrap().control_id,
        "C3",
        "the failed append left nothing behind"
    );
}

/// A status change rides with the next commit; when that commit fails, the change goes
/// with the one after, so it is not lost from disk while it stays in memory.
#[test]
fn status_frames_of_a_failed_commit_go_with_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    {
        let j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
        j.append_blocking(entry(1)).unwrap();
        j.faults().fail_sync(true);
        j.set_status(1, Status::Stored, None);
        assert!(j.sync_blocking().is_err());
        j.faults().fail_sync(false);
        j.sync_blocking().unwrap();
    }
    let j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    assert_eq!(j.entry(1).unwrap().status, Status::Stored);
    let stages: Vec<String> = j.trail(1).into_iter().map(|s| s.stage).collect();
    assert_eq!(stages, ["received", "stored"], "written once");
}

/// The committer's poll before it sleeps: it takes a command that is there, gives up
/// at its deadline, and stops at once when every sender is gone.
#[test]
fn the_committer_polls_until_its_deadline() {
    let (tx, rx) = std::sync::mpsc::channel();
    let far = std::time::Instant::now() + Duration::from_secs(60);
    tx.send(Cmd::Step(
        1,
        Step {
            stage: "x".into(),
            at_ms: 0,
            detail: None,
        },
    ))
    .unwrap();
    assert!(matches!(poll(&rx, far), Some(Cmd::Step(1, _))));
    assert!(
        poll(&rx, std::time::Instant::now()).is_none(),
        "nothing came"
    );
    drop(tx);
    assert!(
        poll(&rx, far).is_none(),
        "no sender left: no wait until the deadline"
    );
}

/// Where the frames of the current segment end (an entry's raw bytes end its frame).
fn frames_end(j: &Journal) -> u64 {
    let index = j.shared.index.read().unwrap();
    let last = index.entries.last().unwrap();
    last.raw_offset + u64::from(last.size)
}

#[test]
fn torn_tail_is_cut_off_at_open() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let end = {
        let j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
        j.append_blocking(entry(1)).unwrap();
        j.append_blocking(entry(2)).unwrap();
        frames_end(&j)
    };
    let seg = segment_path(dir.path(), 1);
    let data = std::fs::read(&seg).unwrap();
    assert!(
        data.len() as u64 > end && is_zero_tail(&data[end as usize..]),
        "zeros are written ahead of the frames"
    );
    // A torn write: half of a third frame, where the next commit writes.
    let mut third = Vec::new();
    frame::encode_entry(
        &mut third,
        &frame::EntryFields {
            id: 3,
            received_ms: 0,
            status: Status::Received,
            listener: "lab",
            peer: "",
            message_type: "",
            control_id: "",
            error: "",
            raw: b"MSH|torn",
        },
    );
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    f.write_all_at(&third[..third.len() / 2], end).unwrap();
    drop(f);
    let j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    assert_eq!(j.durable_id(), 2);
    assert_eq!(
        std::fs::metadata(&seg).unwrap().len(),
        end,
        "cut at the torn frame"
    );
    assert_eq!(j.append_blocking(entry(3)).unwrap(), 3);
    drop(j);
    let j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    assert_eq!(j.read_raw(3).unwrap(), b"MSH|^~\\&|message 3");
}

/// Zeros written ahead end a segment wherever they are: in the current one (the next
/// commit writes over them) and in an earlier one a crash left untrimmed at rotation.
#[test]
fn zeros_written_ahead_end_a_segment_and_are_written_over() {
    let dir = tempfile::tempdir().unwrap();
    let end = {
        let j = Journal::open(dir.path(), JournalOptions { segment_bytes: 200 }).unwrap();
        for n in 1..=4 {
            j.append_blocking(entry(n)).unwrap();
        }
        frames_end(&j)
    };
    let segments = list_segments(dir.path()).unwrap();
    assert!(segments.len() > 1);
    let first = segment_path(dir.path(), segments[0]);
    let trimmed = std::fs::read(&first).unwrap();
    assert!(
        !is_zero_tail(&trimmed[trimmed.len() - 1..]),
        "a finished segment is trimmed to its frames"
    );
    // As if a crash came before the trim.
    let mut untrimmed = trimmed.clone();
    untrimmed.extend(std::iter::repeat_n(0u8, 5000));
    std::fs::write(&first, &untrimmed).unwrap();

    let current = segment_path(dir.path(), *segments.last().unwrap());
    let prepared = std::fs::metadata(&current).unwrap().len();
    assert!(prepared >= end + ZERO_AHEAD / 2);
    let j = Journal::open(dir.path(), JournalOptions { segment_bytes: 200 }).unwrap();
    assert_eq!(j.durable_id(), 4);
    assert_eq!(
        std::fs::metadata(&current).unwrap().len(),
        prepared,
        "the zeros ahead are kept, not cut off as a torn write"
    );
    assert_eq!(j.append_blocking(entry(5)).unwrap(), 5);
    assert!(
        frames_end(&j) > end,
        "written over the zeros, in the same segment"
    );
    drop(j);
    let j = Journal::open(dir.path(), JournalOptions { segment_bytes: 200 }).unwrap();
    for n in 1..=5u64 {
        assert_eq!(
            j.read_raw(n).unwrap(),
            format!("MSH|^~\\&|message {n}").into_bytes()
        );
    }
}

#[test]
fn damage_in_the_middle_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
        for n in 1..=3 {
            j.append_blocking(entry(n)).unwrap();
        }
    }
    let seg = segment_path(dir.path(), 1);
    let mut data = std::fs::read(&seg).unwrap();
    data[frame::HEADER_LEN + 3] ^= 0x55; // inside the first frame's payload
    std::fs::write(&seg, &data).unwrap();
    let err = Journal::open(dir.path(), JournalOptions::default())
        .err()
        .expect("must refuse");
    let text = err.to_string();
    assert!(
        text.contains("00000001.seg is damaged at byte 0: checksum mismatch"),
        "{text}"
    );
}

#[test]
fn segments_rotate_and_stay_readable() {
    let dir = tempfile::tempdir().unwrap();
    {
        let j = Journal::open(dir.path(), JournalOptions { segment_bytes: 200 }).unwrap();
        for n in 1..=10 {
            j.append_blocking(entry(n)).unwrap();
        }
        assert_eq!(j.read_raw(1).unwrap(), b"MSH|^~\\&|message 1");
    }
    assert!(list_segments(dir.path()).unwrap().len() > 1);
    let j = Journal::open(dir.path(), JournalOptions { segment_bytes: 200 }).unwrap();
    assert_eq!(j.durable_id(), 10);
    for n in 1..=10u64 {
        assert_eq!(
            j.read_raw(n).unwrap(),
            format!("MSH|^~\\&|message {n}").into_bytes()
        );
    }
}

#[test]
fn cursor_points_at_the_first_unprocessed_entry() {
    let dir = tempfile::tempdir().unwrap();
    let j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    for n in 1..=4 {
        j.append_blocking(entry(n)).unwrap();
    }
    j.set_statuses(vec![(1, Status::Stored, None), (2, Status::Unrouted, None)]);
    assert_eq!(j.first_unprocessed(), 3);
    j.set_statuses(vec![(3, Status::Queued, None), (4, Status::Stored, None)]);
    assert_eq!(j.first_unprocessed(), 5);
    assert_eq!(j.ids_with_status(Status::Queued), vec![3]);
}

#[test]
fn a_late_queued_never_overwrites_stored() {
    let dir = tempfile::tempdir().unwrap();
    {
        let j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
        j.append_blocking(entry(1)).unwrap();
        j.set_status(1, Status::Stored, None);
        j.set_status(1, Status::Queued, None);
        assert_eq!(j.entry(1).unwrap().status, Status::Stored);
        j.sync_blocking().unwrap();
    }
    let j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    assert_eq!(
        j.entry(1).unwrap().status,
        Status::Stored,
        "and on disk too"
    );
}

#[test]
fn trails_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let before = {
        let j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
        for n in 1..=3 {
            j.append_blocking(entry(n)).unwrap();
        }
        j.set_route(1, "lab-results");
        j.set_status(
            1,
            Status::Error,
            Some("route \"lab-results\": bad date".into()),
        );
        j.add_step(1, "replay", None);
        j.set_route(1, "lab-results");
        j.set_statuses(vec![
            (1, Status::Queued, None),
            (2, Status::Unrouted, Some("no route".into())),
        ]);
        j.set_status(1, Status::Stored, None);
        j.sync_blocking().unwrap();
        (j.trail(1), j.trail(2), j.trail(3))
    };
    let stages: Vec<&str> = before.0.iter().map(|s| s.stage.as_str()).collect();
    assert_eq!(
        stages,
        ["received", "routed", "error", "replay", "routed", "queued", "stored"]
    );
    let j = Journal::open(dir.path(), JournalOptions::default()).unwrap();
    assert_eq!(
        (j.trail(1), j.trail(2), j.trail(3)),
        before,
        "the same steps, times and details"
    );
    assert_eq!(j.trail(3).len(), 1, "only its arrival");
    assert_eq!(j.entry(1).unwrap().route_name(), Some("lab-results"));
    assert_eq!(j.entry(1).unwrap().status, Status::Stored);
}
