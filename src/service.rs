//! The per-request entry point: health and the sample page before routing, then the route's
//! WebSocket mode for upgrades and the route's upstream for everything else.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use tracing::{info, info_span, warn, Instrument};

use crate::config::WsMode;
use crate::error::ClientError;
use crate::limits::{Limiter, Permit, Refusal};
use crate::metrics::Metrics;
use crate::proxy;
use crate::router::host_without_port;
use crate::server::Snapshot;
use crate::shutdown::Shutdown;
use crate::wake::Filtered;
use crate::ws::session::{close_requested, CloseRequest, SessionEnd};
use crate::ws::{echo, handshake, origin, relay};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

/// What one client connection knows, fixed at accept: the config snapshot it was accepted
/// under (a reload does not change a connection's routes mid-way), its peer and listener.
pub struct ConnContext {
    pub snapshot: Arc<Snapshot>,
    pub peer: SocketAddr,
    pub tls: bool,
    pub shutdown: Shutdown,
    pub metrics: Arc<Metrics>,
    pub limiter: Arc<Limiter>,
    /// Set by the first request, so the listener's first-byte timer knows the client spoke.
    pub started: AtomicBool,
}

pub async fn handle(
    ctx: Arc<ConnContext>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    ctx.started.store(true, Ordering::Relaxed);
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let resp = route(&ctx, req).await;
    // The access log: one line per request (an upgrade's session gets its own line when it ends).
    info!(
        target: "wsgate::access",
        peer = %ctx.peer,
        method = %method,
        path = %path,
        status = resp.status().as_u16(),
        duration_ms = started.elapsed().as_micros() as f64 / 1000.0,
        "request"
    );
    Ok(resp)
}

async fn route(ctx: &Arc<ConnContext>, mut req: Request<Incoming>) -> Response<Body> {
    let config = &ctx.snapshot.config;
    let path = req.uri().path();
    if path == config.health_path {
        return if ctx.shutdown.is_draining() {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining")
        } else {
            text(StatusCode::OK, "ok")
        };
    }
    if config.sample_page.as_deref() == Some(path)
        && matches!(*req.method(), Method::GET | Method::HEAD)
    {
        return Response::builder()
            .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
            .header(header::CACHE_CONTROL, "no-cache")
            .body(full(crate::page::HTML))
            .expect("static response");
    }
    let host = request_host(&req);
    let Some((index, route)) = ctx
        .snapshot
        .router
        .find(&config.routes, host.as_deref(), path)
    else {
        return text(StatusCode::NOT_FOUND, "no route for this request");
    };
    if !handshake::wants_websocket(&req) {
        return if route.upstreams.is_empty() {
            // An echo-only route: say what it speaks instead of a bare 404.
            let mut resp = text(
                StatusCode::UPGRADE_REQUIRED,
                "this route speaks WebSocket only",
            );
            resp.headers_mut()
                .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            resp.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
            resp
        } else {
            proxy::http::forward(ctx, index, req).await
        };
    }
    let metrics = &ctx.metrics;
    let started = std::time::Instant::now();
    let hs = match handshake::validate(&req) {
        Ok(hs) => hs,
        Err(e) => {
            metrics.upgrade(&route.path, "handshake");
            return refuse(ctx, &e);
        }
    };
    if route.websocket == WsMode::Reject {
        metrics.upgrade(&route.path, "rejected");
        return refuse(ctx, &ClientError::UpgradeRejected);
    }
    if let Err(e) = origin::check(req.headers(), &route.ws) {
        metrics.upgrade(&route.path, "origin");
        return refuse(ctx, &e);
    }
    if ctx.shutdown.is_draining() {
        metrics.upgrade(&route.path, "draining");
        return with_close(text(StatusCode::SERVICE_UNAVAILABLE, "draining"));
    }
    let client = ctx.client_ip(req.headers());
    let permit = match ctx.limiter.admit(client, &config.limits) {
        Ok(permit) => permit,
        Err(refusal) => {
            metrics.upgrade(&route.path, "limits");
            let (status, why) = match refusal {
                Refusal::Busy => (StatusCode::SERVICE_UNAVAILABLE, "too many connections"),
                Refusal::Rate => (StatusCode::TOO_MANY_REQUESTS, "too many new connections"),
            };
            warn!(peer = %ctx.peer, client = %client, why, "upgrade refused by limits");
            return with_close(text(status, why));
        }
    };
    match route.websocket {
        WsMode::Echo => {}
        WsMode::Relay => {
            let admitted = Admitted {
                permit,
                client,
                started,
            };
            return relay::handle(ctx, index, req, hs, admitted).await;
        }
        WsMode::Passthrough => {
            let admitted = Admitted {
                permit,
                client,
                started,
            };
            return proxy::passthrough::handle(ctx, index, req, admitted).await;
        }
        WsMode::Reject => unreachable!("rejected above"),
    }
    let protocol = handshake::select_protocol(&hs.offered_protocols, &route.subprotocols);
    let response = handshake::switching_protocols(&hs.accept, protocol)
        .body(empty())
        .expect("valid 101");
    let on_upgrade = hyper::upgrade::on(&mut req);
    let admitted = Admitted {
        permit,
        client,
        started,
    };
    spawn_session(
        ctx,
        index,
        "echo",
        None,
        admitted,
        on_upgrade,
        // The block borrows what it captured, so the session's task holds each once.
        move |mut io, snapshot, mut closing| async move {
            let route = &snapshot.config.routes[index];
            let rate = snapshot.config.limits.message_rate;
            echo::run(&mut io, &route.ws, rate, &mut closing).await
        },
    );
    response
}

/// How a session learns it must close with 1001 (shutdown, a draining reload, its age limit).
/// Every mode polls it whenever its task wakes (for every burst of frames or bytes), so it is
/// filtered: the route's token takes two locks per poll.
pub type Closing = Filtered<Pin<Box<dyn Future<Output = CloseRequest> + Send>>>;

/// Starts the task of an accepted WebSocket session, whatever its mode, so that every mode is
/// tracked for shutdown, holds its limiter slot, is counted in metrics and gets one access-log
/// line, in one place. `run` gets the upgraded client connection once hyper hands it over.
pub fn spawn_session<F, Fut>(
    ctx: &ConnContext,
    index: usize,
    mode: &'static str,
    upstream: Option<String>,
    admitted: Admitted,
    on_upgrade: hyper::upgrade::OnUpgrade,
    run: F,
) where
    F: FnOnce(crate::upgraded::Stream, Arc<Snapshot>, Closing) -> Fut + Send + 'static,
    Fut: Future<Output = SessionEnd> + Send + 'static,
{
    let snapshot = ctx.snapshot.clone();
    let metrics = ctx.metrics.clone();
    let path = &snapshot.config.routes[index].path;
    metrics.upgrade(path, "accepted");
    metrics.handshake(path, mode, admitted.started.elapsed());
    let closing: Closing = Filtered::new(Box::pin(close_requested(
        snapshot.route_closing[index].clone(),
        snapshot.config.close_spread,
        snapshot.config.max_connection_age,
    )));
    // A root span, not a child of the connection's: a child would keep the connection span's
    // data alive for as long as the WebSocket lives (several hundred bytes per idle session),
    // long after the HTTP connection it came from is gone. It repeats what it needs of it.
    let span = info_span!(
        parent: None,
        "ws",
        peer = %admitted.client,
        conn = %ctx.peer,
        tls = ctx.tls,
        route = %path,
        mode,
        upstream = upstream.as_deref().unwrap_or("-")
    );
    let task = SessionTask {
        stage: Stage::Upgrading {
            on_upgrade,
            start: Some((run, closing)),
        },
        report: Report {
            _permit: admitted.permit,
            snapshot,
            metrics,
            index,
            mode,
        },
    };
    ctx.shutdown.tasks().spawn(task.instrument(span));
}

pin_project_lite::pin_project! {
    /// A session's task, written out by hand rather than as an `async` block: a block that
    /// moves `run` (and what it captured) and `closing` into the session's future keeps room
    /// for them as well, for the session's life, and an idle session is mostly its task. Here
    /// they live in the `Upgrading` stage only, which the session's future replaces.
    struct SessionTask<F, Fut> {
        #[pin]
        stage: Stage<F, Fut>,
        report: Report,
    }
}

pin_project_lite::pin_project! {
    #[project = StageProj]
    enum Stage<F, Fut> {
        Upgrading {
            on_upgrade: hyper::upgrade::OnUpgrade,
            start: Option<(F, Closing)>,
        },
        Running {
            #[pin]
            session: Fut,
            open: Option<crate::metrics::OpenGuard>,
            started: std::time::Instant,
        },
        Done,
    }
}

/// What a session's task keeps from start to end: its limiter slot and what it reports with.
struct Report {
    _permit: Permit,
    snapshot: Arc<Snapshot>,
    metrics: Arc<Metrics>,
    index: usize,
    mode: &'static str,
}

impl Report {
    fn path(&self) -> &str {
        &self.snapshot.config.routes[self.index].path
    }
}

impl<F, Fut> Future for SessionTask<F, Fut>
where
    F: FnOnce(crate::upgraded::Stream, Arc<Snapshot>, Closing) -> Fut,
    Fut: Future<Output = SessionEnd>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        let mut this = self.project();
        let report: &Report = this.report;
        loop {
            match this.stage.as_mut().project() {
                StageProj::Upgrading { on_upgrade, start } => {
                    let upgraded = match std::task::ready!(Pin::new(on_upgrade).poll(cx)) {
                        Ok(u) => u,
                        Err(e) => {
                            warn!(error = %e, "upgrade did not complete");
                            this.stage.set(Stage::Done);
                            return std::task::Poll::Ready(());
                        }
                    };
                    let (run, closing) = start.take().expect("the upgrade completes once");
                    let open = report.metrics.session_open(report.path(), report.mode);
                    let started = std::time::Instant::now();
                    let session = run(
                        crate::upgraded::Stream::take(upgraded),
                        report.snapshot.clone(),
                        closing,
                    );
                    this.stage.set(Stage::Running {
                        session,
                        open: Some(open),
                        started,
                    });
                }
                StageProj::Running {
                    session,
                    open,
                    started,
                } => {
                    let end = std::task::ready!(session.poll(cx));
                    let (open, lasted) = (open.take(), started.elapsed());
                    // The session's sockets close before it is reported.
                    this.stage.set(Stage::Done);
                    report
                        .metrics
                        .session_ended(report.path(), report.mode, &end, lasted);
                    info!(
                        target: "wsgate::access",
                        duration_ms = lasted.as_millis() as u64,
                        code = end.code,
                        closed_by = %end.closed_by,
                        reason = %end.reason,
                        messages_in = end.messages_in,
                        messages_out = end.messages_out,
                        bytes_in = end.bytes_in,
                        bytes_out = end.bytes_out,
                        "session ended"
                    );
                    drop(open);
                    return std::task::Poll::Ready(());
                }
                StageProj::Done => return std::task::Poll::Ready(()),
            }
        }
    }
}

/// An upgrade that passed every check of the gateway's own: what a mode needs to carry into
/// its session (the limiter's slot, held until the session ends) and to report.
pub struct Admitted {
    pub permit: Permit,
    /// The real client address (PROXY header or trusted X-Forwarded-For), for balancing.
    pub client: std::net::IpAddr,
    /// When the upgrade request arrived, for the handshake-latency histogram.
    pub started: std::time::Instant,
}

impl ConnContext {
    /// The client's address: the TCP peer (or the PROXY header's source), unless that peer is a
    /// trusted proxy, in which case the right-most untrusted `X-Forwarded-For` entry (entries
    /// further left were written by the client itself and prove nothing).
    pub fn client_ip(&self, headers: &http::HeaderMap) -> std::net::IpAddr {
        let trusted = &self.snapshot.config.trusted_proxies;
        let peer = self.peer.ip();
        if !trusted.iter().any(|c| c.contains(peer)) {
            return peer;
        }
        let forwarded: Vec<std::net::IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        forwarded
            .iter()
            .rev()
            .find(|ip| !trusted.iter().any(|c| c.contains(**ip)))
            .or(forwarded.first())
            .copied()
            .unwrap_or(peer)
    }
}

/// The Host a request was sent to: the URI authority (HTTP/2, absolute-form) or the Host header.
pub fn request_host<B>(req: &Request<B>) -> Option<String> {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(header::HOST)?
                .to_str()
                .ok()
                .map(str::to_owned)
        })?;
    Some(host_without_port(&authority).to_ascii_lowercase())
}

/// A refused upgrade. The connection is closed after the answer: bytes the client pipelined
/// behind a refused upgrade are never read as a next request.
pub fn refuse(ctx: &ConnContext, e: &ClientError) -> Response<Body> {
    let status = e.status();
    if status == StatusCode::FORBIDDEN {
        warn!(peer = %ctx.peer, error = %e, "upgrade refused");
    } else {
        info!(peer = %ctx.peer, error = %e, "bad handshake");
    }
    let mut resp = text(status, &e.to_string());
    if matches!(e, ClientError::UnsupportedVersion) {
        resp.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
    }
    with_close(resp)
}

/// The answer when a relay or passthrough upgrade could not reach its upstream (none healthy,
/// connect failure, refused or invalid upgrade, timeout). The client connection is closed after
/// it, as for any refused upgrade, so nothing pipelined behind the upgrade is read.
pub fn upstream_failed(
    ctx: &ConnContext,
    route: &str,
    mode: &'static str,
    upstream: &str,
    kind: crate::error::UpstreamError,
) -> Response<Body> {
    let status = kind.status();
    let e = crate::error::Error::Upstream {
        upstream: upstream.to_owned(),
        kind,
    };
    ctx.metrics.upgrade(route, "upstream");
    warn!(peer = %ctx.peer, route, mode, error = %e, "upgrade not completed: upstream failed");
    with_close(text(
        status,
        status.canonical_reason().unwrap_or("bad gateway"),
    ))
}

pub fn with_close(mut resp: Response<Body>) -> Response<Body> {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

pub fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut resp = Response::new(full(format!("{body}\n")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

pub fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> Body {
    full(Bytes::new())
}
