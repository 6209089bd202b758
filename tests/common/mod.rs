//! Test harness: starts the real gateway on 127.0.0.1:0 from a YAML string, and gives clients
//! that share no code with it (tokio-tungstenite, rustls client, raw bytes).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use tokio_tungstenite::tungstenite;

/// Long enough for a loaded CI machine, short enough that a hang fails the test.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct Gateway {
    pub addrs: Vec<SocketAddr>,
    /// The admin listener, when the config has `admin:`.
    pub admin: Option<SocketAddr>,
    pub reloader: wsgate::server::Reloader,
    pub state: Arc<wsgate::server::State>,
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
        let admin = server.admin_addr();
        let reloader = server.reloader();
        let state = server.state();
        let shutdown = server.shutdown_handle();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        Gateway {
            addrs,
            admin,
            reloader,
            state,
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
    expect_close_frame(ws).await.0
}

/// [`expect_close`], with the reason.
pub async fn expect_close_frame(ws: &mut Ws) -> (u16, String) {
    loop {
        match next_msg(ws).await {
            Some(Ok(tungstenite::Message::Close(Some(frame)))) => {
                return (frame.code.into(), frame.reason.to_string())
            }
            Some(Ok(tungstenite::Message::Close(None))) => panic!("Close without a code"),
            Some(Ok(_)) => continue,
            other => panic!("expected a Close frame, got {other:?}"),
        }
    }
}

/// [`raw_request`] from a task, so the test can play the app meanwhile.
pub fn spawn_request(
    addr: SocketAddr,
    req: impl AsRef<[u8]> + Send + 'static,
) -> tokio::task::JoinHandle<(TcpStream, String)> {
    tokio::spawn(async move { raw_request(addr, req.as_ref()).await })
}

/// Sends raw bytes and reads the HTTP response head (up to the blank line).
pub async fn raw_request(addr: SocketAddr, request: &[u8]) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let head = read_head(&mut s).await;
    (s, head)
}

pub async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> String {
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

/// A WebSocket upgrade to `path` with Host `host`: its status and head.
pub async fn upgrade_status(addr: SocketAddr, path: &str, host: &str) -> (u16, String) {
    let req = UPGRADE
        .replace("GET /ws ", &format!("GET {path} "))
        .replace("Host: localhost", &format!("Host: {host}"))
        + "\r\n";
    let (_s, head) = raw_request(addr, req.as_bytes()).await;
    (status_of(&head), head)
}

/// Sends `request` and expects it refused: `status`, `Connection: close`, then the end of the
/// connection, nothing pipelined behind it read. Returns the head.
pub async fn expect_refused(addr: SocketAddr, request: &[u8], status: u16) -> String {
    let (mut s, head) = raw_request(addr, request).await;
    assert_eq!(status_of(&head), status, "{head}");
    assert_eq!(
        head_header(&head, "connection").as_deref(),
        Some("close"),
        "{head}"
    );
    read_to_eof(&mut s).await;
    head
}

/// One HTTP/2 GET on a fresh connection (hyper's client, prior knowledge or after ALPN h2).
pub async fn h2_get<S>(io: S, uri: &str) -> http::Response<hyper::body::Incoming>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    h2_send(io, http::Request::get(uri).body(app_body("")).unwrap()).await
}

/// [`h2_get`] for any request.
pub async fn h2_send<S>(io: S, req: http::Request<AppBody>) -> http::Response<hyper::body::Incoming>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(io),
    )
    .await
    .expect("an HTTP/2 connection");
    tokio::spawn(conn);
    tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .expect("an HTTP/2 answer within the wait")
        .unwrap()
}

/// Reads exactly `n` bytes; fails if they do not come within `WAIT`.
pub async fn read_exactly<S: AsyncRead + Unpin>(s: &mut S, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(WAIT, s.read_exact(&mut buf))
        .await
        .expect("bytes within the wait")
        .unwrap();
    buf
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

/// Sends masked 16 KiB binary frames and never reads, until a write fails: returns once the
/// gateway has dropped the connection, which it must do to a peer that stopped reading (its
/// unread bytes make the drop a reset). Fails the test if that takes longer than the wait.
pub async fn flood_until_dropped(s: TcpStream) {
    let (_unread, mut w) = s.into_split();
    let f = frame(true, 2, MASK, &[7u8; 16 * 1024]);
    let dropped =
        tokio::time::timeout(WAIT, async { while w.write_all(&f).await.is_ok() {} }).await;
    assert!(
        dropped.is_ok(),
        "a peer that never reads was kept for {WAIT:?}"
    );
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

/// Sends one text message of `fragments` masked fragments of `size` bytes each, stopping
/// quietly once the gateway stops reading (it refused the message and closed).
pub async fn send_fragmented<W: AsyncWriteExt + Unpin>(wr: &mut W, fragments: usize, size: usize) {
    let chunk = vec![b'a'; size];
    for i in 0..fragments {
        let op = if i == 0 { 1 } else { 0 };
        if wr
            .write_all(&frame(i + 1 == fragments, op, MASK, &chunk))
            .await
            .is_err()
        {
            break;
        }
    }
}

/// Reads one server frame (unmasked) from a raw socket: (fin, opcode, payload).
pub async fn read_frame<S: AsyncRead + Unpin>(s: &mut S) -> (bool, u8, Vec<u8>) {
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

// ---------------------------------------------------------------------------------------------
// HTTP apps behind the gateway and an HTTP client (proxy and balancing tests). Paths are fully
// qualified so this block needs nothing from the imports above.
// ---------------------------------------------------------------------------------------------

/// The body type of test apps' responses and test clients' requests.
pub type AppBody =
    http_body_util::combinators::BoxBody<bytes::Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn app_body(data: impl Into<bytes::Bytes>) -> AppBody {
    use http_body_util::BodyExt;
    http_body_util::Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Serves `app` with hyper (HTTP/1.1 and h2, h2 over TLS by ALPN) on 127.0.0.1:0.
pub async fn spawn_http_app<F, Fut>(tls: Option<Arc<rustls::ServerConfig>>, app: F) -> SocketAddr
where
    F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = hyper::Response<AppBody>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let app = app.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let fut = app(req);
                    async move { Ok::<_, std::convert::Infallible>(fut.await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                );
                match acceptor {
                    None => {
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let _ = builder.serve_connection(io, service).await;
                    }
                    Some(acceptor) => {
                        let Ok(tls) = acceptor.accept(stream).await else {
                            return;
                        };
                        let io = hyper_util::rt::TokioIo::new(tls);
                        let _ = builder.serve_connection(io, service).await;
                    }
                }
            });
        }
    });
    addr
}

/// A TLS server configuration for a test app: a certificate from `pki` for `names`, ALPN h2
/// and http/1.1.
pub fn tls_server_config(pki: &TestPki, stem: &str, names: &[&str]) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    let (crt, key) = pki.issue(stem, names);
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(&crt)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// Writes the test CA as PEM (for a route's `ca:`) and returns its path.
pub fn ca_pem_file(pki: &TestPki) -> PathBuf {
    let path = pki.dir.path().join("ca.pem");
    std::fs::write(&path, pki.ca.pem()).unwrap();
    path
}

/// Sends one request on a new HTTP/1.1 connection; returns once the response head is in.
pub async fn http_send(
    addr: SocketAddr,
    req: hyper::Request<AppBody>,
) -> hyper::Response<hyper::body::Incoming> {
    tokio::time::timeout(WAIT, async {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        sender.send_request(req).await.unwrap()
    })
    .await
    .expect("response head within the wait")
}

/// GET `path` with extra `headers`; returns status, headers and the whole body as text.
pub async fn http_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (http::StatusCode, http::HeaderMap, String) {
    use http_body_util::BodyExt;
    let mut req = hyper::Request::get(path).header("host", "gateway.test");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = http_send(addr, req.body(app_body("")).unwrap()).await;
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(WAIT, body.collect())
        .await
        .expect("body within the wait")
        .unwrap()
        .to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// An address nothing listens on (bound, then closed), for "upstream down".
pub fn closed_port_addr() -> SocketAddr {
    // Bound and never listening: connections to it are refused, and, as the socket stays bound
    // for the rest of the process, no other test's listener can be handed the same port (a
    // port merely released could be, and then it would answer).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = socket.local_addr().unwrap();
    std::mem::forget(socket);
    addr
}

/// A `kB` field of /proc/self/status (VmRSS, VmHWM); None off Linux.
pub fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Polls `cond` every 10 ms until it holds; fails the test after `WAIT`. Only for state that
/// changes on a timer of its own (health checks), where there is no event to wait for.
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket apps behind the gateway (relay and passthrough tests): one written with
// tokio-tungstenite, one that hands raw sockets to the test, one that records request heads.
// ---------------------------------------------------------------------------------------------

/// What a test WebSocket app saw, in order.
#[derive(Debug)]
pub enum AppEvent {
    /// The upgrade request: target and headers.
    Upgrade(String, tungstenite::http::HeaderMap),
    /// A Close arrived: its code and reason, None for an empty Close.
    Closed(Option<(u16, String)>),
    /// The connection ended without a Close.
    Lost(String),
}

pub struct WsApp {
    pub addr: SocketAddr,
    /// TCP connections accepted so far.
    pub accepted: Arc<AtomicUsize>,
    pub events: tokio::sync::mpsc::UnboundedReceiver<AppEvent>,
}

impl WsApp {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn next_event(&mut self) -> AppEvent {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("app event within the wait")
            .expect("app still running")
    }

    /// The next upgrade the app saw: (target, headers).
    pub async fn next_upgrade(&mut self) -> (String, tungstenite::http::HeaderMap) {
        match self.next_event().await {
            AppEvent::Upgrade(target, headers) => (target, headers),
            other => panic!("expected an upgrade, got {other:?}"),
        }
    }

    /// How the app's next session ended, skipping upgrades: the Close it got, or why it lost
    /// the connection.
    pub async fn next_end(&mut self) -> Result<Option<(u16, String)>, String> {
        loop {
            match self.next_event().await {
                AppEvent::Upgrade(..) => continue,
                AppEvent::Closed(c) => return Ok(c),
                AppEvent::Lost(why) => return Err(why),
            }
        }
    }

    /// The code of the Close the app's next session got.
    pub async fn next_close_code(&mut self) -> u16 {
        match self.next_end().await {
            Ok(Some((code, _))) => code,
            other => panic!("expected the app to get a Close with a code, got {other:?}"),
        }
    }
}

/// A WebSocket echo app written with tokio-tungstenite, an implementation independent of the
/// gateway's. It selects `protocol` when the client offers it and obeys two text commands:
/// `close:<code>:<reason>` closes from its side, `drop` drops the TCP connection without a Close.
// The handshake callback's Err type is tungstenite's; this app never returns it.
#[allow(clippy::result_large_err)]
pub async fn spawn_ws_app(protocol: Option<&'static str>) -> WsApp {
    use futures_util::{SinkExt, StreamExt};
    use tungstenite::protocol::frame::CloseFrame;
    use tungstenite::Message;

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let (tx, events) = tokio::sync::mpsc::unbounded_channel();
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let tx = tx.clone();
            tokio::spawn(async move {
                let seen = tx.clone();
                let callback =
                    move |req: &tungstenite::handshake::server::Request,
                          mut resp: tungstenite::handshake::server::Response| {
                        let _ = seen.send(AppEvent::Upgrade(
                            req.uri().to_string(),
                            req.headers().clone(),
                        ));
                        let offered = req
                            .headers()
                            .get_all("sec-websocket-protocol")
                            .iter()
                            .filter_map(|v| v.to_str().ok())
                            .flat_map(|v| v.split(','))
                            .any(|p| Some(p.trim()) == protocol);
                        if let (true, Some(p)) = (offered, protocol) {
                            resp.headers_mut()
                                .insert("sec-websocket-protocol", p.parse().unwrap());
                        }
                        Ok(resp)
                    };
                let mut ws = match tokio_tungstenite::accept_hdr_async(stream, callback).await {
                    Ok(ws) => ws,
                    Err(e) => {
                        let _ = tx.send(AppEvent::Lost(e.to_string()));
                        return;
                    }
                };
                let mut ended = false;
                while let Some(msg) = ws.next().await {
                    match msg {
                        Ok(Message::Text(t)) if t.as_str() == "drop" => {
                            drop(ws);
                            let _ = tx.send(AppEvent::Lost("dropped on request".into()));
                            return;
                        }
                        Ok(Message::Text(t)) if t.as_str().starts_with("close:") => {
                            let mut parts = t.as_str().splitn(3, ':').skip(1);
                            let code: u16 = parts.next().unwrap().parse().unwrap();
                            let reason = parts.next().unwrap_or("").to_owned();
                            let frame = CloseFrame {
                                code: code.into(),
                                reason: reason.into(),
                            };
                            let _ = ws.close(Some(frame)).await;
                        }
                        Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                            if ws.send(m).await.is_err() {
                                break;
                            }
                        }
                        Ok(Message::Close(frame)) => {
                            ended = true;
                            let _ = tx.send(AppEvent::Closed(
                                frame.map(|f| (u16::from(f.code), f.reason.to_string())),
                            ));
                        }
                        Ok(_) => {}
                        Err(e) => {
                            if !ended {
                                ended = true;
                                let _ = tx.send(AppEvent::Lost(e.to_string()));
                            }
                            break;
                        }
                    }
                }
                if !ended {
                    let _ = tx.send(AppEvent::Lost("connection closed".into()));
                }
            });
        }
    });
    WsApp {
        addr,
        accepted,
        events,
    }
}

/// An app that hands each accepted TCP connection to the test, for byte-level behaviour.
pub struct RawApp {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    conns: tokio::sync::mpsc::UnboundedReceiver<TcpStream>,
}

impl RawApp {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn accept(&mut self) -> TcpStream {
        tokio::time::timeout(WAIT, self.conns.recv())
            .await
            .expect("gateway connection within the wait")
            .unwrap()
    }
}

pub async fn spawn_raw_app() -> RawApp {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let (tx, conns) = tokio::sync::mpsc::unbounded_channel();
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            if tx.send(stream).is_err() {
                break;
            }
        }
    });
    RawApp {
        addr,
        accepted,
        conns,
    }
}

/// A header's value in a raw HTTP head (first occurrence, name case-insensitive).
pub fn head_header(head: &str, name: &str) -> Option<String> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// Reads an upgrade request on a raw app connection and answers 101 with the right accept and
/// `extra` header lines (each ending in CRLF); returns the request head.
pub async fn answer_upgrade(s: &mut TcpStream, extra: &str) -> String {
    answer_upgrade_then(s, extra, &[]).await
}

/// [`answer_upgrade`], with `then` sent behind the 101 in the same write (over TLS, in the same
/// record).
pub async fn answer_upgrade_then<S>(s: &mut S, extra: &str, then: &[u8]) -> String
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let head = read_head(s).await;
    let key = head_header(&head, "sec-websocket-key").expect("upgrade carries a key");
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n{extra}\r\n"
    )
    .into_bytes();
    resp.extend_from_slice(then);
    s.write_all(&resp).await.unwrap();
    head
}

/// Opens a WebSocket through the gateway (relay or passthrough) between a raw client and a raw
/// app: (client, app) sockets.
pub async fn raw_pair(gw: &Gateway, app: &mut RawApp) -> (TcpStream, TcpStream) {
    let client = spawn_request(gw.addr(), format!("{UPGRADE}\r\n"));
    let mut up = app.accept().await;
    answer_upgrade(&mut up, "").await;
    let (c, head) = client.await.unwrap();
    assert_eq!(status_of(&head), 101, "{head}");
    (c, up)
}

/// Reads one frame as an app sees it: (fin, opcode, masked, payload with the mask removed).
pub async fn read_app_frame(s: &mut TcpStream) -> (bool, u8, bool, Vec<u8>) {
    tokio::time::timeout(WAIT, async {
        let mut h = [0u8; 2];
        s.read_exact(&mut h).await.unwrap();
        let len = match h[1] & 0x7f {
            126 => s.read_u16().await.unwrap() as usize,
            127 => s.read_u64().await.unwrap() as usize,
            n => n as usize,
        };
        let masked = h[1] & 0x80 != 0;
        let mut key = [0u8; 4];
        if masked {
            s.read_exact(&mut key).await.unwrap();
        }
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await.unwrap();
        if masked {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= key[i % 4];
            }
        }
        (h[0] & 0x80 != 0, h[0] & 0x0f, masked, payload)
    })
    .await
    .expect("frame within the wait")
}

/// An HTTP app that records every request head it reads (in order, before answering) and
/// answers WebSocket upgrades with a valid 101 and anything else with `200 ok`.
pub struct RecordingApp {
    pub addr: SocketAddr,
    pub heads: Arc<std::sync::Mutex<Vec<String>>>,
}

pub async fn spawn_recording_app() -> RecordingApp {
    spawn_scripted_app(|head| {
        if head_header(head, "sec-websocket-key").is_some() {
            Scripted::Upgrade
        } else {
            Scripted::Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        }
    })
    .await
}

/// What a scripted app does with a request head it has read.
pub enum Scripted {
    /// These bytes, raw: answers hyper's own server would never give. Then the next request.
    Answer(&'static [u8]),
    /// A valid 101 for its key, then reads until the client is gone.
    Upgrade,
    /// Closes the connection unanswered.
    HangUp,
}

/// An app answering each request head on a connection as `script` says, recording the heads in
/// the order it read them.
pub async fn spawn_scripted_app(script: fn(&str) -> Scripted) -> RecordingApp {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                loop {
                    let mut buf = Vec::new();
                    let mut byte = [0u8; 1];
                    while !buf.ends_with(b"\r\n\r\n") {
                        match s.read(&mut byte).await {
                            Ok(1) => buf.push(byte[0]),
                            _ => return,
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).into_owned();
                    seen.lock().unwrap().push(head.clone());
                    match script(&head) {
                        Scripted::Answer(bytes) => {
                            if s.write_all(bytes).await.is_err() {
                                return;
                            }
                        }
                        Scripted::Upgrade => {
                            let key = head_header(&head, "sec-websocket-key").unwrap_or_default();
                            let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
                            let resp = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n");
                            let _ = s.write_all(resp.as_bytes()).await;
                            let mut sink = [0u8; 1024];
                            while let Ok(n) = s.read(&mut sink).await {
                                if n == 0 {
                                    break;
                                }
                            }
                            return;
                        }
                        Scripted::HangUp => return,
                    }
                }
            });
        }
    });
    RecordingApp { addr, heads }
}
