//! `egress.log`: one JSON line per connection attempt, allowed or denied.
//!
//! The log is evidence (its digest goes into `result.json` and the provenance byproducts), and
//! it is written on behalf of an untrusted job, so it is bounded:
//!
//! - every string field of a record is at most [`MAX_FIELD`] bytes; a longer one is cut and
//!   ends with [`CUT_MARK`], so no line is much longer than 1 KiB whatever the job sends;
//! - denied attempts (policy, malformed requests, limits) may use half of the cap. Once they
//!   have, one marker line with `"scope":"denied"` says so and later denials are only
//!   counted. A job cannot make a burst of refusals crowd out the record of what it did reach:
//!   allowed connections are written until the whole cap is used;
//! - once the next line would take the file past its cap, one marker line with
//!   `"scope":"all"` is written and every later attempt is only counted.
//!
//! - allowed connections not written one by one (the cap was reached) are still tallied, and
//!   [`EgressLog::finish`] writes the tally after the cap: one line per destination (host, port,
//!   address) for the first [`MAX_TALLY`] destinations, then one per reason (in enforcing
//!   mode the matching allow entry, so bounded by the job's allow list), with the number of
//!   connections and bytes. A job that fills the log cannot hide where it connected
//!   afterwards, only the timing of each connection; past 1024 destinations (possible with a
//!   wildcard entry or in audit mode) only under which entry. The tally adds at most 2048
//!   lines, about 1.5 MB in the worst case.
//!
//! The counts ([`EgressSummary`]) include every attempt, and `truncated` says whether some of
//! them are not in the file; `result.json` carries it as `egress.log_truncated`. Each line is
//! written with a single `write` of the whole line, so a crash leaves at most one partial
//! last line.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Default cap on `egress.log`: 16 MiB.
pub const DEFAULT_LOG_CAP: u64 = 16 << 20;

/// Longest string field of a [`Record`], in bytes, [`CUT_MARK`] included.
pub const MAX_FIELD: usize = 256;

/// How a field cut to [`MAX_FIELD`] ends.
pub const CUT_MARK: &str = "…[cut]";

/// One attempt, as a line of `egress.log`. Every string field is at most [`MAX_FIELD`]
/// bytes; a longer one is cut at a character boundary and ends with [`CUT_MARK`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// When the attempt ended, RFC 3339 UTC with milliseconds.
    pub time: String,
    /// The canonical host (a name or an address), or the raw request target when it was not
    /// understood (escaped by JSON).
    pub host: String,
    /// The port asked for; 0 when the request never named one.
    pub port: u16,
    /// The address connected to (or refused), `null` when none was reached.
    pub address: Option<String>,
    /// `allowed` or `denied`.
    pub decision: String,
    /// Why: the matching entry, the audit note or the denial reason.
    pub reason: String,
    /// Bytes from the job to the remote side.
    pub bytes_up: u64,
    /// Bytes from the remote side to the job.
    pub bytes_down: u64,
    /// From the request head being read to the connection's end.
    pub duration_ms: u64,
    /// `CONNECT`, `GET`, …; empty when no request line was read.
    pub method: String,
}

/// The line written once when denied attempts have used their half of the cap
/// (`scope` `denied`), and once when the log reaches its cap (`scope` `all`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TruncationRecord {
    /// When the limit was reached.
    pub time: String,
    /// Always true.
    pub truncated: bool,
    /// Which later attempts are counted but not written: `denied` or `all`.
    pub scope: String,
    /// What happened, in words.
    pub reason: String,
}

/// Counts over every attempt, including those no longer written after truncation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EgressSummary {
    /// Attempts allowed.
    pub allowed: u64,
    /// Attempts denied (policy, limits, malformed requests, upstream failures).
    pub denied: u64,
    /// Bytes from the job, over all allowed connections.
    pub bytes_up: u64,
    /// Bytes to the job.
    pub bytes_down: u64,
    /// Whether some attempts are counted but not in the log: denials once they used half of
    /// the cap, or any attempt once the cap was reached.
    pub truncated: bool,
}

/// The capped log writer.
#[derive(Debug)]
pub struct EgressLog {
    file: File,
    written: u64,
    cap: u64,
    /// Bytes of denied records (and of their marker) written.
    denied_written: u64,
    /// Denied attempts have used their half of the cap and are no longer written.
    denials_full: bool,
    /// The cap is reached: nothing more is written.
    full: bool,
    summary: EgressSummary,
    /// Allowed attempts not written, by destination, then by reason (see the module docs).
    tally: std::collections::BTreeMap<(String, u16, Option<String>, String), Tally>,
    /// Tally keys by destination in use (at most [`MAX_TALLY`]).
    tally_destinations: usize,
    /// Allowed attempts not written that found no room even in the tally.
    untallied: u64,
}

/// Connections and bytes of one tally line.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    connections: u64,
    bytes_up: u64,
    bytes_down: u64,
}

/// Destinations tallied one by one after the cap; later ones are tallied by reason.
pub const MAX_TALLY: usize = 1024;

/// Room kept for each marker line still to come.
const MARKER_RESERVE: u64 = 512;

/// `text`, or its longest prefix of at most [`MAX_FIELD`] bytes with [`CUT_MARK`] at the end.
pub fn cut(text: &str) -> Cow<'_, str> {
    if text.len() <= MAX_FIELD {
        return Cow::Borrowed(text);
    }
    let mut end = MAX_FIELD - CUT_MARK.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}{CUT_MARK}", &text[..end]))
}

impl Record {
    /// This record with every string field cut to [`MAX_FIELD`] bytes.
    fn cut(&self) -> Record {
        Record {
            time: cut(&self.time).into_owned(),
            host: cut(&self.host).into_owned(),
            port: self.port,
            address: self.address.as_deref().map(|a| cut(a).into_owned()),
            decision: cut(&self.decision).into_owned(),
            reason: cut(&self.reason).into_owned(),
            bytes_up: self.bytes_up,
            bytes_down: self.bytes_down,
            duration_ms: self.duration_ms,
            method: cut(&self.method).into_owned(),
        }
    }
}

/// RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

impl EgressLog {
    /// Creates (truncating) `path`, mode 0640, capped at `cap` bytes.
    pub fn create(path: &Path, cap: u64) -> io::Result<EgressLog> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o640)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(path)?;
        Ok(EgressLog {
            file,
            written: 0,
            // Room for both markers and a few lines in each half.
            cap: cap.max(MARKER_RESERVE * 8),
            denied_written: 0,
            denials_full: false,
            full: false,
            summary: EgressSummary::default(),
            tally: std::collections::BTreeMap::new(),
            tally_destinations: 0,
            untallied: 0,
        })
    }

    /// Records one attempt; write errors are returned but the counts are kept regardless.
    pub fn record(&mut self, record: &Record) -> io::Result<()> {
        let denied = record.decision != "allowed";
        if denied {
            self.summary.denied += 1;
        } else {
            self.summary.allowed += 1;
        }
        self.summary.bytes_up += record.bytes_up;
        self.summary.bytes_down += record.bytes_down;
        if self.full || (denied && self.denials_full) {
            if !denied {
                self.tally(record);
            }
            return Ok(());
        }
        let mut line = serde_json::to_vec(&record.cut()).map_err(io::Error::other)?;
        line.push(b'\n');
        let len = line.len() as u64;
        // Room for the markers still to come: the final one, and the denials' while pending.
        let reserve = MARKER_RESERVE * if self.denials_full { 1 } else { 2 };
        if self.written + len + reserve > self.cap {
            self.full = true;
            self.summary.truncated = true;
            let reason = format!(
                "egress.log reached its cap of {} bytes; later attempts are counted but not \
                 recorded one by one (allowed ones are tallied at the end)",
                self.cap
            );
            if !denied {
                self.tally(record);
            }
            return self.marker("all", reason);
        }
        if denied && self.denied_written + len + MARKER_RESERVE > self.cap / 2 {
            self.denials_full = true;
            self.summary.truncated = true;
            let reason = format!(
                "denied attempts used half of the {} byte cap; later denials are counted but not recorded, allowed ones still are",
                self.cap
            );
            return self.marker("denied", reason);
        }
        self.written += len;
        if denied {
            self.denied_written += len;
        }
        self.file.write_all(&line)
    }

    /// Adds an allowed attempt that is not written to the tally.
    fn tally(&mut self, record: &Record) {
        let r = record.cut();
        let by_destination = (r.host, r.port, r.address, String::new());
        let key = if self.tally.contains_key(&by_destination) {
            by_destination
        } else if self.tally_destinations < MAX_TALLY {
            self.tally_destinations += 1;
            by_destination
        } else {
            let by_reason = ("*".to_owned(), 0, None, r.reason);
            if !self.tally.contains_key(&by_reason) && self.tally.len() >= 2 * MAX_TALLY {
                self.untallied += 1;
                return;
            }
            by_reason
        };
        let t = self.tally.entry(key).or_default();
        t.connections += 1;
        t.bytes_up += record.bytes_up;
        t.bytes_down += record.bytes_down;
    }

    fn marker(&mut self, scope: &str, reason: String) -> io::Result<()> {
        let marker = TruncationRecord {
            time: now_rfc3339(),
            truncated: true,
            scope: scope.to_owned(),
            reason,
        };
        let mut line = serde_json::to_vec(&marker).map_err(io::Error::other)?;
        line.push(b'\n');
        self.written += line.len() as u64;
        self.file.write_all(&line)
    }

    /// The counts so far.
    pub fn summary(&self) -> EgressSummary {
        self.summary
    }

    /// Writes the tally of allowed attempts that were not written, flushes the file to disk
    /// and returns the counts.
    pub fn finish(mut self) -> io::Result<EgressSummary> {
        let time = now_rfc3339();
        let mut out = Vec::new();
        for ((host, port, address, reason), t) in std::mem::take(&mut self.tally) {
            let why = if reason.is_empty() {
                "tally of connections not recorded one by one (egress.log was full)".to_owned()
            } else {
                format!("tally by reason, past {MAX_TALLY} destinations: {reason}")
            };
            let line = Record {
                time: time.clone(),
                host,
                port,
                address,
                decision: "allowed".into(),
                reason: format!("{} connection(s); {why}", t.connections),
                bytes_up: t.bytes_up,
                bytes_down: t.bytes_down,
                duration_ms: 0,
                method: String::new(),
            };
            out.extend(serde_json::to_vec(&line.cut()).map_err(io::Error::other)?);
            out.push(b'\n');
        }
        if self.untallied > 0 {
            let marker = TruncationRecord {
                time,
                truncated: true,
                scope: "tally".into(),
                reason: format!(
                    "{} allowed connection(s) found no room in the tally either",
                    self.untallied
                ),
            };
            out.extend(serde_json::to_vec(&marker).map_err(io::Error::other)?);
            out.push(b'\n');
        }
        self.file.write_all(&out)?;
        self.file.sync_all()?;
        Ok(self.summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(host: &str, decision: &str) -> Record {
        Record {
            time: now_rfc3339(),
            host: host.into(),
            port: 443,
            address: None,
            decision: decision.into(),
            reason: "x".into(),
            bytes_up: 1,
            bytes_down: 2,
            duration_ms: 0,
            method: "CONNECT".into(),
        }
    }

    /// A log path in a fresh directory, and the guard that removes the directory.
    fn temp_log(name: &str) -> (crate::tools::testutil::TempDir, std::path::PathBuf) {
        let dir = crate::tools::testutil::TempDir::named(&format!("bulwark-egress-log-{name}"));
        let path = dir.join("egress.log");
        (dir, path)
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn the_log_stops_at_its_cap_with_one_truncation_record() {
        let (_dir, path) = temp_log("cap");
        let mut log = EgressLog::create(&path, 8192).unwrap();
        for i in 0..1000 {
            log.record(&record(&format!("h{i}.example"), "allowed"))
                .unwrap();
        }
        let summary = log.finish().unwrap();
        assert_eq!(summary.allowed, 1000);
        assert_eq!(summary.bytes_down, 2000);
        assert!(summary.truncated);
        let text = std::fs::read_to_string(&path).unwrap();
        // The records and the marker within the cap; after them only the tally.
        let marker_at = text.find("\"truncated\"").unwrap();
        let capped = &text[..marker_at + text[marker_at..].find('\n').unwrap() + 1];
        assert!(capped.len() <= 8192, "{}", capped.len());
        let marker: TruncationRecord =
            serde_json::from_str(capped.lines().last().unwrap()).unwrap();
        assert!(marker.truncated);
        assert_eq!(marker.scope, "all");
        assert_eq!(text.matches("\"truncated\"").count(), 1);
        let written = capped.lines().count() - 1;
        let tallied = text[capped.len()..].lines().count();
        assert!(text[capped.len()..]
            .lines()
            .all(|l| l.contains("1 connection(s); tally")));
        assert_eq!(written + tallied, 1000, "every host is in the file");
        let first: Record = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first.host, "h0.example");
        assert!(first.time.ends_with('Z'));
    }

    #[test]
    fn allowed_connections_past_the_cap_are_tallied_not_lost() {
        let (_dir, path) = temp_log("tally");
        let mut log = EgressLog::create(&path, 8192).unwrap();
        // The job fills the log with one destination...
        for _ in 0..1000 {
            log.record(&record("filler.example", "allowed")).unwrap();
        }
        // ...then reaches the one it wanted to hide, and many more past the tally's size.
        log.record(&record("hidden.example", "allowed")).unwrap();
        for i in 0..MAX_TALLY + 10 {
            let mut r = record(&format!("h{i}.example"), "allowed");
            r.reason = "*.example:443".into();
            log.record(&r).unwrap();
        }
        let summary = log.finish().unwrap();
        assert!(summary.truncated);
        let all = lines(&path);
        let hidden: Vec<_> = all
            .iter()
            .filter(|l| l["host"] == "hidden.example")
            .collect();
        assert_eq!(hidden.len(), 1, "one tally line for the hidden destination");
        assert!(hidden[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("1 connection(s); tally"));
        let filler = all
            .iter()
            .filter(|l| {
                l["host"] == "filler.example" && l["reason"].as_str().unwrap().contains("tally")
            })
            .count();
        assert_eq!(filler, 1);
        // Past MAX_TALLY destinations: by reason, with the count.
        let by_reason: Vec<_> = all.iter().filter(|l| l["host"] == "*").collect();
        assert_eq!(by_reason.len(), 1);
        assert!(
            by_reason[0]["reason"]
                .as_str()
                .unwrap()
                .contains("*.example:443"),
            "{}",
            by_reason[0]
        );
        // Every tally line still reads as a record (`bulwark egress suggest` uses them).
        assert!(all.iter().filter(|l| l.get("tally").is_some()).count() == 0);
    }

    #[test]
    fn every_string_field_is_cut_to_256_bytes_and_marked() {
        assert_eq!(cut("short"), "short");
        let exact = "a".repeat(MAX_FIELD);
        assert_eq!(cut(&exact), exact);
        let long = "\u{e4}".repeat(10_000);
        let cut_long = cut(&long);
        assert!(cut_long.len() <= MAX_FIELD, "{}", cut_long.len());
        assert!(cut_long.ends_with(CUT_MARK));
        assert!(cut_long.len() > MAX_FIELD - CUT_MARK.len() - 4);
        let (_dir, path) = temp_log("fields");
        let mut log = EgressLog::create(&path, DEFAULT_LOG_CAP).unwrap();
        let mut r = record(&"h".repeat(300), "denied");
        r.method = "M".repeat(16 * 1024);
        r.reason = "r".repeat(1000);
        r.address = Some("a".repeat(300));
        log.record(&r).unwrap();
        log.finish().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.len() < 1500, "{}", text.len());
        let line: Record = serde_json::from_str(text.trim_end()).unwrap();
        for field in [
            &line.host,
            &line.method,
            &line.reason,
            &line.address.unwrap(),
        ] {
            assert!(field.len() <= MAX_FIELD, "{field}");
            assert!(field.ends_with(CUT_MARK), "{field}");
        }
    }

    #[test]
    fn a_flood_of_long_denials_leaves_room_for_allowed_connections() {
        let cap = 64 * 1024;
        let (_dir, path) = temp_log("flood");
        let mut log = EgressLog::create(&path, cap).unwrap();
        let mut denial = record("", "denied");
        denial.method = "A".repeat(16 * 1024);
        for _ in 0..10_000 {
            log.record(&denial).unwrap();
        }
        log.record(&record("after.example", "allowed")).unwrap();
        let summary = log.summary();
        assert_eq!((summary.denied, summary.allowed), (10_000, 1));
        assert!(summary.truncated);
        let written = lines(&path);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.len() as u64 <= cap / 2 + 1024, "{}", text.len());
        let markers: Vec<_> = written.iter().filter(|l| l["truncated"] == true).collect();
        assert_eq!(markers.len(), 1);
        assert_eq!(markers[0]["scope"], "denied");
        let last = written.last().unwrap();
        assert_eq!(last["host"], "after.example");
        // Allowed connections go on being written up to the whole cap, denials are not.
        for i in 0..10_000 {
            log.record(&record(&format!("h{i}.example"), "allowed"))
                .unwrap();
            log.record(&denial).unwrap();
        }
        log.finish().unwrap();
        let written = lines(&path);
        let text = std::fs::read_to_string(&path).unwrap();
        // Up to the "all" marker, the cap; after it, the tally of allowed connections only.
        let end = written.iter().position(|l| l["scope"] == "all").unwrap();
        let capped: usize = text.lines().take(end + 1).map(|l| l.len() + 1).sum();
        assert!(capped as u64 <= cap, "{capped}");
        assert!(capped as u64 > cap - 2048, "{capped}");
        let marker = written.iter().position(|l| l["scope"] == "denied").unwrap();
        assert!(written[marker..].iter().all(|l| l["decision"] != "denied"));
        assert!(
            written[end + 1..]
                .iter()
                .all(|l| l["decision"] == "allowed"
                    && l["reason"].as_str().unwrap().contains("tally"))
        );
    }
}
