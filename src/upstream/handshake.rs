//! The upgrade request wsgate sends to an upstream, and the check of the answer. Relay (wsgate
//! speaks WebSocket to the app itself) and passthrough (the client's own handshake is forwarded)
//! share it, because in both a tunnel may only open on a genuine 101 for the key that was sent:
//! an app that answers 200, or a 101 meant for some other request, would otherwise let the
//! client's next bytes reach the app as a smuggled HTTP request.

use std::net::IpAddr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use super::connect::UpstreamStream;
use crate::config::Upstream;
use crate::error::UpstreamError;
use crate::ws::handshake::{accept_key, header_has_token, offered_protocols};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Whether the upstream really switched to WebSocket for the key we sent. Anything else means
/// no tunnel: the connection is then only good for relaying that one answer, if at all.
pub fn check_upgrade_response<B>(resp: &Response<B>, expected_accept: &str) -> Result<(), String> {
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(format!("answered {} instead of 101", resp.status()));
    }
    // HTTP/1.0 has no 1xx and no Upgrade (RFC 9110 7.8): a 101 in it is no switch to trust.
    if resp.version() != http::Version::HTTP_11 {
        return Err(format!("answered 101 over {:?}", resp.version()));
    }
    let headers = resp.headers();
    if !header_has_token(headers, header::UPGRADE, "websocket") {
        return Err("101 without Upgrade: websocket".into());
    }
    if !header_has_token(headers, header::CONNECTION, "upgrade") {
        return Err("101 without Connection: upgrade".into());
    }
    let mut accepts = headers.get_all(header::SEC_WEBSOCKET_ACCEPT).iter();
    match (accepts.next(), accepts.next()) {
        (Some(v), None) if v.as_bytes() == expected_accept.as_bytes() => Ok(()),
        (None, _) => Err("101 without Sec-WebSocket-Accept".into()),
        _ => Err("Sec-WebSocket-Accept does not match the key sent".into()),
    }
}

/// The request target on the upstream: its base path, then the client's path and query.
pub fn target_uri(upstream: &Upstream, client_uri: &Uri) -> Result<Uri, UpstreamError> {
    let pq = client_uri
        .path_and_query()
        .map_or("/", PathAndQuery::as_str);
    format!("{}{}", upstream.base_path, pq)
        .parse()
        .map_err(|e| UpstreamError::UpgradeRefused(format!("cannot build the upstream path: {e}")))
}

/// `Host` for a request wsgate makes in its own name: the upstream's host, with the brackets an
/// IPv6 literal needs (the config stores it bare) and the port unless it is the scheme's default.
pub fn upstream_host(upstream: &Upstream) -> String {
    let host = if upstream.host.contains(':') && !upstream.host.starts_with('[') {
        format!("[{}]", upstream.host)
    } else {
        upstream.host.clone()
    };
    let default_port = if upstream.tls { 443 } else { 80 };
    if upstream.port == default_port {
        host
    } else {
        format!("{host}:{}", upstream.port)
    }
}

/// Sets X-Forwarded-For, -Proto and -Host and Forwarded on a request wsgate makes in its own
/// name (relay): the client's chains, extended exactly as the reverse proxy and passthrough
/// extend them, so an app sees the same whichever mode a route uses.
pub fn set_forwarded(out: &mut HeaderMap, client: &HeaderMap, peer: IpAddr, tls: bool) {
    for name in [X_FORWARDED_FOR, header::FORWARDED] {
        out.remove(&name);
        for v in client.get_all(&name) {
            out.append(name.clone(), v.clone());
        }
    }
    crate::proxy::add_forwarding_headers(out, peer, tls, client.get(header::HOST));
}

/// Sends one upgrade request on a fresh HTTP/1.1 connection and returns the answer's head.
/// The connection is driven by its own task with upgrades enabled, so a 101's socket can be
/// taken with `hyper::upgrade::on`, and any other answer's body streams to whoever reads it.
/// hyper is handed the socket or TLS stream itself, not the enum, so that [`crate::upgraded`]
/// can take it back after the 101.
pub async fn send_upgrade(
    stream: UpstreamStream,
    req: Request<Empty<Bytes>>,
) -> Result<Response<Incoming>, UpstreamError> {
    let mut sender = match stream {
        UpstreamStream::Plain(tcp) => drive(tcp).await?,
        UpstreamStream::Tls(tls) => drive(tls).await?,
    };
    sender.send_request(req).await.map_err(UpstreamError::Http)
}

async fn drive<T>(io: T) -> Result<SendRequest<Empty<Bytes>>, UpstreamError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(UpstreamError::Http)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// An upstream WebSocket that wsgate opened for a relayed client.
pub struct UpstreamSocket {
    pub io: Upgraded,
    /// The subprotocol the upstream chose, always one the client offered.
    pub protocol: Option<String>,
    /// The app's `Set-Cookie` fields on its 101, for the client's 101: the app sees the
    /// client's cookies (forwarded above), so it may set them too, as it can in passthrough.
    pub set_cookies: Vec<HeaderValue>,
}

/// Opens a WebSocket to the upstream in wsgate's own name: a fresh key, the client's offered
/// subprotocols (see [`protocols_to_offer`]) and credentials, and no extensions, since relay
/// forwards frames one by one and could not re-frame a compressed message. The caller bounds
/// it with `upstream_timeout`.
pub async fn open_websocket(
    stream: UpstreamStream,
    upstream: &Upstream,
    client_uri: &Uri,
    client: &HeaderMap,
    subprotocols: &[String],
    peer: IpAddr,
    tls: bool,
) -> Result<UpstreamSocket, UpstreamError> {
    let key = BASE64.encode(rand::random::<[u8; 16]>());
    let mut req = Request::get(target_uri(upstream, client_uri)?)
        .body(Empty::<Bytes>::new())
        .expect("GET with a parsed URI");
    let headers = req.headers_mut();
    if let Ok(host) = HeaderValue::from_str(&upstream_host(upstream)) {
        headers.insert(header::HOST, host);
    }
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(
        header::SEC_WEBSOCKET_VERSION,
        HeaderValue::from_static("13"),
    );
    headers.insert(
        header::SEC_WEBSOCKET_KEY,
        HeaderValue::from_str(&key).expect("base64 is a valid header value"),
    );
    let offered = protocols_to_offer(offered_protocols(client), subprotocols);
    if !offered.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&offered.join(", ")) {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
        }
    }
    for name in [header::ORIGIN, header::COOKIE, header::AUTHORIZATION] {
        for v in client.get_all(&name) {
            headers.append(name.clone(), v.clone());
        }
    }
    set_forwarded(headers, client, peer, tls);

    let mut resp = send_upgrade(stream, req).await?;
    check_upgrade_response(&resp, &accept_key(key.as_bytes()))
        .map_err(UpstreamError::UpgradeRefused)?;
    if resp
        .headers()
        .contains_key(header::SEC_WEBSOCKET_EXTENSIONS)
    {
        return Err(UpstreamError::UpgradeRefused(
            "chose an extension wsgate did not offer".into(),
        ));
    }
    let mut chosen = resp
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter();
    let protocol = match (chosen.next(), chosen.next()) {
        (None, _) => None,
        (Some(v), None) => match v.to_str() {
            Ok(p) if offered.iter().any(|o| o == p) => Some(p.to_owned()),
            _ => {
                return Err(UpstreamError::UpgradeRefused(format!(
                    "chose subprotocol {v:?}, which it was not offered"
                )))
            }
        },
        _ => {
            return Err(UpstreamError::UpgradeRefused(
                "answered with more than one Sec-WebSocket-Protocol".into(),
            ))
        }
    };
    let set_cookies = resp
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .cloned()
        .collect();
    let io = hyper::upgrade::on(&mut resp)
        .await
        .map_err(UpstreamError::Http)?;
    Ok(UpstreamSocket {
        io,
        protocol,
        set_cookies,
    })
}

/// What the upstream is offered of the client's subprotocols: all of them, or, when the route
/// lists some, those it lists, in the client's order. The route's list is what the gateway
/// lets through, as echo answers only from it; an empty result means the upstream is offered
/// none, and the client's 101 then carries none, as echo's does.
pub fn protocols_to_offer(offered: Vec<String>, subprotocols: &[String]) -> Vec<String> {
    if subprotocols.is_empty() {
        return offered;
    }
    offered
        .into_iter()
        .filter(|p| subprotocols.contains(p))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, headers: &[(&str, &str)]) -> Response<()> {
        let mut b = Response::builder().status(status);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    #[test]
    fn only_a_matching_101_passes() {
        let good = [
            ("upgrade", "WebSocket"),
            ("connection", "keep-alive, Upgrade"),
            ("sec-websocket-accept", ACCEPT),
        ];
        assert_eq!(
            check_upgrade_response(&response(101, &good), ACCEPT),
            Ok(())
        );
        assert!(check_upgrade_response(&response(200, &good), ACCEPT).is_err());
        assert!(check_upgrade_response(&response(101, &good[1..]), ACCEPT).is_err());
        assert!(check_upgrade_response(&response(101, &[good[0], good[2]]), ACCEPT).is_err());
        assert!(check_upgrade_response(&response(101, &good[..2]), ACCEPT).is_err());
        let wrong = [good[0], good[1], ("sec-websocket-accept", "AAAA")];
        assert!(check_upgrade_response(&response(101, &wrong), ACCEPT).is_err());
        let twice = [good[0], good[1], good[2], good[2]];
        assert!(check_upgrade_response(&response(101, &twice), ACCEPT).is_err());
        let h2c = [("upgrade", "h2c"), good[1], good[2]];
        assert!(check_upgrade_response(&response(101, &h2c), ACCEPT).is_err());
        let mut http10 = response(101, &good);
        *http10.version_mut() = http::Version::HTTP_10;
        assert!(check_upgrade_response(&http10, ACCEPT).is_err());
    }

    fn upstream(host: &str, port: u16, tls: bool, base_path: &str) -> Upstream {
        Upstream {
            url: String::new(),
            tls,
            host: host.into(),
            port,
            base_path: base_path.into(),
        }
    }

    #[test]
    fn the_routes_subprotocols_filter_the_offer_in_the_clients_order() {
        let list = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let client = list(&["x", "chat.v1", "chat.v2"]);
        assert_eq!(protocols_to_offer(client.clone(), &[]), client);
        assert_eq!(
            protocols_to_offer(client.clone(), &list(&["chat.v2", "chat.v1"])),
            list(&["chat.v1", "chat.v2"])
        );
        assert!(protocols_to_offer(client, &list(&["other"])).is_empty());
    }

    #[test]
    fn host_and_target() {
        assert_eq!(
            upstream_host(&upstream("::1", 9000, false, "")),
            "[::1]:9000"
        );
        assert_eq!(upstream_host(&upstream("::1", 443, true, "")), "[::1]");
        assert_eq!(upstream_host(&upstream("app", 80, false, "")), "app");
        assert_eq!(upstream_host(&upstream("app", 443, false, "")), "app:443");
        let u = upstream("app", 80, false, "/base");
        let target = target_uri(&u, &"/ws?room=1".parse().unwrap()).unwrap();
        assert_eq!(target, "/base/ws?room=1");
        let target = target_uri(&u, &"http://front.example/ws".parse().unwrap()).unwrap();
        assert_eq!(target, "/base/ws");
    }

    #[test]
    fn forwarded_headers_extend_the_chain() {
        let mut client = HeaderMap::new();
        client.insert("x-forwarded-for", "203.0.113.7".parse().unwrap());
        client.insert("host", "front.example:8443".parse().unwrap());
        let mut out = HeaderMap::new();
        set_forwarded(&mut out, &client, "10.0.0.2".parse().unwrap(), true);
        assert_eq!(out["x-forwarded-for"], "203.0.113.7, 10.0.0.2");
        assert_eq!(out["x-forwarded-proto"], "https");
        assert_eq!(out["x-forwarded-host"], "front.example:8443");
        assert_eq!(
            out["forwarded"],
            "for=10.0.0.2;proto=https;host=\"front.example:8443\""
        );
    }
}
