//! Errors by where they came from, because that decides the answer: a client's mistake is a 4xx
//! or a 1002/1007/1009 close, an upstream's failure is a 502/504 or a 1014, a bad file is a
//! config error with file, line and key, and only our own bugs are 500/1011.

use std::io;
use std::net::SocketAddr;

use http::StatusCode;

use crate::config::ConfigError;

/// Which party a failure is attributed to (pingora's error source, in our words).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
    Config,
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{file}: {message}")]
    Tls { file: String, message: String },
    /// Located as a [`ConfigError`] is (`file:line:column: key:`), because the fix is in the
    /// file at that key, however late the port turned out to be taken. The reason is part of the
    /// message rather than a `source`, which `{:#}` would print a second time.
    #[error(
        "{}:{line}:{column}: {key}: cannot listen on {addr}: {reason}",
        crate::config::one_line(file)
    )]
    Bind {
        file: String,
        /// 1-based.
        line: usize,
        /// 1-based.
        column: usize,
        /// `listen[1].address` or `admin.address`.
        key: String,
        addr: SocketAddr,
        reason: io::Error,
    },
    #[error("client: {0}")]
    Client(#[from] ClientError),
    #[error("upstream {upstream}: {kind}")]
    Upstream {
        upstream: String,
        kind: UpstreamError,
    },
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    pub fn side(&self) -> Side {
        match self {
            Error::Config(_) | Error::Tls { .. } | Error::Bind { .. } => Side::Config,
            Error::Client(_) => Side::Client,
            Error::Upstream { .. } => Side::Upstream,
            Error::Internal(_) => Side::Internal,
        }
    }

    /// The HTTP answer for a failure before a WebSocket is established.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Client(e) => e.status(),
            Error::Upstream { kind, .. } => kind.status(),
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The Close code for a failure after the WebSocket is established.
    pub fn close_code(&self) -> u16 {
        match self {
            Error::Client(e) => e.close_code(),
            Error::Upstream { .. } => crate::ws::close::UPSTREAM_FAILED,
            _ => crate::ws::close::INTERNAL,
        }
    }
}

/// A client that broke the rules of HTTP or the WebSocket handshake or our policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("bad WebSocket handshake: {0}")]
    BadHandshake(&'static str),
    #[error("unsupported Sec-WebSocket-Version (only 13 is spoken)")]
    UnsupportedVersion,
    #[error("origin {0:?} is not allowed")]
    OriginRefused(String),
    #[error("an Origin header is required")]
    OriginMissing,
    #[error("WebSocket upgrades are not accepted on this route")]
    UpgradeRejected,
}

impl ClientError {
    pub fn status(&self) -> StatusCode {
        match self {
            ClientError::BadHandshake(_) => StatusCode::BAD_REQUEST,
            ClientError::UnsupportedVersion => StatusCode::UPGRADE_REQUIRED,
            ClientError::OriginRefused(_)
            | ClientError::OriginMissing
            | ClientError::UpgradeRejected => StatusCode::FORBIDDEN,
        }
    }

    pub fn close_code(&self) -> u16 {
        match self {
            ClientError::OriginRefused(_)
            | ClientError::OriginMissing
            | ClientError::UpgradeRejected => crate::ws::close::POLICY,
            _ => crate::ws::close::PROTOCOL_ERROR,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect failed: {0}")]
    Connect(#[source] io::Error),
    /// Connected, but the exchange broke off or the answer was not HTTP.
    #[error("no valid answer: {0}")]
    Answer(#[source] io::Error),
    #[error("timed out")]
    Timeout,
    #[error("TLS: {0}")]
    Tls(#[source] io::Error),
    #[error("HTTP: {0}")]
    Http(#[source] hyper::Error),
    #[error("refused the upgrade: {0}")]
    UpgradeRefused(String),
    #[error("no healthy upstream")]
    NoneHealthy,
}

impl UpstreamError {
    pub fn status(&self) -> StatusCode {
        match self {
            UpstreamError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            UpstreamError::NoneHealthy => StatusCode::SERVICE_UNAVAILABLE,
            _ if self.is_local() => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    /// A connect that failed before any packet left: wsgate itself was out of file descriptors
    /// or socket memory. That says nothing of the upstream, so it is no reason to eject it (its
    /// ejection would outlast the shortage by the cooldown), and the client is told the gateway
    /// is over its limits (503), not that the app failed (502).
    pub fn is_local(&self) -> bool {
        matches!(self, UpstreamError::Connect(e) if out_of_resources(e))
    }
}

/// `EMFILE`, `ENFILE`, `ENOBUFS` or `ENOMEM`: this process or host is out of what a socket needs.
pub fn out_of_resources(e: &io::Error) -> bool {
    use rustix::io::Errno;
    let errno = Errno::from_io_error(e);
    [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM]
        .iter()
        .any(|local| errno == Some(*local))
}
