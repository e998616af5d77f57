//! Logging setup. Log lines carry ids, types, routes, sizes and errors; never names,
//! identifiers or values, unless the operator sets `[log] log_phi = true`.

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;

static LOG_PHI: OnceLock<bool> = OnceLock::new();

/// Installs the global subscriber (stderr). `RUST_LOG` wins over `level`.
pub fn init(level: &str, log_phi: bool) {
    let _ = LOG_PHI.set(log_phi);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Whether patient data may appear in logs.
pub fn log_phi() -> bool {
    LOG_PHI.get().copied().unwrap_or(false)
}
