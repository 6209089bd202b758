//! Forwarding to the apps behind the gateway: ordinary HTTP requests (reverse proxy) and raw
//! WebSocket upgrades that wsgate does not process (passthrough).

pub mod http;
pub mod passthrough;

use std::fmt::Write as _;
use std::net::IpAddr;

use ::http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Hop-by-hop headers (RFC 9110 7.6.1 and the usual non-standard ones): they describe one
/// connection, so they never cross the proxy in either direction. `Trailer` is not one: it
/// names the fields at the end of this message, which travel with it, and hyper sends trailers
/// on HTTP/1.1 only when `Trailer` has declared them.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "transfer-encoding",
    "upgrade",
];

/// The first transfer coding in `Transfer-Encoding` that is not the one final `chunked`, if
/// any. hyper takes off that `chunked` and nothing else, and the header goes no further (it is
/// hop-by-hop), so a message in any other coding would arrive at the far end with its bytes
/// still encoded and nothing saying so (RFC 9112 6.1). `chunked` twice counts: the inner one
/// would be passed on as content. The last element is read as hyper reads it (no parameters,
/// no empty element after it), so what hyper did not decode as chunked is never let through.
pub(crate) fn foreign_transfer_coding(headers: &HeaderMap) -> Option<String> {
    let codings: Vec<&[u8]> = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .collect();
    let (last, before) = codings.split_last()?;
    let foreign = before
        .iter()
        .find(|c| !c.is_empty())
        .or((!last.eq_ignore_ascii_case(b"chunked")).then_some(last))?;
    Some(String::from_utf8_lossy(foreign).into_owned())
}

/// Removes the fixed hop-by-hop headers and every header the `Connection` header names.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip_hop_by_hop_keeping(headers, &[]);
}

/// [`strip_hop_by_hop`], except that naming one of `keep` in `Connection` does not remove it:
/// a raw upgrade is useless to the app without its Host and `Sec-WebSocket-*` headers, and a
/// client that lists them there would otherwise have the app (or us) blamed for its mistake.
pub(crate) fn strip_hop_by_hop_keeping(headers: &mut HeaderMap, keep: &[HeaderName]) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| !keep.contains(name))
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// X-Forwarded-For (appended to), X-Forwarded-Proto and -Host (ours: a client could forge
/// them, and we are the one that saw the connection), and RFC 7239 Forwarded (appended to).
/// The reverse proxy and passthrough both use it, so an app sees the same entries whichever
/// way a client reached it.
pub(crate) fn add_forwarding_headers(
    headers: &mut HeaderMap,
    peer: IpAddr,
    tls: bool,
    host: Option<&HeaderValue>,
) {
    let ip = canonical(peer);
    let proto = if tls { "https" } else { "http" };

    let xff = append_list(headers, "x-forwarded-for", &ip.to_string());
    headers.insert("x-forwarded-for", xff);
    headers.insert("x-forwarded-proto", HeaderValue::from_static(proto));
    match host {
        Some(h) => {
            headers.insert("x-forwarded-host", h.clone());
        }
        None => {
            headers.remove("x-forwarded-host");
        }
    }

    let node = match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let mut element = format!("for={node};proto={proto}");
    if let Some(host) = host.and_then(|h| h.to_str().ok()) {
        let _ = write!(element, ";host={}", forwarded_value(host));
    }
    let forwarded = append_list(headers, header::FORWARDED.as_str(), &element);
    headers.insert(header::FORWARDED, forwarded);
}

/// All values of a list header joined with `, `, then `item`, as one header value.
fn append_list(headers: &HeaderMap, name: &str, item: &str) -> HeaderValue {
    let mut joined = String::new();
    for v in headers.get_all(name) {
        if let Ok(s) = v.to_str() {
            let s = s.trim();
            if !s.is_empty() {
                joined.push_str(s);
                joined.push_str(", ");
            }
        }
    }
    joined.push_str(item);
    // Only visible ASCII went in (to_str succeeded, and item is ours), so this cannot fail.
    HeaderValue::from_str(&joined).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// An RFC 7239 value: a token as is, anything else (a host with a port) as a quoted-string.
fn forwarded_value(s: &str) -> String {
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if !s.is_empty() && s.chars().all(tchar) {
        return s.to_string();
    }
    let mut quoted = String::with_capacity(s.len() + 2);
    quoted.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// IPv4 clients of a dual-stack listener show up as `::ffff:a.b.c.d`; apps and ip_hash should
/// see the IPv4 address they know.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// A header map holding `name` once per line, as a message carrying those field lines has it.
#[cfg(test)]
pub(crate) fn field_lines(name: HeaderName, lines: &[&str]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for line in lines {
        h.append(name.clone(), line.parse().unwrap());
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_one_final_chunked_is_a_coding_hyper_has_undone() {
        let coding = |lines: &[&str]| {
            foreign_transfer_coding(&field_lines(header::TRANSFER_ENCODING, lines))
        };
        assert_eq!(coding(&[]), None);
        assert_eq!(coding(&["chunked"]), None);
        assert_eq!(coding(&["Chunked"]), None);
        assert_eq!(coding(&[" , chunked"]), None);
        assert_eq!(coding(&["gzip, chunked"]).as_deref(), Some("gzip"));
        assert_eq!(coding(&["GZIP", "chunked"]).as_deref(), Some("GZIP"));
        assert_eq!(coding(&["chunked, chunked"]).as_deref(), Some("chunked"));
        assert_eq!(coding(&["gzip"]).as_deref(), Some("gzip"));
        // Read as hyper reads the last one: not chunked, so the body ran to the close.
        assert_eq!(coding(&["chunked;x=1"]).as_deref(), Some("chunked;x=1"));
        assert!(coding(&["chunked", ""]).is_some());
    }

    #[test]
    fn kept_headers_survive_being_named_in_connection() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            "Upgrade, Host, Sec-WebSocket-Key, X-Gone".parse().unwrap(),
        );
        h.insert(header::HOST, "app".parse().unwrap());
        h.insert(header::SEC_WEBSOCKET_KEY, "k".parse().unwrap());
        h.insert("x-gone", "1".parse().unwrap());
        strip_hop_by_hop_keeping(&mut h, &[header::HOST, header::SEC_WEBSOCKET_KEY]);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h[header::HOST], "app");
        assert_eq!(h[header::SEC_WEBSOCKET_KEY], "k");
    }
}
