//! The admin listener: Prometheus metrics that match the traffic, the JSON status and its page.

mod common;

use common::*;
use futures_util::SinkExt;
use tungstenite::Message;

async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    let (mut s, head) = raw_request(addr, req.as_bytes()).await;
    let body = String::from_utf8(read_to_eof(&mut s).await).unwrap();
    (status_of(&head), body)
}

fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn metrics_and_status_match_the_traffic() {
    let yaml = format!(
        "listen:\n{}admin:\n  address: 127.0.0.1:0\nwebsockets:\n  allowed_origins: [\"https://ok.test\"]\nroutes:\n  - path: /ws\n    websocket: echo\n",
        plain_listener()
    );
    let gw = Gateway::start(&yaml).await;
    let admin = gw.admin.expect("admin listener bound");

    let mut ws = connect(&gw.ws_url("/ws")).await;
    for i in 0..3 {
        ws.send(Message::text(format!("message {i}")))
            .await
            .unwrap();
        next_msg(&mut ws).await.unwrap().unwrap();
    }
    // While it is open, the status shows one open echo session.
    let (status, json) = get(admin, "/status").await;
    assert_eq!(status, 200);
    assert!(
        json.contains("\"route\":\"/ws\",\"mode\":\"echo\",\"open\":1"),
        "{json}"
    );
    assert!(json.contains("\"generation\":1"), "{json}");
    ws.send(Message::Close(Some(tungstenite::protocol::CloseFrame {
        code: 4000.into(),
        reason: "done".into(),
    })))
    .await
    .unwrap();
    assert_eq!(expect_close(&mut ws).await, 4000);
    drop(ws);

    // A refused origin and a bad handshake are counted by reason.
    let refused = format!("{UPGRADE}Origin: https://evil.test\r\n\r\n");
    let (_s, head) = raw_request(gw.addr(), refused.as_bytes()).await;
    assert_eq!(status_of(&head), 403);
    // Two Origin headers are a bad handshake (400), counted as one.
    let twice = format!("{UPGRADE}Origin: https://ok.test\r\nOrigin: https://evil.test\r\n\r\n");
    let (_s, head) = raw_request(gw.addr(), twice.as_bytes()).await;
    assert_eq!(status_of(&head), 400);

    // The session's figures arrive when it ends; wait for that event rather than for time.
    let metrics = tokio::time::timeout(WAIT, async {
        loop {
            let (_, m) = get(admin, "/metrics").await;
            if value(
                &m,
                "wsgate_closes_total{route=\"/ws\",code=\"4000\",side=\"client\"}",
            ) == Some(1.0)
            {
                break m;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the session end was never counted");
    let v = |s: &str| value(&metrics, s);
    assert_eq!(
        v("wsgate_upgrades_total{route=\"/ws\",outcome=\"accepted\"}"),
        Some(1.0)
    );
    assert_eq!(
        v("wsgate_upgrades_total{route=\"/ws\",outcome=\"origin\"}"),
        Some(1.0)
    );
    assert_eq!(
        v("wsgate_upgrades_total{route=\"/ws\",outcome=\"handshake\"}"),
        Some(1.0)
    );
    assert_eq!(
        v("wsgate_messages_total{route=\"/ws\",mode=\"echo\",direction=\"in\"}"),
        Some(3.0)
    );
    assert_eq!(
        v("wsgate_messages_total{route=\"/ws\",mode=\"echo\",direction=\"out\"}"),
        Some(3.0)
    );
    assert_eq!(
        v("wsgate_bytes_total{route=\"/ws\",mode=\"echo\",direction=\"in\"}"),
        Some(27.0)
    );
    assert_eq!(
        v("wsgate_websockets_open{route=\"/ws\",mode=\"echo\"}"),
        Some(0.0)
    );
    assert_eq!(v("wsgate_config_generation"), Some(1.0));
    assert!(
        metrics.contains("wsgate_session_duration_seconds_count{route=\"/ws\",mode=\"echo\"} 1"),
        "{metrics}"
    );

    let (status, page) = get(admin, "/").await;
    assert_eq!(status, 200);
    assert!(page.contains("wsgate status") && page.contains("/status"));
    gw.stop().await;
}

/// A reload that moves the admin listener binds the new address and closes the old one; one
/// that removes it closes it.
#[tokio::test]
async fn a_reload_moves_and_removes_the_admin_listener() {
    let with_admin = |address: &str| {
        format!(
            "listen:\n{}admin:\n  address: {address}\nroutes:\n  - path: /ws\n    websocket: echo\n",
            plain_listener()
        )
    };
    let gw = Gateway::start(&with_admin("127.0.0.1:0")).await;
    let first = gw.admin.expect("admin listener bound");
    assert_eq!(get(first, "/status").await.0, 200);

    // A port the OS has just handed out and taken back: free, and not a fixed number.
    let moved = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let load = |text: String| {
        wsgate::config::load_str(&text, "t.yaml", std::path::Path::new(".")).unwrap()
    };
    gw.reloader
        .reload(load(with_admin(&moved.to_string())))
        .await
        .unwrap();
    assert_eq!(get(moved, "/status").await.0, 200);
    assert!(tokio::net::TcpStream::connect(first).await.is_err());

    let without = format!(
        "listen:\n{}routes:\n  - path: /ws\n    websocket: echo\n",
        plain_listener()
    );
    gw.reloader.reload(load(without)).await.unwrap();
    assert!(tokio::net::TcpStream::connect(moved).await.is_err());
    gw.stop().await;
}

/// An upstream sitting out a passive ejection takes no traffic, and the admin side says so;
/// the admin pages are read-only, so other methods get 405.
#[tokio::test]
async fn ejected_upstreams_are_reported_down_and_admin_pages_take_only_get() {
    let dead = closed_port_addr();
    let yaml = format!(
        "listen:\n{}admin:\n  address: 127.0.0.1:0\nroutes:\n  - path: /dead\n    upstreams: [\"http://{dead}\"]\n",
        plain_listener()
    );
    let gw = Gateway::start(&yaml).await;
    let admin = gw.admin.expect("admin listener bound");
    let series = format!("wsgate_upstream_healthy{{route=\"/dead\",upstream=\"http://{dead}\"}}");
    let (_, metrics) = get(admin, "/metrics").await;
    assert_eq!(value(&metrics, &series), Some(1.0), "{metrics}");

    // Three failed connections eject it: the fourth request is not even tried.
    for expected in [502, 502, 502, 503] {
        let req = "GET /dead/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n";
        let (_s, head) = raw_request(gw.addr(), req.as_bytes()).await;
        assert_eq!(status_of(&head), expected, "{head}");
    }
    let (_, metrics) = get(admin, "/metrics").await;
    assert_eq!(value(&metrics, &series), Some(0.0), "{metrics}");
    let (_, json) = get(admin, "/status").await;
    assert!(json.contains("\"healthy\":false"), "{json}");

    for method in ["POST", "PUT", "DELETE"] {
        let req = format!("{method} /metrics HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let (_s, head) = raw_request(admin, req.as_bytes()).await;
        assert_eq!(status_of(&head), 405, "{head}");
        assert_eq!(head_header(&head, "allow").as_deref(), Some("GET, HEAD"));
    }
    gw.stop().await;
}

/// A client that resets its connection right after its upgrade request never gets a session:
/// its upgrade is counted as abandoned (besides accepted), so `accepted` less the sessions
/// that ended still adds up, and no session is left counted open.
#[tokio::test]
async fn an_upgrade_the_client_abandons_is_counted_as_such() {
    use tokio::io::AsyncWriteExt;
    let yaml = format!(
        "listen:\n{}admin:\n  address: 127.0.0.1:0\nroutes:\n  - path: /ws\n    websocket: echo\n",
        plain_listener()
    );
    let gw = Gateway::start(&yaml).await;
    let admin = gw.admin.expect("admin listener bound");
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(format!("{UPGRADE}\r\n").as_bytes())
        .await
        .unwrap();
    s.set_zero_linger().unwrap();
    drop(s);
    let series = "wsgate_upgrades_total{route=\"/ws\",outcome=\"abandoned\"}";
    let metrics = get_until(admin, "/metrics", |m| value(m, series).is_some()).await;
    assert_eq!(value(&metrics, series), Some(1.0), "{metrics}");
    assert_eq!(
        value(
            &metrics,
            "wsgate_websockets_open{route=\"/ws\",mode=\"echo\"}"
        )
        .unwrap_or(0.0),
        0.0,
        "{metrics}"
    );
    gw.stop().await;
}

/// Scrapes `path` until `done` holds for the body: sessions are counted by their own tasks
/// once the upgrade is taken over, a moment after the client reads the 101.
async fn get_until(admin: std::net::SocketAddr, path: &str, done: impl Fn(&str) -> bool) -> String {
    tokio::time::timeout(WAIT, async {
        loop {
            let (_, body) = get(admin, path).await;
            if done(&body) {
                break body;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{path} never showed what was expected"))
}

/// An open echo session on `path` for Host `host`, kept as its raw socket.
async fn open_session(gw: &Gateway, path: &str, host: &str) -> tokio::net::TcpStream {
    let req = UPGRADE
        .replace("GET /ws ", &format!("GET {path} "))
        .replace("Host: localhost", &format!("Host: {host}"))
        + "\r\n";
    let (s, head) = raw_request(gw.addr(), req.as_bytes()).await;
    assert_eq!(status_of(&head), 101, "{head}");
    s
}

/// Whether route `index`'s first upstream takes new connections, as the admin side reports.
fn in_service(gw: &Gateway, index: usize) -> bool {
    gw.state.current().upstreams(index).unwrap().set.targets[0].in_service()
}

/// A reload that removes a health-checked route removes its `upstream_healthy` series: left at
/// 0, it would keep an "upstream down" alert firing for a route that no longer exists.
#[tokio::test]
async fn a_reload_removes_the_health_series_of_removed_routes() {
    let dead = closed_port_addr();
    let check =
        "    health_check: { path: /hc, interval: 50ms, timeout: 50ms, unhealthy_after: 1 }\n";
    let with = |routes: &[&str]| {
        let mut yaml = format!(
            "listen:\n{}admin:\n  address: 127.0.0.1:0\nroutes:\n",
            plain_listener()
        );
        for path in routes {
            yaml += &format!("  - path: {path}\n    upstreams: [\"http://{dead}\"]\n{check}");
        }
        yaml
    };
    let gw = Gateway::start(&with(&["/kept", "/old"])).await;
    let admin = gw.admin.expect("admin listener bound");
    wait_until("both upstreams failing their checks", || {
        !in_service(&gw, 0) && !in_service(&gw, 1)
    })
    .await;
    let series = |route: &str| {
        format!("wsgate_upstream_healthy{{route=\"{route}\",upstream=\"http://{dead}\"}}")
    };
    let (_, metrics) = get(admin, "/metrics").await;
    assert_eq!(value(&metrics, &series("/kept")), Some(0.0), "{metrics}");
    assert_eq!(value(&metrics, &series("/old")), Some(0.0), "{metrics}");

    let config = wsgate::config::load_str(&with(&["/kept"]), "t.yaml", std::path::Path::new("."));
    gw.reloader.reload(config.unwrap()).await.unwrap();
    let (_, metrics) = get(admin, "/metrics").await;
    assert_eq!(value(&metrics, &series("/kept")), Some(0.0), "{metrics}");
    assert!(!metrics.contains("route=\"/old\""), "{metrics}");
    let (_, json) = get(admin, "/status").await;
    assert!(!json.contains("/old"), "{json}");
    gw.stop().await;
}

/// Routes with one path on two hosts are told apart in metrics and `/status` by host and
/// path: with the path alone they shared their series, and the unchecked route's healthy
/// upstream hid the checked one's failure.
#[tokio::test]
async fn routes_on_different_hosts_have_their_own_series() {
    let dead = closed_port_addr();
    let yaml = format!(
        "listen:\n{}admin:\n  address: 127.0.0.1:0\nroutes:\n  - path: /app\n    host: a.example\n    websocket: echo\n    upstreams: [\"http://{dead}\"]\n    health_check: {{ path: /hc, interval: 50ms, timeout: 50ms, unhealthy_after: 1 }}\n  - path: /app\n    host: b.example\n    websocket: echo\n    upstreams: [\"http://{dead}\"]\n  - path: /app\n    websocket: echo\n",
        plain_listener()
    );
    let gw = Gateway::start(&yaml).await;
    let admin = gw.admin.expect("admin listener bound");
    wait_until("a.example's upstream failing its check", || {
        !in_service(&gw, 0)
    })
    .await;
    let (_, metrics) = get(admin, "/metrics").await;
    let health = |route: &str| {
        value(
            &metrics,
            &format!("wsgate_upstream_healthy{{route=\"{route}\",upstream=\"http://{dead}\"}}"),
        )
    };
    assert_eq!(health("a.example/app"), Some(0.0), "{metrics}");
    assert_eq!(health("b.example/app"), Some(1.0), "{metrics}");
    assert_eq!(health("/app"), None, "{metrics}");

    let a = [
        open_session(&gw, "/app", "a.example").await,
        open_session(&gw, "/app", "A.example:8080").await,
    ];
    let b = open_session(&gw, "/app", "b.example").await;
    let any = open_session(&gw, "/app", "c.example").await;
    let open = |route: &str| format!("wsgate_websockets_open{{route=\"{route}\",mode=\"echo\"}}");
    let metrics = get_until(admin, "/metrics", |m| {
        value(m, &open("a.example/app")) == Some(2.0)
    })
    .await;
    assert_eq!(
        value(&metrics, &open("b.example/app")),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(value(&metrics, &open("/app")), Some(1.0), "{metrics}");
    assert_eq!(
        value(
            &metrics,
            "wsgate_upgrades_total{route=\"a.example/app\",outcome=\"accepted\"}"
        ),
        Some(2.0),
        "{metrics}"
    );

    let (_, json) = get(admin, "/status").await;
    for expected in [
        "{\"route\":\"/app\",\"mode\":\"echo\",\"open\":1}".to_string(),
        "{\"route\":\"a.example/app\",\"mode\":\"echo\",\"open\":2}".to_string(),
        "{\"route\":\"b.example/app\",\"mode\":\"echo\",\"open\":1}".to_string(),
        format!("{{\"route\":\"a.example/app\",\"url\":\"http://{dead}\",\"healthy\":false,"),
        format!("{{\"route\":\"b.example/app\",\"url\":\"http://{dead}\",\"healthy\":true,"),
    ] {
        assert!(json.contains(&expected), "{expected} in {json}");
    }
    // Gone clients end their sessions at once; open ones would hold the stop for their Close.
    drop((a, b, any));
    gw.stop().await;
}

/// `/status` names routes whose decoded paths hold `"` or `\` as they are, JSON-escaped once;
/// it used to read the sessions back from the Prometheus text, escapes and all.
#[tokio::test]
async fn status_names_routes_with_quotes_and_backslashes() {
    let yaml = format!(
        "listen:\n{}admin:\n  address: 127.0.0.1:0\nroutes:\n  - path: /a%22b\n    websocket: echo\n  - path: /x%5Cy\n    websocket: echo\n",
        plain_listener()
    );
    let gw = Gateway::start(&yaml).await;
    let admin = gw.admin.expect("admin listener bound");
    let quote_session = open_session(&gw, "/a%22b", "localhost").await;
    let backslash_sessions = [
        open_session(&gw, "/x%5Cy", "localhost").await,
        open_session(&gw, "/x%5Cy/z", "localhost").await,
    ];
    let quote = r#"{"route":"/a\"b","mode":"echo","open":1}"#;
    let backslash = r#"{"route":"/x\\y","mode":"echo","open":2}"#;
    get_until(admin, "/status", |j| {
        j.contains(quote) && j.contains(backslash)
    })
    .await;
    let (_, metrics) = get(admin, "/metrics").await;
    assert_eq!(
        value(
            &metrics,
            r#"wsgate_websockets_open{route="/a\"b",mode="echo"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        value(
            &metrics,
            r#"wsgate_websockets_open{route="/x\\y",mode="echo"}"#
        ),
        Some(2.0),
        "{metrics}"
    );
    drop((quote_session, backslash_sessions));
    gw.stop().await;
}

/// A client that resets its connection while its relay or passthrough upgrade waits on the
/// app is counted as abandoned too: hyper drops the upgrade's handler then, before it could
/// count an outcome of its own.
#[tokio::test]
async fn an_upgrade_abandoned_while_the_app_is_reached_is_counted_as_such() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An app that takes the connection and never answers.
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = app.local_addr().unwrap();
    let yaml = format!(
        "listen:\n{}admin:\n  address: 127.0.0.1:0\nroutes:\n  - path: /relay\n    websocket: relay\n    upstreams: [\"ws://{app_addr}\"]\n  - path: /pass\n    websocket: passthrough\n    upstreams: [\"http://{app_addr}\"]\n",
        plain_listener()
    );
    let gw = Gateway::start(&yaml).await;
    let admin = gw.admin.expect("admin listener bound");
    let mut held = Vec::new();
    for path in ["/relay", "/pass"] {
        let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
        let request = UPGRADE.replace("GET /ws ", &format!("GET {path} "));
        s.write_all(format!("{request}\r\n").as_bytes())
            .await
            .unwrap();
        // The gateway is waiting on the app once the app has its upgrade request.
        let (mut upstream, _) = app.accept().await.unwrap();
        let mut got = [0u8; 1];
        upstream.read_exact(&mut got).await.unwrap();
        held.push(upstream);
        s.set_zero_linger().unwrap();
        drop(s);
        let route = path;
        let series = format!("wsgate_upgrades_total{{route=\"{route}\",outcome=\"abandoned\"}}");
        let metrics = get_until(admin, "/metrics", |m| value(m, &series).is_some()).await;
        assert_eq!(value(&metrics, &series), Some(1.0), "{metrics}");
    }
    gw.stop().await;
}
