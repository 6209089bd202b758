//! TLS listeners: wss echo, certificate choice by SNI, and HTTP/2 or HTTP/1.1 by ALPN.

mod common;

use std::sync::Arc;

use common::*;
use futures_util::SinkExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tungstenite::Message;

fn config(pki: &TestPki) -> String {
    let (a_crt, a_key) = pki.issue("alpha", &["alpha.test", "localhost"]);
    let (b_crt, b_key) = pki.issue("beta", &["beta.test", "*.beta.test"]);
    format!(
        "listen:\n  - address: 127.0.0.1:0\n    tls:\n      certificates:\n        - {{ cert: {}, key: {} }}\n        - {{ cert: {}, key: {} }}\nsample_page: /\nwebsockets:\n  close_timeout: 300ms\nroutes:\n  - path: /ws\n    websocket: echo\n",
        a_crt.display(),
        a_key.display(),
        b_crt.display(),
        b_key.display()
    )
}

/// Completes a TLS handshake for `sni` and returns the stream and the served leaf certificate.
async fn tls_connect(
    addr: std::net::SocketAddr,
    client: Arc<rustls::ClientConfig>,
    sni: &str,
) -> (tokio_rustls::client::TlsStream<TcpStream>, Vec<u8>) {
    let connector = tokio_rustls::TlsConnector::from(client);
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let stream = tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .unwrap()
        .expect("TLS handshake verifies against the test CA");
    let leaf = stream.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    (stream, leaf)
}

#[tokio::test]
async fn wss_echo_and_sni_picks_the_certificate() {
    let pki = TestPki::new();
    let gw = Gateway::start(&config(&pki)).await;
    let client = pki.client_config();

    // SNI beta.test and a name under its wildcard get the beta certificate; alpha gets alpha.
    let (_s, alpha) = tls_connect(gw.addr(), client.clone(), "alpha.test").await;
    let (_s, beta) = tls_connect(gw.addr(), client.clone(), "beta.test").await;
    let (_s, sub) = tls_connect(gw.addr(), client.clone(), "x.beta.test").await;
    assert_ne!(alpha, beta);
    assert_eq!(beta, sub);
    let alpha_pem = std::fs::read_to_string(pki.dir.path().join("alpha.crt")).unwrap();
    assert!(alpha_pem.contains("BEGIN CERTIFICATE"));

    // A plain HTTP request over TLS.
    let (mut s, _) = tls_connect(gw.addr(), client.clone(), "localhost").await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = Vec::new();
    s.read_to_end(&mut body).await.unwrap();
    assert!(String::from_utf8_lossy(&body).starts_with("HTTP/1.1 200"));

    // wss echo through tokio-tungstenite with our CA.
    let url = format!("wss://localhost:{}/ws", gw.addr().port());
    let connector = tokio_tungstenite::Connector::Rustls(client.clone());
    let (mut ws, _) =
        tokio_tungstenite::connect_async_tls_with_config(url, None, false, Some(connector))
            .await
            .expect("wss connect");
    ws.send(Message::text("over tls")).await.unwrap();
    assert_eq!(
        next_msg(&mut ws).await.unwrap().unwrap(),
        Message::text("over tls")
    );
    let big = vec![7u8; 1 << 20];
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(
        next_msg(&mut ws).await.unwrap().unwrap(),
        Message::binary(big)
    );
    ws.close(None).await.unwrap();
    gw.stop().await;
}

#[tokio::test]
async fn alpn_offers_h2_and_http11() {
    let pki = TestPki::new();
    let gw = Gateway::start(&config(&pki)).await;
    let mut cfg = (*pki.client_config()).clone();
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let (s, _) = tls_connect(gw.addr(), Arc::new(cfg), "localhost").await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    // h2 chosen: HTTP/2 is served.
    let resp = h2_get(s, "https://localhost/").await;
    assert_eq!(
        (resp.status().as_u16(), resp.version()),
        (200, http::Version::HTTP_2)
    );

    // h2 chosen, then HTTP/1.1 spoken (RFC 9113 3.4: a connection error): no answer but the
    // end of the connection, and certainly no upgrade.
    let mut cfg = (*pki.client_config()).clone();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let (mut s, _) = tls_connect(gw.addr(), Arc::new(cfg), "localhost").await;
    s.write_all(format!("{UPGRADE}\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut answer))
        .await
        .expect("closed within the wait");
    assert!(!answer.starts_with(b"HTTP/1.1"), "{answer:?}");

    // http/1.1 chosen: a WebSocket upgrade, with a frame in the same write that hyper reads
    // along with the request; it is echoed first.
    let mut cfg = (*pki.client_config()).clone();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let (mut s, _) = tls_connect(gw.addr(), Arc::new(cfg), "localhost").await;
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut req = format!("{UPGRADE}\r\n").into_bytes();
    req.extend(frame(true, 1, MASK, b"with the request"));
    s.write_all(&req).await.unwrap();
    let head = read_head(&mut s).await;
    assert_eq!(status_of(&head), 101, "{head}");
    assert_eq!(
        read_frame(&mut s).await,
        (true, 1, b"with the request".to_vec())
    );
    s.write_all(&frame(true, 2, MASK, &[1, 2, 3]))
        .await
        .unwrap();
    assert_eq!(read_frame(&mut s).await, (true, 2, vec![1, 2, 3]));
    gw.stop().await;
}
