//! The ASP.NET Core sample's test page, compiled in so the binary needs no files at run time.

pub const HTML: &str = include_str!("page.html");

/// The page, set to connect to `ws_path` (the route it should try first). Route paths are kept
/// decoded (the route written `/a%3Fb` is `/a?b`), and the page's URL must route back to the
/// same route, so the path is percent-encoded again: bare, a `?` or `#` would end the path and
/// a `%` start an escape. The encoded path is printable ASCII without `"`, `\` or `<`, so as a
/// JSON string, which is a JavaScript one, it can end neither the string nor the script element.
pub fn html(ws_path: &str) -> String {
    let literal = crate::metrics::json_string(&url_path(ws_path));
    HTML.replacen("WS_PATH", &literal, 1)
}

/// `path` with every byte outside RFC 3986's path characters (unreserved, sub-delims, `:`, `@`,
/// `/`) written `%XX`, non-ASCII as its UTF-8 bytes: what a request for it decodes back to.
fn url_path(path: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(path.len());
    for &b in path.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The route the page connects to: the first WebSocket route for any host, echo before relay
/// or passthrough, as the sample is an echo client; `/ws` (the sample's own) when there is none.
pub fn ws_path(routes: &[crate::config::Route]) -> &str {
    use crate::config::WsMode;
    let for_any_host = |mode: WsMode| {
        routes
            .iter()
            .find(|r| r.host.is_none() && r.websocket == mode)
            .map(|r| r.path.as_str())
    };
    for_any_host(WsMode::Echo)
        .or_else(|| for_any_host(WsMode::Relay))
        .or_else(|| for_any_host(WsMode::Passthrough))
        .unwrap_or("/ws")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_connects_to_the_path_it_is_given() {
        let page = html("/echo");
        assert!(page.contains(r#"location.host + "/echo";"#));
        assert!(!page.contains("WS_PATH"));
        assert!(html("/a</script>").contains(r#""/a%3C/script%3E""#));
    }

    #[test]
    fn the_path_is_percent_encoded_for_the_url() {
        for (decoded, encoded) in [
            ("/a?b", "/a%3Fb"),
            ("/a#b", "/a%23b"),
            ("/a%b", "/a%25b"),
            ("/a b", "/a%20b"),
            ("/a\tb\u{7f}", "/a%09b%7F"),
            ("/café", "/caf%C3%A9"),
            ("/q\"<>\\`^{|}[]", "/q%22%3C%3E%5C%60%5E%7B%7C%7D%5B%5D"),
            ("/v1/a-b_c.d~e!$&'()*+,;=:@", "/v1/a-b_c.d~e!$&'()*+,;=:@"),
        ] {
            assert_eq!(url_path(decoded), encoded);
            // What the gateway routes the encoded path by is the route's own path.
            assert_eq!(crate::router::routing_path(encoded).unwrap(), decoded);
        }
    }
}
