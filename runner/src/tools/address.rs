//! Which addresses the runner's own fetches may connect to.
//!
//! A tool URL comes from a job spec, so it is untrusted: without these rules a job could make
//! the runner fetch from the cloud metadata service, the runner's own loopback API, or an
//! internal service, and learn its answer through the error message or the digest. The rules
//! are checked on the address actually connected to (the resolver below hands the connector
//! only addresses that passed), for every redirect too, so a name that resolves to a private
//! address, or a public URL that redirects to one, gains nothing.
//!
//! Alternatives rejected: checking the URL's host name before the request (the name can
//! resolve elsewhere a moment later, and redirects bypass it); resolving once and pinning the
//! address with `ClientBuilder::resolve` (only covers the first host, not redirect targets).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bulwark_protocol::allow::METADATA_ADDRESSES;
use bulwark_protocol::IpNet;

/// A connection the address rules refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("connection to {addr} refused by policy: {reason}{hint}", hint = self.hint())]
pub struct AddressRefused {
    /// The address that would have been connected to.
    pub addr: IpAddr,
    /// Why, like `loopback address`.
    pub reason: &'static str,
}

impl AddressRefused {
    fn hint(&self) -> &'static str {
        if self.reason == METADATA_REASON {
            " (refused everywhere, always)"
        } else {
            " (add it to fetch.allow_private to allow)"
        }
    }
}

const METADATA_REASON: &str = "cloud metadata address";

/// The operator's exceptions (`fetch.allow_private`) and the fixed rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    /// Networks that may be connected to although they are loopback, private or link-local.
    pub allow_private: Vec<IpNet>,
}

impl AddressPolicy {
    /// Whether the runner may connect to `addr`. Metadata addresses are refused even when
    /// `allow_private` covers them; an IPv4 address embedded in an IPv6 one (mapped,
    /// compatible, NAT64, 6to4) is judged as that IPv4 address.
    pub fn check(&self, addr: IpAddr) -> Result<(), AddressRefused> {
        let embedded = embedded_v4(addr).map(IpAddr::V4);
        let forms = [Some(addr), embedded];
        let refuse = |reason| Err(AddressRefused { addr, reason });
        if forms
            .iter()
            .flatten()
            .any(|ip| METADATA_ADDRESSES.contains(ip))
        {
            return refuse(METADATA_REASON);
        }
        let Some(reason) = classify(addr) else {
            return Ok(());
        };
        let allowed = self
            .allow_private
            .iter()
            .any(|net| forms.iter().flatten().any(|ip| net.contains(*ip)));
        if allowed {
            Ok(())
        } else {
            refuse(reason)
        }
    }
}

/// The IPv4 address inside an IPv6 one that carries it: IPv4-mapped `::ffff:a.b.c.d`,
/// IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`, 6to4 `2002:aabb:ccdd::`.
fn embedded_v4(addr: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = addr else { return None };
    let s = v6.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(low),
        [0, 0, 0, 0, 0, 0, _, _] if u128::from(v6) > 1 => Some(low),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        _ => None,
    }
}

/// Why an address is not a public unicast address, or `None` when it is.
fn classify(addr: IpAddr) -> Option<&'static str> {
    if let Some(v4) = embedded_v4(addr) {
        return classify_v4(v4);
    }
    match addr {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b) {
        (0, _) => "unspecified address",
        (127, _) => "loopback address",
        (10, _) | (192, 168) => "private address",
        (172, 16..=31) => "private address",
        (169, 254) => "link-local address",
        (100, 64..=127) => "shared (CGNAT) address",
        (192, 0) if c == 0 => "special-purpose address",
        (198, 18..=19) => "benchmarking address",
        (224..=239, _) => "multicast address",
        _ if ip == Ipv4Addr::BROADCAST => "broadcast address",
        (240..=255, _) => "reserved address",
        _ => return None,
    })
}

fn classify_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    Some(match s[0] {
        _ if ip.is_unspecified() => "unspecified address",
        _ if ip.is_loopback() => "loopback address",
        0xfc00..=0xfdff => "private address",
        0xfe80..=0xfebf => "link-local address",
        0xfec0..=0xfeff => "site-local address",
        0xff00..=0xffff => "multicast address",
        0x64 if s[1] == 0xff9b && s[2] == 1 => "private address",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(policy: &AddressPolicy, ip: &str) -> Option<&'static str> {
        policy
            .check(ip.parse().expect("test address"))
            .err()
            .map(|e| e.reason)
    }

    #[test]
    fn non_public_addresses_are_refused_and_public_ones_pass() {
        let p = AddressPolicy::default();
        for (ip, why) in [
            ("127.0.0.1", "loopback address"),
            ("127.9.9.9", "loopback address"),
            ("10.1.2.3", "private address"),
            ("172.16.0.1", "private address"),
            ("172.31.255.255", "private address"),
            ("192.168.1.1", "private address"),
            ("169.254.1.1", "link-local address"),
            ("100.64.0.1", "shared (CGNAT) address"),
            ("0.0.0.0", "unspecified address"),
            ("224.0.0.1", "multicast address"),
            ("255.255.255.255", "broadcast address"),
            ("::1", "loopback address"),
            ("::", "unspecified address"),
            ("fc00::1", "private address"),
            ("fd12::1", "private address"),
            ("fe80::1", "link-local address"),
            ("ff02::1", "multicast address"),
            ("::ffff:127.0.0.1", "loopback address"),
            ("::ffff:10.0.0.1", "private address"),
            ("64:ff9b::7f00:1", "loopback address"),
            ("64:ff9b::a9fe:1", "link-local address"),
            ("2002:7f00:1::", "loopback address"),
            ("169.254.169.254", "cloud metadata address"),
            ("fd00:ec2::254", "cloud metadata address"),
            ("::ffff:169.254.169.254", "cloud metadata address"),
        ] {
            assert_eq!(reason(&p, ip), Some(why), "{ip}");
        }
        for ip in [
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "8.8.8.8",
        ] {
            assert_eq!(reason(&p, ip), None, "{ip}");
        }
    }

    #[test]
    fn allow_private_admits_listed_networks_but_never_metadata() {
        let p = AddressPolicy {
            allow_private: vec![
                IpNet::parse("127.0.0.2").expect("net"),
                IpNet::parse("169.254.0.0/16").expect("net"),
                IpNet::parse("fd00::/8").expect("net"),
            ],
        };
        assert_eq!(reason(&p, "127.0.0.2"), None);
        assert_eq!(reason(&p, "::ffff:127.0.0.2"), None);
        assert_eq!(reason(&p, "127.0.0.1"), Some("loopback address"));
        assert_eq!(reason(&p, "169.254.1.1"), None);
        assert_eq!(
            reason(&p, "169.254.169.254"),
            Some("cloud metadata address")
        );
        assert_eq!(reason(&p, "fd00:ec2::254"), Some("cloud metadata address"));
    }

    #[test]
    fn refusals_say_what_to_do() {
        let err = AddressPolicy::default()
            .check("127.0.0.1".parse().expect("ip"))
            .expect_err("loopback");
        assert_eq!(
            err.to_string(),
            "connection to 127.0.0.1 refused by policy: loopback address (add it to fetch.allow_private to allow)"
        );
        let err = AddressPolicy::default()
            .check("169.254.169.254".parse().expect("ip"))
            .expect_err("metadata");
        assert!(
            err.to_string().ends_with("(refused everywhere, always)"),
            "{err}"
        );
    }
}
