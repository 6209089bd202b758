//! Which route serves a request: routes with a matching `host` first, then the longest path
//! prefix, matched on segment boundaries so `/chat` never captures `/chatter`.

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

    /// `host` is the request's Host without port, any case.
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
