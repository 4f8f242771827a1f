//! The per-job egress proxy: a job's only way out of its network namespace.
//!
//! # Why
//!
//! A job runs in its own network namespace with nothing but loopback (DESIGN.md, "Network").
//! Its pid-1 init listens on `127.0.0.1:<port>` inside the namespace and forwards every
//! connection ([`bulwark_sandbox::forwarder`]) to a unix socket served by this module in the
//! daemon; `HTTP_PROXY`/`HTTPS_PROXY` point there. The proxy speaks HTTP `CONNECT` and
//! absolute-URI plain HTTP, resolves names itself, and connects only when host and port match
//! the job's allow list and the address it resolved passes the address rules
//! ([`policy`]). It connects to exactly the address it checked. Every attempt, allowed or
//! denied, is one line in `egress.log` ([`log`], capped, with at most half of the cap for
//! denials and every attempt counted), which becomes a provenance byproduct;
//! [`suggest`] turns an audit-mode log into an allow list.
//!
//! # What it refuses
//!
//! - any host and port not on the allow list (`host:port`, `*.suffix:port` for subdomains
//!   only, address literals only when listed as such); default deny;
//! - hosts written as ambiguous address literals (`2130706433`, `0177.0.0.1`, `127.1`);
//! - resolved addresses in loopback, private, link-local, CGNAT, multicast, unspecified,
//!   broadcast, reserved, documentation or benchmarking ranges (also IPv4-mapped,
//!   IPv4-translated, NAT64 and 6to4 forms) unless the allow
//!   list names that exact address on that port; the metadata addresses always, in every mode;
//!   in audit mode also loopback, this host's own addresses and all of link-local, whatever
//!   the list says;
//! - in audit mode, which lets a job try hosts its list does not name, more for an untrusted
//!   job: a trusted job's audit reaches every other address (private networks included), an
//!   untrusted job's reaches public addresses only beyond its list (the special ranges stay
//!   as in enforcing mode), and an unlisted name that does not resolve, resolves to no
//!   address or to one the proxy refuses gets the same `403` in all three cases, so that a
//!   pull request's job cannot list the internal names the host's resolver knows
//!   (`egress.log` keeps which); a listed name, and every name in a trusted job's audit, is
//!   told what happened as in enforcing mode;
//! - a second request on a plain-HTTP connection: the proxy forwards one request per client
//!   connection with `Connection: close` and closes after the response, so a kept-alive
//!   follow-up to another host never reaches any upstream (each new connection is checked);
//! - malformed, oversized (16 KiB head, 100 headers) or slow (10 s for the head) requests,
//!   connections above the per-job limit (503), request smuggling shapes (both
//!   `Content-Length` and `Transfer-Encoding`, conflicting lengths), credentials in URLs;
//! - anything once the proxy cannot record it: if `egress.log` cannot be written, later
//!   connections are denied. Failures deny; nothing falls back to allow.
//!
//! # Alternatives rejected
//!
//! - DNS-level filtering with an IP firewall after resolution (StepSecurity harden-runner's
//!   `dnsproxy.go`/`firewall.go`): the allowed set becomes "whatever IPs an allowed name
//!   resolved to", shared CDN addresses let a job reach any tenant of that address, private
//!   ranges and the metadata address stay open, and a policy-store failure falls back to
//!   audit. Here the job never gets a resolver; the proxy resolves and checks per connection.
//! - Landlock TCP port rules on the job: they restrict ports, not hosts, cannot restrict UDP
//!   before ABI 10, and would also break the job's own servers on its loopback. The network
//!   namespace is the boundary and this proxy the only door.
//! - Transparent interception (iptables/nftables redirection): needs privileges in the host
//!   namespace per job and loses the host name for TLS traffic unless SNI is parsed.
//!
//! # Limits
//!
//! TLS is not inspected: within an allowed `CONNECT` tunnel, the SNI and HTTP `Host` are the
//! client's business, so domain fronting through a shared front end of an allowed host is
//! possible; plain HTTP gets its `Host` header rewritten to the checked authority. The
//! proxy's resolver is the host's (`getaddrinfo`), asked for the absolute name (`name.`) so
//! that `resolv.conf` search domains cannot turn an allowed name into an internal one; glibc
//! then does not find names that exist only in the host's `/etc/hosts` (`egress.hosts` is
//! the way to point names elsewhere). A lookup is bounded by a timeout, but `getaddrinfo`
//! cannot be cancelled: its thread keeps the connection's slot until it returns, so a job
//! has at most `max_connections` of them, and the job's end does not wait for them. One
//! request per plain-HTTP connection costs a reconnect for clients that would keep alive.
//!
//! # How it is tested
//!
//! Unit tests beside each module; `tests/tests/egress.rs` drives a real proxy on a unix socket
//! against origin servers on 127.0.0.1 that count their connections (address-form table,
//! kept-alive bypass, slow and malformed clients, 1 GiB byte-identical, 200 concurrent).
//!
//! # Example
//!
//! ```no_run
//! use bulwark_runner::egress::{self, EgressPolicy, ProxyLimits};
//! # fn main() -> std::io::Result<()> {
//! let policy = EgressPolicy::new(&["crates.io:443".into()], &Default::default(), false, &[])
//!     .map_err(std::io::Error::other)?;
//! let proxy = egress::start(
//!     "/run/bulwark/jobs/42/egress.sock".as_ref(),
//!     policy,
//!     "/out/egress.log".as_ref(),
//!     ProxyLimits::default(),
//! )?;
//! // ... the job runs ...
//! let summary = proxy.shutdown()?;
//! println!("{} allowed, {} denied", summary.allowed, summary.denied);
//! # Ok(()) }
//! ```

pub(crate) mod http;
pub mod log;
pub mod policy;
pub mod proxy;
mod relay;
pub mod suggest;

pub use log::{EgressSummary, Record};
pub use policy::{check_ceiling, Decision, Denied, EgressPolicy};
pub use proxy::{start, start_with_resolver, JobProxy, ProxyLimits, Resolver};
pub use suggest::suggest;

/// Raises this process's soft limit on open descriptors to its hard limit, as daemons do:
/// the egress proxy holds up to six descriptors per job connection (two sockets, two pipes),
/// 768 at the default 128 connections per job, and a soft limit of 1024 (a common default
/// for ordinary users) would turn a busy job's connections into refusals. Never raises the
/// hard limit; returns the soft limit now in force.
pub fn raise_descriptor_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard
            } else {
                soft
            }
        }
        Ok((soft, _)) => soft,
        Err(_) => 0,
    }
}

/// A single-threaded tokio runtime for the proxy's and relay's unit tests.
#[cfg(test)]
fn test_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .expect("a tokio runtime for tests")
}
