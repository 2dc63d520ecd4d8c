//! The client address of a request (api.md, "v2: keeping bots out"): the TCP peer's address,
//! or, when the peer is one of the `--trusted-proxies`, the address that proxy reports.
//!
//! The rule, from a trusted peer: walk `X-Forwarded-For` (or, when the request has none,
//! the `for=` of RFC 7239 `Forwarded`) from right to left, the header lines of that name
//! taken in order as one list; the first address not in a trusted range is the client.
//! Every proxy appends the address it saw, so what stands right of that address was written
//! by our own proxies and what stands left of it by the client, who may write anything: it
//! is never believed. When every address is trusted, the client is the leftmost. From an
//! untrusted peer the headers are ignored: anyone can send them.
//!
//! An entry that is not an address ends the walk at the nearest address found so far (the
//! last trusted one, or the peer): past it the list cannot be read. So do `unknown`, an
//! obfuscated node (`_hidden`) and a `Forwarded` element without `for=`, where one could
//! instead skip them: a trusted proxy that writes one does not know (or will not tell) who
//! its client was, so the entry left of it came from the client, and a bot could rotate it
//! to get a fresh per-address budget with every request.
//!
//! IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`, what a dual-stack socket reports for an
//! IPv4 peer) are taken as the IPv4 address, in the headers and in the trusted ranges too.
//!
//! The `Forwarded` parser is written here rather than taken from a crate: no such crate
//! (e.g. `forwarded-header-value`) is among the downloaded ones this workspace builds from,
//! and all it needs is the element and parameter lists, quoted strings and the node syntax.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::ControlFlow;
use std::str::FromStr;

use axum::extract::connect_info::MockConnectInfo;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, Extensions, HeaderMap, HeaderName};
use ipnet::{IpNet, Ipv4Net};
use thiserror::Error;

use crate::error::AppError;

/// Most entries of a forwarding header looked at, counted from the right. Only entries our
/// own proxies wrote are walked past, and no deployment chains this many; the bound keeps a
/// trusted peer's huge header from costing more than a few dozen parses.
pub const FORWARDED_HOPS_MAX: usize = 32;
/// Most ranges `--trusted-proxies` takes: each request from a trusted peer scans them once
/// per hop walked.
pub const TRUSTED_PROXIES_MAX: usize = 256;
/// The peer address used when a request carries no connection info: a router driven
/// without a socket (in-process tests through `tower::ServiceExt::oneshot`). All such
/// requests share it, and so share one per-address budget.
pub const UNKNOWN_PEER: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

/// Not a standard header, so `http` has no constant for it.
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The address ranges of the proxies whose forwarding headers are believed
/// (`--trusted-proxies`). Empty by default: the client is always the peer.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    /// Each truncated to its network; IPv4-mapped IPv6 ranges are kept as IPv4 ranges.
    nets: Vec<IpNet>,
}

/// Why a `--trusted-proxies` value cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ProxyListError {
    #[error("{entry:?} is not an IP address or a CIDR range such as 10.0.0.0/8 or 2001:db8::/32")]
    NotARange { entry: String },
    #[error("at most {TRUSTED_PROXIES_MAX} ranges are accepted")]
    TooMany,
}

impl TrustedProxies {
    /// `CIDR[,CIDR...]`, as the flag takes it; a bare address is a range of one (/32 or
    /// /128). Blank entries are ignored, so an empty string trusts no one.
    pub fn parse(list: &str) -> Result<TrustedProxies, ProxyListError> {
        TrustedProxies::from_entries(list.split(','))
    }

    /// One range per entry (the TOML array form); blank entries are ignored.
    pub fn from_entries<'a>(
        entries: impl IntoIterator<Item = &'a str>,
    ) -> Result<TrustedProxies, ProxyListError> {
        let mut nets = Vec::new();
        for entry in entries.into_iter().map(str::trim).filter(|e| !e.is_empty()) {
            if nets.len() == TRUSTED_PROXIES_MAX {
                return Err(ProxyListError::TooMany);
            }
            nets.push(parse_range(entry)?);
        }
        Ok(TrustedProxies { nets })
    }

    /// True when no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether `addr` (IPv4-mapped IPv6 taken as IPv4) is in one of the ranges.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        self.nets.iter().any(|net| net.contains(&addr))
    }
}

impl FromStr for TrustedProxies {
    type Err = ProxyListError;

    fn from_str(list: &str) -> Result<TrustedProxies, ProxyListError> {
        TrustedProxies::parse(list)
    }
}

impl fmt::Display for TrustedProxies {
    /// The ranges as the flag takes them: `10.0.0.0/8,2001:db8::/32`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, net) in self.nets.iter().enumerate() {
            if index > 0 {
                f.write_str(",")?;
            }
            write!(f, "{net}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for TrustedProxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustedProxies[{self}]")
    }
}

/// One range: a CIDR, or a bare address as a range of one.
fn parse_range(entry: &str) -> Result<IpNet, ProxyListError> {
    let net = IpNet::from_str(entry)
        .or_else(|_| IpAddr::from_str(entry).map(IpNet::from))
        .map_err(|_| ProxyListError::NotARange {
            entry: entry.to_owned(),
        })?;
    Ok(canonical_net(net.trunc()))
}

/// An IPv4-mapped IPv6 range (`::ffff:10.0.0.0/104`) as the IPv4 range it maps: addresses
/// are matched after being mapped to IPv4, so the IPv6 form would never match.
fn canonical_net(net: IpNet) -> IpNet {
    let IpNet::V6(v6) = net else {
        return net;
    };
    let mapped = v6.network().to_ipv4_mapped();
    let prefix_len = v6.prefix_len().checked_sub(96);
    match (mapped, prefix_len) {
        (Some(v4), Some(prefix_len)) => Ipv4Net::new(v4, prefix_len).map_or(net, IpNet::V4),
        _ => net,
    }
}

/// The client address of a request from `peer` (see the module docs).
pub fn client_addr(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted.contains(peer) {
        return peer;
    }
    let walk = Walk {
        trusted,
        nearest: peer,
        hops: 0,
    };
    if headers.contains_key(&X_FORWARDED_FOR) {
        walk_x_forwarded_for(walk, headers)
    } else {
        walk_forwarded(walk, headers)
    }
}

/// One entry of a forwarding header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hop {
    /// An address, IPv4-mapped IPv6 already taken as IPv4.
    Addr(IpAddr),
    /// `unknown`, an obfuscated node, or a `Forwarded` element without `for=`: the proxy
    /// that wrote it did not say who its client was.
    Undisclosed,
    /// Not readable as any of the above.
    Malformed,
}

/// The right-to-left walk over the entries: where it stands, and when it stops.
struct Walk<'a> {
    trusted: &'a TrustedProxies,
    /// The last trusted address met (at first the peer): the answer if the walk ends early.
    nearest: IpAddr,
    /// Entries looked at so far, bounded by [`FORWARDED_HOPS_MAX`].
    hops: usize,
}

impl Walk<'_> {
    /// Looks at the next entry to the left: `Break` with the client address once known.
    fn step(&mut self, hop: Hop) -> ControlFlow<IpAddr> {
        self.hops += 1;
        if self.hops > FORWARDED_HOPS_MAX {
            return ControlFlow::Break(self.nearest);
        }
        match hop {
            Hop::Addr(addr) if self.trusted.contains(addr) => {
                self.nearest = addr;
                ControlFlow::Continue(())
            }
            Hop::Addr(addr) => ControlFlow::Break(addr),
            // Both end the walk; see the module docs for why an undisclosed hop is not skipped.
            Hop::Undisclosed | Hop::Malformed => ControlFlow::Break(self.nearest),
        }
    }
}

/// `X-Forwarded-For: client, proxy1, proxy2`, every line of it in order.
fn walk_x_forwarded_for(mut walk: Walk<'_>, headers: &HeaderMap) -> IpAddr {
    for line in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        // Not visible ASCII: nothing in it can be read.
        let Ok(line) = line.to_str() else {
            return walk.nearest;
        };
        // Empty list elements are allowed and mean nothing (RFC 9110, section 5.6.1).
        for entry in line.rsplit(',').map(str::trim).filter(|e| !e.is_empty()) {
            if let ControlFlow::Break(client) = walk.step(x_forwarded_for_hop(entry)) {
                return client;
            }
        }
    }
    walk.nearest
}

/// `Forwarded: for=client;proto=https, for=proxy1`, every line of it in order.
fn walk_forwarded(mut walk: Walk<'_>, headers: &HeaderMap) -> IpAddr {
    for line in headers.get_all(header::FORWARDED).iter().rev() {
        let Ok(line) = line.to_str() else {
            return walk.nearest;
        };
        // A quoted string may hold a comma, so the line is split from the left (where a
        // quote opens) and then walked from the right.
        let elements: Vec<&str> = SplitOutsideQuotes::new(line, b',').collect();
        for element in elements.into_iter().rev().map(str::trim) {
            if element.is_empty() {
                continue;
            }
            if let ControlFlow::Break(client) = walk.step(forwarded_hop(element)) {
                return client;
            }
        }
    }
    walk.nearest
}

/// One `X-Forwarded-For` entry: an address, optionally with a port, or `unknown`.
fn x_forwarded_for_hop(entry: &str) -> Hop {
    if entry.eq_ignore_ascii_case("unknown") {
        return Hop::Undisclosed;
    }
    node_addr(entry).map_or(Hop::Malformed, |addr| Hop::Addr(addr.to_canonical()))
}

/// One `Forwarded` element (RFC 7239, section 4): `pair *( ";" pair )`, of which `for=`
/// names the node the proxy received the request from.
fn forwarded_hop(element: &str) -> Hop {
    let mut node = None;
    for pair in SplitOutsideQuotes::new(element, b';').map(str::trim) {
        if pair.is_empty() {
            continue;
        }
        let Some((name, value)) = pair.split_once('=') else {
            return Hop::Malformed;
        };
        if !name.eq_ignore_ascii_case("for") {
            continue;
        }
        // "Each parameter MUST NOT occur more than once per forwarded-element."
        if node.replace(value).is_some() {
            return Hop::Malformed;
        }
    }
    match node.map(unquote) {
        None => Hop::Undisclosed,
        Some(None) => Hop::Malformed,
        Some(Some(node)) => forwarded_node_hop(node),
    }
}

/// RFC 7239, section 6: `node = nodename [ ":" node-port ]`, where a nodename is an IPv4
/// address, a bracketed IPv6 address, `unknown` or an obfuscated `_name`.
fn forwarded_node_hop(node: &str) -> Hop {
    let name = node.split(':').next().unwrap_or(node);
    if name.eq_ignore_ascii_case("unknown") || name.starts_with('_') {
        return Hop::Undisclosed;
    }
    node_addr(node).map_or(Hop::Malformed, |addr| Hop::Addr(addr.to_canonical()))
}

/// The address of `1.2.3.4`, `1.2.3.4:80`, `[2001:db8::1]`, `[2001:db8::1]:4711`, or a bare
/// `2001:db8::1` (not RFC 7239's syntax, but what some proxies write in X-Forwarded-For).
fn node_addr(node: &str) -> Option<IpAddr> {
    if let Ok(addr) = node.parse::<IpAddr>() {
        return Some(addr);
    }
    if let Some(bracketed) = node.strip_prefix('[') {
        let (v6, after) = bracketed.split_once(']')?;
        let addr = v6.parse::<Ipv6Addr>().ok()?;
        let port_ok = after.is_empty() || after.strip_prefix(':').is_some_and(is_port);
        return port_ok.then_some(IpAddr::V6(addr));
    }
    let (v4, port) = node.split_once(':')?;
    let addr = v4.parse::<Ipv4Addr>().ok()?;
    is_port(port).then_some(IpAddr::V4(addr))
}

/// RFC 7239 `node-port = port / obfport`: 1 to 5 digits, or `_` then at least one of
/// ALPHA, DIGIT, `.`, `_`, `-`.
fn is_port(port: &str) -> bool {
    let digits = (1..=5).contains(&port.len()) && port.bytes().all(|b| b.is_ascii_digit());
    let obfuscated = port.strip_prefix('_').is_some_and(|name| {
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    });
    digits || obfuscated
}

/// A parameter value: a token as is, a quoted string without its quotes. None for a quoted
/// string that is not closed, or that holds a quote or an escape: no address needs one.
fn unquote(value: &str) -> Option<&str> {
    let Some(quoted) = value.strip_prefix('"') else {
        return Some(value);
    };
    let inner = quoted.strip_suffix('"')?;
    (!inner.contains(['"', '\\'])).then_some(inner)
}

/// The pieces of a header value between the `separator`s that stand outside quoted strings
/// (RFC 9110 quoted-string, with `\` escapes). An unclosed quote runs to the end of the
/// value: the piece holding it is found malformed when its value is read.
struct SplitOutsideQuotes<'a> {
    rest: Option<&'a str>,
    separator: u8,
}

impl<'a> SplitOutsideQuotes<'a> {
    fn new(text: &'a str, separator: u8) -> Self {
        SplitOutsideQuotes {
            rest: Some(text),
            separator,
        }
    }
}

impl<'a> Iterator for SplitOutsideQuotes<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let text = self.rest?;
        let mut quoted = false;
        let mut escaped = false;
        for (index, byte) in text.bytes().enumerate() {
            if escaped {
                escaped = false;
            } else if quoted && byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                quoted = !quoted;
            } else if !quoted && byte == self.separator {
                // The separator is ASCII, so both slices start on a character boundary.
                self.rest = Some(&text[index + 1..]);
                return Some(&text[..index]);
            }
        }
        self.rest = None;
        Some(text)
    }
}

/// Where the [`ClientAddr`] extractor finds the trusted ranges. The handlers' state
/// implements it; so can a test's.
pub trait TrustedProxySource {
    fn trusted_proxies(&self) -> &TrustedProxies;
}

/// The request's client address (see the module docs): what the per-address rate limit
/// counts and what a captcha check sends as `remoteip`. Never refuses a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

impl<S> FromRequestParts<S> for ClientAddr
where
    S: TrustedProxySource + Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        let peer = peer_addr(&parts.extensions);
        let client = client_addr(peer, &parts.headers, state.trusted_proxies());
        Ok(ClientAddr(client))
    }
}

/// The TCP peer's address, from the `ConnectInfo` the server attaches to every connection
/// (or a test's `MockConnectInfo`); [`UNKNOWN_PEER`] when there is neither.
pub fn peer_addr(extensions: &Extensions) -> IpAddr {
    if let Some(ConnectInfo(peer)) = extensions.get::<ConnectInfo<SocketAddr>>() {
        return peer.ip();
    }
    if let Some(MockConnectInfo(peer)) = extensions.get::<MockConnectInfo<SocketAddr>>() {
        return peer.ip();
    }
    UNKNOWN_PEER
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderValue, Request};

    /// Our proxies: a private IPv4 range and an IPv6 one.
    fn trusted() -> TrustedProxies {
        TrustedProxies::parse("10.0.0.0/8, 2001:db8:ffff::/48").expect("valid ranges")
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    /// Header lines in order; a name given twice makes two lines.
    fn headers(lines: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in lines {
            let name = HeaderName::from_bytes(name.as_bytes()).expect("a header name");
            map.append(name, HeaderValue::from_str(value).expect("a header value"));
        }
        map
    }

    /// The client address of a request from the trusted proxy 10.0.0.1 with `lines`.
    fn via_proxy(lines: &[(&str, &str)]) -> IpAddr {
        client_addr(ip("10.0.0.1"), &headers(lines), &trusted())
    }

    #[test]
    fn a_spoofed_header_from_an_untrusted_peer_is_ignored() {
        let spoofed = headers(&[
            ("x-forwarded-for", "198.51.100.1"),
            ("forwarded", "for=198.51.100.2"),
        ]);
        let peer = ip("203.0.113.7");
        assert_eq!(client_addr(peer, &spoofed, &trusted()), peer);
        let nobody = TrustedProxies::default();
        assert_eq!(
            client_addr(ip("10.0.0.1"), &spoofed, &nobody),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn the_rightmost_untrusted_address_is_the_client() {
        let got = via_proxy(&[("x-forwarded-for", "203.0.113.7, 10.0.0.2")]);
        assert_eq!(got, ip("203.0.113.7"));
        // What the client wrote itself, left of its own address, is not believed.
        let got = via_proxy(&[("x-forwarded-for", "198.51.100.1, 203.0.113.7, 10.0.0.2")]);
        assert_eq!(got, ip("203.0.113.7"));
        let got = via_proxy(&[("x-forwarded-for", "2001:db8:1::5, 2001:db8:ffff::1")]);
        assert_eq!(got, ip("2001:db8:1::5"));
    }

    #[test]
    fn when_every_address_is_trusted_the_leftmost_is_the_client() {
        let got = via_proxy(&[("x-forwarded-for", "10.0.0.3, 10.0.0.2")]);
        assert_eq!(got, ip("10.0.0.3"));
        // An empty header names no one: the peer.
        assert_eq!(via_proxy(&[("x-forwarded-for", "")]), ip("10.0.0.1"));
        assert_eq!(via_proxy(&[]), ip("10.0.0.1"));
    }

    #[test]
    fn several_header_lines_are_one_list_in_order() {
        let got = via_proxy(&[
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-for", "203.0.113.7, 10.0.0.2"),
        ]);
        assert_eq!(got, ip("203.0.113.7"));
        let got = via_proxy(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "10.0.0.5"),
        ]);
        assert_eq!(got, ip("203.0.113.9"));
        let got = via_proxy(&[
            ("forwarded", "for=198.51.100.1"),
            ("forwarded", "for=203.0.113.7, for=10.0.0.2"),
        ]);
        assert_eq!(got, ip("203.0.113.7"));
    }

    #[test]
    fn a_malformed_entry_ends_the_walk_at_the_last_good_address() {
        let got = via_proxy(&[("x-forwarded-for", "203.0.113.7, garbage, 10.0.0.2")]);
        assert_eq!(got, ip("10.0.0.2"));
        assert_eq!(via_proxy(&[("x-forwarded-for", "garbage")]), ip("10.0.0.1"));
        let got = via_proxy(&[("x-forwarded-for", "203.0.113.7, 10.0.0.2, 1.2.3.4.5")]);
        assert_eq!(got, ip("10.0.0.1"));
        let got = via_proxy(&[("x-forwarded-for", "203.0.113.7, 10.0.0.2:99999x")]);
        assert_eq!(got, ip("10.0.0.1"));
        // An unknown hop is not skipped: what stands left of it came from the client.
        let got = via_proxy(&[("x-forwarded-for", "198.51.100.1, unknown, 10.0.0.2")]);
        assert_eq!(got, ip("10.0.0.2"));
    }

    #[test]
    fn x_forwarded_for_entries_may_carry_ports_and_brackets() {
        let got = via_proxy(&[("x-forwarded-for", "[2001:db8::1]:443")]);
        assert_eq!(got, ip("2001:db8::1"));
        let got = via_proxy(&[("x-forwarded-for", "[2001:db8::2]")]);
        assert_eq!(got, ip("2001:db8::2"));
        let got = via_proxy(&[("x-forwarded-for", "203.0.113.7:5678")]);
        assert_eq!(got, ip("203.0.113.7"));
    }

    #[test]
    fn forwarded_is_read_when_there_is_no_x_forwarded_for() {
        let got = via_proxy(&[("forwarded", "for=203.0.113.7;proto=https, for=10.0.0.2")]);
        assert_eq!(got, ip("203.0.113.7"));
        let got = via_proxy(&[("forwarded", "for=\"[2001:db8::1]:4711\"")]);
        assert_eq!(got, ip("2001:db8::1"));
        let got = via_proxy(&[("forwarded", "For=\"198.51.100.17:80\";by=10.0.0.1")]);
        assert_eq!(got, ip("198.51.100.17"));
        let got = via_proxy(&[("forwarded", "proto=https;for=\"[2001:db8::3]\"")]);
        assert_eq!(got, ip("2001:db8::3"));
        // A comma inside a quoted string does not split the element.
        let got = via_proxy(&[("forwarded", "for=203.0.113.7;by=\"10.0.0.9,x\"")]);
        assert_eq!(got, ip("203.0.113.7"));
    }

    #[test]
    fn x_forwarded_for_wins_over_forwarded() {
        let got = via_proxy(&[
            ("forwarded", "for=198.51.100.1"),
            ("x-forwarded-for", "203.0.113.7"),
        ]);
        assert_eq!(got, ip("203.0.113.7"));
    }

    #[test]
    fn undisclosed_and_malformed_forwarded_nodes_end_the_walk() {
        let got = via_proxy(&[("forwarded", "for=198.51.100.1, for=unknown")]);
        assert_eq!(got, ip("10.0.0.1"));
        let got = via_proxy(&[("forwarded", "for=198.51.100.1, for=_hidden, for=10.0.0.2")]);
        assert_eq!(got, ip("10.0.0.2"));
        let got = via_proxy(&[("forwarded", "for=198.51.100.1, proto=https")]);
        assert_eq!(got, ip("10.0.0.1"));
        for malformed in [
            "for=\"203.0.113.7",
            "for=203.0.113.7;for=198.51.100.1",
            "for=\"[2001:db8::1\"",
            "for=\"[2001:db8::1]:http\"",
            "for",
            "for=\"2\\03.0.113.7\"",
        ] {
            assert_eq!(
                via_proxy(&[("forwarded", malformed)]),
                ip("10.0.0.1"),
                "{malformed}"
            );
        }
        // An obfuscated port still names the address.
        let got = via_proxy(&[("forwarded", "for=\"203.0.113.7:_p1\"")]);
        assert_eq!(got, ip("203.0.113.7"));
    }

    #[test]
    fn ipv4_mapped_addresses_are_taken_as_ipv4() {
        let mapped_proxy = ip("::ffff:10.0.0.1");
        let forwarded = headers(&[("x-forwarded-for", "203.0.113.7, ::ffff:10.0.0.2")]);
        assert_eq!(
            client_addr(mapped_proxy, &forwarded, &trusted()),
            ip("203.0.113.7")
        );
        let mapped_client = ip("::ffff:203.0.113.7");
        assert_eq!(
            client_addr(mapped_client, &forwarded, &trusted()),
            ip("203.0.113.7")
        );
        // A mapped range is matched as the IPv4 range it maps.
        let trusted = TrustedProxies::parse("::ffff:192.0.2.0/120").expect("valid");
        assert!(trusted.contains(ip("192.0.2.9")));
        assert!(!trusted.contains(ip("192.0.3.9")));
    }

    #[test]
    fn a_huge_header_from_a_trusted_peer_is_walked_only_so_far() {
        let mut list = String::from("203.0.113.7");
        for _ in 0..FORWARDED_HOPS_MAX + 5 {
            list.push_str(", 10.0.0.2");
        }
        assert_eq!(
            via_proxy(&[("x-forwarded-for", list.as_str())]),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn trusted_ranges_parse_cidrs_and_bare_addresses() {
        let trusted =
            TrustedProxies::parse(" 10.0.0.1 ,192.168.0.0/16,,2001:db8::7").expect("valid");
        assert!(trusted.contains(ip("10.0.0.1")));
        assert!(!trusted.contains(ip("10.0.0.2")), "a bare address is a /32");
        assert!(trusted.contains(ip("192.168.200.1")));
        assert!(trusted.contains(ip("2001:db8::7")));
        assert!(
            !trusted.contains(ip("2001:db8::8")),
            "a bare address is a /128"
        );
        assert_eq!(
            trusted.to_string(),
            "10.0.0.1/32,192.168.0.0/16,2001:db8::7/128"
        );
        assert!(TrustedProxies::parse("").expect("empty").is_empty());

        for bad in [
            "10.0.0.300/8",
            "10.0.0.0/33",
            "proxy.internal",
            "10.0.0.0/8;",
        ] {
            let error = TrustedProxies::parse(bad).expect_err("not a range");
            assert!(error.to_string().contains(bad), "{bad}: {error}");
        }
        let too_many = vec!["10.0.0.1"; TRUSTED_PROXIES_MAX + 1].join(",");
        assert_eq!(
            TrustedProxies::parse(&too_many),
            Err(ProxyListError::TooMany)
        );
    }

    /// A state holding only the trusted ranges.
    struct Proxies(TrustedProxies);

    impl TrustedProxySource for Proxies {
        fn trusted_proxies(&self) -> &TrustedProxies {
            &self.0
        }
    }

    #[tokio::test]
    async fn the_extractor_reads_the_peer_from_the_connection_info() {
        let state = Proxies(trusted());
        let request = Request::builder()
            .header("x-forwarded-for", "203.0.113.7")
            .body(())
            .expect("a request");
        let (mut parts, ()) = request.into_parts();
        parts
            .extensions
            .insert(ConnectInfo(SocketAddr::from(([10, 0, 0, 1], 40_000))));
        let ClientAddr(client) = ClientAddr::from_request_parts(&mut parts, &state)
            .await
            .expect("infallible");
        assert_eq!(client, ip("203.0.113.7"));

        // Without connection info the peer is unknown and untrusted: headers are ignored.
        let request = Request::builder()
            .header("x-forwarded-for", "203.0.113.7")
            .body(())
            .expect("a request");
        let (mut parts, ()) = request.into_parts();
        let ClientAddr(client) = ClientAddr::from_request_parts(&mut parts, &state)
            .await
            .expect("infallible");
        assert_eq!(client, UNKNOWN_PEER);
    }
}
