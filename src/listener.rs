//! Accepting connections: TCP, optional TLS, then hyper-util's server with upgrades. Every stage
//! is bounded in time so a silent or slow client cannot hold a connection (slowloris): the TLS
//! handshake, the first request (which hyper's own header timeout does not cover while the
//! auto builder is still sniffing for HTTP/2), and each request head after that.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, info_span, Instrument};

use crate::config::Listener as ListenerConfig;
use crate::error::Error;
use crate::server::State;
use crate::service::{self, ConnContext};
use crate::shutdown::Shutdown;
use crate::tls;

pub struct BoundListener {
    pub listener: TcpListener,
    pub local_addr: SocketAddr,
    pub tls: Option<TlsAcceptor>,
}

pub async fn bind(cfg: &ListenerConfig) -> Result<BoundListener, Error> {
    let tls = match &cfg.tls {
        Some(opts) => Some(TlsAcceptor::from(tls::server_config(opts)?)),
        None => None,
    };
    let listener = TcpListener::bind(cfg.address)
        .await
        .map_err(|source| Error::Bind {
            addr: cfg.address,
            source,
        })?;
    let local_addr = listener.local_addr().map_err(|source| Error::Bind {
        addr: cfg.address,
        source,
    })?;
    Ok(BoundListener {
        listener,
        local_addr,
        tls,
    })
}

/// Accepts until shutdown says stop. Each connection takes the config snapshot current at accept.
pub async fn accept_loop(
    bound: BoundListener,
    state: Arc<State>,
    shutdown: Shutdown,
    graceful: Arc<GracefulShutdown>,
) {
    let stop = shutdown.accepting_stopped().clone();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = bound.listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    error!(listener = %bound.local_addr, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let ctx = Arc::new(ConnContext {
            snapshot: state.current(),
            peer,
            tls: bound.tls.is_some(),
            shutdown: shutdown.clone(),
            started: AtomicBool::new(false),
        });
        let span =
            info_span!("conn", %peer, listener = %bound.local_addr, tls = bound.tls.is_some());
        let tls = bound.tls.clone();
        let watcher = graceful.watcher();
        shutdown
            .tasks()
            .spawn(serve_connection(stream, tls, ctx, watcher).instrument(span));
    }
}

async fn serve_connection(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    ctx: Arc<ConnContext>,
    watcher: Watcher,
) {
    let http = &ctx.snapshot.config.http;
    match tls {
        None => serve_http(stream, ctx.clone(), watcher).await,
        Some(acceptor) => {
            match tokio::time::timeout(http.tls_handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls_stream)) => serve_http(tls_stream, ctx.clone(), watcher).await,
                Ok(Err(e)) => debug!(error = %e, "TLS handshake failed"),
                Err(_) => debug!("TLS handshake timed out"),
            }
        }
    }
}

async fn serve_http<I>(io: I, ctx: Arc<ConnContext>, watcher: Watcher)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http = ctx.snapshot.config.http.clone();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(http.header_read_timeout)
        .max_buf_size(http.max_header_size)
        .keep_alive(http.keep_alive);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(http.max_header_size as u32);
    let svc_ctx = ctx.clone();
    let service = service_fn(move |req| service::handle(svc_ctx.clone(), req));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    let conn = watcher.watch(conn.into_owned());
    tokio::pin!(conn);
    let first_request = tokio::time::sleep(http.header_read_timeout);
    tokio::pin!(first_request);
    let result = loop {
        tokio::select! {
            r = &mut conn => break r,
            _ = &mut first_request, if !ctx.started.load(Ordering::Relaxed) => {
                if !ctx.started.load(Ordering::Relaxed) {
                    debug!("no request within the header timeout; closing");
                    return;
                }
            }
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "connection ended with an error");
    }
}
