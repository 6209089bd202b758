//! Limits refuse with the right answer, and the client address they count is the real one
//! (PROXY protocol headers, trusted proxies' X-Forwarded-For).

mod common;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn yaml(listen_extra: &str, top: &str) -> String {
    format!(
        "listen:\n  - address: 127.0.0.1:0\n{listen_extra}{top}websockets:\n  close_timeout: 200ms\nroutes:\n  - path: /ws\n    websocket: echo\n"
    )
}

async fn upgrade(
    addr: std::net::SocketAddr,
    prefix: &[u8],
    extra_headers: &str,
) -> (TcpStream, u16) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = prefix.to_vec();
    req.extend_from_slice(format!("{UPGRADE}{extra_headers}\r\n").as_bytes());
    s.write_all(&req).await.unwrap();
    let head = read_head(&mut s).await;
    let status = status_of(&head);
    (s, status)
}

#[tokio::test]
async fn session_limits_refuse_with_503_and_rates_with_429() {
    let gw = Gateway::start(&yaml("", "limits:\n  max_connections: 2\n")).await;
    let (_a, s1) = upgrade(gw.addr(), b"", "").await;
    let (b, s2) = upgrade(gw.addr(), b"", "").await;
    let (_c, s3) = upgrade(gw.addr(), b"", "").await;
    assert_eq!((s1, s2, s3), (101, 101, 503));
    // A closed session gives its slot back.
    drop(b);
    let freed = async {
        loop {
            if upgrade(gw.addr(), b"", "").await.1 == 101 {
                break;
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(WAIT, freed)
        .await
        .expect("the slot was never freed");
    gw.stop().await;

    let gw = Gateway::start(&yaml("", "limits:\n  connection_rate_per_ip: 3\n")).await;
    let mut statuses = Vec::new();
    let mut keep = Vec::new();
    for _ in 0..4 {
        let (s, status) = upgrade(gw.addr(), b"", "").await;
        keep.push(s);
        statuses.push(status);
    }
    assert_eq!(statuses, [101, 101, 101, 429]);
    gw.stop().await;
}

#[tokio::test]
async fn message_rate_closes_with_1008() {
    use tokio::io::AsyncWriteExt;
    let gw = Gateway::start(&yaml("", "limits:\n  message_rate: 5\n")).await;
    let mut s = raw_ws(gw.addr(), "/ws").await;
    let mut burst = Vec::new();
    for _ in 0..20 {
        burst.extend(frame(true, 1, MASK, b"spam"));
    }
    s.write_all(&burst).await.unwrap();
    assert_eq!(read_close_code(&mut s).await, 1008);
    gw.stop().await;
}

fn proxy_v2(src: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = vec![
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x21, 0x11, 0, 12,
    ];
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&80u16.to_be_bytes());
    h
}

#[tokio::test]
async fn proxy_protocol_gives_the_real_client_address() {
    let gw = Gateway::start(&yaml(
        "    proxy_protocol: true\n",
        "limits:\n  max_connections_per_ip: 1\n",
    ))
    .await;
    // Two clients behind the balancer: distinct addresses, so both get in.
    let (_a, s1) = upgrade(
        gw.addr(),
        b"PROXY TCP4 192.0.2.1 127.0.0.1 40000 80\r\n",
        "",
    )
    .await;
    let (_b, s2) = upgrade(gw.addr(), &proxy_v2([192, 0, 2, 2], 40001), "").await;
    // The same client again (v1 and v2 agree on who it is): over its limit.
    let (_c, s3) = upgrade(gw.addr(), &proxy_v2([192, 0, 2, 1], 40002), "").await;
    assert_eq!((s1, s2, s3), (101, 101, 503));
    // A LOCAL header (the balancer's own health check) is served as the TCP peer.
    let mut local = vec![
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x20, 0x00, 0, 0,
    ];
    local.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let (_s, head) = raw_request(gw.addr(), &local).await;
    assert_eq!(status_of(&head), 200);
    // Garbage instead of a header: the connection is closed without an answer.
    let mut s = TcpStream::connect(gw.addr()).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_to_eof(&mut s).await.is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn trusted_proxies_forwarded_for_is_believed_only_from_them() {
    let top = "limits:\n  max_connections_per_ip: 1\ntrusted_proxies: [127.0.0.0/8]\n";
    let gw = Gateway::start(&yaml("", top)).await;
    let (_a, s1) = upgrade(gw.addr(), b"", "X-Forwarded-For: 198.51.100.1\r\n").await;
    let (_b, s2) = upgrade(gw.addr(), b"", "X-Forwarded-For: 198.51.100.2\r\n").await;
    // A client cannot dodge the limit by prepending its own entries: the right-most untrusted
    // address counts.
    let (_c, s3) = upgrade(
        gw.addr(),
        b"",
        "X-Forwarded-For: 203.0.113.9, 198.51.100.1\r\n",
    )
    .await;
    assert_eq!((s1, s2, s3), (101, 101, 503));
    gw.stop().await;

    // From an untrusted peer the header is ignored: both requests are 127.0.0.1.
    let gw = Gateway::start(&yaml(
        "",
        "limits:\n  max_connections_per_ip: 1\ntrusted_proxies: [10.0.0.0/8]\n",
    ))
    .await;
    let (_a, s1) = upgrade(gw.addr(), b"", "X-Forwarded-For: 198.51.100.1\r\n").await;
    let (_b, s2) = upgrade(gw.addr(), b"", "X-Forwarded-For: 198.51.100.2\r\n").await;
    assert_eq!((s1, s2), (101, 503));
    gw.stop().await;
}
