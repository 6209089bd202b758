//! I/O buffers lent per read, so an idle connection holds none.
//!
//! A read that would block writes nothing into the buffer it was offered, so the buffer can go
//! straight back to the pool when the read returns `Pending`: a connection only holds one while
//! bytes are actually in flight (read but not yet written on). Idle tunnels and WebSockets then
//! cost their sockets and task state, not a buffer each. Buffers are pooled per thread (no lock),
//! and each thread keeps at most `POOL_MAX` (16) spare ones, so the pool is bounded by what was in
//! flight at once, not by how many connections are open.

use std::cell::RefCell;
use std::io;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Size of a lent buffer: 256 KiB, so bulk transfers move in few syscalls (measured on a 1 MiB
/// passthrough echo: 35% more messages per second than with 64 KiB, and no gain from 1 MiB).
/// It costs nothing while idle, since buffers are only lent while bytes are in flight.
pub const BUFFER_SIZE: usize = 256 * 1024;

/// How much a tunnel reads (and so writes) at once: just under 64 KiB, as HAProxy does with
/// 64 KiB buffers (65,472 bytes). Measured on a 1 MiB passthrough echo over loopback, in CPU per
/// message: 610 us at this size, 1,050 us at exactly 64 KiB and 800 to 880 us at 256 KiB.
/// - Loopback's MSS is 65,483 (MTU 65,536), so a 64 KiB write goes out as a full segment plus
///   a 53-byte one: twice the packets for both TCP stacks to handle.
/// - Chunks this size stay in the CPU's L2 cache between the copy in and the copy out.
///
/// The buffer lent for the read is still a [`BUFFER_SIZE`] one; only the read is shorter.
pub const COPY_CHUNK: usize = 64 * 1024 - 64;

/// Full [`COPY_CHUNK`]s a bulk transfer (a passthrough direction, a frame streamed through the
/// relay) copies before it yields to the thread's other connections (see
/// `proxy::passthrough`'s `Direction`). Measured on a 1 MiB echo through passthrough, 10
/// connections, in runs of 8 interleaved rounds, as a ratio of medians to HAProxy with 64 KiB
/// buffers in the same run: 1 chunk 0.98x, 2 chunks 1.03x and 1.04x, 4 chunks 1.01x and 1.05x;
/// no round stalled. Yielding after every chunk costs a task poll per 64 KiB and delays each
/// message more.
pub const CHUNKS_PER_TURN: usize = 2;

/// Where a bulk transfer is in its turn: the whole [`COPY_CHUNK`]s copied since it last yielded.
/// Copies shorter than a chunk (small messages, TLS records) never count.
#[derive(Debug, Default)]
pub struct Turn(usize);

impl Turn {
    /// Counts a copy of `n` bytes; `true` when it ends the turn (and the next one starts), so
    /// the caller yields before it reads again.
    pub fn ends_with(&mut self, n: usize) -> bool {
        if n >= COPY_CHUNK {
            self.0 += 1;
        }
        if self.0 < CHUNKS_PER_TURN {
            return false;
        }
        self.0 = 0;
        true
    }
}

/// Spare buffers a thread keeps (4 MiB); more are freed when returned.
const POOL_MAX: usize = 16;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of [`BUFFER_SIZE`] bytes from this thread's pool; back to the pool when dropped.
pub struct Lent(Option<Box<[u8]>>);

impl Lent {
    pub fn take() -> Self {
        let buf = POOL
            .with(|p| p.borrow_mut().pop())
            .unwrap_or_else(|| vec![0u8; BUFFER_SIZE].into_boxed_slice());
        Lent(Some(buf))
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(buf) = self.0.take() {
            // `try_with`: a buffer dropped while the thread's locals are torn down is just freed.
            let _ = POOL.try_with(|p| {
                let mut p = p.borrow_mut();
                if p.len() < POOL_MAX {
                    p.push(buf);
                }
            });
        }
    }
}

impl Deref for Lent {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.0
            .as_deref()
            .expect("a Lent holds its buffer until dropped")
    }
}

impl DerefMut for Lent {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.0
            .as_deref_mut()
            .expect("a Lent holds its buffer until dropped")
    }
}

/// Bytes read into a lent buffer and not yet consumed: `buf[start..end]`.
pub struct Filled {
    pub buf: Lent,
    pub start: usize,
    pub end: usize,
}

impl Filled {
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub fn is_empty(&self) -> bool {
        self.start >= self.end
    }

    /// Writes out what is left; `Ready(Ok(()))` once all of it is written. `start` counts what
    /// went out, also when this returns `Pending` or an error.
    pub fn poll_write_out<W: AsyncWrite + Unpin + ?Sized>(
        &mut self,
        w: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        poll_write_all(w, cx, &self.buf[..self.end], &mut self.start)
    }
}

/// Writes `data[*written..]`; `Ready(Ok(()))` once all of it is written. `written` counts what
/// went out, also across calls that return `Pending` and when one fails.
pub fn poll_write_all<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    cx: &mut Context<'_>,
    data: &[u8],
    written: &mut usize,
) -> Poll<io::Result<()>> {
    while *written < data.len() {
        let n = ready!(Pin::new(&mut *w).poll_write(cx, &data[*written..]))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        *written += n;
    }
    Poll::Ready(Ok(()))
}

/// Polls one read of at most `limit` bytes into a lent buffer. `Ready(Ok(None))` is end of
/// stream; on `Pending` the buffer has already gone back to the pool.
#[inline(always)]
pub fn poll_read_lent<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
    cx: &mut Context<'_>,
    limit: usize,
) -> Poll<io::Result<Option<Filled>>> {
    let mut buf = Lent::take();
    let limit = limit.clamp(1, BUFFER_SIZE);
    let mut rb = ReadBuf::new(&mut buf[..limit]);
    match Pin::new(r).poll_read(cx, &mut rb) {
        Poll::Pending => Poll::Pending,
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Ready(Ok(())) => {
            let n = rb.filled().len();
            if n == 0 {
                Poll::Ready(Ok(None))
            } else {
                Poll::Ready(Ok(Some(Filled {
                    buf,
                    start: 0,
                    end: n,
                })))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returned_buffers_are_reused_and_the_pool_is_bounded() {
        let first = Lent::take();
        let ptr = first.as_ptr();
        drop(first);
        let again = Lent::take();
        assert_eq!(again.as_ptr(), ptr, "the returned buffer is lent again");
        drop(again);
        let many: Vec<Lent> = (0..POOL_MAX + 10).map(|_| Lent::take()).collect();
        drop(many);
        assert_eq!(POOL.with(|p| p.borrow().len()), POOL_MAX);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_read_that_would_block_holds_no_buffer() {
        let (mut a, mut b) = tokio::io::duplex(64);
        POOL.with(|p| p.borrow_mut().clear());
        let polled =
            std::future::poll_fn(|cx| Poll::Ready(poll_read_lent(&mut a, cx, BUFFER_SIZE))).await;
        assert!(polled.is_pending());
        assert_eq!(POOL.with(|p| p.borrow().len()), 1, "the buffer went back");
        tokio::io::AsyncWriteExt::write_all(&mut b, b"hello")
            .await
            .unwrap();
        let filled = std::future::poll_fn(|cx| poll_read_lent(&mut a, cx, BUFFER_SIZE))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(filled.bytes(), b"hello");
        assert_eq!(
            POOL.with(|p| p.borrow().len()),
            0,
            "lent while data is held"
        );
        drop(b);
        drop(filled);
        let eof = std::future::poll_fn(|cx| poll_read_lent(&mut a, cx, BUFFER_SIZE))
            .await
            .unwrap();
        assert!(eof.is_none());
    }
}
