//! The client side shared by `load`, `latency`, `idle` and `probe`: URL, connect, handshake,
//! and hand-rolled framing.
//!
//! The load generator must stay cheaper per message than any target, so it does not go through a
//! WebSocket library: frames are prebuilt once (masked with an all-zero key, which is a valid
//! mask that costs no XOR; the server still unmasks as it must), several are written with one
//! syscall, and the reader walks frame headers in a 256 KiB buffer without copying payloads.
//!
//! `wss://` URLs go through rustls (see [`crate::tls`]); plain ones use tokio's owned socket
//! halves, which take no lock per read or write.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub host_header: String,
    pub path: String,
    /// For `wss://`: the connector and the name the certificate must hold.
    pub tls: Option<(TlsConnector, ServerName<'static>)>,
}

/// `ws://HOST:PORT/PATH` or `wss://...` where HOST is a loopback IP literal or `localhost`;
/// `wss://` needs `ca`, the certificate the target's is signed by.
pub fn parse_url(url: &str, ca: Option<&Path>) -> anyhow::Result<Target> {
    let (secure, rest) = if let Some(rest) = url.strip_prefix("ws://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("wss://") {
        (true, rest)
    } else {
        bail!("{url:?}: only ws:// and wss:// URLs are supported");
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("{url:?}: the URL needs an explicit port"))?;
    let port: u16 = port.parse().with_context(|| format!("port in {url:?}"))?;
    let ip: IpAddr = match host {
        "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        h => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .with_context(|| format!("{url:?}: the host must be an IP literal or localhost"))?,
    };
    if !ip.is_loopback() {
        bail!("{url:?}: refusing a non-loopback target; this benchmark only talks to this machine");
    }
    let tls = if secure {
        let ca = ca.ok_or_else(|| anyhow!("{url:?}: a wss:// target needs --ca"))?;
        let name = match host {
            "localhost" => ServerName::try_from("localhost")?,
            _ => ServerName::IpAddress(ip.into()),
        };
        Some((crate::tls::connector(ca)?, name))
    } else {
        None
    };
    Ok(Target {
        addr: SocketAddr::new(ip, port),
        host_header: authority.to_string(),
        path: path.to_string(),
        tls,
    })
}

/// A connection to a target, plain or TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// The reading half of a [`Stream`].
pub enum ReadHalf {
    Plain(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<Box<TlsStream<TcpStream>>>),
}

/// The writing half of a [`Stream`].
pub enum WriteHalf {
    Plain(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<Box<TlsStream<TcpStream>>>),
}

impl Stream {
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Plain(s) => {
                let (r, w) = s.into_split();
                (ReadHalf::Plain(r), WriteHalf::Plain(w))
            }
            Stream::Tls(s) => {
                let (r, w) = tokio::io::split(s);
                (ReadHalf::Tls(r), WriteHalf::Tls(w))
            }
        }
    }

    /// What a TLS connection negotiated (`TLSv1_3 TLS13_AES_128_GCM_SHA256`); `None` if plain.
    pub fn tls_info(&self) -> Option<String> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(s) => Some(crate::tls::describe(s.get_ref().1)),
        }
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ReadHalf::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Plain(s) => Pin::new(s).poll_write(cx, buf),
            WriteHalf::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Plain(s) => Pin::new(s).poll_flush(cx),
            WriteHalf::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Plain(s) => Pin::new(s).poll_shutdown(cx),
            WriteHalf::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// The upgrade was answered with something other than 101.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub head: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "upgrade refused: HTTP {} ({})", self.status, self.head)
    }
}

impl std::error::Error for Refused {}

/// Connects (from `source` when given: one source address runs out of ephemeral ports at
/// tens of thousands of connections) and completes the upgrade. Returns the stream and any bytes
/// that arrived after the 101's head.
pub async fn connect(
    target: &Target,
    source: Option<Ipv4Addr>,
) -> anyhow::Result<(Stream, Vec<u8>)> {
    let socket = match target.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(src) = source {
        if !src.is_loopback() {
            bail!("source address {src} is not loopback");
        }
        // Ports of closed connections in TIME_WAIT stay bindable.
        socket.set_reuseaddr(true)?;
        socket
            .bind(SocketAddr::new(IpAddr::V4(src), 0))
            .with_context(|| format!("binding source {src}"))?;
    }
    let stream = socket
        .connect(target.addr)
        .await
        .with_context(|| format!("connecting to {}", target.addr))?;
    stream.set_nodelay(true)?;
    match &target.tls {
        None => {
            let mut stream = stream;
            let leftover = handshake(&mut stream, target).await?;
            Ok((Stream::Plain(stream), leftover))
        }
        Some((connector, name)) => {
            let mut stream = connector
                .connect(name.clone(), stream)
                .await
                .context("TLS handshake")?;
            let leftover = handshake(&mut stream, target).await?;
            Ok((Stream::Tls(Box::new(stream)), leftover))
        }
    }
}

async fn handshake<S>(stream: &mut S, target: &Target) -> anyhow::Result<Vec<u8>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        target.path, target.host_header
    );
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let end = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed during the handshake");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 16 * 1024 {
            bail!("handshake response head larger than 16 KiB");
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status_line = head.lines().next().unwrap_or_default().to_string();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("malformed status line {status_line:?}"))?;
    if status != 101 {
        // Include a little of the body: wsgate says why (e.g. "relay is not available yet").
        let body = String::from_utf8_lossy(&buf[end..]).trim().to_string();
        return Err(Refused {
            status,
            head: if body.is_empty() {
                status_line
            } else {
                format!("{status_line}: {body}")
            },
        }
        .into());
    }
    Ok(buf.split_off(end))
}

/// One client frame: FIN + binary, masked with the all-zero key, so the payload goes out as is.
pub fn client_frame(payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = Vec::with_capacity(len + 14);
    f.push(0x82);
    if len < 126 {
        f.push(0x80 | len as u8);
    } else if len < 65536 {
        f.push(0x80 | 126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(len as u64).to_be_bytes());
    }
    f.extend_from_slice(&[0, 0, 0, 0]);
    f.extend_from_slice(payload);
    f
}

/// Where the payload starts in a `client_frame` of `len` bytes.
pub fn client_header_len(len: usize) -> usize {
    match len {
        0..=125 => 6,
        126..=65535 => 8,
        _ => 14,
    }
}

/// How a connection's reading ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The server sent a Close frame.
    Close,
    /// EOF without a Close.
    Eof,
}

pub enum Event {
    /// A complete data message of this many payload bytes; its first bytes are in `head()`.
    Message(u64),
    End(End),
}

/// Bytes of each message's payload kept for the caller (the latency timestamp).
pub const HEAD_BYTES: usize = 16;

enum State {
    Header,
    Payload {
        left: u64,
        fin: bool,
        opcode: u8,
        mask: Option<[u8; 4]>,
        frame_off: usize,
    },
}

/// Walks server frames without copying payloads, one complete data message at a time.
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    state: State,
    msg_len: u64,
    head: [u8; HEAD_BYTES],
    head_len: usize,
}

const READ_BUF: usize = 256 * 1024;

impl FrameReader {
    pub fn new(leftover: Vec<u8>) -> Self {
        let mut buf = vec![0u8; READ_BUF.max(leftover.len())];
        buf[..leftover.len()].copy_from_slice(&leftover);
        Self {
            buf,
            start: 0,
            end: leftover.len(),
            state: State::Header,
            msg_len: 0,
            head: [0; HEAD_BYTES],
            head_len: 0,
        }
    }

    /// The next complete data message (length and first `HEAD_BYTES` bytes), or how the
    /// connection ended. Control frames other than Close are skipped.
    pub async fn next<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> anyhow::Result<Event> {
        loop {
            if let Some(ev) = self.parse()? {
                return Ok(ev);
            }
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
            } else if self.buf.len() - self.end < 4096 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let n = r.read(&mut self.buf[self.end..]).await?;
            if n == 0 {
                return Ok(Event::End(End::Eof));
            }
            self.end += n;
        }
    }

    pub fn head(&self) -> &[u8] {
        &self.head[..self.head_len]
    }

    /// Consumes what is buffered up to the end of the next message or Close.
    fn parse(&mut self) -> anyhow::Result<Option<Event>> {
        loop {
            match &mut self.state {
                State::Header => {
                    let avail = &self.buf[self.start..self.end];
                    if avail.len() < 2 {
                        return Ok(None);
                    }
                    let (b0, b1) = (avail[0], avail[1]);
                    let masked = b1 & 0x80 != 0;
                    let ext = match b1 & 0x7f {
                        126 => 2,
                        127 => 8,
                        _ => 0,
                    };
                    let hlen = 2 + ext + if masked { 4 } else { 0 };
                    if avail.len() < hlen {
                        return Ok(None);
                    }
                    let len = match ext {
                        0 => u64::from(b1 & 0x7f),
                        2 => u64::from(u16::from_be_bytes([avail[2], avail[3]])),
                        _ => u64::from_be_bytes(avail[2..10].try_into().expect("8 bytes")),
                    };
                    let mask = masked.then(|| {
                        let m = &avail[2 + ext..6 + ext];
                        [m[0], m[1], m[2], m[3]]
                    });
                    let opcode = b0 & 0x0f;
                    match opcode {
                        0 => {}
                        1 | 2 => {
                            self.msg_len = 0;
                            self.head_len = 0;
                        }
                        8..=10 => {}
                        _ => bail!("server sent a frame with reserved opcode {opcode}"),
                    }
                    self.start += hlen;
                    self.state = State::Payload {
                        left: len,
                        fin: b0 & 0x80 != 0,
                        opcode,
                        mask,
                        frame_off: 0,
                    };
                }
                State::Payload {
                    left,
                    fin,
                    opcode,
                    mask,
                    frame_off,
                } => {
                    let take = (*left).min((self.end - self.start) as u64) as usize;
                    let data = *opcode <= 2;
                    if data && self.head_len < HEAD_BYTES {
                        let n = take.min(HEAD_BYTES - self.head_len);
                        for i in 0..n {
                            let mut b = self.buf[self.start + i];
                            if let Some(m) = mask {
                                b ^= m[(*frame_off + i) % 4];
                            }
                            self.head[self.head_len + i] = b;
                        }
                        self.head_len += n;
                    }
                    if data {
                        self.msg_len += take as u64;
                    }
                    *frame_off += take;
                    *left -= take as u64;
                    self.start += take;
                    if *left > 0 {
                        return Ok(None);
                    }
                    let (fin, opcode) = (*fin, *opcode);
                    self.state = State::Header;
                    if opcode == 8 {
                        return Ok(Some(Event::End(End::Close)));
                    }
                    if data && fin {
                        return Ok(Some(Event::Message(self.msg_len)));
                    }
                }
            }
        }
    }
}

/// `probe`: one handshake and one echoed message; prints `ok` or why not.
pub fn probe(url: &str, ca: Option<&Path>, size: usize, timeout: Duration) -> anyhow::Result<()> {
    let target = parse_url(url, ca)?;
    let rt = crate::runtime()?;
    let result: anyhow::Result<()> = rt.block_on(async {
        tokio::time::timeout(timeout, async {
            let (stream, leftover) = connect(&target, None).await?;
            let (mut rh, mut wh) = stream.into_split();
            let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            wh.write_all(&client_frame(&payload)).await?;
            let mut reader = FrameReader::new(leftover);
            match reader.next(&mut rh).await? {
                Event::Message(len) if len == size as u64 => {}
                Event::Message(len) => {
                    bail!("echo of a {size}-byte message came back with {len} bytes")
                }
                Event::End(end) => bail!("connection ended ({end:?}) before the echo arrived"),
            }
            Ok(())
        })
        .await
        .map_err(|_| anyhow!("no echo within {timeout:?}"))?
    });
    match result {
        Ok(()) => {
            println!("ok");
            Ok(())
        }
        Err(e) => {
            // The script shows this line as the reason a target is "not available".
            println!("{e:#}");
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut f = client_frame(payload);
        f[0] = (fin as u8) << 7 | opcode;
        let h = client_header_len(payload.len());
        match mask {
            Some(m) => {
                f[h - 4..h].copy_from_slice(&m);
                for (i, b) in f[h..].iter_mut().enumerate() {
                    *b ^= m[i % 4];
                }
            }
            None => {
                f[1] &= 0x7f;
                f.drain(h - 4..h);
            }
        }
        f
    }

    #[test]
    fn parses_across_arbitrary_read_boundaries() {
        let big: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
        let mut wire = Vec::new();
        wire.extend(server_frame(true, 2, b"0123456789abcdefXYZ", None));
        wire.extend(server_frame(true, 9, b"ping", None));
        wire.extend(server_frame(false, 1, b"01234567", Some([1, 2, 3, 4])));
        wire.extend(server_frame(true, 0, b"89abcdefgh", Some([9, 8, 7, 6])));
        wire.extend(server_frame(true, 2, &big, None));
        wire.extend(server_frame(true, 2, b"", None));
        wire.extend(server_frame(true, 8, &[3, 232], None));
        for chunk in [1, 3, 7, 4096, wire.len()] {
            let rt = crate::runtime().unwrap();
            let mut got = Vec::new();
            let end = rt.block_on(async {
                let mut src = tokio_test_reader(wire.clone(), chunk);
                let mut r = FrameReader::new(Vec::new());
                loop {
                    match r.next(&mut src).await.unwrap() {
                        Event::Message(len) => got.push((len, r.head().to_vec())),
                        Event::End(end) => break end,
                    }
                }
            });
            assert_eq!(end, End::Close);
            assert_eq!(
                got,
                vec![
                    (19, b"0123456789abcdef".to_vec()),
                    (18, b"0123456789abcdef".to_vec()),
                    (70_000, big[..16].to_vec()),
                    (0, vec![]),
                ],
                "chunk {chunk}"
            );
        }
    }

    /// An AsyncRead that hands out `chunk` bytes at a time.
    fn tokio_test_reader(data: Vec<u8>, chunk: usize) -> impl AsyncRead + Unpin {
        struct R(std::io::Cursor<Vec<u8>>, usize);
        impl AsyncRead for R {
            fn poll_read(
                mut self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                let n = self.1.min(buf.remaining());
                let mut tmp = vec![0; n];
                let got = std::io::Read::read(&mut self.0, &mut tmp)?;
                buf.put_slice(&tmp[..got]);
                std::task::Poll::Ready(Ok(()))
            }
        }
        R(std::io::Cursor::new(data), chunk)
    }

    #[test]
    fn urls() {
        let t = parse_url("ws://127.0.0.1:8080/ws", None).unwrap();
        assert_eq!(t.addr, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(t.path, "/ws");
        assert!(parse_url("ws://10.0.0.1:80/", None).is_err());
        assert!(parse_url("ws://example.com:80/", None).is_err());
        assert!(t.tls.is_none());
    }

    #[test]
    fn wss_urls_need_a_ca_and_check_the_address_they_name() {
        let err = parse_url("wss://127.0.0.1:8443/ws", None).err().unwrap();
        assert!(format!("{err:#}").contains("needs --ca"), "{err:#}");
        let dir = std::env::temp_dir().join(format!("wsgate-bench-urls-{}", std::process::id()));
        crate::tls::write_certs(&dir).unwrap();
        let t = parse_url("wss://127.0.0.1:8443/ws", Some(&dir.join("ca.crt"))).unwrap();
        let (_, name) = t.tls.as_ref().unwrap();
        assert_eq!(name.to_str(), "127.0.0.1");
        let t = parse_url("wss://localhost:8443/", Some(&dir.join("ca.crt"))).unwrap();
        assert_eq!(t.tls.as_ref().unwrap().1.to_str(), "localhost");
        assert!(parse_url("wss://127.0.0.1:8443/", Some(&dir.join("missing.crt"))).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
