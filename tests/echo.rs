//! The echo endpoint over real sockets: messages, RFC 6455 violations and their close codes,
//! keep-alive, handshakes and slow clients.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tungstenite::Message;

fn config(ws_extra: &str) -> String {
    format!(
        "listen:\n{}health_path: /healthz\nsample_page: /\nwebsockets:\n  max_message_size: 1MiB\n  close_timeout: 300ms\n{ws_extra}routes:\n  - path: /ws\n    websocket: echo\n    subprotocols: [chat.v1, chat.v2]\n",
        plain_listener()
    )
}

#[tokio::test]
async fn echoes_text_binary_and_large_messages() {
    let gw = Gateway::start(&config("")).await;
    let mut ws = connect(&gw.ws_url("/ws")).await;
    ws.send(Message::text("hello wsgate")).await.unwrap();
    assert_eq!(
        next_msg(&mut ws).await.unwrap().unwrap(),
        Message::text("hello wsgate")
    );
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        next_msg(&mut ws).await.unwrap().unwrap(),
        Message::binary(vec![0u8, 1, 2, 255])
    );
    let big: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(
        next_msg(&mut ws).await.unwrap().unwrap(),
        Message::binary(big)
    );
    ws.close(None).await.unwrap();
    gw.stop().await;
}

#[tokio::test]
async fn reassembles_fragmented_messages_and_answers_pings() {
    let gw = Gateway::start(&config("")).await;
    let mut s = raw_ws(gw.addr(), "/ws").await;
    s.write_all(&frame(false, 1, MASK, "frag".as_bytes()))
        .await
        .unwrap();
    s.write_all(&frame(true, 9, MASK, b"ping!")).await.unwrap();
    s.write_all(&frame(false, 0, MASK, "men".as_bytes()))
        .await
        .unwrap();
    s.write_all(&frame(true, 0, MASK, "ted €".as_bytes()))
        .await
        .unwrap();
    assert_eq!(read_frame(&mut s).await, (true, 0xA, b"ping!".to_vec()));
    assert_eq!(
        read_frame(&mut s).await,
        (true, 1, "fragmented €".as_bytes().to_vec())
    );
    // The client's close code comes back; 1000 for an empty Close.
    s.write_all(&frame(true, 8, MASK, &4000u16.to_be_bytes()))
        .await
        .unwrap();
    assert_eq!(read_close_code(&mut s).await, 4000);
    read_to_eof(&mut s).await;
    let mut s = raw_ws(gw.addr(), "/ws").await;
    s.write_all(&frame(true, 8, MASK, b"")).await.unwrap();
    assert_eq!(read_close_code(&mut s).await, 1000);
    gw.stop().await;
}

async fn violation(gw: &Gateway, bytes: &[u8]) -> u16 {
    let mut s = raw_ws(gw.addr(), "/ws").await;
    s.write_all(bytes).await.unwrap();
    let code = read_close_code(&mut s).await;
    // The gateway closes the TCP connection after its Close.
    read_to_eof(&mut s).await;
    code
}

#[tokio::test]
async fn protocol_violations_close_with_1002() {
    let gw = Gateway::start(&config("")).await;
    // Unmasked client frame.
    assert_eq!(violation(&gw, &frame(true, 1, None, b"hi")).await, 1002);
    // 126-byte Pong and Close.
    assert_eq!(
        violation(&gw, &frame(true, 0xA, MASK, &[0; 126])).await,
        1002
    );
    let mut close = 1000u16.to_be_bytes().to_vec();
    close.extend_from_slice(&[b'x'; 124]);
    assert_eq!(violation(&gw, &frame(true, 8, MASK, &close)).await, 1002);
    // Fragmented Ping.
    assert_eq!(violation(&gw, &frame(false, 9, MASK, b"p")).await, 1002);
    // RSV1 set (no extension was negotiated).
    let mut rsv = frame(true, 1, MASK, b"hi");
    rsv[0] |= 0x40;
    assert_eq!(violation(&gw, &rsv).await, 1002);
    // Reserved opcodes, data and control.
    assert_eq!(violation(&gw, &frame(true, 3, MASK, b"")).await, 1002);
    assert_eq!(violation(&gw, &frame(true, 0xB, MASK, b"")).await, 1002);
    // Continuation with nothing to continue; invalid close code.
    assert_eq!(violation(&gw, &frame(true, 0, MASK, b"x")).await, 1002);
    assert_eq!(
        violation(&gw, &frame(true, 8, MASK, &1005u16.to_be_bytes())).await,
        1002
    );
    // Lengths RFC 6455 5.2 forbids: padded (5 bytes in the 16-bit form, 200 in the 64-bit
    // one), also behind a good frame in the same write, and a 64-bit length with its top bit
    // set, which is not "too big" (1009) but malformed.
    let padded16 = [
        &[0x81, 0xFE, 0, 5, 1, 2, 3, 4][..],
        &[b'h' ^ 1, b'e' ^ 2, b'l' ^ 3, b'l' ^ 4, b'o' ^ 1],
    ]
    .concat();
    assert_eq!(violation(&gw, &padded16).await, 1002);
    let mut padded64 = vec![0x82, 0xFF, 0, 0, 0, 0, 0, 0, 0, 200, 1, 2, 3, 4];
    padded64.extend([0u8; 200]);
    let mut behind = frame(true, 1, MASK, b"ok");
    behind.extend(&padded64);
    assert_eq!(violation(&gw, &behind).await, 1002);
    let top_bit = [0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
    assert_eq!(violation(&gw, &top_bit).await, 1002);
    gw.stop().await;
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007_even_split_across_fragments() {
    let gw = Gateway::start(&config("")).await;
    assert_eq!(
        violation(&gw, &frame(true, 1, MASK, &[0xC3, 0x28])).await,
        1007
    );
    let euro = "€".as_bytes();
    let mut bytes = frame(false, 1, MASK, &euro[..2]);
    bytes.extend(frame(true, 0, MASK, &[0x28]));
    assert_eq!(violation(&gw, &bytes).await, 1007);
    gw.stop().await;
}

#[tokio::test]
async fn a_burst_is_echoed_up_to_a_bad_frame_then_closed() {
    let gw = Gateway::start(&config("")).await;
    let mut s = raw_ws(gw.addr(), "/ws").await;
    // One write, so the frames arrive together.
    let euro = "€".as_bytes();
    let burst = [
        frame(true, 1, MASK, b"one"),
        frame(true, 2, MASK, &[7; 300]),
        frame(false, 1, MASK, &euro[..2]),
        frame(true, 9, MASK, b"p"),
        frame(true, 0, MASK, &euro[2..]),
    ]
    .concat();
    s.write_all(&burst).await.unwrap();
    assert_eq!(read_frame(&mut s).await, (true, 1, b"one".to_vec()));
    assert_eq!(read_frame(&mut s).await, (true, 2, vec![7; 300]));
    assert_eq!(read_frame(&mut s).await, (true, 0xA, b"p".to_vec()));
    assert_eq!(read_frame(&mut s).await, (true, 1, euro.to_vec()));
    let bad = [
        frame(true, 1, MASK, b"before"),
        frame(true, 1, MASK, &[0xC3, 0x28]),
        frame(true, 1, MASK, b"never"),
    ]
    .concat();
    s.write_all(&bad).await.unwrap();
    assert_eq!(read_frame(&mut s).await, (true, 1, b"before".to_vec()));
    assert_eq!(read_close_code(&mut s).await, 1007);
    read_to_eof(&mut s).await;
    gw.stop().await;
}

#[tokio::test]
async fn oversized_frames_and_messages_close_with_1009() {
    let gw = Gateway::start(&config("")).await;
    // One 2 MiB frame over a 1 MiB cap.
    let mut s = raw_ws(gw.addr(), "/ws").await;
    let big = frame(true, 2, MASK, &vec![0u8; 2 << 20]);
    let (mut rd, mut wr) = s.split();
    let writer = async {
        let _ = wr.write_all(&big).await;
    };
    let reader = async {
        let mut h = [0u8; 4];
        rd.read_exact(&mut h).await.unwrap();
        assert_eq!(h[0] & 0x0f, 8, "expected a Close frame");
        u16::from_be_bytes([h[2], h[3]])
    };
    let (_, code) = tokio::join!(writer, tokio::time::timeout(WAIT, reader));
    assert_eq!(code.unwrap(), 1009);
    drop(s);

    // An 8 MiB message in 64 KiB fragments: refused once the total passes 1 MiB.
    let mut s = raw_ws(gw.addr(), "/ws").await;
    let (mut rd, mut wr) = s.split();
    let writer = send_fragmented(&mut wr, 128, 64 * 1024);
    let reader = async {
        let mut h = [0u8; 4];
        rd.read_exact(&mut h).await.unwrap();
        assert_eq!(h[0] & 0x0f, 8, "expected a Close frame");
        u16::from_be_bytes([h[2], h[3]])
    };
    let (_, code) = tokio::join!(writer, tokio::time::timeout(WAIT, reader));
    assert_eq!(code.unwrap(), 1009);
    drop(s);

    // A header announcing 2^62 bytes is refused without waiting for (or allocating) them.
    let mut s = raw_ws(gw.addr(), "/ws").await;
    let mut head = vec![0x82u8, 0x80 | 127];
    head.extend_from_slice(&(1u64 << 62).to_be_bytes());
    head.extend_from_slice(&[1, 2, 3, 4]);
    s.write_all(&head).await.unwrap();
    assert_eq!(read_close_code(&mut s).await, 1009);
    gw.stop().await;
}

#[tokio::test]
async fn subprotocol_is_the_first_offered_that_is_listed() {
    let gw = Gateway::start(&config("")).await;
    let req = format!("{UPGRADE}Sec-WebSocket-Protocol: other, chat.v2, chat.v1\r\n\r\n");
    let (_s, head) = raw_request(gw.addr(), req.as_bytes()).await;
    assert_eq!(status_of(&head), 101);
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-protocol: chat.v2"),
        "{head}"
    );
    let req = format!("{UPGRADE}Sec-WebSocket-Protocol: other\r\n\r\n");
    let (_s, head) = raw_request(gw.addr(), req.as_bytes()).await;
    assert_eq!(status_of(&head), 101);
    assert!(
        !head.to_ascii_lowercase().contains("sec-websocket-protocol"),
        "{head}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn bad_handshakes_get_400_or_426_and_the_connection_closes() {
    let gw = Gateway::start(&config("")).await;
    // Wrong version, with a second request pipelined behind it: 426, and nothing more is read.
    let req = UPGRADE.replace("Version: 13", "Version: 1337")
        + "\r\nGET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let (mut s, head) = raw_request(gw.addr(), req.as_bytes()).await;
    assert_eq!(status_of(&head), 426);
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-version: 13"),
        "{head}"
    );
    // RFC 9110 15.5.22: a 426 names what to upgrade to, as a hop-by-hop header Connection lists.
    assert_eq!(
        head_header(&head, "upgrade").as_deref(),
        Some("websocket"),
        "{head}"
    );
    assert_eq!(
        head_header(&head, "connection").as_deref(),
        Some("upgrade, close"),
        "{head}"
    );
    let rest = String::from_utf8_lossy(&read_to_eof(&mut s).await).into_owned();
    assert!(
        !rest.contains("HTTP/1.1 200"),
        "the pipelined request was served: {rest}"
    );

    let bad_key = UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ=") + "\r\n";
    let (_s, head) = raw_request(gw.addr(), bad_key.as_bytes()).await;
    assert_eq!(status_of(&head), 400);
    let no_conn = UPGRADE.replace("Connection: Upgrade", "Connection: keep-alive") + "\r\n";
    let (_s, head) = raw_request(gw.addr(), no_conn.as_bytes()).await;
    assert_eq!(status_of(&head), 400);
    let post = UPGRADE.replace("GET", "POST") + "Content-Length: 0\r\n\r\n";
    let (_s, head) = raw_request(gw.addr(), post.as_bytes()).await;
    assert_eq!(status_of(&head), 400);
    // A plain GET on an echo-only route says what the route speaks.
    let (_s, head) = raw_request(gw.addr(), b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status_of(&head), 426);
    assert_eq!(
        head_header(&head, "upgrade").as_deref(),
        Some("websocket"),
        "{head}"
    );
    assert_eq!(
        head_header(&head, "connection").as_deref(),
        Some("upgrade"),
        "{head}"
    );
    assert_eq!(
        head_header(&head, "sec-websocket-version").as_deref(),
        Some("13"),
        "{head}"
    );
    let (_s, head) = raw_request(gw.addr(), b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status_of(&head), 404);
    gw.stop().await;
}

/// RFC 9112 3.2: an upgrade is an HTTP/1.1 request like any other, so without exactly one Host
/// it gets 400, not a WebSocket.
#[tokio::test]
async fn an_upgrade_without_exactly_one_host_is_400() {
    let gw = Gateway::start(&config("")).await;
    let none = UPGRADE.replace("Host: localhost\r\n", "") + "\r\n";
    let two = format!("{UPGRADE}Host: elsewhere\r\n\r\n");
    for req in [none, two] {
        expect_refused(gw.addr(), req.as_bytes(), 400).await;
    }
    raw_ws(gw.addr(), "/ws").await;
    gw.stop().await;
}

#[tokio::test]
async fn origin_policy() {
    let extra = "  allowed_origins: [\"https://client.com\", \"https://*.example.com\"]\n";
    let gw = Gateway::start(&config(extra)).await;
    let with = |o: &str| format!("{UPGRADE}Origin: {o}\r\n\r\n");
    for (origin, status) in [
        ("https://client.com", 101),
        ("https://CLIENT.com:443", 101),
        ("https://app.example.com", 101),
        ("https://example.com", 403),
        ("http://client.com", 403),
        ("https://client.com:8443", 403),
        ("https://evil.com", 403),
    ] {
        let (_s, head) = raw_request(gw.addr(), with(origin).as_bytes()).await;
        assert_eq!(status_of(&head), status, "origin {origin}: {head}");
    }
    // No Origin (a non-browser client) is allowed unless require_origin.
    let (_s, head) = raw_request(gw.addr(), format!("{UPGRADE}\r\n").as_bytes()).await;
    assert_eq!(status_of(&head), 101);
    gw.stop().await;

    let gw = Gateway::start(&config("  require_origin: true\n")).await;
    let (_s, head) = raw_request(gw.addr(), format!("{UPGRADE}\r\n").as_bytes()).await;
    assert_eq!(status_of(&head), 403);
    let (_s, head) = raw_request(gw.addr(), with("http://any.where").as_bytes()).await;
    assert_eq!(status_of(&head), 101);
    gw.stop().await;
}

#[tokio::test]
async fn pings_at_the_interval_and_closes_a_silent_peer() {
    let extra = "  keep_alive_interval: 200ms\n  keep_alive_timeout: 300ms\n";
    let gw = Gateway::start(&config(extra)).await;
    // A peer that answers: pings keep coming, roughly at the interval.
    let mut s = raw_ws(gw.addr(), "/ws").await;
    let start = std::time::Instant::now();
    for _ in 0..3 {
        let (_, op, payload) = read_frame(&mut s).await;
        assert_eq!(op, 9, "expected a Ping");
        s.write_all(&frame(true, 0xA, MASK, &payload))
            .await
            .unwrap();
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(550),
        "three pings came in {elapsed:?}"
    );
    // A silent peer: a Ping, then Close 1001 after the timeout, then EOF.
    let mut s = raw_ws(gw.addr(), "/ws").await;
    let (_, op, _) = read_frame(&mut s).await;
    assert_eq!(op, 9);
    assert_eq!(read_close_code(&mut s).await, 1001);
    gw.stop().await;
}

/// A client that stops reading while it still sends leaves the echo's write waiting, where
/// no keep-alive Ping can reach it: once it has taken no bytes for as long as keep-alive would
/// allow (interval + timeout), it is dropped.
#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_at_the_stall_limit() {
    let extra = "  keep_alive_interval: 200ms\n  keep_alive_timeout: 300ms\n";
    let gw = Gateway::start(&config(extra)).await;
    flood_until_dropped(raw_ws(gw.addr(), "/ws").await).await;
    gw.stop().await;
}

/// With keep-alive off nothing judges such a client by time, but `max_connection_age` (as a
/// draining reload) still ends its session: the waiting write gets `close_timeout`, then the
/// connection is dropped.
#[tokio::test]
async fn a_client_that_stops_reading_is_still_retired_at_its_age() {
    let yaml = config("  keep_alive_interval: 0s\n")
        .replace("health_path:", "max_connection_age: 300ms\nhealth_path:");
    let gw = Gateway::start(&yaml).await;
    flood_until_dropped(raw_ws(gw.addr(), "/ws").await).await;
    gw.stop().await;
}

#[tokio::test]
async fn silent_and_trickling_clients_are_closed_at_the_header_timeout() {
    let yaml = format!(
        "listen:\n{}http:\n  header_read_timeout: 300ms\nroutes: []\n",
        plain_listener()
    );
    let gw = Gateway::start(&yaml).await;
    // Zero bytes.
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let started = std::time::Instant::now();
    read_to_eof(&mut s).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    // One byte at a time, never finishing the head.
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let trickle = async {
        for b in
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        {
            if s.write_all(&[*b]).await.is_err() {
                return true;
            }
            let mut probe = [0u8; 512];
            match tokio::time::timeout(Duration::from_millis(50), s.read(&mut probe)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => return true, // an error response, then close
                Err(_) => {}
            }
        }
        false
    };
    assert!(
        tokio::time::timeout(WAIT, trickle).await.unwrap(),
        "trickling client was never closed"
    );
    gw.stop().await;
}

/// Frames the client sends in the same write as its upgrade request are read by hyper with the
/// request: they are echoed, first.
#[tokio::test]
async fn frames_sent_with_the_upgrade_request_are_echoed_first() {
    let gw = Gateway::start(&config("")).await;
    let mut req = format!("{UPGRADE}\r\n").into_bytes();
    req.extend(frame(true, 1, MASK, b"with the request"));
    req.extend(frame(true, 2, MASK, &[0, 1, 2, 255]));
    let (mut s, head) = raw_request(gw.addr(), &req).await;
    assert_eq!(status_of(&head), 101, "{head}");
    assert_eq!(
        read_frame(&mut s).await,
        (true, 1, b"with the request".to_vec())
    );
    assert_eq!(read_frame(&mut s).await, (true, 2, vec![0, 1, 2, 255]));
    s.write_all(&frame(true, 1, MASK, b"later")).await.unwrap();
    assert_eq!(read_frame(&mut s).await, (true, 1, b"later".to_vec()));
    gw.stop().await;
}

/// A plain connection goes to hyper's HTTP/1 server when its first bytes cannot start the
/// HTTP/2 preface, and to the auto builder otherwise: both must answer alike, and HTTP/2 with
/// prior knowledge must still be served.
#[tokio::test]
async fn http1_and_http2_are_told_apart_by_the_first_bytes() {
    let gw = Gateway::start(&config("")).await;
    let post =
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let (_s, whole) = raw_request(gw.addr(), post).await;
    // "P" alone could begin "PRI * HTTP/2.0": it goes to the auto builder, which must answer the
    // same.
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(b"P").await.unwrap();
    s.flush().await.unwrap();
    s.write_all(&post[1..]).await.unwrap();
    let split = read_head(&mut s).await;
    assert!(whole.starts_with("HTTP/1.1 "), "{whole}");
    assert_eq!(status_of(&split), status_of(&whole), "{split}");

    let tcp = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let resp = h2_get(tcp, &format!("http://{}/healthz", gw.addr())).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    gw.stop().await;
}

/// HTTP/2 has no header timeout of its own: a connection with no request open for
/// `header_read_timeout` is closed, whether it went quiet after a request or stalls in the
/// middle of a header block.
#[tokio::test]
async fn an_idle_or_stalled_http2_connection_is_closed_after_the_header_timeout() {
    let yaml = config("").replace(
        "health_path",
        "http:\n  header_read_timeout: 300ms\nhealth_path",
    );
    let gw = Gateway::start(&yaml).await;
    let tcp = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/healthz", gw.addr()))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    assert_eq!(sender.send_request(req).await.unwrap().status(), 200);
    // Quiet after one request: the server ends the connection.
    tokio::time::timeout(WAIT, conn)
        .await
        .expect("closed within the wait")
        .unwrap()
        .unwrap();

    // The preface, SETTINGS, then a HEADERS frame without END_HEADERS whose block never ends.
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let mut stalled = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    stalled.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]);
    stalled.extend([0, 0, 2, 1, 0x01, 0, 0, 0, 1, 0x82, 0x86]);
    s.write_all(&stalled).await.unwrap();
    read_to_eof(&mut s).await;

    // The preface, SETTINGS and PINGs, but never a request: told so with a GOAWAY, as README
    // says, before the connection ends.
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    let mut quiet = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    quiet.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]);
    quiet.extend([0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
    s.write_all(&quiet).await.unwrap();
    let got = read_to_eof(&mut s).await;
    let mut types = Vec::new();
    let mut rest = &got[..];
    while rest.len() >= 9 {
        let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        types.push(rest[3]);
        rest = &rest[(9 + len).min(rest.len())..];
    }
    assert!(types.contains(&7), "no GOAWAY among frame types {types:?}");
    gw.stop().await;
}

/// An idle keep-alive HTTP/1 connection is closed once shutdown begins, not held until its
/// header timeout.
#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_shutdown() {
    let yaml = config("").replace(
        "health_path",
        "http:\n  header_read_timeout: 1m\nhealth_path",
    );
    let mut gw = Gateway::start(&yaml).await;
    let (mut s, head) = raw_request(gw.addr(), b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status_of(&head), 200);
    gw.begin_shutdown();
    read_to_eof(&mut s).await;
    gw.stop().await;
}

/// The page connects to the gateway's echo route wherever it is, and never stands in for a
/// route's upgrade (a page at `/echo/` is under the route `/echo`).
#[tokio::test]
async fn the_sample_page_points_at_the_echo_route_and_never_answers_an_upgrade() {
    let gw = Gateway::start(&format!(
        "listen:\n{}sample_page: /echo/\nroutes:\n  - path: /echo\n    websocket: echo\n",
        plain_listener()
    ))
    .await;
    let (mut s, head) = raw_request(
        gw.addr(),
        b"GET /echo/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&head), 200, "{head}");
    let page = String::from_utf8(read_to_eof(&mut s).await).unwrap();
    assert!(page.contains(r#"location.host + "/echo";"#), "{page}");
    let (status, head) = upgrade_status(gw.addr(), "/echo/", "localhost").await;
    assert_eq!(status, 101, "{head}");
    gw.stop().await;
}

/// Route paths are kept decoded, so the page gets its route's path percent-encoded again: the
/// URL it shows reaches the echo route, where the decoded `/a?b` would have asked for `/a`.
#[tokio::test]
async fn the_sample_page_url_for_an_encoded_route_path_reaches_it() {
    for (written, url_path) in [
        ("/a%3Fb", "/a%3Fb"),
        ("/a%23b", "/a%23b"),
        ("/a%25b", "/a%25b"),
        ("/a%20b", "/a%20b"),
        ("/t%09b", "/t%09b"),
        ("/café", "/caf%C3%A9"),
        ("'/q\"<>\\`'", "/q%22%3C%3E%5C%60"),
    ] {
        let gw = Gateway::start(&format!(
            "listen:\n{}sample_page: /page\nroutes:\n  - path: {written}\n    websocket: echo\n",
            plain_listener()
        ))
        .await;
        let (mut s, head) = raw_request(
            gw.addr(),
            b"GET /page HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status_of(&head), 200, "{head}");
        let page = String::from_utf8(read_to_eof(&mut s).await).unwrap();
        let (_, rest) = page.split_once("location.host + \"").expect("the URL line");
        let (literal, _) = rest.split_once("\";").expect("the end of the URL line");
        assert_eq!(literal, url_path, "{written}");
        let mut ws = connect(&gw.ws_url(literal)).await;
        ws.send(Message::text(written)).await.unwrap();
        assert_eq!(
            next_msg(&mut ws).await.unwrap().unwrap(),
            Message::text(written)
        );
        ws.close(None).await.unwrap();
        assert!(next_msg(&mut ws).await.unwrap().unwrap().is_close());
        // Its socket too, which the gateway waits for after the closing handshake.
        drop(ws);
        gw.stop().await;
    }
}

/// A route can be for an IPv6 literal host, matched whatever form the Host header writes it in.
#[tokio::test]
async fn a_route_for_an_ipv6_host() {
    let gw = Gateway::start(&format!(
        "listen:\n{}routes:\n  - path: /ws\n    host: \"[::1]\"\n    websocket: echo\n  - path: /ws\n    websocket: reject\n",
        plain_listener()
    ))
    .await;
    for (host, expected) in [("[::1]:5000", 101), ("[0:0::1]", 101), ("localhost", 403)] {
        let (status, head) = upgrade_status(gw.addr(), "/ws", host).await;
        assert_eq!(status, expected, "{host}: {head}");
    }
    gw.stop().await;
}

/// A path is routed as an app that decodes and normalises it would read it: percent-encoding is
/// decoded, dot segments and malformed escapes are refused and repeated slashes merged, so no
/// spelling of a path gets an upgrade past a `reject` route.
#[tokio::test]
async fn no_spelling_of_a_path_gets_past_a_reject_route() {
    let gw = Gateway::start(&format!(
        "listen:\n{}routes:\n  - path: /admin\n    websocket: reject\n  - path: /café\n    websocket: reject\n  - path: /\n    websocket: echo\n",
        plain_listener()
    ))
    .await;
    for (path, status) in [
        ("/ws", 101),
        ("/admin", 403),
        ("//admin", 403),
        ("/%61dmin/ws", 403),
        ("/adm%69n", 403),
        ("/ADM%49N", 101),
        ("/%2Fadmin", 403),
        ("/caf%C3%A9/x", 403),
        ("/%FFadmin", 101),
        ("/%2561dmin", 101),
        ("/x/../admin", 400),
        ("/%2e%2e/admin", 400),
        ("/./admin", 400),
        ("/x%2F..%2Fadmin", 400),
        ("/%", 400),
        ("/%z1dmin", 400),
        ("/admin%00", 400),
    ] {
        let (got, head) = upgrade_status(gw.addr(), path, "localhost").await;
        assert_eq!(got, status, "{path}: {head}");
        if status == 400 {
            assert_eq!(head_header(&head, "connection").as_deref(), Some("close"));
        }
    }
    gw.stop().await;
}

#[tokio::test]
async fn health_and_sample_page() {
    let gw = Gateway::start(&config("")).await;
    let (mut s, head) = raw_request(
        gw.addr(),
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&head), 200);
    assert_eq!(read_to_eof(&mut s).await, b"ok\n");
    // Health is read-only; an upgrade to a path with no route is refused and ends the
    // connection, as every refused upgrade does.
    let (_s, head) = raw_request(
        gw.addr(),
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&head), 405, "{head}");
    assert_eq!(head_header(&head, "allow").as_deref(), Some("GET, HEAD"));
    let nowhere = UPGRADE.replace("GET /ws ", "GET /nowhere ")
        + "\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    let (mut s, head) = raw_request(gw.addr(), nowhere.as_bytes()).await;
    assert_eq!(status_of(&head), 404, "{head}");
    assert!(
        head_header(&head, "connection").is_some_and(|c| c.contains("close")),
        "{head}"
    );
    let rest = String::from_utf8(read_to_eof(&mut s).await).unwrap();
    assert!(
        !rest.contains("HTTP/1.1"),
        "the pipelined request was answered: {rest}"
    );
    let (mut s, head) = raw_request(
        gw.addr(),
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&head), 200);
    let page = String::from_utf8(read_to_eof(&mut s).await).unwrap();
    for id in [
        "connectionUrl",
        "connectButton",
        "sendButton",
        "closeButton",
        "commsLog",
        "stateLabel",
    ] {
        assert!(page.contains(id), "page lacks #{id}");
    }
    gw.stop().await;

    // Shutdown: health flips to 503 at once while the listeners still accept for drain_delay,
    // then open WebSockets get 1001.
    let mut gw = Gateway::start(&draining_config()).await;
    let mut ws = connect(&gw.ws_url("/ws")).await;
    begin_draining(&mut gw).await;
    // Upgrades are served while the listeners accept (see
    // `an_upgrade_during_drain_delay_gets_101_then_1001`); one read after they stopped, on a
    // connection accepted before, is refused. Its head goes out in the window but for its
    // last CRLF, so the connection is mid-request when the listeners stop and is not dropped.
    let mut late = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    late.write_all(UPGRADE.as_bytes()).await.unwrap();
    tokio::time::timeout(WAIT, gw.shutdown.accepting_stopped().cancelled())
        .await
        .expect("the listeners never stopped");
    late.write_all(b"\r\n").await.unwrap();
    let head = read_head(&mut late).await;
    assert_eq!(status_of(&head), 503, "{head}");
    assert_eq!(
        head_header(&head, "connection").as_deref(),
        Some("close"),
        "{head}"
    );
    read_to_eof(&mut late).await;
    // In the words relay and passthrough use for a shutdown too.
    assert_eq!(
        expect_close_frame(&mut ws).await,
        (1001, "server shutting down".to_string())
    );
    gw.stop().await;
}

/// The echo config with a `drain_delay` long enough to act within.
fn draining_config() -> String {
    config("").replace("health_path", "drain_delay: 4s\nhealth_path")
}

/// Starts the graceful shutdown and waits until health answers 503: `drain_delay` has begun.
async fn begin_draining(gw: &mut Gateway) {
    gw.begin_shutdown();
    let flipped = async {
        loop {
            let (_s, head) =
                raw_request(gw.addr(), b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
            if status_of(&head) == 503 {
                break;
            }
            assert_eq!(status_of(&head), 200);
        }
    };
    tokio::time::timeout(WAIT, flipped)
        .await
        .expect("health never answered 503");
}

/// `drain_delay` is there for the connections a load balancer still sends while it notices the
/// 503: an upgrade among them is served, and closed with 1001 along with the others once the
/// listeners stop.
#[tokio::test]
async fn an_upgrade_during_drain_delay_gets_101_then_1001() {
    let mut gw = Gateway::start(&draining_config()).await;
    begin_draining(&mut gw).await;
    let mut ws = connect(&gw.ws_url("/ws")).await;
    assert!(
        !gw.shutdown.accepting_stopped().is_cancelled(),
        "drain_delay was over before the upgrade"
    );
    ws.send(Message::text("still served")).await.unwrap();
    assert_eq!(
        next_msg(&mut ws).await.unwrap().unwrap(),
        Message::text("still served")
    );
    assert_eq!(expect_close(&mut ws).await, 1001);
    assert!(gw.shutdown.accepting_stopped().is_cancelled());
    gw.stop().await;
}

/// A `reject` route without upstreams serves nothing: a plain request gets the upgrade's 403,
/// not a 426 inviting an upgrade that would then be refused.
#[tokio::test]
async fn a_reject_route_without_upstreams_refuses_plain_requests_with_403() {
    let yaml = format!(
        "listen:\n{}routes:\n  - path: /admin\n    websocket: reject\n  - path: /\n    websocket: echo\n",
        plain_listener()
    );
    let gw = Gateway::start(&yaml).await;
    let (_s, head) = raw_request(
        gw.addr(),
        b"GET /admin/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&head), 403, "{head}");
    assert_eq!(head_header(&head, "upgrade"), None, "{head}");
    assert_eq!(upgrade_status(gw.addr(), "/admin/x", "x").await.0, 403);
    // An echo-only route still answers a plain request with the 426 that names its protocol.
    let (_s, head) = raw_request(gw.addr(), b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(status_of(&head), 426, "{head}");
    gw.stop().await;
}
