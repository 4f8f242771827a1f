//! One host uid per running job (root mode).
//!
//! Two jobs sharing a host uid could signal, ptrace-attach (were it allowed) or read each
//! other's files; so each running job gets its own uid from the operator's range. A lease is an
//! exclusive `flock` on `/run/bulwark-job-uid-leases/<uid>.lock` ([`ROOT_LOCK_DIR`]), held for
//! the job's whole life, which works across separate `bulwark run` processes and is released by
//! the kernel if the runner dies. The directory is the same for every root runner on the host
//! whatever its configuration: runners with runtime directories of their own (two pools on one
//! host) hand out uids from the same ranges, and a lock directory each would let them give one
//! uid to two running jobs.
//! A uid is also skipped while any process on the host still runs as it: a uid is never reused
//! while anything of its previous job remains. The lock file says whether that check is needed:
//! a runner that saw its job's processes gone (cgroup empty, or the job's pid namespace reaped)
//! writes `clean` before unlocking; a crashed runner leaves `in-use`, and so the next lease of
//! that uid scans `/proc` first. A fresh lock file is treated like a crash, since the operator's
//! range might overlap some other user.
//!
//! Uids that belong to someone else are never handed out even inside the configured range:
//! accounts in `/etc/passwd` and `/etc/group`, and the subordinate ranges in `/etc/subuid` and
//! `/etc/subgid` (Debian's defaults for the second and third login users overlap the example
//! range `200000-265535`). The job's gid equals its uid, so both files are checked.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
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
// Both states are written as eight bytes at offset 0, so a state change is one `pwrite` and
// never a truncate (which on ext4 queues writeback of the truncated file when it is closed).
const CLEAN_RECORD: &[u8; 8] = b"clean  \n";
const IN_USE_RECORD: &[u8; 8] = b"in-use \n";

impl UidLease {
    /// Ends the lease after the caller has seen every process of the job gone.
    pub fn release_clean(self) {
        let _ = self.lock.write_all_at(CLEAN_RECORD, 0);
    }
}

/// Where root mode's leases are locked: one place per host, root's alone, gone at reboot with
/// every process that could have held a lease.
pub const ROOT_LOCK_DIR: &str = "/run/bulwark-job-uid-leases";

/// Leases a free uid from `range` (root mode), locked in [`ROOT_LOCK_DIR`].
pub fn lease(range: &UidRange) -> Result<UidLease> {
    let dir = private_lock_dir(Path::new(ROOT_LOCK_DIR), 0)?;
    lease_avoiding(range, &dir, &reserved_ids(None), false)
}

/// Leases a free uid from `range`, part of the subordinate range the runner's own user `name`
/// (uid `id`) is granted (subuid mode): that grant is the runner's to hand out, every other
/// account and grant is still avoided.
///
/// The locks live in one place per user whatever the configuration says
/// ([`subordinate_lock_dir`]), since every runner of this user hands out the same grant; and
/// the `/proc` scan runs for every candidate, whatever its lock file says.
pub fn lease_subordinate(range: &UidRange, name: &str, id: u32) -> Result<UidLease> {
    let dir = subordinate_lock_dir(id)?;
    lease_avoiding(range, &dir, &reserved_ids(Some((name, id))), true)
}

/// `/dev/shm/bulwark-subuid-leases-<uid>`: the same for every runner of one user (neither
/// the configuration nor the environment moves it), private to that user, gone at reboot
/// with every process that could have held a lease.
pub fn subordinate_lock_dir(id: u32) -> Result<std::path::PathBuf> {
    let dir = std::path::PathBuf::from(format!("/dev/shm/bulwark-subuid-leases-{id}"));
    private_lock_dir(&dir, id)
}

/// `dir`, made if missing, checked to be a directory of `id`'s that no one else may enter.
fn private_lock_dir(dir: &Path, id: u32) -> Result<std::path::PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let dir = dir.to_path_buf();
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => bail!("creating the uid lease directory {}: {e}", dir.display()),
    }
    let meta = fs::symlink_metadata(&dir).with_context(|| format!("checking {}", dir.display()))?;
    if !meta.is_dir() || meta.uid() != id || meta.mode() & 0o077 != 0 {
        bail!(
            "{} is not this user's private directory (owner {}, mode {:o}); someone else made \
             it: remove it, then run again",
            dir.display(),
            meta.uid(),
            meta.mode() & 0o7777
        );
    }
    Ok(dir)
}

fn lease_avoiding(
    range: &UidRange,
    lock_dir: &Path,
    reserved: &[(u32, u32)],
    always_scan: bool,
) -> Result<UidLease> {
    let span = u64::from(range.last - range.first) + 1;
    // Lowest free uid first: uids are reused, so their lock files usually say `clean` and the
    // /proc scan is rarely needed; a contended lock is skipped at once (non-blocking).
    let start = 0;
    let mut busy: Option<std::collections::HashSet<u32>> = None;
    for i in 0..span.min(1_000_000) {
        let uid = range.first + ((start + i) % span) as u32;
        if reserved.iter().any(|(a, b)| (*a..=*b).contains(&uid)) {
            continue;
        }
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
                if (always_scan || state.trim() != CLEAN)
                    && busy.get_or_insert_with(uids_in_use).contains(&uid)
                {
                    continue;
                }
                lock.write_all_at(IN_USE_RECORD, 0)
                    .with_context(|| format!("writing {}", path.display()))?;
                return Ok(UidLease { uid, lock });
            }
            Err(_) => continue,
        }
    }
    bail!("no free job uid in limits.job_uids {}-{}: every uid is leased or still has processes; widen the range or wait", range.first, range.last)
}

/// Whether any process on the host runs as `uid` (real or effective), as far as this
/// process can see (`/proc` mounted with `hidepid` hides other users' processes).
pub fn in_use(uid: u32) -> bool {
    uids_in_use().contains(&uid)
}

/// Waits up to `limit` for every process of `uid` to be gone (a killed process is gone once
/// it is a zombie); says whether they are.
pub fn wait_until_unused(uid: u32, limit: std::time::Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if !in_use(uid) {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Whether a process with this `/proc/PID/status` may still run code: anything but a zombie
/// with one thread left.
fn runs_anything(status: &str) -> bool {
    let zombie = status
        .lines()
        .any(|l| l.starts_with("State:") && l.contains("(zombie)"));
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse::<u32>().ok());
    !(zombie && threads.is_some_and(|t| t <= 1))
}

/// Real and effective uids of every live process on the host (zombies are not counted).
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
            // A zombie runs nothing and holds nothing (its parent may just not have reaped
            // it yet, or a container's init never does). But a thread-group leader that
            // exited shows as a zombie while its other threads still run: only a zombie
            // with one thread left is skipped.
            if !runs_anything(&status) {
                continue;
            }
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

/// Id ranges owned by accounts or subordinate-id grants on this host, except the grants of
/// `own` (user name, uid).
fn reserved_ids(own: Option<(&str, u32)>) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for file in ["/etc/passwd", "/etc/group"] {
        if let Ok(text) = fs::read_to_string(file) {
            for line in text.lines() {
                if let Some(id) = line.split(':').nth(2).and_then(|v| v.parse::<u32>().ok()) {
                    out.push((id, id));
                }
            }
        }
    }
    for file in ["/etc/subuid", "/etc/subgid"] {
        if let Ok(text) = fs::read_to_string(file) {
            out.extend(parse_subid(&text, own));
        }
    }
    out
}

/// `name:start:count` lines to inclusive ranges, leaving out those of `own` (name, uid).
fn parse_subid(text: &str, own: Option<(&str, u32)>) -> Vec<(u32, u32)> {
    let own = own.map(|(name, id)| (name, id.to_string()));
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let owner = f.next()?.trim();
            if own
                .as_ref()
                .is_some_and(|(name, id)| owner == *name || owner == id)
            {
                return None;
            }
            let start: u32 = f.next()?.trim().parse().ok()?;
            let count: u32 = f.next()?.trim().parse().ok()?;
            (count > 0).then(|| (start, start.saturating_add(count - 1)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zombie_leader_with_threads_left_still_counts() {
        let status = |state: &str, threads: u32| {
            format!("Name:\tx\nState:\t{state}\nUid:\t7\t7\t7\t7\nThreads:\t{threads}\n")
        };
        assert!(!runs_anything(&status("Z (zombie)", 1)));
        // The leader called pthread_exit; its other thread runs on.
        assert!(runs_anything(&status("Z (zombie)", 2)));
        assert!(runs_anything(&status("S (sleeping)", 1)));
        assert!(
            runs_anything("State:\tZ (zombie)\n"),
            "no thread count: counted"
        );
    }

    #[test]
    fn subordinate_id_ranges_are_parsed_inclusively() {
        assert_eq!(
            parse_subid("alice:100000:65536\nbob:165536:65536\n# junk\n", None),
            vec![(100000, 165535), (165536, 231071)]
        );
        assert_eq!(
            parse_subid(
                "alice:100000:65536\nbob:165536:65536\n1001:300000:5\n",
                Some(("alice", 1001))
            ),
            vec![(165536, 231071)],
            "the runner's own grants, by name or by uid, are its to hand out"
        );
    }

    #[test]
    fn leases_skip_reserved_ids_and_are_exclusive() {
        let dir = crate::tools::testutil::TempDir::named("bulwark-uids");
        // The lease itself, in a directory of this test's own.
        let lease = |r: &UidRange, d: &Path| lease_avoiding(r, d, &reserved_ids(None), false);
        // A range far above any account; two leases get two different uids, a third fails.
        let range = UidRange {
            first: 4_000_000_000,
            last: 4_000_000_001,
        };
        let a = lease(&range, &dir).unwrap();
        let b = lease(&range, &dir).unwrap();
        assert_ne!(a.uid, b.uid);
        let e = lease(&range, &dir).unwrap_err();
        assert!(e.to_string().contains("no free job uid"), "{e}");
        a.release_clean();
        assert_eq!(
            fs::read_to_string(dir.join("4000000000.lock"))
                .unwrap()
                .trim(),
            "clean"
        );
        let c = lease(&range, &dir).unwrap();
        assert_eq!(c.uid, 4_000_000_000);
        assert_eq!(
            fs::read_to_string(dir.join("4000000000.lock"))
                .unwrap()
                .trim(),
            "in-use"
        );
        // A lock file from before fixed-length records (`clean\n`) still reads as clean.
        drop(c);
        fs::write(dir.join("4000000000.lock"), "clean\n").unwrap();
        let d = lease(&range, &dir).unwrap();
        assert_eq!(d.uid, 4_000_000_000);
    }
}
