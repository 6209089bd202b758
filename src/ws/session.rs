//! What every server-side WebSocket session shares, whatever it does with the messages: reading
//! frames without ever cancelling a half-read one, the closing handshake, and the summary that
//! the access log and metrics report when the session ends.

use std::fmt;
use std::time::Duration;

use fastwebsockets::{Frame, WebSocketError, WebSocketRead};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::frames::InFrame;

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
        let mut sink = [0u8; 2048];
        while let Ok(n) = raw.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}
