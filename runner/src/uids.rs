//! One host uid per running job (root mode).
//!
//! Two jobs sharing a host uid could signal, ptrace-attach (were it allowed) or read each
//! other's files; so each running job gets its own uid from the operator's range. A lease is an
//! exclusive `flock` on `<runtime>/uids/<uid>.lock`, held for the job's whole life, which works
//! across separate `bulwark run` processes and is released by the kernel if the runner dies.
//! A uid is also skipped while any process on the host still runs as it: a uid is never reused
//! while anything of its previous job remains. The lock file says whether that check is needed:
//! a runner that saw its job's processes gone (cgroup empty, or the job's pid namespace reaped)
//! writes `clean` before unlocking; a crashed runner leaves `in-use`, and so the next lease of
//! that uid scans `/proc` first. A fresh lock file is treated like a crash, since the operator's
//! range might overlap some other user.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use bulwark_protocol::UidRange;
use nix::fcntl::{Flock, FlockArg};

/// A leased uid; the lease ends when this is dropped.
#[derive(Debug)]
pub struct UidLease {
    /// The host uid (and gid) for the job.
    pub uid: u32,
    lock: Flock<File>,
}

const CLEAN: &str = "clean";
const IN_USE: &str = "in-use\n";

impl UidLease {
    /// Ends the lease after the caller has seen every process of the job gone.
    pub fn release_clean(mut self) {
        let _ = self
            .lock
            .set_len(0)
            .and_then(|_| self.lock.rewind())
            .and_then(|_| self.lock.write_all(b"clean\n"));
    }
}

/// Leases a free uid from `range`.
pub fn lease(range: &UidRange, lock_dir: &Path) -> Result<UidLease> {
    let span = u64::from(range.last - range.first) + 1;
    // Lowest free uid first: uids are reused, so their lock files usually say `clean` and the
    // /proc scan is rarely needed; a contended lock is skipped at once (non-blocking).
    let start = 0;
    let mut busy: Option<std::collections::HashSet<u32>> = None;
    for i in 0..span.min(1_000_000) {
        let uid = range.first + ((start + i) % span) as u32;
        let path = lock_dir.join(format!("{uid}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut lock) => {
                // Under the lock, unless the previous holder saw its job end cleanly, check that
                // no process still runs as this uid (one /proc scan, reused for later candidates).
                let mut state = String::new();
                let _ = lock.read_to_string(&mut state);
                if state.trim() != CLEAN && busy.get_or_insert_with(uids_in_use).contains(&uid) {
                    continue;
                }
                lock.set_len(0)
                    .and_then(|_| lock.rewind())
                    .and_then(|_| lock.write_all(IN_USE.as_bytes()))
                    .with_context(|| format!("writing {}", path.display()))?;
                return Ok(UidLease { uid, lock });
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
