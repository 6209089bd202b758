//! The per-request entry point: health and the sample page before routing, then the route's
//! WebSocket mode for upgrades and the route's upstream for everything else.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tracing::{info, info_span, warn, Instrument};

use crate::config::WsMode;
use crate::error::ClientError;
use crate::proxy;
use crate::router::host_without_port;
use crate::server::Snapshot;
use crate::shutdown::Shutdown;
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
    /// Set by the first request, so the listener's first-byte timer knows the client spoke.
    pub started: AtomicBool,
}

pub async fn handle(
    ctx: Arc<ConnContext>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    ctx.started.store(true, Ordering::Relaxed);
    Ok(route(&ctx, req).await)
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
    let hs = match handshake::validate(&req) {
        Ok(hs) => hs,
        Err(e) => return refuse(ctx, &e),
    };
    if route.websocket == WsMode::Reject {
        return refuse(ctx, &ClientError::UpgradeRejected);
    }
    if let Err(e) = origin::check(req.headers(), &route.ws) {
        return refuse(ctx, &e);
    }
    if ctx.shutdown.is_draining() {
        return with_close(text(StatusCode::SERVICE_UNAVAILABLE, "draining"));
    }
    match route.websocket {
        WsMode::Echo => {}
        WsMode::Relay => return relay::handle(ctx, index, req, hs).await,
        WsMode::Passthrough => return proxy::passthrough::handle(ctx, index, req).await,
        WsMode::Reject => unreachable!("rejected above"),
    }
    let protocol = handshake::select_protocol(&hs.offered_protocols, &route.subprotocols);
    let response = handshake::switching_protocols(&hs.accept, protocol)
        .body(empty())
        .expect("valid 101");
    let on_upgrade = hyper::upgrade::on(&mut req);
    let snapshot = ctx.snapshot.clone();
    let closing = ctx.shutdown.sockets_closing().clone();
    let span = info_span!("ws", peer = %ctx.peer, route = %route.path, mode = "echo");
    ctx.shutdown.tasks().spawn(
        async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    warn!(error = %e, "upgrade did not complete");
                    return;
                }
            };
            let opts = &snapshot.config.routes[index].ws;
            let end = echo::run(TokioIo::new(upgraded), opts, &closing).await;
            info!(
                code = end.code,
                closed_by = %end.closed_by,
                reason = %end.reason,
                messages_in = end.messages_in,
                messages_out = end.messages_out,
                bytes_in = end.bytes_in,
                bytes_out = end.bytes_out,
                "session ended"
            );
        }
        .instrument(span),
    );
    response
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
