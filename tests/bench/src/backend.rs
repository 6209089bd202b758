//! `backend`: the bare fastwebsockets echo server, as the library's own example writes it (hyper
//! http1 with upgrades, `fastwebsockets::upgrade`), on a single-threaded runtime. It is the
//! "direct" target, and the upstream that relay, passthrough, nginx and HAProxy forward to.
//!
//! Frames are echoed one by one as they arrive (no reassembly), like wsgate's echo. The echoes of
//! one read go out in one write ([`FlushBeforeRead`]), as any server that is not measuring its
//! own syscalls would do: the backend sits behind every proxy on the load generator's CPU, and
//! with one syscall per echo it, not the proxy, was what every proxy's rate measured (the load
//! generator and a write-per-echo backend on one CPU: 134 k msgs/s at 20 B, the rate nginx,
//! HAProxy and wsgate all sat at). Any plain
//! HTTP request gets 200 "ok", so it doubles as a health endpoint. With a certificate it serves
//! wss:// through tokio-rustls, as a bare server terminating its own TLS would.

use std::io::{self, IoSlice, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use anyhow::Context as _;
use bytes::Bytes;
use fastwebsockets::{upgrade, Frame, OpCode, Role, WebSocket, WebSocketError};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;

pub fn run(listen: SocketAddr, tls: Option<(PathBuf, PathBuf)>) -> anyhow::Result<()> {
    let acceptor = match tls {
        Some((cert, key)) => Some(crate::tls::acceptor(&cert, &key)?),
        None => None,
    };
    let rt = crate::runtime()?;
    rt.block_on(async move {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", listener.local_addr()?)?;
        out.flush()?;
        drop(out);
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: keep serving the connections we have.
                    eprintln!("backend: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                match acceptor {
                    None => serve(stream).await,
                    Some(acceptor) => match acceptor.accept(stream).await {
                        Ok(stream) => serve(stream).await,
                        Err(e) => eprintln!("backend: TLS handshake: {e}"),
                    },
                }
            });
        }
    })
}

/// Gathers the echoes of one burst and writes them when the echo loop next reads from the
/// socket, that is once fastwebsockets has used up the frames already read. A single message
/// still goes out before the loop waits for the next one, so latency is unchanged.
struct FlushBeforeRead<S> {
    inner: S,
    out: Vec<u8>,
    sent: usize,
}

/// What one burst may gather before writing waits for the socket; a write this large on its own
/// goes straight through.
const GATHER: usize = 64 * 1024;

impl<S: AsyncWrite + Unpin> FlushBeforeRead<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            out: Vec::new(),
            sent: 0,
        }
    }

    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.out.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.out.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for FlushBeforeRead<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // A full socket must not stop the reading: the peer may be waiting to write before it
        // reads. Writing waits instead, once a burst has gathered GATHER bytes.
        if let Poll::Ready(Err(e)) = self.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FlushBeforeRead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if self.out.len() + total > GATHER {
            ready!(self.poll_drain(cx))?;
        }
        if self.out.is_empty() && total >= GATHER {
            return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        }
        for b in bufs {
            self.out.extend_from_slice(b);
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_drain(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn serve<S>(stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service_fn(handle))
        .with_upgrades();
    let _ = conn.await;
}

async fn handle(mut req: Request<Incoming>) -> Result<Response<Full<Bytes>>, WebSocketError> {
    if !upgrade::is_upgrade_request(&req) {
        return Ok(Response::new(Full::new(Bytes::from_static(b"ok\n"))));
    }
    let (response, fut) = upgrade::upgrade(&mut req)?;
    tokio::spawn(async move {
        if let Err(e) = echo(fut).await {
            // A load generator that stops just drops its connections: over TLS that is an EOF
            // without close_notify, which is no failure of the run either.
            let dropped = match &e {
                WebSocketError::UnexpectedEOF | WebSocketError::ConnectionClosed => true,
                WebSocketError::IoError(io) => io.kind() == std::io::ErrorKind::UnexpectedEof,
                _ => false,
            };
            if !dropped {
                eprintln!("backend: connection ended: {e}");
            }
        }
    });
    let (parts, _) = response.into_parts();
    Ok(Response::from_parts(parts, Full::new(Bytes::new())))
}

async fn echo(fut: upgrade::UpgradeFut) -> Result<(), WebSocketError> {
    let ws = fut.await?;
    // Nothing is read yet (hyper's `Upgraded` keeps any bytes read past the handshake), so the
    // connection can move under the gathering writer; the settings are fastwebsockets' defaults.
    let mut ws = WebSocket::after_handshake(FlushBeforeRead::new(ws.into_inner()), Role::Server);
    // Default settings (auto pong, auto close), but no size limit below wsgate's 2 MiB.
    ws.set_max_message_size(64 << 20);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => return Ok(()),
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                // A fresh frame: the one read still carries the client's mask key.
                ws.write_frame(Frame::new(frame.fin, frame.opcode, None, frame.payload))
                    .await?;
            }
            OpCode::Ping | OpCode::Pong => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn echoes_wait_for_the_next_read_and_large_writes_go_straight_through() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut io = FlushBeforeRead::new(near);
        io.write_all(b"one").await.unwrap();
        io.write_all(b"two").await.unwrap();
        let mut got = [0u8; 8];
        let mut rb = ReadBuf::new(&mut got);
        let polled =
            std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut far).poll_read(cx, &mut rb))).await;
        assert!(
            polled.is_pending(),
            "nothing is written before the next read"
        );

        // The echo loop reads again: the burst goes out in one piece first.
        far.write_all(b"x").await.unwrap();
        let mut one = [0u8; 1];
        io.read_exact(&mut one).await.unwrap();
        let n = far.read(&mut got).await.unwrap();
        assert_eq!(&got[..n], b"onetwo");

        let big = vec![7u8; GATHER];
        io.write_all(&big).await.unwrap();
        let mut back = vec![0u8; GATHER];
        far.read_exact(&mut back).await.unwrap();
        assert_eq!(back, big, "a write of GATHER bytes is not held back");

        io.write_all(b"end").await.unwrap();
        io.shutdown().await.unwrap();
        let mut rest = Vec::new();
        far.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"end", "shutting down writes out what was gathered");
    }
}
