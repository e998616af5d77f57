//! DICOM upper layer intake (dicom-ul, async): C-ECHO and C-STORE SCP, Part 10 archive.
//!
//! Invariants:
//! 1. A C-STORE success (0000) is sent only after
//!    [`Journal::append`](crate::journal::Journal::append) has returned for the
//!    instance's journal entry, i.e. the entry is synced. A small instance (dataset up
//!    to [`INLINE_MAX`]) is in that entry whole; the pipeline writes its archive file
//!    from the entry (or rewrites it if a crash damaged it) and syncs it before the
//!    entry can be marked processed. A large instance's file is synced and in its
//!    place before its entry (a reference to the file) is appended.
//! 2. Memory is bounded whatever the instance size: small instances are held in memory
//!    up to [`INLINE_MAX`] each and [`INLINE_BUDGET`] for all associations together;
//!    beyond that datasets are streamed to disk PDV by PDV, through a write buffer.
//! 3. Command and data PDVs are reassembled from fragments before use.
//! 4. An instance that cannot be used gets a failure status with a reason (A700 out of
//!    resources, A900 dataset does not match, C000 cannot understand); when it reached
//!    the disk it is kept under `dicom/failed/` with a journal entry in status error.
//! 5. Presentation contexts we cannot take are rejected one by one; a broken association
//!    ends only itself.
//!
//! With `tls_cert` and `tls_key` a listener speaks DICOM over TLS only (rustls).

mod archive;
mod command;
mod scp;
mod storage_classes;
mod syntaxes;
mod tls;

pub use archive::{
    file_meta, is_safe_uid, Archive, ArchiveFaults, ArchivePruneReport, Settle,
    IMPLEMENTATION_CLASS_UID, INLINE_BUDGET, INLINE_MAX,
};
pub use command::{parse as parse_command, response as command_response, Command};
pub use scp::{serve, DicomSettings};
pub use syntaxes::{abstract_syntaxes, is_storage, TRANSFER_SYNTAXES, VERIFICATION};
pub use tls::{server_config as tls_server_config, TlsError};
