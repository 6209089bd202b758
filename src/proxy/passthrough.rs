//! Passthrough: the raw upgrade goes to the app, which speaks WebSocket itself; wsgate only
//! checks the app's answer and then copies bytes. It cannot see frames, so it never sends a
//! Close: ending a tunnel means closing its TCP connections.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::info;

use super::{add_forwarding_headers, strip_hop_by_hop, strip_hop_by_hop_keeping};
use crate::buffer::{poll_read_lent, Filled, Turn, COPY_CHUNK};
use crate::error::UpstreamError;
use crate::service::{
    empty, spawn_session, text, upstream_failed, with_close, Admitted, Body, ConnContext,
};
use crate::stall::Stall;
use crate::upgraded::Stream;
use crate::upstream::connect::connect;
use crate::upstream::handshake::{check_upgrade_response, send_upgrade, target_uri};
use crate::upstream::sticky_cookie;
use crate::wake::{Admit, Gate};
use crate::ws::handshake::accept_key;
use crate::ws::session::{CloseRequest, ClosedBy, SessionEnd};

/// What the app needs of the client's handshake, so kept even when the client's `Connection`
/// names them (which would otherwise make them hop-by-hop).
static HANDSHAKE: [HeaderName; 5] = [
    header::HOST,
    header::SEC_WEBSOCKET_KEY,
    header::SEC_WEBSOCKET_VERSION,
    header::SEC_WEBSOCKET_PROTOCOL,
    header::SEC_WEBSOCKET_EXTENSIONS,
];

/// The app's headers a 101 carries back: what the client's WebSocket needs, and cookies.
static UPGRADE_ANSWER: [HeaderName; 4] = [
    header::SEC_WEBSOCKET_ACCEPT,
    header::SEC_WEBSOCKET_PROTOCOL,
    header::SEC_WEBSOCKET_EXTENSIONS,
    header::SET_COOKIE,
];

/// Forwards the upgrade request to one of route `index`'s upstreams and tunnels bytes only after
/// a valid 101.
pub async fn handle(
    ctx: &Arc<ConnContext>,
    index: usize,
    mut req: Request<Incoming>,
    admitted: Admitted,
) -> Response<Body> {
    let route = &ctx.snapshot.config.routes[index];
    let Some(upstreams) = ctx.snapshot.upstreams(index) else {
        // The config loader refuses passthrough routes without upstreams.
        return with_close(text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "route has no upstreams",
        ));
    };
    let sticky = sticky_cookie(req.headers()).map(str::to_owned);
    let lease = match upstreams.set.pick(admitted.client, sticky.as_deref()) {
        Ok(lease) => lease,
        Err(e) => return upstream_failed(ctx, &route.name(), "passthrough", "-", e),
    };
    let upstream = lease.upstream();
    // service.rs validated the handshake, so there is exactly one key.
    let expected_accept = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| accept_key(k.as_bytes()))
        .unwrap_or_default();
    let on_client_upgrade = hyper::upgrade::on(&mut req);

    let deadline = tokio::time::Instant::now() + route.upstream_timeout;
    let mut connected = false;
    let answered = tokio::time::timeout_at(deadline, async {
        let forwarded = upstream_request(&req, upstream, ctx)?;
        let stream = connect(upstream, upstreams.ws_tls.as_ref(), route.upstream_timeout).await?;
        connected = true;
        let mut resp = send_upgrade(stream, forwarded).await?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Ok(Answer::Refused(resp));
        }
        check_upgrade_response(&resp, &expected_accept).map_err(UpstreamError::UpgradeRefused)?;
        let io = hyper::upgrade::on(&mut resp)
            .await
            .map_err(UpstreamError::Http)?;
        Ok(Answer::Upgraded(resp, io))
    })
    .await
    .unwrap_or(Err(UpstreamError::Timeout));
    drop(req);

    let (resp, upstream_io) = match answered {
        Ok(Answer::Upgraded(resp, io)) => {
            lease.report_success();
            (resp, io)
        }
        Ok(Answer::Refused(resp)) => {
            lease.report_success();
            info!(
                peer = %ctx.peer,
                route = %route.name(),
                upstream = %upstream.url,
                status = resp.status().as_u16(),
                "upstream did not upgrade; its answer is relayed and nothing is tunnelled"
            );
            return relayed_refusal(resp, lease, route);
        }
        Err(e) => {
            // Only a connection that could not be made counts towards ejection: an app that is
            // slow to answer or answers wrongly is reachable, and still gets 502/504 here.
            if !connected && !matches!(e, UpstreamError::UpgradeRefused(_)) && !e.is_local() {
                lease.report_failure();
            }
            return upstream_failed(ctx, &route.name(), "passthrough", &upstream.url, e);
        }
    };

    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, HeaderValue::from_static("websocket"))
        .header(header::CONNECTION, HeaderValue::from_static("Upgrade"))
        .body(empty())
        .expect("valid 101");
    for name in &UPGRADE_ANSWER {
        for v in resp.headers().get_all(name) {
            response.headers_mut().append(name.clone(), v.clone());
        }
    }
    drop(resp);
    // A client that only ever speaks WebSocket is kept on its upstream as an HTTP one is.
    if let Some(cookie) = upstreams.set.set_cookie(&lease, sticky.as_deref()) {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }

    let url = upstream.url.clone();
    spawn_session(
        ctx,
        index,
        "passthrough",
        Some(url),
        admitted,
        on_client_upgrade,
        // The streams are made here and only borrowed by the block, so the session's task
        // holds each once (a block keeps room for what it moves into a future it awaits).
        move |mut client, snapshot, mut closing| {
            let mut upstream = Stream::take(upstream_io);
            let opts = &snapshot.config.routes[index].ws;
            let (linger, stalls) = (opts.close_timeout, crate::stall::limit(opts));
            async move {
                let end = tunnel(&mut client, &mut upstream, linger, stalls, &mut closing).await;
                drop(lease);
                // Raw bytes: no messages or close codes are seen, only the bytes each way.
                let mut summary = SessionEnd::new(end.closed_by, None, end.reason);
                summary.bytes_in = end.bytes_in;
                summary.bytes_out = end.bytes_out;
                summary
            }
        },
    );
    response
}

enum Answer {
    Upgraded(Response<Incoming>, hyper::upgrade::Upgraded),
    Refused(Response<Incoming>),
}

/// The client's upgrade as the app should see it: same Host and end-to-end headers, the route's
/// base path, hop-by-hop headers dropped (with anything the client's Connection header names,
/// except the handshake's own), the forwarding headers the reverse proxy adds, and exactly
/// `Upgrade: websocket`, so no other protocol (h2c) is ever asked of the app.
fn upstream_request(
    req: &Request<Incoming>,
    upstream: &crate::config::Upstream,
    ctx: &ConnContext,
) -> Result<Request<Empty<Bytes>>, UpstreamError> {
    let mut headers = req.headers().clone();
    strip_hop_by_hop_keeping(&mut headers, &HANDSHAKE);
    // The upgrade has no body, whatever the client announced.
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let host = req.headers().get(header::HOST).cloned();
    add_forwarding_headers(&mut headers, ctx.peer.ip(), ctx.tls, host.as_ref());
    let mut forwarded = Request::get(target_uri(upstream, req.uri())?)
        .body(Empty::new())
        .expect("GET with a parsed URI");
    *forwarded.headers_mut() = headers;
    Ok(forwarded)
}

/// An app's non-101 answer goes back as an ordinary response, then the client connection closes:
/// whatever the client sent after its upgrade must never be read as a next request.
/// Its body is held to the route's `response_idle_timeout`, as a plain request's is.
fn relayed_refusal(
    resp: Response<Incoming>,
    lease: crate::upstream::Lease,
    route: &crate::config::Route,
) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let body = super::http::upstream_body(body, lease, route);
    with_close(Response::from_parts(parts, body))
}

/// How a tunnel ended, for the summary.
pub struct TunnelEnd {
    pub closed_by: ClosedBy,
    pub reason: String,
    /// Client to upstream.
    pub bytes_in: u64,
    /// Upstream to client.
    pub bytes_out: u64,
}

/// Copies bytes both ways. When one side finishes sending, the other's write half is shut down
/// and the remaining direction gets `linger` to finish too, so a peer that never closes cannot
/// hold the pair; `closing` resolving drops both at once. A direction whose receiver takes no
/// bytes for `stalls` ends the tunnel (see [`crate::stall`]): a client that left while the app
/// was not reading is otherwise never noticed, since nothing reads its socket.
///
/// Both directions are polled from this one future with plain `&mut` access to both streams (no
/// split, so no lock per read), and each holds a buffer only while it has bytes in flight: an
/// idle tunnel holds none (see [`crate::buffer`]).
pub async fn tunnel<C, U>(
    mut client: C,
    mut upstream: U,
    linger: Duration,
    stalls: Option<Duration>,
    closing: &mut (impl Future<Output = CloseRequest> + Unpin),
) -> TunnelEnd
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut up = Direction::new(stalls); // client to upstream
    let mut down = Direction::new(stalls); // upstream to client

    // Biased: polled on every wake-up, where a random start costs a draw of tokio's RNG.
    let first = tokio::select! {
        biased;
        request = &mut *closing => Err(request),
        r = std::future::poll_fn(|cx| {
            if let Poll::Ready(end) = up.poll(cx, &mut client, &mut upstream) {
                return Poll::Ready((true, end));
            }
            down.poll(cx, &mut upstream, &mut client).map(|end| (false, end))
        }) => Ok(r),
    };
    let (closed_by, reason) = match first {
        Err(request) => (ClosedBy::Gateway, request.reason().to_owned()),
        Ok((client_first, end)) => {
            let verdict = match (client_first, end) {
                (true, PipeEnd::Eof) => (ClosedBy::Client, "client closed".to_owned()),
                (true, PipeEnd::Read(e)) => (ClosedBy::Client, e.to_string()),
                (true, PipeEnd::Write(e)) => (ClosedBy::Upstream, e.to_string()),
                (false, PipeEnd::Eof) => (ClosedBy::Upstream, "upstream closed".to_owned()),
                (false, PipeEnd::Read(e)) => (ClosedBy::Upstream, e.to_string()),
                (false, PipeEnd::Write(e)) => (ClosedBy::Client, e.to_string()),
            };
            let rest = std::future::poll_fn(|cx| {
                if client_first {
                    down.poll(cx, &mut upstream, &mut client)
                } else {
                    up.poll(cx, &mut client, &mut upstream)
                }
            });
            // Boxed: a timer only ending tunnels need should not sit in every idle one.
            let deadline = Box::pin(tokio::time::sleep(linger));
            // Biased, as the first one.
            tokio::select! {
                biased;
                _ = &mut *closing => {}
                _ = rest => {}
                _ = deadline => {}
            }
            verdict
        }
    };
    TunnelEnd {
        closed_by,
        reason,
        bytes_in: up.bytes,
        bytes_out: down.bytes,
    }
}

enum PipeEnd {
    Eof,
    Read(io::Error),
    Write(io::Error),
}

/// One direction of a tunnel: read into a lent buffer, write it all, flush once the reader has
/// nothing more (TLS holds data until flushed); end of stream becomes a half-close.
///
/// A bulk transfer takes turns with the thread's other connections: once a direction has
/// copied [`crate::buffer::CHUNKS_PER_TURN`] reads that each filled a whole [`COPY_CHUNK`] (a
/// [`Turn`]), it yields instead of reading again at once, so a busy socket is read a little per
/// pass, as HAProxy does (one read per pass). Draining a socket 16 chunks in a row left Linux's
/// receive-buffer autotuning stuck in about one round in three on loopback: the kernel's RTT
/// estimate for the socket fell to 15-40 us, its receive buffer stayed near 1 MB instead of
/// growing to about 10 MB, and the window updates that followed cost a 1 MiB echo through
/// passthrough a quarter of its rate. Taking turns kept every round fast. It is also fairer:
/// one bulk tunnel cannot hold the thread while others wait. Reads shorter than a chunk (small
/// messages, TLS records) never count towards a turn.
#[derive(Default)]
struct Direction {
    /// Read and not yet written.
    pending: Option<Filled>,
    /// Written since the last flush.
    unflushed: bool,
    /// The read side ended; the write side is being shut down.
    ending: Option<PipeEnd>,
    /// Bytes written on.
    bytes: u64,
    /// The tunnel's task polls both directions whichever socket woke it: the read of the one
    /// that was not woken is skipped (see [`crate::wake`]).
    reads: Gate,
    /// How long the receiver may take no bytes.
    stall: Stall,
}

impl Direction {
    fn new(stalls: Option<Duration>) -> Self {
        Self {
            stall: Stall::new(stalls),
            ..Self::default()
        }
    }

    fn poll<R, W>(&mut self, cx: &mut Context<'_>, r: &mut R, w: &mut W) -> Poll<PipeEnd>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut turn = Turn::default();
        loop {
            if self.ending.is_some() {
                // A failed shutdown changes nothing: the direction is over either way.
                let _ = ready!(Pin::new(&mut *w).poll_shutdown(cx));
                return Poll::Ready(self.ending.take().expect("checked above"));
            }
            if let Some(filled) = &mut self.pending {
                let before = filled.start;
                let written = filled.poll_write_out(w, cx);
                self.bytes += (filled.start - before) as u64;
                if filled.start != before {
                    self.stall.progressed();
                }
                match written {
                    Poll::Pending => return self.stall.poll_waiting(cx).map(PipeEnd::Write),
                    Poll::Ready(Err(e)) => return Poll::Ready(PipeEnd::Write(e)),
                    Poll::Ready(Ok(())) => {}
                }
                let turn_ends = turn.ends_with(filled.end);
                self.pending = None; // the buffer goes back to the pool
                self.unflushed = true;
                if turn_ends {
                    // More is probably waiting; it is read on the next turn (see `Direction`).
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
            }
            match self.reads.poll(cx, |cx| poll_read_lent(r, cx, COPY_CHUNK)) {
                Poll::Pending => {
                    if self.unflushed {
                        let flushed = Pin::new(&mut *w).poll_flush(cx);
                        match self.stall.watch(cx, flushed) {
                            Poll::Ready(Ok(())) => self.unflushed = false,
                            Poll::Ready(Err(e)) => return Poll::Ready(PipeEnd::Write(e)),
                            Poll::Pending => {}
                        }
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Ok(Some(filled))) => self.pending = Some(filled),
                Poll::Ready(Ok(None)) => self.ending = Some(PipeEnd::Eof),
                Poll::Ready(Err(e)) => self.ending = Some(PipeEnd::Read(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::CHUNKS_PER_TURN;
    use crate::wake::counting::counter;
    use tokio::io::ReadBuf;

    /// Always has `per_read` more bytes ready, `reads` times, then would block.
    struct Source {
        per_read: usize,
        reads: usize,
    }

    impl AsyncRead for Source {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if self.reads == 0 {
                return Poll::Pending;
            }
            self.reads -= 1;
            let n = self.per_read.min(buf.remaining());
            buf.put_slice(&vec![b'x'; n]);
            Poll::Ready(Ok(()))
        }
    }

    /// Takes every byte at once.
    #[derive(Default)]
    struct Sink {
        written: usize,
    }

    impl AsyncWrite for Sink {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.written += data.len();
            Poll::Ready(Ok(data.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn a_bulk_direction_hands_the_thread_back_after_each_turn() {
        let (wakes, waker) = counter();
        let mut cx = Context::from_waker(&waker);
        let chunks = 2 * CHUNKS_PER_TURN + 1;
        let mut source = Source {
            per_read: usize::MAX,
            reads: chunks,
        };
        let mut sink = Sink::default();
        let mut direction = Direction::default();
        for turn in 1..=2 {
            assert!(direction.poll(&mut cx, &mut source, &mut sink).is_pending());
            assert_eq!(
                sink.written,
                turn * CHUNKS_PER_TURN * COPY_CHUNK,
                "a turn's chunks"
            );
            assert_eq!(wakes.get() as usize, turn, "and the task is woken again");
        }
        // The last chunk, then the source is drained: the direction now waits on the socket,
        // not on itself.
        assert!(direction.poll(&mut cx, &mut source, &mut sink).is_pending());
        assert_eq!(sink.written, chunks * COPY_CHUNK);
        assert_eq!(wakes.get(), 2);
        assert_eq!(direction.bytes, (chunks * COPY_CHUNK) as u64);
    }

    #[test]
    fn short_reads_are_copied_in_one_turn() {
        let (wakes, waker) = counter();
        let mut cx = Context::from_waker(&waker);
        let mut source = Source {
            per_read: 1024,
            reads: 5,
        };
        let mut sink = Sink::default();
        let mut direction = Direction::default();
        assert!(direction.poll(&mut cx, &mut source, &mut sink).is_pending());
        assert_eq!(
            sink.written,
            5 * 1024,
            "every short read is copied before waiting"
        );
        assert_eq!(wakes.get(), 0, "without a yield");
    }

    /// A tunnel ended by its closer is logged with the closer's reason, in the words echo and
    /// relay give it.
    #[tokio::test]
    async fn a_closed_tunnel_is_logged_with_the_close_requests_reason() {
        for (request, reason) in [
            (CloseRequest::Retired, "connection age limit"),
            (CloseRequest::GoingAway, "server shutting down"),
            (CloseRequest::RouteChanged, "route changed by a reload"),
        ] {
            let (client, _client_peer) = tokio::io::duplex(64);
            let (upstream, _upstream_peer) = tokio::io::duplex(64);
            let mut closing = std::future::ready(request);
            let end = tunnel(client, upstream, Duration::from_secs(1), None, &mut closing).await;
            assert_eq!(
                (end.closed_by, end.reason.as_str()),
                (ClosedBy::Gateway, reason)
            );
        }
    }
}
