//! The egress decision: which host, port and address a job may reach.
//!
//! Two steps, because the proxy resolves names itself. [`EgressPolicy::decide`] looks at what
//! the job asked for (a name or an address literal, and a port) before anything is resolved;
//! [`EgressPolicy::check_address`] then looks at every address the name resolved to. The proxy
//! connects only to an address that passed the second check, so a name that resolves
//! differently a moment later gains nothing.
//!
//! Address rules, in order:
//! 1. the metadata addresses ([`METADATA_ADDRESSES`]), also in IPv4-mapped, IPv4-compatible,
//!    IPv4-translated, NAT64 (`64:ff9b::/96`, `64:ff9b:1::/96`) and 6to4 form, are refused
//!    always, in every mode;
//! 2. an address the allow list names exactly (an IP entry on the same port) is allowed, in
//!    every mode: the operator's ceiling had to name it for the job to run with it
//!    ([`check_ceiling`]);
//! 3. in audit mode, the host's own loopback, the unspecified address (which reaches it) and
//!    all of link-local (`169.254.0.0/16`, `fe80::/10`, in every form) are refused; a global
//!    address is allowed whatever the allow list says, and so, for a trusted job only, is
//!    every other special range (private networks, CGNAT, …); an untrusted job's special
//!    addresses go on to rule 4, as in enforcing mode;
//! 4. otherwise an address in a special range (loopback, private, link-local, CGNAT,
//!    multicast, unspecified, broadcast, reserved, documentation, benchmarking; and the same
//!    ranges embedded in an IPv6 form) is refused unless the allow list names that exact
//!    address as an IP entry on the same port.
//!
//! Why audit mode refuses all of link-local and not just the listed metadata addresses:
//! link-local is where clouds put their host-side services (instance metadata, ECS and EKS
//! credential agents, the AWS time and DNS endpoints at `169.254.169.123`/`.253`), new ones
//! appear without notice, and nothing a build downloads lives there, since a link-local
//! address only reaches the host's own network segment. A list of known addresses would be
//! one release behind the clouds; the range is not. Likewise the local translation prefixes
//! (local-use NAT64 `64:ff9b:1::/48`, IPv4-translated `::ffff:0:0:0/96`): an address there
//! reaches whatever IPv4 address a translator of the host's own network derives from it, in
//! forms this module does not all decode, metadata included.
//!
//! Names are compared in one canonical form (ASCII lower case, one trailing dot removed). A
//! host that some resolver could read as an IPv4 address although it is not dotted-quad
//! decimal (`2130706433`, `0177.0.0.1`, `0x7f.1`, `127.1`) is refused outright as ambiguous:
//! the policy would otherwise compare it as a name while a resolver connects to an address.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bulwark_protocol::allow::{check_hostname, METADATA_ADDRESSES};
use bulwark_protocol::{AllowEntry, AllowHost, CeilingEntry};

/// A job's egress policy: its allow list, the operator's name overrides and the mode.
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    allow: Vec<AllowEntry>,
    hosts: BTreeMap<String, IpAddr>,
    audit: bool,
    /// In audit mode, whether the special ranges beyond the host's own (private networks,
    /// CGNAT, reserved, …) are reached too, as the public internet is: only for a trusted
    /// job ([`EgressPolicy::reaching_private_in_audit`]). Otherwise they stay as in enforcing
    /// mode: reached only at an address the allow list names.
    audit_private: bool,
    /// This host's own addresses (its interfaces' and `host.addresses`) when the policy was
    /// made ([`host_addresses`]).
    host_addresses: BTreeSet<IpAddr>,
}

/// What the proxy must do with a request before resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The name may be reached: resolve it ([`EgressPolicy::override_for`] first) and check
    /// every address with [`EgressPolicy::check_address`].
    Resolve {
        /// The canonical name.
        host: String,
        /// Why it is allowed (the entry that matched, or audit mode).
        reason: String,
        /// Reached only by an untrusted job's audit (no entry matched): the name may lead to
        /// public addresses only, and the job is told no more than that it did not when it
        /// does not resolve, has no address or resolves to a refused one, or it would learn
        /// through the host's resolver which internal names exist.
        public_only: bool,
    },
    /// An address literal that may be reached once [`EgressPolicy::check_address`] agrees.
    Literal {
        /// The address.
        ip: IpAddr,
        /// Why it is allowed.
        reason: String,
    },
    /// Refused before resolution.
    Deny(Denied),
}

/// Why a connection was refused. `Display` is one line, safe for a header: it quotes only
/// canonical names and addresses, never raw input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// The host is not a valid hostname or address.
    InvalidHost,
    /// The host reads as an IPv4 address in a form other than dotted-quad decimal.
    AmbiguousLiteral,
    /// No allow-list entry matches host and port.
    NotAllowed {
        /// The canonical host.
        host: String,
        /// The port asked for.
        port: u16,
    },
    /// A cloud metadata address, refused always.
    Metadata(IpAddr),
    /// An address in a special range that the allow list does not name.
    Forbidden {
        /// The address.
        ip: IpAddr,
        /// Which range it is in.
        range: &'static str,
    },
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denied::InvalidHost => write!(f, "not a valid hostname or address"),
            Denied::AmbiguousLiteral => write!(
                f,
                "ambiguous address literal: write IPv4 addresses as four decimal numbers"
            ),
            Denied::NotAllowed { host, port } => {
                write!(
                    f,
                    "{} is not on the job's allow list",
                    display_host_port(host, *port)
                )
            }
            Denied::Metadata(ip) => write!(f, "{ip} is a cloud metadata address, refused always"),
            Denied::Forbidden { ip, range } if untranslatable(range) => write!(
                f,
                "{ip} is a {range} address, which a translator turns into an address this \
                 proxy cannot check: refused always"
            ),
            Denied::Forbidden {
                ip,
                range: HOST_OWN,
            } => write!(
                f,
                "{ip} is an address of the runner's own host; list it explicitly to allow it"
            ),
            Denied::Forbidden { ip, range } => write!(
                f,
                "{ip} is a {range} address; list it explicitly to allow it"
            ),
        }
    }
}

impl std::error::Error for Denied {}

/// A host as the job named it, in canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A valid hostname, lower case, without a trailing dot.
    Name(String),
    /// An address literal (dotted-quad IPv4 or bracketed IPv6 in the request).
    Ip(IpAddr),
}

impl Host {
    /// Canonicalises a host from a request: ASCII lower case, one trailing dot removed,
    /// `[v6]` brackets removed. Refuses anything that is neither a valid hostname nor a plain
    /// address literal.
    pub fn parse(raw: &str) -> Result<Host, Denied> {
        if raw.is_empty() || raw.len() > 255 || !raw.is_ascii() {
            return Err(Denied::InvalidHost);
        }
        if let Some(inner) = raw.strip_prefix('[') {
            let inner = inner.strip_suffix(']').ok_or(Denied::InvalidHost)?;
            return inner
                .parse::<Ipv6Addr>()
                .map(|ip| Host::Ip(IpAddr::V6(ip)))
                .map_err(|_| Denied::InvalidHost);
        }
        let lower = raw.to_ascii_lowercase();
        let host = lower.strip_suffix('.').unwrap_or(&lower);
        if let Ok(ip) = host.parse::<Ipv4Addr>() {
            return Ok(Host::Ip(IpAddr::V4(ip)));
        }
        if looks_numeric(host) {
            return Err(Denied::AmbiguousLiteral);
        }
        check_hostname(host).map_err(|_| Denied::InvalidHost)?;
        Ok(Host::Name(host.to_owned()))
    }

    /// The host as it appears in a `host:port` entry (`[v6]` bracketed).
    pub fn to_entry_host(&self) -> String {
        match self {
            Host::Name(n) => n.clone(),
            Host::Ip(IpAddr::V4(ip)) => ip.to_string(),
            Host::Ip(IpAddr::V6(ip)) => format!("[{ip}]"),
        }
    }
}

/// Whether a resolver might read `host` as an IPv4 number (WHATWG's "ends in a number", plus
/// any label of the form `0x…`): `2130706433`, `0177.0.0.1`, `127.1`, `0x7f.1`.
fn looks_numeric(host: &str) -> bool {
    let numeric = |label: &str| {
        let hex = label
            .strip_prefix("0x")
            .map(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
        hex.unwrap_or(!label.is_empty() && label.bytes().all(|b| b.is_ascii_digit()))
    };
    host.rsplit('.').next().is_some_and(numeric) || host.split('.').all(numeric)
}

fn display_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl EgressPolicy {
    /// Builds a policy from the job's `[network] allow` strings and the operator's
    /// `egress.hosts` (name → address), `egress.audit` and `host.addresses` (`host`, beside
    /// the interfaces' addresses read here). Errors name the bad entry.
    pub fn new(
        allow: &[String],
        hosts: &BTreeMap<String, String>,
        audit: bool,
        host: &[IpAddr],
    ) -> Result<EgressPolicy, String> {
        let allow = allow
            .iter()
            .enumerate()
            .map(|(i, e)| AllowEntry::parse(e).map_err(|err| format!("network.allow[{i}]: {err}")))
            .collect::<Result<Vec<_>, _>>()?;
        let mut parsed = BTreeMap::new();
        for (name, address) in hosts {
            let key = match Host::parse(name) {
                Ok(Host::Name(n)) => n,
                _ => return Err(format!("egress.hosts: {name:?} is not a valid hostname")),
            };
            let ip: IpAddr = address
                .parse()
                .map_err(|_| format!("egress.hosts.{key}: {address:?} is not an IP address"))?;
            parsed.insert(key, ip);
        }
        Ok(EgressPolicy::from_parts(
            allow,
            parsed,
            audit,
            host_addresses(host).map_err(|e| format!("egress: {e}"))?,
        ))
    }

    /// Builds a policy from parsed parts; `hosts` keys must be canonical names.
    pub fn from_parts(
        allow: Vec<AllowEntry>,
        hosts: BTreeMap<String, IpAddr>,
        audit: bool,
        host_addresses: BTreeSet<IpAddr>,
    ) -> EgressPolicy {
        EgressPolicy {
            allow,
            hosts,
            audit,
            audit_private: false,
            host_addresses,
        }
    }

    /// In audit mode, lets the job reach private networks (and the other special ranges but
    /// the host's own, link-local and the metadata addresses) at any address, as it may the
    /// public internet: for a trusted job, whose audit is how an operator learns which
    /// internal hosts a release build needs. An untrusted job in audit mode never gets this:
    /// what it may probe beyond its list is the public internet, not the build network.
    pub fn reaching_private_in_audit(mut self, yes: bool) -> EgressPolicy {
        self.audit_private = yes;
        self
    }

    /// Whether this policy runs in audit mode.
    pub fn audit(&self) -> bool {
        self.audit
    }

    /// The operator's override for a canonical name, if any; used instead of DNS.
    pub fn override_for(&self, host: &str) -> Option<IpAddr> {
        self.hosts.get(host).copied()
    }

    /// Decides on `host` (as the job wrote it) and `port` before resolution.
    pub fn decide(&self, host: &str, port: u16) -> Decision {
        let host = match Host::parse(host) {
            Ok(h) => h,
            Err(d) => return Decision::Deny(d),
        };
        if let Host::Ip(ip) = host {
            if is_metadata(ip) {
                return Decision::Deny(Denied::Metadata(ip));
            }
        }
        let matched = self.allow.iter().find(|e| match (&e.host, &host) {
            (AllowHost::Ip(allowed), Host::Ip(ip)) => allowed == ip && e.port == port,
            (AllowHost::Ip(_), Host::Name(_)) => false,
            (_, Host::Name(name)) => e.matches(name, port),
            (_, Host::Ip(_)) => false,
        });
        let reason = match (matched, self.audit) {
            (Some(entry), _) => format!("allowed by {entry}"),
            (None, true) => format!(
                "audit mode: would be denied: {}",
                Denied::NotAllowed {
                    host: host_string(&host),
                    port
                }
            ),
            (None, false) => {
                return Decision::Deny(Denied::NotAllowed {
                    host: host_string(&host),
                    port,
                })
            }
        };
        match host {
            Host::Name(host) => Decision::Resolve {
                host,
                reason,
                public_only: matched.is_none() && !self.audit_private,
            },
            Host::Ip(ip) => Decision::Literal { ip, reason },
        }
    }

    /// Checks one address `host` resolved to (or the literal itself) before connecting to
    /// `addr`. `host` is only used for the record; the rules depend on the address and port.
    pub fn check_address(&self, _host: &str, addr: SocketAddr) -> Result<(), Denied> {
        let ip = addr.ip();
        if is_metadata(ip) {
            return Err(Denied::Metadata(ip));
        }
        let special = special_or_host_range(ip, &self.host_addresses);
        // Forms that carry an IPv4 address this proxy cannot see (a translator of the host's
        // own network, or a Teredo relay, makes them into one, metadata included): refused
        // in every mode, listed or not, as the metadata addresses are.
        if let Some(range) = special.filter(|r| untranslatable(r)) {
            return Err(Denied::Forbidden { ip, range });
        }
        // Listed exactly: allowed in audit mode as in enforcing mode. Audit mode widens what a
        // job reaches; it never takes away what its list names and the ceiling admitted.
        let listed = || {
            self.allow
                .iter()
                .any(|e| e.host == AllowHost::Ip(ip) && e.port == addr.port())
        };
        if special.is_some() && listed() {
            return Ok(());
        }
        if self.audit {
            match special {
                Some(range @ ("loopback" | "unspecified" | "link-local")) => {
                    return Err(Denied::Forbidden { ip, range })
                }
                // The host's own addresses, whatever their range (a private interface
                // address, a `docker0` bridge), reach its own services: refused as loopback.
                _ if is_host_address(ip, &self.host_addresses) => {
                    return Err(Denied::Forbidden {
                        ip,
                        range: HOST_OWN,
                    })
                }
                None => return Ok(()),
                Some(_) if self.audit_private => return Ok(()),
                // An untrusted job's audit reaches the public internet only: a private
                // address is judged as in enforcing mode, below.
                Some(_) => {}
            }
        }
        match special {
            None => Ok(()),
            // Not listed (above).
            Some(range) => Err(Denied::Forbidden { ip, range }),
        }
    }
}

fn host_string(host: &Host) -> String {
    match host {
        Host::Name(n) => n.clone(),
        Host::Ip(ip) => ip.to_string(),
    }
}

/// The IPv4 address an IPv6 address carries, in the forms a gateway or the kernel would
/// translate: IPv4-mapped `::ffff:0:0/96`, IPv4-compatible `::/96`, IPv4-translated
/// `::ffff:0:0:0/96` (SIIT), NAT64 `64:ff9b::/96`, local-use NAT64 `64:ff9b:1::/48` in its
/// `/96` form (`64:ff9b:1::a.b.c.d`) and 6to4 `2002::/16`.
///
/// A local-use NAT64 prefix may also be any length from /48 to /64 (RFC 6052 puts the IPv4
/// address elsewhere then); those forms are not decoded: they stay a special range, which
/// [`EgressPolicy::check_address`] refuses in every mode, listed or not.
pub fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    if s[..6] == [0, 0, 0, 0, 0, 0] && !ip.is_loopback() && !ip.is_unspecified() {
        return Some(low);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || s[..6] == [0x64, 0xff9b, 1, 0, 0, 0] {
        return Some(low);
    }
    if s[..6] == [0, 0, 0, 0, 0xffff, 0] {
        return Some(low);
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    None
}

/// Whether `ip` is a metadata address, directly or embedded in an IPv6 form.
pub fn is_metadata(ip: IpAddr) -> bool {
    let embedded = match ip {
        IpAddr::V6(v6) => embedded_ipv4(v6).map(IpAddr::V4),
        IpAddr::V4(_) => None,
    };
    [Some(ip), embedded]
        .into_iter()
        .flatten()
        .any(|a| METADATA_ADDRESSES.contains(&a))
}

/// The special range `ip` is in (directly or embedded), or `None` for a global address.
pub fn special_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => match embedded_ipv4(v6) {
            // The embedded address's range first (loopback stays loopback); a local
            // translator's prefix is never global, whatever address it carries.
            Some(v4) => special_v4(v4).or_else(|| local_translation(v6)),
            None => special_v6(v6),
        },
    }
}

/// The IPv6 prefixes that only a translator the host's own network runs can reach.
fn local_translation(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if s[..3] == [0x64, 0xff9b, 1] {
        Some("NAT64 local-use")
    } else if s[..6] == [0, 0, 0, 0, 0xffff, 0] {
        Some("IPv4-translated")
    } else {
        None
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    Some(match o {
        [0, ..] => "unspecified",
        [127, ..] => "loopback",
        [10, ..] | [192, 168, ..] => "private",
        [172, b, ..] if (16..32).contains(&b) => "private",
        [169, 254, ..] => "link-local",
        [100, b, ..] if (64..128).contains(&b) => "CGNAT",
        [255, 255, 255, 255] => "broadcast",
        [a, ..] if (224..240).contains(&a) => "multicast",
        [a, ..] if a >= 240 => "reserved",
        [192, 0, 0, _] => "reserved",
        [198, 18 | 19, ..] => "benchmarking",
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => "documentation",
        [192, 88, 99, _] => "6to4 relay anycast",
        _ => return None,
    })
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    Some(if ip.is_unspecified() {
        "unspecified"
    } else if ip.is_loopback() {
        "loopback"
    } else if s[0] & 0xfe00 == 0xfc00 {
        "private"
    } else if s[0] & 0xffc0 == 0xfe80 {
        "link-local"
    } else if s[0] & 0xffc0 == 0xfec0 {
        "site-local"
    } else if s[0] & 0xff00 == 0xff00 {
        "multicast"
    } else if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
        "NAT64 local-use"
    } else if s[0] == 0x2001 && s[1] == 0xdb8 {
        "documentation"
    } else if s[0] == 0x2001 && s[1] == 2 && s[2] == 0 {
        "benchmarking"
    } else if s[0] == 0x2001 && s[1] == 0 {
        // Teredo carries an obfuscated IPv4 address; nobody builds through it.
        "Teredo"
    } else if s[0] == 0x100 && s[1..4] == [0, 0, 0] {
        "discard"
    } else {
        return None;
    })
}

/// Whether `range` (a [`special_range`] name) holds addresses that carry an IPv4 address a
/// translator or relay derives where this proxy cannot check it: refused always.
fn untranslatable(range: &str) -> bool {
    matches!(range, "NAT64 local-use" | "IPv4-translated" | "Teredo")
}

/// The range name for an address of this host's own interfaces that is in no other special
/// range (a public or otherwise global address on the runner's host).
pub const HOST_OWN: &str = "host's own";

/// This host's own addresses: its interfaces' (`getifaddrs`) and `configured`, the operator's
/// `host.addresses` (a NAT's public address, which is on no interface of the host). The proxy
/// runs in the host's network namespace: a connection to one of them reaches the host's own
/// services (those bound to `0.0.0.0`, say) whatever range the address is in, so a global
/// one is treated as a special address too; so do the runner's own fetches. Read when a
/// job's policy is made (and at each fetch); an address added while the job runs is not
/// known to it.
pub fn host_addresses(configured: &[IpAddr]) -> Result<BTreeSet<IpAddr>, String> {
    let addrs = nix::ifaddrs::getifaddrs()
        .map_err(|e| format!("listing this host's own addresses (getifaddrs): {e}"))?;
    Ok(addrs
        .filter_map(|a| a.address)
        .filter_map(|a| {
            a.as_sockaddr_in()
                .map(|s| IpAddr::V4(s.ip()))
                .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
        })
        .chain(configured.iter().copied())
        .collect())
}

/// [`special_range`], or [`HOST_OWN`] for an address of this host (directly or embedded in an
/// IPv6 form) in no other special range.
pub fn special_or_host_range(ip: IpAddr, host: &BTreeSet<IpAddr>) -> Option<&'static str> {
    special_range(ip).or_else(|| is_host_address(ip, host).then_some(HOST_OWN))
}

/// Whether `ip` (or the IPv4 address it embeds) is one of `host`'s addresses.
pub fn is_host_address(ip: IpAddr, host: &BTreeSet<IpAddr>) -> bool {
    let embedded = match ip {
        IpAddr::V6(v6) => embedded_ipv4(v6).map(IpAddr::V4),
        IpAddr::V4(_) => None,
    };
    host.contains(&ip) || embedded.is_some_and(|v4| host.contains(&v4))
}

/// Checks a job's allow list against the operator's ceiling for its trust level; the error
/// names the first entry above it (the caller refuses the job with exit 2). `host` is this
/// host's own addresses ([`host_addresses`]).
///
/// An address literal in a special range (loopback, private, link-local, CGNAT...) is covered
/// only by a ceiling entry naming that address and port: `*` and `*:port` mean any public
/// host. Otherwise, under the default ceiling (`*`), an untrusted job could list
/// `127.0.0.1:6379` or `10.0.0.5:2375` and reach the build host's own services or its
/// private network through the proxy, which runs in the host's network namespace. (Names
/// resolving to such addresses need the address listed too: [`EgressPolicy::check_address`].)
pub fn check_ceiling(
    allow: &[AllowEntry],
    ceiling: &[CeilingEntry],
    host: &BTreeSet<IpAddr>,
) -> Result<(), String> {
    for (i, entry) in allow.iter().enumerate() {
        let special = match entry.host {
            AllowHost::Ip(ip) => special_or_host_range(ip, host),
            _ => None,
        };
        let covered = ceiling.iter().any(|c| match (c, special) {
            (CeilingEntry::Entry(_), _) | (_, None) => c.covers(entry),
            _ => false,
        });
        if covered {
            continue;
        }
        return Err(match special {
            Some(range) => format!(
                "network.allow[{i}]: {entry} is a {range} address, above the operator's egress \
                 ceiling for this trust level: only a ceiling entry naming it (\"{entry}\") \
                 allows such an address; * and *:port cover public hosts only"
            ),
            None => format!(
                "network.allow[{i}]: {entry} is above the operator's egress ceiling for this \
                 trust level"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], hosts: &[(&str, &str)], audit: bool) -> EgressPolicy {
        let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
        let hosts = hosts
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        // The tests' addresses are judged by their ranges, not by whether this machine
        // happens to own one of them.
        let mut p = EgressPolicy::new(&allow, &hosts, audit, &[]).unwrap();
        p.host_addresses = BTreeSet::new();
        p
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn names_are_canonical_and_numeric_forms_are_ambiguous() {
        assert_eq!(
            Host::parse("Crates.IO."),
            Ok(Host::Name("crates.io".into()))
        );
        assert_eq!(
            Host::parse("127.0.0.1"),
            Ok(Host::Ip("127.0.0.1".parse().unwrap()))
        );
        assert_eq!(Host::parse("[::1]"), Ok(Host::Ip("::1".parse().unwrap())));
        for raw in [
            "2130706433",
            "0177.0.0.1",
            "127.1",
            "0x7f000001",
            "0x7f.0.0.1",
            "1.2.3.4.5",
            "017700000001",
        ] {
            assert_eq!(Host::parse(raw), Err(Denied::AmbiguousLiteral), "{raw}");
        }
        for raw in [
            "",
            "a..b",
            "a b",
            "[::1",
            "ex\u{e4}mple.com",
            "a_b.com",
            "::1",
        ] {
            assert!(Host::parse(raw).is_err(), "{raw}");
        }
    }

    #[test]
    fn wildcards_match_subdomains_only_and_ports_must_match() {
        let p = policy(&["*.example.com:443", "crates.io:443"], &[], false);
        assert!(matches!(
            p.decide("a.example.com", 443),
            Decision::Resolve { .. }
        ));
        assert!(matches!(
            p.decide("A.B.Example.com.", 443),
            Decision::Resolve { .. }
        ));
        assert!(matches!(p.decide("example.com", 443), Decision::Deny(_)));
        assert!(matches!(p.decide("crates.io", 80), Decision::Deny(_)));
        assert_eq!(
            p.decide("evil.io", 443),
            Decision::Deny(Denied::NotAllowed {
                host: "evil.io".into(),
                port: 443
            })
        );
    }

    #[test]
    fn ip_literals_are_allowed_only_when_listed_as_such() {
        let p = policy(&["1.2.3.4:443", "[2001:db8::1]:443"], &[], false);
        assert!(matches!(p.decide("1.2.3.4", 443), Decision::Literal { .. }));
        assert!(matches!(
            p.decide("[2001:db8::1]", 443),
            Decision::Literal { .. }
        ));
        assert!(matches!(p.decide("1.2.3.5", 443), Decision::Deny(_)));
        assert!(matches!(
            p.decide("[::ffff:1.2.3.4]", 443),
            Decision::Deny(_)
        ));
    }

    #[test]
    fn special_addresses_are_refused_unless_listed_exactly() {
        let p = policy(&["a.test:80", "127.0.0.1:80"], &[], false);
        assert_eq!(p.check_address("a.test", sa("127.0.0.1:80")), Ok(()));
        assert!(p.check_address("a.test", sa("127.0.0.2:80")).is_err());
        assert!(p.check_address("a.test", sa("127.0.0.1:81")).is_err());
        assert_eq!(p.check_address("a.test", sa("93.184.216.34:80")), Ok(()));
        for bad in [
            "10.1.2.3:80",
            "172.16.0.1:80",
            "192.168.1.1:80",
            "169.254.1.1:80",
            "100.64.0.1:80",
            "224.0.0.1:80",
            "255.255.255.255:80",
            "0.0.0.0:80",
            "[::1]:80",
            "[::]:80",
            "[fd12::1]:80",
            "[fe80::1]:80",
            "[ff02::1]:80",
            "[::ffff:127.0.0.1]:80",
            "[::ffff:10.0.0.1]:80",
            "[64:ff9b::a00:1]:80",
            "[2002:a00:1::]:80",
        ] {
            assert!(p.check_address("a.test", sa(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn metadata_addresses_are_refused_even_when_listed_and_in_audit_mode() {
        for audit in [false, true] {
            let p = policy(&["169.254.169.254:80", "*.test:80"], &[], audit);
            assert!(matches!(
                p.decide("169.254.169.254", 80),
                Decision::Deny(Denied::Metadata(_))
            ));
            assert!(matches!(
                p.decide("[::ffff:169.254.169.254]", 80),
                Decision::Deny(_)
            ));
            for bad in [
                "169.254.169.254:80",
                "[::ffff:169.254.169.254]:80",
                "[::ffff:a9fe:a9fe]:80",
                "[64:ff9b::a9fe:a9fe]:80",
                "[fd00:ec2::254]:80",
                "[2002:a9fe:a9fe::]:80",
            ] {
                assert!(
                    matches!(p.check_address("x.test", sa(bad)), Err(Denied::Metadata(_))),
                    "{bad} audit={audit}"
                );
            }
        }
    }

    #[test]
    fn audit_mode_allows_all_but_metadata_and_loopback() {
        let trusted = policy(&[], &[], true).reaching_private_in_audit(true);
        let untrusted = policy(&["10.0.0.2:80"], &[], true);
        for p in [&trusted, &untrusted] {
            match p.decide("anything.example", 8080) {
                Decision::Resolve {
                    reason,
                    public_only,
                    ..
                } => {
                    assert!(reason.contains("audit mode"), "{reason}");
                    // Only an untrusted job's audit hides what an unlisted name resolved to.
                    assert_eq!(public_only, std::ptr::eq(p, &untrusted));
                }
                other => panic!("{other:?}"),
            }
            assert_eq!(p.check_address("x", sa("93.184.216.34:80")), Ok(()));
            assert!(p.check_address("x", sa("127.0.0.1:80")).is_err());
            assert!(p.check_address("x", sa("[::ffff:127.0.0.1]:80")).is_err());
            assert!(p.check_address("x", sa("0.0.0.0:80")).is_err());
        }
        // A private network: a trusted job's audit reaches it; an untrusted job's only where
        // its list names the address.
        assert_eq!(trusted.check_address("x", sa("10.0.0.1:80")), Ok(()));
        assert_eq!(
            untrusted.check_address("x", sa("10.0.0.1:80")),
            Err(Denied::Forbidden {
                ip: "10.0.0.1".parse().unwrap(),
                range: "private"
            })
        );
        assert_eq!(untrusted.check_address("x", sa("10.0.0.2:80")), Ok(()));
        // The host's loopback, listed exactly (the ceiling named it): reached in audit mode as
        // in enforcing mode, by either trust level; on another port, or unlisted, refused.
        for trusted in [false, true] {
            let listed = policy(&["127.0.0.1:8088"], &[], true).reaching_private_in_audit(trusted);
            assert_eq!(listed.check_address("x", sa("127.0.0.1:8088")), Ok(()));
            assert!(listed.check_address("x", sa("127.0.0.1:8089")).is_err());
            assert!(listed.check_address("x", sa("127.0.0.2:8088")).is_err());
        }
        // A listed name is told what happened to it, in audit mode as in enforcing mode.
        for audit in [true, false] {
            assert!(matches!(
                policy(&["a.test:80"], &[], audit).decide("a.test", 80),
                Decision::Resolve {
                    public_only: false,
                    ..
                }
            ));
        }
    }

    #[test]
    fn special_use_ranges_are_not_global_and_local_nat64_is_decoded() {
        let table = [
            ("198.18.0.1", Some("benchmarking")),
            ("198.19.255.255", Some("benchmarking")),
            ("198.17.255.255", None),
            ("198.20.0.1", None),
            ("192.0.2.1", Some("documentation")),
            ("198.51.100.7", Some("documentation")),
            ("203.0.113.9", Some("documentation")),
            ("192.88.99.1", Some("6to4 relay anycast")),
            ("192.0.0.170", Some("reserved")),
            ("192.0.1.1", None),
            ("8.8.8.8", None),
            ("2001:db8::1", Some("documentation")),
            ("2001:2::1", Some("benchmarking")),
            ("fec0::1", Some("site-local")),
            ("febf::1", Some("link-local")),
            ("::ffff:0:7f00:1", Some("loopback")),
            ("::ffff:0:a00:1", Some("private")),
            ("::ffff:0:808:808", Some("IPv4-translated")),
            ("64:ff9b:1::7f00:1", Some("loopback")),
            ("64:ff9b:1::a9fe:101", Some("link-local")),
            ("64:ff9b:1::808:808", Some("NAT64 local-use")),
            ("64:ff9b:1:7f00:0:100::", Some("NAT64 local-use")),
            ("64:ff9b::808:808", None),
            ("64:ff9b::c000:201", Some("documentation")),
            ("2002:c633:6401::", Some("documentation")),
            ("2606:4700::1111", None),
        ];
        for (ip, range) in table {
            assert_eq!(special_range(ip.parse().unwrap()), range, "{ip}");
        }
        let enforcing = policy(&["a.test:80", "192.0.2.1:80"], &[], false);
        let audit = policy(&[], &[], true).reaching_private_in_audit(true);
        // An untrusted job's audit: the public internet beyond the list, special ranges only
        // where listed (192.0.2.1 is).
        let untrusted_audit = policy(&["192.0.2.1:80"], &[], true);
        for (ip, range) in table {
            let addr = SocketAddr::new(ip.parse().unwrap(), 80);
            // Enforcing, and an untrusted job's audit, alike: special ranges only where listed.
            for (mode, p) in [
                ("enforcing", &enforcing),
                ("untrusted audit", &untrusted_audit),
            ] {
                let verdict = p.check_address("a.test", addr);
                match range {
                    Some(range) if ip != "192.0.2.1" => assert_eq!(
                        verdict,
                        Err(Denied::Forbidden {
                            ip: addr.ip(),
                            range
                        }),
                        "{mode} {ip}"
                    ),
                    _ => assert_eq!(verdict, Ok(()), "{mode} {ip}"),
                }
            }
            let verdict = audit.check_address("a.test", addr);
            match range {
                Some(
                    range @ ("loopback" | "link-local" | "NAT64 local-use" | "IPv4-translated"),
                ) => assert_eq!(
                    verdict,
                    Err(Denied::Forbidden {
                        ip: addr.ip(),
                        range
                    }),
                    "{ip}"
                ),
                _ => assert_eq!(verdict, Ok(()), "audit {ip}"),
            }
        }
    }

    /// Forms whose IPv4 address a translator or relay derives where this proxy cannot see it
    /// (metadata among them) are refused as metadata is: in both modes, even when listed.
    #[test]
    fn translated_forms_the_proxy_cannot_decode_are_refused_even_when_listed() {
        let forms = [
            ("64:ff9b:1:a9fe:a9:fe00::", "NAT64 local-use"),
            ("64:ff9b:1::808:808", "NAT64 local-use"),
            ("::ffff:0:808:808", "IPv4-translated"),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
        ];
        let listed: Vec<String> = forms.iter().map(|(ip, _)| format!("[{ip}]:80")).collect();
        let listed: Vec<&str> = listed.iter().map(String::as_str).collect();
        for audit in [false, true] {
            let p = policy(&listed, &[], audit);
            for (ip, range) in forms {
                let addr = SocketAddr::new(ip.parse().unwrap(), 80);
                assert_eq!(
                    p.check_address("a.test", addr),
                    Err(Denied::Forbidden {
                        ip: addr.ip(),
                        range
                    }),
                    "{ip} audit={audit}"
                );
            }
        }
    }

    #[test]
    fn every_metadata_address_is_refused_in_every_form_and_mode_even_when_listed() {
        let forms = [
            "169.254.169.254",
            "169.254.170.2",
            "169.254.170.23",
            "::ffff:169.254.170.23",
            "64:ff9b::a9fe:aa17",
            "100.100.100.200",
            "::ffff:100.100.100.200",
            "::100.100.100.200",
            "::ffff:0:100.100.100.200",
            "64:ff9b::6464:64c8",
            "64:ff9b:1::6464:64c8",
            "2002:6464:64c8::",
            "168.63.129.16",
            "::ffff:168.63.129.16",
            "fd00:ec2::254",
            "fd00:ec2::23",
            "fd20:ce::254",
        ];
        let listed: Vec<String> = forms
            .iter()
            .map(|f| match f.parse::<IpAddr>().unwrap() {
                IpAddr::V4(ip) => format!("{ip}:80"),
                IpAddr::V6(ip) => format!("[{ip}]:80"),
            })
            .chain(["*.test:80".to_string()])
            .collect();
        let listed: Vec<&str> = listed.iter().map(String::as_str).collect();
        for audit in [false, true] {
            let p = policy(&listed, &[], audit);
            for form in forms {
                let ip: IpAddr = form.parse().unwrap();
                let literal = match ip {
                    IpAddr::V4(_) => form.to_string(),
                    IpAddr::V6(_) => format!("[{form}]"),
                };
                assert_eq!(
                    p.decide(&literal, 80),
                    Decision::Deny(Denied::Metadata(ip)),
                    "{form} audit={audit}"
                );
                assert_eq!(
                    p.check_address("x.test", SocketAddr::new(ip, 80)),
                    Err(Denied::Metadata(ip)),
                    "{form} audit={audit}"
                );
            }
        }
    }

    #[test]
    fn link_local_is_refused_in_audit_mode_and_in_enforcing_mode_unless_listed() {
        let table = [
            "169.254.0.1",
            "169.254.169.123",
            "169.254.255.254",
            "fe80::1",
            "febf:ffff::1",
            "::ffff:169.254.1.1",
            "64:ff9b::a9fe:101",
            "64:ff9b:1::a9fe:101",
            "2002:a9fe:101::",
        ];
        for form in table {
            let ip: IpAddr = form.parse().unwrap();
            let addr = SocketAddr::new(ip, 80);
            let refused = Err(Denied::Forbidden {
                ip,
                range: "link-local",
            });
            let entry = match ip {
                IpAddr::V4(v4) => format!("{v4}:80"),
                IpAddr::V6(v6) => format!("[{v6}]:80"),
            };
            // Audit mode refuses it unless the list names it, as enforcing mode does; a
            // trusted job's audit too.
            for audit in [
                policy(&["x.test:80"], &[], true),
                policy(&["x.test:80"], &[], true).reaching_private_in_audit(true),
            ] {
                assert_eq!(audit.check_address("x.test", addr), refused, "audit {form}");
            }
            let listed = policy(&["x.test:80", &entry], &[], true);
            assert_eq!(listed.check_address("x.test", addr), Ok(()), "audit {form}");
            let enforcing = policy(&["x.test:80"], &[], false);
            assert_eq!(enforcing.check_address("x.test", addr), refused, "{form}");
            let enforcing = policy(&["x.test:80", &entry], &[], false);
            assert_eq!(enforcing.check_address("x.test", addr), Ok(()), "{form}");
        }
    }

    #[test]
    fn overrides_are_found_by_canonical_name() {
        let p = policy(&[], &[("Mirror.Internal", "10.1.2.3")], false);
        assert_eq!(
            p.override_for("mirror.internal"),
            Some("10.1.2.3".parse().unwrap())
        );
        assert!(
            EgressPolicy::new(&["nope".into()], &BTreeMap::new(), false, &[])
                .unwrap_err()
                .contains("network.allow[0]")
        );
    }

    #[test]
    fn ceiling_check_names_the_entry_above_it() {
        let allow: Vec<AllowEntry> = ["a.example.com:443", "evil.io:443"]
            .iter()
            .map(|s| AllowEntry::parse(s).unwrap())
            .collect();
        let ceiling = [CeilingEntry::parse("*.example.com:443").unwrap()];
        let err = check_ceiling(&allow, &ceiling, &BTreeSet::new()).unwrap_err();
        assert!(err.contains("network.allow[1]: evil.io:443"), "{err}");
        assert_eq!(
            check_ceiling(&allow, &[CeilingEntry::Any], &BTreeSet::new()),
            Ok(())
        );
        assert_eq!(check_ceiling(&[], &[], &BTreeSet::new()), Ok(()));
    }

    /// The proxy runs in the host's network namespace: an address of the host's own
    /// interfaces reaches its services, whatever range it is in. A global one is special
    /// like loopback (listed and named in the ceiling, or refused); in audit mode every one
    /// is refused.
    #[test]
    fn the_hosts_own_addresses_are_special_and_refused_in_audit_mode() {
        let own: BTreeSet<IpAddr> = ["93.184.216.34", "10.9.8.7"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let make = |allow: &[&str], audit: bool| {
            let allow = allow
                .iter()
                .map(|a| AllowEntry::parse(a).unwrap())
                .collect();
            EgressPolicy::from_parts(allow, BTreeMap::new(), audit, own.clone())
        };
        let public: SocketAddr = "93.184.216.34:22".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:93.184.216.34]:22".parse().unwrap();
        let private: SocketAddr = "10.9.8.7:22".parse().unwrap();
        let other: SocketAddr = "93.184.216.35:22".parse().unwrap();
        let enforcing = make(&["a.test:22"], false);
        for addr in [public, mapped] {
            assert_eq!(
                enforcing.check_address("a.test", addr),
                Err(Denied::Forbidden {
                    ip: addr.ip(),
                    range: HOST_OWN
                })
            );
        }
        assert_eq!(enforcing.check_address("a.test", other), Ok(()));
        assert_eq!(
            make(&["a.test:22", "93.184.216.34:22"], false).check_address("a.test", public),
            Ok(())
        );
        for audit in [
            make(&[], true),
            make(&[], true).reaching_private_in_audit(true),
        ] {
            for addr in [public, mapped, private] {
                assert_eq!(
                    audit.check_address("a.test", addr),
                    Err(Denied::Forbidden {
                        ip: addr.ip(),
                        range: HOST_OWN
                    }),
                    "{addr}"
                );
            }
            assert_eq!(audit.check_address("a.test", other), Ok(()));
        }
        // Listed exactly, the host's own address is reached in audit mode too.
        assert_eq!(
            make(&["93.184.216.34:22"], true).check_address("a.test", public),
            Ok(())
        );
        let entry = vec![AllowEntry::parse("93.184.216.34:22").unwrap()];
        let err = check_ceiling(&entry, &[CeilingEntry::Any], &own).unwrap_err();
        assert!(err.contains("host's own"), "{err}");
        let named = [
            CeilingEntry::Any,
            CeilingEntry::parse("93.184.216.34:22").unwrap(),
        ];
        assert_eq!(check_ceiling(&entry, &named, &own), Ok(()));
        // This host's real addresses are read, loopback among them.
        let real = host_addresses(&[]).unwrap();
        assert!(real.contains(&IpAddr::from([127, 0, 0, 1])));
        // With the operator's own beside them (a NAT's public address).
        let nat = IpAddr::from([93, 184, 216, 34]);
        let both = host_addresses(&[nat]).unwrap();
        assert!(both.contains(&nat) && both.is_superset(&real));
    }

    #[test]
    fn only_a_ceiling_naming_it_covers_a_loopback_or_private_literal() {
        let ceiling = |c: &[&str]| -> Vec<CeilingEntry> {
            c.iter().map(|s| CeilingEntry::parse(s).unwrap()).collect()
        };
        let entry = |e: &str| vec![AllowEntry::parse(e).unwrap()];
        for special in [
            "127.0.0.1:6379",
            "10.0.0.5:2375",
            "192.168.1.1:80",
            "100.64.0.1:443",
            "[::1]:8080",
            "[fd00::1]:443",
            "[::ffff:127.0.0.1]:22",
            "0.0.0.0:80",
        ] {
            for open in [
                &["*"][..],
                &[&format!(
                    "*:{}",
                    &special[special.rfind(':').unwrap() + 1..]
                )],
            ] {
                let err =
                    check_ceiling(&entry(special), &ceiling(open), &BTreeSet::new()).unwrap_err();
                assert!(
                    err.contains("network.allow[0]")
                        && err.contains("only a ceiling entry naming it"),
                    "{special} under {open:?}: {err}"
                );
            }
            assert_eq!(
                check_ceiling(&entry(special), &ceiling(&["*", special]), &BTreeSet::new()),
                Ok(()),
                "{special}"
            );
        }
        // Public literals and names stay under `*`.
        for public in ["93.184.216.34:443", "[2606:4700::1]:443", "example.com:443"] {
            assert_eq!(
                check_ceiling(&entry(public), &ceiling(&["*"]), &BTreeSet::new()),
                Ok(()),
                "{public}"
            );
        }
        // Another port of a named address is not covered.
        assert!(check_ceiling(
            &entry("127.0.0.1:22"),
            &ceiling(&["127.0.0.1:8080"]),
            &BTreeSet::new()
        )
        .is_err());
    }
}
