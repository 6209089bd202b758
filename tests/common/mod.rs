//! Test harness: starts the real gateway on 127.0.0.1:0 from a YAML string, and gives clients
//! that share no code with it (tokio-tungstenite, rustls client, raw bytes).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use tokio_tungstenite::tungstenite;

/// Long enough for a loaded CI machine, short enough that a hang fails the test.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct Gateway {
    pub addrs: Vec<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<Result<(), wsgate::Error>>,
    pub shutdown: wsgate::shutdown::Shutdown,
}

impl Gateway {
    /// Starts the gateway on `yaml` (listener addresses should be 127.0.0.1:0).
    pub async fn start(yaml: &str) -> Gateway {
        Self::start_in(yaml, Path::new(".")).await
    }

    pub async fn start_in(yaml: &str, base: &Path) -> Gateway {
        let config =
            wsgate::config::load_str(yaml, "test.yaml", base).expect("test config is valid");
        let server = wsgate::Server::bind(config).await.expect("bind");
        let addrs = server.local_addrs();
        let shutdown = server.shutdown_handle();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        Gateway {
            addrs,
            stop: Some(tx),
            task,
            shutdown,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr(), path)
    }

    /// Starts the graceful shutdown, as SIGTERM would.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    pub async fn stop(mut self) {
        self.begin_shutdown();
        let r = tokio::time::timeout(WAIT, &mut self.task).await;
        assert!(r.is_ok(), "gateway did not stop within {WAIT:?}");
    }
}

/// A listener block for YAML.
pub fn plain_listener() -> &'static str {
    "  - address: 127.0.0.1:0\n"
}

/// A directory of its own under the system temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wsgate-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A test CA and certificates it signs, written as PEM files.
pub struct TestPki {
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
    pub ca_der: rustls::pki_types::CertificateDer<'static>,
    pub dir: TempDir,
}

impl TestPki {
    pub fn new() -> TestPki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "wsgate test CA");
        let ca = params.self_signed(&ca_key).unwrap();
        let ca_der = ca.der().clone();
        TestPki {
            ca,
            ca_key,
            ca_der,
            dir: TempDir::new("pki"),
        }
    }

    /// Writes `<stem>.crt` and `<stem>.key` for these names; returns their paths.
    pub fn issue(&self, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, stem);
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        let crt = self.dir.path().join(format!("{stem}.crt"));
        let keyf = self.dir.path().join(format!("{stem}.key"));
        std::fs::write(&crt, cert.pem()).unwrap();
        std::fs::write(&keyf, key.serialize_pem()).unwrap();
        (crt, keyf)
    }

    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(cfg)
    }
}

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// Connects with tokio-tungstenite (an independent implementation).
pub async fn connect(url: &str) -> Ws {
    let (ws, _resp) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect timed out")
        .expect("WebSocket connect");
    ws
}

/// Reads the next message, failing the test after `WAIT`.
pub async fn next_msg(ws: &mut Ws) -> Option<Result<tungstenite::Message, tungstenite::Error>> {
    use futures_util::StreamExt;
    tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("no message within the wait")
}

/// Reads until a Close frame arrives; returns its code (skipping pings and data).
pub async fn expect_close(ws: &mut Ws) -> u16 {
    loop {
        match next_msg(ws).await {
            Some(Ok(tungstenite::Message::Close(Some(frame)))) => return frame.code.into(),
            Some(Ok(tungstenite::Message::Close(None))) => panic!("Close without a code"),
            Some(Ok(_)) => continue,
            other => panic!("expected a Close frame, got {other:?}"),
        }
    }
}

/// Sends raw bytes and reads the HTTP response head (up to the blank line).
pub async fn raw_request(addr: SocketAddr, request: &[u8]) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let head = read_head(&mut s).await;
    (s, head)
}

pub async fn read_head(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    tokio::time::timeout(WAIT, async {
        while !buf.ends_with(b"\r\n\r\n") {
            let n = s.read(&mut byte).await.unwrap();
            assert!(
                n > 0,
                "connection closed mid-head: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.push(byte[0]);
        }
    })
    .await
    .expect("response head within the wait");
    String::from_utf8(buf).unwrap()
}

pub fn status_of(head: &str) -> u16 {
    head.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Reads until EOF, returning what came; fails if the peer holds the connection past `WAIT`.
pub async fn read_to_eof(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("connection closed within the wait");
    out
}

pub const UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n";

/// Opens a WebSocket with raw bytes and returns the socket after the 101, for frame-level tests.
pub async fn raw_ws(addr: SocketAddr, path: &str) -> TcpStream {
    let req = UPGRADE.replace("GET /ws ", &format!("GET {path} ")) + "\r\n";
    let (s, head) = raw_request(addr, req.as_bytes()).await;
    assert_eq!(status_of(&head), 101, "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    s
}

/// Encodes one frame; `mask` of None sends it unmasked (a protocol violation from a client).
pub fn frame(fin: bool, opcode: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(fin as u8) << 7 | opcode];
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n < 65536 => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

pub const MASK: Option<[u8; 4]> = Some([1, 2, 3, 4]);

/// Reads one server frame (unmasked) from a raw socket: (fin, opcode, payload).
pub async fn read_frame(s: &mut TcpStream) -> (bool, u8, Vec<u8>) {
    tokio::time::timeout(WAIT, async {
        let mut h = [0u8; 2];
        s.read_exact(&mut h).await.unwrap();
        assert_eq!(h[1] & 0x80, 0, "server frames must not be masked");
        let len = match h[1] & 0x7f {
            126 => s.read_u16().await.unwrap() as usize,
            127 => s.read_u64().await.unwrap() as usize,
            n => n as usize,
        };
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await.unwrap();
        (h[0] & 0x80 != 0, h[0] & 0x0f, payload)
    })
    .await
    .expect("frame within the wait")
}

/// Reads frames until a Close; returns its code.
pub async fn read_close_code(s: &mut TcpStream) -> u16 {
    loop {
        let (_, op, payload) = read_frame(s).await;
        if op == 8 {
            assert!(payload.len() >= 2, "Close without a code");
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}
