//! Hostile input with an exact expected outcome each, none of which may reach an upstream.

mod common;

use std::sync::atomic::Ordering;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn echo_yaml() -> String {
    format!(
        "listen:\n{}websockets:\n  max_message_size: 1MiB\n  close_timeout: 300ms\nroutes:\n  - path: /ws\n    websocket: echo\n",
        plain_listener()
    )
}

#[tokio::test]
async fn ten_thousand_one_byte_fragments_are_reassembled() {
    let gw = Gateway::start(&echo_yaml()).await;
    let mut s = raw_ws(gw.addr(), "/ws").await;
    let mut bytes = Vec::with_capacity(10_000 * 7);
    for i in 0..10_000 {
        let op = if i == 0 { 2 } else { 0 };
        bytes.extend(frame(i == 9_999, op, MASK, &[(i % 256) as u8]));
    }
    s.write_all(&bytes).await.unwrap();
    let (fin, op, payload) = read_frame(&mut s).await;
    assert!(fin);
    assert_eq!(op, 2);
    assert_eq!(payload.len(), 10_000);
    assert!(payload
        .iter()
        .enumerate()
        .all(|(i, b)| *b == (i % 256) as u8));
    gw.stop().await;
}

#[tokio::test]
async fn a_ping_flood_is_answered_and_the_connection_stays_usable() {
    let gw = Gateway::start(&echo_yaml()).await;
    let mut s = raw_ws(gw.addr(), "/ws").await;
    let (mut rd, mut wr) = s.split();
    let flood = async {
        let mut bytes = Vec::new();
        for i in 0..5_000u32 {
            bytes.extend(frame(true, 9, MASK, &i.to_be_bytes()));
        }
        bytes.extend(frame(true, 1, MASK, b"after the flood"));
        wr.write_all(&bytes).await.unwrap();
    };
    let answers = async {
        let mut pongs = 0u32;
        loop {
            let mut h = [0u8; 2];
            rd.read_exact(&mut h).await.unwrap();
            let mut payload = vec![0u8; (h[1] & 0x7f) as usize];
            rd.read_exact(&mut payload).await.unwrap();
            match h[0] & 0x0f {
                0xA => {
                    assert_eq!(
                        payload,
                        pongs.to_be_bytes(),
                        "pongs answer the pings in order"
                    );
                    pongs += 1;
                }
                1 => {
                    assert_eq!(payload, b"after the flood");
                    return pongs;
                }
                op => panic!("unexpected opcode {op}"),
            }
        }
    };
    let ((), pongs) = tokio::join!(flood, tokio::time::timeout(WAIT, answers));
    assert_eq!(pongs.unwrap(), 5_000);
    drop(s);
    gw.stop().await;
}

#[tokio::test]
async fn an_8_mib_message_in_fragments_keeps_memory_bounded() {
    let gw = Gateway::start(&echo_yaml()).await;
    let before = proc_status_kib("VmRSS:").unwrap_or(0);
    // Eight clients at once each push 8 MiB in 64 KiB fragments against the 1 MiB cap.
    let mut clients = Vec::new();
    for _ in 0..8 {
        let addr = gw.addr();
        clients.push(tokio::spawn(async move {
            let mut s = raw_ws(addr, "/ws").await;
            let (mut rd, mut wr) = s.split();
            let writer = send_fragmented(&mut wr, 128, 64 * 1024);
            let reader = async {
                let mut h = [0u8; 4];
                rd.read_exact(&mut h).await.unwrap();
                u16::from_be_bytes([h[2], h[3]])
            };
            let (_, code) = tokio::join!(writer, tokio::time::timeout(WAIT, reader));
            code.unwrap()
        }));
    }
    for c in clients {
        assert_eq!(c.await.unwrap(), 1009);
    }
    let after = proc_status_kib("VmRSS:").unwrap_or(0);
    // 64 MiB were sent; the gateway (this process) may hold at most a message cap per client.
    assert!(
        after.saturating_sub(before) < 24 * 1024,
        "resident memory grew by {} KiB",
        after.saturating_sub(before)
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_bad_upgrade_never_reaches_an_upstream() {
    let mut app = spawn_raw_app().await;
    let yaml = format!(
        "listen:\n{}routes:\n  - path: /relay\n    upstreams: [{}]\n    websocket: relay\n    upstream_timeout: 500ms\n  - path: /pass\n    upstreams: [{}]\n    websocket: passthrough\n    upstream_timeout: 500ms\n",
        plain_listener(),
        app.url(),
        app.url()
    );
    let gw = Gateway::start(&yaml).await;
    for path in ["/relay", "/pass"] {
        // Version 1337 with a pipelined request behind it: 426, the connection closes, and the
        // pipelined request is never read.
        let req = UPGRADE
            .replace("GET /ws ", &format!("GET {path} "))
            .replace("Version: 13", "Version: 1337")
            + "\r\nGET /pass HTTP/1.1\r\nHost: x\r\n\r\n";
        let (mut s, head) = raw_request(gw.addr(), req.as_bytes()).await;
        assert_eq!(status_of(&head), 426, "{path}: {head}");
        read_to_eof(&mut s).await;
        // A key that is not 16 bytes.
        let req = UPGRADE
            .replace("GET /ws ", &format!("GET {path} "))
            .replace("dGhlIHNhbXBsZSBub25jZQ==", "AAAA")
            + "\r\n";
        let (_s, head) = raw_request(gw.addr(), req.as_bytes()).await;
        assert_eq!(status_of(&head), 400, "{path}: {head}");
    }
    assert_eq!(
        app.accepted.load(Ordering::SeqCst),
        0,
        "an upstream was contacted"
    );
    // The app is still there and reachable: a valid upgrade does reach it.
    let req = UPGRADE.replace("GET /ws ", "GET /pass ") + "\r\n";
    let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let _upstream = app.accept().await;
    assert_eq!(app.accepted.load(Ordering::SeqCst), 1);
    gw.stop().await;
}

#[tokio::test]
async fn max_connection_age_retires_sessions_with_1001() {
    let yaml = format!(
        "listen:\n{}max_connection_age: 300ms\nwebsockets:\n  close_timeout: 300ms\nroutes:\n  - path: /ws\n    websocket: echo\n",
        plain_listener()
    );
    let gw = Gateway::start(&yaml).await;
    let mut ws = connect(&gw.ws_url("/ws")).await;
    let started = std::time::Instant::now();
    assert_eq!(expect_close(&mut ws).await, 1001);
    let age = started.elapsed();
    assert!(
        age >= std::time::Duration::from_millis(250),
        "retired after {age:?}"
    );
    gw.stop().await;
}
