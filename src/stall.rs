//! Write stalls. A peer that stops reading (a frozen tab, a zero-window client, an app blocked
//! on its own writes) leaves wsgate's write pending, and TCP never times that out: the session
//! would hold its sockets, its limit slot and its buffers for ever, and while a write waits
//! nothing else on that path runs (no keep-alive Ping can reach such a peer, no Close either).
//! [`Stalled`] fails a write half's write, flush or shutdown once the peer has taken no byte for
//! the stall limit, so the session ends as it would for a peer that vanished.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::AsyncWrite;
use tokio::time::{Instant, Sleep};

use crate::config::WsOptions;

/// How long a peer may take no bytes while wsgate has some for it: as long as keep-alive would
/// let a silent peer stay (a Ping every `keep_alive_interval`, then `keep_alive_timeout` for
/// an answer), since a Ping stuck behind the pending write could never be answered. `None`
/// when keep-alive is off: a peer is then never judged by time.
pub fn limit(opts: &WsOptions) -> Option<Duration> {
    let (interval, timeout) = (opts.keep_alive_interval, opts.keep_alive_timeout);
    (!interval.is_zero() && !timeout.is_zero()).then(|| interval + timeout)
}

/// The clock of one path's writes: started by a write that must wait, restarted by progress.
/// For callers that see progress themselves (a tunnel writes out a buffer in several calls);
/// [`Stalled`] wraps a write half with one.
#[derive(Default)]
pub struct Stall {
    limit: Option<Duration>,
    /// Boxed and kept once a write has waited: most sessions never wait on a write, and an
    /// idle one holds a pointer's worth for it.
    timer: Option<Pin<Box<Sleep>>>,
    /// The timer runs for the write waiting now.
    armed: bool,
}

impl Stall {
    pub fn new(limit: Option<Duration>) -> Self {
        Self {
            limit,
            timer: None,
            armed: false,
        }
    }

    /// The peer took bytes: the next wait starts the clock anew.
    pub fn progressed(&mut self) {
        self.armed = false;
    }

    /// A write must wait: starts the clock if it is not running; `Ready` with the error to end
    /// the path once it has run out.
    pub fn poll_waiting(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let Some(limit) = self.limit else {
            return Poll::Pending;
        };
        let timer = match &mut self.timer {
            Some(timer) if self.armed => timer,
            Some(timer) => {
                timer.as_mut().reset(Instant::now() + limit);
                timer
            }
            None => self
                .timer
                .insert(Box::pin(tokio::time::sleep_until(Instant::now() + limit))),
        };
        self.armed = true;
        ready!(timer.as_mut().poll(cx));
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "peer took no bytes for {}",
                crate::config::format_duration(limit)
            ),
        ))
    }

    /// Passes on what a write half answered: `Ready` is progress, `Pending` a wait.
    pub fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.progressed();
            return polled;
        }
        self.poll_waiting(cx).map(Err)
    }
}

/// A write half whose pending writes fail with `TimedOut` after the stall limit. Any write,
/// flush or shutdown that completes counts as progress and restarts the clock.
pub struct Stalled<W> {
    inner: W,
    stall: Stall,
}

impl<W> Stalled<W> {
    pub fn new(inner: W, limit: Option<Duration>) -> Self {
        Self {
            inner,
            stall: Stall::new(limit),
        }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Stalled<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, data);
        this.stall.watch(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.stall.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.stall.watch(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.stall.watch(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A peer that never takes a byte.
    struct Full;

    impl AsyncWrite for Full {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Pending
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_the_peer_never_takes_fails_at_the_limit() {
        let mut w = Stalled::new(Full, Some(Duration::from_secs(150)));
        let started = Instant::now();
        let e = w.write_all(b"x").await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(150));
        assert!(e.to_string().contains("150s"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_limit_a_write_waits() {
        let mut w = Stalled::new(Full, None);
        let waited = tokio::time::timeout(Duration::from_secs(86_400), w.write_all(b"x")).await;
        assert!(waited.is_err(), "still waiting after a day");
    }

    #[tokio::test(start_paused = true)]
    async fn progress_restarts_the_clock() {
        // A duplex pipe with room for 4 bytes, drained 4 bytes every 100 s: each write waits
        // less than the 150 s limit, though the whole takes far longer.
        let (mut ours, mut theirs) = tokio::io::duplex(4);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 4];
            let mut got = 0;
            while got < 40 {
                tokio::time::sleep(Duration::from_secs(100)).await;
                got += tokio::io::AsyncReadExt::read(&mut theirs, &mut buf)
                    .await
                    .unwrap();
            }
        });
        let mut w = Stalled::new(&mut ours, Some(Duration::from_secs(150)));
        let started = Instant::now();
        w.write_all(&[7u8; 40]).await.unwrap();
        assert!(started.elapsed() > Duration::from_secs(150));
        reader.await.unwrap();
    }

    #[test]
    fn the_limit_follows_keep_alive() {
        let opts = WsOptions::default();
        assert_eq!(limit(&opts), Some(Duration::from_secs(150)));
        let off = WsOptions {
            keep_alive_interval: Duration::ZERO,
            ..WsOptions::default()
        };
        assert_eq!(limit(&off), None);
        let no_timeout = WsOptions {
            keep_alive_timeout: Duration::ZERO,
            ..WsOptions::default()
        };
        assert_eq!(limit(&no_timeout), None);
    }
}
