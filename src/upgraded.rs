//! A connection after its upgrade, taken back from hyper where it can be.
//!
//! hyper hands an upgraded connection over as its `Upgraded`: the stream boxed behind dynamic
//! dispatch and hyper's own read buffer, converted between hyper's and tokio's I/O traits on
//! each side (`TokioIo`), and, for a connection served by hyper-util's auto builder, behind that
//! builder's `Rewind` too. A session that reads and writes at once must then split it with
//! `tokio::io::split`, which takes a lock on every read and write. Every read and write of every
//! message went through all of it: callgrind counted 5–11% of the user instructions per 20 B
//! echo there (relay 1,398–1,435 per echo with them, 1,291–1,331 without; passthrough 606–613
//! and 537–566; wsgate's own echo 828–833 and 781–786).
//!
//! Where the stream underneath is one wsgate made (a client's `TcpStream` or TLS stream, served
//! by [`crate::listener`] with hyper's HTTP/1 server rather than the auto builder for this; an
//! upstream's `TcpStream`), [`Stream::take`] gets it back, with the bytes hyper had read past the
//! handshake. [`Stream::split`] then splits a plain socket into borrowed halves without a lock; a
//! TLS stream (a client's or an upstream's), whose reads and writes share one rustls session,
//! still takes `tokio::io::split`'s lock. Anything else (a client's connection that began like
//! HTTP/2) keeps all of hyper's layers.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::{tcp, TcpStream};
use tokio_rustls::TlsStream;

type Hyper = TokioIo<hyper::upgrade::Upgraded>;

/// An upgraded connection, client's or upstream's.
pub enum Stream {
    /// The socket itself, and what hyper read past the handshake (a client's first frames sent
    /// with its upgrade request, an app's sent with its 101), to be read before the socket.
    Tcp(TcpStream, Bytes),
    /// A TLS stream (a client's, or an upstream's for a wss:// or https:// app), and what hyper
    /// read past the handshake.
    Tls(Box<TlsStream<TcpStream>>, Bytes),
    Hyper(Hyper),
}

impl Stream {
    /// Takes the stream back from hyper if it is one wsgate made: a client's served by
    /// [`crate::listener`]'s HTTP/1 connections, or an upstream's opened by
    /// [`crate::upstream::handshake::send_upgrade`].
    pub fn take(upgraded: hyper::upgrade::Upgraded) -> Self {
        let upgraded = match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => return Stream::Tcp(parts.io.into_inner(), own(parts.read_buf)),
            Err(upgraded) => upgraded,
        };
        let upgraded =
            match upgraded.downcast::<TokioIo<tokio_rustls::server::TlsStream<TcpStream>>>() {
                Ok(parts) => {
                    let tls = TlsStream::Server(parts.io.into_inner());
                    return Stream::Tls(Box::new(tls), own(parts.read_buf));
                }
                Err(upgraded) => upgraded,
            };
        match upgraded.downcast::<TokioIo<crate::upstream::connect::UpstreamTls>>() {
            Ok(parts) => {
                let tls = TlsStream::Client(*parts.io.into_inner());
                Stream::Tls(Box::new(tls), own(parts.read_buf))
            }
            Err(upgraded) => Stream::Hyper(TokioIo::new(upgraded)),
        }
    }

    /// Halves to read and write from two places at once: a plain socket's without a lock.
    pub fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        match self {
            Stream::Tcp(socket, early) => {
                let early = std::mem::take(early);
                let (r, w) = socket.split();
                (ReadHalf::Tcp { half: r, early }, WriteHalf::Tcp(w))
            }
            Stream::Tls(tls, early) => {
                let early = std::mem::take(early);
                let (r, w) = tokio::io::split(&mut **tls);
                (ReadHalf::Tls { half: r, early }, WriteHalf::Tls(w))
            }
            Stream::Hyper(io) => {
                let (r, w) = tokio::io::split(io);
                (ReadHalf::Hyper(r), WriteHalf::Hyper(w))
            }
        }
    }
}

pub enum ReadHalf<'a> {
    Tcp {
        half: tcp::ReadHalf<'a>,
        early: Bytes,
    },
    Tls {
        half: tokio::io::ReadHalf<&'a mut TlsStream<TcpStream>>,
        early: Bytes,
    },
    Hyper(tokio::io::ReadHalf<&'a mut Hyper>),
}

pub enum WriteHalf<'a> {
    Tcp(tcp::WriteHalf<'a>),
    Tls(tokio::io::WriteHalf<&'a mut TlsStream<TcpStream>>),
    Hyper(tokio::io::WriteHalf<&'a mut Hyper>),
}

/// hyper's read-ahead is a slice of its whole read buffer (8 KiB or more): even empty, it would
/// keep that buffer for the session's life. The full bench run at 3ff4a5d, which kept it, measured
/// idle memory at 8.54 KiB per echo connection and 17.75 per relayed pair (4–5 and 7.5 before).
fn own(read_ahead: Bytes) -> Bytes {
    if read_ahead.is_empty() {
        Bytes::new()
    } else {
        read_ahead
    }
}

/// Serves `early` first, then reads from `io`; lets go of `early`'s buffer once it is served.
fn poll_read_after<R: AsyncRead + Unpin>(
    early: &mut Bytes,
    io: &mut R,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    if early.is_empty() {
        return Pin::new(io).poll_read(cx, buf);
    }
    let n = early.len().min(buf.remaining());
    buf.put_slice(&early[..n]);
    early.advance(n);
    if early.is_empty() {
        *early = Bytes::new();
    }
    Poll::Ready(Ok(()))
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(socket, early) => poll_read_after(early, socket, cx, buf),
            Stream::Tls(tls, early) => poll_read_after(early, tls, cx, buf),
            Stream::Hyper(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

impl AsyncRead for ReadHalf<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Tcp { half, early } => poll_read_after(early, half, cx, buf),
            ReadHalf::Tls { half, early } => poll_read_after(early, half, cx, buf),
            ReadHalf::Hyper(io) => Pin::new(io).poll_read(cx, buf),
        }
    }
}

/// `AsyncWrite` for an enum of writers, one match per call: [`Stream`], [`WriteHalf`] and
/// [`crate::upstream::connect::UpstreamStream`]. Each variant's first field is the writer.
macro_rules! write_by_variant {
    ($ty:ty, $($variant:path),+) => {
        impl ::tokio::io::AsyncWrite for $ty {
            fn poll_write(
                self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
                buf: &[u8],
            ) -> ::std::task::Poll<::std::io::Result<usize>> {
                match self.get_mut() {
                    $($variant(w, ..) => ::std::pin::Pin::new(w).poll_write(cx, buf),)+
                }
            }

            fn poll_write_vectored(
                self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
                bufs: &[::std::io::IoSlice<'_>],
            ) -> ::std::task::Poll<::std::io::Result<usize>> {
                match self.get_mut() {
                    $($variant(w, ..) => ::std::pin::Pin::new(w).poll_write_vectored(cx, bufs),)+
                }
            }

            fn is_write_vectored(&self) -> bool {
                match self {
                    $($variant(w, ..) => w.is_write_vectored(),)+
                }
            }

            fn poll_flush(self: ::std::pin::Pin<&mut Self>, cx: &mut ::std::task::Context<'_>) -> ::std::task::Poll<::std::io::Result<()>> {
                match self.get_mut() {
                    $($variant(w, ..) => ::std::pin::Pin::new(w).poll_flush(cx),)+
                }
            }

            fn poll_shutdown(self: ::std::pin::Pin<&mut Self>, cx: &mut ::std::task::Context<'_>) -> ::std::task::Poll<::std::io::Result<()>> {
                match self.get_mut() {
                    $($variant(w, ..) => ::std::pin::Pin::new(w).poll_shutdown(cx),)+
                }
            }
        }
    };
}
pub(crate) use write_by_variant;

write_by_variant!(
    WriteHalf<'_>,
    WriteHalf::Tcp,
    WriteHalf::Tls,
    WriteHalf::Hyper
);
write_by_variant!(Stream, Stream::Tcp, Stream::Tls, Stream::Hyper);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    #[tokio::test]
    async fn bytes_hyper_read_ahead_come_first_however_small_the_reads() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (socket, _) = listener.accept().await.unwrap();
        let mut stream = Stream::Tcp(socket, Bytes::from_static(b"abcdef"));
        let (mut r, mut w) = stream.split();
        let mut four = [0u8; 4];
        assert_eq!(r.read(&mut four).await.unwrap(), 4);
        assert_eq!(&four, b"abcd");
        assert_eq!(r.read(&mut four).await.unwrap(), 2);
        assert_eq!(&four[..2], b"ef");
        peer.write_all(b"gh").await.unwrap();
        let mut two = [0u8; 2];
        r.read_exact(&mut two).await.unwrap();
        assert_eq!(&two, b"gh");
        w.write_all(b"back").await.unwrap();
        peer.read_exact(&mut four).await.unwrap();
        assert_eq!(&four, b"back");
    }
}
