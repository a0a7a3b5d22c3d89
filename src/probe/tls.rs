//! TLS client configuration for `turns:`/`stuns:` and `https:` credential URLs: the system's
//! CA bundle (or `--ca-file`), or no verification at all with `--insecure`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Where the system keeps its CA bundle, by distribution (the same list Go and openssl-probe
/// try). `SSL_CERT_FILE` comes first when set.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/tls/cacert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// How to check the server's certificate.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// Skip certificate verification entirely (`--insecure`).
    pub insecure: bool,
    /// Trust only the CA certificates in this PEM file instead of the system's.
    pub ca_file: Option<PathBuf>,
}

/// Builds the client configuration; the error says what is missing.
pub fn client_config(options: &TlsOptions) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS: {e}"))?;
    let config = if options.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(root_certificates(options)?);
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// The CA certificates to trust: those of `--ca-file`, or the system's bundle.
pub fn root_certificates(options: &TlsOptions) -> Result<Vec<CertificateDer<'static>>, String> {
    match &options.ca_file {
        Some(file) => load_roots(file),
        None => system_roots(),
    }
}

/// The name the certificate must match: an IP address or a DNS name.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_owned()).map_err(|e| format!("TLS: bad server name {host}: {e}"))
}

/// The certificates of a PEM file, if at least one of them is usable as a root.
fn load_roots(file: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(file)
        .map_err(|e| format!("TLS: {}: {e}", file.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("TLS: {}: {e}", file.display()))?;
    let (added, _ignored) = RootCertStore::empty().add_parsable_certificates(certs.clone());
    if added == 0 {
        return Err(format!(
            "TLS: {}: no usable CA certificate in the file",
            file.display()
        ));
    }
    Ok(certs)
}

fn system_roots() -> Result<Vec<CertificateDer<'static>>, String> {
    let env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    let candidates = env
        .into_iter()
        .chain(SYSTEM_BUNDLES.iter().map(PathBuf::from));
    for file in candidates {
        if file.is_file() {
            if let Ok(roots) = load_roots(&file) {
                return Ok(roots);
            }
        }
    }
    Err(
        "TLS: no system CA bundle found (install ca-certificates, or pass --ca-file or --insecure)"
            .to_owned(),
    )
}

/// Accepts any certificate (`--insecure`); signatures are still checked so the handshake
/// itself is sound.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
