//! Accepting connections: TCP, optional TLS, then hyper's server with upgrades: its HTTP/1 server
//! for a plain connection that begins like HTTP/1 (see [`sniff`]) and a TLS one that did not
//! choose h2 by ALPN, hyper-util's auto builder (HTTP/1 or HTTP/2) for the rest. Every stage is
//! bounded in time so a silent or slow client cannot hold a connection (slowloris): the TLS
//! handshake, the first bytes, the first request (which hyper's own header timeout does not
//! cover while the auto builder is still sniffing for HTTP/2), and each request head after that.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, info_span, Instrument};

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

/// `source` is the config file's name and `index` the listener's place in `listen`, for the
/// message when the address cannot be bound.
pub async fn bind(
    cfg: &ListenerConfig,
    index: usize,
    source: &str,
) -> Result<BoundListener, Error> {
    let bind_err = |reason| Error::Bind {
        file: source.to_owned(),
        line: cfg.line,
        column: cfg.column,
        key: format!("listen[{index}].address"),
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
    let mut failures = AcceptFailures::new(bound.local_addr);
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = bound.listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    failures.failed(&e).await;
                    continue;
                }
            },
        };
        failures.succeeded();
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

/// Accept failures in a row on one listener. Out of file descriptors, accept fails at once for
/// as long as the shortage lasts (the waiting connection keeps the listener readable): each
/// failure backs off instead of spinning, and only the first of a run and the recovery are
/// logged, not a line every 50 ms.
pub(crate) struct AcceptFailures {
    listener: SocketAddr,
    run: u64,
}

impl AcceptFailures {
    pub(crate) fn new(listener: SocketAddr) -> Self {
        AcceptFailures { listener, run: 0 }
    }

    pub(crate) async fn failed(&mut self, e: &std::io::Error) {
        if self.run == 0 {
            error!(listener = %self.listener, error = %e, "accept failed; retrying every 50 ms");
        }
        self.run += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    pub(crate) fn succeeded(&mut self) {
        if self.run > 0 {
            info!(listener = %self.listener, failures = self.run, "accepting again");
            self.run = 0;
        }
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
        read_ahead: Default::default(),
    });
    match tls {
        None => {
            let sniffed = tokio::select! {
                sniffed = tokio::time::timeout(http.header_read_timeout, sniff(&stream)) => sniffed,
                _ = ctx.shutdown.accepting_stopped().cancelled() => return,
            };
            match sniffed {
                Ok(Ok(Sniffed::Http1)) => serve_http1(stream, ctx).await,
                Ok(Ok(Sniffed::MaybeHttp2)) => serve_http(stream, ctx, watcher, false).await,
                Ok(Ok(Sniffed::Closed)) => {}
                Ok(Err(e)) => debug!(error = %e, "reading the first request failed"),
                Err(_) => debug!("no request within the header timeout; closing"),
            }
        }
        Some(acceptor) => {
            match tokio::time::timeout(http.tls_handshake_timeout, acceptor.accept(stream)).await {
                // RFC 9113 §3.2: HTTP/2 over TLS is chosen by ALPN, so anything else is HTTP/1.
                Ok(Ok(tls_stream)) if tls_stream.get_ref().1.alpn_protocol() == Some(b"h2") => {
                    serve_http(tls_stream, ctx, watcher, true).await
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

/// A connection that may speak HTTP/2 (a plain one that began with its preface, a TLS one
/// that chose h2 by ALPN, which then speaks nothing else). hyper's HTTP/2 server has no header
/// or idle timeout, so a client could hold the connection with one request and then silence,
/// or a header block that never ends: here a connection with no request open for
/// `header_read_timeout` is shut down gracefully (GOAWAY; a response still streaming goes on)
/// and dropped after as long again if it has not finished by then.
async fn serve_http<I>(io: I, ctx: Arc<ConnContext>, watcher: Watcher, h2_only: bool)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http = ctx.snapshot.config.http.clone();
    let mut builder = auto::Builder::new(InSpan);
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
    let activity = Arc::new(Activity::default());
    let svc_ctx = ctx.clone();
    let svc_activity = activity.clone();
    let service = service_fn(move |req| {
        let open = Open::new(svc_activity.clone());
        let answered = service::handle(svc_ctx.clone(), req);
        async move {
            let resp = answered.await?;
            Ok::<_, std::convert::Infallible>(
                resp.map(|body| service::Body::new(Tracked { body, _open: open })),
            )
        }
    });
    let timeout = http.header_read_timeout;
    // Runs a connection to its end, starting its graceful shutdown when listeners stop
    // accepting or when it has had no request open for `timeout`, and dropping it `timeout`
    // after that. A macro, as the two connection types share no trait a generic async fn
    // could take (hyper-util's `GracefulConnection` trips the check that the task is `Send`).
    macro_rules! drive {
        ($conn:expr) => {{
            let conn = $conn;
            tokio::pin!(conn);
            // Held until the connection ends, so the server's GracefulShutdown waits for it;
            // the graceful shutdown itself is started here, as `serve_http1` does, so that
            // idleness can start it too.
            let _watched = watcher;
            let stopping = ctx.shutdown.accepting_stopped().clone();
            let idle = tokio::time::sleep(timeout);
            tokio::pin!(idle);
            let mut closing = false;
            let result = loop {
                tokio::select! {
                    r = &mut conn => break r,
                    _ = stopping.cancelled(), if !closing => {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    _ = &mut idle => {
                        if closing {
                            debug!("connection open a header timeout after its shutdown; dropping it");
                            return;
                        }
                        match activity.idle(timeout) {
                            Idle::Until(until) => idle.as_mut().reset(until),
                            // Not one request yet (a silent client, or a preface and no
                            // more): nothing to finish, but an HTTP/2 client is told why with
                            // a GOAWAY (a connection still sniffing its protocol just ends),
                            // given a moment to flush it.
                            Idle::Never => {
                                debug!("no request within the header timeout; closing");
                                closing = true;
                                conn.as_mut().graceful_shutdown();
                                let flush = timeout.min(Duration::from_secs(1));
                                idle.as_mut().reset(tokio::time::Instant::now() + flush);
                            }
                            Idle::Now => {
                                debug!("no request open within the header timeout; closing");
                                closing = true;
                                conn.as_mut().graceful_shutdown();
                                idle.as_mut().reset(tokio::time::Instant::now() + timeout);
                            }
                        }
                    }
                }
            };
            if let Err(e) = result {
                debug!(error = %e, "connection ended with an error");
            }
        }};
    }
    if h2_only {
        // The auto builder's `http2_only` is ignored with upgrades, and an h2 connection has
        // none to serve.
        let builder = builder.http2_only();
        let conn = builder.serve_connection(TokioIo::new(io), service);
        drive!(conn);
    } else {
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        drive!(conn);
    }
}

/// hyper's executor for the tasks an HTTP/2 connection spawns, one per stream: each runs in the
/// span of the connection that spawned it (hyper spawns from within the connection's poll),
/// so an HTTP/2 request's log lines name the peer and listener as an HTTP/1 request's do.
/// tokio's own executor would start them in no span at all.
#[derive(Clone, Copy)]
struct InSpan;

impl<F> hyper::rt::Executor<F> for InSpan
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        tokio::spawn(fut.instrument(tracing::Span::current()));
    }
}

/// Requests of one connection whose responses have not ended, and when the last one did
/// (`None` until one has).
#[derive(Default)]
struct Activity {
    open: std::sync::atomic::AtomicUsize,
    since: std::sync::Mutex<Option<tokio::time::Instant>>,
}

/// Where a connection stands against its idle timeout.
enum Idle {
    /// Busy, or idle for less than the timeout: look again then.
    Until(tokio::time::Instant),
    /// Idle for the timeout since its last response.
    Now,
    /// Never sent a request.
    Never,
}

impl Activity {
    fn idle(&self, timeout: Duration) -> Idle {
        let now = tokio::time::Instant::now();
        if self.open.load(Ordering::Relaxed) > 0 {
            return Idle::Until(now + timeout);
        }
        match *self.since.lock().unwrap_or_else(|p| p.into_inner()) {
            None => Idle::Never,
            Some(since) if since + timeout > now => Idle::Until(since + timeout),
            Some(_) => Idle::Now,
        }
    }
}

/// One request counted open until its response body is dropped (ended or abandoned).
struct Open(Arc<Activity>);

impl Open {
    fn new(activity: Arc<Activity>) -> Self {
        activity.open.fetch_add(1, Ordering::Relaxed);
        Self(activity)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        *self.0.since.lock().unwrap_or_else(|p| p.into_inner()) = Some(tokio::time::Instant::now());
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request counted open.
struct Tracked {
    body: service::Body,
    _open: Open,
}

impl hyper::body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = service::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}
