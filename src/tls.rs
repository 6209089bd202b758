//! TLS termination. Certificates are chosen by SNI from the names each certificate itself
//! carries (its subjectAltNames, wildcards included), so the config lists files, not names, and
//! cannot disagree with them; the first certificate answers clients that send no known name.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::config::TlsOptions;
use crate::error::Error;

/// ALPN offered to clients: h2 for plain HTTP traffic, http/1.1 for everything (WebSocket
/// upgrades need HTTP/1.1; browsers open a separate HTTP/1.1 connection for them).
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the server side of a TLS listener: TLS 1.2 and 1.3 only, rustls' AEAD suites with
/// forward secrecy, and the SNI resolver.
pub fn server_config(opts: &TlsOptions) -> Result<Arc<ServerConfig>, Error> {
    let provider = provider();
    let mut certs = Vec::with_capacity(opts.certificates.len());
    for pair in &opts.certificates {
        certs.push(Arc::new(load_certified_key(
            &pair.cert, &pair.key, &provider,
        )?));
    }
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Internal(format!("TLS versions: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { certs }));
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

fn load_certified_key(
    cert: &Path,
    key: &Path,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<CertifiedKey, Error> {
    let tls_err = |file: &Path, message: String| Error::Tls {
        file: file.display().to_string(),
        message,
    };
    let chain = read_chain(cert).map_err(|m| tls_err(cert, m))?;
    with_key(chain, cert, key, provider).map_err(|m| tls_err(key, m))
}

/// The certificate chain in `cert`, leaf first. Shared with config validation, so `wsgate check`
/// refuses exactly what serving would.
pub(crate) fn read_chain(cert: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("cannot read certificate: {}", pem_error(&e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM certificate: {}", pem_error(&e)))?;
    let Some(leaf) = chain.first() else {
        return Err("no CERTIFICATE block in the file".into());
    };
    // Otherwise a leaf that is not X.509 would surface as a key that does not fit it.
    webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| format!("the first certificate is not a valid X.509 certificate: {e}"))?;
    Ok(chain)
}

/// Pairs `chain` (read from `cert`, named in messages) with the private key in `key`.
pub(crate) fn with_key(
    chain: Vec<CertificateDer<'static>>,
    cert: &Path,
    key: &Path,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<CertifiedKey, String> {
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read private key: {}", pem_error(&e)))?;
    CertifiedKey::from_der(chain, private, provider)
        .map_err(|e| format!("key does not fit the certificate {}: {e}", cert.display()))
}

struct SniResolver {
    certs: Vec<Arc<CertifiedKey>>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SniResolver({} certificates)", self.certs.len())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = hello.server_name() {
            if let Some(found) = self.certs.iter().find(|ck| valid_for(ck, name)) {
                return Some(found.clone());
            }
        }
        self.certs.first().cloned()
    }
}

fn valid_for(ck: &CertifiedKey, name: &str) -> bool {
    let Ok(server_name) = ServerName::try_from(name) else {
        return false;
    };
    let Some(leaf) = ck.cert.first() else {
        return false;
    };
    webpki::EndEntityCert::try_from(leaf)
        .and_then(|ee| ee.verify_is_valid_for_subject_name(&server_name))
        .is_ok()
}

/// A PEM error as text a person can act on: rustls-pki-types writes the marker lines it talks
/// about as byte lists (`[45, 45, 45, ...]`).
pub(crate) fn pem_error(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error as E;
    match e {
        E::MissingSectionEnd { end_marker } => format!(
            "no {:?} line (is the file cut short?)",
            String::from_utf8_lossy(end_marker)
        ),
        E::IllegalSectionStart { line } => {
            format!("malformed BEGIN line {:?}", String::from_utf8_lossy(line))
        }
        E::NoItemsFound => "no PEM section of the expected kind in the file".to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod pem_tests {
    use super::*;

    #[test]
    fn pem_errors_name_their_lines_as_text() {
        let e = rustls_pki_types::pem::Error::MissingSectionEnd {
            end_marker: b"-----END CERTIFICATE-----".to_vec(),
        };
        assert_eq!(
            pem_error(&e),
            r#"no "-----END CERTIFICATE-----" line (is the file cut short?)"#
        );
    }
}
