//! The validated configuration snapshot.
//!
//! Everything here is plain data produced by [`load_file`] or [`load_str`]: once a `Config` exists it has passed every
//! check (paths exist, modes fit the global switches, sizes are sane), so the serving code never
//! re-validates. A reload builds a whole new `Config` and swaps it in, or keeps the old one.

mod units;
mod yaml;

pub use units::{format_duration, format_size, parse_duration, parse_size};
pub(crate) use yaml::one_line;
pub use yaml::{load_file, load_str, ConfigError};

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The configuration `cargo run` serves when no file is given: http://127.0.0.1:5000, the sample
/// page at `/`, echo at `/ws`, health at `/healthz`.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../config/default.yaml");

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where the file came from (`<embedded default>` for the built-in one); used in messages.
    pub source: String,
    pub listen: Vec<Listener>,
    pub health_path: String,
    /// `sample_page`: path the built-in echo test page is served at; absent: not served.
    pub sample_page: Option<String>,
    pub shutdown_grace: Duration,
    /// `drain_delay`: after SIGTERM, how long listeners keep accepting while health says 503, so
    /// load balancers notice before connections are refused. Counted within `shutdown_grace`.
    pub drain_delay: Duration,
    pub http: HttpOptions,
    /// The global WebSocket defaults, before per-route overrides.
    pub websockets: WsOptions,
    /// `websockets.enabled`: false turns every upgrade on an upstream route into raw passthrough.
    pub websockets_enabled: bool,
    pub routes: Vec<Route>,
    pub log: LogOptions,
    /// `on_route_change`: what a reload does to open WebSockets whose route was removed or changed.
    pub on_route_change: RouteChange,
    /// `close_spread`: 1001s for shutdown and route drains are spread over this window, so
    /// clients do not all reconnect at the same instant.
    pub close_spread: Duration,
    /// `max_connection_age`: WebSockets older than this (plus up to 10% jitter) are closed with
    /// 1001, so long-lived connections rebalance; zero keeps them forever.
    pub max_connection_age: Duration,
    pub limits: Limits,
    /// `trusted_proxies`: peers whose `X-Forwarded-For` is believed for the client address.
    pub trusted_proxies: Vec<Cidr>,
    /// `admin.address`: where `/metrics`, `/status` and the status page are served; absent: off.
    pub admin: Option<Admin>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admin {
    pub address: SocketAddr,
    /// 1-based line and column of `admin.address`: a port found taken only when it is bound is
    /// still reported where it was written, as a config error.
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub address: SocketAddr,
    pub tls: Option<TlsOptions>,
    /// `proxy_protocol`: every connection starts with a PROXY v1 or v2 header (AWS NLB, HAProxy)
    /// that names the real client; connections without a valid one are closed.
    pub proxy_protocol: bool,
    /// 1-based line and column of its `address` in the config file, for messages about it (a
    /// port found taken only when it is bound among them). Not part of its identity across
    /// reloads (see [`ListenerKey`]).
    pub line: usize,
    pub column: usize,
}

/// Identifies a listener across reloads: its configured address, and which of the listeners
/// with that same address it is (tests and tools list several `127.0.0.1:0` listeners).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenerKey {
    pub address: SocketAddr,
    pub nth: usize,
}

impl Config {
    /// The key of each entry of `listen`, in order.
    pub fn listener_keys(&self) -> Vec<ListenerKey> {
        self.listen
            .iter()
            .enumerate()
            .map(|(i, l)| ListenerKey {
                address: l.address,
                nth: self.listen[..i]
                    .iter()
                    .filter(|o| o.address == l.address)
                    .count(),
            })
            .collect()
    }
}

/// Admission limits for WebSocket sessions, so one client or a flood cannot take the gateway.
/// Zero means no limit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// `limits.max_connections`: open WebSocket sessions in all; beyond it 503.
    pub max_connections: usize,
    /// `limits.max_connections_per_ip`: open sessions per client address; beyond it 503.
    pub max_connections_per_ip: usize,
    /// `limits.connection_rate_per_ip`: new sessions per second per client address (the burst is
    /// one second's worth); beyond it 429.
    pub connection_rate_per_ip: u32,
    /// `limits.message_rate`: messages per second per session (burst: one second's worth);
    /// beyond it Close 1008.
    pub message_rate: u32,
}

/// An address range in CIDR form (`10.0.0.0/8`, `::1/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub network: std::net::IpAddr,
    pub prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TlsOptions {
    /// In file order; the first is served when SNI names none of them.
    pub certificates: Vec<CertificatePair>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CertificatePair {
    /// Resolved against the config file's directory; checked to exist at load time.
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Front-end protection against slow or silent clients and oversized requests.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpOptions {
    /// `http.header_read_timeout`: whole request head (and the first byte) must arrive within it.
    pub header_read_timeout: Duration,
    /// `http.tls_handshake_timeout`.
    pub tls_handshake_timeout: Duration,
    /// `http.max_header_size`: request head larger than this gets 431.
    pub max_header_size: usize,
    /// `http.keep_alive`: HTTP/1.1 persistent connections.
    pub keep_alive: bool,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            tls_handshake_timeout: Duration::from_secs(10),
            max_header_size: 16 * 1024,
            keep_alive: true,
        }
    }
}

/// The ASP.NET Core WebSocketOptions and what a gateway adds to them. Global under
/// `websockets:`, and every key may be repeated on a route to override it there.
#[derive(Debug, Clone, PartialEq)]
pub struct WsOptions {
    /// `keep_alive_interval` (ASP.NET Core KeepAliveInterval); zero disables pings.
    pub keep_alive_interval: Duration,
    /// `keep_alive_timeout`: no frame from the peer this long after a ping closes it; zero disables.
    pub keep_alive_timeout: Duration,
    /// `receive_buffer_size` (ASP.NET Core ReceiveBufferSize): the most read from the socket at once
    /// while waiting for a message; the rest of a larger frame goes straight into its own room.
    pub receive_buffer_size: usize,
    /// `max_message_size`: reassembled message limit; beyond it close 1009.
    pub max_message_size: usize,
    /// `allowed_origins`: empty allows every origin (the ASP.NET Core default).
    pub allowed_origins: Vec<OriginPattern>,
    /// `require_origin`: refuse upgrades that carry no Origin header.
    pub require_origin: bool,
    /// `close_timeout`: how long to wait for the peer's Close after sending ours.
    pub close_timeout: Duration,
}

impl Default for WsOptions {
    fn default() -> Self {
        Self {
            keep_alive_interval: Duration::from_secs(120),
            keep_alive_timeout: Duration::from_secs(30),
            receive_buffer_size: 4 * 1024,
            max_message_size: 1024 * 1024,
            allowed_origins: Vec::new(),
            require_origin: false,
            close_timeout: Duration::from_secs(5),
        }
    }
}

/// One entry of `allowed_origins`, already split so matching needs no parsing per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPattern {
    /// Lowercase scheme, e.g. `https`.
    pub scheme: String,
    /// Lowercase host. With `wildcard`, the parent domain (`example.com` for `*.example.com`).
    pub host: String,
    /// Explicit or scheme-default port (80 for http/ws, 443 for https/wss).
    pub port: u16,
    /// `*.example.com`: matches strict subdomains only, never `example.com` itself.
    pub wildcard: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsMode {
    /// wsgate answers the WebSocket itself.
    Echo,
    /// wsgate terminates the client's WebSocket and opens its own to an upstream.
    Relay,
    /// wsgate forwards the raw upgrade and tunnels bytes (the IIS `webSocket enabled="false"` switch).
    Passthrough,
    /// Upgrades on this route are refused (403 is not right: the route exists, WebSocket does not).
    Reject,
}

impl WsMode {
    pub fn as_str(self) -> &'static str {
        match self {
            WsMode::Echo => "echo",
            WsMode::Relay => "relay",
            WsMode::Passthrough => "passthrough",
            WsMode::Reject => "reject",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastConnections,
    IpHash,
    Cookie,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Path prefix; matched on segment boundaries (`/chat` matches `/chat` and `/chat/x`, not `/chatter`).
    pub path: String,
    /// Optional host match: exact (`example.com`) or `*.example.com`, lowercase, no port.
    pub host: Option<HostPattern>,
    pub websocket: WsMode,
    /// Empty for echo-only routes.
    pub upstreams: Vec<Upstream>,
    pub balance: Balance,
    pub health_check: Option<HealthCheck>,
    /// Echo picks the first one the client offers that is listed here.
    pub subprotocols: Vec<String>,
    /// `upstream_timeout`: connect + response head; beyond it 504.
    pub upstream_timeout: Duration,
    /// `response_idle_timeout`: the longest pause in an upstream's response body before the
    /// exchange is cut; `None` (`0`) waits forever, for event streams that pause longer.
    pub response_idle_timeout: Option<Duration>,
    /// `ca`: PEM bundle that https upstreams are verified against instead of the system roots.
    pub ca: Option<PathBuf>,
    /// The global `websockets:` options with this route's overrides applied.
    pub ws: WsOptions,
    /// 1-based line of the route in the config file, for messages about it.
    pub line: usize,
}

impl Route {
    /// What metrics, logs and `/status` call the route: its path, or for a route with a `host`
    /// the host and path (`a.example/app`, `*.example.com/app`). The path alone would make
    /// routes with one path on several hosts share their series, and one overwrite the other's
    /// upstream health; routes without a host keep the bare path dashboards already use. No
    /// route name without a host starts with anything but `/`, so the two forms never meet.
    pub fn name(&self) -> Cow<'_, str> {
        match &self.host {
            None => Cow::Borrowed(&self.path),
            Some(host) => Cow::Owned(format!("{host}{}", self.path)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    pub host: String,
    pub wildcard: bool,
}

/// As written in the config: `example.com` or `*.example.com`.
impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            f.write_str("*.")?;
        }
        f.write_str(&self.host)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// As written, for logs and metrics.
    pub url: String,
    /// `https`/`wss` upstreams are reached over TLS.
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix of the URL (usually empty); prepended to the request path.
    pub base_path: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_after: u32,
    pub healthy_after: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteChange {
    /// Open connections keep the route they were accepted under (the default).
    Keep,
    /// Open connections on a removed or changed route are closed with 1001.
    Drain,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogOptions {
    /// `log_level`: a tracing filter (`info`, `wsgate=debug`); `RUST_LOG` wins when set.
    pub level: String,
    /// `log_format`: text or json.
    pub format: LogFormat,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}
