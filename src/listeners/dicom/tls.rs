//! DICOM over TLS (PS3.15 Annex B): the server configuration from PEM files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read TLS certificate {path}: {reason}")]
    Cert { path: PathBuf, reason: String },
    #[error("cannot read TLS private key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("TLS certificate {cert} and key {key} do not make a server configuration: {reason}")]
    Config {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// A TLS 1.2/1.3 server configuration (ring provider) without client authentication.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect())
        .map_err(|e| TlsError::Cert {
            path: cert.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Cert {
            path: cert.to_path_buf(),
            reason: "no CERTIFICATE block in the file".into(),
        });
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_path_buf(),
        reason: e.to_string(),
    })?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .and_then(|b| b.with_no_client_auth().with_single_cert(certs, private))
    .map_err(|e| TlsError::Config {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_empty_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err = server_config(&dir.path().join("nope.pem"), &empty).unwrap_err();
        assert!(matches!(err, TlsError::Cert { .. }), "{err}");
        assert!(err.to_string().contains("nope.pem"), "{err}");
        let err = server_config(&empty, &empty).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "cannot read TLS certificate {}: no CERTIFICATE block in the file",
                empty.display()
            )
        );
    }
}
