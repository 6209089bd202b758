//! Accepting connections: TCP, optional TLS, then hyper's server with upgrades: its HTTP/1 server
//! for a plain connection that begins like HTTP/1 (see [`sniff`]) and a TLS one that did not
//! choose h2 by ALPN, hyper-util's auto builder (HTTP/1 or HTTP/2) for the rest. Every stage is
//! bounded in time so a silent or slow client cannot hold a connection (slowloris): the TLS
//! handshake, the first bytes, the first request (which hyper's own header timeout does not
//! cover while the auto builder is still sniffing for HTTP/2), and each request head after that.

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
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info_span, Instrument};

use crate::config::{Listener as ListenerConfig, ListenerKey};
use crate::error::Error;
use crate::proxy_protocol;
use crate::server::State;
use crate::service::{self, ConnContext};
use crate::shutdown::Shutdown;

pub struct BoundListener {
    pub listener: TcpListener,
    pub local_addr: SocketAddr,
}

/// `source` is the config file's name, for the message when the address cannot be bound.
pub async fn bind(cfg: &ListenerConfig, source: &str) -> Result<BoundListener, Error> {
    let bind_err = |reason| Error::Bind {
        at: format!("{source}:{}: listen", cfg.line),
        addr: cfg.address,
        reason,
    };
    let listener = TcpListener::bind(cfg.address).await.map_err(bind_err)?;
    let local_addr = listener.local_addr().map_err(bind_err)?;
    Ok(BoundListener {
        listener,
        local_addr,
    })
}

/// Accepts until `stop` (shutdown, or a reload that removed the listener). Each connection
/// takes the config snapshot current at accept, and with it the TLS certificates of the moment.
pub async fn accept_loop(
    bound: BoundListener,
    configured: ListenerKey,
    state: Arc<State>,
    shutdown: Shutdown,
    graceful: Arc<GracefulShutdown>,
    stop: CancellationToken,
) {
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
        let snapshot = state.current();
        let (tls, proxy_protocol) = snapshot
            .listeners
            .get(&configured)
            .map_or((None, false), |l| (l.tls.clone(), l.proxy_protocol));
        let accepted = Accepted {
            stream,
            peer,
            tls,
            proxy_protocol,
            snapshot,
            shutdown: shutdown.clone(),
            metrics: state.metrics.clone(),
            limiter: state.limiter.clone(),
            watcher: graceful.watcher(),
        };
        let span =
            info_span!("conn", %peer, listener = %bound.local_addr, tls = accepted.tls.is_some());
        shutdown
            .tasks()
            .spawn(serve_connection(accepted).instrument(span));
    }
}

/// A connection as accepted, before its PROXY header (if any) and TLS handshake.
struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    proxy_protocol: bool,
    snapshot: Arc<crate::server::Snapshot>,
    shutdown: Shutdown,
    metrics: Arc<crate::metrics::Metrics>,
    limiter: Arc<crate::limits::Limiter>,
    watcher: Watcher,
}

async fn serve_connection(a: Accepted) {
    let Accepted {
        mut stream,
        mut peer,
        tls,
        proxy_protocol,
        snapshot,
        shutdown,
        metrics,
        limiter,
        watcher,
    } = a;
    let http = snapshot.config.http.clone();
    if proxy_protocol {
        // The header comes first and fast from a balancer; the header timeout bounds it too.
        match tokio::time::timeout(
            http.header_read_timeout,
            proxy_protocol::read_header(&mut stream),
        )
        .await
        {
            Ok(Ok(Some(client))) => {
                tracing::Span::current().record("peer", tracing::field::display(client));
                peer = client;
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                debug!(error = %e, "bad PROXY protocol header; closing");
                return;
            }
            Err(_) => {
                debug!("no PROXY protocol header within the header timeout; closing");
                return;
            }
        }
    }
    let ctx = Arc::new(ConnContext {
        snapshot,
        peer,
        tls: tls.is_some(),
        shutdown,
        metrics,
        limiter,
        started: AtomicBool::new(false),
    });
    match tls {
        None => {
            let sniffed = tokio::select! {
                sniffed = tokio::time::timeout(http.header_read_timeout, sniff(&stream)) => sniffed,
                _ = ctx.shutdown.accepting_stopped().cancelled() => return,
            };
            match sniffed {
                Ok(Ok(Sniffed::Http1)) => serve_http1(stream, ctx).await,
                Ok(Ok(Sniffed::MaybeHttp2)) => serve_http(stream, ctx, watcher).await,
                Ok(Ok(Sniffed::Closed)) => {}
                Ok(Err(e)) => debug!(error = %e, "reading the first request failed"),
                Err(_) => debug!("no request within the header timeout; closing"),
            }
        }
        Some(acceptor) => {
            match tokio::time::timeout(http.tls_handshake_timeout, acceptor.accept(stream)).await {
                // RFC 9113 §3.2: HTTP/2 over TLS is chosen by ALPN, so anything else is HTTP/1.
                Ok(Ok(tls_stream)) if tls_stream.get_ref().1.alpn_protocol() == Some(b"h2") => {
                    serve_http(tls_stream, ctx, watcher).await
                }
                Ok(Ok(tls_stream)) => serve_http1(tls_stream, ctx).await,
                Ok(Err(e)) => debug!(error = %e, "TLS handshake failed"),
                Err(_) => debug!("TLS handshake timed out"),
            }
        }
    }
}

/// What the first bytes of a plain connection say it speaks.
enum Sniffed {
    Http1,
    /// The HTTP/2 preface, or too few bytes yet to tell (a lone `P`).
    MaybeHttp2,
    Closed,
}

/// Looks at the first bytes without taking them, so that a plain HTTP/1.1 connection can go to
/// hyper's HTTP/1 server as the socket itself: hyper-util's auto builder would read them to
/// decide instead, and keep them in a `Rewind` wrapper that its upgraded connections can never
/// be taken out of (see [`crate::upgraded`]).
async fn sniff(stream: &TcpStream) -> std::io::Result<Sniffed> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut first = [0u8; PREFACE.len()];
    Ok(match stream.peek(&mut first).await? {
        0 => Sniffed::Closed,
        n if PREFACE.starts_with(&first[..n]) => Sniffed::MaybeHttp2,
        _ => Sniffed::Http1,
    })
}

/// A connection known to speak HTTP/1 (a plain one that began like it, a TLS one that did not
/// choose h2): hyper's own HTTP/1 server, so that an upgrade's stream can be taken back (see
/// [`crate::upgraded`]). hyper-util's `GracefulShutdown` cannot watch its upgradeable connection
/// type, so this one starts its graceful shutdown itself when listeners stop accepting, as the
/// watcher would.
async fn serve_http1<I>(io: I, ctx: Arc<ConnContext>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http = ctx.snapshot.config.http.clone();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(http.header_read_timeout)
        .max_buf_size(http.max_header_size)
        .keep_alive(http.keep_alive);
    let svc_ctx = ctx.clone();
    let service = service_fn(move |req| service::handle(svc_ctx.clone(), req));
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    let stopping = ctx.shutdown.accepting_stopped().clone();
    let mut graceful = false;
    let result = loop {
        tokio::select! {
            r = &mut conn => break r,
            _ = stopping.cancelled(), if !graceful => {
                graceful = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "connection ended with an error");
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
