//! Keeping the store bounded: `caches.max_total` and `caches.max_unused`.
//!
//! Caches are written by the jobs themselves, untrusted ones included, and every new source
//! (a fork's URL, say) starts caches of its own. Without a bound, pull requests could fill
//! the state directory's filesystem down to `limits.min_free_disk`, after which the disk
//! reserve refuses every job on the host, trusted releases included. So the store holds at
//! most `max_total` bytes of file contents across all its caches, and forgets what nobody
//! used for `max_unused`:
//!
//! - **When.** Every save weighs the store before it commits, and `bulwark caches prune`
//!   does the same on demand (an idle host's expired caches go with the next save, or the
//!   operator's timer). The weighing and the commit happen under the store's one lock
//!   (`.store.lock`), so two saves never count the same room twice.
//! - **What goes first.** Caches unused for longer than `max_unused` (last use: the mtime of
//!   their `current`, set by every save and every restore), whatever their tier. Then, while
//!   the new cache does not fit, the least recently used ones it may remove: an untrusted
//!   job's save removes only untrusted caches (pull requests can push each other out, never a
//!   release's cache); a trusted job's save removes untrusted caches first, then trusted
//!   ones. When that is not enough the new cache is not saved and nothing is removed for it.
//! - **Never what is in use.** A tier is claimed for removal only with non-blocking locks on
//!   its `save.lock`, its `read.lock` and every generation: a cache being saved or copied into
//!   a job right now is skipped. A claimed tier loses its `current` under the store lock (so
//!   it is no longer counted, and no restore finds it), and its trees are deleted after the
//!   lock is let go.
//!
//! What stays: a removed tier's directory and lock files (as with `caches remove`), a few
//! inodes per scope.

use std::fs::{self, File};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::fcntl::{Flock, FlockArg};

use super::{lock, read_current, subdirs, Tier};

/// The store lock's file, in the store's root.
const STORE_LOCK: &str = ".store.lock";

/// The bounds of the whole store.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Most bytes of file contents of all saved caches together.
    pub max_total: u64,
    /// Removed when unused for longer.
    pub max_unused: Duration,
}

impl Bounds {
    /// The bounds the configuration sets.
    pub fn of(config: &bulwark_protocol::CachesConfig) -> Bounds {
        Bounds {
            max_total: config.max_total,
            max_unused: config.max_unused,
        }
    }
}

/// One saved cache tier, as eviction weighs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Weighed {
    /// Its directory (`<root>/<key>/<name>/<tier>`).
    pub dir: PathBuf,
    /// The scope's key.
    pub key: String,
    /// The cache's name.
    pub name: String,
    /// Its tier.
    pub tier: Tier,
    /// Bytes of file contents of its current generation.
    pub bytes: u64,
    /// Its last use: the last save or restore.
    pub used: SystemTime,
}

/// Why a cache was removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Unused for longer than `max_unused`.
    Unused,
    /// Least recently used, while the store was over `max_total`.
    Room,
}

/// What one weighing decided.
#[derive(Debug, Default)]
pub struct Plan {
    /// Claimed for removal, each with why.
    claimed: Vec<(Weighed, Why, Claimed)>,
    /// Would have been removed but was in use.
    pub busy: Vec<Weighed>,
    /// Bytes the store holds once the claimed caches are gone, the incoming one included.
    pub total: u64,
    /// Whether `total` is within `max_total`.
    pub fits: bool,
}

/// A tier locked for removal: no save, restore or copy holds it.
#[derive(Debug)]
pub(super) struct Claimed {
    dir: PathBuf,
    _saving: Flock<File>,
    _reading: Flock<File>,
    generations: Vec<(PathBuf, Flock<OwnedFd>)>,
}

impl Claimed {
    /// Locks `dir` for removal: its save and read locks and every generation, exclusively.
    /// `wait`: waits for each holder; otherwise `Ok(None)` as soon as one is held.
    pub(super) fn take(dir: &Path, wait: bool) -> Result<Option<Claimed>, String> {
        let how = if wait {
            FlockArg::LockExclusive
        } else {
            FlockArg::LockExclusiveNonblock
        };
        let busy = |e: &io::Error| !wait && e.raw_os_error() == Some(nix::libc::EWOULDBLOCK);
        let at = |e: io::Error| format!("{}: {e}", dir.display());
        let saving = match lock(&dir.join("save.lock"), how) {
            Ok(l) => l,
            Err(e) if busy(&e) => return Ok(None),
            Err(e) => return Err(at(e)),
        };
        let reading = match lock(&dir.join("read.lock"), how) {
            Ok(l) => l,
            Err(e) if busy(&e) => return Ok(None),
            Err(e) => return Err(at(e)),
        };
        let mut generations = Vec::new();
        for gen in subdirs(dir)? {
            let locked = crate::fsutil::open_dir(&gen)
                .and_then(|fd| Flock::lock(fd, how).map_err(|(_, e)| io::Error::from(e)));
            match locked {
                Ok(l) => generations.push((gen, l)),
                Err(e) if busy(&e) => return Ok(None),
                Err(e) => return Err(format!("{}: {e}", gen.display())),
            }
        }
        Ok(Some(Claimed {
            dir: dir.to_path_buf(),
            _saving: saving,
            _reading: reading,
            generations,
        }))
    }

    /// Unlinks `current`: from now on no restore finds this tier, and no weighing counts it.
    pub(super) fn unlink_current(&self) -> Result<(), String> {
        let current = self.dir.join("current");
        let at = |e: io::Error| format!("{}: {e}", self.dir.display());
        match fs::remove_file(&current) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(at(e)),
        }
        crate::fsutil::sync_parent(&current).map_err(at)
    }

    /// Deletes every generation, then lets the locks go.
    pub(super) fn remove_trees(self) -> Result<(), String> {
        for (gen, _held) in &self.generations {
            crate::fsutil::remove_tree(gen)
                .map_err(|e| format!("removing {}: {e}", gen.display()))?;
        }
        Ok(())
    }
}

/// Holds the store lock (see the module's docs) while it lives.
pub(super) struct StoreLock(#[allow(dead_code)] Flock<File>);

impl StoreLock {
    /// Takes the store lock of the store at `root` (which exists), waiting for another
    /// weighing to finish.
    pub(super) fn take(root: &Path) -> Result<StoreLock, String> {
        lock(&root.join(STORE_LOCK), FlockArg::LockExclusive)
            .map(StoreLock)
            .map_err(|e| format!("{}: {e}", root.join(STORE_LOCK).display()))
    }
}

/// Every tier of the store at `root` with a readable `current`, but `except`.
pub(super) fn weigh(root: &Path, except: Option<&Path>) -> Result<Vec<Weighed>, String> {
    let mut out = Vec::new();
    for key_dir in subdirs(root)? {
        let key = file_name(&key_dir);
        for name_dir in subdirs(&key_dir)? {
            let name = file_name(&name_dir);
            for tier in [Tier::Trusted, Tier::Untrusted] {
                let dir = name_dir.join(tier.as_str());
                if Some(dir.as_path()) == except {
                    continue;
                }
                // No `current` (never saved, removed) holds nothing; one that cannot be read
                // makes every restore of it refuse its job, for the operator to look at
                // (`caches list` shows it): neither is weighed.
                let Ok(Some(current)) = read_current(&dir) else {
                    continue;
                };
                let Ok(used) = fs::symlink_metadata(dir.join("current")).and_then(|m| m.modified())
                else {
                    continue;
                };
                out.push(Weighed {
                    dir,
                    key: key.clone(),
                    name: name.clone(),
                    tier,
                    bytes: current.bytes,
                    used,
                });
            }
        }
    }
    Ok(out)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Decides, under the store lock, what goes so that `incoming` more bytes fit beside `saved`
/// within `bounds`: every cache unused for longer than `max_unused`, then, while over
/// `max_total`, the least recently used of the tiers in `may_remove` (untrusted before
/// trusted). Each is claimed without waiting (one in use is listed as busy and kept). When
/// even that does not make room, only the unused ones stay claimed.
pub(super) fn plan(
    saved: Vec<Weighed>,
    incoming: u64,
    bounds: Bounds,
    may_remove: &[Tier],
    now: SystemTime,
) -> Result<Plan, String> {
    let mut plan = Plan::default();
    let mut kept = Vec::new();
    for w in saved {
        let unused = now.duration_since(w.used).unwrap_or_default() > bounds.max_unused;
        if !unused {
            kept.push(w);
            continue;
        }
        match Claimed::take(&w.dir, false)? {
            Some(c) => plan.claimed.push((w, Why::Unused, c)),
            None => {
                plan.busy.push(w.clone());
                kept.push(w);
            }
        }
    }
    plan.total = kept
        .iter()
        .fold(incoming, |sum, w| sum.saturating_add(w.bytes));
    // Untrusted first, then the least recently used.
    kept.sort_by_key(|w| (w.tier == Tier::Trusted, w.used));
    let first_for_room = plan.claimed.len();
    for w in kept {
        if plan.total <= bounds.max_total {
            break;
        }
        if !may_remove.contains(&w.tier) {
            continue;
        }
        match Claimed::take(&w.dir, false)? {
            Some(c) => {
                plan.total -= w.bytes;
                plan.claimed.push((w, Why::Room, c));
            }
            None => plan.busy.push(w),
        }
    }
    plan.fits = plan.total <= bounds.max_total;
    if !plan.fits {
        // Nothing is removed for a cache that will not be saved.
        for (w, _, _) in plan.claimed.drain(first_for_room..) {
            plan.total += w.bytes;
        }
    }
    Ok(plan)
}

impl Plan {
    /// The caches claimed, each with why.
    pub fn removed(&self) -> impl Iterator<Item = (&Weighed, Why)> {
        self.claimed.iter().map(|(w, why, _)| (w, *why))
    }

    /// Unlinks each claimed tier's `current` (still under the store lock); a tier whose
    /// `current` cannot be unlinked is let go and named in the error list.
    pub(super) fn unlink(&mut self) -> Vec<String> {
        let mut failed = Vec::new();
        self.claimed.retain(|(w, _, c)| match c.unlink_current() {
            Ok(()) => true,
            Err(e) => {
                failed.push(format!("{}: {e}", w.dir.display()));
                false
            }
        });
        failed
    }

    /// Deletes the claimed tiers' trees (after the store lock is let go).
    pub(super) fn remove_trees(self) -> Vec<String> {
        self.claimed
            .into_iter()
            .filter_map(|(_, _, c)| c.remove_trees().err())
            .collect()
    }
}
