//! Opening a connection to an upstream: TCP with a deadline, then TLS with SNI and verification
//! against the system roots or the route's `ca` file.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::config::{Route, Upstream};
use crate::error::{Error, UpstreamError};

/// The TLS client settings for a route's https upstreams. `alpn` is what the leg speaks
/// (http/1.1 for WebSocket legs, which cannot run over h2 here).
pub fn client_config(route: &Route, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, Error> {
    let roots = match &route.ca {
        Some(ca) => read_ca(ca).map_err(|message| Error::Tls {
            file: ca.display().to_string(),
            message,
        })?,
        None => {
            let mut roots = rustls::RootCertStore::empty();
            // Certificates the system store holds but rustls cannot use are skipped, as curl does.
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            roots
        }
    };
    let mut config = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Internal(format!("TLS versions: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The trust anchors of a route's `ca` file. Shared with config validation, so `wsgate check`
/// refuses exactly what serving would; a file without certificates would trust nothing and fail
/// every handshake, so it is refused too.
pub(crate) fn read_ca(ca: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)
        .map_err(|e| format!("cannot read CA file: {}", crate::tls::pem_error(&e)))?
    {
        let cert =
            cert.map_err(|e| format!("bad PEM certificate: {}", crate::tls::pem_error(&e)))?;
        roots
            .add(cert)
            .map_err(|e| format!("unusable CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no CERTIFICATE block in the file".into());
    }
    Ok(roots)
}

/// A connection to an upstream, plain or TLS, without dynamic dispatch on the data path.
pub enum UpstreamStream {
    Plain(TcpStream),
    Tls(UpstreamTls),
}

/// An upstream's TLS stream as hyper is handed it: [`crate::upgraded::Stream::take`] looks for
/// this very type after a 101.
pub type UpstreamTls = Box<TlsStream<TcpStream>>;

/// Connects within `timeout` (TCP and TLS together).
pub async fn connect(
    upstream: &Upstream,
    tls: Option<&Arc<ClientConfig>>,
    timeout: Duration,
) -> Result<UpstreamStream, UpstreamError> {
    tokio::time::timeout(timeout, async {
        let tcp = TcpStream::connect((
            upstream.host.trim_matches(|c| c == '[' || c == ']'),
            upstream.port,
        ))
        .await
        .map_err(UpstreamError::Connect)?;
        let _ = tcp.set_nodelay(true);
        if !upstream.tls {
            return Ok(UpstreamStream::Plain(tcp));
        }
        let config = tls.ok_or_else(|| {
            UpstreamError::Tls(io::Error::other(
                "no TLS client configuration for an https upstream",
            ))
        })?;
        let name = ServerName::try_from(
            upstream
                .host
                .trim_matches(|c| c == '[' || c == ']')
                .to_string(),
        )
        .map_err(|e| UpstreamError::Tls(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        let stream = TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await
            .map_err(UpstreamError::Tls)?;
        Ok(UpstreamStream::Tls(Box::new(stream)))
    })
    .await
    .map_err(|_| UpstreamError::Timeout)?
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

crate::upgraded::write_by_variant!(UpstreamStream, UpstreamStream::Plain, UpstreamStream::Tls);
