//! Helpers shared by the fuzz targets: a forgiving HTTP head parser (so seeds are readable
//! request and response heads) and independent re-implementations of the rules the targets
//! check wsgate against. Deliberately written apart from wsgate's own code: an invariant that
//! called the function under test would prove nothing.

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// A parsed head: the start line split on spaces, and the headers that are valid as `http`
/// types (others are dropped, as hyper would refuse the whole request before wsgate saw it).
pub struct Head<'a> {
    pub start: Vec<&'a [u8]>,
    pub headers: HeaderMap,
}

/// Lines end in `\n` (a trailing `\r` is dropped); the first is the start line, the others
/// `name: value`, the value without its surrounding spaces and tabs. Parsing stops at the
/// first empty line, like HTTP.
pub fn parse_head(data: &[u8]) -> Head<'_> {
    let mut lines = data
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let start = lines
        .next()
        .unwrap_or(b"")
        .split(|&b| b == b' ')
        .filter(|t| !t.is_empty())
        .collect();
    let mut headers = HeaderMap::new();
    for line in lines {
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], trim_ows(&line[colon + 1..]));
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            headers.append(name, value);
        }
    }
    Head { start, headers }
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Whether any value of `name` is a comma-separated list containing `token`
/// (ASCII case-insensitive, optional whitespace around items), RFC 9110 section 5.6.1. Values
/// with bytes beyond visible ASCII (obs-text) are not taken as token lists at all: refusing
/// them is the conservative reading, and the one wsgate makes.
pub fn list_has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter(|v| v.to_str().is_ok())
        .any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|item| trim_ows(item).eq_ignore_ascii_case(token.as_bytes()))
        })
}

/// The only value of `name`, if it occurs exactly once.
pub fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    let mut all = headers.get_all(name).iter();
    match (all.next(), all.next()) {
        (Some(v), None) => Some(v),
        _ => None,
    }
}

/// Whether `key` is canonical padded base64 of exactly 16 bytes: 22 alphabet characters, the
/// last carrying 2 data bits (its low 4 bits zero), then `==`.
pub fn is_base64_of_16_bytes(key: &[u8]) -> bool {
    fn sextet(c: u8) -> Option<u8> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        })
    }
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22].iter().all(|&c| sextet(c).is_some())
        && sextet(key[21]).is_some_and(|s| s & 0x0F == 0)
}

/// Lines as YAML counts them (`\r\n`, `\r` and `\n` each end one): 1 for empty text.
pub fn yaml_line_count(text: &str) -> usize {
    let b = text.as_bytes();
    let mut lines = 1;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\r' if b.get(i + 1) == Some(&b'\n') => {
                lines += 1;
                i += 1;
            }
            b'\r' | b'\n' => lines += 1,
            _ => {}
        }
        i += 1;
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_keys() {
        assert!(is_base64_of_16_bytes(b"dGhlIHNhbXBsZSBub25jZQ=="));
        assert!(!is_base64_of_16_bytes(b"dGhlIHNhbXBsZSBub25jZR=="));
        assert!(!is_base64_of_16_bytes(b"dGhlIHNhbXBsZSBub25jZQ="));
        assert!(!is_base64_of_16_bytes(b"c2hvcnQ="));
    }

    #[test]
    fn heads_and_tokens() {
        let h = parse_head(
            b"GET /chat HTTP/1.1\r\nConnection: keep-alive,\tUpgrade \r\nX: \x01\r\n\r\nA: b",
        );
        assert_eq!(h.start, [&b"GET"[..], b"/chat", b"HTTP/1.1"]);
        assert_eq!(h.headers.len(), 1);
        assert!(list_has_token(
            &h.headers,
            &http::header::CONNECTION,
            "upgrade"
        ));
        assert_eq!(yaml_line_count("a\r\nb\rc\n"), 4);
    }
}
