//! `backend`: the bare fastwebsockets echo server, as the library's own example writes it (hyper
//! http1 with upgrades, `fastwebsockets::upgrade`), on a single-threaded runtime. It is the
//! "direct" target, and the upstream that relay, passthrough, nginx and HAProxy forward to.
//!
//! Frames are echoed one by one as they arrive (no reassembly), like wsgate's echo. Any plain
//! HTTP request gets 200 "ok", so it doubles as a health endpoint. With a certificate it serves
//! wss:// through tokio-rustls, as a bare server terminating its own TLS would.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use bytes::Bytes;
use fastwebsockets::{upgrade, Frame, OpCode, WebSocketError};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
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
    let mut ws = fut.await?;
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
