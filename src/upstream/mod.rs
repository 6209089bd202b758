//! A route's upstreams: which one a new connection goes to (balancing), whether each is fit to
//! receive it (active health checks and passive ejection), and how to reach it (TCP or TLS).
//! Existing connections are never moved: a lease pins one to its upstream until it ends.

pub mod connect;
pub mod handshake;
pub mod health;

/// Everything a route needs to reach its upstreams, built once per config snapshot.
pub struct RouteUpstreams {
    pub set: UpstreamSet,
    /// TLS client settings for WebSocket legs (ALPN http/1.1); `None` when no upstream is https.
    pub ws_tls: Option<Arc<rustls::ClientConfig>>,
    /// The pooled HTTP client for ordinary requests.
    pub http: crate::proxy::http::HttpClient,
}

impl RouteUpstreams {
    pub fn new(route: &Route) -> Result<Self, crate::error::Error> {
        let ws_tls = if route.upstreams.iter().any(|u| u.tls) {
            Some(connect::client_config(route, &[b"http/1.1"])?)
        } else {
            None
        };
        Ok(Self {
            set: UpstreamSet::new(route),
            ws_tls,
            http: crate::proxy::http::HttpClient::new(route)?,
        })
    }
}

use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::config::{Balance, Route, Upstream};
use crate::error::UpstreamError;

/// Consecutive connection failures that eject an upstream when the route has no active check
/// (with one, its `unhealthy_after` is used).
const PASSIVE_FAILURES: u32 = 3;
/// How long a passively ejected upstream sits out when no active check will bring it back.
const PASSIVE_COOLDOWN: Duration = Duration::from_secs(10);

/// The cookie that pins a client to an upstream for `balance: cookie` (socket.io polling).
pub const STICKY_COOKIE: &str = "wsgate_upstream";

pub struct Target {
    pub upstream: Upstream,
    /// Stable across reloads and across instances with the same config, so a sticky cookie set
    /// by one gateway instance is honoured by every other.
    pub id: String,
    active: AtomicUsize,
    healthy: AtomicBool,
    failures: AtomicU32,
    /// Milliseconds since `epoch()` until which a passive ejection holds; 0 when not ejected.
    ejected_until: AtomicU64,
}

impl Target {
    fn new(upstream: Upstream) -> Self {
        // SHA-1 rather than std's hasher, whose algorithm may change between Rust releases: a
        // rolling update that mixes two builds must still honour the cookies the other set.
        use sha1::Digest;
        let digest = sha1::Sha1::digest(upstream.url.as_bytes());
        let id = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Self {
            id,
            upstream,
            active: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
        }
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Set by the active health checker.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
        if healthy {
            self.failures.store(0, Ordering::Relaxed);
            self.ejected_until.store(0, Ordering::Relaxed);
        }
    }

    /// A check's verdict lapses when its route is no longer checked: nothing would ever
    /// reverse it. A passive ejection stands; its cooldown ends it.
    pub fn unchecked(&self) {
        self.healthy.store(true, Ordering::Relaxed);
    }

    /// Whether new connections may go to it now: healthy and not passively ejected. What the
    /// admin side reports, since an ejected upstream takes no traffic whatever its flag says.
    pub fn in_service(&self) -> bool {
        self.available(now_ms())
    }

    fn available(&self, now_ms: u64) -> bool {
        if !self.is_healthy() {
            return false;
        }
        let until = self.ejected_until.load(Ordering::Relaxed);
        until == 0 || now_ms >= until
    }
}

pub struct UpstreamSet {
    pub targets: Vec<Arc<Target>>,
    balance: Balance,
    next: AtomicUsize,
    /// Whether an active health checker owns the `healthy` flags.
    actively_checked: bool,
    failures_to_eject: u32,
}

impl UpstreamSet {
    pub fn new(route: &Route) -> Self {
        Self {
            targets: route
                .upstreams
                .iter()
                .cloned()
                .map(|u| Arc::new(Target::new(u)))
                .collect(),
            balance: route.balance,
            next: AtomicUsize::new(0),
            actively_checked: route.health_check.is_some(),
            failures_to_eject: route
                .health_check
                .as_ref()
                .map_or(PASSIVE_FAILURES, |h| h.unhealthy_after.max(1)),
        }
    }

    /// The `Set-Cookie` that pins a client to `lease`'s upstream: on any answer (a proxied
    /// response or a WebSocket's 101) when the route balances by cookie and the client's cookie
    /// (`sticky`) does not already name that upstream.
    pub fn set_cookie(&self, lease: &Lease, sticky: Option<&str>) -> Option<http::HeaderValue> {
        let id = lease.target.id.as_str();
        (self.balance == Balance::Cookie && sticky != Some(id)).then(|| {
            // Target ids are hex digests, always a valid header value.
            http::HeaderValue::from_str(&format!(
                "{STICKY_COOKIE}={id}; Path=/; HttpOnly; SameSite=Lax"
            ))
            .expect("hex id is a valid header value")
        })
    }

    /// Chooses the upstream for a new connection or request. `sticky` is the value of the
    /// client's `wsgate_upstream` cookie, if any.
    pub fn pick(&self, client: IpAddr, sticky: Option<&str>) -> Result<Lease, UpstreamError> {
        let now = now_ms();
        let n = self.targets.len();
        let available = |i: &usize| self.targets[*i].available(now);
        let chosen = match self.balance {
            Balance::RoundRobin => self.round_robin(now),
            Balance::LeastConnections => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| (start + k) % n)
                    .filter(available)
                    .min_by_key(|&i| self.targets[i].active())
            }
            Balance::IpHash => {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                client.hash(&mut h);
                let start = h.finish() as usize % n.max(1);
                (0..n).map(|k| (start + k) % n).find(available)
            }
            Balance::Cookie => sticky
                .and_then(|id| self.targets.iter().position(|t| t.id == id))
                .filter(available)
                .or_else(|| self.round_robin(now)),
        };
        let index = chosen.ok_or(UpstreamError::NoneHealthy)?;
        let target = self.targets[index].clone();
        target.active.fetch_add(1, Ordering::Relaxed);
        Ok(Lease {
            target,
            failures_to_eject: self.failures_to_eject,
            actively_checked: self.actively_checked,
        })
    }

    fn round_robin(&self, now: u64) -> Option<usize> {
        let n = self.targets.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| self.targets[i].available(now))
    }
}

/// One connection's claim on an upstream; counts towards least_connections until dropped.
pub struct Lease {
    pub target: Arc<Target>,
    failures_to_eject: u32,
    actively_checked: bool,
}

impl Lease {
    pub fn upstream(&self) -> &Upstream {
        &self.target.upstream
    }

    /// A connection to the upstream failed: after enough in a row it gets no new connections
    /// (passive ejection) until the health check, or the cooldown, brings it back.
    pub fn report_failure(&self) {
        let failures = self.target.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= self.failures_to_eject {
            if self.actively_checked {
                self.target.healthy.store(false, Ordering::Relaxed);
            } else {
                let until = now_ms() + PASSIVE_COOLDOWN.as_millis() as u64;
                self.target.ejected_until.store(until, Ordering::Relaxed);
            }
        }
    }

    pub fn report_success(&self) {
        if self.target.failures.load(Ordering::Relaxed) != 0 {
            self.target.failures.store(0, Ordering::Relaxed);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.target.active.fetch_sub(1, Ordering::Relaxed);
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    // +1 so that 0 keeps meaning "not ejected".
    epoch().elapsed().as_millis() as u64 + 1
}

/// Reads the sticky cookie from a request's Cookie headers.
pub fn sticky_cookie(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == STICKY_COOKIE)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WsOptions;

    fn route(balance: Balance, n: usize) -> Route {
        Route {
            path: "/".into(),
            host: None,
            websocket: crate::config::WsMode::Relay,
            upstreams: (0..n)
                .map(|i| Upstream {
                    url: format!("http://127.0.0.1:{}", 7000 + i),
                    tls: false,
                    host: "127.0.0.1".into(),
                    port: 7000 + i as u16,
                    base_path: String::new(),
                })
                .collect(),
            balance,
            health_check: None,
            subprotocols: vec![],
            upstream_timeout: Duration::from_secs(1),
            response_idle_timeout: None,
            ca: None,
            ws: WsOptions::default(),
            line: 1,
        }
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn round_robin_skips_unhealthy() {
        let set = UpstreamSet::new(&route(Balance::RoundRobin, 3));
        let ports: Vec<u16> = (0..3)
            .map(|_| set.pick(IP, None).unwrap().upstream().port)
            .collect();
        assert_eq!(ports, [7000, 7001, 7002]);
        set.targets[1].set_healthy(false);
        let ports: Vec<u16> = (0..4)
            .map(|_| set.pick(IP, None).unwrap().upstream().port)
            .collect();
        assert!(!ports.contains(&7001));
        for t in &set.targets {
            t.set_healthy(false);
        }
        assert!(matches!(
            set.pick(IP, None),
            Err(UpstreamError::NoneHealthy)
        ));
    }

    #[test]
    fn least_connections_counts_leases() {
        let set = UpstreamSet::new(&route(Balance::LeastConnections, 2));
        let a = set.pick(IP, None).unwrap();
        let b = set.pick(IP, None).unwrap();
        assert_ne!(a.upstream().port, b.upstream().port);
        drop(a);
        let c = set.pick(IP, None).unwrap();
        assert_ne!(c.upstream().port, b.upstream().port);
        assert_eq!(set.targets.iter().map(|t| t.active()).sum::<usize>(), 2);
    }

    #[test]
    fn ip_hash_and_cookie_are_sticky() {
        let set = UpstreamSet::new(&route(Balance::IpHash, 4));
        let first = set.pick(IP, None).unwrap().upstream().port;
        assert!((0..10).all(|_| set.pick(IP, None).unwrap().upstream().port == first));
        let set = UpstreamSet::new(&route(Balance::Cookie, 3));
        let id = set.targets[2].id.clone();
        assert!((0..5).all(|_| set.pick(IP, Some(&id)).unwrap().upstream().port == 7002));
    }

    #[test]
    fn passive_ejection_after_failures() {
        let set = UpstreamSet::new(&route(Balance::RoundRobin, 2));
        for _ in 0..PASSIVE_FAILURES {
            let lease = set.pick(IP, Some("")).unwrap();
            if lease.upstream().port == 7000 {
                lease.report_failure();
            }
            let other = set.pick(IP, None).unwrap();
            if other.upstream().port == 7000 {
                other.report_failure();
            }
        }
        assert!((0..4).all(|_| set.pick(IP, None).unwrap().upstream().port == 7001));
    }

    #[test]
    fn sticky_cookie_is_found_among_others() {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::COOKIE,
            "a=1; wsgate_upstream=abc; io=x".parse().unwrap(),
        );
        assert_eq!(sticky_cookie(&h), Some("abc"));
    }
}
