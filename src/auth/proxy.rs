//! The client address behind trusted reverse proxies.
//!
//! Each proxy appends the address it received the connection from, so the list reads from the
//! client on the left to the last proxy on the right; only the right end is written by parties we
//! trust. Walking from the right past trusted hops, the first untrusted address is the client: the
//! entries left of it were written by the client itself and prove nothing. Every line of the
//! header counts (a proxy may add its own line rather than extend the client's), and
//! `Forwarded` (RFC 7239) is read by its `for=` parameters.

use axum::http::{HeaderMap, HeaderName};
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};

#[derive(Debug)]
pub struct TrustedProxies {
    header: HeaderName,
    networks: Vec<IpNet>,
}

/// A trusted proxy sent no address that could be used as the client's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoClientAddress;

impl TrustedProxies {
    pub fn new(header: HeaderName, networks: Vec<IpNet>) -> Self {
        let networks = networks.into_iter().map(canonical_net).collect();
        Self { header, networks }
    }

    pub fn header(&self) -> &HeaderName {
        &self.header
    }

    fn trusts(&self, address: IpAddr) -> bool {
        self.networks.iter().any(|net| net.contains(&address))
    }

    /// The address of the client: the peer itself unless the peer is a trusted proxy.
    pub fn client_address(
        &self,
        headers: &HeaderMap,
        peer: IpAddr,
    ) -> Result<IpAddr, NoClientAddress> {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return Ok(peer);
        }
        let hops = self.hops(headers);
        let mut leftmost = None;
        for hop in hops.iter().rev() {
            // An unreadable hop where the walk needs one could hide the client: fail closed.
            let address = hop.ok_or(NoClientAddress)?;
            if !self.trusts(address) {
                return Ok(address);
            }
            leftmost = Some(address);
        }
        // Every hop is a trusted address: the request started inside the trusted networks.
        leftmost.ok_or(NoClientAddress)
    }

    /// Every hop the header lists, in order, across all of its lines.
    fn hops(&self, headers: &HeaderMap) -> Vec<Option<IpAddr>> {
        let rfc7239 = self.header == axum::http::header::FORWARDED;
        let mut hops = Vec::new();
        for line in headers.get_all(&self.header) {
            let Ok(text) = line.to_str() else {
                hops.push(None);
                continue;
            };
            if rfc7239 {
                hops.extend(forwarded_for(text));
            } else {
                hops.extend(text.split(',').map(|item| parse_node(item.trim())));
            }
        }
        hops
    }
}

/// The `for=` value of each element of a `Forwarded` line; an element without one is unusable.
fn forwarded_for(line: &str) -> Vec<Option<IpAddr>> {
    split_outside_quotes(line, ',')
        .into_iter()
        .map(|element| {
            split_outside_quotes(element, ';')
                .into_iter()
                .find_map(|pair| {
                    let (name, value) = pair.split_once('=')?;
                    name.trim()
                        .eq_ignore_ascii_case("for")
                        .then(|| value.trim().trim_matches('"'))
                })
        })
        .map(|node| node.and_then(parse_node))
        .collect()
}

fn split_outside_quotes(text: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut quoted = false;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c == separator && !quoted => {
                parts.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// One node: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]` or
/// `[2001:db8::1]:4711`. Obfuscated identifiers and `unknown` are not addresses.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(address) = node.parse::<IpAddr>() {
        return Some(canonical(address));
    }
    if let Ok(socket) = node.parse::<SocketAddr>() {
        return Some(canonical(socket.ip()));
    }
    let bracketed = node.strip_prefix('[')?.strip_suffix(']')?;
    bracketed.parse::<IpAddr>().ok().map(canonical)
}

/// A network written in IPv4-mapped form (`::ffff:10.0.0.0/104`) is the IPv4 network, so that
/// it matches the canonical addresses it is compared with.
pub fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(IpNet::V4)
                .unwrap_or(net),
            None => net,
        },
        other => other,
    }
}

/// An IPv4 address seen through an IPv6 socket (`::ffff:192.0.2.1`) is the IPv4 address.
pub fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(address),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn proxies(header: &str, nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(
            HeaderName::try_from(header).unwrap(),
            nets.iter().map(|n| n.parse().unwrap()).collect(),
        )
    }

    fn lines(name: &'static str, values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    const PROXY: &str = "10.0.0.5";

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let p = proxies("x-forwarded-for", &["10.0.0.0/8"]);
        let headers = lines("x-forwarded-for", &["203.0.113.9, 198.51.100.1, 10.0.0.7"]);
        assert_eq!(
            p.client_address(&headers, ip(PROXY)),
            Ok(ip("198.51.100.1"))
        );
    }

    #[test]
    fn a_line_the_proxy_appends_is_read_after_the_clients_own_line() {
        // The client sent its own X-Forwarded-For line; the proxy added a second one.
        let p = proxies("x-forwarded-for", &["10.0.0.0/8"]);
        let headers = lines("x-forwarded-for", &["203.0.113.9", "198.51.100.1"]);
        assert_eq!(
            p.client_address(&headers, ip(PROXY)),
            Ok(ip("198.51.100.1"))
        );
    }

    #[test]
    fn a_trusted_proxy_without_a_usable_address_gives_none() {
        let p = proxies("x-forwarded-for", &["10.0.0.0/8"]);
        for values in [&[][..], &["garbage"], &["203.0.113.9, nonsense"], &[""]] {
            let headers = lines("x-forwarded-for", values);
            assert_eq!(
                p.client_address(&headers, ip(PROXY)),
                Err(NoClientAddress),
                "{values:?}"
            );
        }
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let p = proxies("x-forwarded-for", &["10.0.0.0/8"]);
        let headers = lines("x-forwarded-for", &["203.0.113.9"]);
        assert_eq!(
            p.client_address(&headers, ip("198.51.100.7")),
            Ok(ip("198.51.100.7"))
        );
    }

    #[test]
    fn ipv4_mapped_addresses_match_ipv4_networks() {
        let p = proxies("x-forwarded-for", &["10.0.0.0/8"]);
        let headers = lines("x-forwarded-for", &["::ffff:203.0.113.9, ::ffff:10.0.0.6"]);
        assert_eq!(
            p.client_address(&headers, ip("::ffff:10.0.0.5")),
            Ok(ip("203.0.113.9"))
        );
    }

    #[test]
    fn ipv4_mapped_networks_match_ipv4_addresses() {
        let p = proxies("x-forwarded-for", &["::ffff:10.0.0.0/104"]);
        let headers = lines("x-forwarded-for", &["203.0.113.9"]);
        assert_eq!(p.client_address(&headers, ip(PROXY)), Ok(ip("203.0.113.9")));
        assert_eq!(
            canonical_net("::ffff:192.0.2.0/120".parse().unwrap()),
            "192.0.2.0/24".parse::<IpNet>().unwrap()
        );
    }

    #[test]
    fn forwarded_for_is_read_with_quotes_ports_and_brackets() {
        let p = proxies("forwarded", &["10.0.0.0/8", "2001:db8:ff::/48"]);
        let headers = lines(
            "forwarded",
            &[
                "for=192.0.2.60;proto=http;by=203.0.113.43",
                "for=\"[2001:db8:cafe::17]:4711\", for=\"10.0.0.9:1234\";proto=https",
            ],
        );
        assert_eq!(
            p.client_address(&headers, ip(PROXY)),
            Ok(ip("2001:db8:cafe::17"))
        );
        let hidden = lines("forwarded", &["for=_hidden, for=10.0.0.8"]);
        assert_eq!(p.client_address(&hidden, ip(PROXY)), Err(NoClientAddress));
        let unknown = lines("forwarded", &["for=unknown"]);
        assert_eq!(p.client_address(&unknown, ip(PROXY)), Err(NoClientAddress));
    }

    #[test]
    fn ports_on_forwarded_for_entries_are_ignored() {
        let p = proxies("x-forwarded-for", &["10.0.0.0/8"]);
        let headers = lines("x-forwarded-for", &["203.0.113.9:5555, [2001:db8::1]:80"]);
        assert_eq!(p.client_address(&headers, ip(PROXY)), Ok(ip("2001:db8::1")));
    }
}
