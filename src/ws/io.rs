//! Stream adapters for WebSocket sessions.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// Caps each read from the socket at `receive_buffer_size` (ASP.NET Core's ReceiveBufferSize):
/// fastwebsockets reserves room for a whole frame and would otherwise read as much as the
/// kernel holds, so this is what makes the option mean what operators expect.
pub struct CappedRead<R> {
    inner: R,
    cap: usize,
}

impl<R> CappedRead<R> {
    pub fn new(inner: R, cap: usize) -> Self {
        Self {
            inner,
            cap: cap.max(1),
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for CappedRead<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() <= this.cap {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let mut sub = ReadBuf::new(buf.initialize_unfilled_to(this.cap));
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut sub))?;
        let n = sub.filled().len();
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn reads_at_most_the_cap() {
        let data = vec![7u8; 10_000];
        let mut r = CappedRead::new(&data[..], 4096);
        let mut buf = Vec::with_capacity(20_000);
        let n = r.read_buf(&mut buf).await.unwrap();
        assert_eq!(n, 4096);
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).await.unwrap();
        assert_eq!(n + rest.len(), 10_000);
    }
}
