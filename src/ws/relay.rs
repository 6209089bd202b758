//! Relay: wsgate terminates the client's WebSocket and opens its own to an upstream, then
//! forwards frame by frame, validating both legs. Frames are read whole, except binary ones of
//! 64 KiB or more, which go on piece by piece as they arrive (see [`super::stream`]). A burst
//! of small data frames read together goes on from where it was read, each frame under a new
//! masking key towards the app (see [`super::burst`]).
//!
//! One task runs two pumps, client→upstream and upstream→client. Each owns the reader of one
//! leg and the writer of the other, so neither direction ever waits on the other: an echo app
//! blocked writing to us while we are blocked writing to it cannot deadlock the pair. What a
//! pump must send on the leg it reads (a Pong, a keep-alive Ping, the Close a violation earns)
//! goes to the pump that owns that writer through a small bounded queue that drops its oldest
//! entry when full, so a pump never blocks on the other. Backpressure is plain:
//! a pump awaits each write before reading the next frame, so a slow reader on one side slows
//! reads on the other and nothing queues without bound.
//!
//! A pump stops forwarding once it has written the last frame its writer will ever carry (a
//! Close, or nothing because that leg is dead); the task then half-closes the client leg and
//! drains both, all within `close_timeout` of the first Close.

use std::pin::pin;
use std::sync::{Arc, OnceLock};
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocketError};
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use super::burst::Whole;
use super::close;
use super::frames::{classify_read_error, FrameKind, FrameValidator, Peer, ReadFailure, Violation};
use super::handshake::{switching_protocols, Handshake};
use super::io::{wire_len, FrameWriter, LegRead, LegWrite};
use super::keepalive::{KeepAlive, Tick};
use super::session::{
    configure_reader, discard, next_frame, poll_once, CloseRequest, ClosedBy, SessionEnd, Signal,
};
use super::stream::{key_at, recode_key, Head};
use crate::buffer::{Turn, COPY_CHUNK};
use crate::config::WsOptions;
use crate::error::UpstreamError;
use crate::limits::MessageRate;
use crate::service::{empty, text, with_close, Body, ConnContext};
use crate::service::{spawn_session, upstream_failed, Admitted};
use crate::stall::{self, Stalled};
use crate::upgraded::Stream;
use crate::upstream::connect::connect;
use crate::upstream::handshake::open_websocket;
use crate::upstream::sticky_cookie;
use crate::wake::{Filtered, Gate};

/// How long, past `close_timeout`, the Close that answers an unanswered one may take to write.
const CLOSE_ANSWER_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Control frames waiting for the other pump. Past this the OLDEST waiting frame is dropped:
/// RFC 6455 allows answering only the most recent Ping, never skipping it, and a peer flooding
/// Pings must not make the queue (or a pump waiting on it) grow without bound.
const CONTROL_QUEUE: usize = 32;

/// What one pump asks of the pump that owns a writer: control frames to send, in a bounded
/// queue that never blocks the sender (a full queue drops its oldest entry), and the last thing
/// to do with the writer (the first one set wins). Cancel-safe to `pop` inside `select!`. Kept
/// inline in the session (a channel would allocate over a kilobyte per leg for one message).
struct ControlQueue {
    queued: std::sync::Mutex<Queued>,
    ready: tokio::sync::Notify,
}

#[derive(Default)]
struct Queued {
    frames: std::collections::VecDeque<Control>,
    fin: Option<Fin>,
}

/// What a pump takes from its [`ControlQueue`]: the final instruction comes before any frame.
enum Work {
    Fin(Fin),
    Control(Control),
}

impl ControlQueue {
    fn new() -> Self {
        Self {
            queued: std::sync::Mutex::new(Queued::default()),
            ready: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queued> {
        self.queued.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, frame: Control) {
        let mut q = self.lock();
        if q.frames.len() >= CONTROL_QUEUE {
            q.frames.pop_front();
        }
        q.frames.push_back(frame);
        drop(q);
        // A stored permit covers a push made while the other pump is not waiting yet.
        self.ready.notify_one();
    }

    /// Sets the writer's last instruction, unless one is set already.
    fn finish(&self, fin: Fin) {
        let mut q = self.lock();
        if q.fin.is_none() {
            q.fin = Some(fin);
        }
        drop(q);
        self.ready.notify_one();
    }

    async fn pop(&self) -> Work {
        loop {
            {
                let mut q = self.lock();
                if let Some(fin) = q.fin.take() {
                    return Work::Fin(fin);
                }
                if let Some(frame) = q.frames.pop_front() {
                    return Work::Control(frame);
                }
            }
            self.ready.notified().await;
        }
    }
}

/// Opens the upstream WebSocket first; answers 101 only once it is open, else 502/503/504.
pub async fn handle(
    ctx: &Arc<ConnContext>,
    index: usize,
    mut req: Request<Incoming>,
    hs: Handshake,
    admitted: Admitted,
) -> Response<Body> {
    let route = &ctx.snapshot.config.routes[index];
    let Some(upstreams) = ctx.snapshot.upstreams(index) else {
        // The config loader refuses relay routes without upstreams.
        return with_close(text(
            http::StatusCode::INTERNAL_SERVER_ERROR,
            "route has no upstreams",
        ));
    };
    let lease = match upstreams
        .set
        .pick(admitted.client, sticky_cookie(req.headers()))
    {
        Ok(lease) => lease,
        Err(e) => return upstream_failed(ctx, &route.name(), "relay", "-", e),
    };
    let upstream = lease.upstream();
    let deadline = tokio::time::Instant::now() + route.upstream_timeout;
    let mut connected = false;
    let opened = tokio::time::timeout_at(deadline, async {
        let stream = connect(upstream, upstreams.ws_tls.as_ref(), route.upstream_timeout).await?;
        connected = true;
        open_websocket(
            stream,
            upstream,
            req.uri(),
            req.headers(),
            &route.subprotocols,
            ctx.peer.ip(),
            ctx.tls,
        )
        .await
    })
    .await
    .unwrap_or(Err(UpstreamError::Timeout));
    let mut socket = match opened {
        Ok(socket) => {
            lease.report_success();
            socket
        }
        Err(e) => {
            // An app that accepted the connection is reachable, however slow or wrong its
            // answer: only failures to connect count towards ejection.
            if !connected && !matches!(e, UpstreamError::UpgradeRefused(_)) && !e.is_local() {
                lease.report_failure();
            }
            return upstream_failed(ctx, &route.name(), "relay", &upstream.url, e);
        }
    };

    let mut response = switching_protocols(&hs.accept, socket.protocol.as_deref())
        .body(empty())
        .expect("valid 101");
    for cookie in std::mem::take(&mut socket.set_cookies) {
        response
            .headers_mut()
            .append(http::header::SET_COOKIE, cookie);
    }
    // A client that only ever speaks WebSocket is kept on its upstream as an HTTP one is.
    if let Some(cookie) = upstreams
        .set
        .set_cookie(&lease, sticky_cookie(req.headers()))
    {
        response
            .headers_mut()
            .append(http::header::SET_COOKIE, cookie);
    }
    let on_upgrade = hyper::upgrade::on(&mut req);
    drop(req);
    let url = upstream.url.clone();
    spawn_session(
        ctx,
        index,
        "relay",
        Some(url),
        admitted,
        on_upgrade,
        // The streams are made here and only borrowed by the block, so the session's task
        // holds each once (a block keeps room for what it moves into a future it awaits).
        move |mut client, snapshot, mut closing| {
            let mut upstream = Stream::take(socket.io);
            async move {
                let opts = &snapshot.config.routes[index].ws;
                let message_rate = snapshot.config.limits.message_rate;
                let close_now = CloseNow::default();
                let closer = async {
                    let request = (&mut closing).await;
                    close_now.raise(request).await;
                    std::future::pending::<()>().await;
                };
                // Biased: polled on every wake-up, and a random start would cost a draw of
                // tokio's RNG each time. The closer goes first so that `run` sees its flag.
                let end = tokio::select! {
                    biased;
                    _ = closer => unreachable!("the closer never finishes"),
                    end = run(&mut client, &mut upstream, opts, message_rate, &close_now) => end,
                };
                // The lease counts this session for least_connections until here.
                drop(lease);
                end
            }
        },
    );
    response
}

/// A relay's "close now with 1001", raised by its closer: a [`Signal`] for the pumps to watch,
/// and why, so that both legs and the access log are told what echo would tell its client.
#[derive(Debug, Default)]
pub struct CloseNow {
    raised: Signal,
    request: OnceLock<CloseRequest>,
}

impl CloseNow {
    pub async fn raise(&self, request: CloseRequest) {
        let _ = self.request.set(request);
        self.raised.raise().await;
    }

    fn raised(&self) -> impl std::future::Future<Output = ()> + '_ {
        self.raised.raised()
    }

    /// The reason the 1001 carries (see [`CloseRequest::reason`]).
    fn reason(&self) -> &'static str {
        let request = self.request.get().copied();
        request.unwrap_or(CloseRequest::GoingAway).reason()
    }
}

/// Runs a relayed session until both legs are closed or `closing` asks for 1001 on both.
/// `client` is the client's upgraded connection, `upstream` the upstream WebSocket;
/// `message_rate` is the most messages per second the client may send (0: no limit), as in
/// echo: the app's messages are its own business.
pub async fn run(
    client: &mut Stream,
    upstream: &mut Stream,
    opts: &WsOptions,
    message_rate: u32,
    closing: &CloseNow,
) -> SessionEnd {
    let (r_c, w_c) = client.split();
    let (r_u, w_u) = upstream.split();
    // A leg whose peer stops reading fails the pump that writes to it (see `stall`): with both
    // pumps waiting on writes, neither would ever read a keep-alive answer again.
    let limit = stall::limit(opts);
    let mut w_c = LegWrite::new(Stalled::new(w_c, limit));
    let mut w_u = LegWrite::new(Stalled::new(w_u, limit));
    let mut raw_c = LegRead::gated(r_c, opts.receive_buffer_size);
    let mut raw_u = LegRead::gated(r_u, opts.receive_buffer_size);
    // `*_c` channels carry frames for the client leg's writer, `*_u` for the upstream leg's.
    let ctl_c = ControlQueue::new();
    let ctl_u = ControlQueue::new();
    let ending = OnceLock::new();
    let stopped = Signal::default();
    let mut inbound = Traffic {
        limit: MessageRate::new(message_rate).map(Box::new),
        ..Traffic::default()
    };
    let mut outbound = Traffic::default();

    let session = async {
        let to_upstream = Pump {
            reader: &mut raw_c,
            writer: &mut w_u,
            ctl_in: &ctl_u,
            traffic: &mut inbound,
            ctx: PumpCtx {
                from: Party::Client,
                opts,
                ctl_back: &ctl_c,
                ending: &ending,
                closing,
                stopped: &stopped,
            },
        };
        let to_client = Pump {
            reader: &mut raw_u,
            writer: &mut w_c,
            ctl_in: &ctl_c,
            traffic: &mut outbound,
            ctx: PumpCtx {
                from: Party::Upstream,
                opts,
                ctl_back: &ctl_u,
                ending: &ending,
                closing,
                stopped: &stopped,
            },
        };
        tokio::join!(to_upstream.run(), to_client.run());
        // Both Closes are out. wsgate is the server on the client leg, so it closes that TCP
        // connection first; on the upstream leg it is the client and waits for the app to.
        let client_leg = async {
            let _ = w_c.shutdown().await;
            discard(&mut raw_c).await;
        };
        tokio::join!(client_leg, discard(&mut raw_u));
    };
    let deadline = async {
        tokio::select! {
            biased;
            _ = stopped.raised() => {}
            _ = closing.raised() => {}
        }
        tokio::time::sleep(opts.close_timeout).await;
    };
    // Biased, as the closer's (see `handle`): both are polled on every wake-up.
    {
        let mut session = pin!(session);
        tokio::select! {
            biased;
            _ = session.as_mut() => {}
            _ = deadline => {
                debug!("close handshake did not finish within close_timeout");
                // A party whose Close was passed on and never answered by the other still gets
                // its answer (RFC 6455 5.5.1), from us, before both connections are dropped. The
                // pump owning its writer takes it between frames, never inside a streamed one.
                let answer = match ending.get() {
                    Some(Ending { code, closed_by: ClosedBy::Client, .. }) => {
                        Some((&ctl_c, *code, "upstream did not answer the close"))
                    }
                    Some(Ending { code, closed_by: ClosedBy::Upstream, .. }) => {
                        Some((&ctl_u, *code, "client did not answer the close"))
                    }
                    _ => None,
                };
                if let Some((queue, code, reason)) = answer {
                    queue.finish(Fin::Close(code.unwrap_or(close::NORMAL), reason));
                    let grace = opts.close_timeout.min(CLOSE_ANSWER_GRACE);
                    let _ = tokio::time::timeout(grace, session.as_mut()).await;
                }
            }
        }
    }

    let Ending {
        code,
        closed_by,
        reason,
    } = ending.into_inner().unwrap_or(Ending {
        code: None,
        closed_by: ClosedBy::Gateway,
        reason: String::new(),
    });
    let mut end = SessionEnd::new(closed_by, code, reason);
    end.messages_in = inbound.messages;
    end.bytes_in = inbound.bytes;
    end.messages_out = outbound.messages;
    end.bytes_out = outbound.bytes;
    end
}

/// The two ends of a relayed session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Party {
    Client,
    Upstream,
}

impl Party {
    fn other(self) -> Party {
        match self {
            Party::Client => Party::Upstream,
            Party::Upstream => Party::Client,
        }
    }

    /// fastwebsockets' role on this party's leg: wsgate is the server to the client and the
    /// client to the upstream (and so masks what it writes there).
    fn role(self) -> Role {
        match self {
            Party::Client => Role::Server,
            Party::Upstream => Role::Client,
        }
    }

    fn peer(self) -> Peer {
        match self {
            Party::Client => Peer::Client,
            Party::Upstream => Peer::Server,
        }
    }

    fn closed_by(self) -> ClosedBy {
        match self {
            Party::Client => ClosedBy::Client,
            Party::Upstream => ClosedBy::Upstream,
        }
    }

    /// The Close the other party gets when this one fails (vanishes, times out, breaks the
    /// protocol): 1001 for the app when its client is gone, 1014 for a client whose app failed.
    fn failure_close(self) -> (u16, &'static str) {
        match self {
            Party::Client => (close::GOING_AWAY, "client went away"),
            Party::Upstream => (close::UPSTREAM_FAILED, "upstream failed"),
        }
    }
}

/// Frames the pump owning a writer sends for the other pump.
#[derive(Debug)]
enum Control {
    Ping,
    Pong(BytesMut),
}

/// The last thing the pump owning a writer must do with it.
#[derive(Debug)]
enum Fin {
    Close(u16, &'static str),
    /// The peer on that leg is gone; nothing more can be sent to it.
    Abandon,
}

/// What a pump's writer carries last.
enum Last {
    Close(u16, Bytes),
    Nothing,
}

impl Last {
    fn close(code: u16, reason: &'static str) -> Last {
        Last::Close(code, Bytes::from_static(reason.as_bytes()))
    }
}

/// The first event that ended the session, for the summary.
struct Ending {
    code: Option<u16>,
    closed_by: ClosedBy,
    reason: String,
}

#[derive(Default)]
struct Traffic {
    messages: u64,
    bytes: u64,
    /// `limits.message_rate`, on the client's direction only: boxed, so a session without one
    /// (most) holds a pointer's worth for it.
    limit: Option<Box<MessageRate>>,
}

impl Traffic {
    /// Counts a message whose last frame is about to go on; `Err` when it is one too many.
    fn message(&mut self) -> Result<(), Violation> {
        if let Some(limit) = self.limit.as_mut() {
            if !limit.allow() {
                return Err(Violation {
                    code: close::POLICY,
                    reason: "message rate exceeded",
                });
            }
        }
        self.messages += 1;
        Ok(())
    }
}

/// One direction of a relayed session: reads `ctx.from`'s leg, writes the other party's.
///
/// The two pumps' `run` futures are most of what an idle relayed session holds, and a future
/// keeps room for every await's state in every state it has, idle included. So the awaits
/// that are rare (a control frame, a streamed frame, a frame too large to gather, the last
/// Close) are boxed: the session's task went from 4,488 to 4,024 bytes, and the RSS of 5,000
/// idle sessions from 7.80 to 7.53 KiB each. So is the reader the burst walk falls back to
/// (288 bytes in place): entered once per run of frames the walk leaves, not per message.
struct Pump<'a, R, W> {
    reader: &'a mut LegRead<R, Gate>,
    writer: &'a mut LegWrite<W>,
    /// Control frames and the final instruction for `writer`, from the other pump.
    ctl_in: &'a ControlQueue,
    traffic: &'a mut Traffic,
    ctx: PumpCtx<'a>,
}

/// What a pump only reads, kept apart from its I/O so it can be used while a read is in flight.
struct PumpCtx<'a> {
    from: Party,
    opts: &'a WsOptions,
    /// Control frames and the final instruction for the writer of `from`'s leg, which the other
    /// pump owns.
    ctl_back: &'a ControlQueue,
    ending: &'a OnceLock<Ending>,
    closing: &'a CloseNow,
    /// Raised when this pump stops forwarding, which starts the close deadline.
    stopped: &'a Signal,
}

impl<R, W> Pump<'_, R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    async fn run(self) {
        let Pump {
            reader,
            writer,
            ctl_in,
            traffic,
            ctx,
        } = self;
        let from = ctx.from;
        let meter = reader.meter();
        // The writer belongs to the other leg, and so to the other role.
        let wr = &mut FrameWriter {
            io: writer,
            masks: from.other().role() == Role::Client,
        };
        let mut validator = FrameValidator::new(from.peer(), ctx.opts.max_message_size);
        let mut keepalive =
            KeepAlive::new(ctx.opts.keep_alive_interval, ctx.opts.keep_alive_timeout);
        // Wire bytes of the frames read so far, against what the reader was handed (`meter`).
        let mut consumed = 0u64;
        // Polled whenever the task wakes: a flag load (see `Signal`).
        let mut close_now = pin!(ctx.closing.raised());
        // Frames are written as they come and flushed together once nothing more can be read
        // at once (the flush arm is polled last): one syscall for a burst, none held back.
        let mut unflushed = false;
        // Filtered: polled on every wake-up, and nearly always empty.
        let mut popping = pin!(ctl_in.pop());
        let mut popping = Filtered::new(popping.as_mut());

        let last = 'pump: loop {
            // The burst's frames go out now if the socket takes them, which spares the wait
            // below a round of polls; if it is full, the flush arm below finishes them.
            if unflushed {
                match poll_once(pin!(wr.flush())).await {
                    Poll::Ready(Ok(())) => unflushed = false,
                    Poll::Ready(Err(e)) => break 'pump ctx.write_failed(e),
                    Poll::Pending => {}
                }
            }
            // Parked (see `io`): no reader and no buffer until this leg's peer sends something.
            loop {
                tokio::select! {
                    biased;
                    _ = &mut close_now => break 'pump ctx.shutting_down(),
                    work = &mut popping => {
                        popping.rearm().set(ctl_in.pop());
                        if let Err(last) = Box::pin(ctx.take_work(wr, work)).await {
                            break 'pump last;
                        }
                        unflushed = true;
                    }
                    data = reader.wait_for_data() => match data {
                        Ok(true) => break,
                        Ok(false) => break 'pump ctx.gone("connection closed without a Close frame".into()),
                        Err(e) => break 'pump ctx.gone(e.to_string()),
                    },
                    tick = keepalive.tick() => {
                        if let Some(last) = ctx.on_tick(tick) {
                            break 'pump last;
                        }
                    }
                    flushed = wr.flush(), if unflushed => {
                        if let Err(e) = flushed {
                            break 'pump ctx.write_failed(e);
                        }
                        unflushed = false;
                    }
                }
            }
            // A large binary frame goes on piece by piece (see `stream`). Nothing else can be
            // written on this pump's leg until it ends, and nothing read from it is a Close.
            if let Some(head) = reader
                .parked_mut()
                .and_then(|b| Head::streamable(b))
                .filter(|h| validator.is_binary(h.opcode))
            {
                keepalive.seen();
                let checked =
                    validator.check_head(head.fin, head.opcode, head.mask.is_some(), head.payload);
                if let Err(v) = checked.and_then(|_| {
                    // A streamed frame that ends its message counts before its first byte goes.
                    if head.fin {
                        traffic.message()
                    } else {
                        Ok(())
                    }
                }) {
                    break 'pump ctx.violation(v.code, v.reason);
                }
                if let Err(last) =
                    Box::pin(ctx.stream_frame(head, reader, wr, &mut keepalive, traffic)).await
                {
                    break 'pump last;
                }
                unflushed = true;
                continue;
            }
            // A burst of whole small data frames goes on from where it lies (see `burst`).
            match ctx
                .forward_parked(reader, wr, &mut validator, traffic)
                .await
            {
                Ok(0) => {}
                Ok(_) => {
                    keepalive.seen();
                    unflushed = true;
                    continue;
                }
                Err(last) => break 'pump last,
            }
            // Reading: one reader, until its buffer holds nothing more. Its read is not
            // cancel-safe, so one stays in flight until a frame comes back. Boxed (see
            // `Pump`): callgrind per relayed echo is unchanged by it at 20 B, 1 KiB and 16 KiB.
            reader.cut_before_streamable();
            let (rd, _) =
                fastwebsockets::after_handshake_split(&mut *reader, tokio::io::sink(), from.role());
            let mut reading = Box::pin(next_frame(configure_reader(rd, &validator)));
            loop {
                // The frames of a burst are taken without a round through `select!`; the other
                // arms are polled once a read must wait, and at the latest when the burst's
                // bytes are used up and the pump parks. A Close the other pump asks for waits
                // for this burst, as the RFC allows ("MAY delay ... until its current message
                // is sent").
                let (rd, res) = match poll_once(reading.as_mut()).await {
                    Poll::Ready(read) => read,
                    Poll::Pending => tokio::select! {
                        biased;
                        read = &mut reading => read,
                        _ = &mut close_now => break 'pump ctx.shutting_down(),
                        work = &mut popping => {
                            popping.rearm().set(ctl_in.pop());
                            if let Err(last) = Box::pin(ctx.take_work(wr, work)).await {
                                break 'pump last;
                            }
                            unflushed = true;
                            continue;
                        }
                        tick = keepalive.tick() => {
                            if let Some(last) = ctx.on_tick(tick) {
                                break 'pump last;
                            }
                            continue;
                        }
                        flushed = wr.flush(), if unflushed => {
                            if let Err(e) = flushed {
                                break 'pump ctx.write_failed(e);
                            }
                            unflushed = false;
                            continue;
                        }
                    },
                };
                let frame = match res {
                    Ok(frame) => frame,
                    Err(e) => {
                        break 'pump match classify_read_error(e) {
                            ReadFailure::Violation(v) => ctx.violation(v.code, v.reason),
                            ReadFailure::Gone(why) => ctx.gone(why),
                        }
                    }
                };
                keepalive.seen();
                consumed += wire_len(&frame);
                let kind = match validator.check(&frame) {
                    Ok(kind) => kind,
                    Err(v) => break 'pump ctx.violation(v.code, v.reason),
                };
                match kind {
                    FrameKind::Data { fin, .. } => {
                        if fin {
                            if let Err(v) = traffic.message() {
                                break 'pump ctx.violation(v.code, v.reason);
                            }
                        }
                        let len = frame.payload.len() as u64;
                        // Fragments go on as they come, opcode and FIN intact, so a large
                        // message is never held whole; the writer masks towards the app.
                        let out = Frame::new(
                            frame.fin,
                            frame.opcode,
                            None,
                            Payload::Bytes(frame.payload),
                        );
                        if let Some(large) = wr.write_boxed(out) {
                            if let Err(e) = large.await {
                                break 'pump ctx.write_failed(e);
                            }
                        }
                        unflushed = true;
                        traffic.bytes += len;
                    }
                    FrameKind::Ping => {
                        ctx.ctl_back.push(Control::Pong(frame.payload));
                    }
                    FrameKind::Pong => {}
                    FrameKind::Close { code } => {
                        let mut reason = frame.payload;
                        let _ = reason.split_to(reason.len().min(2));
                        let reason = reason.freeze();
                        ctx.record(code, from.closed_by(), &String::from_utf8_lossy(&reason));
                        // An empty Close travels on as 1000: 1005 must not be sent.
                        break 'pump Last::Close(code.unwrap_or(close::NORMAL), reason);
                    }
                }
                if meter.drained(consumed) {
                    break; // park
                }
                reading.as_mut().set(next_frame(rd));
            }
        };
        match last {
            Last::Close(code, reason) => {
                let _ = Box::pin(wr.send(Frame::close(code, &reason))).await;
            }
            // Nothing may follow on this writer (its peer is gone, or it stopped inside a
            // streamed frame): ending the stream tells that peer now, where it would otherwise
            // wait for the close deadline to drop the connection.
            Last::Nothing => {
                let _ = Box::pin(wr.io.shutdown()).await;
            }
        }
        ctx.stopped.raise().await;
    }
}

/// Readies the whole small data frames at the start of `parked` to go on where they lie,
/// masked with fresh keys if `masks`: how many bytes they take, and the violation that stopped
/// the walk, if one did.
fn ready_in_place(
    parked: &mut [u8],
    validator: &mut FrameValidator,
    masks: bool,
    traffic: &mut Traffic,
) -> (usize, Option<Violation>) {
    let mut at = 0;
    // One handle for the burst's keys (each `rand::random` takes its own), and one `u32` per
    // key (`random::<[u8; 4]>()` draws four).
    let mut keys = masks.then(rand::rng);
    while let Some(f) = Whole::at(&parked[at..]) {
        let frame = &mut parked[at..at + f.wire()];
        // The validator makes sure that a client's frames came masked, and only they go to
        // the app, the leg whose writer masks (`keys`).
        match f.relay(frame, validator, keys.as_mut()) {
            Ok(FrameKind::Data { fin: true, .. }) => {
                if let Err(v) = traffic.message() {
                    return (at, Some(v));
                }
            }
            Ok(_) => {}
            Err(v) => return (at, Some(v)),
        }
        traffic.bytes += f.payload as u64;
        at += f.wire();
    }
    (at, None)
}

impl Fin {
    fn last(self) -> Last {
        match self {
            Fin::Close(code, reason) => Last::close(code, reason),
            Fin::Abandon => Last::Nothing,
        }
    }
}

impl PumpCtx<'_> {
    /// Carries out what the other pump asked of this one's writer: a control frame is written
    /// (and left for the next flush); the last instruction, or a failed write, is `Err`, the
    /// pump's last act.
    async fn take_work<W: AsyncWrite + Unpin>(
        &self,
        wr: &mut FrameWriter<'_, W>,
        work: Work,
    ) -> Result<(), Last> {
        let frame = match work {
            Work::Fin(fin) => return Err(fin.last()),
            Work::Control(Control::Ping) => {
                Frame::new(true, OpCode::Ping, None, Payload::Borrowed(b""))
            }
            Work::Control(Control::Pong(payload)) => Frame::pong(Payload::Bytes(payload)),
        };
        wr.write(frame).await.map_err(|e| self.write_failed(e))
    }

    /// Sends on the checked binary frame whose header starts the parked bytes, piece by piece
    /// as its payload arrives (see [`super::stream`]). `Err` is the pump's last act, and never
    /// a Close: none can follow a partial frame.
    async fn stream_frame<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &self,
        head: Head,
        reader: &mut LegRead<R, Gate>,
        wr: &mut FrameWriter<'_, W>,
        keepalive: &mut KeepAlive,
        traffic: &mut Traffic,
    ) -> Result<(), Last> {
        let out_key = wr.masks.then(rand::random::<[u8; 4]>);
        let parked = reader.parked_mut().expect("the header was read parked");
        // `check_head` has made sure that this leg is masked exactly when the other one must
        // be, so the rewritten header is the same size.
        head.rewrite(parked, out_key)
            .expect("a relay masks exactly what it unmasks");
        let key = recode_key(head.mask, out_key);
        // Header bytes still to go out (with the first piece); payload sent and left.
        let (mut head_len, mut sent, mut left) = (head.len, 0u64, head.payload);
        // A large frame takes turns with the thread's other connections, as a passthrough
        // tunnel does, rather than being read to its end at once (which also let Linux's
        // receive-buffer autotuning stall on loopback; see `CHUNKS_PER_TURN`).
        let mut turn = Turn::default();
        while left > 0 {
            let Some(parked) = reader.parked_mut() else {
                let limit = left.min(COPY_CHUNK as u64) as usize;
                tokio::select! {
                    biased;
                    data = reader.wait_for_data_max(limit) => {
                        let why = match data {
                            Ok(true) => continue,
                            Ok(false) => "connection closed in the middle of a frame".to_owned(),
                            Err(e) => e.to_string(),
                        };
                        self.gone(why);
                    }
                    tick = keepalive.tick() => {
                        if self.on_tick(tick).is_none() {
                            continue;
                        }
                    }
                }
                return Err(Last::Nothing);
            };
            let n = (parked.len() - head_len).min(usize::try_from(left).unwrap_or(usize::MAX));
            let piece = &mut parked[..head_len + n];
            if let Some(k) = key {
                fastwebsockets::unmask(&mut piece[head_len..], key_at(k, sent));
            }
            let written = if n == 0 {
                // Only the header has come: it waits, gathered, for the payload.
                wr.io.write_all(piece).await.map_err(WebSocketError::from)
            } else {
                wr.write_through(piece).await
            };
            written.map_err(|e| self.write_failed(e))?;
            reader.consume(head_len + n);
            let turn_ends = turn.ends_with(head_len + n);
            head_len = 0;
            sent += n as u64;
            left -= n as u64;
            traffic.bytes += n as u64;
            keepalive.seen();
            if turn_ends && left > 0 {
                tokio::task::yield_now().await;
            }
        }
        Ok(())
    }

    /// Sends on the whole small data frames at the start of the parked bytes from where they
    /// lie (see [`super::burst`]); the bytes taken. `Err` is the pump's last act, after the
    /// frames before a violation have gone on.
    async fn forward_parked<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
        &self,
        reader: &mut LegRead<R, Gate>,
        wr: &mut FrameWriter<'_, W>,
        validator: &mut FrameValidator,
        traffic: &mut Traffic,
    ) -> Result<usize, Last> {
        let Some(parked) = reader.parked_mut() else {
            return Ok(0);
        };
        let (at, violation) = ready_in_place(parked, validator, wr.masks, traffic);
        if at > 0 {
            let written = wr.io.write_all(&parked[..at]).await;
            reader.consume(at);
            written.map_err(|e| self.write_failed(e.into()))?;
        }
        match violation {
            Some(v) => Err(self.violation(v.code, v.reason)),
            None => Ok(at),
        }
    }

    fn shutting_down(&self) -> Last {
        let reason = self.closing.reason();
        self.record(Some(close::GOING_AWAY), ClosedBy::Gateway, reason);
        Last::close(close::GOING_AWAY, reason)
    }

    /// A keep-alive tick on `from`'s leg: a Ping for the other pump to send on it, or the end.
    fn on_tick(&self, tick: Tick) -> Option<Last> {
        match tick {
            Tick::SendPing => {
                self.ctl_back.push(Control::Ping);
                None
            }
            Tick::TimedOut => {
                self.record(
                    Some(close::GOING_AWAY),
                    ClosedBy::Gateway,
                    "keep-alive timeout",
                );
                self.ctl_back
                    .finish(Fin::Close(close::GOING_AWAY, "keep-alive timeout"));
                let (code, reason) = self.from.failure_close();
                Some(Last::close(code, reason))
            }
        }
    }

    fn record(&self, code: Option<u16>, closed_by: ClosedBy, reason: &str) {
        let _ = self.ending.set(Ending {
            code,
            closed_by,
            reason: reason.to_owned(),
        });
    }

    /// `from` broke the protocol: it gets the violation's code, the other party the failure one.
    fn violation(&self, code: u16, reason: &'static str) -> Last {
        let who = match self.from {
            Party::Client => "client",
            Party::Upstream => "upstream",
        };
        self.record(Some(code), ClosedBy::Gateway, &format!("{who}: {reason}"));
        self.ctl_back.finish(Fin::Close(code, reason));
        let (code, reason) = self.from.failure_close();
        Last::close(code, reason)
    }

    /// `from`'s connection ended without a Close.
    fn gone(&self, why: String) -> Last {
        self.record(None, self.from.closed_by(), &why);
        self.ctl_back.finish(Fin::Abandon);
        let (code, reason) = self.from.failure_close();
        Last::close(code, reason)
    }

    /// The other party's connection failed under our write.
    fn write_failed(&self, e: WebSocketError) -> Last {
        let to = self.from.other();
        self.record(None, to.closed_by(), &e.to_string());
        let (code, reason) = to.failure_close();
        self.ctl_back.finish(Fin::Close(code, reason));
        Last::Nothing
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::task::Context;

    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::wake::counting::counter;

    /// A binary frame far larger than a chunk, all of it already readable (an always-ready
    /// socket), is sent on in turns: the pump hands the thread back after each
    /// [`crate::buffer::CHUNKS_PER_TURN`] whole chunks and has itself woken, and every byte
    /// still arrives.
    #[test]
    fn a_streamed_frame_hands_the_thread_back_after_each_turn() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _entered = rt.enter();
        let payload = 5 * COPY_CHUNK + 100;
        let mut wire = vec![0x82, 127];
        wire.extend_from_slice(&(payload as u64).to_be_bytes());
        wire.extend((0..payload).map(|i| i as u8));
        let (mut app, leg) = tokio::io::duplex(wire.len());
        let (mut client, to_client) = tokio::io::duplex(wire.len());
        rt.block_on(app.write_all(&wire)).unwrap();

        let opts = WsOptions::default();
        let mut reader = LegRead::gated(leg, opts.receive_buffer_size);
        assert!(rt.block_on(reader.wait_for_data()).unwrap());
        let head = Head::streamable(reader.parked_mut().unwrap()).expect("a streamable header");
        let mut writer = LegWrite::new(to_client);
        let mut wr = FrameWriter {
            io: &mut writer,
            masks: false,
        };
        let (ctl, ending, closing, stopped) = (
            ControlQueue::new(),
            OnceLock::new(),
            CloseNow::default(),
            Signal::default(),
        );
        let ctx = PumpCtx {
            from: Party::Upstream,
            opts: &opts,
            ctl_back: &ctl,
            ending: &ending,
            closing: &closing,
            stopped: &stopped,
        };
        let mut keepalive = KeepAlive::new(opts.keep_alive_interval, opts.keep_alive_timeout);
        let mut traffic = Traffic::default();

        let (wakes, waker) = counter();
        let mut cx = Context::from_waker(&waker);
        let mut streaming =
            Box::pin(ctx.stream_frame(head, &mut reader, &mut wr, &mut keepalive, &mut traffic));
        let mut turns = 0;
        let done = loop {
            match streaming.as_mut().poll(&mut cx) {
                Poll::Ready(done) => break done,
                Poll::Pending => {
                    turns += 1;
                    assert_eq!(wakes.get(), turns, "a turn ends with the task woken again");
                }
            }
        };
        assert!(done.is_ok());
        // The parked read takes `receive_buffer_size` (4 KiB), then come four whole chunks and
        // a short one: a turn ends after the second whole chunk and after the fourth.
        assert_eq!(turns, 2);
        drop(streaming);
        rt.block_on(wr.flush()).unwrap();
        assert_eq!(traffic.bytes, payload as u64);
        let mut got = vec![0u8; wire.len()];
        rt.block_on(tokio::io::AsyncReadExt::read_exact(&mut client, &mut got))
            .unwrap();
        assert_eq!(got, wire, "the frame arrives whole, header and payload");
    }
}
