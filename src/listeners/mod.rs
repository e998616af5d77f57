//! Network listeners. They know the journal and the protocols, never routes, mapping,
//! queue or store.

pub mod dicom;
pub mod mllp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Accepts connections on `listener` until `shutdown` is cancelled, at most `max` open at
/// once: a slot is taken before accepting, so connections beyond the limit wait in the
/// kernel's backlog. Each accepted connection goes to `serve_one` with its slot, which it
/// must keep for as long as the connection lives.
pub(crate) async fn accept_bounded(
    listener: TcpListener,
    max: usize,
    name: &str,
    shutdown: &CancellationToken,
    mut serve_one: impl FnMut(TcpStream, SocketAddr, OwnedSemaphorePermit),
) {
    let slots = Arc::new(Semaphore::new(max));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => serve_one(stream, peer, permit),
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
