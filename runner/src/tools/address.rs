//! Which addresses the runner's own fetches may connect to.
//!
//! A tool URL comes from a job spec, so it is untrusted: without these rules a job could make
//! the runner fetch from the cloud metadata service, the runner's own loopback API, or an
//! internal service, and learn its answer through the error message or the digest. The rules
//! are checked on the address actually connected to (the resolver below hands the connector
//! only addresses that passed), for every redirect too, so a name that resolves to a private
//! address, or a public URL that redirects to one, gains nothing.
//!
//! The ranges are the egress proxy's (`crate::egress::policy::special_or_host_range`, with the
//! same decoding of IPv4 addresses carried in IPv6 forms): the runner's own fetches obey the
//! same address rules as a job's egress, from one table, this host's own addresses included
//! (its interfaces', read when the fetch starts, and those the operator lists in
//! `host.addresses`: a public one reaches the host's own services as loopback does).
//!
//! Alternatives rejected: checking the URL's host name before the request (the name can
//! resolve elsewhere a moment later, and redirects bypass it); resolving once and pinning the
//! address with `ClientBuilder::resolve` (only covers the first host, not redirect targets).

use std::net::IpAddr;

use bulwark_protocol::allow::METADATA_ADDRESSES;
use bulwark_protocol::IpNet;

/// A connection the address rules refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("connection to {addr} refused by policy: {reason} address{hint}", hint = self.hint())]
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
        } else if self.reason == crate::egress::policy::HOST_OWN {
            " (list this address itself in fetch.allow_private to allow: a network does not cover the host's own addresses)"
        } else {
            " (add it to fetch.allow_private to allow)"
        }
    }
}

const METADATA_REASON: &str = "cloud metadata";

/// The operator's exceptions (`fetch.allow_private`) and the fixed rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    /// Networks that may be connected to although they are loopback, private or link-local.
    pub allow_private: Vec<IpNet>,
    /// This host's own addresses (its interfaces' and `host.addresses`): a connection to one
    /// reaches the host's own services, whatever range it is in, so a public one is refused
    /// as a private one is, unless `allow_private` names it exactly (a /32 or /128 entry;
    /// loopback excepted) ([`crate::egress::policy::host_addresses`]).
    pub host: std::collections::BTreeSet<IpAddr>,
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
        let Some(reason) = crate::egress::policy::special_or_host_range(addr, &self.host) else {
            return Ok(());
        };
        // One of the host's own addresses needs an entry naming it, as the egress ceiling
        // does: `10.0.0.0/8` listed for a mirror must not also open the host's own `10.x`
        // interface address (or `172.16.0.0/12` its docker bridge) to its own services.
        // Loopback is the host's own by definition: a loopback network is listed for that.
        let own = reason != "loopback" && crate::egress::policy::is_host_address(addr, &self.host);
        let contains = |net: &IpNet| forms.iter().flatten().any(|ip| net.contains(*ip));
        let names_one = |net: &IpNet| net.prefix == if net.addr.is_ipv4() { 32 } else { 128 };
        if self
            .allow_private
            .iter()
            .any(|net| contains(net) && (!own || names_one(net)))
        {
            Ok(())
        } else if own && self.allow_private.iter().any(contains) {
            refuse(crate::egress::policy::HOST_OWN)
        } else {
            refuse(reason)
        }
    }
}

/// The IPv4 address inside an IPv6 one that carries it: IPv4-mapped `::ffff:a.b.c.d`,
/// IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`, 6to4 `2002:aabb:ccdd::`.
fn embedded_v4(addr: IpAddr) -> Option<std::net::Ipv4Addr> {
    match addr {
        IpAddr::V6(v6) => crate::egress::policy::embedded_ipv4(v6),
        IpAddr::V4(_) => None,
    }
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
            ("127.0.0.1", "loopback"),
            ("127.9.9.9", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.1.1", "link-local"),
            ("100.64.0.1", "CGNAT"),
            ("0.0.0.0", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fc00::1", "private"),
            ("fd12::1", "private"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.0.0.1", "private"),
            ("64:ff9b::7f00:1", "loopback"),
            ("64:ff9b::a9fe:1", "link-local"),
            ("2002:7f00:1::", "loopback"),
            ("169.254.169.254", "cloud metadata"),
            ("fd00:ec2::254", "cloud metadata"),
            ("::ffff:169.254.169.254", "cloud metadata"),
            // The egress proxy's ranges, the same table: every special-use range, and IPv4
            // carried in the translation forms.
            ("198.18.0.1", "benchmarking"),
            ("192.0.2.1", "documentation"),
            ("64:ff9b:1::a9fe:a9fe", "cloud metadata"),
            ("::ffff:0:7f00:1", "loopback"),
            ("64:ff9b:1:7f00:0:100::", "NAT64 local-use"),
            ("168.63.129.16", "cloud metadata"),
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
            ..AddressPolicy::default()
        };
        assert_eq!(reason(&p, "127.0.0.2"), None);
        assert_eq!(reason(&p, "::ffff:127.0.0.2"), None);
        assert_eq!(reason(&p, "127.0.0.1"), Some("loopback"));
        assert_eq!(reason(&p, "169.254.1.1"), None);
        assert_eq!(reason(&p, "169.254.169.254"), Some("cloud metadata"));
        assert_eq!(reason(&p, "fd00:ec2::254"), Some("cloud metadata"));
    }

    /// A public address of this host's own (an interface's, or one `host.addresses` names)
    /// reaches its own services: refused as private addresses are, in the IPv6 forms that
    /// carry it too, unless `allow_private` lists it.
    #[test]
    fn the_hosts_own_public_addresses_are_refused_unless_listed() {
        let p = AddressPolicy {
            host: ["9.9.9.9", "2620:fe::fe"]
                .iter()
                .map(|a| a.parse().expect("ip"))
                .collect(),
            ..AddressPolicy::default()
        };
        for ip in [
            "9.9.9.9",
            "::ffff:9.9.9.9",
            "64:ff9b::909:909",
            "2620:fe::fe",
        ] {
            assert_eq!(reason(&p, ip), Some("host's own"), "{ip}");
        }
        assert_eq!(
            reason(&p, "127.0.0.1"),
            Some("loopback"),
            "its own range first"
        );
        let p = AddressPolicy {
            host: ["8.8.4.4".parse().expect("ip")].into_iter().collect(),
            ..AddressPolicy::default()
        };
        assert_eq!(reason(&p, "8.8.4.4"), Some("host's own"));
        assert_eq!(reason(&p, "8.8.8.8"), None);
        let err = p.check("8.8.4.4".parse().expect("ip")).expect_err("own");
        assert!(
            err.to_string()
                .contains("list this address itself in fetch.allow_private"),
            "{err}"
        );
        // A network that holds a host address does not open it: only the address itself.
        let p = AddressPolicy {
            host: ["10.1.2.3", "127.0.0.1"]
                .iter()
                .map(|a| a.parse().expect("ip"))
                .collect(),
            allow_private: vec![
                IpNet::parse("10.0.0.0/8").expect("net"),
                IpNet::parse("127.0.0.1").expect("net"),
            ],
        };
        assert_eq!(reason(&p, "10.1.2.3"), Some("host's own"));
        assert_eq!(reason(&p, "::ffff:10.1.2.3"), Some("host's own"));
        assert_eq!(
            reason(&p, "10.1.2.4"),
            None,
            "the rest of the network is listed"
        );
        assert_eq!(reason(&p, "127.0.0.1"), None, "named itself");
        let p = AddressPolicy {
            host: ["127.0.0.1".parse().expect("ip")].into_iter().collect(),
            allow_private: vec![IpNet::parse("127.0.0.0/8").expect("net")],
        };
        assert_eq!(
            reason(&p, "127.0.0.1"),
            None,
            "a loopback network names the host itself"
        );
        let p = AddressPolicy {
            host: ["10.1.2.3".parse().expect("ip")].into_iter().collect(),
            ..AddressPolicy::default()
        };
        assert_eq!(
            reason(&p, "10.1.2.3"),
            Some("private"),
            "listed nowhere: its range says why"
        );
        let p = AddressPolicy {
            host: ["8.8.4.4".parse().expect("ip")].into_iter().collect(),
            allow_private: vec![IpNet::parse("8.8.4.4").expect("net")],
        };
        assert_eq!(
            reason(&p, "8.8.4.4"),
            None,
            "listed: a mirror on the host itself"
        );
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
