//! TLS material from PEM files: the server side (rustls, with client certificates
//! optional at the handshake and verified against the cluster's CA when presented) and
//! the node's client side towards its peers (tonic's `ClientTlsConfig`, presenting the
//! node's certificate). Built again on every reload.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The files a node's TLS comes from (`{id}` already replaced).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What a node serves and dials with.
pub struct TlsMaterial {
    pub server: Arc<rustls::ServerConfig>,
    pub peer: tonic::transport::ClientTlsConfig,
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))
}

fn certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: holds no certificate", path.display()));
    }
    Ok(certs)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsMaterial {
    pub fn load(files: &TlsFiles) -> Result<TlsMaterial, String> {
        let (ca_pem, cert_pem, key_pem) = (read(&files.ca)?, read(&files.cert)?, read(&files.key)?);
        let mut roots = rustls::RootCertStore::empty();
        for ca in certs(&files.ca, &ca_pem)? {
            roots
                .add(ca)
                .map_err(|e| format!("{}: {e}", files.ca.display()))?;
        }
        let chain = certs(&files.cert, &cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| format!("{}: not a PEM private key: {e}", files.key.display()))?;
        // A client may authenticate with a token instead of a certificate, so one is not
        // required at the handshake; a certificate that is presented must verify.
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| format!("{}: {e}", files.ca.display()))?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| format!("{}: {e}", files.cert.display()))?;
        // h2 for gRPC (and HTTP/2 JSON); http/1.1 for the HTTP face's plain clients.
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let peer = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&ca_pem))
            .identity(tonic::transport::Identity::from_pem(&cert_pem, &key_pem));
        Ok(TlsMaterial {
            server: Arc::new(server),
            peer,
        })
    }
}
