//! Errors of the record store.

use std::path::PathBuf;

/// Everything that can go wrong in the record store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A resource in a batch failed validation; nothing of the batch was written.
    #[error("invalid resource at position {position} of the batch: {problem}")]
    InvalidResource {
        /// Index of the offending resource in the slice given to `upsert_batch`.
        position: usize,
        /// What is wrong with it.
        problem: InvalidResource,
    },
    /// The embedded database failed.
    #[error("record store database error: {0}")]
    Db(#[from] sled::Error),
    /// Opening the database file for fdatasync failed.
    #[error("cannot open {path} for syncing: {source}")]
    OpenDbFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// fdatasync of the database file failed: what was written is not known to be durable.
    #[error("fdatasync of {path} failed: {source}")]
    Sync {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An earlier sync failed: after a failed fdatasync the kernel may have dropped the
    /// pages it could not write, so no later sync can vouch for them.
    #[error("an earlier fdatasync of {path} failed; writes since the last good one may be lost, and only a restart, which maps them again from the journal, makes them durable")]
    SyncFailedBefore { path: PathBuf },
    /// A stored record does not parse as JSON (disk corruption or a foreign writer).
    #[error("stored record {key} is not valid JSON: {source}")]
    CorruptRecord {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    /// The tree was written by a newer (or unknown) layout version.
    #[error(
        "record store layout version {found:?} is not supported (this build reads {supported:?})"
    )]
    UnsupportedLayout {
        found: String,
        supported: &'static str,
    },
}

/// Why a resource was refused. The messages name the field and, for strings, carry the
/// offending value (type names and ids, never other content of the resource).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidResource {
    #[error("not a JSON object but {0}")]
    NotAnObject(&'static str),
    #[error("missing \"resourceType\"")]
    MissingResourceType,
    #[error("\"resourceType\" is {0}, not a string")]
    ResourceTypeNotString(&'static str),
    #[error("\"resourceType\" {0:?} is not a FHIR type name ([A-Z][A-Za-z]{{0,63}})")]
    BadResourceType(String),
    #[error("{resource_type}: missing \"id\"")]
    MissingId { resource_type: String },
    #[error("{resource_type}: \"id\" is {found}, not a string")]
    IdNotString {
        resource_type: String,
        found: &'static str,
    },
    #[error("{resource_type}: \"id\" {id:?} is not a FHIR id ([A-Za-z0-9\\-.]{{1,64}})")]
    BadId { resource_type: String, id: String },
}

/// The JSON type name of a value, for error messages that must not echo content.
pub(crate) fn json_type(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
