//! PROXY protocol v1 and v2 (HAProxy's spec), for listeners behind an L4 load balancer such as
//! AWS NLB or HAProxy in TCP mode: the header names the real client, which then drives origin
//! logs, limits, ip_hash and access logs. The header is read byte-exact, never past its end, so
//! the TLS or HTTP bytes behind it reach the next layer untouched.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
/// The longest v1 line the spec allows, CRLF included.
const V1_MAX: usize = 107;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyHeaderError {
    #[error("connection closed before a complete PROXY header")]
    Truncated,
    #[error("not a PROXY protocol header")]
    NotProxy,
    #[error("malformed PROXY v1 header")]
    BadV1,
    #[error("malformed PROXY v2 header")]
    BadV2,
}

/// Reads the header. `Ok(None)` means the balancer speaks for itself (v2 LOCAL, v1 UNKNOWN, or a
/// non-IP family): the TCP peer stays the client address.
pub async fn read_header<R: AsyncRead + Unpin>(
    io: &mut R,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    // Twelve bytes are safe to take in one go: the shortest v1 header ("PROXY UNKNOWN\r\n") is 15.
    let mut start = [0u8; 12];
    io.read_exact(&mut start)
        .await
        .map_err(|_| ProxyHeaderError::Truncated)?;
    if start == V2_SIGNATURE {
        return read_v2(io).await;
    }
    if !start.starts_with(b"PROXY ") {
        return Err(ProxyHeaderError::NotProxy);
    }
    let mut line = start.to_vec();
    while !line.ends_with(b"\r\n") {
        if line.len() >= V1_MAX {
            return Err(ProxyHeaderError::BadV1);
        }
        let b = io
            .read_u8()
            .await
            .map_err(|_| ProxyHeaderError::Truncated)?;
        line.push(b);
    }
    parse_v1(&line[..line.len() - 2])
}

fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let text = std::str::from_utf8(line).map_err(|_| ProxyHeaderError::BadV1)?;
    let parts: Vec<&str> = text.split(' ').collect();
    match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(None),
        ["PROXY", family @ ("TCP4" | "TCP6"), src, _dst, sport, _dport] => {
            let ip: IpAddr = src.parse().map_err(|_| ProxyHeaderError::BadV1)?;
            if (*family == "TCP4") != ip.is_ipv4() {
                return Err(ProxyHeaderError::BadV1);
            }
            let port: u16 = sport.parse().map_err(|_| ProxyHeaderError::BadV1)?;
            Ok(Some(SocketAddr::new(ip, port)))
        }
        _ => Err(ProxyHeaderError::BadV1),
    }
}

async fn read_v2<R: AsyncRead + Unpin>(io: &mut R) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut head = [0u8; 4];
    io.read_exact(&mut head)
        .await
        .map_err(|_| ProxyHeaderError::Truncated)?;
    let (ver_cmd, family) = (head[0], head[1]);
    let len = u16::from_be_bytes([head[2], head[3]]) as usize;
    if ver_cmd >> 4 != 2 {
        return Err(ProxyHeaderError::BadV2);
    }
    let mut body = vec![0u8; len];
    io.read_exact(&mut body)
        .await
        .map_err(|_| ProxyHeaderError::Truncated)?;
    match ver_cmd & 0x0F {
        0 => return Ok(None), // LOCAL: a health check from the balancer itself
        1 => {}
        _ => return Err(ProxyHeaderError::BadV2),
    }
    // The high half is the address family, the low half the transport; only these pairs
    // exist, and the spec has receivers refuse any other rather than guess at its addresses.
    if !matches!(family, 0x00 | 0x11 | 0x12 | 0x21 | 0x22 | 0x31 | 0x32) {
        return Err(ProxyHeaderError::BadV2);
    }
    match family >> 4 {
        1 if body.len() >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            let port = u16::from_be_bytes([body[8], body[9]]);
            Ok(Some(SocketAddr::new(IpAddr::V4(ip), port)))
        }
        2 if body.len() >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[..16]);
            let port = u16::from_be_bytes([body[32], body[33]]);
            Ok(Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                port,
            )))
        }
        1 | 2 => Err(ProxyHeaderError::BadV2),
        _ => Ok(None), // AF_UNIX or unspecified
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> (Result<Option<SocketAddr>, ProxyHeaderError>, Vec<u8>) {
        let mut r = bytes;
        let res = read_header(&mut r).await;
        (res, r.to_vec())
    }

    #[tokio::test]
    async fn v2_families_outside_the_spec_are_refused() {
        let header = |family: u8| {
            let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
            h.extend([
                0x21, family, 0, 12, 192, 0, 2, 99, 127, 0, 0, 1, 0x9c, 0x40, 0, 80,
            ]);
            h
        };
        for family in [0x10, 0x13, 0x15, 0x1F, 0x23, 0x01, 0x41, 0xF1] {
            assert_eq!(
                parse(&header(family)).await.0,
                Err(ProxyHeaderError::BadV2),
                "{family:#x}"
            );
        }
        assert_eq!(
            parse(&header(0x11)).await.0,
            Ok(Some("192.0.2.99:40000".parse().unwrap()))
        );
        assert_eq!(parse(&header(0x00)).await.0, Ok(None));
    }

    #[tokio::test]
    async fn v1_tcp4_and_tcp6_leave_the_rest_untouched() {
        let (res, rest) =
            parse(b"PROXY TCP4 192.0.2.7 10.0.0.1 51234 443\r\nGET / HTTP/1.1\r\n").await;
        assert_eq!(res, Ok(Some("192.0.2.7:51234".parse().unwrap())));
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");
        let (res, _) = parse(b"PROXY TCP6 2001:db8::1 ::1 4000 80\r\n").await;
        assert_eq!(res, Ok(Some("[2001:db8::1]:4000".parse().unwrap())));
        let (res, _) = parse(b"PROXY UNKNOWN\r\n").await;
        assert_eq!(res, Ok(None));
    }

    #[tokio::test]
    async fn v2_proxy_and_local() {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[
            0x21, 0x11, 0, 12, 198, 51, 100, 9, 10, 0, 0, 1, 0x1F, 0x90, 0x01, 0xBB,
        ]);
        h.extend_from_slice(b"rest");
        let (res, rest) = parse(&h).await;
        assert_eq!(res, Ok(Some("198.51.100.9:8080".parse().unwrap())));
        assert_eq!(rest, b"rest");
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse(&local).await.0, Ok(None));
    }

    #[tokio::test]
    async fn garbage_is_refused() {
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.0,
            Err(ProxyHeaderError::NotProxy)
        );
        assert_eq!(
            parse(b"PROXY TCP4 not-an-ip 10.0.0.1 1 2\r\n").await.0,
            Err(ProxyHeaderError::BadV1)
        );
        assert_eq!(
            parse(b"PROXY TCP4 192.0.2.7 10.0.0.1 1 2").await.0,
            Err(ProxyHeaderError::Truncated)
        );
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(200));
        assert_eq!(parse(long.as_bytes()).await.0, Err(ProxyHeaderError::BadV1));
        let mut bad = V2_SIGNATURE.to_vec();
        bad.extend_from_slice(&[0x31, 0x11, 0, 0]);
        assert_eq!(parse(&bad).await.0, Err(ProxyHeaderError::BadV2));
    }
}
