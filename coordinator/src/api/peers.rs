//! How many connections one client holds at once (`serve --max-connections-per-address`).
//!
//! The coordinator serves at most [`super::ServeOptions::max_connections`] connections; without
//! a bound per client, one client opening that many (each sending a slow body, or reconnecting
//! as each is cut) leaves none for the runners. A connection from a client already holding
//! [`super::ServeOptions::max_connections_per_address`] is closed as soon as it is accepted,
//! before a byte of it is read (and before a TLS handshake).
//!
//! A client is its address; an IPv6 client is its /64 (a host is usually given a whole /64, so
//! counting single IPv6 addresses would bound nothing), and an IPv4-mapped IPv6 address is
//! the IPv4 address it maps.
//!
//! Off by default ([`super::DEFAULT_MAX_CONNECTIONS_PER_ADDRESS`]): whether one address is
//! one client depends on the network in front, which the coordinator cannot see. Runners behind
//! one NAT address, behind an L4 load balancer that rewrites source addresses, or in one cloud
//! subnet (a whole VPC subnet is one IPv6 /64) share one bound, as does every client behind a
//! TLS terminator (docs/control-plane.md, "Connections", says when to set it and how to size
//! it).
//!
//! Limits: a client with many addresses (several IPv4 addresses, several /64s, a botnet) still
//! takes many slots.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The connections each client holds, each at most `max`.
#[derive(Debug)]
pub struct AddressSlots {
    max: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in its client's count, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<AddressSlots>,
    client: IpAddr,
}

impl AddressSlots {
    /// At most `max` connections per client (at least 1).
    pub fn new(max: usize) -> Arc<AddressSlots> {
        Arc::new(AddressSlots {
            max: max.max(1),
            held: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for a connection from `peer`, or `None` when its client holds the most already.
    pub fn take(self: &Arc<Self>, peer: IpAddr) -> Option<Slot> {
        let client = client_of(peer);
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let n = held.entry(client).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot {
            slots: Arc::clone(self),
            client,
        })
    }

    /// How many connections `peer`'s client holds.
    #[cfg(test)]
    pub fn held(&self, peer: IpAddr) -> usize {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.get(&client_of(peer)).copied().unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut held = self
            .slots
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = held.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                // Only clients holding a connection are kept: the map cannot grow with the
                // number of addresses ever seen.
                held.remove(&self.client);
            }
        }
    }
}

/// The warning that connections were refused, at most once a minute (a client can make any
/// number of refusals; the log must not grow with them), with how many since the last one.
#[derive(Debug, Default)]
pub struct RefusalLog {
    last: Option<Instant>,
    since: u64,
}

impl RefusalLog {
    /// How often the warning is written at most.
    const EVERY: Duration = Duration::from_secs(60);

    /// A connection from `peer` was refused, its client holding `max` already.
    pub fn refused(&mut self, peer: IpAddr, max: usize) {
        self.since += 1;
        if self.last.is_some_and(|t| t.elapsed() < Self::EVERY) {
            return;
        }
        tracing::warn!(
            client = %client_of(peer),
            max,
            refused = self.since,
            "connections refused: the client holds the most connections one address may \
             (--max-connections-per-address); runners sharing an address (a NAT, an L4 load \
             balancer, a proxy in front, one cloud IPv6 /64) need it higher, or 0"
        );
        self.last = Some(Instant::now());
        self.since = 0;
    }
}

/// The client a connection from `peer` is counted against: its IPv4 address, or its IPv6 /64.
pub fn client_of(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_ipv6_client_is_its_slash_64_and_a_mapped_ipv4_address_is_the_ipv4_one() {
        assert_eq!(client_of(ip("2001:db8:1:2::1")), ip("2001:db8:1:2::"));
        assert_eq!(
            client_of(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")),
            ip("2001:db8:1:2::")
        );
        assert_ne!(client_of(ip("2001:db8:1:3::1")), ip("2001:db8:1:2::"));
        assert_eq!(client_of(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(client_of(ip("192.0.2.7")), ip("192.0.2.7"));
    }

    #[test]
    fn a_client_gets_at_most_its_slots_and_each_comes_back_when_dropped() {
        let slots = AddressSlots::new(2);
        let a = slots.take(ip("192.0.2.7")).unwrap();
        let b = slots.take(ip("::ffff:192.0.2.7")).unwrap();
        assert!(slots.take(ip("192.0.2.7")).is_none());
        // Another client is not held up.
        let other = slots.take(ip("192.0.2.8")).unwrap();
        drop(a);
        let c = slots.take(ip("192.0.2.7")).unwrap();
        assert!(slots.take(ip("192.0.2.7")).is_none());
        drop((b, c, other));
        assert_eq!(slots.held(ip("192.0.2.7")), 0);
        assert!(slots.held.lock().unwrap().is_empty(), "entries kept");
    }
}
