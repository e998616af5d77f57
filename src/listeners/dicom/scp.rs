//! One DICOM listener: the accept loop and one task per association.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dicom_ul::association::server::{AccessControl, DefaultNegotiation, ServerAssociationOptions};
use dicom_ul::association::AsyncServerAssociation;
use dicom_ul::pdu::{
    AssociationRJServiceUserReason, PDataValue, PDataValueType, Pdu,
    PresentationContextResultReason, UserIdentity,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::archive::{file_meta, is_safe_uid, Archive, Held, Incoming};
use super::command::{self, Command};
use super::syntaxes;
use crate::dicom::{InstanceRef, FORMAT};
use crate::journal::{Journal, NewEntry, Status};

/// What one DICOM listener needs.
#[derive(Clone, Debug)]
pub struct DicomSettings {
    pub name: String,
    /// Our AE title; associations calling another are rejected.
    pub ae_title: String,
    /// Calling AE titles allowed; empty: any.
    pub allowed_callers: Vec<String>,
    /// Peer addresses allowed; empty: any.
    pub allowed_peers: Vec<std::net::IpAddr>,
    pub max_associations: usize,
    /// Largest PDU we accept (announced in the A-ASSOCIATE-AC).
    pub max_pdu: u32,
    /// Take PDUs longer than `max_pdu` (held whole in memory) instead of aborting.
    pub accept_oversized_pdus: bool,
    /// An association silent this long is aborted.
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    /// TLS server configuration; `None`: plain TCP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Largest command set accepted (all fragments together); real ones are < 1 KiB.
const MAX_COMMAND_BYTES: usize = 64 * 1024;

/// Called AE must be ours; calling AE must be on the allowlist when there is one.
#[derive(Debug, Clone)]
struct Access {
    allowed: Vec<String>,
}

impl AccessControl for Access {
    fn check_access(
        &self,
        this_ae_title: &str,
        calling_ae_title: &str,
        called_ae_title: &str,
        _user_identity: Option<&UserIdentity>,
    ) -> Result<(), AssociationRJServiceUserReason> {
        if called_ae_title.trim() != this_ae_title.trim() {
            return Err(AssociationRJServiceUserReason::CalledAETitleNotRecognized);
        }
        if !self.allowed.is_empty() && !self.allowed.iter().any(|a| a == calling_ae_title.trim()) {
            return Err(AssociationRJServiceUserReason::CallingAETitleNotRecognized);
        }
        Ok(())
    }
}

/// What an association runs over: TCP or TLS over TCP.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

type Options = ServerAssociationOptions<'static, Access, DefaultNegotiation>;

fn options(settings: &DicomSettings) -> Options {
    let mut o = ServerAssociationOptions::new()
        .ae_access_control(Access {
            allowed: settings.allowed_callers.clone(),
        })
        .ae_title(settings.ae_title.clone())
        .max_pdu_length(settings.max_pdu)
        .strict(!settings.accept_oversized_pdus)
        .read_timeout(settings.idle_timeout)
        .write_timeout(settings.write_timeout);
    for uid in syntaxes::abstract_syntaxes() {
        o = o.with_abstract_syntax(uid);
    }
    for uid in syntaxes::TRANSFER_SYNTAXES {
        o = o.with_transfer_syntax(*uid);
    }
    if let Some(tls) = &settings.tls {
        o = o.tls_config(tls.clone());
    }
    o
}

/// Accepts associations on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    settings: DicomSettings,
    archive: Arc<Archive>,
    journal: Journal,
    shutdown: CancellationToken,
) {
    let options = Arc::new(options(&settings));
    let settings = Arc::new(settings);
    let name = settings.name.clone();
    let max = settings.max_associations;
    crate::listeners::accept_bounded(listener, max, &name, &shutdown, |stream, peer, permit| {
        if !settings.allowed_peers.is_empty() && !settings.allowed_peers.contains(&peer.ip()) {
            tracing::info!(listener = %settings.name, %peer, "connection from an address outside allowed_peers closed");
            drop(stream);
            return;
        }
        let (settings, options, archive, journal, shutdown) = (
            settings.clone(),
            options.clone(),
            archive.clone(),
            journal.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move {
            let _permit = permit;
            let mut a = Association {
                settings: &settings,
                archive: archive.clone(),
                journal: &journal,
                peer,
            };
            if let Err(e) = a.run(stream, &options, shutdown).await {
                tracing::info!(listener = %settings.name, %peer, error = %e, "association ended with an error");
            }
        });
    })
    .await;
}

#[derive(Debug, thiserror::Error)]
enum AssocError {
    #[error("association not established: {0}")]
    Establish(dicom_ul::association::Error),
    #[error("{0}")]
    Ul(#[from] dicom_ul::association::Error),
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("no PDU for {0:?}")]
    Idle(Duration),
    #[error("protocol: {0}")]
    Protocol(String),
}

/// A C-STORE whose dataset is arriving.
struct Pending {
    command: Command,
    pc_id: u8,
    transfer_syntax: String,
    body: Body,
    /// Set when the instance will be refused whatever follows (status, reason).
    refused: Option<(u16, String)>,
}

/// Where a dataset being received goes.
enum Body {
    /// Nowhere (the instance is refused).
    None,
    /// A small instance so far: its Part 10 file (file meta, then the dataset) in
    /// memory; `meta` is the length of the file meta part.
    Memory {
        part10: Vec<u8>,
        meta: usize,
        held: Held,
    },
    /// Streamed to a file in `incoming/`.
    File(Incoming),
}

impl Body {
    async fn discard(self) {
        if let Body::File(f) = self {
            f.discard().await;
        }
    }
}

/// The reason sent with A700 when the archive cannot be written.
fn archive_failure(e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::StorageFull {
        "archive disk is full; resend later".into()
    } else {
        "cannot write to the archive; resend later".into()
    }
}

struct Association<'a> {
    settings: &'a DicomSettings,
    archive: Arc<Archive>,
    journal: &'a Journal,
    peer: SocketAddr,
}

impl Association<'_> {
    async fn run(
        &mut self,
        stream: TcpStream,
        options: &Options,
        shutdown: CancellationToken,
    ) -> Result<(), AssocError> {
        stream.set_nodelay(true)?;
        if self.settings.tls.is_some() {
            let assoc = options
                .establish_tls_async(stream)
                .await
                .map_err(AssocError::Establish)?;
            self.serve_association(assoc, shutdown).await
        } else {
            let assoc = options
                .establish_async(stream)
                .await
                .map_err(AssocError::Establish)?;
            self.serve_association(assoc, shutdown).await
        }
    }

    async fn serve_association<S: Stream>(
        &mut self,
        mut assoc: AsyncServerAssociation<S>,
        shutdown: CancellationToken,
    ) -> Result<(), AssocError> {
        let calling = dicom_ul::association::Association::peer_ae_title(&assoc)
            .trim()
            .to_string();
        tracing::debug!(listener = %self.settings.name, peer = %self.peer, calling_ae = %calling, "association established");
        let mut command_bytes: Vec<u8> = Vec::new();
        let mut pending: Option<Pending> = None;
        let result = loop {
            let pdu = tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                r = tokio::time::timeout(self.settings.idle_timeout, assoc.receive()) => r,
            };
            let pdu = match pdu {
                Err(_) => break Err(AssocError::Idle(self.settings.idle_timeout)),
                Ok(Err(e)) => break Err(e.into()),
                Ok(Ok(p)) => p,
            };
            match pdu {
                Pdu::PData { data } => {
                    for pdv in data {
                        match self
                            .pdv(&mut assoc, &calling, pdv, &mut command_bytes, &mut pending)
                            .await
                        {
                            Ok(()) => {}
                            Err(e) => {
                                if let Some(p) = pending.take() {
                                    p.body.discard().await;
                                }
                                let _ = assoc.abort().await;
                                return Err(e);
                            }
                        }
                    }
                }
                Pdu::ReleaseRQ => {
                    assoc.send(&Pdu::ReleaseRP).await?;
                    break Ok(());
                }
                Pdu::AbortRQ { .. } => break Ok(()),
                other => {
                    break Err(AssocError::Protocol(format!(
                        "unexpected {}",
                        other.short_description()
                    )))
                }
            }
        };
        if let Some(p) = pending.take() {
            p.body.discard().await;
        }
        result
    }

    async fn pdv<S: Stream>(
        &self,
        assoc: &mut AsyncServerAssociation<S>,
        calling: &str,
        pdv: PDataValue,
        command_bytes: &mut Vec<u8>,
        pending: &mut Option<Pending>,
    ) -> Result<(), AssocError> {
        match pdv.value_type {
            PDataValueType::Command => {
                if pending.is_some() {
                    return Err(AssocError::Protocol(
                        "command PDV while a dataset was still arriving".into(),
                    ));
                }
                command_bytes.extend_from_slice(&pdv.data);
                if command_bytes.len() > MAX_COMMAND_BYTES {
                    return Err(AssocError::Protocol(format!(
                        "command set larger than {MAX_COMMAND_BYTES} bytes"
                    )));
                }
                if !pdv.is_last {
                    return Ok(());
                }
                let bytes = std::mem::take(command_bytes);
                let cmd = command::parse(&bytes)
                    .map_err(|e| AssocError::Protocol(format!("unreadable command set: {e}")))?;
                self.command(assoc, calling, pdv.presentation_context_id, cmd, pending)
                    .await
            }
            PDataValueType::Data => {
                let Some(p) = pending.as_mut() else {
                    return Err(AssocError::Protocol("data PDV without a command".into()));
                };
                if p.pc_id != pdv.presentation_context_id {
                    return Err(AssocError::Protocol(
                        "data PDV on another presentation context than its command".into(),
                    ));
                }
                if let Err(e) = self.receive_data(p, &pdv.data).await {
                    tracing::error!(listener = %self.settings.name, error = %e, "cannot write to the DICOM archive");
                    p.refused = Some((command::OUT_OF_RESOURCES, archive_failure(&e)));
                    std::mem::replace(&mut p.body, Body::None).discard().await;
                }
                if pdv.is_last {
                    let p = pending.take().expect("checked above");
                    let pc_id = p.pc_id;
                    let cmd = p.command.clone();
                    let (status, comment) =
                        self.complete(p, calling, assoc.called_ae_title()).await;
                    self.respond(
                        assoc,
                        pc_id,
                        command::C_STORE_RSP,
                        &cmd,
                        status,
                        comment.as_deref(),
                    )
                    .await?;
                }
                Ok(())
            }
        }
    }

    async fn command<S: Stream>(
        &self,
        assoc: &mut AsyncServerAssociation<S>,
        calling: &str,
        pc_id: u8,
        cmd: Command,
        pending: &mut Option<Pending>,
    ) -> Result<(), AssocError> {
        let pc = assoc
            .presentation_contexts()
            .iter()
            .find(|pc| pc.id == pc_id && pc.reason == PresentationContextResultReason::Acceptance)
            .map(|pc| (pc.abstract_syntax.clone(), pc.transfer_syntax.clone()));
        let Some((abstract_syntax, transfer_syntax)) = pc else {
            return Err(AssocError::Protocol(format!(
                "command on presentation context {pc_id}, which was not accepted"
            )));
        };
        match cmd.field {
            command::C_ECHO_RQ => {
                self.respond(
                    assoc,
                    pc_id,
                    command::C_ECHO_RSP,
                    &cmd,
                    command::SUCCESS,
                    None,
                )
                .await
            }
            command::C_STORE_RQ => {
                let mut p = Pending {
                    command: cmd,
                    pc_id,
                    transfer_syntax,
                    body: Body::None,
                    refused: None,
                };
                if !p.command.has_data_set() {
                    let cmd = p.command.clone();
                    return self
                        .respond(
                            assoc,
                            pc_id,
                            command::C_STORE_RSP,
                            &cmd,
                            command::CANNOT_UNDERSTAND,
                            Some("C-STORE without a dataset"),
                        )
                        .await;
                }
                if p.command.sop_class.trim_end_matches('\0')
                    != abstract_syntax.trim_end_matches('\0')
                {
                    p.refused = Some((
                        command::DATASET_MISMATCH,
                        "SOP class differs from the presentation context".into(),
                    ));
                } else if !syntaxes::is_storage(&abstract_syntax) {
                    p.refused = Some((
                        command::SOP_CLASS_NOT_SUPPORTED,
                        "not a storage SOP class".into(),
                    ));
                } else {
                    let meta = file_meta(
                        &p.command.sop_class,
                        &p.command.sop_instance,
                        &p.transfer_syntax,
                        calling,
                    );
                    p.body = Body::Memory {
                        meta: meta.len(),
                        part10: meta,
                        held: self.archive.hold(),
                    };
                }
                *pending = Some(p);
                Ok(())
            }
            other => {
                if cmd.has_data_set() {
                    return Err(AssocError::Protocol(format!(
                        "unsupported command 0x{other:04X} with a dataset"
                    )));
                }
                self.respond(
                    assoc,
                    pc_id,
                    other | 0x8000,
                    &cmd,
                    command::UNRECOGNIZED_OPERATION,
                    Some("only C-ECHO and C-STORE are served"),
                )
                .await
            }
        }
    }

    async fn respond<S: Stream>(
        &self,
        assoc: &mut AsyncServerAssociation<S>,
        pc_id: u8,
        field: u16,
        request: &Command,
        status: u16,
        comment: Option<&str>,
    ) -> Result<(), AssocError> {
        let data = command::response(field, request, status, comment);
        let pdu = Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc_id,
                value_type: PDataValueType::Command,
                is_last: true,
                data,
            }],
        };
        tokio::time::timeout(self.settings.write_timeout, assoc.send(&pdu))
            .await
            .map_err(|_| AssocError::Protocol("response not written in time".into()))??;
        Ok(())
    }

    /// Takes one data fragment: into memory while the instance is small, else to its
    /// file (moving what was held in memory there first).
    async fn receive_data(&self, p: &mut Pending, data: &[u8]) -> std::io::Result<()> {
        let mut spill = match &mut p.body {
            Body::None => return Ok(()),
            Body::File(f) => return f.write(data).await,
            Body::Memory { part10, held, meta } => {
                if held.grow(data.len()) {
                    part10.extend_from_slice(data);
                    return Ok(());
                }
                let received = (part10.len() - *meta) as u64;
                self.archive.begin(part10, received).await?
            }
        };
        let written = spill.write(data).await;
        // The memory held so far goes back as the body becomes the file.
        p.body = Body::File(spill);
        written
    }

    /// The dataset is in: check it, archive it, journal it. Returns the status to send.
    async fn complete(&self, p: Pending, calling: &str, called: &str) -> (u16, Option<String>) {
        if let Some((status, why)) = p.refused {
            p.body.discard().await;
            tracing::info!(listener = %self.settings.name, peer = %self.peer, status = format!("{status:04X}"), reason = %why, "C-STORE refused");
            return (status, Some(why));
        }
        let mut reference = InstanceRef {
            format: FORMAT.into(),
            path: String::new(),
            calling_ae: calling.to_string(),
            called_ae: called.trim().to_string(),
            transfer_syntax: p.transfer_syntax.clone(),
            sop_class: p.command.sop_class.clone(),
            sop_instance: p.command.sop_instance.clone(),
            dataset_bytes: 0,
            inline_bytes: 0,
            attributes: Default::default(),
        };
        let cmd = p.command.clone();
        let archive = self.archive.clone();
        // Small: the entry carries the file (the pipeline writes its archive copy).
        // Large: the entry refers to a file already synced.
        let mut inline: Option<(Vec<u8>, Held)> = None;
        let checked = match p.body {
            Body::None => {
                return (command::OUT_OF_RESOURCES, Some("no archive file".into()));
            }
            Body::Memory { part10, meta, held } => {
                reference.dataset_bytes = (part10.len() - meta) as u64;
                // Parsing the attributes takes tens of µs for a CT slice: done here, on
                // the association's task, rather than paying two thread hand-offs per
                // instance. The archive file is written by the pipeline from the
                // journal entry (see `Settle`), off the sender's round trip.
                match check_small(&part10, &cmd) {
                    Ok(ok) => {
                        inline = Some((part10, held));
                        Ok(ok)
                    }
                    Err((status, why, attrs)) => {
                        // Kept as evidence, synced: off the runtime's threads.
                        let kept =
                            tokio::task::spawn_blocking(move || archive.keep_failed_bytes(&part10))
                                .await
                                .ok()
                                .and_then(Result::ok);
                        Err((status, why, attrs, kept))
                    }
                }
            }
            Body::File(file) => {
                reference.dataset_bytes = file.dataset_bytes;
                let (tmp, handle) = match file.finish().await {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::error!(listener = %self.settings.name, error = %e, "cannot write a file in the DICOM archive");
                        return (command::OUT_OF_RESOURCES, Some(archive_failure(&e)));
                    }
                };
                tokio::task::spawn_blocking(move || {
                    let r = check_and_place(&archive, &tmp, &handle, &cmd);
                    match r {
                        Ok(ok) => Ok(ok),
                        Err((status, why, attrs)) => {
                            let kept = if status == command::OUT_OF_RESOURCES {
                                let _ = std::fs::remove_file(&tmp);
                                None
                            } else {
                                archive.keep_failed(&tmp).ok()
                            };
                            Err((status, why, attrs, kept))
                        }
                    }
                })
                .await
                .unwrap_or_else(|e| {
                    Err((
                        command::OUT_OF_RESOURCES,
                        format!("internal: {e}"),
                        None,
                        None,
                    ))
                })
            }
        };
        let (status, error, outcome) = match checked {
            Ok((rel, attrs)) => {
                reference.path = rel;
                reference.attributes = attrs;
                (Status::Received, None, command::SUCCESS)
            }
            Err((command::OUT_OF_RESOURCES, why, _, _)) => {
                // Nothing usable reached the archive: the sender is told to try again
                // and nothing is journaled.
                tracing::error!(listener = %self.settings.name, peer = %self.peer, reason = %why, "cannot write to the DICOM archive; C-STORE refused with A700");
                return (command::OUT_OF_RESOURCES, Some(why));
            }
            Err((status, why, attrs, kept)) => {
                reference.path = kept.unwrap_or_default();
                reference.attributes = attrs.unwrap_or_default();
                (Status::Error, Some(why), status)
            }
        };
        let modality = reference.attributes.modality().unwrap_or("").to_string();
        let raw = match &inline {
            Some((part10, _)) => reference.to_journal_with(part10),
            None => reference.to_json(),
        };
        let entry = NewEntry {
            listener: self.settings.name.clone(),
            peer: self.peer.to_string(),
            received_ms: now_ms(),
            message_type: format!("DICOM^{modality}"),
            control_id: reference.sop_instance.clone(),
            status,
            error: error.clone(),
            raw,
        };
        // The memory held for a small instance is given back once its entry is written.
        let appended = self.journal.append(entry).await;
        drop(inline);
        let dataset_bytes = reference.dataset_bytes;
        match appended {
            Ok(id) if outcome == command::SUCCESS => {
                tracing::debug!(listener = %self.settings.name, id, bytes = dataset_bytes, "instance stored");
                (command::SUCCESS, None)
            }
            Ok(id) => {
                tracing::info!(listener = %self.settings.name, id, status = format!("{outcome:04X}"), "instance refused; kept with status error");
                (outcome, error)
            }
            Err(e) => {
                tracing::error!(listener = %self.settings.name, error = %e, "journal refused the instance");
                (
                    command::OUT_OF_RESOURCES,
                    Some("journal write failed; resend later".into()),
                )
            }
        }
    }
}

type CheckError = (u16, String, Option<crate::dicom::Attributes>);

/// Checks an instance's attributes against its command: the study, series and
/// instance UIDs it will be filed under.
fn check<'a>(
    attrs: &'a crate::dicom::Attributes,
    cmd: &Command,
) -> Result<(&'a str, &'a str), CheckError> {
    let mismatch = |what: &str| {
        Err((
            command::DATASET_MISMATCH,
            format!("{what} in the dataset differs from the command"),
            Some(attrs.clone()),
        ))
    };
    if attrs.sop_instance_uid() != Some(cmd.sop_instance.as_str()) {
        return mismatch("SOP Instance UID");
    }
    if attrs.sop_class_uid() != Some(cmd.sop_class.as_str()) {
        return mismatch("SOP Class UID");
    }
    let (Some(study), Some(series)) = (attrs.study_uid(), attrs.series_uid()) else {
        return Err((
            command::DATASET_MISMATCH,
            "dataset lacks Study or Series Instance UID".into(),
            Some(attrs.clone()),
        ));
    };
    for uid in [study, series, cmd.sop_instance.as_str()] {
        if !is_safe_uid(uid) {
            return Err((
                command::CANNOT_UNDERSTAND,
                "a UID is not digits and dots".into(),
                Some(attrs.clone()),
            ));
        }
    }
    Ok((study, series))
}

/// A small instance: reads its attributes from memory, checks them, and names its
/// place in the archive. Nothing is written here: the journal entry carries the bytes,
/// and the pipeline writes and syncs the file before the entry is processed.
fn check_small(
    part10: &[u8],
    cmd: &Command,
) -> Result<(String, crate::dicom::Attributes), CheckError> {
    let attrs = crate::dicom::extract_bytes(part10)
        .map_err(|e| (command::CANNOT_UNDERSTAND, e.to_string(), None))?;
    let (study, series) = check(&attrs, cmd)?;
    let rel = Archive::relative_path(study, series, &cmd.sop_instance);
    Ok((rel, attrs))
}

/// A large instance: reads the archived file's attributes, checks them against the
/// command, and moves the file to its place (synced).
fn check_and_place(
    archive: &Archive,
    tmp: &std::path::Path,
    file: &std::fs::File,
    cmd: &Command,
) -> Result<(String, crate::dicom::Attributes), CheckError> {
    let attrs = crate::dicom::extract(tmp)
        .map_err(|e| (command::CANNOT_UNDERSTAND, e.to_string(), None))?;
    let (study, series) = check(&attrs, cmd)?;
    let rel = archive
        .place(tmp, file, study, series, &cmd.sop_instance)
        .map_err(|e| (command::OUT_OF_RESOURCES, archive_failure(&e), None))?;
    Ok((rel, attrs))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
