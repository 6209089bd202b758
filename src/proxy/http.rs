//! HTTP reverse proxy: every request on a route that is not a WebSocket upgrade.
//!
//! Bodies are streamed both ways (the client's `Incoming` goes straight into the upstream
//! request and the upstream's `Incoming` straight into the response), so memory per request is
//! bounded by hyper's buffers, not by body size.

use std::error::Error as StdError;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{capture_connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tracing::{debug, warn};

use super::{add_forwarding_headers, canonical, foreign_transfer_coding, strip_hop_by_hop};
use crate::config::{Route, Upstream};
use crate::error::{Error, UpstreamError};
use crate::service::{empty, text, with_close, Body, BodyForwarded, BoxError, ConnContext};
use crate::upstream::{self, connect, Lease};

/// Idle pooled connections are closed after this; shorter than the 120 s or so most app servers
/// and cloud load balancers allow, so we close first instead of reusing a connection the app is
/// about to drop.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle connections kept per upstream: enough for bursts, not so many that a spike leaves
/// hundreds of sockets open on the app for the whole idle timeout.
const POOL_MAX_IDLE_PER_HOST: usize = 64;

type Connector = HttpsConnector<HttpConnector>;

/// The pooled client a route uses for its upstreams. One per route and config snapshot, so a
/// reload that changes `ca:` never reuses connections verified against the old one.
pub struct HttpClient {
    client: Client<Connector, Upload>,
}

impl HttpClient {
    pub fn new(route: &Route) -> Result<Self, Error> {
        // Without https upstreams the TLS side is never used; an empty root store saves reading
        // the system certificates once more per route.
        let tls = if route.upstreams.iter().any(|u| u.tls) {
            connect::client_config(route, &[b"h2", b"http/1.1"])?
        } else {
            Arc::new(
                rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| Error::Internal(format!("TLS versions: {e}")))?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            )
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        // A backstop only: `forward` bounds connect + response head by `upstream_timeout`.
        http.set_connect_timeout(Some(route.upstream_timeout));
        // The From impl keeps the config's ALPN (h2, http/1.1) as is; hyper-util then speaks h2
        // to upstreams that negotiate it, HTTP/1.1 to the rest.
        let connector = HttpsConnector::from((http, tls));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Ok(Self { client })
    }
}

/// Forwards `req` to one of route `index`'s upstreams.
pub async fn forward(
    ctx: &Arc<ConnContext>,
    index: usize,
    req: Request<Incoming>,
) -> Response<Body> {
    let route = &ctx.snapshot.config.routes[index];
    let resp = match answer_here(&req) {
        Some(resp) => resp,
        None if needs_a_length(&req) => match read_whole(ctx, req, route.upstream_timeout).await {
            Ok(req) => exchange(ctx, index, req).await,
            Err(resp) => resp,
        },
        None => exchange(ctx, index, req.map(RequestBody::Streaming)).await,
    };
    ctx.metrics
        .http_request(&route.name(), resp.status().as_u16());
    resp
}

/// The requests the gateway answers itself, as forwarding them could not do what they ask.
fn answer_here(req: &Request<Incoming>) -> Option<Response<Body>> {
    // RFC 9110 7.6.2: a recipient that is to forward with Max-Forwards 0 is the final one.
    if req.method() == Method::OPTIONS && max_forwards(req.headers()) == Some(0) {
        return Some(Response::new(empty()));
    }
    None
}

/// The most of a GET or HEAD body of unknown length that is read here to be sent on
/// with a length: search APIs put queries of a few KiB in GET bodies, and anything larger
/// should come with a Content-Length from a client that means it.
const UNFRAMED_BODY_LIMIT: usize = 64 * 1024;

/// The most of such bodies one connection may have read ahead at once: an HTTP/2 client could
/// otherwise make 200 streams' worth (12.5 MiB) held per connection. 1 MiB is what hyper's
/// HTTP/2 server already lets a client leave in its buffers (the connection's flow-control
/// window), so this adds no new way to hold more memory per connection.
const CONNECTION_READ_AHEAD_LIMIT: usize = 1024 * 1024;

/// Bytes counted in [`ConnContext::read_ahead`] for one body, given back when the body has
/// gone (to the upstream, or nowhere).
struct ReadAhead {
    ctx: Arc<ConnContext>,
    bytes: usize,
}

impl ReadAhead {
    /// Counts `n` more bytes, unless the connection's budget would be exceeded.
    fn take(&mut self, n: usize) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let taken = self.ctx.read_ahead.fetch_add(n, Relaxed) + n;
        if taken > CONNECTION_READ_AHEAD_LIMIT {
            self.ctx.read_ahead.fetch_sub(n, Relaxed);
            return false;
        }
        self.bytes += n;
        true
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.ctx
            .read_ahead
            .fetch_sub(self.bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Whether `req` has a body that hyper's client would drop: one of unknown length on a method
/// it sends only with a length (chunked HTTP/1, or h2 DATA without content-length, which may
/// well turn out empty).
fn needs_a_length(req: &Request<Incoming>) -> bool {
    let body = req.body();
    let length_unknown = !hyper::body::Body::is_end_stream(body)
        && hyper::body::Body::size_hint(body).exact().is_none();
    length_unknown && sent_only_with_a_length(req.method())
}

/// Reads the body [`needs_a_length`] found, so it goes on with its length (or as none, when
/// it was empty), each frame within `timeout` as an upload's would be. A body past
/// [`UNFRAMED_BODY_LIMIT`], or with trailers (which a length-framed HTTP/1 body cannot carry),
/// gets 411: the client can send it again with a Content-Length. One that would take the
/// connection past [`CONNECTION_READ_AHEAD_LIMIT`] gets 503, as other requests over a limit do.
async fn read_whole(
    ctx: &Arc<ConnContext>,
    req: Request<Incoming>,
    timeout: Duration,
) -> Result<Request<RequestBody>, Response<Body>> {
    let (parts, mut body) = req.into_parts();
    // Whatever is left unread ends an HTTP/1 connection after the answer.
    let refuse = |status, message: &str| {
        let resp = text(status, message);
        if parts.version < Version::HTTP_2 {
            with_close(resp)
        } else {
            resp
        }
    };
    let mut whole = bytes::BytesMut::new();
    let mut held = ReadAhead {
        ctx: ctx.clone(),
        bytes: 0,
    };
    loop {
        let frame = match tokio::time::timeout(timeout, body.frame()).await {
            Err(_) => {
                debug!(method = %parts.method, "request body stalled");
                return Err(refuse(
                    StatusCode::REQUEST_TIMEOUT,
                    "request body timed out",
                ));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                debug!(method = %parts.method, error = %e, "request body failed");
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    "request body could not be read",
                ));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        match frame.into_data() {
            Ok(data) if whole.len() + data.len() <= UNFRAMED_BODY_LIMIT => {
                if !held.take(data.len()) {
                    debug!(method = %parts.method, "read-ahead budget of the connection spent");
                    return Err(refuse(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "too many request bodies in flight on this connection",
                    ));
                }
                whole.extend_from_slice(&data)
            }
            _ => {
                debug!(method = %parts.method, "body of unknown length refused");
                return Err(refuse(
                    StatusCode::LENGTH_REQUIRED,
                    "this method's body needs a Content-Length",
                ));
            }
        }
    }
    Ok(Request::from_parts(
        parts,
        RequestBody::Whole {
            data: whole.freeze(),
            _held: held,
        },
    ))
}

/// The methods whose body hyper's HTTP/1 client sends only with a known length: for these it
/// writes a body of unknown length as none at all (hyper 1.x, `proto/h1/role.rs`,
/// `Client::set_length`), and the app would get the request without what came with it. Which
/// protocol the upstream speaks is known only once connected, so the rule holds for h2 too.
fn sent_only_with_a_length(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::CONNECT)
}

/// The request's `Max-Forwards` when it has exactly one and that is a number (1*DIGIT); any
/// other value is no instruction, and is passed on as it came.
fn max_forwards(headers: &HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(header::MAX_FORWARDS).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return None;
    };
    number(value.as_bytes())
}

/// A `1*DIGIT` field value as a number; a sign, a space or nothing at all makes it none.
fn number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

async fn exchange(
    ctx: &Arc<ConnContext>,
    index: usize,
    req: Request<RequestBody>,
) -> Response<Body> {
    let route = &ctx.snapshot.config.routes[index];
    let Some(upstreams) = ctx.snapshot.upstreams(index) else {
        // service.rs only calls us for routes with upstreams; a snapshot without them is a bug.
        warn!(route = %route.name(), "route has no upstream set");
        return text(StatusCode::INTERNAL_SERVER_ERROR, "internal error");
    };
    let client_ip = canonical(ctx.client_ip(req.headers()));
    let sticky = upstream::sticky_cookie(req.headers()).map(str::to_owned);
    let lease = match upstreams.set.pick(client_ip, sticky.as_deref()) {
        Ok(lease) => lease,
        Err(e) => {
            warn!(route = %route.name(), error = %e, "no upstream to forward to");
            return upstream_error_response(&e);
        }
    };
    let mut out = match build_request(ctx, lease.upstream(), req) {
        Ok(r) => r,
        Err(e) => {
            debug!(error = %e, "request cannot be forwarded");
            return text(StatusCode::BAD_REQUEST, "bad request");
        }
    };
    let connection = capture_connection(&mut out);
    let (parts, body) = out.into_parts();
    let (upload, progress) = Upload::new(body);
    let sent = upstreams
        .http
        .client
        .request(Request::from_parts(parts, upload));
    let resp = match answer_within(sent, route.upstream_timeout, progress.as_deref()).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            let failure = classify(&e);
            match &failure {
                Failure::Upstream(kind) => {
                    // Only a connection that could not be made says the upstream is down; an app
                    // that accepted and then broke off is answered 502 but stays in rotation
                    // (its own bug would otherwise take the whole route out).
                    if e.is_connect() && !kind.is_local() {
                        lease.report_failure();
                    }
                    log_failure(route, lease.upstream(), kind);
                    return upstream_error_response(kind);
                }
                Failure::Client(message) => {
                    // The client's own body broke (it went away mid-upload): not the app's fault.
                    let upstream = &lease.upstream().url;
                    debug!(%upstream, error = %message, "request body failed");
                    return text(StatusCode::BAD_REQUEST, "request body could not be read");
                }
            }
        }
        Err(Late::Upload) => {
            // The client stopped sending its body: not the app's fault, and nothing to eject.
            let upstream = &lease.upstream().url;
            debug!(%upstream, "request body stalled");
            return text(StatusCode::REQUEST_TIMEOUT, "request body timed out");
        }
        Err(Late::Answer) => {
            // Only a connect that never finished counts against the upstream: a slow answer is
            // load, and ejecting on it would take out every instance exactly when all are busy.
            if connection.connection_metadata().is_none() {
                lease.report_failure();
            }
            let kind = UpstreamError::Timeout;
            log_failure(route, lease.upstream(), &kind);
            return upstream_error_response(&kind);
        }
    };
    lease.report_success();
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        // The request went without Upgrade (hop-by-hop), so no switch was asked for: passing the
        // 101 on would leave the client with a connection that speaks nothing it knows.
        let upstream = &lease.upstream().url;
        warn!(route = %route.name(), %upstream, "upstream answered 101 to a plain request");
        return text(
            StatusCode::BAD_GATEWAY,
            "upstream switched protocols unasked",
        );
    }
    if let Some(coding) = foreign_transfer_coding(resp.headers()) {
        let upstream = &lease.upstream().url;
        warn!(
            route = %route.name(),
            %upstream,
            coding,
            "upstream answered in a transfer coding wsgate does not decode"
        );
        return text(
            StatusCode::BAD_GATEWAY,
            "upstream answered in an unsupported transfer coding",
        );
    }
    let set_cookie = upstreams.set.set_cookie(&lease, sticky.as_deref());

    let (mut parts, body) = resp.into_parts();
    settle_content_length(&mut parts.headers);
    strip_hop_by_hop(&mut parts.headers);
    if let Some(cookie) = set_cookie {
        parts.headers.append(header::SET_COOKIE, cookie);
    }
    // hyper's server writes the version it speaks with the client; an upstream's HTTP/2 or
    // HTTP/1.0 must not leak into that.
    parts.version = Version::HTTP_11;
    let body = upstream_body(body, lease, route);
    parts.extensions.insert(BodyForwarded);
    Response::from_parts(parts, body)
}

/// An upstream's response body as the client gets it, whichever way it came (the pooled
/// exchange, or a passthrough upgrade the app refused): counted against `lease` while it
/// streams, and cut if it pauses past the route's `response_idle_timeout`.
pub(crate) fn upstream_body(body: Incoming, lease: Lease, route: &Route) -> Body {
    let ended = hyper::body::Body::is_end_stream(&body);
    LeasedBody {
        idle: if ended { None } else { IdleLimit::new(route) },
        route: (!ended).then(|| route.name().into()),
        inner: body,
        lease: Some(lease),
    }
    .boxed()
}

/// Why a request ran out of `upstream_timeout`.
enum Late {
    /// The app had the whole request (or all that came of it) and did not answer in time.
    Answer,
    /// The client's body stopped arriving while the app was waiting for it.
    Upload,
}

/// Waits for the upstream's answer for `timeout`, counted from the later of the request's
/// start and the last time its body moved: `upstream_timeout` bounds how long the app takes to
/// answer, and an upload that takes longer than that (a large file, a slow client) is not
/// the app being late. A body that stops moving for `timeout` ends the wait too, as the
/// client's fault when the body was waiting on the client.
async fn answer_within<F: std::future::Future>(
    answer: F,
    timeout: Duration,
    progress: Option<&Progress>,
) -> Result<F::Output, Late> {
    let started = tokio::time::Instant::now();
    let mut answer = std::pin::pin!(answer);
    loop {
        let from = progress.map_or(started, |p| p.last_moved(started));
        if let Ok(answer) = tokio::time::timeout_at(from + timeout, answer.as_mut()).await {
            return Ok(answer);
        }
        match progress {
            Some(p) if p.last_moved(started) > from => continue,
            Some(p) if p.waiting_on_client() => return Err(Late::Upload),
            _ => return Err(Late::Answer),
        }
    }
}

/// A request body as it reaches [`exchange`]: the client's own, streamed on, or one read
/// whole by [`read_whole`] so that it can be sent with its length.
enum RequestBody {
    Streaming(Incoming),
    /// Counted against the connection's read-ahead budget until the body is dropped.
    Whole {
        data: Bytes,
        _held: ReadAhead,
    },
}

/// A request body on its way to the upstream, telling [`answer_within`] when it last moved.
/// A body that is already whole (or empty) has nothing to tell and carries no [`Progress`].
struct Upload {
    inner: RequestBody,
    progress: Option<Arc<Progress>>,
}

/// When the body last moved, as nanoseconds since `base`, and whether it is waiting on the
/// client (its last poll found nothing) rather than on the app (which is not taking it).
struct Progress {
    base: tokio::time::Instant,
    moved: std::sync::atomic::AtomicU64,
    waiting: std::sync::atomic::AtomicBool,
}

impl Progress {
    fn last_moved(&self, started: tokio::time::Instant) -> tokio::time::Instant {
        let nanos = self.moved.load(std::sync::atomic::Ordering::Relaxed);
        (self.base + Duration::from_nanos(nanos)).max(started)
    }

    fn moved(&self) {
        let nanos = self.base.elapsed().as_nanos() as u64;
        self.moved
            .store(nanos, std::sync::atomic::Ordering::Relaxed);
    }

    fn waiting_on_client(&self) -> bool {
        self.waiting.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Upload {
    fn new(inner: RequestBody) -> (Self, Option<Arc<Progress>>) {
        let streaming =
            matches!(&inner, RequestBody::Streaming(b) if !hyper::body::Body::is_end_stream(b));
        let progress = streaming.then(|| {
            Arc::new(Progress {
                base: tokio::time::Instant::now(),
                moved: Default::default(),
                waiting: Default::default(),
            })
        });
        let upload = Upload {
            inner,
            progress: progress.clone(),
        };
        (upload, progress)
    }
}

impl hyper::body::Body for Upload {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let body = match &mut self.inner {
            RequestBody::Streaming(body) => body,
            RequestBody::Whole { data, .. } if data.is_empty() => return Poll::Ready(None),
            RequestBody::Whole { data, .. } => {
                return Poll::Ready(Some(Ok(Frame::data(std::mem::take(data)))))
            }
        };
        let polled = Pin::new(body).poll_frame(cx);
        if let Some(p) = &self.progress {
            let waiting = polled.is_pending();
            p.waiting
                .store(waiting, std::sync::atomic::Ordering::Relaxed);
            if !waiting {
                p.moved();
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            RequestBody::Streaming(body) => body.is_end_stream(),
            RequestBody::Whole { data, .. } => data.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            RequestBody::Streaming(body) => body.size_hint(),
            RequestBody::Whole { data, .. } => SizeHint::with_exact(data.len() as u64),
        }
    }
}

/// The upstream's `Content-Length` as the client gets it.
///
/// RFC 9112 6.3: with Transfer-Encoding, Content-Length means nothing. hyper decoded the body
/// by the former, and hop-by-hop stripping drops it; a Content-Length left alone would frame
/// that body for the client, cutting it short and desyncing the connection.
///
/// RFC 9110 8.6: a list of one value repeated (`2, 2`, or two lines of `2`) is that value, and
/// hyper framed the body by it; many clients refuse the list, so they get the one number.
/// (Differing values never get here: hyper refuses the answer.)
fn settle_content_length(headers: &mut HeaderMap) {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
        return;
    }
    let mut lengths = headers
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(|n| number(n.trim_ascii()));
    let Some(Some(first)) = lengths.next() else {
        return;
    };
    if lengths.all(|n| n == Some(first)) {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(first));
    }
}

/// The request as the upstream gets it: its URI, the client's Host, no hop-by-hop headers, and
/// the forwarding headers that tell the app who the client is.
fn build_request<B>(
    ctx: &ConnContext,
    upstream: &Upstream,
    req: Request<B>,
) -> Result<Request<B>, http::Error> {
    let (parts, body) = req.into_parts();
    let uri = upstream_uri(upstream, &parts.uri)?;
    // HTTP/2 clients may send only :authority; the app still expects a Host.
    let host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let mut headers = parts.headers;
    let trailers = accepts_trailers(&headers);
    strip_hop_by_hop(&mut headers);
    // TE is hop-by-hop, but "trailers" says the client takes what an app may send only when
    // asked (gRPC's status): asked on its behalf, since trailers are passed through. No
    // `Connection: TE` with it: hyper's h2 client would then strip the TE it names.
    if trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    join_cookies(&mut headers);
    // RFC 9110 7.6.2: each proxy on an OPTIONS request's way counts one off (0 never gets here:
    // `answer_here` answers it).
    if parts.method == Method::OPTIONS {
        if let Some(left) = max_forwards(&headers).and_then(|n| n.checked_sub(1)) {
            headers.insert(header::MAX_FORWARDS, HeaderValue::from(left));
        }
    }
    if let Some(host) = &host {
        headers.insert(header::HOST, host.clone());
    }
    add_forwarding_headers(&mut headers, ctx.peer.ip(), ctx.tls, host.as_ref());

    let mut out = Request::new(body);
    *out.method_mut() = parts.method;
    *out.uri_mut() = uri;
    // The client picks h2 or HTTP/1.1 per upstream from ALPN; the client's own version says
    // nothing about what the upstream speaks.
    *out.version_mut() = Version::HTTP_11;
    *out.headers_mut() = headers;
    Ok(out)
}

/// Whether a `TE` field lists `trailers` (RFC 9110 10.1.4; any case, parameters ignored).
fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let name = t.split(';').next().unwrap_or_default();
            name.trim().eq_ignore_ascii_case("trailers")
        })
}

/// An HTTP/2 client may split its cookies over several `cookie` fields (RFC 9113 8.2.3), and
/// they must be joined before the request goes on over HTTP/1.1, where apps read one `Cookie`
/// line; joined, they are just as valid to an upstream that speaks h2.
fn join_cookies(headers: &mut http::HeaderMap) {
    let mut fields = headers.get_all(header::COOKIE).iter();
    if fields.nth(1).is_none() {
        return;
    }
    let joined: Vec<u8> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect::<Vec<_>>()
        .join(&b"; "[..]);
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// `scheme://host:port` + the upstream's base path + the request's path and query.
fn upstream_uri(upstream: &Upstream, uri: &Uri) -> Result<Uri, http::Error> {
    let scheme = if upstream.tls { "https" } else { "http" };
    let host = if upstream.host.contains(':') {
        format!("[{}]", upstream.host)
    } else {
        upstream.host.clone()
    };
    // `OPTIONS *` has no path to prefix; it becomes the upstream's root, as in most proxies.
    let path_and_query = uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .filter(|pq| pq.starts_with('/'))
        .unwrap_or("/");
    let full = format!(
        "{scheme}://{host}:{}{}{path_and_query}",
        upstream.port, upstream.base_path
    );
    Ok(Uri::try_from(full)?)
}

fn upstream_error_response(e: &UpstreamError) -> Response<Body> {
    let message = match e {
        UpstreamError::NoneHealthy => "no healthy upstream",
        UpstreamError::Timeout => "upstream timed out",
        _ => "upstream unavailable",
    };
    text(e.status(), message)
}

fn log_failure(route: &Route, upstream: &Upstream, kind: &UpstreamError) {
    warn!(route = %route.name(), upstream = %upstream.url, error = %kind, "upstream request failed");
}

/// Who a failed exchange is attributed to.
enum Failure {
    Upstream(UpstreamError),
    /// The client's request body failed while it was being sent on.
    Client(String),
}

/// Sorts hyper-util's error into our kinds. Its source chain holds the real cause (io, rustls,
/// hyper); hyper-util offers no way to take ownership of it, so the kinds carry an io::Error
/// with the chain's text.
fn classify(e: &hyper_util::client::legacy::Error) -> Failure {
    let mut tls = false;
    let mut user = false;
    let mut io_kind = None;
    let mut local = None;
    walk(e, &mut |err| {
        if err.downcast_ref::<rustls::Error>().is_some() {
            tls = true;
        }
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            user |= h.is_user();
        }
        if let Some(io) = err.downcast_ref::<io::Error>() {
            io_kind.get_or_insert(io.kind());
            if crate::error::out_of_resources(io) {
                local = io.raw_os_error();
            }
        }
    });
    let message = chain_text(e);
    if user && !e.is_connect() {
        return Failure::Client(message);
    }
    let error = io::Error::new(io_kind.unwrap_or(io::ErrorKind::Other), message);
    Failure::Upstream(if tls {
        UpstreamError::Tls(error)
    } else if let (true, Some(code)) = (e.is_connect(), local) {
        // The errno itself, which [`UpstreamError::is_local`] reads.
        UpstreamError::Connect(io::Error::from_raw_os_error(code))
    } else if e.is_connect() {
        UpstreamError::Connect(error)
    } else {
        UpstreamError::Answer(error)
    })
}

/// Visits an error and its causes. `io::Error::source` skips the error it wraps, so wrapped
/// errors are entered through `get_ref`.
fn walk(e: &(dyn StdError + 'static), f: &mut dyn FnMut(&(dyn StdError + 'static))) {
    f(e);
    if let Some(inner) = e.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
        walk(inner, f);
    } else if let Some(source) = e.source() {
        walk(source, f);
    }
}

/// "outer: inner: cause", without repeating a wrapper that only displays its cause.
fn chain_text(e: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    walk(e, &mut |err| {
        let s = err.to_string();
        if parts.last().is_none_or(|last| !last.contains(&s)) {
            parts.push(s);
        }
    });
    parts.join(": ")
}

/// The upstream's response body, holding the lease until the body ends, so least_connections
/// counts a long-polling or streaming response as in flight for as long as it is.
///
/// It also bounds how long the body may pause (`response_idle_timeout`): the answer's head is
/// bounded by `upstream_timeout`, and without this an app that stops mid-body would hold the
/// client, and the connection to the app, for as long as either stays up.
struct LeasedBody {
    inner: Incoming,
    lease: Option<Lease>,
    idle: Option<IdleLimit>,
    /// For the warning when the body fails; none for a body that had ended before it began.
    route: Option<Arc<str>>,
}

/// The pause a response body is allowed, and the timer set for the current one. The timer is
/// (re)set when a poll finds nothing after one that found data, so time the client takes to
/// read what came (hyper polls the body only when it can write) is not counted as a pause.
struct IdleLimit {
    limit: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    moved: bool,
}

impl IdleLimit {
    fn new(route: &Route) -> Option<Self> {
        let limit = route.response_idle_timeout?;
        Some(Self {
            limit,
            timer: Box::pin(tokio::time::sleep(limit)),
            moved: false,
        })
    }

    /// Whether the pause that a pending poll found has run out.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        if std::mem::take(&mut self.moved) {
            let deadline = tokio::time::Instant::now() + self.limit;
            self.timer.as_mut().reset(deadline);
        }
        std::future::Future::poll(self.timer.as_mut(), cx).is_ready()
    }
}

/// The app paused its response body for longer than `response_idle_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("upstream response body paused longer than {0:?}")]
struct BodyStalled(Duration);

impl LeasedBody {
    /// The route and the upstream, for a warning.
    fn names(&self) -> (&str, &str) {
        let route = self.route.as_deref().unwrap_or("-");
        let upstream = self
            .lease
            .as_ref()
            .map_or("-", |l| l.upstream().url.as_str());
        (route, upstream)
    }
}

impl hyper::body::Body for LeasedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        // The app broke off mid-body (reset, closed short of its length, bad chunking): the
        // client only sees its connection end, and hyper's line for that names neither the app
        // nor the route, so it is named here, as a stall is below.
        if let Poll::Ready(Some(Err(error))) = &polled {
            let (route, upstream) = this.names();
            let error = chain_text(error);
            warn!(route = %route, upstream, %error, "upstream response body failed; response cut");
        }
        if let Some(idle) = &mut this.idle {
            match &polled {
                Poll::Pending if idle.expired(cx) => {
                    let limit = idle.limit;
                    let (route, upstream) = this.names();
                    warn!(
                        route = %route,
                        upstream,
                        ?limit,
                        "upstream response body stalled; response cut"
                    );
                    let stalled = BodyStalled(limit);
                    this.idle = None;
                    this.lease = None;
                    return Poll::Ready(Some(Err(Box::new(stalled))));
                }
                Poll::Pending => {}
                Poll::Ready(_) => idle.moved = true,
            }
        }
        // Released before the last frame is handed on, so a client that sends its next request
        // as soon as this one ends always finds the count already lowered.
        match &polled {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.lease = None,
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.lease = None,
            _ => {}
        }
        polled.map(|frame| frame.map(|r| r.map_err(|e| Box::new(e) as BoxError)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::field_lines;
    use std::net::SocketAddr;

    fn upstream(host: &str, base: &str, tls: bool) -> Upstream {
        Upstream {
            url: String::new(),
            tls,
            host: host.into(),
            port: 8080,
            base_path: base.into(),
        }
    }

    #[test]
    fn uri_adds_base_path_and_brackets() {
        let uri: Uri = "/a/b?x=1".parse().unwrap();
        assert_eq!(
            upstream_uri(&upstream("::1", "/app", false), &uri)
                .unwrap()
                .to_string(),
            "http://[::1]:8080/app/a/b?x=1"
        );
        assert_eq!(
            upstream_uri(&upstream("example.com", "", true), &uri)
                .unwrap()
                .to_string(),
            "https://example.com:8080/a/b?x=1"
        );
        let star: Uri = "*".parse().unwrap();
        assert_eq!(
            upstream_uri(&upstream("h", "", false), &star)
                .unwrap()
                .path(),
            "/"
        );
    }

    #[test]
    fn a_repeated_content_length_becomes_one() {
        let settled = |te: bool, lines: &[&str]| {
            let mut h = field_lines(header::CONTENT_LENGTH, lines);
            if te {
                h.insert(
                    header::TRANSFER_ENCODING,
                    HeaderValue::from_static("chunked"),
                );
            }
            settle_content_length(&mut h);
            let all: Vec<_> = h.get_all(header::CONTENT_LENGTH).iter().cloned().collect();
            all
        };
        assert_eq!(settled(false, &["2, 2"]), ["2"]);
        assert_eq!(settled(false, &["2", " 2 "]), ["2"]);
        assert_eq!(settled(false, &["7"]), ["7"]);
        assert!(settled(false, &[]).is_empty());
        assert!(settled(true, &["2"]).is_empty());
    }

    #[test]
    fn max_forwards_is_one_number_or_nothing() {
        let parsed = |lines: &[&str]| max_forwards(&field_lines(header::MAX_FORWARDS, lines));
        assert_eq!(parsed(&["0"]), Some(0));
        assert_eq!(parsed(&["007"]), Some(7));
        for invalid in [&[][..], &["-1"], &["+1"], &["1.5"], &["x"], &["1", "1"]] {
            assert_eq!(parsed(invalid), None, "{invalid:?}");
        }
    }

    #[test]
    fn te_trailers_is_found_in_any_list() {
        let found = |lines: &[&str]| accepts_trailers(&field_lines(header::TE, lines));
        assert!(found(&["trailers"]));
        assert!(found(&["gzip;q=0.5, Trailers"]));
        assert!(found(&["gzip", " trailers ;q=1"]));
        assert!(!found(&["gzip, deflate"]));
        assert!(!found(&["trailersx"]));
        assert!(!found(&[]));
    }

    #[test]
    fn split_cookies_are_joined_into_one_field() {
        let mut headers = http::HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1"));
        join_cookies(&mut headers);
        assert_eq!(headers[header::COOKIE], "a=1");
        headers.append(header::COOKIE, HeaderValue::from_static("b=2"));
        headers.append(header::COOKIE, HeaderValue::from_static("c=3"));
        join_cookies(&mut headers);
        let all: Vec<_> = headers.get_all(header::COOKIE).iter().collect();
        assert_eq!(all, ["a=1; b=2; c=3"]);
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, X-Secret".parse().unwrap());
        h.append("connection", "x-other".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("x-other", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn forwarding_headers_append_and_quote() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
        h.insert("forwarded", "for=10.0.0.1".parse().unwrap());
        let host = HeaderValue::from_static("example.com:8443");
        let peer: SocketAddr = "[2001:db8::7]:5000".parse().unwrap();
        add_forwarding_headers(&mut h, peer.ip(), true, Some(&host));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 2001:db8::7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "example.com:8443");
        assert_eq!(
            h["forwarded"],
            "for=10.0.0.1, for=\"[2001:db8::7]\";proto=https;host=\"example.com:8443\""
        );

        let mut h = HeaderMap::new();
        let mapped: SocketAddr = "[::ffff:192.0.2.9]:1".parse().unwrap();
        add_forwarding_headers(
            &mut h,
            mapped.ip(),
            false,
            Some(&HeaderValue::from_static("a.b")),
        );
        assert_eq!(h["x-forwarded-for"], "192.0.2.9");
        assert_eq!(h["forwarded"], "for=192.0.2.9;proto=http;host=a.b");
    }
}
