//! The per-request entry point: health and the sample page before routing, then the route's
//! WebSocket mode for upgrades and the route's upstream for everything else.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use tracing::{debug, info, info_span, warn, Instrument};

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
    /// Bytes of request bodies read ahead on this connection and not yet handed to an upstream
    /// (see `proxy::http::read_whole`): HTTP/2 runs many requests at once, and together they are
    /// held to a budget.
    pub read_ahead: std::sync::atomic::AtomicUsize,
}

pub async fn handle(
    ctx: Arc<ConnContext>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let client = ctx.client_ip(req.headers());
    // Whatever of a body is left unread when the answer goes out makes hyper close an HTTP/1
    // connection after it; the client must be told so, or it takes the close for a failure
    // and loses what it pipelined without knowing why. (HTTP/2 only resets the stream.)
    let body_pending =
        req.version() < Version::HTTP_2 && !hyper::body::Body::is_end_stream(req.body());
    let max_head = ctx.snapshot.config.http.max_header_size;
    let mut resp = if req.version() < Version::HTTP_2 && head_size(&req) > max_head {
        info!(peer = %ctx.peer, max_head, "request head too large");
        with_close(text(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request head too large",
        ))
    } else {
        route(&ctx, req, client).await
    };
    if body_pending
        && resp.status() != StatusCode::SWITCHING_PROTOCOLS
        && resp.extensions().get::<BodyForwarded>().is_none()
    {
        resp = with_close(resp);
    }
    // The access log: one line per request (an upgrade's session gets its own line when it ends).
    let route = resp
        .extensions()
        .get::<Routed>()
        .map_or("-".into(), |r| ctx.snapshot.config.routes[r.0].name());
    info!(
        target: "wsgate::access",
        peer = %ctx.peer,
        client = %client,
        method = %method,
        path = %path,
        route = %route,
        status = resp.status().as_u16(),
        duration_ms = started.elapsed().as_micros() as f64 / 1000.0,
        "request"
    );
    Ok(resp)
}

/// Marks an upstream's answer: the request body went on to the upstream, so none of it is left
/// for hyper to find unread, and the connection may outlive a request that carried one.
#[derive(Clone, Copy)]
pub struct BodyForwarded;

/// `client` is [`ConnContext::client_ip`] of the request, which the access log needs as well.
async fn route(
    ctx: &Arc<ConnContext>,
    mut req: Request<Incoming>,
    client: std::net::IpAddr,
) -> Response<Body> {
    if let Err(why) = settle_host(&mut req) {
        info!(peer = %ctx.peer, why, "bad request");
        return with_close(text(StatusCode::BAD_REQUEST, why));
    }
    if req.method() == Method::CONNECT {
        // A gateway to known apps is no tunnel to anywhere; nothing after a CONNECT is a request.
        return with_close(text(
            StatusCode::NOT_IMPLEMENTED,
            "CONNECT is not supported",
        ));
    }
    // RFC 9112 6.1: a coding wsgate cannot decode is refused (501), not passed on undecoded
    // under a header that no longer names it. Its body is never read, so nothing after it is.
    if let Some(coding) = proxy::foreign_transfer_coding(req.headers()) {
        info!(peer = %ctx.peer, coding, "transfer coding not supported");
        return with_close(text(
            StatusCode::NOT_IMPLEMENTED,
            "transfer coding not supported",
        ));
    }
    let config = &ctx.snapshot.config;
    let path = req.uri().path();
    if path == config.health_path {
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            let mut resp = text(StatusCode::METHOD_NOT_ALLOWED, "health takes GET or HEAD");
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return resp;
        }
        return if ctx.shutdown.is_draining() {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining")
        } else {
            text(StatusCode::OK, "ok")
        };
    }
    if req.method() == Method::TRACE {
        // An app's echo of the request would show a script the cookies and credentials the
        // browser keeps from it (cross-site tracing); nginx refuses TRACE the same way.
        return text(StatusCode::METHOD_NOT_ALLOWED, "TRACE is not supported");
    }
    // An upgrade is never answered with the page: it goes on to the route that serves it.
    if config.sample_page.as_deref() == Some(path)
        && matches!(*req.method(), Method::GET | Method::HEAD)
        && !handshake::wants_websocket(&req)
    {
        let page = crate::page::html(crate::page::ws_path(&config.routes));
        return Response::builder()
            .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
            .header(header::CACHE_CONTROL, "no-cache")
            .body(full(page))
            .expect("static response");
    }
    // The app still gets the path as it was sent; only the choice of route reads it decoded.
    let routed = match crate::router::routing_path(path) {
        Ok(routed) => routed,
        Err(why) => {
            info!(peer = %ctx.peer, path, why, "path refused");
            return with_close(text(StatusCode::BAD_REQUEST, why));
        }
    };
    let host = request_host(&req);
    let Some((index, _)) = ctx
        .snapshot
        .router
        .find(&config.routes, host.as_deref(), &routed)
    else {
        let resp = text(StatusCode::NOT_FOUND, "no route for this request");
        // A refused upgrade ends the connection, as every other refusal of one does.
        return if handshake::wants_websocket(&req) {
            with_close(resp)
        } else {
            resp
        };
    };
    let mut resp = on_route(ctx, req, client, index).await;
    resp.extensions_mut().insert(Routed(index));
    resp
}

/// The route that answered a request, for its access line.
#[derive(Clone, Copy)]
struct Routed(usize);

/// A request that found its route (`index` in the connection's snapshot).
async fn on_route(
    ctx: &Arc<ConnContext>,
    req: Request<Incoming>,
    client: std::net::IpAddr,
    index: usize,
) -> Response<Body> {
    let config = &ctx.snapshot.config;
    let route = &config.routes[index];
    if !handshake::wants_websocket(&req) {
        return if route.websocket == WsMode::Reject && route.upstreams.is_empty() {
            // Nothing here is served: a 426 would invite an upgrade that gets 403.
            text(StatusCode::FORBIDDEN, "this route serves nothing")
        } else if route.upstreams.is_empty() {
            // An echo-only route: say what it speaks instead of a bare 404.
            upgrade_required(text(
                StatusCode::UPGRADE_REQUIRED,
                "this route speaks WebSocket only",
            ))
        } else {
            proxy::http::forward(ctx, index, req).await
        };
    }
    let metrics = &ctx.metrics;
    let started = std::time::Instant::now();
    let hs = match handshake::validate(&req) {
        Ok(hs) => hs,
        Err(e) => {
            metrics.upgrade(&route.name(), "handshake");
            return refuse(ctx, &e);
        }
    };
    if route.websocket == WsMode::Reject {
        metrics.upgrade(&route.name(), "rejected");
        return refuse(ctx, &ClientError::UpgradeRejected);
    }
    if let Err(e) = origin::check(req.headers(), &route.ws) {
        let outcome = match e {
            ClientError::BadHandshake(_) => "handshake",
            _ => "origin",
        };
        metrics.upgrade(&route.name(), outcome);
        return refuse(ctx, &e);
    }
    // Upgrades are served through `drain_delay` like everything else, since the load balancer
    // may still send them (they get their 1001 with the rest); only a request read after the
    // listeners stopped, on a connection accepted before, is refused.
    if ctx.shutdown.accepting_stopped().is_cancelled() {
        metrics.upgrade(&route.name(), "draining");
        return with_close(text(StatusCode::SERVICE_UNAVAILABLE, "draining"));
    }
    let permit = match ctx.limiter.admit(client, &config.limits) {
        Ok(permit) => permit,
        Err(refusal) => {
            metrics.upgrade(&route.name(), "limits");
            let (status, why) = match refusal {
                Refusal::Busy => (StatusCode::SERVICE_UNAVAILABLE, "too many connections"),
                Refusal::Rate => (StatusCode::TOO_MANY_REQUESTS, "too many new connections"),
            };
            warn!(peer = %ctx.peer, client = %client, why, "upgrade refused by limits");
            return with_close(text(status, why));
        }
    };
    let admitted = Admitted {
        permit,
        client,
        started,
    };
    // Relay and passthrough reach their upstream before they answer; if the client leaves
    // meanwhile, hyper drops this future there, and the guard counts the upgrade.
    let unanswered = Unanswered::new(metrics, route);
    let response = match route.websocket {
        WsMode::Echo => echo_upgrade(ctx, index, req, &hs, admitted),
        WsMode::Relay => relay::handle(ctx, index, req, hs, admitted).await,
        WsMode::Passthrough => proxy::passthrough::handle(ctx, index, req, admitted).await,
        WsMode::Reject => unreachable!("rejected above"),
    };
    unanswered.answered();
    response
}

/// Answers an echo route's upgrade at once, and starts its session.
fn echo_upgrade(
    ctx: &Arc<ConnContext>,
    index: usize,
    mut req: Request<Incoming>,
    hs: &handshake::Handshake,
    admitted: Admitted,
) -> Response<Body> {
    let route = &ctx.snapshot.config.routes[index];
    let protocol = handshake::select_protocol(&hs.offered_protocols, &route.subprotocols);
    let response = handshake::switching_protocols(&hs.accept, protocol)
        .body(empty())
        .expect("valid 101");
    let on_upgrade = hyper::upgrade::on(&mut req);
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

/// Counts an upgrade as `abandoned` when its handler is dropped before it answered: hyper drops
/// a request's future when the client's connection fails, and relay and passthrough upgrades
/// wait on their upstream first (echo answers at once). Every answer they give counts its own outcome
/// (`accepted`, `upstream`), so without this an upgrade the client left mid-way would be in
/// none, and `wsgate_upgrades_total` would not add up.
struct Unanswered<'a> {
    metrics: &'a Metrics,
    route: Option<&'a crate::config::Route>,
}

impl<'a> Unanswered<'a> {
    fn new(metrics: &'a Metrics, route: &'a crate::config::Route) -> Self {
        Unanswered {
            metrics,
            route: Some(route),
        }
    }

    fn answered(mut self) {
        self.route = None;
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if let Some(route) = self.route {
            debug!(route = %route.name(), "upgrade abandoned while its upstream was reached");
            self.metrics.upgrade(&route.name(), "abandoned");
        }
    }
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
    let route = snapshot.config.routes[index].name();
    metrics.upgrade(&route, "accepted");
    metrics.handshake(&route, mode, admitted.started.elapsed());
    let closing: Closing = Filtered::new(Box::pin(close_requested(
        snapshot.route_closing[index].clone(),
        snapshot.sockets_closing.clone(),
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
        route = %route,
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
    fn route(&self) -> std::borrow::Cow<'_, str> {
        self.snapshot.config.routes[self.index].name()
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
                            // The client left between its upgrade request and the switch: its
                            // doing, so not a warning, but counted, so that `accepted` less the
                            // sessions that ended still adds up.
                            debug!(error = %e, "upgrade did not complete");
                            report.metrics.upgrade(&report.route(), "abandoned");
                            this.stage.set(Stage::Done);
                            return std::task::Poll::Ready(());
                        }
                    };
                    let (run, closing) = start.take().expect("the upgrade completes once");
                    let open = report.metrics.session_open(&report.route(), report.mode);
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
                        .session_ended(&report.route(), report.mode, &end, lasted);
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

/// An HTTP/1 request head's size as it came: request line, one `name: value` line per field and
/// the blank line. hyper bounds the head by its read buffer, which it checks between reads, so
/// a head that one read takes from under `http.max_header_size` to past it is parsed whole;
/// counted here, the limit holds to the byte (give or take the spaces around field values,
/// which hyper has trimmed).
fn head_size<B>(req: &Request<B>) -> usize {
    let uri = req.uri();
    let authority = match (uri.scheme(), uri.authority()) {
        (Some(scheme), Some(authority)) => scheme.as_str().len() + 3 + authority.as_str().len(),
        (None, Some(authority)) => authority.as_str().len(),
        _ => 0,
    };
    let target = authority + uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    let request_line = req.method().as_str().len() + 1 + target + " HTTP/1.1\r\n".len();
    let fields: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + 2 + value.len() + 2)
        .sum();
    request_line + fields + 2
}

/// RFC 9112 3.2: an HTTP/1.1 request names its host in exactly one Host header, and with an
/// absolute-form target (or HTTP/2's :authority) the target's authority is the host and Host
/// is replaced by it, so routing, the forwarded Host and X-Forwarded-Host all agree on one.
/// HTTP/1.0 may omit Host; HTTP/2 carries :authority instead.
fn settle_host<B>(req: &mut Request<B>) -> Result<(), &'static str> {
    if req.version() == Version::HTTP_11 {
        let mut hosts = req.headers().get_all(header::HOST).iter();
        match (hosts.next(), hosts.next()) {
            (Some(_), None) => {}
            (None, _) => return Err("an HTTP/1.1 request needs a Host header"),
            _ => return Err("more than one Host header"),
        }
    }
    // Userinfo is no part of a host (RFC 9110 4.2.4 forbids it in http URIs).
    let authority = req
        .uri()
        .authority()
        .and_then(|a| a.as_str().rsplit('@').next())
        .and_then(|a| HeaderValue::from_str(a).ok());
    if let Some(authority) = authority {
        req.headers_mut().insert(header::HOST, authority);
    }
    match req.headers().get(header::HOST) {
        Some(host) if !valid_host(host.as_bytes()) => Err("malformed Host"),
        _ => Ok(()),
    }
}

/// `host[:port]` as RFC 9110 7.2 has it: a DNS name (one trailing dot allowed), an IPv4
/// address or a bracketed IPv6 one, and a port of 1 to 65535. Anything else would be routed by
/// a string no route was written for, and passed on to the app as it came.
fn valid_host(value: &[u8]) -> bool {
    let Ok(value) = std::str::from_utf8(value) else {
        return false;
    };
    let (host_ok, rest) = match value.strip_prefix('[') {
        Some(bracketed) => match bracketed.split_once(']') {
            Some((v6, rest)) => (v6.parse::<std::net::Ipv6Addr>().is_ok(), rest),
            None => return false,
        },
        None => {
            let (name, rest) = value.split_at(value.find(':').unwrap_or(value.len()));
            let name = name.strip_suffix('.').unwrap_or(name);
            (crate::router::is_dns_name(name), rest)
        }
    };
    let port_ok = rest.is_empty()
        || rest.strip_prefix(':').is_some_and(|p| {
            p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok_and(|n| n != 0)
        });
    host_ok && port_ok
}

/// The Host a request was sent to, without its port. [`settle_host`] has made the Host header
/// the one answer (the URI authority, when there is one), so the route is chosen by the same
/// host the app is told.
pub fn request_host<B>(req: &Request<B>) -> Option<String> {
    let authority = req.headers().get(header::HOST)?.to_str().ok()?;
    let host = host_without_port(authority);
    // An IPv6 literal in its canonical form, as route hosts are kept (`[0::1]` is `[::1]`).
    let v6 = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .and_then(|h| h.parse::<std::net::Ipv6Addr>().ok());
    Some(match v6 {
        Some(v6) => format!("[{v6}]"),
        None => host.to_ascii_lowercase(),
    })
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
    if status == StatusCode::UPGRADE_REQUIRED {
        resp = upgrade_required(resp);
    }
    with_close(resp)
}

/// RFC 9110 15.5.22: a 426 names the protocol to switch to in `Upgrade`, which is hop-by-hop,
/// so `Connection` must list it; RFC 6455 4.4 adds the one version spoken.
fn upgrade_required(mut resp: Response<Body>) -> Response<Body> {
    let headers = resp.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(
        header::SEC_WEBSOCKET_VERSION,
        HeaderValue::from_static("13"),
    );
    resp
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

/// Says that the connection ends after this response, keeping any other token `Connection`
/// already carries (a 426's `upgrade`).
pub fn with_close(mut resp: Response<Body>) -> Response<Body> {
    let headers = resp.headers_mut();
    let others: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("close"))
        .map(str::to_owned)
        .collect();
    let value = if others.is_empty() {
        HeaderValue::from_static("close")
    } else {
        // Tokens that came out of a valid value make a valid value.
        HeaderValue::from_str(&format!("{}, close", others.join(", ")))
            .unwrap_or(HeaderValue::from_static("close"))
    };
    headers.insert(header::CONNECTION, value);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_close_keeps_the_other_connection_tokens() {
        let resp = with_close(text(StatusCode::BAD_REQUEST, "x"));
        assert_eq!(resp.headers()[header::CONNECTION], "close");
        let resp = with_close(upgrade_required(text(StatusCode::UPGRADE_REQUIRED, "x")));
        assert_eq!(resp.headers()[header::CONNECTION], "upgrade, close");
        let again = with_close(resp);
        assert_eq!(again.headers()[header::CONNECTION], "upgrade, close");
    }

    #[test]
    fn head_size_counts_the_head_as_sent() {
        let head = "GET /a?b HTTP/1.1\r\nHost: x\r\nX-Pad: 12345\r\n\r\n";
        let req = Request::get("/a?b")
            .header(header::HOST, "x")
            .header("x-pad", "12345")
            .body(())
            .unwrap();
        assert_eq!(head_size(&req), head.len());
        let absolute = "GET http://x:81/a HTTP/1.1\r\n\r\n";
        let req = Request::get("http://x:81/a").body(()).unwrap();
        assert_eq!(head_size(&req), absolute.len());
    }

    #[test]
    fn host_values_must_be_a_host_and_port() {
        for good in [
            "a.example.com",
            "A.Example.COM.",
            "a.example.com:8080",
            "127.0.0.1:5000",
            "[::1]",
            "[::1]:5000",
            "under_score.internal",
        ] {
            assert!(valid_host(good.as_bytes()), "{good}");
        }
        for bad in [
            "",
            "evil.net/a.example.com",
            "user@a.example.com",
            "a b.example.com",
            "a.example.com..",
            ".a.example.com",
            "a.example.com:99999",
            "a.example.com:0",
            "a.example.com:abc",
            "a.example.com:80:80",
            "a.example.com:",
            "::1",
            "[::1",
            "[nope]:80",
            "[::1]x",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn host_is_one_header_or_the_targets_authority() {
        let get = |uri: &str, hosts: &[&str], version| {
            let mut b = Request::get(uri).version(version);
            for h in hosts {
                b = b.header(header::HOST, *h);
            }
            b.body(()).unwrap()
        };
        assert!(settle_host(&mut get("/", &[], Version::HTTP_11)).is_err());
        assert!(settle_host(&mut get("/", &["a", "b"], Version::HTTP_11)).is_err());
        assert!(settle_host(&mut get("/", &[], Version::HTTP_10)).is_ok());
        let mut req = get(
            "http://public.example/x",
            &["admin.example"],
            Version::HTTP_11,
        );
        settle_host(&mut req).unwrap();
        assert_eq!(req.headers()[header::HOST], "public.example");
        assert_eq!(request_host(&req).as_deref(), Some("public.example"));
        let mut req = get("http://user@public.example:81/", &["x"], Version::HTTP_11);
        settle_host(&mut req).unwrap();
        assert_eq!(req.headers()[header::HOST], "public.example:81");
        assert_eq!(request_host(&req).as_deref(), Some("public.example"));
        let mut req = get("/x", &["front:8080"], Version::HTTP_11);
        settle_host(&mut req).unwrap();
        assert_eq!(req.headers()[header::HOST], "front:8080");
    }
}
