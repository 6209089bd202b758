//! Relay over real sockets: the gateway terminates the client's WebSocket and opens its own to
//! an app written with tokio-tungstenite (or driven byte by byte), and both legs are checked.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::Message;

fn config(upstream: &str, ws_extra: &str, route_extra: &str) -> String {
    format!(
        "listen:\n{}websockets:\n  max_message_size: 1MiB\n  close_timeout: 2s\n{ws_extra}routes:\n  - path: /ws\n    websocket: relay\n    upstream_timeout: 2s\n    upstreams: [\"{upstream}\"]\n{route_extra}",
        plain_listener()
    )
}

async fn relay_to(app: &str) -> Gateway {
    Gateway::start(&config(app, "", "")).await
}

#[tokio::test]
async fn relays_text_binary_and_large_messages() {
    let mut app = spawn_ws_app(None).await;
    let gw = relay_to(&app.url()).await;
    let mut ws = connect(&gw.ws_url("/ws?room=1")).await;
    let (target, headers) = app.next_upgrade().await;
    assert_eq!(target, "/ws?room=1");
    assert_eq!(headers["host"], app.addr.to_string());
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], gw.addr().to_string());

    ws.send(Message::text("hello relay")).await.unwrap();
    assert_eq!(
        next_msg(&mut ws).await.unwrap().unwrap(),
        Message::text("hello relay")
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
    // An empty Close reaches the app as 1000, and the app's answer comes back.
    ws.close(None).await.unwrap();
    assert_eq!(app.next_end().await, Ok(Some((1000, String::new()))));
    assert_eq!(expect_close(&mut ws).await, 1000);
    drop(ws);
    gw.stop().await;
}

/// The app sees the client's cookies, so the cookies it sets on its 101 reach the client, as
/// they do in passthrough; its other fields there (its own Accept) stay on its leg.
#[tokio::test]
async fn the_apps_cookies_on_its_101_reach_the_client() {
    let mut app = spawn_raw_app().await;
    let gw = relay_to(&app.url()).await;
    let client = spawn_request(gw.addr(), format!("{UPGRADE}\r\n"));
    let mut up = app.accept().await;
    answer_upgrade(
        &mut up,
        "Set-Cookie: session=xyz; HttpOnly\r\nSet-Cookie: lang=en\r\nX-App: leg\r\n",
    )
    .await;
    let (c, resp) = client.await.unwrap();
    assert_eq!(status_of(&resp), 101, "{resp}");
    let cookies: Vec<&str> = resp
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.trim())
        .collect();
    assert_eq!(cookies, ["session=xyz; HttpOnly", "lang=en"], "{resp}");
    assert_eq!(head_header(&resp, "x-app"), None, "{resp}");
    assert!(resp.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{resp}");
    drop((c, up));
    gw.stop().await;
}

#[tokio::test]
async fn frames_are_forwarded_as_they_come_and_masked_towards_the_app() {
    let mut app = spawn_raw_app().await;
    let gw = relay_to(&app.url()).await;
    let req = format!(
        "{UPGRADE}Origin: https://front.example\r\nCookie: session=abc\r\nAuthorization: Bearer t\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
    );
    let client = spawn_request(gw.addr(), req);
    let mut up = app.accept().await;
    let head = answer_upgrade(&mut up, "").await;
    let (mut c, resp) = client.await.unwrap();
    assert_eq!(status_of(&resp), 101, "{resp}");
    assert!(resp.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{resp}");
    assert!(
        !resp
            .to_ascii_lowercase()
            .contains("sec-websocket-extensions"),
        "{resp}"
    );
    // wsgate's own key and no compression towards the app; the client's credentials go along.
    let key = head_header(&head, "sec-websocket-key").unwrap();
    assert_ne!(key, "dGhlIHNhbXBsZSBub25jZQ==");
    assert_eq!(head_header(&head, "sec-websocket-extensions"), None);
    assert_eq!(head_header(&head, "sec-websocket-version").unwrap(), "13");
    assert_eq!(
        head_header(&head, "origin").unwrap(),
        "https://front.example"
    );
    assert_eq!(head_header(&head, "cookie").unwrap(), "session=abc");
    assert_eq!(head_header(&head, "authorization").unwrap(), "Bearer t");

    // A fragmented message with a Ping in between: fragments arrive as fragments, re-masked;
    // the Ping is answered by the gateway and never reaches the app.
    c.write_all(&frame(false, 1, MASK, b"frag")).await.unwrap();
    c.write_all(&frame(true, 9, MASK, b"p")).await.unwrap();
    c.write_all(&frame(false, 0, MASK, b"men")).await.unwrap();
    c.write_all(&frame(true, 0, MASK, "ted €".as_bytes()))
        .await
        .unwrap();
    assert_eq!(
        read_app_frame(&mut up).await,
        (false, 1, true, b"frag".to_vec())
    );
    assert_eq!(
        read_app_frame(&mut up).await,
        (false, 0, true, b"men".to_vec())
    );
    assert_eq!(
        read_app_frame(&mut up).await,
        (true, 0, true, "ted €".as_bytes().to_vec())
    );
    assert_eq!(read_frame(&mut c).await, (true, 0xA, b"p".to_vec()));

    // The app's Ping is answered towards the app; its fragments reach the client unmasked.
    up.write_all(&frame(true, 9, None, b"hi")).await.unwrap();
    assert_eq!(
        read_app_frame(&mut up).await,
        (true, 0xA, true, b"hi".to_vec())
    );
    up.write_all(&frame(false, 2, None, &[1, 2])).await.unwrap();
    up.write_all(&frame(true, 0, None, &[3])).await.unwrap();
    assert_eq!(read_frame(&mut c).await, (false, 2, vec![1, 2]));
    assert_eq!(read_frame(&mut c).await, (true, 0, vec![3]));

    // Close code and reason travel to the app; its answer travels back; both TCP legs end.
    let mut bye = 4001u16.to_be_bytes().to_vec();
    bye.extend_from_slice(b"bye");
    c.write_all(&frame(true, 8, MASK, &bye)).await.unwrap();
    assert_eq!(read_app_frame(&mut up).await, (true, 8, true, bye.clone()));
    up.write_all(&frame(true, 8, None, &bye)).await.unwrap();
    assert_eq!(read_frame(&mut c).await, (true, 8, bye));
    assert!(read_to_eof(&mut c).await.is_empty());
    drop((c, up));
    gw.stop().await;
}

/// Reads a frame under 64 KiB as the app gets it: (first header byte, masking key, payload
/// unmasked).
async fn read_masked<S: tokio::io::AsyncRead + Unpin>(up: &mut S) -> (u8, [u8; 4], Vec<u8>) {
    let h = read_exactly(up, 2).await;
    assert_ne!(h[1] & 0x80, 0, "frames to the app are masked");
    let len = match h[1] & 0x7f {
        126 => u16::from_be_bytes(read_exactly(up, 2).await.try_into().unwrap()) as usize,
        n => n as usize,
    };
    let key: [u8; 4] = read_exactly(up, 4).await.try_into().unwrap();
    let mut payload = read_exactly(up, len).await;
    xor_at(&mut payload, key, 0);
    (h[0], key, payload)
}

/// Frames that share a write with a handshake (the client's behind its upgrade request, the
/// app's behind its 101) are read by hyper with the handshake: they must still be relayed, first.
#[tokio::test]
async fn frames_sent_with_either_handshake_are_relayed_first() {
    let mut app = spawn_raw_app().await;
    let gw = relay_to(&app.url()).await;
    let mut req = format!("{UPGRADE}\r\n").into_bytes();
    req.extend(frame(true, 1, MASK, b"with the request"));
    req.extend(frame(true, 2, MASK, &[0, 1, 2, 255]));
    let client = spawn_request(gw.addr(), req);
    let mut up = app.accept().await;
    let mut greeting = frame(true, 1, None, b"with the 101");
    greeting.extend(frame(true, 2, None, &[9, 8, 7]));
    answer_upgrade_then(&mut up, "", &greeting).await;
    let (mut c, head) = client.await.unwrap();
    assert_eq!(status_of(&head), 101, "{head}");

    assert_eq!(
        read_frame(&mut c).await,
        (true, 1, b"with the 101".to_vec())
    );
    assert_eq!(read_frame(&mut c).await, (true, 2, vec![9, 8, 7]));
    let (h, _, payload) = read_masked(&mut up).await;
    assert_eq!((h, payload.as_slice()), (0x81, &b"with the request"[..]));
    let (h, _, payload) = read_masked(&mut up).await;
    assert_eq!((h, payload.as_slice()), (0x82, &[0u8, 1, 2, 255][..]));
    // And the socket after them, both ways.
    relays_later_frames(&mut c, &mut up).await;
    drop((c, up));
    gw.stop().await;
}

/// One frame each way after the early ones, read from the sockets themselves.
async fn relays_later_frames<A>(c: &mut TcpStream, up: &mut A)
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    c.write_all(&frame(true, 1, MASK, b"later")).await.unwrap();
    let (h, _, payload) = read_masked(up).await;
    assert_eq!((h, payload.as_slice()), (0x81, &b"later"[..]));
    up.write_all(&frame(true, 1, None, b"later too"))
        .await
        .unwrap();
    assert_eq!(read_frame(c).await, (true, 1, b"later too".to_vec()));
}

/// The same from an app behind TLS: its frame shares a TLS record with its 101, and the relay
/// takes the upstream's TLS stream back from hyper with what hyper decrypted past the 101.
#[tokio::test]
async fn frames_sent_with_a_tls_apps_101_are_relayed_first() {
    let pki = TestPki::new();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls_server_config(&pki, "app", &["127.0.0.1"]));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    let route = format!("    ca: {}\n", ca_pem_file(&pki).display());
    let gw = Gateway::start(&config(&format!("wss://{app}"), "", &route)).await;
    let client = spawn_request(gw.addr(), format!("{UPGRADE}\r\n"));
    let (tcp, _) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .expect("the relay connects within the wait")
        .unwrap();
    let mut up = acceptor.accept(tcp).await.unwrap();
    answer_upgrade_then(&mut up, "", &frame(true, 1, None, b"with the 101")).await;
    let (mut c, head) = client.await.unwrap();
    assert_eq!(status_of(&head), 101, "{head}");

    assert_eq!(
        read_frame(&mut c).await,
        (true, 1, b"with the 101".to_vec())
    );
    relays_later_frames(&mut c, &mut up).await;
    drop((c, up));
    gw.stop().await;
}

#[tokio::test]
async fn a_burst_of_small_frames_goes_on_checked_and_each_under_a_key_of_its_own() {
    let mut app = spawn_raw_app().await;
    let gw = relay_to(&app.url()).await;
    let (mut c, mut up) = raw_pair(&gw, &mut app).await;
    // One write, so the frames arrive together: data frames around a Ping and fragmented
    // messages, a 16-bit length among 7-bit ones, small and larger payloads (a binary one is
    // unmasked and masked again in one pass, a text one in two).
    let euro = "€".as_bytes();
    let text = "é".repeat(50);
    let burst = [
        frame(true, 1, MASK, b"one"),
        frame(true, 2, MASK, &[7; 300]),
        frame(true, 9, MASK, b"p"),
        frame(false, 1, MASK, &euro[..2]),
        frame(true, 0, MASK, &euro[2..]),
        frame(true, 1, MASK, text.as_bytes()),
        frame(false, 2, MASK, &[3; 70]),
        frame(true, 0, MASK, &[4; 80]),
    ]
    .concat();
    c.write_all(&burst).await.unwrap();
    let mut keys = Vec::new();
    for (b0, payload) in [
        (0x81, b"one".to_vec()),
        (0x82, vec![7; 300]),
        (0x01, euro[..2].to_vec()),
        (0x80, euro[2..].to_vec()),
        (0x81, text.as_bytes().to_vec()),
        (0x02, vec![3; 70]),
        (0x80, vec![4; 80]),
    ] {
        let (got, key, body) = read_masked(&mut up).await;
        assert_eq!((got, body), (b0, payload));
        keys.push(key);
    }
    assert_eq!(read_frame(&mut c).await, (true, 0xA, b"p".to_vec()));
    keys.push(MASK.unwrap());
    keys.sort();
    keys.dedup();
    assert_eq!(
        keys.len(),
        8,
        "the client's key, or one key twice: {keys:?}"
    );

    // The app's burst reaches the client byte for byte.
    let back = [
        frame(true, 1, None, b"a"),
        frame(true, 2, None, &[9; 300]),
        frame(false, 1, None, &euro[..1]),
        frame(true, 0, None, &euro[1..]),
    ]
    .concat();
    up.write_all(&back).await.unwrap();
    assert_eq!(read_exactly(&mut c, back.len()).await, back);

    // A bad frame in the middle of a burst: what came before it goes on, then the Closes.
    let bad = [
        frame(true, 1, MASK, b"before"),
        frame(true, 1, MASK, &[0xC3, 0x28]),
        frame(true, 1, MASK, b"after"),
    ]
    .concat();
    c.write_all(&bad).await.unwrap();
    let (b0, _, body) = read_masked(&mut up).await;
    assert_eq!((b0, &body[..]), (0x81, &b"before"[..]));
    let (b0, _, body) = read_masked(&mut up).await;
    assert_eq!((b0, u16::from_be_bytes([body[0], body[1]])), (0x88, 1001));
    assert_eq!(read_close_code(&mut c).await, 1007);
    drop((c, up));
    gw.stop().await;
}

/// XORs `data` with `key` as it applies `offset` bytes into a payload.
fn xor_at(data: &mut [u8], key: [u8; 4], offset: usize) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= key[(offset + i) % 4];
    }
}

/// The client has sent the header of a 300 kB binary frame and its first 100 kB; `rest` is
/// the rest. Checks that the app has the header and those 100 kB before `rest` is sent, masked
/// with a key of wsgate's, and then the rest.
async fn app_gets_streamed(c: &mut TcpStream, up: &mut TcpStream, payload: &[u8], rest: &[u8]) {
    let head = read_exactly(up, 14).await;
    assert_eq!(&head[..2], &[0x82, 0x80 | 127]);
    assert_eq!(u64::from_be_bytes(head[2..10].try_into().unwrap()), 300_000);
    let key: [u8; 4] = head[10..14].try_into().unwrap();
    assert_ne!(Some(key), MASK, "the client's key went on to the app");
    let mut got = read_exactly(up, 100_000).await;
    xor_at(&mut got, key, 0);
    assert_eq!(got, payload[..100_000]);
    c.write_all(rest).await.unwrap();
    let mut got = read_exactly(up, 200_000).await;
    xor_at(&mut got, key, 100_000);
    assert_eq!(got, payload[100_000..]);
}

#[tokio::test]
async fn large_binary_frames_stream_through_before_they_end_under_a_new_key() {
    let mut app = spawn_raw_app().await;
    let gw = relay_to(&app.url()).await;
    let (mut c, mut up) = raw_pair(&gw, &mut app).await;
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();

    // Client to app: the app has the header and the first 100 kB while the client still holds
    // the rest, masked with wsgate's key, not the client's.
    let wire = frame(true, 2, MASK, &payload);
    let (first, rest) = wire.split_at(14 + 100_000);
    c.write_all(first).await.unwrap();
    app_gets_streamed(&mut c, &mut up, &payload, rest).await;

    // A large frame that arrives right behind a small one, in the same write, streams too.
    let burst = [
        frame(true, 1, MASK, b"first"),
        frame(true, 2, MASK, &payload),
    ]
    .concat();
    let (first, rest) = burst.split_at(11 + 14 + 100_000);
    c.write_all(first).await.unwrap();
    assert_eq!(
        read_app_frame(&mut up).await,
        (true, 1, true, b"first".to_vec())
    );
    app_gets_streamed(&mut c, &mut up, &payload, rest).await;

    // App to client, as a fragment this time: unmasked, FIN and opcode kept, streamed too.
    let wire = frame(false, 2, None, &payload);
    let (first, rest) = wire.split_at(10 + 100_000);
    up.write_all(first).await.unwrap();
    let head = read_exactly(&mut c, 10).await;
    assert_eq!(&head[..2], &[0x02, 127]);
    assert_eq!(read_exactly(&mut c, 100_000).await, payload[..100_000]);
    up.write_all(rest).await.unwrap();
    assert_eq!(read_exactly(&mut c, 200_000).await, payload[100_000..]);
    // The message goes on in a small frame read whole; the app still gets Pongs.
    up.write_all(&frame(true, 0, None, b"end")).await.unwrap();
    assert_eq!(read_frame(&mut c).await, (true, 0, b"end".to_vec()));
    c.write_all(&frame(true, 9, MASK, b"p")).await.unwrap();
    assert_eq!(read_frame(&mut c).await, (true, 0xA, b"p".to_vec()));
    c.write_all(&frame(true, 1, MASK, b"after")).await.unwrap();
    assert_eq!(
        read_app_frame(&mut up).await,
        (true, 1, true, b"after".to_vec())
    );
    drop((c, up));
    gw.stop().await;
}

#[tokio::test]
async fn a_peer_gone_in_the_middle_of_a_streamed_frame_leaves_the_other_leg_without_a_close() {
    // The client vanishes: the app has what was sent, then the end of the stream, no Close
    // (none can follow a partial frame), at once rather than after `close_timeout` (a minute
    // here, beyond the test's wait).
    let mut app = spawn_raw_app().await;
    let gw = Gateway::start(&config(&app.url(), "", "    close_timeout: 60s\n")).await;
    let (mut c, mut up) = raw_pair(&gw, &mut app).await;
    let wire = frame(true, 2, MASK, &vec![5u8; 300_000]);
    c.write_all(&wire[..14 + 100_000]).await.unwrap();
    read_exactly(&mut up, 14 + 100_000).await;
    drop(c);
    assert_eq!(read_to_eof(&mut up).await, b"");
    drop(up);

    // The client stalls past the keep-alive timeout: it gets 1001, the app the end of the stream.
    // The first Ping is due after a second, well after the frame has started.
    let ws = "  keep_alive_interval: 1s\n  keep_alive_timeout: 300ms\n";
    let gw2 = Gateway::start(&config(&app.url(), ws, "")).await;
    let (mut c, mut up) = raw_pair(&gw2, &mut app).await;
    c.write_all(&wire[..14 + 100_000]).await.unwrap();
    assert_eq!(read_exactly(&mut up, 14 + 100_000).await[0], 0x82);
    assert_eq!(read_close_code(&mut c).await, 1001);
    assert_eq!(
        read_to_eof(&mut up).await,
        b"",
        "nothing after a partial frame"
    );

    // A text frame is never streamed: bad UTF-8 at its very end is refused before a byte of
    // it reaches the app, which gets 1001.
    let mut text = vec![b'a'; 300_000];
    text[299_999] = 0xFF;
    let (mut c, mut up) = raw_pair(&gw, &mut app).await;
    c.write_all(&frame(true, 1, MASK, &text)).await.unwrap();
    assert_eq!(read_close_code(&mut c).await, 1007);
    let (_, op, _, payload) = read_app_frame(&mut up).await;
    assert_eq!(
        (op, u16::from_be_bytes([payload[0], payload[1]])),
        (8, 1001)
    );
    drop((c, up));
    gw.stop().await;
    gw2.stop().await;
}

/// A Close passed on and never answered by the other party is answered by wsgate itself once
/// `close_timeout` has passed, with the initiator's own code (RFC 6455 5.5.1), and then both
/// connections end.
#[tokio::test]
async fn an_unanswered_close_is_answered_after_close_timeout() {
    let mut app = spawn_raw_app().await;
    let gw = Gateway::start(&config(&app.url(), "", "    close_timeout: 300ms\n")).await;

    // The client closes; the app reads the Close and never answers.
    let (mut c, mut up) = raw_pair(&gw, &mut app).await;
    let close = frame(true, 8, MASK, &[0x0f, 0xa0, b'b', b'y', b'e']);
    c.write_all(&close).await.unwrap();
    let (_, op, _, payload) = read_app_frame(&mut up).await;
    assert_eq!((op, &payload[..2]), (8, &[0x0f, 0xa0][..]));
    assert_eq!(read_close_code(&mut c).await, 4000);
    assert_eq!(read_to_eof(&mut c).await, b"");
    assert_eq!(read_to_eof(&mut up).await, b"");

    // The app closes; the client reads the Close and never answers.
    let (mut c, mut up) = raw_pair(&gw, &mut app).await;
    up.write_all(&frame(true, 8, None, &[0x0f, 0xa1]))
        .await
        .unwrap();
    assert_eq!(read_close_code(&mut c).await, 4001);
    let (_, op, masked, payload) = read_app_frame(&mut up).await;
    assert_eq!((op, masked, &payload[..2]), (8, true, &[0x0f, 0xa1][..]));
    assert_eq!(read_to_eof(&mut up).await, b"");
    assert_eq!(read_to_eof(&mut c).await, b"");
    gw.stop().await;
}

/// `limits.message_rate` holds for relayed sessions as for echo: the client's message past the
/// burst gets 1008 and never reaches the app, which gets 1001; whichever way the frames are
/// read (a burst walked in place, or behind a Ping, through the frame reader).
#[tokio::test]
async fn message_rate_closes_a_relayed_client_with_1008() {
    let mut app = spawn_raw_app().await;
    let yaml = config(&app.url(), "", "") + "limits:\n  message_rate: 5\n";
    let gw = Gateway::start(&yaml).await;
    for first in [vec![], frame(true, 9, MASK, b"p")] {
        let (mut c, mut up) = raw_pair(&gw, &mut app).await;
        let mut burst = first.clone();
        for _ in 0..20 {
            burst.extend(frame(true, 1, MASK, b"spam"));
        }
        c.write_all(&burst).await.unwrap();
        assert_eq!(read_close_code(&mut c).await, 1008);
        let mut messages = 0;
        let code = loop {
            let (_, op, _, payload) = read_app_frame(&mut up).await;
            match op {
                1 => messages += 1,
                8 => break u16::from_be_bytes([payload[0], payload[1]]),
                _ => {}
            }
        };
        assert_eq!((messages, code), (5, 1001));
    }
    gw.stop().await;
}

#[tokio::test]
async fn subprotocol_is_the_apps_choice_among_the_offered() {
    let mut app = spawn_ws_app(Some("chat.v2")).await;
    let gw = relay_to(&app.url()).await;
    let req = format!("{UPGRADE}Sec-WebSocket-Protocol: chat.v1, chat.v2\r\n\r\n");
    let (s1, head) = raw_request(gw.addr(), req.as_bytes()).await;
    assert_eq!(status_of(&head), 101, "{head}");
    assert_eq!(
        head_header(&head, "sec-websocket-protocol").as_deref(),
        Some("chat.v2")
    );
    let (_, headers) = app.next_upgrade().await;
    assert_eq!(headers["sec-websocket-protocol"], "chat.v1, chat.v2");
    let req = format!("{UPGRADE}Sec-WebSocket-Protocol: chat.v1\r\n\r\n");
    let (s2, head) = raw_request(gw.addr(), req.as_bytes()).await;
    assert_eq!(status_of(&head), 101, "{head}");
    assert_eq!(head_header(&head, "sec-websocket-protocol"), None);
    drop((s1, s2));
    gw.stop().await;

    // An app that picks a protocol the client never offered gets no tunnel.
    let mut app = spawn_raw_app().await;
    let gw = relay_to(&app.url()).await;
    let req = format!("{UPGRADE}Sec-WebSocket-Protocol: chat.v1\r\n\r\n");
    let client = spawn_request(gw.addr(), req);
    let mut up = app.accept().await;
    answer_upgrade(&mut up, "Sec-WebSocket-Protocol: evil\r\n").await;
    let (_s, head) = client.await.unwrap();
    assert_eq!(status_of(&head), 502, "{head}");
    gw.stop().await;
}

/// A route's `subprotocols` is what the gateway lets through: the app is offered only the
/// client's protocols the route lists, in the client's order, or none.
#[tokio::test]
async fn the_routes_subprotocols_filter_what_the_app_is_offered() {
    let mut app = spawn_raw_app().await;
    let gw = Gateway::start(&config(
        &app.url(),
        "",
        "    subprotocols: [chat.v2, chat.v1]\n",
    ))
    .await;
    let offer = |protocols: &str| format!("{UPGRADE}Sec-WebSocket-Protocol: {protocols}\r\n\r\n");

    let client = spawn_request(gw.addr(), offer("x.v9, chat.v1, chat.v2"));
    let mut up = app.accept().await;
    let head = answer_upgrade(&mut up, "Sec-WebSocket-Protocol: chat.v2\r\n").await;
    assert_eq!(
        head_header(&head, "sec-websocket-protocol").as_deref(),
        Some("chat.v1, chat.v2"),
        "{head}"
    );
    let (_c1, resp) = client.await.unwrap();
    assert_eq!(status_of(&resp), 101, "{resp}");
    assert_eq!(
        head_header(&resp, "sec-websocket-protocol").as_deref(),
        Some("chat.v2")
    );

    // Nothing listed is offered: the app is offered nothing, and the 101 carries nothing.
    let client = spawn_request(gw.addr(), offer("x.v9"));
    let mut up = app.accept().await;
    let head = answer_upgrade(&mut up, "").await;
    assert_eq!(head_header(&head, "sec-websocket-protocol"), None, "{head}");
    let (_c2, resp) = client.await.unwrap();
    assert_eq!(status_of(&resp), 101, "{resp}");
    assert_eq!(head_header(&resp, "sec-websocket-protocol"), None);

    // A protocol the client offered but the app was not offered is no choice of the app's.
    let client = spawn_request(gw.addr(), offer("x.v9, chat.v1"));
    let mut up = app.accept().await;
    answer_upgrade(&mut up, "Sec-WebSocket-Protocol: x.v9\r\n").await;
    let (_c3, resp) = client.await.unwrap();
    assert_eq!(status_of(&resp), 502, "{resp}");
    gw.stop().await;
}

#[tokio::test]
async fn close_codes_and_reasons_pass_through_both_ways() {
    let mut app = spawn_ws_app(None).await;
    let gw = relay_to(&app.url()).await;
    // Client closes.
    let mut ws = connect(&gw.ws_url("/ws")).await;
    ws.close(Some(CloseFrame {
        code: 4001.into(),
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    assert_eq!(app.next_end().await, Ok(Some((4001, "bye".into()))));
    match next_msg(&mut ws).await {
        Some(Ok(Message::Close(Some(f)))) => {
            assert_eq!((u16::from(f.code), f.reason.as_str()), (4001, "bye"))
        }
        other => panic!("expected the app's Close, got {other:?}"),
    }
    drop(ws);
    // App closes; the client's answer reaches it.
    let mut ws = connect(&gw.ws_url("/ws")).await;
    ws.send(Message::text("close:4002:server bye"))
        .await
        .unwrap();
    match next_msg(&mut ws).await {
        Some(Ok(Message::Close(Some(f)))) => {
            assert_eq!((u16::from(f.code), f.reason.as_str()), (4002, "server bye"))
        }
        other => panic!("expected the app's Close, got {other:?}"),
    }
    assert!(next_msg(&mut ws).await.is_none());
    assert_eq!(app.next_end().await, Ok(Some((4002, "server bye".into()))));
    drop(ws);
    gw.stop().await;
}

#[tokio::test]
async fn unreachable_app_gets_502_then_503_once_ejected_and_never_101() {
    let gw = relay_to(&format!("http://{}", closed_port_addr())).await;
    expect_refused(gw.addr(), format!("{UPGRADE}\r\n").as_bytes(), 502).await;
    // Repeated connection failures eject the upstream: no healthy upstream left.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let (_s, head) = raw_request(gw.addr(), format!("{UPGRADE}\r\n").as_bytes()).await;
        statuses.push(status_of(&head));
        if statuses.last() == Some(&503) {
            break;
        }
    }
    assert_eq!(statuses.last(), Some(&503), "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 502 || *s == 503));
    gw.stop().await;
}

/// A silent app gets 504s, and is not ejected for them: it accepted every connection, and
/// passive ejection counts failures to connect only.
#[tokio::test]
async fn silent_app_gets_504() {
    let mut app = spawn_raw_app().await;
    let gw = Gateway::start(
        &config(&app.url(), "", "").replace("upstream_timeout: 2s", "upstream_timeout: 300ms"),
    )
    .await;
    for _ in 0..4 {
        let client = spawn_request(gw.addr(), format!("{UPGRADE}\r\n"));
        let up = app.accept().await;
        let (_s, head) = client.await.unwrap();
        assert_eq!(status_of(&head), 504, "{head}");
        drop(up);
    }
    let (c, up) = raw_pair(&gw, &mut app).await;
    drop((c, up));
    gw.stop().await;
}

#[tokio::test]
async fn app_dropping_mid_stream_gives_the_client_1014() {
    let mut app = spawn_ws_app(None).await;
    let gw = relay_to(&app.url()).await;
    // Raw bytes: tokio-tungstenite 0.26 reports a received 1014 as 1002.
    let mut s = raw_ws(gw.addr(), "/ws").await;
    s.write_all(&frame(true, 1, MASK, b"one")).await.unwrap();
    assert_eq!(read_frame(&mut s).await, (true, 1, b"one".to_vec()));
    s.write_all(&frame(true, 1, MASK, b"drop")).await.unwrap();
    assert_eq!(read_close_code(&mut s).await, 1014);
    read_to_eof(&mut s).await;
    assert!(
        app.next_end().await.is_err(),
        "the app closed without a Close"
    );
    drop(s);
    gw.stop().await;
}

#[tokio::test]
async fn vanishing_client_gives_the_app_1001() {
    let mut app = spawn_ws_app(None).await;
    let gw = relay_to(&app.url()).await;
    let mut s = raw_ws(gw.addr(), "/ws").await;
    s.write_all(&frame(true, 1, MASK, b"hi")).await.unwrap();
    assert_eq!(read_frame(&mut s).await, (true, 1, b"hi".to_vec()));
    drop(s);
    assert_eq!(app.next_close_code().await, 1001);
    gw.stop().await;
}

/// Sends `bytes` as a misbehaving client; returns the client's Close code and the app's.
async fn client_violation(gw: &Gateway, app: &mut WsApp, bytes: Vec<u8>) -> (u16, u16) {
    let mut s = raw_ws(gw.addr(), "/ws").await;
    let (mut rd, mut wr) = s.split();
    let writer = async {
        let _ = wr.write_all(&bytes).await;
    };
    let reader = async {
        let mut h = [0u8; 4];
        rd.read_exact(&mut h).await.unwrap();
        assert_eq!(h[0] & 0x0f, 8, "expected a Close frame");
        u16::from_be_bytes([h[2], h[3]])
    };
    let (_, code) = tokio::join!(writer, tokio::time::timeout(WAIT, reader));
    read_to_eof(&mut s).await;
    (
        code.expect("Close within the wait"),
        app.next_close_code().await,
    )
}

#[tokio::test]
async fn client_violations_close_the_client_with_their_code_and_the_app_with_1001() {
    let mut app = spawn_ws_app(None).await;
    let gw = relay_to(&app.url()).await;
    let unmasked = frame(true, 1, None, b"hi");
    assert_eq!(
        client_violation(&gw, &mut app, unmasked).await,
        (1002, 1001)
    );
    let bad_utf8 = frame(true, 1, MASK, &[0xC3, 0x28]);
    assert_eq!(
        client_violation(&gw, &mut app, bad_utf8).await,
        (1007, 1001)
    );
    let euro = "€".as_bytes();
    let mut split = frame(false, 1, MASK, &euro[..2]);
    split.extend(frame(true, 0, MASK, &[0x28]));
    assert_eq!(client_violation(&gw, &mut app, split).await, (1007, 1001));
    let too_big = frame(true, 2, MASK, &vec![0u8; 2 << 20]);
    assert_eq!(client_violation(&gw, &mut app, too_big).await, (1009, 1001));
    // Over the limit only in total: a relay forwards fragments but still counts the message.
    let mut fragments = Vec::new();
    for i in 0..20 {
        fragments.extend(frame(
            i == 19,
            if i == 0 { 2 } else { 0 },
            MASK,
            &[7; 64 * 1024],
        ));
    }
    assert_eq!(
        client_violation(&gw, &mut app, fragments).await,
        (1009, 1001)
    );
    gw.stop().await;
}

#[tokio::test]
async fn app_violations_give_the_client_1014_and_the_app_their_code() {
    let mut padded = vec![0x81, 126, 0, 2];
    padded.extend(b"hi");
    for (bad, app_code) in [
        (frame(true, 1, MASK, b"masked by a server"), 1002),
        (frame(true, 1, None, &[0xFF]), 1007),
        (padded, 1002),
        (vec![0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0], 1002),
    ] {
        let mut app = spawn_raw_app().await;
        let gw = relay_to(&app.url()).await;
        let (mut c, mut up) = raw_pair(&gw, &mut app).await;
        up.write_all(&bad).await.unwrap();
        assert_eq!(read_close_code(&mut c).await, 1014);
        let (_, op, masked, payload) = read_app_frame(&mut up).await;
        assert_eq!((op, masked), (8, true));
        assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), app_code);
        drop((c, up));
        gw.stop().await;
    }
}

/// A client that floods and never reads, behind an echo app: the app blocks writing back,
/// so both pumps wait on writes and neither reads a keep-alive answer again. The stall limit
/// (keep-alive interval + timeout) ends the session.
#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_even_with_both_pumps_waiting() {
    let app = spawn_ws_app(None).await;
    let ws = "  keep_alive_interval: 200ms\n  keep_alive_timeout: 300ms\n";
    let gw = Gateway::start(&config(&app.url(), ws, "")).await;
    flood_until_dropped(raw_ws(gw.addr(), "/ws").await).await;
    gw.stop().await;
}

#[tokio::test]
async fn keep_alive_pings_both_legs() {
    let mut app = spawn_raw_app().await;
    let ws = "  keep_alive_interval: 100ms\n  keep_alive_timeout: 5s\n";
    let gw = Gateway::start(&config(&app.url(), ws, "")).await;
    let client = spawn_request(gw.addr(), format!("{UPGRADE}\r\n"));
    let mut up = app.accept().await;
    answer_upgrade(&mut up, "").await;
    let (mut c, head) = client.await.unwrap();
    assert_eq!(status_of(&head), 101);
    let (_, op, masked, _) = read_app_frame(&mut up).await;
    assert_eq!((op, masked), (9, true), "the app gets masked Pings");
    let (_, op, _) = read_frame(&mut c).await;
    assert_eq!(op, 9, "the client gets Pings");
    drop((c, up));
    gw.stop().await;
}

#[tokio::test]
async fn both_directions_flow_at_once_without_deadlock() {
    // The app echoes each message before reading the next; the client writes everything
    // before reading anything back. Both legs' buffers fill, so a relay that stopped reading
    // the app while writing to it would hang here.
    let app = spawn_ws_app(None).await;
    let gw = relay_to(&app.url()).await;
    let ws = connect(&gw.ws_url("/ws")).await;
    let (mut sink, mut stream) = ws.split();
    const N: usize = 64;
    let chunk = bytes::Bytes::from(vec![5u8; 256 * 1024]);
    let writer = async {
        for _ in 0..N {
            sink.send(Message::Binary(chunk.clone())).await.unwrap();
        }
    };
    let reader = async {
        for _ in 0..N {
            match stream.next().await {
                Some(Ok(Message::Binary(b))) => assert_eq!(b.len(), chunk.len()),
                other => panic!("expected an echo, got {other:?}"),
            }
        }
    };
    tokio::time::timeout(WAIT, async { tokio::join!(writer, reader) })
        .await
        .expect("relay stalled with both directions busy");
    drop((sink, stream));
    gw.stop().await;
}

#[tokio::test]
async fn a_client_faster_than_the_app_is_slowed_down_not_buffered() {
    let mut app = spawn_raw_app().await;
    let gw = relay_to(&app.url()).await;
    let url = gw.ws_url("/ws");
    let client = tokio::spawn(async move { connect(&url).await });
    let mut up = app.accept().await;
    answer_upgrade(&mut up, "").await;
    let ws = client.await.unwrap();
    let before = proc_status_kib("VmRSS");

    // The app never reads. The client tries to push 64 MiB through, one 1 MiB message at a
    // time; it has stalled once no send completes for a while.
    const TOTAL: u64 = 64 << 20;
    let sent = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(Notify::new());
    let (counter, tick) = (sent.clone(), progress.clone());
    let chunk = bytes::Bytes::from(vec![9u8; 1 << 20]);
    let pushing = tokio::spawn(async move {
        let mut ws = ws;
        while counter.load(Ordering::Relaxed) < TOTAL {
            ws.send(Message::Binary(chunk.clone())).await.unwrap();
            counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            tick.notify_one();
        }
    });
    while tokio::time::timeout(Duration::from_millis(500), progress.notified())
        .await
        .is_ok()
    {}
    let through = sent.load(Ordering::Relaxed);
    assert!(
        through < TOTAL,
        "all 64 MiB went through to an app that reads nothing"
    );
    if let (Some(before), Some(after)) = (before, proc_status_kib("VmRSS")) {
        let grown = after.saturating_sub(before);
        assert!(
            grown < 64 * 1024,
            "resident memory grew by {grown} KiB with {through} bytes sent"
        );
    }

    // What was accepted arrives intact once the app reads.
    let first = read_app_frame(&mut up).await;
    assert_eq!((first.0, first.1, first.2), (true, 2, true));
    assert_eq!(first.3, vec![9u8; 1 << 20]);
    pushing.abort();
    drop(up);
}

#[tokio::test]
async fn origin_is_refused_before_any_app_contact() {
    let mut app = spawn_ws_app(None).await;
    let route = "    allowed_origins: [\"https://good.example\"]\n";
    let gw = Gateway::start(&config(&app.url(), "", route)).await;
    let bad = format!("{UPGRADE}Origin: https://evil.example\r\n\r\n");
    let (_s, head) = raw_request(gw.addr(), bad.as_bytes()).await;
    assert_eq!(status_of(&head), 403, "{head}");
    // Two Origins, the allowed one first: malformed, whichever a check would have read.
    let two =
        format!("{UPGRADE}Origin: https://good.example\r\nOrigin: https://evil.example\r\n\r\n");
    expect_refused(gw.addr(), two.as_bytes(), 400).await;
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
async fn shutdown_closes_both_legs_with_1001() {
    let mut app = spawn_ws_app(None).await;
    let mut gw = relay_to(&app.url()).await;
    let mut ws = connect(&gw.ws_url("/ws")).await;
    ws.send(Message::text("up")).await.unwrap();
    assert_eq!(
        next_msg(&mut ws).await.unwrap().unwrap(),
        Message::text("up")
    );
    gw.begin_shutdown();
    assert_eq!(expect_close(&mut ws).await, 1001);
    drop(ws);
    assert_eq!(app.next_close_code().await, 1001);
    gw.stop().await;
}

/// `max_connection_age` retires a relayed session with the reason echo gives it, on both legs:
/// it is no shutdown, and neither the client nor the app should be told it is.
#[tokio::test]
async fn an_age_limit_closes_both_legs_with_1001_connection_age_limit() {
    let mut app = spawn_ws_app(None).await;
    let yaml = config(&app.url(), "", "").replace("routes:", "max_connection_age: 300ms\nroutes:");
    let gw = Gateway::start(&yaml).await;
    let mut ws = connect(&gw.ws_url("/ws")).await;
    let close = loop {
        match next_msg(&mut ws).await {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a Close, got {other:?}"),
        }
    };
    let close = close.map(|f| (u16::from(f.code), f.reason.to_string()));
    assert_eq!(close, Some((1001, "connection age limit".to_owned())));
    drop(ws);
    assert_eq!(
        app.next_end().await,
        Ok(Some((1001, "connection age limit".to_owned())))
    );
    gw.stop().await;
}

/// A reload that drains the route (`on_route_change: drain`) closes both legs with 1001 and
/// says so: the app and the client are told the route changed, not that the server is
/// shutting down, so neither reconnects as if from a restart nor logs one.
#[tokio::test]
async fn a_reload_drain_closes_both_legs_with_1001_route_changed() {
    let mut app = spawn_ws_app(None).await;
    let yaml = config(&app.url(), "", "").replace("routes:", "on_route_change: drain\nroutes:");
    let gw = Gateway::start(&yaml).await;
    let mut ws = connect(&gw.ws_url("/ws")).await;
    ws.send(Message::text("up")).await.unwrap();
    assert_eq!(
        next_msg(&mut ws).await.unwrap().unwrap(),
        Message::text("up")
    );
    let changed = yaml.replace("upstream_timeout: 2s", "upstream_timeout: 3s");
    let config = wsgate::config::load_str(&changed, "t.yaml", std::path::Path::new(".")).unwrap();
    assert_eq!(gw.reloader.reload(config).await.unwrap(), 2);
    let said = (1001, "route changed by a reload".to_owned());
    assert_eq!(expect_close_frame(&mut ws).await, said);
    drop(ws);
    assert_eq!(app.next_end().await, Ok(Some(said)));
    gw.stop().await;
}

/// A tokio-tungstenite echo app behind TLS, with a certificate from `pki` for 127.0.0.1.
async fn spawn_wss_app(pki: &TestPki) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    let (crt, key) = pki.issue("app", &["127.0.0.1"]);
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(&crt)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn relays_to_a_tls_app() {
    use base64::Engine;
    let pki = TestPki::new();
    let app = spawn_wss_app(&pki).await;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&pki.ca_der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let ca = pki.dir.path().join("relay-ca.pem");
    std::fs::write(
        &ca,
        format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            lines.join("\n")
        ),
    )
    .unwrap();
    let route = format!("    ca: {}\n", ca.display());
    let gw = Gateway::start(&config(&format!("wss://{app}"), "", &route)).await;
    let mut ws = connect(&gw.ws_url("/ws")).await;
    for i in 0..3 {
        let msg = Message::text(format!("over TLS {i}"));
        ws.send(msg.clone()).await.unwrap();
        assert_eq!(next_msg(&mut ws).await.unwrap().unwrap(), msg);
    }
    let big = vec![3u8; 300 * 1024];
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(
        next_msg(&mut ws).await.unwrap().unwrap(),
        Message::binary(big)
    );
    ws.close(None).await.unwrap();
    assert_eq!(expect_close(&mut ws).await, 1000);
    drop(ws);
    gw.stop().await;
}

#[tokio::test]
async fn a_burst_of_pings_gets_every_pong_in_order() {
    let app = spawn_ws_app(None).await;
    let gw = relay_to(&app.url()).await;
    let mut s = raw_ws(gw.addr(), "/ws").await;
    let mut burst = Vec::new();
    for i in 0..10u8 {
        burst.extend(frame(true, 9, MASK, &[b'p', i]));
    }
    s.write_all(&burst).await.unwrap();
    for i in 0..10u8 {
        assert_eq!(read_frame(&mut s).await, (true, 0xA, vec![b'p', i]));
    }
    gw.stop().await;
}

/// HTTP/1.0 has no 1xx and no Upgrade: an app's `HTTP/1.0 101` is no switch, in relay or in
/// passthrough, and the client gets 502 rather than a tunnel to whatever follows.
#[tokio::test]
async fn an_http10_101_from_the_app_is_a_502() {
    let mut app = spawn_raw_app().await;
    let gw = Gateway::start(&format!(
        "listen:\n{}routes:\n  - path: /ws\n    websocket: relay\n    upstreams: [\"{}\"]\n  - path: /pass\n    websocket: passthrough\n    upstreams: [\"http://{}\"]\n",
        plain_listener(),
        app.url(),
        app.addr,
    ))
    .await;
    for path in ["/ws", "/pass"] {
        let request = UPGRADE.replace("GET /ws ", &format!("GET {path} "));
        let client = spawn_request(gw.addr(), format!("{request}\r\n"));
        let mut up = app.accept().await;
        let head = read_head(&mut up).await;
        let key = head_header(&head, "sec-websocket-key").unwrap();
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        up.write_all(
            format!("HTTP/1.0 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let (_c, resp) = client.await.unwrap();
        assert_eq!(status_of(&resp), 502, "{path}: {resp}");
    }
    gw.stop().await;
}
