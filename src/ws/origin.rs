//! Origin policy. Browsers do not apply CORS to WebSockets, so the Origin header is the only thing
//! that stops another site's page from opening a socket with the user's cookies.

use http::HeaderMap;

use crate::config::{OriginPattern, WsOptions};
use crate::error::ClientError;

pub fn check(headers: &HeaderMap, opts: &WsOptions) -> Result<(), ClientError> {
    // RFC 6454 7.3: one Origin at most. With two, which one a check read would decide the
    // answer, and the app behind a relay or tunnel could read the other.
    let mut values = headers.get_all(http::header::ORIGIN).iter();
    let (value, more) = (values.next(), values.next());
    if more.is_some() {
        return Err(ClientError::BadHandshake("more than one Origin header"));
    }
    let Some(value) = value else {
        return if opts.require_origin {
            Err(ClientError::OriginMissing)
        } else {
            Ok(())
        };
    };
    // An empty value names no origin: for `require_origin` it is as good as none (and with a
    // list of origins it matches none of them, below).
    if opts.require_origin && value.as_bytes().trim_ascii().is_empty() {
        return Err(ClientError::OriginMissing);
    }
    if opts.allowed_origins.is_empty() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(value.as_bytes());
    match parse(&text) {
        Some(origin) if opts.allowed_origins.iter().any(|p| matches(p, &origin)) => Ok(()),
        _ => Err(ClientError::OriginRefused(text.into_owned())),
    }
}

/// An Origin header split into scheme, lowercase host and port (explicit or default). An IPv6
/// host is in canonical form without brackets, as `allowed_origins` stores it.
#[derive(Debug, PartialEq, Eq)]
pub struct Origin {
    pub scheme: String,
    pub host: String,
    pub port: u16,
}

pub fn parse(value: &str) -> Option<Origin> {
    let (scheme, rest) = value.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" | "ws" => 80,
        "https" | "wss" => 443,
        _ => return None,
    };
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return None;
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        let port = match after {
            "" => default_port,
            p => p.strip_prefix(':')?.parse().ok()?,
        };
        (h.parse::<std::net::Ipv6Addr>().ok()?.to_string(), port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_ascii_lowercase(), p.parse().ok()?),
            None => (rest.to_ascii_lowercase(), default_port),
        }
    };
    // Only a bracketed IPv6 literal may hold a colon; `http://::1:80` must not pass for `[::1]`.
    if host.contains(':') && !rest.starts_with('[') {
        return None;
    }
    if host.is_empty() {
        return None;
    }
    let scheme = match scheme.as_str() {
        "ws" => "http".to_string(),
        "wss" => "https".to_string(),
        _ => scheme,
    };
    Some(Origin { scheme, host, port })
}

fn matches(p: &OriginPattern, o: &Origin) -> bool {
    let scheme = match p.scheme.as_str() {
        "ws" => "http",
        "wss" => "https",
        s => s,
    };
    if scheme != o.scheme || p.port != o.port {
        return false;
    }
    if p.wildcard {
        o.host.len() > p.host.len() + 1
            && o.host.ends_with(&p.host)
            && o.host.as_bytes()[o.host.len() - p.host.len() - 1] == b'.'
    } else {
        p.host == o.host
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(scheme: &str, host: &str, port: u16, wildcard: bool) -> OriginPattern {
        OriginPattern {
            scheme: scheme.into(),
            host: host.into(),
            port,
            wildcard,
        }
    }

    fn opts(patterns: Vec<OriginPattern>, require: bool) -> WsOptions {
        WsOptions {
            allowed_origins: patterns,
            require_origin: require,
            ..WsOptions::default()
        }
    }

    fn headers(origin: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(o) = origin {
            h.insert("origin", o.parse().unwrap());
        }
        h
    }

    #[test]
    fn two_origins_are_a_bad_handshake_and_an_empty_one_is_none() {
        let o = opts(vec![pattern("https", "a.com", 443, false)], false);
        for order in [
            ["https://a.com", "https://evil.com"],
            ["https://evil.com", "https://a.com"],
        ] {
            let mut h = HeaderMap::new();
            for origin in order {
                h.append("origin", origin.parse().unwrap());
            }
            assert_eq!(
                check(&h, &o),
                Err(ClientError::BadHandshake("more than one Origin header"))
            );
        }
        assert!(check(&headers(Some("")), &o).is_err());
        assert_eq!(
            check(&headers(Some("")), &opts(vec![], true)),
            Err(ClientError::OriginMissing)
        );
        assert!(check(&headers(Some("")), &opts(vec![], false)).is_ok());
    }

    #[test]
    fn exact_scheme_host_port() {
        let o = opts(vec![pattern("https", "client.com", 443, false)], false);
        assert!(check(&headers(Some("https://client.com")), &o).is_ok());
        assert!(check(&headers(Some("https://CLIENT.com:443")), &o).is_ok());
        assert!(check(&headers(Some("http://client.com")), &o).is_err());
        assert!(check(&headers(Some("https://client.com:8443")), &o).is_err());
        assert!(check(&headers(Some("https://evil-client.com")), &o).is_err());
        assert!(check(&headers(Some("null")), &o).is_err());
    }

    #[test]
    fn wildcard_matches_subdomains_only() {
        let o = opts(vec![pattern("https", "example.com", 443, true)], false);
        assert!(check(&headers(Some("https://a.example.com")), &o).is_ok());
        assert!(check(&headers(Some("https://a.b.example.com")), &o).is_ok());
        assert!(check(&headers(Some("https://example.com")), &o).is_err());
        assert!(check(&headers(Some("https://badexample.com")), &o).is_err());
    }

    #[test]
    fn ipv6_origins_match_the_configured_form() {
        let o = opts(vec![pattern("http", "::1", 8080, false)], false);
        assert!(check(&headers(Some("http://[::1]:8080")), &o).is_ok());
        assert!(check(&headers(Some("http://[0:0:0:0:0:0:0:1]:8080")), &o).is_ok());
        assert!(check(&headers(Some("http://[::1]:8081")), &o).is_err());
        assert!(check(&headers(Some("http://[::2]:8080")), &o).is_err());
        assert!(check(&headers(Some("http://::1:8080")), &o).is_err());
        assert!(check(&headers(Some("http://[::1")), &o).is_err());
        assert!(check(&headers(Some("http://[nope]:8080")), &o).is_err());
        let o = opts(vec![pattern("https", "fe80::a", 443, false)], false);
        assert!(check(&headers(Some("https://[FE80::A]")), &o).is_ok());
    }

    /// The pattern as the config loader makes it, against the header as a browser sends it.
    #[test]
    fn a_configured_ipv6_origin_is_allowed() {
        let yaml = "listen:\n  - address: 127.0.0.1:0\nwebsockets:\n  allowed_origins: [\"http://[::1]:8080\"]\n";
        let config = crate::config::load_str(yaml, "t.yaml", std::path::Path::new("")).unwrap();
        assert!(check(&headers(Some("http://[::1]:8080")), &config.websockets).is_ok());
        assert!(check(&headers(Some("http://[::1]:8081")), &config.websockets).is_err());
    }

    #[test]
    fn missing_origin() {
        let o = opts(vec![pattern("https", "client.com", 443, false)], false);
        assert!(check(&headers(None), &o).is_ok());
        let o = opts(vec![], true);
        assert_eq!(check(&headers(None), &o), Err(ClientError::OriginMissing));
        assert!(check(&headers(Some("http://anything")), &o).is_ok());
    }
}
