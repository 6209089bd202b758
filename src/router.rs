//! Which route serves a request: routes with a matching `host` first, then the longest path
//! prefix, matched on segment boundaries so `/chat` never captures `/chatter`.

use std::borrow::Cow;

use crate::config::{HostPattern, Route};

/// Routes in match order, precomputed once per config snapshot so a request costs one scan.
#[derive(Debug)]
pub struct Router {
    /// Indexes into the config's routes, host-specific first, then by path length, longest first.
    order: Vec<usize>,
}

impl Router {
    pub fn new(routes: &[Route]) -> Self {
        let mut order: Vec<usize> = (0..routes.len()).collect();
        order.sort_by_key(|&i| {
            let r = &routes[i];
            (r.host.is_none(), std::cmp::Reverse(r.path.len()))
        });
        Self { order }
    }

    /// `host` is the request's Host without port, any case; `path` is the request's path as
    /// [`routing_path`] reads it, as route paths were read at load.
    pub fn find<'a>(
        &self,
        routes: &'a [Route],
        host: Option<&str>,
        path: &str,
    ) -> Option<(usize, &'a Route)> {
        self.order.iter().map(|&i| (i, &routes[i])).find(|(_, r)| {
            let host_ok = match (&r.host, host) {
                (None, _) => true,
                (Some(p), Some(h)) => host_matches(p, h),
                (Some(_), None) => false,
            };
            host_ok && path_matches(&r.path, path)
        })
    }
}

pub fn path_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    let prefix = prefix.trim_end_matches('/');
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// The path a request is routed by: the path as an app that decodes and normalises it would
/// read it, so that no spelling of a path (`/%61dmin`, `//admin`, `/x/../admin`) reaches,
/// through a route for `/`, what a `reject` route guards. Route paths in the config are put
/// through it too, so a route and a request spelled differently still meet.
///
/// Every `%XX` is decoded once (`%2F` too: an app that decodes before splitting would see a
/// slash there); bytes that are not UTF-8 keep their ASCII around them in the lossy form, which
/// is all prefix matching looks at. A path with a `.` or `..` segment is refused rather than
/// resolved: resolving it would route by a path the app may not resolve the same way. So is a
/// malformed escape, which apps disagree about, and an encoded NUL, which ends C strings.
/// Borrowed, without allocating, for a path with no `%` and no `//`.
pub fn routing_path(raw: &str) -> Result<Cow<'_, str>, &'static str> {
    let decoded = if raw.contains('%') {
        Cow::Owned(percent_decode(raw)?)
    } else {
        Cow::Borrowed(raw)
    };
    if decoded
        .split('/')
        .any(|segment| segment == "." || segment == "..")
    {
        return Err("path with dot segments");
    }
    Ok(match decoded {
        Cow::Borrowed(path) => merge_slashes(path),
        Cow::Owned(path) if path.contains("//") => Cow::Owned(merge_slashes(&path).into_owned()),
        owned => owned,
    })
}

fn percent_decode(raw: &str) -> Result<String, &'static str> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(bytes[i]);
            i += 1;
            continue;
        }
        let hex = |at: usize| {
            bytes
                .get(at)
                .and_then(|b| (*b as char).to_digit(16))
                .ok_or("malformed percent-encoding in path")
        };
        let byte = (hex(i + 1)? * 16 + hex(i + 2)?) as u8;
        if byte == 0 {
            return Err("encoded NUL in path");
        }
        out.push(byte);
        i += 3;
    }
    Ok(String::from_utf8(out)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

/// `path` with each run of slashes made one.
fn merge_slashes(path: &str) -> Cow<'_, str> {
    if !path.contains("//") {
        return Cow::Borrowed(path);
    }
    let mut merged = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && merged.ends_with('/')) {
            merged.push(c);
        }
    }
    Cow::Owned(merged)
}

fn host_matches(p: &HostPattern, host: &str) -> bool {
    let host = host.trim_end_matches('.');
    if p.wildcard {
        host.len() > p.host.len() + 1
            && host[host.len() - p.host.len()..].eq_ignore_ascii_case(&p.host)
            && host.as_bytes()[host.len() - p.host.len() - 1] == b'.'
    } else {
        host.eq_ignore_ascii_case(&p.host)
    }
}

/// A DNS name as routes, upstream URLs, origins and Host headers may spell one: labels of
/// letters, digits, `-` and `_` (which internal names use), 1 to 63 long, 253 in all.
pub fn is_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The host part of a Host header or authority: strips the port and IPv6 brackets' port.
pub fn host_without_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        };
    }
    match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_boundaries() {
        assert!(path_matches("/chat", "/chat"));
        assert!(path_matches("/chat", "/chat/room"));
        assert!(path_matches("/chat/", "/chat/room"));
        assert!(!path_matches("/chat", "/chatter"));
        assert!(path_matches("/", "/anything"));
    }

    #[test]
    fn routing_path_decodes_refuses_dot_segments_and_merges_slashes() {
        let routed = |raw| routing_path(raw).map(|p| p.into_owned());
        for (raw, path) in [
            ("/%61dmin/ws", "/admin/ws"),
            ("/adm%69n", "/admin"),
            ("/ADM%49N", "/ADMIN"),
            ("/caf%C3%A9", "/café"),
            ("/caf%c3%a9", "/café"),
            ("/a%2Fb", "/a/b"),
            ("/%2F%2Fadmin", "/admin"),
            ("//admin///x/", "/admin/x/"),
            ("/a%252e%252e/b", "/a%2e%2e/b"),
            ("/%FF/x", "/\u{FFFD}/x"),
            ("/a.b/c..d", "/a.b/c..d"),
            ("/.well-known/x", "/.well-known/x"),
            ("/...", "/..."),
            ("/%2e%2e%2e", "/..."),
        ] {
            assert_eq!(routed(raw).as_deref(), Ok(path), "{raw}");
        }
        for (raw, why) in [
            ("/x/../admin", "dot segments"),
            ("/%2e%2e/admin", "dot segments"),
            ("/./admin", "dot segments"),
            ("/a/%2E", "dot segments"),
            ("/a/.%2e/b", "dot segments"),
            ("/a%2F..%2Fadmin", "dot segments"),
            ("/..", "dot segments"),
            ("/%", "malformed"),
            ("/a%2", "malformed"),
            ("/%z1", "malformed"),
            ("/%1z", "malformed"),
            ("/%+1", "malformed"),
            ("/a%00b", "NUL"),
        ] {
            let e = routed(raw).unwrap_err();
            assert!(e.contains(why), "{raw}: {e}");
        }
        assert!(matches!(routing_path("/admin/x"), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn hosts() {
        let wild = HostPattern {
            host: "example.com".into(),
            wildcard: true,
        };
        assert!(host_matches(&wild, "a.Example.com"));
        assert!(!host_matches(&wild, "example.com"));
        assert!(!host_matches(&wild, "badexample.com"));
        assert_eq!(host_without_port("example.com:8080"), "example.com");
        assert_eq!(host_without_port("[::1]:8080"), "[::1]");
        assert_eq!(host_without_port("example.com"), "example.com");
    }
}
