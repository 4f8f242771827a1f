//! `egress.log`: one JSON line per connection attempt, allowed or denied.
//!
//! The log is evidence (its digest goes into `result.json` and the provenance byproducts), and
//! it is written on behalf of an untrusted job, so it is bounded: once the next line would take
//! the file past its cap, one truncation record is written and later attempts are only
//! counted. Each line is written with a single `write` of the whole line, so a crash leaves at
//! most one partial last line.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Default cap on `egress.log`: 16 MiB.
pub const DEFAULT_LOG_CAP: u64 = 16 << 20;

/// One attempt, as a line of `egress.log`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// When the attempt ended, RFC 3339 UTC with milliseconds.
    pub time: String,
    /// The canonical host (a name or an address), or the raw request target when it was not
    /// understood (escaped by JSON, cut to 256 bytes).
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

/// The line written once when the log reaches its cap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TruncationRecord {
    /// When the cap was reached.
    pub time: String,
    /// Always true.
    pub truncated: bool,
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
    /// Whether the log hit its cap.
    pub truncated: bool,
}

/// The capped log writer.
#[derive(Debug)]
pub struct EgressLog {
    file: File,
    written: u64,
    cap: u64,
    summary: EgressSummary,
}

/// Room kept for the truncation record.
const TRUNCATION_RESERVE: u64 = 256;

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
            cap: cap.max(TRUNCATION_RESERVE * 2),
            summary: EgressSummary::default(),
        })
    }

    /// Records one attempt; write errors are returned but the counts are kept regardless.
    pub fn record(&mut self, record: &Record) -> io::Result<()> {
        if record.decision == "allowed" {
            self.summary.allowed += 1;
        } else {
            self.summary.denied += 1;
        }
        self.summary.bytes_up += record.bytes_up;
        self.summary.bytes_down += record.bytes_down;
        if self.summary.truncated {
            return Ok(());
        }
        let mut line = serde_json::to_vec(record).map_err(io::Error::other)?;
        line.push(b'\n');
        let len = line.len() as u64;
        if self.written + len + TRUNCATION_RESERVE > self.cap {
            self.summary.truncated = true;
            let marker = TruncationRecord {
                time: now_rfc3339(),
                truncated: true,
                reason: format!(
                    "egress.log reached its cap of {} bytes; later attempts are counted but not recorded",
                    self.cap
                ),
            };
            let mut line = serde_json::to_vec(&marker).map_err(io::Error::other)?;
            line.push(b'\n');
            self.written += line.len() as u64;
            return self.file.write_all(&line);
        }
        self.written += len;
        self.file.write_all(&line)
    }

    /// The counts so far.
    pub fn summary(&self) -> EgressSummary {
        self.summary
    }

    /// Flushes the file to disk and returns the counts.
    pub fn finish(self) -> io::Result<EgressSummary> {
        self.file.sync_all()?;
        Ok(self.summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(host: &str) -> Record {
        Record {
            time: now_rfc3339(),
            host: host.into(),
            port: 443,
            address: None,
            decision: "denied".into(),
            reason: "x".into(),
            bytes_up: 1,
            bytes_down: 2,
            duration_ms: 0,
            method: "CONNECT".into(),
        }
    }

    #[test]
    fn the_log_stops_at_its_cap_with_one_truncation_record() {
        let dir = std::env::temp_dir().join(format!("egress-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("egress.log");
        let mut log = EgressLog::create(&path, 4096).unwrap();
        for i in 0..1000 {
            log.record(&record(&format!("h{i}.example"))).unwrap();
        }
        let summary = log.finish().unwrap();
        assert_eq!(summary.denied, 1000);
        assert_eq!(summary.bytes_down, 2000);
        assert!(summary.truncated);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.len() <= 4096, "{}", text.len());
        let last = text.lines().last().unwrap();
        let marker: TruncationRecord = serde_json::from_str(last).unwrap();
        assert!(marker.truncated);
        assert_eq!(text.matches("\"truncated\"").count(), 1);
        let first: Record = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first.host, "h0.example");
        assert!(first.time.ends_with('Z'));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
