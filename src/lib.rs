//! halong: an integration engine for hospitals.
//!
//! HL7 v2 over MLLP in, every message durable before its ACK, declarative mappings to
//! FHIR R4 records, a searchable record store. Layout, one line per module:
//!
//! - [`config`]: `halong.toml`, typed and documented; errors with file:line:column.
//! - [`diag`]: diagnostics for operator-edited files, compiler style.
//! - [`journal`]: durable append-only message log; group commit; the processing cursor.
//! - [`dicom`]: attributes of received DICOM datasets (keywords, tags, PN/DA/TM).
//! - [`hl7`]: HL7 v2 parsing, escapes, charsets, typed paths, ACK building.
//! - [`listeners`]: network intake (MLLP, DICOM); ACK only after the journal commit.
//! - [`routes`]: `routes/*.toml`, first match wins.
//! - [`mapping`]: `mappings/*.toml`, declarative HL7 → FHIR R4.
//! - [`queue`]: the outbox between mapping and the store.
//! - [`record`]: a FHIR resource as a mapping makes it, in a compact JSON form.
//! - [`store`]: the record store: upsert by id, patient indexes, search, `$everything`.
//! - [`api`]: HTTP: `/fhir`, `/api`, `/health`.
//! - [`pipeline`]: wires journal → routes → mapping → outbox → store.
//! - [`engine`]: starts and stops everything from a config.
//! - [`retention`]: prunes old archived DICOM files, then old journal segments.
//! - [`send`]: the MLLP client and load generator behind `halong send`.
//! - [`telemetry`]: logging without patient data; metric names.
//! - [`tls`]: rustls identities for HTTPS and MLLP over TLS.

pub mod api;
pub mod config;
pub mod diag;
pub mod dicom;
pub mod engine;
pub mod hl7;
pub mod journal;
pub mod listeners;
pub mod mapping;
pub mod pipeline;
pub mod queue;
pub mod record;
pub mod retention;
pub mod routes;
pub mod send;
pub mod store;
pub mod telemetry;
pub mod tls;
