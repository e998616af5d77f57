//! The Part 10 archive: `<data>/dicom/<study>/<series>/<instance>.dcm`.
//!
//! An instance is written while it arrives: the file meta information first (PS3.10
//! §7.1), then every data PDV fragment as received, into `<data>/dicom/incoming/`. When
//! the last fragment is in, the file is synced, renamed to its place and the directory
//! synced. The bytes after the file meta are exactly the dataset the sender sent, in the
//! negotiated transfer syntax. Files left in `incoming/` by a crash were never
//! acknowledged and are removed at start.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncWriteExt, BufWriter};

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
    durable_dirs: std::sync::Mutex<std::collections::HashSet<PathBuf>>,
    /// Held while a file is moved into place and while retention removes one, so a file
    /// placed again during a retention pass is judged by its new time, and a directory is
    /// never removed between its creation and the rename into it.
    layout: std::sync::Mutex<()>,
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
            layout: Default::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Starts a file for one instance and writes its file meta information.
    pub async fn begin(
        &self,
        sop_class: &str,
        sop_instance: &str,
        transfer_syntax: &str,
        source_ae: &str,
    ) -> io::Result<Incoming> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let path = self
            .incoming
            .join(format!("{}-{n}.part", std::process::id()));
        let file = tokio::fs::File::create(&path).await?;
        let mut file = BufWriter::with_capacity(WRITE_BUFFER, file);
        file.write_all(&file_meta(
            sop_class,
            sop_instance,
            transfer_syntax,
            source_ae,
        ))
        .await?;
        Ok(Incoming {
            file,
            path,
            dataset_bytes: 0,
        })
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
        let rel = format!("{study}/{series}/{instance}.dcm");
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

    /// Flushes and syncs the file; returns its path in `incoming/`.
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
