//! Passthrough over real sockets: the client's own upgrade goes to the app, and bytes are
//! tunnelled only after the app's valid 101; anything else is answered and the connection ends.

mod common;

use std::sync::atomic::Ordering;

use common::*;
use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tungstenite::Message;

fn config(upstream: &str, route_extra: &str) -> String {
    format!(
        "listen:\n{}websockets:\n  close_timeout: 2s\nroutes:\n  - path: /ws\n    websocket: passthrough\n    upstream_timeout: 2s\n    upstreams: [\"{upstream}\"]\n{route_extra}",
        plain_listener()
    )
}

#[tokio::test]
async fn the_apps_own_websocket_runs_through_the_tunnel() {
    let mut app = spawn_ws_app(Some("chat")).await;
    let gw = Gateway::start(&config(&format!("{}/base", app.url()), "")).await;
    let req = format!(
        "{UPGRADE}Sec-WebSocket-Protocol: chat\r\nConnection: X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nX-Forwarded-For: 203.0.113.9\r\nCookie: a=b\r\n\r\n"
    );
    let (mut s, head) = raw_request(gw.addr(), req.as_bytes()).await;
    assert_eq!(status_of(&head), 101, "{head}");
    // The accept the app computed from the client's own key.
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    assert_eq!(
        head_header(&head, "sec-websocket-protocol").as_deref(),
        Some("chat")
    );
    let (target, headers) = app.next_upgrade().await;
    assert_eq!(target, "/base/ws");
    assert_eq!(headers["host"], "localhost");
    assert_eq!(headers["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
    assert_eq!(headers["upgrade"], "websocket");
    assert_eq!(headers["connection"], "Upgrade");
    assert_eq!(headers["cookie"], "a=b");
    assert_eq!(headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], "localhost");
    assert!(!headers.contains_key("x-secret"));
    assert!(!headers.contains_key("keep-alive"));

    s.write_all(&frame(true, 1, MASK, b"through"))
        .await
        .unwrap();
    assert_eq!(read_frame(&mut s).await, (true, 1, b"through".to_vec()));
    s.write_all(&frame(true, 8, MASK, &4001u16.to_be_bytes()))
        .await
        .unwrap();
    assert_eq!(read_close_code(&mut s).await, 4001);
    assert_eq!(app.next_close_code().await, 4001);
    read_to_eof(&mut s).await;
    drop(s);

    // And with an ordinary client, a large message.
    let mut ws = connect(&gw.ws_url("/ws")).await;
    let big: Vec<u8> = (0..1024 * 1024).map(|i| (i % 253) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(
        next_msg(&mut ws).await.unwrap().unwrap(),
        Message::binary(big)
    );
    ws.close(None).await.unwrap();
    drop(ws);
    gw.stop().await;
}

#[tokio::test]
async fn the_apps_upgrade_answer_reaches_the_client_and_bytes_flow_raw() {
    let mut app = spawn_raw_app().await;
    let gw = Gateway::start(&config(&app.url(), "")).await;
    let client = spawn_request(
        gw.addr(),
        format!("{UPGRADE}Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"),
    );
    let mut up = app.accept().await;
    let head = answer_upgrade(
        &mut up,
        "Sec-WebSocket-Extensions: permessage-deflate\r\nSet-Cookie: sticky=1\r\nX-Internal: yes\r\n",
    )
    .await;
    assert_eq!(
        head_header(&head, "sec-websocket-extensions").as_deref(),
        Some("permessage-deflate")
    );
    let (mut c, resp) = client.await.unwrap();
    assert_eq!(status_of(&resp), 101, "{resp}");
    assert_eq!(
        head_header(&resp, "sec-websocket-extensions").as_deref(),
        Some("permessage-deflate")
    );
    assert_eq!(
        head_header(&resp, "set-cookie").as_deref(),
        Some("sticky=1")
    );
    assert_eq!(head_header(&resp, "x-internal"), None);
    // Not frames: passthrough copies bytes it does not understand.
    c.write_all(b"not a frame").await.unwrap();
    let mut buf = [0u8; 11];
    up.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"not a frame");
    up.write_all(b"neither").await.unwrap();
    let mut buf = [0u8; 7];
    c.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"neither");
    // The app closing ends the tunnel for the client.
    drop(up);
    assert!(read_to_eof(&mut c).await.is_empty());
    drop(c);
    gw.stop().await;
}

/// Bytes that share a write with a handshake are read by hyper with it: once the app has
/// answered 101, they go through the tunnel first, both ways.
#[tokio::test]
async fn bytes_sent_with_either_handshake_are_tunnelled_first() {
    let mut app = spawn_raw_app().await;
    let gw = Gateway::start(&config(&app.url(), "")).await;
    let mut req = format!("{UPGRADE}\r\n").into_bytes();
    req.extend_from_slice(b"early from the client");
    let client = spawn_request(gw.addr(), req);
    let mut up = app.accept().await;
    answer_upgrade_then(&mut up, "", b"early from the app").await;
    let (mut c, resp) = client.await.unwrap();
    assert_eq!(status_of(&resp), 101, "{resp}");
    assert_eq!(read_exactly(&mut c, 18).await, b"early from the app");
    assert_eq!(read_exactly(&mut up, 21).await, b"early from the client");
    c.write_all(b"then more").await.unwrap();
    assert_eq!(read_exactly(&mut up, 9).await, b"then more");
    drop(up);
    assert!(read_to_eof(&mut c).await.is_empty());
    drop(c);
    gw.stop().await;
}

#[tokio::test]
async fn a_refusal_is_relayed_and_nothing_pipelined_is_tunnelled() {
    let mut app = spawn_raw_app().await;
    let gw = Gateway::start(&config(&app.url(), "")).await;
    let pipelined = format!("{UPGRADE}\r\nGET /second HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let client = spawn_request(gw.addr(), pipelined);
    let mut up = app.accept().await;
    let head = read_head(&mut up).await;
    assert!(head.starts_with("GET /ws "), "{head}");
    up.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-App: yes\r\n\r\nhello")
        .await
        .unwrap();
    let (mut c, resp) = client.await.unwrap();
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert_eq!(head_header(&resp, "connection").as_deref(), Some("close"));
    assert_eq!(head_header(&resp, "x-app").as_deref(), Some("yes"));
    let rest = read_to_eof(&mut c).await;
    assert_eq!(rest, b"hello", "{}", String::from_utf8_lossy(&rest));
    // The app never sees the second request: its connection just ends.
    let more = read_to_eof(&mut up).await;
    assert!(more.is_empty(), "{}", String::from_utf8_lossy(&more));
    assert_eq!(app.accepted.load(Ordering::SeqCst), 1);
    gw.stop().await;
}

/// A refusal is an ordinary response, and its body is held to `response_idle_timeout` as any
/// other: an app that stops mid-body no longer holds the client and its own connection for as
/// long as it likes.
#[tokio::test]
async fn a_refusal_whose_body_stalls_is_cut_at_response_idle_timeout() {
    let mut app = spawn_raw_app().await;
    let gw = Gateway::start(&config(&app.url(), "    response_idle_timeout: 300ms\n")).await;
    let client = spawn_request(gw.addr(), format!("{UPGRADE}\r\n"));
    let mut up = app.accept().await;
    read_head(&mut up).await;
    up.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n0123456789")
        .await
        .unwrap();
    let (mut c, resp) = client.await.unwrap();
    assert_eq!(status_of(&resp), 200, "{resp}");
    // Cut after the ten bytes that came, short of the twenty announced.
    let rest = read_to_eof(&mut c).await;
    assert_eq!(rest, b"0123456789", "{}", String::from_utf8_lossy(&rest));
    // And the app's connection is let go.
    assert!(read_to_eof(&mut up).await.is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn a_101_with_the_wrong_accept_gets_502_and_no_tunnel() {
    let mut app = spawn_raw_app().await;
    let gw = Gateway::start(&config(&app.url(), "")).await;
    let mut pipelined = format!("{UPGRADE}\r\n").into_bytes();
    pipelined.extend(frame(true, 1, MASK, b"smuggled"));
    let addr = gw.addr();
    let client = tokio::spawn(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&pipelined).await.unwrap();
        let head = read_head(&mut s).await;
        (s, head)
    });
    let mut up = app.accept().await;
    read_head(&mut up).await;
    up.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n")
        .await
        .unwrap();
    up.write_all(&frame(true, 1, None, b"from the app"))
        .await
        .unwrap();
    let (mut c, resp) = client.await.unwrap();
    assert_eq!(status_of(&resp), 502, "{resp}");
    let rest = String::from_utf8_lossy(&read_to_eof(&mut c).await).into_owned();
    assert!(!rest.contains("from the app"), "{rest}");
    let more = read_to_eof(&mut up).await;
    assert!(more.is_empty(), "{}", String::from_utf8_lossy(&more));
    gw.stop().await;
}

#[tokio::test]
async fn h2c_is_never_asked_of_the_app() {
    let app = spawn_recording_app().await;
    let gw = Gateway::start(&config(&format!("http://{}", app.addr), "")).await;
    // A plain request that asks for h2c: whatever answers it, it is not an upgrade.
    let h2c = "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n";
    let (s, head) = raw_request(gw.addr(), h2c.as_bytes()).await;
    assert_ne!(status_of(&head), 101, "{head}");
    drop(s);
    // A WebSocket upgrade that also lists h2c: only websocket reaches the app.
    let both = UPGRADE.replace("Upgrade: websocket", "Upgrade: h2c, websocket") + "\r\n";
    let (s, head) = raw_request(gw.addr(), both.as_bytes()).await;
    assert_eq!(status_of(&head), 101, "{head}");
    drop(s);
    let heads = app.heads.lock().unwrap().clone();
    assert!(!heads.is_empty());
    for head in &heads {
        for line in head.split("\r\n") {
            let lower = line.to_ascii_lowercase();
            assert!(
                !(lower.starts_with("upgrade:") && lower.contains("h2c")),
                "the app was asked for h2c: {head}"
            );
            assert!(!lower.starts_with("http2-settings:"), "{head}");
        }
    }
    let last = heads.last().unwrap();
    assert_eq!(head_header(last, "upgrade").as_deref(), Some("websocket"));
    gw.stop().await;
}

#[tokio::test]
async fn websockets_disabled_turns_an_app_route_into_passthrough() {
    let mut app = spawn_ws_app(None).await;
    let yaml = format!(
        "listen:\n{}websockets:\n  enabled: false\nroutes:\n  - path: /ws\n    upstreams: [\"{}\"]\n",
        plain_listener(),
        app.url()
    );
    let gw = Gateway::start(&yaml).await;
    let mut s = raw_ws(gw.addr(), "/ws").await;
    // The client's own key reached the app: wsgate did not open a WebSocket of its own.
    let (_, headers) = app.next_upgrade().await;
    assert_eq!(headers["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
    s.write_all(&frame(true, 2, MASK, &[1, 2, 3]))
        .await
        .unwrap();
    assert_eq!(read_frame(&mut s).await, (true, 2, vec![1, 2, 3]));
    drop(s);
    gw.stop().await;
}

#[tokio::test]
async fn origin_is_refused_before_any_app_contact() {
    let mut app = spawn_ws_app(None).await;
    let route = "    allowed_origins: [\"https://good.example\"]\n";
    let gw = Gateway::start(&config(&app.url(), route)).await;
    let bad = format!("{UPGRADE}Origin: https://evil.example\r\n\r\n");
    let (_s, head) = raw_request(gw.addr(), bad.as_bytes()).await;
    assert_eq!(status_of(&head), 403, "{head}");
    let good = format!("{UPGRADE}Origin: https://good.example\r\n\r\n");
    let (s, head) = raw_request(gw.addr(), good.as_bytes()).await;
    assert_eq!(status_of(&head), 101, "{head}");
    // Connections are accepted in order, so the refused one would have been counted first.
    app.next_upgrade().await;
    assert_eq!(app.accepted.load(Ordering::SeqCst), 1);
    drop(s);
    gw.stop().await;
}

#[tokio::test]
async fn unreachable_app_gets_502() {
    let gw = Gateway::start(&config(&format!("http://{}", closed_port_addr()), "")).await;
    let (mut s, head) = raw_request(gw.addr(), format!("{UPGRADE}\r\n").as_bytes()).await;
    assert_eq!(status_of(&head), 502, "{head}");
    read_to_eof(&mut s).await;
    gw.stop().await;
}

#[tokio::test]
async fn shutdown_closes_tunnels() {
    let mut app = spawn_ws_app(None).await;
    let mut gw = Gateway::start(&config(&app.url(), "")).await;
    let mut s = raw_ws(gw.addr(), "/ws").await;
    s.write_all(&frame(true, 1, MASK, b"up")).await.unwrap();
    assert_eq!(read_frame(&mut s).await, (true, 1, b"up".to_vec()));
    gw.begin_shutdown();
    // No Close frame can be injected into a byte stream: the connections just end.
    assert!(read_to_eof(&mut s).await.is_empty());
    assert!(app.next_end().await.is_err());
    gw.stop().await;
}

/// An app that stops reading leaves the tunnel's write to it waiting, and then nothing reads
/// the client's socket: a client that left would never be noticed, and its session, sockets
/// and limit slot would stay taken. The stall limit ends the tunnel.
#[tokio::test]
async fn an_app_that_stops_reading_ends_the_tunnel_at_the_stall_limit() {
    let mut app = spawn_raw_app().await;
    let yaml = config(&app.url(), "").replace(
        "  close_timeout: 2s\n",
        "  close_timeout: 2s\n  keep_alive_interval: 200ms\n  keep_alive_timeout: 300ms\n",
    );
    let gw = Gateway::start(&yaml).await;
    let (client, _app_never_reads) = raw_pair(&gw, &mut app).await;
    flood_until_dropped(client).await;
    gw.stop().await;
}

/// The app behind passthrough learns who the client is exactly as one behind the reverse proxy
/// does: the same X-Forwarded-* and an entry of ours appended to Forwarded.
#[tokio::test]
async fn forwarding_headers_are_the_reverse_proxys() {
    let mut app = spawn_ws_app(None).await;
    let gw = Gateway::start(&config(&app.url(), "")).await;
    let req = format!(
        "{UPGRADE}X-Forwarded-For: 203.0.113.9\r\nForwarded: for=203.0.113.9;proto=https\r\nX-Forwarded-Host: forged.example\r\n\r\n"
    );
    let (s, head) = raw_request(gw.addr(), req.as_bytes()).await;
    assert_eq!(status_of(&head), 101, "{head}");
    let (_, headers) = app.next_upgrade().await;
    assert_eq!(headers["x-forwarded-for"], "203.0.113.9, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], "localhost");
    assert_eq!(
        headers["forwarded"],
        "for=203.0.113.9;proto=https, for=127.0.0.1;proto=http;host=localhost"
    );
    assert_eq!(headers.get_all("forwarded").iter().count(), 1);
    drop(s);
    gw.stop().await;
}

/// Naming the handshake's own headers in `Connection` does not take them from the app: without
/// them it could not answer, and the client's slip would be blamed on the app as a 502.
#[tokio::test]
async fn connection_tokens_cannot_strip_the_handshake() {
    let mut app = spawn_ws_app(Some("chat")).await;
    let gw = Gateway::start(&config(&app.url(), "")).await;
    let req = UPGRADE.replace(
        "Connection: Upgrade",
        "Connection: Upgrade, Host, Sec-WebSocket-Key, Sec-WebSocket-Version, Sec-WebSocket-Protocol, X-Dropped",
    ) + "Sec-WebSocket-Protocol: chat\r\nX-Dropped: 1\r\n\r\n";
    let (mut s, head) = raw_request(gw.addr(), req.as_bytes()).await;
    assert_eq!(status_of(&head), 101, "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    let (_, headers) = app.next_upgrade().await;
    assert_eq!(headers["host"], "localhost");
    assert_eq!(headers["sec-websocket-key"], "dGhlIHNhbXBsZSBub25jZQ==");
    assert_eq!(headers["sec-websocket-version"], "13");
    assert_eq!(headers["sec-websocket-protocol"], "chat");
    assert!(!headers.contains_key("x-dropped"));
    s.write_all(&frame(true, 1, MASK, b"kept")).await.unwrap();
    assert_eq!(read_frame(&mut s).await, (true, 1, b"kept".to_vec()));
    drop(s);
    gw.stop().await;
}

/// An app that accepts upgrades but answers too late gets 504s, and is not ejected for it:
/// passive ejection counts failures to connect only.
#[tokio::test]
async fn slow_upgrade_answers_do_not_eject_the_app() {
    let mut app = spawn_raw_app().await;
    let yaml = config(&app.url(), "").replace("upstream_timeout: 2s", "upstream_timeout: 300ms");
    let gw = Gateway::start(&yaml).await;
    for _ in 0..4 {
        let client = spawn_request(gw.addr(), format!("{UPGRADE}\r\n"));
        let mut up = app.accept().await;
        read_head(&mut up).await;
        // Held unanswered until the gateway has given up on it.
        let (mut c, head) = client.await.unwrap();
        assert_eq!(status_of(&head), 504, "{head}");
        read_to_eof(&mut c).await;
        drop(up);
    }
    let (c, up) = raw_pair(&gw, &mut app).await;
    drop((c, up));
    gw.stop().await;
}

/// `balance: cookie` pins a client that only ever speaks WebSocket too: the 101 sets the cookie,
/// and an upgrade that carries it goes to the same app and gets no new one.
#[tokio::test]
async fn cookie_balancing_sets_the_sticky_cookie_on_the_101() {
    let (a, b) = (spawn_recording_app().await, spawn_recording_app().await);
    let yaml = format!(
        "listen:\n{}routes:\n  - path: /ws\n    websocket: passthrough\n    balance: cookie\n    upstreams: [\"http://{}\", \"http://{}\"]\n",
        plain_listener(),
        a.addr,
        b.addr
    );
    let gw = Gateway::start(&yaml).await;
    let (_s, head) = raw_request(gw.addr(), format!("{UPGRADE}\r\n").as_bytes()).await;
    assert_eq!(status_of(&head), 101, "{head}");
    let cookie = head_header(&head, "set-cookie").expect("the 101 sets the sticky cookie");
    let pair = cookie.split(';').next().unwrap().to_owned();
    assert!(pair.starts_with("wsgate_upstream="), "{cookie}");
    let first = if a.heads.lock().unwrap().is_empty() {
        &b
    } else {
        &a
    };
    for _ in 0..3 {
        let again = format!("{UPGRADE}Cookie: {pair}\r\n\r\n");
        let (_s, head) = raw_request(gw.addr(), again.as_bytes()).await;
        assert_eq!(status_of(&head), 101, "{head}");
        assert_eq!(head_header(&head, "set-cookie"), None, "{head}");
    }
    assert_eq!(
        first.heads.lock().unwrap().len(),
        4,
        "all four went to one app"
    );
    gw.stop().await;
}
