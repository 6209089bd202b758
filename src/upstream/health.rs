//! Active health checks: one task per upstream of every route with `health_check`, probing
//! `base_path + path` on a fresh connection each time, so a probe sees what a new request would
//! (a pooled connection could look fine while the app no longer accepts new ones).

use std::sync::Arc;

use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::config::{HealthCheck, Upstream};
use crate::server::Snapshot;
use crate::upstream::{connect, Target};

/// Starts the checkers of every route in `snapshot`. They run until `stop` is cancelled; a
/// reload should cancel the old snapshot's token and start the new snapshot's checkers, since
/// targets (and their health flags) belong to one snapshot.
pub fn spawn_health_checks(
    snapshot: &Arc<Snapshot>,
    stop: CancellationToken,
    tracker: &TaskTracker,
) {
    for (index, route) in snapshot.config.routes.iter().enumerate() {
        let (Some(check), Some(upstreams)) = (&route.health_check, snapshot.upstreams(index))
        else {
            continue;
        };
        for target in &upstreams.set.targets {
            let checker = Checker {
                target: target.clone(),
                check: check.clone(),
                tls: upstreams.ws_tls.clone(),
            };
            let span = info_span!("health", route = %route.name(), upstream = %target.upstream.url);
            tracker.spawn(checker.run(stop.clone()).instrument(span));
        }
    }
}

struct Checker {
    target: Arc<Target>,
    check: HealthCheck,
    /// HTTP/1.1-only TLS settings (the WebSocket legs' ones): a probe is one plain request.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Checker {
    async fn run(self, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(self.check.interval);
        // After a stall, probe once and carry on; a burst of catch-up probes tells nothing new.
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut failures = 0u32;
        let mut successes = 0u32;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let outcome = tokio::select! {
                _ = stop.cancelled() => return,
                r = tokio::time::timeout(self.check.timeout, self.probe()) => {
                    r.unwrap_or_else(|_| Err("timed out".to_string()))
                }
            };
            // The flag is read back each time because passive ejection may have cleared it.
            match outcome {
                // No socket could be opened: no verdict on the upstream either way.
                Ok(None) => debug!("health probe not sent: out of local resources"),
                Ok(Some(status)) => {
                    failures = 0;
                    successes = successes.saturating_add(1);
                    if !self.target.is_healthy() && successes >= self.check.healthy_after {
                        self.target.set_healthy(true);
                        info!(
                            status = status.as_u16(),
                            successes, "upstream is healthy again"
                        );
                    }
                }
                Err(error) => {
                    successes = 0;
                    failures = failures.saturating_add(1);
                    debug!(%error, failures, "health probe failed");
                    if self.target.is_healthy() && failures >= self.check.unhealthy_after {
                        self.target.set_healthy(false);
                        warn!(%error, failures, "upstream is unhealthy; no new traffic until it recovers");
                    }
                }
            }
        }
    }

    /// One GET; a 2xx or 3xx is healthy (a redirect means the app is up and routing). `None`
    /// when wsgate itself had no file descriptor for the probe (see [`crate::error::UpstreamError::is_local`]).
    async fn probe(&self) -> Result<Option<StatusCode>, String> {
        let upstream = &self.target.upstream;
        let stream = match connect::connect(upstream, self.tls.as_ref(), self.check.timeout).await {
            Ok(stream) => stream,
            Err(e) if e.is_local() => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        let req = Request::get(format!("{}{}", upstream.base_path, self.check.path))
            .header(header::HOST, authority(upstream))
            .header(header::USER_AGENT, "wsgate-health-check")
            .header(header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        // The connection is driven here rather than in a spawned task, so a probe cut off by
        // its timeout leaves nothing behind.
        let send = sender.send_request(req);
        tokio::pin!(send, conn);
        let result = tokio::select! {
            r = &mut send => r,
            // The connection can finish in the same poll that hands over the response; the
            // request future then holds the response or the reason there is none.
            _ = &mut conn => send.await,
        };
        let status = result.map_err(|e| e.to_string())?.status();
        if status.is_success() || status.is_redirection() {
            Ok(Some(status))
        } else {
            Err(format!("status {status}"))
        }
    }
}

fn authority(upstream: &Upstream) -> String {
    let default_port = if upstream.tls { 443 } else { 80 };
    let host = if upstream.host.contains(':') {
        format!("[{}]", upstream.host)
    } else {
        upstream.host.clone()
    };
    if upstream.port == default_port {
        host
    } else {
        format!("{host}:{}", upstream.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_brackets_ipv6_and_omits_default_ports() {
        let u = |host: &str, port, tls| Upstream {
            url: String::new(),
            tls,
            host: host.into(),
            port,
            base_path: String::new(),
        };
        assert_eq!(authority(&u("::1", 8080, false)), "[::1]:8080");
        assert_eq!(authority(&u("app", 443, true)), "app");
        assert_eq!(authority(&u("app", 80, true)), "app:80");
    }
}
