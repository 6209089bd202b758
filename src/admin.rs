//! The admin listener: `/metrics` for Prometheus, `/status` as JSON, and a small HTML page with
//! live counts. It is separate from the public listeners so it can stay on loopback or a private
//! interface, and it keeps answering while the public side drains.

use std::convert::Infallible;
use std::fmt::Write;
use std::sync::Arc;
use std::time::Instant;

use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::error::Error;
use crate::metrics::json_string;
use crate::server::State;
use crate::service::{full, text, Body};
use crate::shutdown::Shutdown;

/// `source` is the config file's name, for the message when the address cannot be bound.
pub async fn bind(cfg: &crate::config::Admin, source: &str) -> Result<TcpListener, Error> {
    TcpListener::bind(cfg.address)
        .await
        .map_err(|reason| Error::Bind {
            file: source.to_owned(),
            line: cfg.line,
            column: cfg.column,
            key: "admin.address".into(),
            addr: cfg.address,
            reason,
        })
}

/// Serves until `stop` (a reload that moves or removes the admin listener), else until the
/// process exits: the admin side outlives the drain on purpose. `started` is the process's
/// start, so a moved listener keeps reporting the same uptime.
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    shutdown: Shutdown,
    started: Instant,
    stop: CancellationToken,
) {
    let address = listener.local_addr().ok();
    if let Some(address) = address {
        info!(%address, "admin listening");
    }
    let mut failures = crate::listener::AcceptFailures::new(
        address.unwrap_or_else(|| std::net::SocketAddr::from(([0, 0, 0, 0], 0))),
    );
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                failures.failed(&e).await;
                continue;
            }
        };
        failures.succeeded();
        let state = state.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let resp = answer(&req, &state, &shutdown, started);
                async move { Ok::<_, Infallible>(resp) }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new());
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), svc).await {
                debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
    if let Some(address) = address {
        info!(%address, "admin listener removed");
    }
}

fn answer(
    req: &Request<Incoming>,
    state: &State,
    shutdown: &Shutdown,
    started: Instant,
) -> Response<Body> {
    let known = matches!(req.uri().path(), "/metrics" | "/status" | "/");
    if known && !matches!(*req.method(), Method::GET | Method::HEAD) {
        // Everything here is read-only: a POST that seemed to do something would mislead.
        let mut resp = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "admin pages take GET or HEAD",
        );
        resp.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match req.uri().path() {
        "/metrics" => {
            let snapshot = state.current();
            let upstreams = snapshot
                .config
                .routes
                .iter()
                .enumerate()
                .filter_map(|(index, route)| Some((route.name(), snapshot.upstreams(index)?)))
                .flat_map(|(name, ups)| {
                    ups.set
                        .targets
                        .iter()
                        .map(move |t| (name.to_string(), t.upstream.url.clone(), t.in_service()))
                });
            Response::builder()
                .header(
                    header::CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )
                .body(full(state.metrics.render(upstreams)))
                .expect("static response")
        }
        "/status" => Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CACHE_CONTROL, "no-cache")
            .body(full(status_json(state, shutdown, started)))
            .expect("static response"),
        "/" => Response::builder()
            .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
            .body(full(STATUS_PAGE))
            .expect("static response"),
        _ => text(
            StatusCode::NOT_FOUND,
            "admin serves /, /status and /metrics",
        ),
    }
}

fn status_json(state: &State, shutdown: &Shutdown, started: Instant) -> String {
    let snapshot = state.current();
    let mut out = String::new();
    let _ = write!(
        out,
        "{{\"version\":{},\"generation\":{},\"draining\":{},\"uptime_seconds\":{},\"sessions\":[",
        json_string(env!("CARGO_PKG_VERSION")),
        state.generation(),
        shutdown.is_draining(),
        started.elapsed().as_secs()
    );
    for (i, (route, mode, open)) in state.metrics.open_sessions().iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        let _ = write!(
            out,
            "{sep}{{\"route\":{},\"mode\":{},\"open\":{open}}}",
            json_string(route),
            json_string(mode)
        );
    }
    out.push_str("],\"upstreams\":[");
    let mut first = true;
    for (index, route) in snapshot.config.routes.iter().enumerate() {
        let Some(ups) = snapshot.upstreams(index) else {
            continue;
        };
        for t in &ups.set.targets {
            let sep = if first { "" } else { "," };
            first = false;
            let _ = write!(
                out,
                "{sep}{{\"route\":{},\"url\":{},\"healthy\":{},\"active\":{}}}",
                json_string(&route.name()),
                json_string(&t.upstream.url),
                t.in_service(),
                t.active()
            );
        }
    }
    out.push_str("]}");
    out
}

const STATUS_PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>wsgate status</title>
<style>body{font:14px system-ui,sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}th{background:#f3f3f3}.bad{color:#b00}</style>
</head><body>
<h1>wsgate status</h1>
<p id="summary">loading…</p>
<h2>Open WebSocket sessions</h2><table id="sessions"><tr><th>Route</th><th>Mode</th><th>Open</th></tr></table>
<h2>Upstreams</h2><table id="upstreams"><tr><th>Route</th><th>URL</th><th>Healthy</th><th>Active</th></tr></table>
<p><a href="/metrics">/metrics</a> · <a href="/status">/status</a> (JSON)</p>
<script>
function row(table, cells, bad) {
  const tr = document.createElement("tr");
  if (bad) tr.className = "bad";
  for (const c of cells) { const td = document.createElement("td"); td.textContent = String(c); tr.appendChild(td); }
  table.appendChild(tr);
}
function clear(table) { while (table.rows.length > 1) table.deleteRow(1); }
async function refresh() {
  try {
    const s = await (await fetch("/status", {cache: "no-store"})).json();
    document.getElementById("summary").textContent =
      `version ${s.version} · config generation ${s.generation} · up ${s.uptime_seconds}s` + (s.draining ? " · DRAINING" : "");
    const st = document.getElementById("sessions"); clear(st);
    for (const x of s.sessions) row(st, [x.route, x.mode, x.open]);
    const ut = document.getElementById("upstreams"); clear(ut);
    for (const u of s.upstreams) row(ut, [u.route, u.url, u.healthy ? "yes" : "no", u.active], !u.healthy);
  } catch (e) { document.getElementById("summary").textContent = "status unavailable: " + e; }
}
refresh(); setInterval(refresh, 2000);
</script></body></html>
"#;
