//! Prometheus metrics for operators: what is open, what was refused and why, what went through,
//! and how sessions ended. Counters are per server (not process-global) so several gateways in
//! one process, as in the tests, do not mix their figures. Message and byte counts are added
//! when a session ends, so the per-message path touches no shared cache line.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::ws::session::{ClosedBy, SessionEnd};

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
pub struct RouteMode {
    pub route: String,
    pub mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Upgrade {
    route: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Flow {
    route: String,
    mode: String,
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Close {
    route: String,
    code: String,
    side: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    route: String,
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: String,
    status: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    open: Family<RouteMode, Gauge>,
    /// The gauges of `open` again, which the family cannot list, for `/status`: reading them
    /// back from the exposition would hand it label values escaped for Prometheus.
    open_by_route: RwLock<BTreeMap<RouteMode, Gauge>>,
    upgrades: Family<Upgrade, Counter>,
    messages: Family<Flow, Counter>,
    bytes: Family<Flow, Counter>,
    closes: Family<Close, Counter>,
    session_seconds: HistogramFamily<RouteMode>,
    handshake_seconds: HistogramFamily<RouteMode>,
    upstream_up: Family<UpstreamLabels, Gauge>,
    http_requests: Family<HttpLabels, Counter>,
    generation: Gauge,
    reloads: Family<Outcome, Counter>,
    /// Held from refilling `upstream_up` to encoding it, so two scrapes at once cannot show
    /// each other's half-filled family.
    scrape: Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("wsgate");
        let open = Family::<RouteMode, Gauge>::default();
        let upgrades = Family::<Upgrade, Counter>::default();
        let messages = Family::<Flow, Counter>::default();
        let bytes = Family::<Flow, Counter>::default();
        let closes = Family::<Close, Counter>::default();
        let session_seconds: HistogramFamily<RouteMode> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.1, 4.0, 10)));
        let handshake_seconds: HistogramFamily<RouteMode> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 3.0, 12)));
        let upstream_up = Family::<UpstreamLabels, Gauge>::default();
        let http_requests = Family::<HttpLabels, Counter>::default();
        let generation = Gauge::default();
        let reloads = Family::<Outcome, Counter>::default();
        registry.register("websockets_open", "Open WebSocket sessions", open.clone());
        registry.register(
            "upgrades",
            "WebSocket upgrade requests by outcome (accepted, origin, handshake, limits, upstream, draining, rejected)",
            upgrades.clone(),
        );
        registry.register(
            "messages",
            "WebSocket messages by direction, counted when sessions end",
            messages.clone(),
        );
        registry.register(
            "bytes",
            "WebSocket payload bytes by direction, counted when sessions end",
            bytes.clone(),
        );
        registry.register(
            "closes",
            "Sessions ended, by close code and the side that closed",
            closes.clone(),
        );
        registry.register(
            "session_duration_seconds",
            "WebSocket session duration",
            session_seconds.clone(),
        );
        registry.register(
            "handshake_duration_seconds",
            "Time from upgrade request to 101 (relay and passthrough include the upstream)",
            handshake_seconds.clone(),
        );
        registry.register(
            "upstream_healthy",
            "1 when an upstream receives new connections",
            upstream_up.clone(),
        );
        registry.register(
            "http_requests",
            "Proxied HTTP requests by status",
            http_requests.clone(),
        );
        registry.register(
            "config_generation",
            "Generation of the config being served (1 at start)",
            generation.clone(),
        );
        registry.register(
            "config_reloads",
            "Config reloads by outcome (ok, failed)",
            reloads.clone(),
        );
        generation.set(1);
        Self {
            registry,
            open,
            open_by_route: RwLock::default(),
            upgrades,
            messages,
            bytes,
            closes,
            session_seconds,
            handshake_seconds,
            upstream_up,
            http_requests,
            generation,
            reloads,
            scrape: Mutex::default(),
        }
    }

    /// The Prometheus text exposition. `upstreams` is the health of every upstream of the
    /// current snapshot's routes, as (route name, upstream URL, in service): it replaces the
    /// previous scrape's, so an upstream that a reload removed, alone or with its route, is no
    /// longer exported, where a series left at 0 would keep an alert firing until a restart.
    /// The flags live on the snapshot's targets and are copied in here rather than making the
    /// health checkers know about metrics.
    pub fn render(&self, upstreams: impl IntoIterator<Item = (String, String, bool)>) -> String {
        let _scrape = self.scrape.lock().unwrap_or_else(PoisonError::into_inner);
        self.upstream_up.clear();
        for (route, upstream, healthy) in upstreams {
            self.upstream_up
                .get_or_create(&UpstreamLabels { route, upstream })
                .set(healthy as i64);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }

    pub fn upgrade(&self, route: &str, outcome: &str) {
        self.upgrades
            .get_or_create(&Upgrade {
                route: route.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    pub fn handshake(&self, route: &str, mode: &str, took: Duration) {
        self.handshake_seconds
            .get_or_create(&labels(route, mode))
            .observe(took.as_secs_f64());
    }

    /// Counts a session as open until the guard is dropped, whichever way the task ends.
    pub fn session_open(&self, route: &str, mode: &str) -> OpenGuard {
        let gauge = self.open_gauge(labels(route, mode));
        gauge.inc();
        OpenGuard { gauge }
    }

    fn open_gauge(&self, key: RouteMode) -> Gauge {
        let known = self
            .open_by_route
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(gauge) = known.get(&key) {
            return gauge.clone();
        }
        drop(known);
        // The family's gauge and the one kept here share their value.
        let gauge = self.open.get_or_create_owned(&key);
        self.open_by_route
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key)
            .or_insert(gauge)
            .clone()
    }

    pub fn session_ended(&self, route: &str, mode: &str, end: &SessionEnd, lasted: Duration) {
        let flow = |direction: &str| Flow {
            route: route.to_owned(),
            mode: mode.to_owned(),
            direction: direction.to_owned(),
        };
        self.messages
            .get_or_create(&flow("in"))
            .inc_by(end.messages_in);
        self.messages
            .get_or_create(&flow("out"))
            .inc_by(end.messages_out);
        self.bytes.get_or_create(&flow("in")).inc_by(end.bytes_in);
        self.bytes.get_or_create(&flow("out")).inc_by(end.bytes_out);
        let side = match end.closed_by {
            ClosedBy::Client => "client",
            ClosedBy::Gateway => "gateway",
            ClosedBy::Upstream => "upstream",
        };
        let code = end
            .code
            .map_or_else(|| "none".to_owned(), |c| c.to_string());
        self.closes
            .get_or_create(&Close {
                route: route.to_owned(),
                code,
                side: side.to_owned(),
            })
            .inc();
        self.session_seconds
            .get_or_create(&labels(route, mode))
            .observe(lasted.as_secs_f64());
    }

    pub fn http_request(&self, route: &str, status: u16) {
        self.http_requests
            .get_or_create(&HttpLabels {
                route: route.to_owned(),
                status: status.to_string(),
            })
            .inc();
    }

    pub fn reloaded(&self, ok: bool, generation: u64) {
        let outcome = if ok { "ok" } else { "failed" };
        self.reloads
            .get_or_create(&Outcome {
                outcome: outcome.into(),
            })
            .inc();
        if ok {
            self.generation.set(generation as i64);
        }
    }

    /// Open sessions per route and mode, by route, for the status page.
    pub fn open_sessions(&self) -> Vec<(String, String, i64)> {
        self.open_by_route
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(key, gauge)| (key.route.clone(), key.mode.clone(), gauge.get()))
            .collect()
    }
}

fn labels(route: &str, mode: &str) -> RouteMode {
    RouteMode {
        route: route.to_owned(),
        mode: mode.to_owned(),
    }
}

pub struct OpenGuard {
    gauge: Gauge,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Escapes a string for a JSON document (the status page writes its JSON by hand).
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_the_counted_values() {
        let m = Metrics::new();
        m.upgrade("/ws", "accepted");
        m.upgrade("/ws", "origin");
        let guard = m.session_open("/ws", "echo");
        let mut end = SessionEnd::new(ClosedBy::Client, Some(1000), "");
        end.messages_in = 3;
        end.bytes_in = 30;
        m.session_ended("/ws", "echo", &end, Duration::from_millis(5));
        let text = m.render([]);
        assert!(
            text.contains("wsgate_upgrades_total{route=\"/ws\",outcome=\"accepted\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("wsgate_messages_total{route=\"/ws\",mode=\"echo\",direction=\"in\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("wsgate_closes_total{route=\"/ws\",code=\"1000\",side=\"client\"} 1"),
            "{text}"
        );
        assert_eq!(m.open_sessions(), vec![("/ws".into(), "echo".into(), 1)]);
        drop(guard);
        assert_eq!(m.open_sessions(), vec![("/ws".into(), "echo".into(), 0)]);
        // Names as they are, not as the exposition escapes them.
        let _quoted = m.session_open("/a\"b\\c", "relay");
        assert_eq!(
            m.open_sessions(),
            vec![
                ("/a\"b\\c".into(), "relay".into(), 1),
                ("/ws".into(), "echo".into(), 0)
            ]
        );
        assert!(
            m.render([])
                .contains(r#"wsgate_websockets_open{route="/a\"b\\c",mode="relay"} 1"#),
            "{}",
            m.render([])
        );
        assert_eq!(json_string("a\"b\n"), "\"a\\\"b\\u000a\"");
    }
}
