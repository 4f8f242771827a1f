//! One host uid per running job (root mode).
//!
//! Two jobs sharing a host uid could signal, ptrace-attach (were it allowed) or read each
//! other's files; so each running job gets its own uid from the operator's range. A lease is an
//! exclusive `flock` on `<runtime>/uids/<uid>.lock`, held for the job's whole life, which works
//! across separate `bulwark run` processes and is released by the kernel if the runner dies.
//! A uid is also skipped while any process on the host still runs as it: a uid is never reused
//! while anything of its previous job remains.

use std::fs::{self, File, OpenOptions};
use std::path::Path;

use anyhow::{bail, Context, Result};
use bulwark_protocol::UidRange;
use nix::fcntl::{Flock, FlockArg};

/// A leased uid; the lease ends when this is dropped.
#[derive(Debug)]
pub struct UidLease {
    /// The host uid (and gid) for the job.
    pub uid: u32,
    _lock: Flock<File>,
}

/// Leases a free uid from `range`.
pub fn lease(range: &UidRange, lock_dir: &Path) -> Result<UidLease> {
    let span = u64::from(range.last - range.first) + 1;
    // Start at a random offset so concurrent runners rarely contend for the same lock.
    let start = u64::from_str_radix(&crate::fsutil::random_hex(4), 16).unwrap_or(0) % span;
    let busy = uids_in_use();
    for i in 0..span.min(1_000_000) {
        let uid = range.first + ((start + i) % span) as u32;
        if busy.contains(&uid) {
            continue;
        }
        let path = lock_dir.join(format!("{uid}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                // Re-check after locking: a process of a just-finished job might still exist.
                if uids_in_use().contains(&uid) {
                    continue;
                }
                return Ok(UidLease { uid, _lock: lock });
            }
            Err(_) => continue,
        }
    }
    bail!("no free job uid in limits.job_uids {}-{}: every uid is leased or still has processes; widen the range or wait", range.first, range.last)
}

/// Real and effective uids of every process on the host.
fn uids_in_use() -> std::collections::HashSet<u32> {
    let mut set = std::collections::HashSet::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return set;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(status) = fs::read_to_string(e.path().join("status")) {
            if let Some(line) = status.lines().find(|l| l.starts_with("Uid:")) {
                for v in line.split_whitespace().skip(1) {
                    if let Ok(u) = v.parse() {
                        set.insert(u);
                    }
                }
            }
        }
    }
    set
}
