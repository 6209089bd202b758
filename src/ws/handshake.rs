//! RFC 6455 section 4.2 opening-handshake checks, done before anything else looks at the request
//! (routing to an upstream, origin policy), so a malformed upgrade costs nothing downstream.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Version};
use sha1::{Digest, Sha1};

use crate::error::ClientError;

const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Whether the request asks for a WebSocket at all (`Upgrade: websocket`). Requests that do are
/// held to every handshake rule; requests that do not are ordinary HTTP.
pub fn wants_websocket<B>(req: &Request<B>) -> bool {
    header_has_token(req.headers(), header::UPGRADE, "websocket")
}

/// A handshake that passed every check: what the 101 needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    pub accept: String,
    /// `Sec-WebSocket-Protocol` values the client offered, in order.
    pub offered_protocols: Vec<String>,
}

pub fn validate<B>(req: &Request<B>) -> Result<Handshake, ClientError> {
    let headers = req.headers();
    if req.method() != Method::GET {
        return Err(ClientError::BadHandshake("method must be GET"));
    }
    if req.version() != Version::HTTP_11 {
        return Err(ClientError::BadHandshake("HTTP/1.1 is required"));
    }
    if !header_has_token(headers, header::CONNECTION, "upgrade") {
        return Err(ClientError::BadHandshake("Connection must contain upgrade"));
    }
    let mut versions = headers.get_all(header::SEC_WEBSOCKET_VERSION).iter();
    match (versions.next(), versions.next()) {
        (Some(v), None) if v.as_bytes() == b"13" => {}
        _ => return Err(ClientError::UnsupportedVersion),
    }
    let mut keys = headers.get_all(header::SEC_WEBSOCKET_KEY).iter();
    let key = match (keys.next(), keys.next()) {
        (Some(k), None) => k,
        (None, _) => return Err(ClientError::BadHandshake("Sec-WebSocket-Key is missing")),
        _ => return Err(ClientError::BadHandshake("more than one Sec-WebSocket-Key")),
    };
    match BASE64.decode(key.as_bytes()) {
        Ok(raw) if raw.len() == 16 => {}
        _ => {
            return Err(ClientError::BadHandshake(
                "Sec-WebSocket-Key must be 16 bytes in base64",
            ))
        }
    }
    Ok(Handshake {
        accept: accept_key(key.as_bytes()),
        offered_protocols: offered_protocols(headers),
    })
}

/// `Sec-WebSocket-Accept` for a key: base64(SHA-1(key + GUID)).
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    BASE64.encode(sha.finalize())
}

pub fn offered_protocols(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The first protocol the client offered that the route lists (the client's order wins, like
/// ASP.NET Core's sample), or none.
pub fn select_protocol<'a>(offered: &'a [String], supported: &[String]) -> Option<&'a str> {
    offered
        .iter()
        .find(|p| supported.iter().any(|s| s == *p))
        .map(String::as_str)
}

/// The 101 answer for a validated handshake.
pub fn switching_protocols(accept: &str, protocol: Option<&str>) -> http::response::Builder {
    let mut b = http::Response::builder()
        .status(http::StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, HeaderValue::from_static("websocket"))
        .header(header::CONNECTION, HeaderValue::from_static("Upgrade"))
        .header(header::SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(p) = protocol {
        b = b.header(header::SEC_WEBSOCKET_PROTOCOL, p);
    }
    b
}

/// Comma-separated token lists compared case-insensitively (`Connection: keep-alive, Upgrade`).
pub fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> http::request::Builder {
        Request::builder()
            .method("GET")
            .uri("/ws")
            .header("host", "localhost")
            .header("upgrade", "websocket")
            .header("connection", "keep-alive, Upgrade")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
    }

    #[test]
    fn rfc_example_accept() {
        let hs = validate(&request().body(()).unwrap()).unwrap();
        assert_eq!(hs.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn rejections() {
        let req = request()
            .header("sec-websocket-version", "8")
            .body(())
            .unwrap();
        assert_eq!(validate(&req), Err(ClientError::UnsupportedVersion));
        let req = request().method("POST").body(()).unwrap();
        assert!(matches!(validate(&req), Err(ClientError::BadHandshake(_))));
        let mut req = request().body(()).unwrap();
        req.headers_mut()
            .insert("sec-websocket-key", HeaderValue::from_static("c2hvcnQ="));
        assert!(matches!(validate(&req), Err(ClientError::BadHandshake(_))));
        let mut req = request().body(()).unwrap();
        req.headers_mut()
            .insert("connection", HeaderValue::from_static("keep-alive"));
        assert!(matches!(validate(&req), Err(ClientError::BadHandshake(_))));
    }

    #[test]
    fn protocol_selection_follows_client_order() {
        let req = request()
            .header("sec-websocket-protocol", "chat.v2, chat.v1")
            .header("sec-websocket-protocol", "other")
            .body(())
            .unwrap();
        let hs = validate(&req).unwrap();
        assert_eq!(hs.offered_protocols, ["chat.v2", "chat.v1", "other"]);
        let supported = vec!["chat.v1".to_string(), "chat.v2".to_string()];
        assert_eq!(
            select_protocol(&hs.offered_protocols, &supported),
            Some("chat.v2")
        );
        assert_eq!(select_protocol(&hs.offered_protocols, &[]), None);
    }
}
