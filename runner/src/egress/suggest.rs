//! `bulwark egress suggest OUT/egress.log`: the allow list a run needed.
//!
//! Reads an egress log (typically from an audit-mode run) and returns the smallest list of
//! `host:port` entries that would have permitted every attempt the policy could ever permit:
//! each name on its port, each address literal on its port, and, where a name resolved to a
//! loopback, private or other special address, that exact address too (the policy demands it
//! be listed explicitly). Attempts no list can permit (metadata addresses, ambiguous or
//! invalid hosts, requests that never named a host) are left out. Wildcards are never
//! suggested: widening `a.example.com` to `*.example.com` is a reviewer's decision.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::net::IpAddr;
use std::path::Path;

use bulwark_protocol::AllowEntry;

use super::log::Record;
use super::policy::{is_metadata, special_range, Host};

/// Longest line read; longer lines (not written by the proxy) are skipped.
const MAX_LINE: u64 = 64 * 1024;

/// The sorted, deduplicated allow list that would have permitted every attempt in `log`.
pub fn suggest(log: &Path) -> io::Result<Vec<String>> {
    let mut reader = BufReader::new(File::open(log)?);
    let mut entries = BTreeSet::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader).take(MAX_LINE).read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        if line.last() != Some(&b'\n') && n as u64 == MAX_LINE {
            // Skip the rest of an overlong line.
            let mut sink = Vec::new();
            while reader.read_until(b'\n', &mut sink)? > 0 && sink.last() != Some(&b'\n') {
                sink.clear();
            }
            continue;
        }
        let Ok(record) = serde_json::from_slice::<Record>(&line) else {
            continue;
        };
        entries.extend(entries_for(&record));
    }
    Ok(entries.into_iter().collect())
}

fn entries_for(record: &Record) -> Vec<String> {
    if record.port == 0 {
        return Vec::new();
    }
    let address: Option<IpAddr> = record.address.as_deref().and_then(|a| a.parse().ok());
    if address.is_some_and(is_metadata) {
        return Vec::new();
    }
    let host = match Host::parse(&bracket_v6(&record.host)) {
        Ok(Host::Ip(ip)) if is_metadata(ip) => return Vec::new(),
        Ok(h) => h,
        Err(_) => return Vec::new(),
    };
    let mut out = vec![format!("{}:{}", host.to_entry_host(), record.port)];
    if let (Host::Name(_), Some(ip)) = (&host, address) {
        if special_range(ip).is_some() {
            out.push(format!("{}:{}", Host::Ip(ip).to_entry_host(), record.port));
        }
    }
    // Only what the job spec would accept.
    out.retain(|e| AllowEntry::parse(e).is_ok());
    out
}

fn bracket_v6(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(host: &str, port: u16, address: Option<&str>) -> Record {
        Record {
            time: String::new(),
            host: host.into(),
            port,
            address: address.map(Into::into),
            decision: "denied".into(),
            reason: String::new(),
            bytes_up: 0,
            bytes_down: 0,
            duration_ms: 0,
            method: "CONNECT".into(),
        }
    }

    #[test]
    fn entries_cover_names_literals_and_special_addresses() {
        assert_eq!(
            entries_for(&rec("crates.io", 443, Some("1.2.3.4"))),
            ["crates.io:443"]
        );
        assert_eq!(
            entries_for(&rec("mirror.test", 80, Some("10.0.0.1"))),
            ["mirror.test:80", "10.0.0.1:80"]
        );
        assert_eq!(entries_for(&rec("::1", 80, None)), ["[::1]:80"]);
        assert!(entries_for(&rec("169.254.169.254", 80, None)).is_empty());
        assert!(entries_for(&rec("meta.test", 80, Some("169.254.169.254"))).is_empty());
        assert!(entries_for(&rec("2130706433", 80, None)).is_empty());
        assert!(entries_for(&rec("", 0, None)).is_empty());
    }
}
