//! One MLLP listener: the accept loop and one task per connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::codec::{frame, MllpCodec, MllpError};
use crate::hl7::{self, AckCode, AckError, Header, Outcome};
use crate::journal::{Journal, NewEntry, Status};

/// Tells whether some route takes a message from this listener (the listener knows no
/// routes; the engine hands it this question).
pub type RouteCheck = Arc<dyn Fn(&str, &Header) -> bool + Send + Sync>;

/// What one MLLP listener needs.
#[derive(Clone)]
pub struct MllpSettings {
    pub name: String,
    pub max_message_bytes: usize,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    /// TLS for this listener (`tls_cert`/`tls_key` in the config); `None`: plain TCP.
    pub tls: Option<crate::tls::Acceptor>,
    /// When set, a message no route takes is answered AE/CE (it is still journaled).
    pub nak_unrouted: Option<RouteCheck>,
}

/// Accepts connections on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    settings: MllpSettings,
    journal: Journal,
    shutdown: CancellationToken,
) {
    let settings = Arc::new(settings);
    let name = settings.name.clone();
    let max = settings.max_connections;
    crate::listeners::accept_bounded(listener, max, &name, &shutdown, |stream, peer, permit| {
        let settings = settings.clone();
        let journal = journal.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            tracing::debug!(listener = %settings.name, %peer, "connection opened");
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(listener = %settings.name, %peer, error = %e, "cannot set TCP_NODELAY");
            }
            let served = match &settings.tls {
                None => connection(stream, peer, &settings, &journal, shutdown).await,
                Some(tls) => match tls.accept(stream).await {
                    Ok(s) => connection(s, peer, &settings, &journal, shutdown).await,
                    Err(e) => {
                        tracing::info!(listener = %settings.name, %peer, error = %e, "TLS handshake failed");
                        Ok(())
                    }
                },
            };
            if let Err(e) = served {
                tracing::debug!(listener = %settings.name, %peer, error = %e, "connection ended with an error");
            }
            tracing::debug!(listener = %settings.name, %peer, "connection closed");
        });
    })
    .await;
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: SocketAddr,
    settings: &MllpSettings,
    journal: &Journal,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let (read, mut write) = tokio::io::split(stream);
    let mut frames =
        FramedRead::with_capacity(read, MllpCodec::new(settings.max_message_bytes), 64 * 1024);
    let peer_text = peer.to_string();
    loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            n = tokio::time::timeout(settings.idle_timeout, frames.next()) => n,
        };
        let item = match next {
            Err(_) => {
                tracing::debug!(listener = %settings.name, %peer, "idle timeout, closing");
                return Ok(());
            }
            Ok(None) => return Ok(()),
            Ok(Some(item)) => item,
        };
        match item {
            Ok(content) => {
                let started = std::time::Instant::now();
                crate::telemetry::message_received(&settings.name);
                let ack = handle_message(content.to_vec(), &peer_text, settings, journal).await;
                write.write_all(&frame(&ack)).await?;
                write.flush().await?;
                crate::telemetry::ack_sent(&settings.name, is_positive(&ack), started.elapsed());
            }
            Err(MllpError::Oversized { max, prefix }) => {
                let started = std::time::Instant::now();
                crate::telemetry::message_received(&settings.name);
                let text = format!("message exceeds the maximum size of {max} bytes");
                tracing::warn!(listener = %settings.name, %peer, max, "oversized message refused");
                let header = hl7::read_header(&prefix).ok();
                let kept = keep_bad(
                    journal,
                    settings,
                    &peer_text,
                    header.as_ref(),
                    prefix,
                    &text,
                )
                .await;
                let ack = nak(
                    header.as_ref(),
                    Outcome::Reject,
                    100,
                    &format!("{text}{kept}"),
                    None,
                );
                write.write_all(&frame(&ack)).await?;
                write.flush().await?;
                crate::telemetry::ack_sent(&settings.name, false, started.elapsed());
                return Ok(());
            }
            Err(MllpError::Incomplete { len, prefix }) => {
                let text =
                    format!("connection closed inside a frame after {len} bytes (no end block)");
                tracing::warn!(listener = %settings.name, %peer, len, "incomplete frame at close");
                let header = hl7::read_header(&prefix).ok();
                keep_bad(
                    journal,
                    settings,
                    &peer_text,
                    header.as_ref(),
                    prefix,
                    &text,
                )
                .await;
                return Ok(());
            }
            Err(MllpError::Io(e)) => return Err(e),
        }
    }
}

/// Journals one message and returns the ACK to send.
async fn handle_message(
    raw: Vec<u8>,
    peer: &str,
    settings: &MllpSettings,
    journal: &Journal,
) -> Vec<u8> {
    let received_ms = now_ms();
    let size = raw.len();
    // The whole message is parsed before answering so that a malformed one is NAKed at
    // once; the pipeline parses it again from the journal.
    let (header, outcome, error) = match hl7::parse(&raw) {
        Ok(msg) => (Some(msg.header().clone()), Outcome::Accept, None),
        Err(e) => match hl7::read_header(&raw) {
            Ok(h) => (Some(h), Outcome::Error, Some(e.to_string())),
            Err(_) => (None, Outcome::Reject, Some(e.to_string())),
        },
    };
    let entry = NewEntry {
        listener: settings.name.clone(),
        peer: peer.to_string(),
        received_ms,
        message_type: header
            .as_ref()
            .map(Header::type_trigger)
            .unwrap_or_default(),
        control_id: header
            .as_ref()
            .map(|h| h.control_id.clone())
            .unwrap_or_default(),
        status: if error.is_some() {
            Status::Error
        } else {
            Status::Received
        },
        error: error.clone(),
        raw,
    };
    let message_type = entry.message_type.clone();
    match journal.append(entry).await {
        Ok(id) => {
            let ack_id = format!("HL{id}");
            match (outcome, error) {
                (Outcome::Accept, _) | (_, None) => {
                    tracing::debug!(listener = %settings.name, id, %message_type, size, "message journaled");
                    let h = header.as_ref().expect("parsed messages have a header");
                    if let Some(takes) = &settings.nak_unrouted {
                        if !takes(&settings.name, h) {
                            let text = format!(
                                "no route takes {} from listener \"{}\"; the message is kept with status unrouted",
                                h.type_trigger(),
                                settings.name
                            );
                            return nak(Some(h), Outcome::Error, 200, &text, Some(&ack_id));
                        }
                    }
                    hl7::build_ack(
                        h,
                        AckCode::for_outcome(h, Outcome::Accept),
                        None,
                        &ack_id,
                        &hl7_now(),
                    )
                }
                (outcome, Some(text)) => {
                    tracing::info!(listener = %settings.name, id, %message_type, size, "malformed message kept with status error");
                    let code = if outcome == Outcome::Reject { 100 } else { 102 };
                    nak(header.as_ref(), outcome, code, &text, Some(&ack_id))
                }
            }
        }
        Err(e) => {
            tracing::error!(listener = %settings.name, %message_type, size, error = %e, "message not journaled; NAK sent");
            nak(
                header.as_ref(),
                Outcome::Error,
                207,
                "message could not be stored durably; resend it later",
                None,
            )
        }
    }
}

/// Keeps an oversized or incomplete frame's prefix in the journal (status error) so it can
/// be inspected; returns a note for the NAK text when that failed.
async fn keep_bad(
    journal: &Journal,
    settings: &MllpSettings,
    peer: &str,
    header: Option<&Header>,
    prefix: Vec<u8>,
    text: &str,
) -> &'static str {
    let entry = NewEntry {
        listener: settings.name.clone(),
        peer: peer.to_string(),
        received_ms: now_ms(),
        message_type: header.map(Header::type_trigger).unwrap_or_default(),
        control_id: header.map(|h| h.control_id.clone()).unwrap_or_default(),
        status: Status::Error,
        error: Some(format!(
            "{text}; the journal keeps only the first {} bytes",
            prefix.len()
        )),
        raw: prefix,
    };
    match journal.append(entry).await {
        Ok(_) => "",
        Err(e) => {
            tracing::error!(listener = %settings.name, error = %e, "could not journal a refused frame");
            " (and it could not be journaled)"
        }
    }
}

fn nak(
    header: Option<&Header>,
    outcome: Outcome,
    code: u16,
    text: &str,
    ack_id: Option<&str>,
) -> Vec<u8> {
    let err = AckError {
        code,
        text: text.to_string(),
    };
    let fallback = format!("HLE{}", now_ms());
    let ack_id = ack_id.unwrap_or(&fallback);
    match header {
        Some(h) => hl7::build_ack(
            h,
            AckCode::for_outcome(h, outcome),
            Some(&err),
            ack_id,
            &hl7_now(),
        ),
        None => {
            let code = if outcome == Outcome::Reject {
                AckCode::AR
            } else {
                AckCode::AE
            };
            hl7::build_ack_without_header(code, &err, ack_id, &hl7_now())
        }
    }
}

/// Whether an ACK's MSA-1 is AA or CA.
fn is_positive(ack: &[u8]) -> bool {
    memchr::memmem::find(ack, b"\rMSA|")
        .and_then(|i| ack.get(i + 5..i + 7))
        .is_some_and(|code| code == b"AA" || code == b"CA")
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Current time as an HL7 DTM with zone, e.g. `20261126091500+0700`.
fn hl7_now() -> String {
    chrono::Local::now().format("%Y%m%d%H%M%S%z").to_string()
}
