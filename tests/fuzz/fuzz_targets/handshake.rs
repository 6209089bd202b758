//! `wsgate::ws::handshake::validate` on a request head built from the input, which reads like
//! an HTTP/1 head: `METHOD [target] VERSION` then `name: value` lines (see `parse_head`).
//! Invariants: never panics; `Ok` exactly when the method is GET, the version HTTP/1.1,
//! `Connection` lists `upgrade`, `Sec-WebSocket-Version` occurs once and is exactly `13`, and
//! `Sec-WebSocket-Key` occurs once and is base64 of 16 bytes; a wrong version alone is
//! `UnsupportedVersion` (the 426); the accept is `accept_key(key)`; offered subprotocols are
//! trimmed, non-empty, comma-free.
#![no_main]

use http::header::{CONNECTION, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION};
use http::{Method, Request, Version};
use libfuzzer_sys::fuzz_target;
use wsgate::error::ClientError;
use wsgate::ws::handshake::{accept_key, validate};
use wsgate_fuzz::{is_base64_of_16_bytes, list_has_token, parse_head, single};

fuzz_target!(|data: &[u8]| {
    // The RFC 6455 section 1.3 example, so a wrong `accept_key` fails on the first input.
    static RFC_EXAMPLE: std::sync::Once = std::sync::Once::new();
    RFC_EXAMPLE.call_once(|| {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    });
    let head = parse_head(data);
    let (Some(method), Some(version)) = (head.start.first(), head.start.last()) else {
        return;
    };
    let Ok(method) = Method::from_bytes(method) else {
        return;
    };
    let version = match *version {
        b"HTTP/0.9" => Version::HTTP_09,
        b"HTTP/1.0" => Version::HTTP_10,
        b"HTTP/1.1" => Version::HTTP_11,
        b"HTTP/2" | b"HTTP/2.0" => Version::HTTP_2,
        b"HTTP/3" | b"HTTP/3.0" => Version::HTTP_3,
        _ => return,
    };
    let mut req = Request::new(());
    *req.method_mut() = method.clone();
    *req.version_mut() = version;
    *req.headers_mut() = head.headers;
    let headers = req.headers();

    let method_ok = method == Method::GET;
    let version_ok = version == Version::HTTP_11;
    let connection_ok = list_has_token(headers, &CONNECTION, "upgrade");
    let ws_version_ok =
        single(headers, &SEC_WEBSOCKET_VERSION).is_some_and(|v| v.as_bytes() == b"13");
    let key = single(headers, &SEC_WEBSOCKET_KEY);
    let key_ok = key.is_some_and(|k| is_base64_of_16_bytes(k.as_bytes()));

    match validate(&req) {
        Ok(hs) => {
            assert!(method_ok, "accepted method {method}");
            assert!(version_ok, "accepted {version:?}");
            assert!(connection_ok, "accepted without Connection: upgrade");
            assert!(
                ws_version_ok,
                "accepted Sec-WebSocket-Version {:?}",
                headers
                    .get_all(SEC_WEBSOCKET_VERSION)
                    .iter()
                    .collect::<Vec<_>>()
            );
            assert!(
                key_ok,
                "accepted Sec-WebSocket-Key {:?}",
                headers
                    .get_all(SEC_WEBSOCKET_KEY)
                    .iter()
                    .collect::<Vec<_>>()
            );
            let key = key.unwrap().as_bytes();
            assert_eq!(hs.accept, accept_key(key));
            assert_eq!(hs.accept.len(), 28);
            for p in &hs.offered_protocols {
                assert!(
                    !p.is_empty() && !p.contains(',') && p.trim() == p,
                    "offered protocol {p:?}"
                );
            }
        }
        Err(e) => {
            assert!(
                !(method_ok && version_ok && connection_ok && ws_version_ok && key_ok),
                "a valid handshake was refused: {e}"
            );
            if method_ok && version_ok && connection_ok && !ws_version_ok {
                assert_eq!(
                    e,
                    ClientError::UnsupportedVersion,
                    "a wrong version must be the 426"
                );
            }
        }
    }
});
