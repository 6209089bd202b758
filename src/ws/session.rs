//! What every server-side WebSocket session shares, whatever it does with the messages: reading
//! frames without ever cancelling a half-read one, the closing handshake, and the summary that
//! the access log and metrics report when the session ends.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use fastwebsockets::{Frame, WebSocketError, WebSocketRead};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::frames::{FrameValidator, InFrame};

/// Reads one frame. The reader is moved in and handed back so the future can live across
/// `select!` iterations: fastwebsockets' `read_frame` is not cancel-safe (a frame header it has
/// consumed would be lost), so a session keeps one read in flight and never drops it early.
pub async fn next_frame<R: AsyncRead + Unpin>(
    mut rd: WebSocketRead<R>,
) -> (WebSocketRead<R>, Result<InFrame, WebSocketError>) {
    // Auto-close and auto-pong are off, so the reader never has a frame it must send itself.
    let mut no_obligated_send =
        |_: Frame<'_>| std::future::ready(Ok::<(), std::convert::Infallible>(()));
    let res = rd
        .read_frame(&mut no_obligated_send)
        .await
        .map(InFrame::from_frame);
    (rd, res)
}

/// Polls `fut` once with the task's context: what a session can take without waiting. Used on
/// a future kept across polls (a frame read), or on one that is cancel-safe (a flush).
pub async fn poll_once<F: Future + ?Sized>(mut fut: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await
}

/// Sets up a reader for a session: wsgate answers Close and Ping itself, after validation, and
/// fastwebsockets refuses a frame header announcing more than a whole message may hold.
pub fn configure_reader<R: AsyncRead + Unpin>(
    mut rd: WebSocketRead<R>,
    validator: &FrameValidator,
) -> WebSocketRead<R> {
    rd.set_auto_close(false);
    rd.set_auto_pong(false);
    rd.set_max_message_size(validator.frame_limit());
    rd
}

/// Who ended a session, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClosedBy {
    Client,
    Gateway,
    Upstream,
}

impl fmt::Display for ClosedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClosedBy::Client => "client",
            ClosedBy::Gateway => "gateway",
            ClosedBy::Upstream => "upstream",
        })
    }
}

/// How a session ended and what went through it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEnd {
    /// The code of the Close frame that ended it; `None` when the connection just vanished.
    pub code: Option<u16>,
    pub closed_by: ClosedBy,
    pub reason: String,
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl SessionEnd {
    pub fn new(closed_by: ClosedBy, code: Option<u16>, reason: impl Into<String>) -> Self {
        Self {
            code,
            closed_by,
            reason: reason.into(),
            messages_in: 0,
            messages_out: 0,
            bytes_in: 0,
            bytes_out: 0,
        }
    }
}

/// Sends our Close, then finishes the TCP side: half-close our direction and discard whatever
/// the peer still sends until it closes too (bounded by `close_timeout`). Dropping the socket
/// with unread data would make the kernel answer with RST, and a peer that is still writing (a
/// client mid-way through a message we refused with 1009) would then lose our Close frame.
pub async fn close_and_linger<R, W>(
    w: &mut W,
    raw: &mut R,
    code: u16,
    reason: &[u8],
    close_timeout: Duration,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(close_timeout, async {
        let mut buf = Vec::with_capacity(reason.len() + 4);
        let mut frame = Frame::close(code, reason);
        let bytes = frame.write(&mut buf);
        if w.write_all(bytes).await.is_ok() {
            let _ = w.shutdown().await;
        }
        discard(raw).await;
    })
    .await;
}

/// Reads and discards until the peer closes (or fails), with a lent buffer only while bytes
/// arrive: dropping a socket with unread data makes the kernel answer with RST, which can
/// destroy a Close frame still on its way to the peer.
pub async fn discard<R: AsyncRead + Unpin>(r: &mut R) {
    while let Ok(Some(_)) =
        std::future::poll_fn(|cx| crate::buffer::poll_read_lent(r, cx, crate::buffer::BUFFER_SIZE))
            .await
    {}
}

/// Why a session was asked to close with 1001.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseRequest {
    /// Shutdown.
    GoingAway,
    /// A reload that removed or changed the route (`on_route_change: drain`): said apart from
    /// shutdown, so that neither the client nor the access log takes a reload for a restart.
    RouteChanged,
    /// `max_connection_age` reached.
    Retired,
}

impl CloseRequest {
    /// The reason its 1001 carries, the same in every mode (to both legs in relay, and in the
    /// access log), so a client or an app reads one word for one cause.
    pub fn reason(self) -> &'static str {
        match self {
            CloseRequest::GoingAway => "server shutting down",
            CloseRequest::RouteChanged => "route changed by a reload",
            CloseRequest::Retired => "connection age limit",
        }
    }
}

/// When a session must close with 1001: its route's token is cancelled (by shutdown, which
/// cancels `shutdown` too, or by a drain on reload), then a random delay within `spread`
/// passes so that thousands of clients do not reconnect in the same instant; or it reaches
/// `max_age` (plus up to 10% jitter, for the same reason). Pinned once per session and polled
/// in its `select!`, so it costs nothing per message.
pub async fn close_requested(
    token: tokio_util::sync::CancellationToken,
    shutdown: tokio_util::sync::CancellationToken,
    spread: Duration,
    max_age: Duration,
) -> CloseRequest {
    // Every session holds this future for its whole life, so its timers are boxed and made
    // only when configured: an inline `Sleep` is over a hundred bytes per idle connection.
    let retire = async {
        if max_age.is_zero() {
            std::future::pending::<()>().await;
        }
        Box::pin(tokio::time::sleep(max_age + jitter(max_age / 10))).await;
    };
    tokio::select! {
        _ = token.cancelled() => {
            // The route's token is a child of the shutdown one, so a shutdown has cancelled
            // both by the time this runs.
            let request = if shutdown.is_cancelled() {
                CloseRequest::GoingAway
            } else {
                CloseRequest::RouteChanged
            };
            if !spread.is_zero() {
                Box::pin(tokio::time::sleep(jitter(spread))).await;
            }
            request
        }
        _ = retire => CloseRequest::Retired,
    }
}

/// A random duration in `[0, max)`, from std's randomly keyed hasher (no RNG crate needed for
/// spreading timers).
pub fn jitter(max: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    if max.is_zero() {
        return Duration::ZERO;
    }
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x9E37_79B9_7F4A_7C15);
    let r = h.finish();
    Duration::from_nanos(r % (max.as_nanos().min(u64::MAX as u128) as u64))
}

/// A flag raised and watched within one task: a relay's "close now" and "a pump stopped".
///
/// A `CancellationToken` would do, but it is a heap node per token and each poll of its
/// future takes two mutexes, and a relay polls its watchers every time it is woken (for every
/// frame it moves). Watchers here register no waker: whoever raises the flag runs in the same
/// task and wakes it, so every watcher is polled again and sees it. Never watch one from
/// another task.
#[derive(Debug, Default)]
pub struct Signal(AtomicBool);

impl Signal {
    /// Raises the flag and wakes the current task, so that its other watchers see it.
    pub async fn raise(&self) {
        self.0.store(true, Ordering::Relaxed);
        std::future::poll_fn(|cx| {
            cx.waker().wake_by_ref();
            Poll::Ready(())
        })
        .await;
    }

    /// Resolves once the flag is raised (by this task).
    pub fn raised(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |_| {
            if self.0.load(Ordering::Relaxed) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
    }
}
