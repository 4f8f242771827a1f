//! Egress allowlist entries: `host:port`, `*.suffix:port`, `1.2.3.4:443`, `[::1]:443`.
//!
//! A job's `[network] allow` list and the operator's `[egress]` ceilings use these forms. They
//! are parsed here, purely, so the spec validator, the config validator and the runner's proxy
//! agree on one meaning. Nothing is resolved: a name is matched as a name, an address as an
//! address; the proxy resolves names itself and checks the address rules separately.
//!
//! Deliberately strict: hostnames are lower case (DNS is case-insensitive, but a policy written
//! in two spellings is a policy reviewed twice), no trailing dot, and a name whose last label is
//! all digits is refused because some resolvers read `1.2.3` as an IPv4 address. The wildcard
//! is only the whole first label, and matches one or more labels: `*.example.com` matches
//! `a.example.com` and `a.b.example.com`, not `example.com`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::error::quote;

/// The host part of an allowlist entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AllowHost {
    /// An exact, lower-case hostname.
    Name(String),
    /// `*.suffix`: any name ending in `.suffix` (stored without the `*.`).
    Wildcard(String),
    /// An IP address literal.
    Ip(IpAddr),
}

/// One parsed allowlist entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AllowEntry {
    /// What host it allows.
    pub host: AllowHost,
    /// The one port it allows, 1-65535.
    pub port: u16,
}

/// The accepted forms, for error messages.
pub const ALLOW_FORMS: &str = "host:port, *.suffix:port, 1.2.3.4:port or [::1]:port";

impl AllowEntry {
    /// Parses `host:port`, `*.suffix:port`, `1.2.3.4:port` or `[v6]:port`.
    pub fn parse(entry: &str) -> Result<AllowEntry, String> {
        let (host, port) = split_host_port(entry)?;
        let port = parse_port(entry, port)?;
        let host = if let Some(v6) = host.strip_prefix('[') {
            let v6 = v6.strip_suffix(']').unwrap_or(v6);
            let ip: Ipv6Addr = v6.parse().map_err(|_| {
                format!(
                    "{} is not an IPv6 address (zone ids are not accepted)",
                    quote(v6)
                )
            })?;
            AllowHost::Ip(IpAddr::V6(ip))
        } else if let Some(suffix) = host.strip_prefix("*.") {
            check_hostname(suffix).map_err(|e| format!("{e} in {}", quote(entry)))?;
            AllowHost::Wildcard(suffix.to_owned())
        } else if host.contains('*') {
            return Err(format!(
                "{}: a wildcard must be the whole first label, like *.example.com:443",
                quote(entry)
            ));
        } else if let Ok(ip) = host.parse::<Ipv4Addr>() {
            AllowHost::Ip(IpAddr::V4(ip))
        } else {
            check_hostname(host).map_err(|e| format!("{e} in {}", quote(entry)))?;
            AllowHost::Name(host.to_owned())
        };
        Ok(AllowEntry { host, port })
    }

    /// Whether a connection to `host` (a lower-case name or an address literal) on `port` is
    /// allowed by this entry.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        if port != self.port {
            return false;
        }
        match &self.host {
            AllowHost::Name(name) => name == host,
            AllowHost::Wildcard(suffix) => host
                .strip_suffix(suffix.as_str())
                .and_then(|head| head.strip_suffix('.'))
                .is_some_and(|head| !head.is_empty()),
            AllowHost::Ip(ip) => {
                host.trim_start_matches('[').trim_end_matches(']').parse() == Ok(*ip)
            }
        }
    }
}

impl fmt::Display for AllowEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            AllowHost::Name(name) => write!(f, "{name}:{}", self.port),
            AllowHost::Wildcard(suffix) => write!(f, "*.{suffix}:{}", self.port),
            AllowHost::Ip(IpAddr::V4(ip)) => write!(f, "{ip}:{}", self.port),
            AllowHost::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
        }
    }
}

/// One entry of an operator's egress ceiling: `*` (anything), `*:port` (any host on that
/// port), or an [`AllowEntry`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CeilingEntry {
    /// `*`: no restriction beyond the address rules.
    Any,
    /// `*:port`: any host on this port.
    AnyHostOnPort(u16),
    /// One allowlist entry and everything it covers.
    Entry(AllowEntry),
}

impl CeilingEntry {
    /// Parses `*`, `*:port` or an allowlist entry.
    pub fn parse(entry: &str) -> Result<CeilingEntry, String> {
        if entry == "*" {
            return Ok(CeilingEntry::Any);
        }
        if let Some(port) = entry.strip_prefix("*:") {
            return Ok(CeilingEntry::AnyHostOnPort(parse_port(entry, port)?));
        }
        AllowEntry::parse(entry)
            .map(CeilingEntry::Entry)
            .map_err(|e| format!("{e} (a ceiling may also be * or *:port)"))
    }

    /// Whether every connection `entry` allows is also allowed by this ceiling entry.
    pub fn covers(&self, entry: &AllowEntry) -> bool {
        match self {
            CeilingEntry::Any => true,
            CeilingEntry::AnyHostOnPort(port) => *port == entry.port,
            CeilingEntry::Entry(ceiling) if ceiling.port != entry.port => false,
            CeilingEntry::Entry(ceiling) => match (&ceiling.host, &entry.host) {
                // `*.c` covers `*.c` itself and every `*.x.c` below it.
                (AllowHost::Wildcard(c), AllowHost::Wildcard(e)) => e
                    .strip_suffix(c.as_str())
                    .is_some_and(|head| head.is_empty() || head.ends_with('.')),
                (_, AllowHost::Wildcard(_)) => false,
                (_, AllowHost::Name(name)) => ceiling.matches(name, entry.port),
                (AllowHost::Ip(c), AllowHost::Ip(e)) => c == e,
                (_, AllowHost::Ip(_)) => false,
            },
        }
    }
}

/// An address or network, `127.0.0.1` or `10.0.0.0/8` or `fd00::/8`, as used by the
/// operator's `fetch.allow_private`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    /// The network address (host bits are zero).
    pub addr: IpAddr,
    /// Prefix length: 0-32 for IPv4, 0-128 for IPv6.
    pub prefix: u8,
}

impl IpNet {
    /// Parses an address (a /32 or /128) or `address/prefix`; host bits must be zero.
    pub fn parse(s: &str) -> Result<IpNet, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| {
            format!(
                "{} is not an IP address or network like 10.0.0.0/8",
                quote(s)
            )
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(text) => match text.parse::<u8>() {
                Ok(p) if p <= max && text.bytes().all(|b| b.is_ascii_digit()) => p,
                _ => {
                    return Err(format!(
                        "{}: the prefix length must be 0 to {max}",
                        quote(s)
                    ))
                }
            },
        };
        let net = IpNet { addr, prefix };
        if net.network_bits(addr) != bits(addr) {
            return Err(format!(
                "{}: the address has bits set beyond the /{prefix} prefix",
                quote(s)
            ));
        }
        Ok(net)
    }

    /// Whether `ip` is inside this network (an IPv4 network never contains an IPv6 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.addr.is_ipv4() && self.network_bits(ip) == self.network_bits(self.addr)
    }

    fn network_bits(&self, ip: IpAddr) -> u128 {
        let width = if ip.is_ipv4() { 32 } else { 128 };
        let host_bits = width - u32::from(self.prefix);
        let mask = if host_bits >= 128 {
            0
        } else {
            u128::MAX << host_bits
        };
        bits(ip) & mask
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Cloud metadata and credential service addresses, refused everywhere, always (their
/// IPv4-mapped, NAT64 and 6to4 forms too, where the users of this list decode them).
pub const METADATA_ADDRESSES: &[IpAddr] = &[
    // AWS, GCP, Azure, OCI, DigitalOcean and most others: the instance metadata service.
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
    // AWS ECS task metadata and credentials.
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 2)),
    // AWS EKS Pod Identity agent (hands out the pod's role credentials).
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 23)),
    // Alibaba Cloud ECS metadata (in the CGNAT range, not link-local).
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
    // Azure WireServer (a public address: VM agent configuration, extension settings and
    // their certificates).
    IpAddr::V4(Ipv4Addr::new(168, 63, 129, 16)),
    // AWS instance metadata over IPv6 (Nitro).
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
    // AWS EKS Pod Identity agent over IPv6.
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23)),
    // GCP metadata server over IPv6.
    IpAddr::V6(Ipv6Addr::new(0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254)),
];

fn split_host_port(entry: &str) -> Result<(&str, &str), String> {
    let split = if entry.starts_with('[') {
        entry.find("]:").map(|i| (&entry[..=i], &entry[i + 2..]))
    } else {
        entry
            .rsplit_once(':')
            .filter(|(host, _)| !host.contains(':'))
    };
    match split {
        Some(("", _)) => Err(format!(
            "{}: the host is empty; use {ALLOW_FORMS}",
            quote(entry)
        )),
        Some(parts) => Ok(parts),
        None if entry.contains(':') && !entry.starts_with('[') => Err(format!(
            "{}: write IPv6 addresses in brackets, like [::1]:443",
            quote(entry)
        )),
        None => Err(format!("{} has no port; use {ALLOW_FORMS}", quote(entry))),
    }
}

fn parse_port(entry: &str, port: &str) -> Result<u16, String> {
    match port.parse::<u16>() {
        Ok(p) if p != 0 && port.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
        _ => Err(format!(
            "{}: the port must be a number from 1 to 65535",
            quote(entry)
        )),
    }
}

/// Checks a hostname: lower-case letters, digits, hyphens and dots; labels of 1-63
/// characters not starting or ending with a hyphen; at most 253 characters; no trailing dot;
/// the last label not all digits.
pub fn check_hostname(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("the host is empty".to_owned());
    }
    if host.len() > 253 {
        return Err("the hostname is longer than 253 characters".to_owned());
    }
    if host.ends_with('.') {
        return Err(format!("{}: remove the trailing dot", quote(host)));
    }
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("{}: hostnames must be lower case", quote(host)));
    }
    for label in host.split('.') {
        let chars_ok = label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if label.is_empty()
            || label.len() > 63
            || !chars_ok
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Err(format!(
                "{} is not a valid hostname (letters a-z, digits, hyphens and dots)",
                quote(host)
            ));
        }
    }
    if host
        .rsplit('.')
        .next()
        .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!(
            "{} is neither a valid IPv4 address nor a hostname",
            quote(host)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> AllowEntry {
        AllowEntry::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn every_documented_form_parses_and_displays_back() {
        for s in [
            "crates.io:443",
            "*.githubusercontent.com:443",
            "1.2.3.4:443",
            "[::1]:443",
            "a-b.c:1",
        ] {
            assert_eq!(parse(s).to_string(), s);
        }
        assert_eq!(
            parse("[::1]:443").host,
            AllowHost::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST))
        );
    }

    #[test]
    fn malformed_entries_say_what_is_wrong() {
        let cases = [
            ("crates.io", "has no port"),
            ("crates.io:0", "port must be a number"),
            ("crates.io:65536", "port must be a number"),
            ("crates.io:+443", "port must be a number"),
            (":443", "host is empty"),
            ("a.*.com:443", "whole first label"),
            ("*:443", "whole first label"),
            ("Crates.io:443", "lower case"),
            ("crates.io.:443", "trailing dot"),
            ("cra_tes.io:443", "not a valid hostname"),
            ("-a.io:443", "not a valid hostname"),
            ("a..io:443", "not a valid hostname"),
            ("1.2.3:443", "neither a valid IPv4"),
            ("01.2.3.4:443", "neither a valid IPv4"),
            ("::1:443", "in brackets"),
            ("[::1]", "has no port"),
            ("[::1%eth0]:443", "IPv6"),
        ];
        for (entry, expected) in cases {
            let err = AllowEntry::parse(entry).expect_err(entry);
            assert!(err.contains(expected), "{entry}: {err}");
        }
    }

    #[test]
    fn wildcards_match_one_or_more_labels_but_not_the_bare_suffix() {
        let e = parse("*.example.com:443");
        assert!(e.matches("a.example.com", 443));
        assert!(e.matches("a.b.example.com", 443));
        assert!(!e.matches("example.com", 443));
        assert!(!e.matches("aexample.com", 443));
        assert!(!e.matches("a.example.com", 80));
        assert!(parse("[::1]:443").matches("::1", 443));
    }

    #[test]
    fn ceilings_cover_only_what_they_allow() {
        let job = parse("api.example.com:443");
        let wild = parse("*.a.example.com:443");
        let covers =
            |c: &str, e: &AllowEntry| CeilingEntry::parse(c).map(|c| c.covers(e)) == Ok(true);
        assert!(covers("*", &job));
        assert!(covers("*:443", &job));
        assert!(!covers("*:80", &job));
        assert!(covers("*.example.com:443", &job));
        assert!(covers("*.example.com:443", &wild));
        assert!(covers("*.example.com:443", &parse("*.example.com:443")));
        assert!(!covers("*.example.com:443", &parse("*.example.com:80")));
        assert!(!covers("*.example.com:443", &parse("*.xexample.com:443")));
        assert!(!covers("*.a.example.com:443", &parse("*.example.com:443")));
        assert!(!covers("api.example.com:443", &wild));
        assert!(!covers("*.b.example.com:443", &wild));
        assert!(CeilingEntry::parse("**").is_err());
    }

    #[test]
    fn the_metadata_list_names_every_known_service() {
        for ip in [
            "169.254.169.254",
            "169.254.170.2",
            "169.254.170.23",
            "100.100.100.200",
            "168.63.129.16",
            "fd00:ec2::254",
            "fd00:ec2::23",
            "fd20:ce::254",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert!(METADATA_ADDRESSES.contains(&ip), "{ip}");
        }
    }

    #[test]
    fn networks_parse_and_contain_their_addresses() {
        let net = IpNet::parse("10.0.0.0/8").expect("valid");
        assert!(net.contains("10.1.2.3".parse().expect("ip")));
        assert!(!net.contains("11.0.0.1".parse().expect("ip")));
        assert!(!net.contains("::1".parse().expect("ip")));
        assert_eq!(IpNet::parse("127.0.0.1").map(|n| n.prefix), Ok(32));
        assert_eq!(
            IpNet::parse("::/0").map(|n| n.to_string()),
            Ok("::/0".to_owned())
        );
        assert!(IpNet::parse("0.0.0.0/0")
            .expect("valid")
            .contains("169.254.169.254".parse().expect("ip")));
        assert!(IpNet::parse("10.0.0.1/8").unwrap_err().contains("bits set"));
        assert!(IpNet::parse("10.0.0.0/33")
            .unwrap_err()
            .contains("prefix length"));
        assert!(IpNet::parse("10.0.0.0/+8")
            .unwrap_err()
            .contains("prefix length"));
        assert!(IpNet::parse("localhost")
            .unwrap_err()
            .contains("not an IP address"));
    }
}
