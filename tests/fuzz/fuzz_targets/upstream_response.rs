//! `wsgate::upstream::handshake::check_upgrade_response` on a response head built from the
//! input, which reads like an HTTP/1 head: `VERSION STATUS [reason]` then `name: value` lines
//! (see `parse_head`). The key wsgate "sent" is the RFC 6455 example key, so the right accept
//! is `s3pPLMBiTxaQ9kYGzzhZRbK+xOo=`. Invariants: never panics; `Ok` exactly when the status
//! is 101, `Upgrade` lists `websocket`, `Connection` lists `upgrade`, and there is exactly one
//! `Sec-WebSocket-Accept`, byte for byte `accept_key(sent key)`.
#![no_main]

use http::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, UPGRADE};
use http::{Response, StatusCode};
use libfuzzer_sys::fuzz_target;
use wsgate::upstream::handshake::check_upgrade_response;
use wsgate::ws::handshake::accept_key;
use wsgate_fuzz::{list_has_token, parse_head, single};

const SENT_KEY: &[u8] = b"dGhlIHNhbXBsZSBub25jZQ==";
const RFC_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

fuzz_target!(|data: &[u8]| {
    let expected = accept_key(SENT_KEY);
    assert_eq!(
        expected, RFC_ACCEPT,
        "accept_key breaks the RFC 6455 example"
    );
    let head = parse_head(data);
    let Some(Ok(status)) = head.start.get(1).map(|s| {
        std::str::from_utf8(s)
            .ok()
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or(())
            .and_then(|n| StatusCode::from_u16(n).map_err(|_| ()))
    }) else {
        return;
    };
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    *resp.headers_mut() = head.headers;
    let headers = resp.headers();

    let status_ok = status == StatusCode::SWITCHING_PROTOCOLS;
    let upgrade_ok = list_has_token(headers, &UPGRADE, "websocket");
    let connection_ok = list_has_token(headers, &CONNECTION, "upgrade");
    let accept_ok = single(headers, &SEC_WEBSOCKET_ACCEPT)
        .is_some_and(|v| v.as_bytes() == RFC_ACCEPT.as_bytes());

    match check_upgrade_response(&resp, &expected) {
        Ok(()) => {
            assert!(status_ok, "tunnel opened on status {status}");
            assert!(
                upgrade_ok,
                "tunnel opened without Upgrade: websocket: {:?}",
                headers.get_all(UPGRADE).iter().collect::<Vec<_>>()
            );
            assert!(
                connection_ok,
                "tunnel opened without Connection: upgrade: {:?}",
                headers.get_all(CONNECTION).iter().collect::<Vec<_>>()
            );
            assert!(
                accept_ok,
                "tunnel opened with Sec-WebSocket-Accept {:?}",
                headers
                    .get_all(SEC_WEBSOCKET_ACCEPT)
                    .iter()
                    .collect::<Vec<_>>()
            );
        }
        Err(why) => {
            assert!(
                !(status_ok && upgrade_ok && connection_ok && accept_ok),
                "a genuine 101 was refused: {why}"
            );
            assert!(!why.contains(['\n', '\r']), "multi-line reason {why:?}");
        }
    }
});
