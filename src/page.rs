//! The ASP.NET Core sample's test page, compiled in so the binary needs no files at run time.

pub const HTML: &str = include_str!("page.html");

/// The page, set to connect to `ws_path` (the route it should try first). The path goes in as
/// a JSON string, which is a JavaScript one, with `<` escaped so that nothing in it can end the
/// script element.
pub fn html(ws_path: &str) -> String {
    let literal = crate::metrics::json_string(ws_path).replace('<', "\\u003c");
    HTML.replacen("WS_PATH", &literal, 1)
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
        assert!(html("/a</script>").contains(r#""/a\u003c/script>""#));
    }
}
