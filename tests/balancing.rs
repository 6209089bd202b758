//! Balancing across two apps, sticky cookies, passive ejection and active health checks, seen
//! through real HTTP requests to the gateway.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::sync::{mpsc, watch};

/// One app instance: answers with its name, holds `/slow` until released, and answers
/// `/health` as `healthy` says, counting the probes it answered each way.
struct App {
    name: &'static str,
    addr: SocketAddr,
    healthy: Arc<AtomicBool>,
    ok_probes: Arc<AtomicUsize>,
    failed_probes: Arc<AtomicUsize>,
}

impl App {
    /// `arrived` hears the app's name when a `/slow` request is in; `release` lets them answer.
    async fn start(
        name: &'static str,
        arrived: mpsc::UnboundedSender<&'static str>,
        release: watch::Receiver<bool>,
    ) -> App {
        let healthy = Arc::new(AtomicBool::new(true));
        let ok_probes = Arc::new(AtomicUsize::new(0));
        let failed_probes = Arc::new(AtomicUsize::new(0));
        let (h, ok, failed) = (healthy.clone(), ok_probes.clone(), failed_probes.clone());
        let addr = spawn_http_app(None, move |req: Request<Incoming>| {
            let (h, ok, failed) = (h.clone(), ok.clone(), failed.clone());
            let arrived = arrived.clone();
            let mut release = release.clone();
            async move {
                match req.uri().path() {
                    "/health" if h.load(Ordering::SeqCst) => {
                        ok.fetch_add(1, Ordering::SeqCst);
                        Response::new(app_body("ok"))
                    }
                    "/health" => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        Response::builder()
                            .status(StatusCode::SERVICE_UNAVAILABLE)
                            .body(app_body("down"))
                            .unwrap()
                    }
                    "/slow" => {
                        let _ = arrived.send(name);
                        let _ = release.wait_for(|r| *r).await;
                        Response::new(app_body(name))
                    }
                    _ => Response::new(app_body(name)),
                }
            }
        })
        .await;
        App {
            name,
            addr,
            healthy,
            ok_probes,
            failed_probes,
        }
    }
}

struct Pair {
    a: App,
    b: App,
    arrived: mpsc::UnboundedReceiver<&'static str>,
    release: watch::Sender<bool>,
}

async fn pair() -> Pair {
    let (tx, arrived) = mpsc::unbounded_channel();
    let (release, rx) = watch::channel(false);
    Pair {
        a: App::start("a", tx.clone(), rx.clone()).await,
        b: App::start("b", tx, rx).await,
        arrived,
        release,
    }
}

fn config(upstreams: &[SocketAddr], extra: &str) -> String {
    let mut yaml = format!("listen:\n{}routes:\n  - path: /\n", plain_listener());
    yaml.push_str("    upstreams:\n");
    for u in upstreams {
        yaml.push_str(&format!("      - http://{u}\n"));
    }
    yaml.push_str(extra);
    yaml
}

/// Which app answered `GET /`, and the sticky cookie the gateway set, if any.
async fn who(gw: &Gateway, cookie: Option<&str>) -> (String, Option<String>) {
    let headers: Vec<(&str, &str)> = cookie.map(|c| ("cookie", c)).into_iter().collect();
    let (status, h, body) = http_get(gw.addr(), "/", &headers).await;
    assert_eq!(status, 200, "{body}");
    let set = h.get("set-cookie").map(|v| v.to_str().unwrap().to_string());
    (body, set)
}

fn load(yaml: &str) -> wsgate::config::Config {
    wsgate::config::load_str(yaml, "t.yaml", std::path::Path::new(".")).unwrap()
}

async fn names(gw: &Gateway, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(who(gw, None).await.0);
    }
    out
}

#[tokio::test]
async fn round_robin_alternates() {
    let p = pair().await;
    let gw = Gateway::start(&config(&[p.a.addr, p.b.addr], "    balance: round_robin\n")).await;
    let seen = names(&gw, 6).await;
    assert!(seen.windows(2).all(|w| w[0] != w[1]), "{seen:?}");
    assert!(seen.contains(&"a".to_string()) && seen.contains(&"b".to_string()));
    gw.stop().await;
}

#[tokio::test]
async fn least_connections_avoids_the_busy_upstream() {
    let mut p = pair().await;
    let gw = Gateway::start(&config(
        &[p.a.addr, p.b.addr],
        "    balance: least_connections\n",
    ))
    .await;

    let addr = gw.addr();
    let slow = tokio::spawn(async move { http_get(addr, "/slow", &[]).await });
    let busy = tokio::time::timeout(WAIT, p.arrived.recv())
        .await
        .expect("the slow request reaches an app")
        .unwrap();

    // While one request holds `busy`, every new one goes to the other app.
    let seen = names(&gw, 5).await;
    assert!(seen.iter().all(|n| n != busy), "busy={busy} {seen:?}");
    // A reload that leaves the route alone does not forget the open request.
    let same =
        config(&[p.a.addr, p.b.addr], "    balance: least_connections\n") + "log_level: debug\n";
    gw.reloader.reload(load(&same)).await.unwrap();
    let seen = names(&gw, 5).await;
    assert!(
        seen.iter().all(|n| n != busy),
        "after a reload: busy={busy} {seen:?}"
    );

    p.release.send(true).unwrap();
    let (status, _, body) = slow.await.unwrap();
    assert_eq!((status.as_u16(), body.as_str()), (200, busy));
    gw.stop().await;
}

#[tokio::test]
async fn ip_hash_sticks_to_one_upstream() {
    let p = pair().await;
    let gw = Gateway::start(&config(&[p.a.addr, p.b.addr], "    balance: ip_hash\n")).await;
    let seen = names(&gw, 6).await;
    assert!(seen.iter().all(|n| *n == seen[0]), "{seen:?}");
    gw.stop().await;
}

#[tokio::test]
async fn cookie_balancing_sets_and_honours_the_sticky_cookie() {
    let p = pair().await;
    let gw = Gateway::start(&config(&[p.a.addr, p.b.addr], "    balance: cookie\n")).await;

    let (first, set) = who(&gw, None).await;
    let set = set.expect("first response sets the sticky cookie");
    let value = set
        .strip_prefix("wsgate_upstream=")
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("unexpected Set-Cookie {set:?}"))
        .to_string();
    assert!(set.contains("Path=/") && set.contains("HttpOnly") && set.contains("SameSite=Lax"));

    // A cookieless request is balanced elsewhere and pinned there with a different cookie...
    let (second, other) = who(&gw, None).await;
    assert_ne!(second, first);
    assert_ne!(other.as_deref(), Some(set.as_str()));

    // ...while every request carrying the first cookie stays with the first app.
    let cookie = format!("io=abc; wsgate_upstream={value}; theme=dark");
    for _ in 0..5 {
        let (name, set_again) = who(&gw, Some(&cookie)).await;
        assert_eq!(name, first);
        assert_eq!(set_again, None, "a valid cookie is not set again");
    }

    // A cookie naming no upstream is replaced.
    let (_, replaced) = who(&gw, Some("wsgate_upstream=nonsense")).await;
    assert!(replaced.is_some());
    gw.stop().await;
}

#[tokio::test]
async fn all_upstreams_down_is_503_after_passive_ejection() {
    let gw = Gateway::start(&config(&[closed_port_addr(), closed_port_addr()], "")).await;
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let (status, _, _) = http_get(gw.addr(), "/", &[]).await;
        statuses.push(status.as_u16());
        if status == 503 {
            break;
        }
    }
    // Connection failures answer 502 until both are ejected; then there is nobody to ask.
    assert_eq!(statuses.last(), Some(&503), "{statuses:?}");
    assert!(
        statuses[..statuses.len() - 1].iter().all(|s| *s == 502),
        "{statuses:?}"
    );
    gw.stop().await;
}

/// Waits until `app` has answered enough probes in its current state for the checker to have
/// acted on `n` of them (the checker sends the next only after handling the previous).
async fn probes_answered(app: &App, healthy: bool, since: usize, n: usize) {
    let counter = if healthy {
        &app.ok_probes
    } else {
        &app.failed_probes
    };
    let what = format!(
        "{} {} probes from app {}",
        n + 1,
        if healthy { "passing" } else { "failing" },
        app.name
    );
    wait_until(&what, || counter.load(Ordering::SeqCst) > since + n).await;
}

#[tokio::test]
async fn health_checks_eject_and_restore_upstreams() {
    let p = pair().await;
    let checked = config(
        &[p.a.addr, p.b.addr],
        "    health_check:\n      path: /health\n      interval: 50ms\n      timeout: 50ms\n      unhealthy_after: 2\n      healthy_after: 2\n",
    );
    let gw = Gateway::start(&checked).await;
    let both = names(&gw, 4).await;
    assert!(both.contains(&"a".to_string()) && both.contains(&"b".to_string()));

    // a starts failing its checks: after two failed probes it gets no traffic, also after a
    // reload that leaves the route alone (the new snapshot keeps a's health).
    p.a.healthy.store(false, Ordering::SeqCst);
    probes_answered(&p.a, false, 0, 2).await;
    let seen = names(&gw, 6).await;
    assert!(seen.iter().all(|n| n == "b"), "{seen:?}");
    gw.reloader
        .reload(load(&(checked.clone() + "log_level: debug\n")))
        .await
        .unwrap();
    let seen = names(&gw, 6).await;
    assert!(seen.iter().all(|n| n == "b"), "after a reload: {seen:?}");

    // b fails too: nobody is left, 503.
    p.b.healthy.store(false, Ordering::SeqCst);
    probes_answered(&p.b, false, 0, 2).await;
    let (status, _, _) = http_get(gw.addr(), "/", &[]).await;
    assert_eq!(status, 503);

    // a recovers: after two passing probes it takes all the traffic.
    let ok_before = p.a.ok_probes.load(Ordering::SeqCst);
    p.a.healthy.store(true, Ordering::SeqCst);
    probes_answered(&p.a, true, ok_before, 2).await;
    let seen = names(&gw, 4).await;
    assert!(seen.iter().all(|n| n == "a"), "{seen:?}");

    // b recovers: both share the traffic again.
    let ok_before = p.b.ok_probes.load(Ordering::SeqCst);
    p.b.healthy.store(true, Ordering::SeqCst);
    probes_answered(&p.b, true, ok_before, 2).await;
    let seen = names(&gw, 4).await;
    assert!(seen.windows(2).all(|w| w[0] != w[1]), "{seen:?}");
    gw.stop().await;
}
