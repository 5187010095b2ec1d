//! The client's IP address: the connection's peer, or, when the peer is a trusted proxy,
//! the address that proxy put in `X-Forwarded-For`.
//!
//! `X-Forwarded-For` lists the client first and each proxy appends the peer it saw, so
//! the list is read from the right, skipping trusted proxies: the first untrusted address
//! is the client. Anything left of it could have been written by the client itself.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, OptionalFromRequestParts, Request, State};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;

pub use cairn_events::ip::IpRange;

/// The client's address as [`layer`] resolved it (the peer, or what a trusted proxy said
/// in `X-Forwarded-For`). Routes take it as an extractor: `client: Option<ClientIp>` (it
/// is absent only when a router is driven without the layer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

impl<S: Send + Sync> OptionalFromRequestParts<S> for ClientIp {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, Infallible> {
        Ok(parts.extensions.get::<ClientIp>().copied())
    }
}

/// Resolve the client of a request that arrived from `peer`.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[IpRange]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|range| range.contains(ip));
    let peer = peer.to_canonical();
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    // Several headers are one list, in order. A hop that is not text stays in the list as
    // garbage (and stops the walk), rather than hiding the hops around it.
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|hop| std::str::from_utf8(hop).map_or("", str::trim))
        .collect::<Vec<_>>();
    for hop in hops.into_iter().rev() {
        let Some(ip) = parse_hop(hop) else {
            // Garbage from here leftwards cannot be trusted: stop at the last good hop.
            break;
        };
        client = ip;
        if !is_trusted(ip) {
            break;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5678`,
/// `[::1]:5678`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    hop.parse::<SocketAddr>()
        .ok()
        .map(|a| a.ip().to_canonical())
}

/// Middleware: resolve the client address and store it as [`ClientIp`].
pub async fn layer(
    State(trusted): State<Arc<[IpRange]>>,
    mut request: Request,
    next: Next,
) -> Response {
    // Absent only when the router is driven without a socket (in-process tests).
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([127, 0, 0, 1]), |ConnectInfo(a)| a.ip());
    let client = resolve(peer, request.headers(), &trusted);
    request.extensions_mut().insert(ClientIp(client));
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn ranges(list: &[&str]) -> Vec<IpRange> {
        list.iter()
            .map(|r| r.parse().unwrap_or_else(|e| panic!("{e}")))
            .collect()
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(
                "x-forwarded-for",
                HeaderValue::from_str(v).unwrap_or_else(|e| panic!("{e}")),
            );
        }
        headers
    }

    #[test]
    fn ranges_parse_and_match() {
        let r: IpRange = "172.16.0.0/12".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(r.contains(ip("172.20.1.2")));
        assert!(!r.contains(ip("172.32.0.1")));
        assert!(r.contains(ip("::ffff:172.16.0.9")));
        let one: IpRange = "10.0.0.1".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(one.contains(ip("10.0.0.1")) && !one.contains(ip("10.0.0.2")));
        let all: IpRange = "0.0.0.0/0".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(all.contains(ip("8.8.8.8")));
        let v6: IpRange = "fd00::/8".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        assert!("10.0.0.0/33".parse::<IpRange>().is_err());
        assert!("proxy.local".parse::<IpRange>().is_err());
    }

    #[test]
    fn untrusted_peers_are_the_client_whatever_they_claim() {
        let trusted = ranges(&["10.0.0.0/8"]);
        let headers = forwarded(&["1.2.3.4"]);
        assert_eq!(
            resolve(ip("203.0.113.9"), &headers, &trusted),
            ip("203.0.113.9")
        );
        assert_eq!(resolve(ip("203.0.113.9"), &headers, &[]), ip("203.0.113.9"));
    }

    #[test]
    fn trusted_proxies_are_skipped_from_the_right() {
        let trusted = ranges(&["10.0.0.0/8", "192.168.1.1"]);
        // The client forged the first entry; the edge proxy appended the real one.
        let headers = forwarded(&["6.6.6.6, 198.51.100.7", "192.168.1.1"]);
        assert_eq!(
            resolve(ip("10.1.1.1"), &headers, &trusted),
            ip("198.51.100.7")
        );
        // Ports and IPv6 brackets are accepted.
        let headers = forwarded(&["[2001:db8::1]:4711, 10.0.0.5:80"]);
        assert_eq!(
            resolve(ip("10.1.1.1"), &headers, &trusted),
            ip("2001:db8::1")
        );
    }

    #[test]
    fn missing_or_broken_headers_fall_back_to_the_nearest_known_hop() {
        let trusted = ranges(&["10.0.0.0/8"]);
        assert_eq!(
            resolve(ip("10.1.1.1"), &HeaderMap::new(), &trusted),
            ip("10.1.1.1")
        );
        let headers = forwarded(&["1.2.3.4, garbage, 10.0.0.7"]);
        assert_eq!(resolve(ip("10.1.1.1"), &headers, &trusted), ip("10.0.0.7"));
        // Bytes that are not text in one hop do not hide the real client after it.
        let mut headers = HeaderMap::new();
        let value =
            HeaderValue::from_bytes(b"6.6.6.6\xff, 198.51.100.7").unwrap_or_else(|e| panic!("{e}"));
        headers.append("x-forwarded-for", value);
        assert_eq!(
            resolve(ip("10.1.1.1"), &headers, &trusted),
            ip("198.51.100.7")
        );
        // Everything trusted: the leftmost address is the best answer.
        let headers = forwarded(&["10.9.9.9, 10.0.0.7"]);
        assert_eq!(resolve(ip("10.1.1.1"), &headers, &trusted), ip("10.9.9.9"));
    }
}
