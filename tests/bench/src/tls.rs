//! TLS for the wss:// runs: the certificates `certs` writes, the load generator's connector and
//! the direct backend's acceptor.
//!
//! The client offers exactly one suite, TLS 1.3 with AES-128-GCM, so every target encrypts with
//! the same cipher whatever its own preference order (HAProxy picks by server preference, nginx
//! and rustls by the client's); it is also the suite browsers list first. The certificate is a
//! P-256 one signed by a CA made for the run, as a deployment would have, rather than a
//! self-signed leaf.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::crypto::ring;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Names the server certificate holds: the addresses the harness connects to.
const SERVER_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// Writes `ca.crt`, `server.crt`, `server.key` and `server.pem` (the certificate followed by the
/// key, the form HAProxy's `crt` takes) into `dir`.
pub fn write_certs(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "wsgate-bench CA");
    let ca = ca_params.self_signed(&ca_key)?;

    let key = rcgen::KeyPair::generate()?;
    let names: Vec<String> = SERVER_NAMES.iter().map(|s| s.to_string()).collect();
    let mut params = rcgen::CertificateParams::new(names)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &ca, &ca_key)?;

    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    };
    write("ca.crt", &ca.pem())?;
    write("server.crt", &cert.pem())?;
    write("server.key", &key.serialize_pem())?;
    write(
        "server.pem",
        &format!("{}{}", cert.pem(), key.serialize_pem()),
    )?;
    Ok(())
}

/// The load generator's TLS: trusts only `ca`, offers only TLS 1.3 with AES-128-GCM.
pub fn connector(ca: &Path) -> anyhow::Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))?
    {
        roots
            .add(cert.with_context(|| format!("parsing {}", ca.display()))?)
            .with_context(|| format!("adding {} as a root", ca.display()))?;
    }
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: vec![ring::cipher_suite::TLS13_AES_128_GCM_SHA256],
        ..ring::default_provider()
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS 1.3 with the ring provider")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The direct backend's TLS, with rustls's defaults as a bare server would have them.
pub fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading {}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("default protocol versions with the ring provider")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the backend's certificate and key")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// `TLSv1_3 TLS13_AES_128_GCM_SHA256`: what a connection negotiated, for the JSON output.
pub fn describe(conn: &rustls::ClientConnection) -> String {
    let version = conn
        .protocol_version()
        .map_or_else(|| "?".to_string(), |v| format!("{v:?}"));
    let suite = conn
        .negotiated_cipher_suite()
        .map_or_else(|| "?".to_string(), |s| format!("{:?}", s.suite()));
    format!("{version} {suite}")
}
