//! The Part 10 archive: `<data>/dicom/<study>/<series>/<instance>.dcm`.
//!
//! Every archived file is the file meta information (PS3.10 §7.1) followed by the
//! dataset exactly as the sender sent it, in the negotiated transfer syntax. Two ways in:
//!
//! - **Small instances** (dataset up to [`INLINE_MAX`]) are gathered in memory. When the
//!   last fragment is in, the journal entry is written carrying the whole file, so the
//!   C-STORE success waits for one sync only, the journal's, and for no file creation.
//!   The pipeline then writes each such file from the journal entry to `incoming/` and
//!   renames it to its place (or checks it, and rewrites it the same way if a crash
//!   damaged it) and syncs the archive once per round ([`Settle`]) before the entry can
//!   be marked processed.
//! - **Large instances** are streamed to a file in `incoming/` fragment by fragment;
//!   when the last one is in, the file is synced, renamed to its place and the directory
//!   synced ([`Archive::place`]); the journal entry is a reference to it.
//!
//! Files left in `incoming/` by a crash were never acknowledged (or, for a small
//! instance, are written again from its journal entry) and are removed at start.

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncWriteExt, BufWriter};

/// Datasets up to this size are carried in their journal entry (see the module doc).
/// 1 MiB holds a CT or MR slice (512 × 512 × 16 bits is 512 KiB) and most structured
/// reports, key objects and presentation states: the instances that arrive by the
/// thousand, where a second sync per instance would halve throughput. Larger ones
/// (CR/DX, multi-frame) are bandwidth-bound and keep the streamed path, so memory stays
/// bounded whatever their size.
pub const INLINE_MAX: usize = 1024 * 1024;

/// All associations together hold at most this many dataset bytes in memory; an
/// instance that would pass it takes the streamed path instead.
pub const INLINE_BUDGET: usize = 64 * 1024 * 1024;

/// Implementation Class UID written in the file meta of archived files (a UUID-derived
/// UID under the 2.25 root).
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.178903328149201740153276493128655032501";
/// Implementation Version Name (SH, at most 16 characters).
pub const IMPLEMENTATION_VERSION: &str = "HALONG_0_1";

/// A buffer of this many bytes sits between PDVs and the file.
const WRITE_BUFFER: usize = 1024 * 1024;

/// The archive under one data directory.
#[derive(Debug)]
pub struct Archive {
    root: PathBuf,
    incoming: PathBuf,
    seq: AtomicU64,
    /// Study and series directories whose entry in their parent this process has synced.
    /// A directory another association created is synced again rather than assumed
    /// durable (its creator may not have synced it yet).
    durable_dirs: std::sync::Mutex<HashSet<PathBuf>>,
    /// Held while a file is moved into place and while retention removes one, so a file
    /// placed again during a retention pass is judged by its new time, and a directory is
    /// never removed between its creation and the rename into it.
    layout: std::sync::Mutex<()>,
    /// Dataset bytes held in memory by small instances being received.
    inline_held: AtomicUsize,
    faults: ArchiveFaults,
}

/// Deliberate failures, for tests that prove a full disk gets A700 and leaves the
/// association usable.
#[derive(Debug, Default)]
pub struct ArchiveFaults {
    fail_writes: AtomicU32,
}

impl ArchiveFaults {
    /// The next `n` instances fail to be written as if the disk were full (ENOSPC).
    pub fn fail_next_writes(&self, n: u32) {
        self.fail_writes.store(n, Ordering::SeqCst);
    }

    /// Injected failures not met yet.
    pub fn pending_failures(&self) -> u32 {
        self.fail_writes.load(Ordering::SeqCst)
    }

    fn check(&self) -> io::Result<()> {
        let took = self
            .fail_writes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        match took {
            Ok(_) => Err(io::Error::from_raw_os_error(libc::ENOSPC)),
            Err(_) => Ok(()),
        }
    }
}

/// Memory held for one small instance, given back when dropped.
pub struct Held {
    archive: Arc<Archive>,
    bytes: usize,
}

impl Held {
    /// Holds `n` more bytes, unless that would pass [`INLINE_MAX`] for this instance or
    /// [`INLINE_BUDGET`] for all.
    pub fn grow(&mut self, n: usize) -> bool {
        if self.bytes + n > INLINE_MAX {
            return false;
        }
        let budget = &self.archive.inline_held;
        let ok = budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                (held + n <= INLINE_BUDGET).then_some(held + n)
            })
            .is_ok();
        if ok {
            self.bytes += n;
        }
        ok
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.archive
            .inline_held
            .fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

/// What [`Archive::prune`] removed or kept.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ArchivePruneReport {
    /// Files removed, and their bytes.
    pub files: u64,
    pub bytes: u64,
    /// Study and series directories removed because they were left empty.
    pub dirs: u64,
    /// Files old enough to go that stayed because a journal entry still needs them.
    pub held: u64,
}

/// Above this many remembered directories the set starts again (costs one sync each).
const MAX_REMEMBERED_DIRS: usize = 100_000;

/// An instance being received.
pub struct Incoming {
    file: BufWriter<tokio::fs::File>,
    path: PathBuf,
    /// Dataset bytes written so far.
    pub dataset_bytes: u64,
}

impl Archive {
    /// Opens (creates) `root` and clears `root/incoming`.
    pub fn open(root: &Path) -> io::Result<Archive> {
        let incoming = root.join("incoming");
        std::fs::create_dir_all(&incoming)?;
        for e in std::fs::read_dir(&incoming)?.flatten() {
            let _ = std::fs::remove_file(e.path());
        }
        Ok(Archive {
            root: root.to_path_buf(),
            incoming,
            seq: AtomicU64::new(0),
            durable_dirs: Default::default(),
            inline_held: AtomicUsize::new(0),
            faults: ArchiveFaults::default(),
            layout: Default::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn faults(&self) -> &ArchiveFaults {
        &self.faults
    }

    /// Starts holding a small instance in memory (see [`Held::grow`]).
    pub fn hold(self: &Arc<Self>) -> Held {
        Held {
            archive: self.clone(),
            bytes: 0,
        }
    }

    /// Starts a file for one streamed instance and writes `head` (the file meta
    /// information, and the first `dataset_bytes` of the dataset when some were already
    /// received).
    pub async fn begin(&self, head: &[u8], dataset_bytes: u64) -> io::Result<Incoming> {
        self.faults.check()?;
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let path = self
            .incoming
            .join(format!("{}-{n}.part", std::process::id()));
        let file = tokio::fs::File::create(&path).await?;
        let mut file = BufWriter::with_capacity(WRITE_BUFFER, file);
        if let Err(e) = file.write_all(head).await {
            drop(file);
            let _ = tokio::fs::remove_file(&path).await;
            return Err(e);
        }
        Ok(Incoming {
            file,
            path,
            dataset_bytes,
        })
    }

    /// Where an instance is filed: `<study>/<series>/<instance>.dcm`, relative to the
    /// archive root (the UIDs checked with [`is_safe_uid`] by the caller).
    pub fn relative_path(study: &str, series: &str, instance: &str) -> String {
        format!("{study}/{series}/{instance}.dcm")
    }

    /// Moves a finished file to `<study>/<series>/<instance>.dcm` (replacing an earlier
    /// copy of the same instance), then syncs the file's data and the directories, the
    /// two at once. Returns the path relative to the archive root once both are durable.
    /// (A crash before that may leave a file in place that no journal entry names and no
    /// success answered; the sender sends it again and it is replaced.)
    pub fn place(
        &self,
        tmp: &Path,
        file: &std::fs::File,
        study: &str,
        series: &str,
        instance: &str,
    ) -> io::Result<String> {
        let rel = Archive::relative_path(study, series, instance);
        let study_dir = self.root.join(study);
        let series_dir = study_dir.join(series);
        let known = |d: &Path| {
            self.durable_dirs
                .lock()
                .map(|set| set.contains(d))
                .unwrap_or(false)
        };
        let (new_study, new_series) = {
            let _layout = self.layout.lock().unwrap_or_else(|p| p.into_inner());
            let new = (!known(&study_dir), !known(&series_dir));
            std::fs::create_dir_all(&series_dir)?;
            std::fs::rename(tmp, self.root.join(&rel))?;
            new
        };
        std::thread::scope(|scope| {
            let data = scope.spawn(|| file.sync_data());
            let mut dirs = sync_dir(&series_dir);
            if new_series && dirs.is_ok() {
                dirs = sync_dir(&study_dir);
            }
            if new_study && dirs.is_ok() {
                dirs = sync_dir(&self.root);
            }
            let data = data
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the sync thread panicked")));
            data.and(dirs)
        })?;
        if new_study || new_series {
            if let Ok(mut set) = self.durable_dirs.lock() {
                if set.len() > MAX_REMEMBERED_DIRS {
                    set.clear();
                }
                set.insert(study_dir);
                set.insert(series_dir);
            }
        }
        Ok(rel)
    }

    /// Keeps a file whose dataset could not be used under `failed/`, for inspection.
    pub fn keep_failed(&self, tmp: &Path) -> io::Result<String> {
        let dir = self.root.join("failed");
        std::fs::create_dir_all(&dir)?;
        let name = tmp
            .file_name()
            .map(|n| n.to_string_lossy().replace(".part", ".dcm"))
            .unwrap_or_else(|| "unnamed.dcm".into());
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let rel = format!("failed/{stamp}-{name}");
        std::fs::rename(tmp, self.root.join(&rel))?;
        std::fs::File::open(self.root.join(&rel))?.sync_data()?;
        sync_dir(&dir)?;
        Ok(rel)
    }

    /// [`Archive::keep_failed`] for a small instance held in memory.
    pub fn keep_failed_bytes(&self, part10: &[u8]) -> io::Result<String> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .incoming
            .join(format!("{}-{n}.part", std::process::id()));
        std::fs::write(&tmp, part10)?;
        self.keep_failed(&tmp).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
    }
}

/// The pipeline's side of small instances: before their journal entries are marked
/// processed, every archive file is written from the bytes its entry carries (or, when
/// it is there already, checked against them and rewritten if a crash damaged it), and
/// the archive is synced, once for all the files of a round.
#[derive(Debug)]
pub struct Settle {
    root: PathBuf,
    /// The archive the listeners use, for its placement lock (retention must not remove
    /// a directory between its creation and the file's arrival) and its injected faults.
    /// `None` when no DICOM listener runs: nothing else then writes to the archive.
    archive: Option<Arc<Archive>>,
    /// Files written or checked since the last [`Settle::sync`] (with their directories,
    /// for systems without `syncfs`).
    checked: Vec<PathBuf>,
    /// Files found damaged and rewritten from the journal since the last [`Settle::sync`].
    pub rebuilt: usize,
    /// Set by the pipeline while archive files cannot be written; read by `/ready`.
    failing: Arc<std::sync::atomic::AtomicBool>,
    /// Numbers the temporary files of [`Settle::ensure`].
    seq: u64,
}

impl Settle {
    /// For the archive under `root` (`<data>/dicom`).
    pub fn new(root: &Path, archive: Option<Arc<Archive>>) -> Settle {
        Settle {
            root: root.to_path_buf(),
            archive,
            checked: Vec::new(),
            rebuilt: 0,
            failing: Default::default(),
            seq: 0,
        }
    }

    /// The flag the pipeline sets while archive files cannot be written.
    pub fn health(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.failing.clone()
    }

    /// Records whether archive files can be written (see [`Settle::health`]).
    pub fn set_failing(&self, failing: bool) {
        self.failing
            .store(failing, std::sync::atomic::Ordering::SeqCst);
    }

    /// Makes sure `<root>/<rel>` holds exactly `part10`: writes it when it is missing,
    /// and rewrites it (through a temporary file and a rename) when it differs.
    pub fn ensure(&mut self, rel: &str, part10: &[u8]) -> io::Result<()> {
        let parts: Vec<&str> = rel.split('/').collect();
        let safe = match parts[..] {
            [study, series, file] => {
                is_safe_uid(study)
                    && is_safe_uid(series)
                    && file.strip_suffix(".dcm").is_some_and(is_safe_uid)
            }
            _ => false,
        };
        if !safe {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the journal names an archive path that is not <study>/<series>/<instance>.dcm",
            ));
        }
        let path = self.root.join(rel);
        let on_disk = match std::fs::read(&path) {
            Ok(on_disk) => Some(on_disk),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        if on_disk.as_deref() != Some(part10) {
            if let Some(archive) = &self.archive {
                archive.faults.check()?;
            }
            // Written beside the archive first, without the placement lock: the
            // pipeline runs at idle priority, and a listener placing a large instance
            // must not wait for this write. Under the lock only the directory and the
            // rename, as `Archive::place` does. A file left in `incoming/` by a crash is
            // removed at the next start; the entry is not marked processed before the
            // sync, so it is written again then.
            let incoming = self.root.join("incoming");
            self.seq += 1;
            let tmp = incoming.join(format!("{}-settle-{}.part", std::process::id(), self.seq));
            let written = match std::fs::write(&tmp, part10) {
                // The archive opens `incoming/`; without a DICOM listener it may not
                // be there yet.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    std::fs::create_dir_all(&incoming).and_then(|()| std::fs::write(&tmp, part10))
                }
                other => other,
            };
            written.inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })?;
            let placed = {
                let _layout = self
                    .archive
                    .as_ref()
                    .map(|a| a.layout.lock().unwrap_or_else(|p| p.into_inner()));
                std::fs::create_dir_all(path.parent().expect("three components"))
                    .and_then(|()| std::fs::rename(&tmp, &path))
            };
            if let Err(e) = placed {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            if on_disk.is_some() {
                self.rebuilt += 1;
            }
        }
        self.checked.push(path);
        Ok(())
    }

    /// True when files wait for [`Settle::sync`].
    pub fn is_pending(&self) -> bool {
        !self.checked.is_empty()
    }

    /// Makes every file checked since the last call durable, with its directory entries.
    /// On Linux this is one `syncfs` of the archive's file system (one journal commit and
    /// one cache flush for the whole round, however many files); elsewhere each file and
    /// directory is synced. After an error, check the files again before retrying.
    pub fn sync(&mut self) -> io::Result<()> {
        let checked = std::mem::take(&mut self.checked);
        self.rebuilt = 0;
        if checked.is_empty() {
            return Ok(());
        }
        sync_files(&self.root, &checked)
    }

    /// Forgets the files checked since the last [`Settle::sync`] (a round that failed is
    /// checked again from the start).
    pub fn reset(&mut self) {
        self.checked.clear();
        self.rebuilt = 0;
    }
}

#[cfg(target_os = "linux")]
fn sync_files(root: &Path, _files: &[PathBuf]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let dir = std::fs::File::open(root)?;
    // SAFETY: `dir` is an open descriptor for the whole call; syncfs reads nothing else.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn sync_files(root: &Path, files: &[PathBuf]) -> io::Result<()> {
    let mut dirs = HashSet::new();
    for f in files {
        std::fs::File::open(f)?.sync_data()?;
        let series = f.parent().expect("a file in a series directory");
        dirs.insert(series.to_path_buf());
        if let Some(study) = series.parent() {
            dirs.insert(study.to_path_buf());
        }
    }
    dirs.insert(root.to_path_buf());
    for d in dirs {
        sync_dir(&d)?;
    }
    Ok(())
}

impl Archive {
    /// Retention: removes the files last written before `cutoff` for which `held` (given
    /// the path relative to the root, as a journal entry names it) is false, then the
    /// study and series directories left empty. `incoming/` is never touched, nor is the
    /// `failed/` directory itself. Each file's time is read and the file removed under
    /// the placement lock, so an instance sent again while the pass runs keeps its new
    /// file. A file that cannot be removed stops the pass with its error.
    pub fn prune(
        &self,
        cutoff: std::time::SystemTime,
        held: &dyn Fn(&str) -> bool,
    ) -> io::Result<ArchivePruneReport> {
        let mut report = ArchivePruneReport::default();
        let mut tops: Vec<_> = std::fs::read_dir(&self.root)?
            .collect::<io::Result<Vec<_>>>()?
            .into_iter()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "incoming")
            .collect();
        tops.sort();
        for top in tops {
            self.prune_under(&top, 0, cutoff, held, &mut report)?;
        }
        Ok(report)
    }

    /// Prunes `rel` (a file, or a directory at `depth` below the root, at most study/
    /// series) and removes it when it is an emptied study or series directory.
    fn prune_under(
        &self,
        rel: &str,
        depth: usize,
        cutoff: std::time::SystemTime,
        held: &dyn Fn(&str) -> bool,
        report: &mut ArchivePruneReport,
    ) -> io::Result<()> {
        let path = self.root.join(rel);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if meta.is_file() {
            if meta.modified()? >= cutoff {
                return Ok(());
            }
            if held(rel) {
                report.held += 1;
                return Ok(());
            }
            let _layout = self.layout.lock().unwrap_or_else(|p| p.into_inner());
            // Judged again under the lock: the instance may have been placed anew.
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            };
            if meta.is_file() && meta.modified()? < cutoff {
                std::fs::remove_file(&path)?;
                report.files += 1;
                report.bytes += meta.len();
            }
            return Ok(());
        }
        if !meta.is_dir() || depth > 1 {
            return Ok(());
        }
        let mut children: Vec<_> = std::fs::read_dir(&path)?
            .collect::<io::Result<Vec<_>>>()?
            .into_iter()
            .map(|e| format!("{rel}/{}", e.file_name().to_string_lossy()))
            .collect();
        children.sort();
        for child in &children {
            self.prune_under(child, depth + 1, cutoff, held, report)?;
        }
        if rel == "failed" {
            return Ok(());
        }
        let _layout = self.layout.lock().unwrap_or_else(|p| p.into_inner());
        // Fails, and so keeps the directory, when anything is left in it.
        if std::fs::remove_dir(&path).is_ok() {
            report.dirs += 1;
            if let Ok(mut set) = self.durable_dirs.lock() {
                set.remove(&path);
            }
        }
        Ok(())
    }
}

impl Incoming {
    pub async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.dataset_bytes += data.len() as u64;
        self.file.write_all(data).await
    }

    /// Flushes the buffer; returns the file's path in `incoming/` and the open file,
    /// which [`Archive::place`] syncs.
    pub async fn finish(mut self) -> io::Result<(PathBuf, std::fs::File)> {
        self.file.flush().await?;
        let file = self.file.into_inner().into_std().await;
        Ok((self.path, file))
    }

    /// Drops a partial file (association aborted, disk error).
    pub async fn discard(self) {
        let path = self.path.clone();
        drop(self.file);
        let _ = tokio::fs::remove_file(path).await;
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// A UID usable as a file name: 1-64 characters, digits and dots, not starting with a dot.
pub fn is_safe_uid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 64
        && !uid.starts_with('.')
        && uid.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// Preamble, `DICM` and the File Meta Information group (explicit VR little endian).
pub fn file_meta(
    sop_class: &str,
    sop_instance: &str,
    transfer_syntax: &str,
    source_ae: &str,
) -> Vec<u8> {
    fn short(out: &mut Vec<u8>, element: u16, vr: &[u8; 2], value: &[u8], pad: u8) {
        let len = value.len() + value.len() % 2;
        out.extend_from_slice(&0x0002u16.to_le_bytes());
        out.extend_from_slice(&element.to_le_bytes());
        out.extend_from_slice(vr);
        out.extend_from_slice(&(len as u16).to_le_bytes());
        out.extend_from_slice(value);
        if value.len() % 2 == 1 {
            out.push(pad);
        }
    }
    let mut group = Vec::with_capacity(256);
    // (0002,0001) File Meta Information Version, OB: 00 01.
    group.extend_from_slice(&[
        0x02, 0x00, 0x01, 0x00, b'O', b'B', 0, 0, 2, 0, 0, 0, 0x00, 0x01,
    ]);
    short(&mut group, 0x0002, b"UI", sop_class.as_bytes(), 0);
    short(&mut group, 0x0003, b"UI", sop_instance.as_bytes(), 0);
    short(&mut group, 0x0010, b"UI", transfer_syntax.as_bytes(), 0);
    short(
        &mut group,
        0x0012,
        b"UI",
        IMPLEMENTATION_CLASS_UID.as_bytes(),
        0,
    );
    short(
        &mut group,
        0x0013,
        b"SH",
        IMPLEMENTATION_VERSION.as_bytes(),
        b' ',
    );
    if !source_ae.is_empty() {
        short(&mut group, 0x0016, b"AE", source_ae.trim().as_bytes(), b' ');
    }
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    // (0002,0000) File Meta Information Group Length, UL.
    out.extend_from_slice(&[0x02, 0x00, 0x00, 0x00, b'U', b'L', 4, 0]);
    out.extend_from_slice(&(group.len() as u32).to_le_bytes());
    out.extend_from_slice(&group);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_that_could_escape_the_archive_are_refused() {
        for bad in ["", "../etc", "1.2/3", ".1.2", "1.2.3a", &"1".repeat(65)] {
            assert!(!is_safe_uid(bad), "{bad}");
        }
        assert!(is_safe_uid("1.2.840.10008.5.1.4.1.1.2"));
    }

    #[test]
    fn settle_writes_missing_files_rewrites_damaged_ones_and_leaves_good_ones() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let a: &[u8] = b"first instance's Part 10 bytes";
        let b: &[u8] = b"second instance's Part 10 bytes";
        let c: &[u8] = b"third";
        std::fs::create_dir_all(root.join("1.2/1.2.3")).unwrap();
        std::fs::write(root.join("1.2/1.2.3/1.2.3.5.dcm"), &b[..7]).unwrap(); // torn
        std::fs::write(root.join("1.2/1.2.3/1.2.3.6.dcm"), c).unwrap(); // intact
        let mut settle = Settle::new(root, None);
        assert!(!settle.is_pending());
        settle.ensure("1.2/1.2.3/1.2.3.4.dcm", a).unwrap(); // missing
        settle.ensure("1.2/1.2.3/1.2.3.5.dcm", b).unwrap();
        settle.ensure("1.2/1.2.3/1.2.3.6.dcm", c).unwrap();
        assert_eq!(
            settle.rebuilt, 1,
            "the damaged one (a missing one is simply written)"
        );
        assert!(settle.is_pending());
        settle.sync().unwrap();
        assert!(!settle.is_pending());
        for (name, want) in [("1.2.3.4.dcm", a), ("1.2.3.5.dcm", b), ("1.2.3.6.dcm", c)] {
            assert_eq!(
                std::fs::read(root.join("1.2/1.2.3").join(name)).unwrap(),
                want
            );
        }
        let left: Vec<_> = std::fs::read_dir(root.join("1.2/1.2.3"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 3, "no temporary file stays: {left:?}");

        for bad in [
            "../x/1.2/1.dcm",
            "1.2/1.2.3.4.dcm",
            "1.2/1.3/../../x.dcm",
            "a/b/c.dcm",
        ] {
            let e = settle.ensure(bad, a).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{bad}");
        }
    }

    #[test]
    fn memory_for_small_instances_is_bounded_per_instance_and_in_all() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Arc::new(Archive::open(dir.path()).unwrap());
        let mut one = archive.hold();
        assert!(one.grow(INLINE_MAX - 10));
        assert!(!one.grow(11), "past INLINE_MAX for one instance");
        assert!(one.grow(10));
        let mut held: Vec<Held> = (1..INLINE_BUDGET / INLINE_MAX)
            .map(|_| {
                let mut h = archive.hold();
                assert!(h.grow(INLINE_MAX));
                h
            })
            .collect();
        let mut last = archive.hold();
        assert!(!last.grow(1), "past INLINE_BUDGET for all");
        held.pop();
        drop(one);
        assert!(last.grow(INLINE_MAX), "memory given back is usable again");
        drop((held, last));
        assert_eq!(archive.inline_held.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn injected_disk_full_fails_the_next_writes_only() {
        let dir = tempfile::tempdir().unwrap();
        let archive = Arc::new(Archive::open(dir.path()).unwrap());
        let mut settle = Settle::new(dir.path(), Some(archive.clone()));
        archive.faults().fail_next_writes(2);
        let rel = Archive::relative_path("1.2", "1.2.3", "1.2.3.4");
        for _ in 0..2 {
            let e = settle.ensure(&rel, b"x").unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::StorageFull);
            settle.reset();
        }
        assert!(!dir.path().join(&rel).exists());
        settle.ensure(&rel, b"x").unwrap();
        settle.sync().unwrap();
        assert_eq!(rel, "1.2/1.2.3/1.2.3.4.dcm");
        assert_eq!(std::fs::read(dir.path().join(rel)).unwrap(), b"x");
        assert_eq!(archive.faults().pending_failures(), 0);
    }

    #[test]
    fn file_meta_reads_back_with_dicom_object() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.dcm");
        let mut bytes = file_meta(
            "1.2.840.10008.5.1.4.1.1.7",
            "1.2.3.45",
            "1.2.840.10008.1.2.1",
            "MODALITY1",
        );
        // A dataset in explicit VR LE: (0008,0016) SOP Class UID, (0008,0018) SOP Instance UID.
        let mut ds = Vec::new();
        for (el, v) in [
            (0x0016u16, "1.2.840.10008.5.1.4.1.1.7\0"),
            (0x0018, "1.2.3.45"),
        ] {
            ds.extend_from_slice(&0x0008u16.to_le_bytes());
            ds.extend_from_slice(&el.to_le_bytes());
            ds.extend_from_slice(b"UI");
            ds.extend_from_slice(&(v.len() as u16).to_le_bytes());
            ds.extend_from_slice(v.as_bytes());
        }
        bytes.extend_from_slice(&ds);
        std::fs::write(&path, &bytes).unwrap();
        let obj = dicom_object::open_file(&path).unwrap();
        let meta = obj.meta();
        assert_eq!(meta.media_storage_sop_instance_uid(), "1.2.3.45");
        assert_eq!(meta.transfer_syntax(), "1.2.840.10008.1.2.1");
        assert_eq!(
            obj.element(dicom_dictionary_std::tags::SOP_INSTANCE_UID)
                .unwrap()
                .to_str()
                .unwrap(),
            "1.2.3.45"
        );
    }
}
