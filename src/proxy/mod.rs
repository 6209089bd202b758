//! Forwarding to the apps behind the gateway: ordinary HTTP requests (reverse proxy) and raw
//! WebSocket upgrades that wsgate does not process (passthrough).

pub mod http;
pub mod passthrough;

use ::http::header::{self, HeaderMap, HeaderName};

/// Hop-by-hop headers (RFC 9110 7.6.1 and the usual non-standard ones): they describe one
/// connection, so they never cross the proxy in either direction.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes the fixed hop-by-hop headers and every header the `Connection` header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}
