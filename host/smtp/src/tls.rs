//! The STARTTLS certificate: the configured one, or a self-signed one made at first start
//! and kept in `data_dir/tls/` so that clients pinning it see the same one after a restart.

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("cannot make a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("certificate and key do not fit together: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Builds the server TLS config (TLS 1.2 and 1.3 only).
pub fn server_config(
    cert_and_key: Option<&(PathBuf, PathBuf)>,
    tls_dir: &Path,
    hostname: &str,
) -> Result<Arc<ServerConfig>, TlsError> {
    let (cert, key) = match cert_and_key {
        Some((c, k)) => (c.clone(), k.clone()),
        None => self_signed(tls_dir, hostname)?,
    };
    let certs = CertificateDer::pem_file_iter(&cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Pem {
            path: cert.clone(),
            reason: e.to_string(),
        })?;
    let key = PrivateKeyDer::from_pem_file(&key).map_err(|e| TlsError::Pem {
        path: key.clone(),
        reason: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}

/// Paths of the kept self-signed pair, made when missing.
fn self_signed(dir: &Path, hostname: &str) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert = dir.join("selfsigned.crt");
    let key = dir.join("selfsigned.key");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Io { path, source }
    };
    sluice_core::durable::create_dir_all(dir).map_err(io(dir))?;
    let ck = rcgen::generate_simple_self_signed(vec![hostname.to_string()])?;
    // Key first: a power cut between the two leaves no certificate, and the next start
    // makes a new pair. Each file is whole or absent (written, fsynced, renamed).
    sluice_core::durable::write_atomic(&key, ck.signing_key.serialize_pem().as_bytes(), 0o600)
        .map_err(io(&key))?;
    sluice_core::durable::write_atomic(&cert, ck.cert.pem().as_bytes(), 0o644)
        .map_err(io(&cert))?;
    tracing::info!(path = %cert.display(), "made a self-signed TLS certificate");
    Ok((cert, key))
}
