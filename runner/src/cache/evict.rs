//! Keeping the store bounded: `caches.max_total`, `caches.max_total_entries` and
//! `caches.max_unused`.
//!
//! Caches are written by the jobs themselves, untrusted ones included, and every new source
//! (a fork's URL, say) starts caches of its own. Without a bound, pull requests could fill
//! the state directory's filesystem (bytes or inodes) down to `limits.min_free_disk`, after
//! which the disk reserve refuses every job on the host, trusted releases included. So the
//! store holds at most `max_total` bytes and `max_total_entries` entries across all its
//! caches, and forgets what nobody used for `max_unused`:
//!
//! - **Weight.** A cache weighs its file contents plus [`ENTRY_CHARGE`] per entry (file,
//!   directory, symlink): what it takes on disk, near enough, including a tree of empty files
//!   or directories whose contents weigh nothing. It also counts against the entry bound.
//! - **When.** Every save weighs the store before it commits, and `bulwark caches prune` does
//!   the same on demand. The weighing and the commit happen under the store's one lock
//!   (`.store.lock`), so two saves never count the same room twice.
//! - **What goes first.** Caches unused for longer than `max_unused` (last use: the mtime of
//!   their `current`, set by every save and every restore), whatever their tier. Then, while
//!   the store is over its bounds, the least recently used untrusted caches. A trusted job's
//!   save then removes trusted caches only while the trusted caches alone, its own included,
//!   are over the bounds: untrusted bytes that could not be removed (in use right now) never
//!   push out a release's cache, they make the store go over until the next weighing. An
//!   untrusted job's save never removes a trusted cache for room. A save that still does not
//!   fit is not made, and nothing is removed for it.
//! - **Never what is in use.** A tier is claimed for removal only with non-blocking locks on
//!   its `save.lock`, its `read.lock` and every generation: a cache being saved or copied into
//!   a job right now is skipped. A claimed tier loses its `current` under the store lock (so
//!   it is no longer counted, and no restore finds it), and its trees are deleted after the
//!   lock is let go. At most [`MAX_CLAIMS`] tiers are claimed per weighing.
//! - **Leftovers.** A generation a restore held when a newer one was saved, and what an
//!   interrupted save or removal left, are not weighed; each weighing lists the tiers that
//!   have some, and [`tidy`] removes them once nothing holds them (as every restore does for
//!   its own tier when its copy is done). What is uncounted at any time is at most the
//!   generations that running restores still copy from.
//!
//! What stays: a removed tier's directory and lock files (as with `caches remove`), a few
//! inodes per scope.

use std::fs::{self, File};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::fcntl::{Flock, FlockArg};

use super::{lock, read_current, remove_entries, remove_unused_generations, subdirs, Tier};

/// The store lock's file, in the store's root.
const STORE_LOCK: &str = ".store.lock";

/// What each entry of a cache counts for, in bytes, on top of file contents: a directory's
/// block, a file's last partial block, an inode.
pub const ENTRY_CHARGE: u64 = 4096;

/// Most tiers one weighing claims (each claim holds three descriptors or more until its trees
/// are deleted); the rest wait for the next weighing.
pub const MAX_CLAIMS: usize = 128;

/// A cache's weight: bytes of file contents plus [`ENTRY_CHARGE`] per entry.
pub fn weight(bytes: u64, entries: u64) -> u64 {
    bytes.saturating_add(entries.saturating_mul(ENTRY_CHARGE))
}

/// The bounds of the whole store.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// Most weight ([`weight`]) of all saved caches together.
    pub max_total: u64,
    /// Most entries of all saved caches together.
    pub max_total_entries: u64,
    /// Removed when unused for longer.
    pub max_unused: Duration,
}

impl Bounds {
    /// The bounds the configuration sets.
    pub fn of(config: &bulwark_protocol::CachesConfig) -> Bounds {
        Bounds {
            max_total: config.max_total,
            max_total_entries: config.max_total_entries,
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
    /// Entries (files, directories, symlinks) of its current generation.
    pub entries: u64,
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
    /// Would have been removed but was in use (or could not be locked; said in `failed`).
    pub busy: Vec<Weighed>,
    /// What the store weighs once the claimed caches are gone, the incoming one included.
    pub total: u64,
    /// Its entries, likewise.
    pub total_entries: u64,
    /// Whether the incoming cache may be saved (see [`plan`]).
    pub fits: bool,
    /// Tiers that could not be examined or claimed, and why.
    pub failed: Vec<String>,
}

/// The cache a weighing makes room for.
#[derive(Debug, Clone, Copy)]
pub struct Incoming {
    /// Who saves it.
    pub trust: bulwark_protocol::Trust,
    /// Bytes of file contents.
    pub bytes: u64,
    /// Entries.
    pub entries: u64,
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

/// What [`weigh`] found: the saved caches, and the tiers with leftovers for [`tidy`].
#[derive(Debug, Default)]
pub(super) struct Weighing {
    pub saved: Vec<Weighed>,
    pub untidy: Vec<PathBuf>,
    pub failed: Vec<String>,
}

/// Every tier of the store at `root` with a readable `current`, but `except`; and every tier
/// with a generation its `current` does not name, or a save's leftover `incoming-*`.
pub(super) fn weigh(root: &Path, except: Option<&Path>) -> Result<Weighing, String> {
    let mut out = Weighing::default();
    for key_dir in subdirs(root)? {
        let key = file_name(&key_dir);
        let names = match subdirs(&key_dir) {
            Ok(n) => n,
            Err(e) => {
                out.failed.push(e);
                continue;
            }
        };
        for name_dir in names {
            let name = file_name(&name_dir);
            for tier in [Tier::Trusted, Tier::Untrusted] {
                let dir = name_dir.join(tier.as_str());
                if Some(dir.as_path()) == except {
                    continue;
                }
                let Ok(entries) = fs::read_dir(&dir) else {
                    continue;
                };
                // One that cannot be read makes every restore of it refuse its job, for the
                // operator to look at (`caches list` shows it): not weighed, not tidied.
                let Ok(current) = read_current(&dir) else {
                    continue;
                };
                let named = current.as_ref().map(|c| c.generation.as_str());
                let untidy = entries.flatten().any(|e| {
                    let n = e.file_name();
                    let n = n.to_string_lossy();
                    n.starts_with("incoming-") || (n.starts_with("gen-") && Some(&*n) != named)
                });
                if untidy {
                    out.untidy.push(dir.clone());
                }
                let Some(current) = current else { continue };
                let Ok(used) = fs::symlink_metadata(dir.join("current")).and_then(|m| m.modified())
                else {
                    continue;
                };
                out.saved.push(Weighed {
                    dir,
                    key: key.clone(),
                    name: name.clone(),
                    tier,
                    bytes: current.bytes,
                    entries: current.entries,
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

/// Weight and entries, added up.
#[derive(Debug, Clone, Copy, Default)]
struct Sum {
    weight: u64,
    entries: u64,
}

impl Sum {
    fn add(&mut self, bytes: u64, entries: u64) {
        self.weight = self.weight.saturating_add(weight(bytes, entries));
        self.entries = self.entries.saturating_add(entries);
    }

    fn sub(&mut self, w: &Weighed) {
        self.weight = self.weight.saturating_sub(weight(w.bytes, w.entries));
        self.entries = self.entries.saturating_sub(w.entries);
    }

    fn over(&self, bounds: Bounds) -> bool {
        self.weight > bounds.max_total || self.entries > bounds.max_total_entries
    }
}

/// Decides, under the store lock, what goes (see the module's docs): every cache unused for
/// longer than `max_unused`; then, while the store is over its bounds, the least recently used
/// untrusted caches; then, for a trusted `incoming` (or for `prune`, `incoming` `None`), the
/// least recently used trusted caches while the trusted ones alone are over. Each is claimed
/// without waiting (one in use is listed as busy and kept). For a save, `fits` says whether
/// the incoming cache may be made, and when it may not, only the unused caches stay claimed.
pub(super) fn plan(
    saved: Vec<Weighed>,
    incoming: Option<Incoming>,
    bounds: Bounds,
    now: SystemTime,
) -> Plan {
    let mut plan = Plan::default();
    let claim = |plan: &mut Plan, w: Weighed, why: Why| -> Option<Weighed> {
        if plan.claimed.len() >= MAX_CLAIMS {
            return Some(w);
        }
        match Claimed::take(&w.dir, false) {
            Ok(Some(c)) => {
                plan.claimed.push((w, why, c));
                None
            }
            Ok(None) => Some(w),
            Err(e) => {
                plan.failed.push(e);
                Some(w)
            }
        }
    };
    let mut kept = Vec::new();
    for w in saved {
        let unused = now.duration_since(w.used).unwrap_or_default() > bounds.max_unused;
        if !unused {
            kept.push(w);
        } else if let Some(w) = claim(&mut plan, w, Why::Unused) {
            // Expired but held: counted, and left for the next weighing.
            plan.busy.push(w);
        }
    }
    let mut all = Sum::default();
    let mut trusted = Sum::default();
    if let Some(i) = incoming {
        all.add(i.bytes, i.entries);
        if i.trust == bulwark_protocol::Trust::Trusted {
            trusted.add(i.bytes, i.entries);
        }
    }
    for w in kept.iter().chain(&plan.busy) {
        all.add(w.bytes, w.entries);
        if w.tier == Tier::Trusted {
            trusted.add(w.bytes, w.entries);
        }
    }
    let first_for_room = plan.claimed.len();
    // Least recently used first.
    kept.sort_by_key(|w| w.used);
    let (untrusted, trusted_kept): (Vec<Weighed>, Vec<Weighed>) =
        kept.into_iter().partition(|w| w.tier == Tier::Untrusted);
    for w in untrusted {
        if !all.over(bounds) {
            break;
        }
        let removed = w.clone();
        match claim(&mut plan, w, Why::Room) {
            None => all.sub(&removed),
            Some(w) => plan.busy.push(w),
        }
    }
    let trusted_may_go = incoming.is_none_or(|i| i.trust == bulwark_protocol::Trust::Trusted);
    if trusted_may_go {
        for w in trusted_kept {
            // A save goes by the trusted caches alone, `prune` by the whole store.
            let over = match incoming {
                Some(_) => trusted.over(bounds),
                None => all.over(bounds),
            };
            if !over {
                break;
            }
            let removed = w.clone();
            match claim(&mut plan, w, Why::Room) {
                None => {
                    all.sub(&removed);
                    trusted.sub(&removed);
                }
                Some(w) => plan.busy.push(w),
            }
        }
    }
    plan.fits = match incoming {
        Some(i) if i.trust == bulwark_protocol::Trust::Trusted => !trusted.over(bounds),
        _ => !all.over(bounds),
    };
    if incoming.is_some() && !plan.fits {
        // Nothing is removed for a cache that will not be saved.
        plan.release_room(first_for_room, &mut all);
    }
    plan.total = all.weight;
    plan.total_entries = all.entries;
    plan
}

impl Plan {
    /// The caches claimed, each with why.
    pub fn removed(&self) -> impl Iterator<Item = (&Weighed, Why)> {
        self.claimed.iter().map(|(w, why, _)| (w, *why))
    }

    /// Lets go of the claims made for room (from `first` on), counting them again.
    fn release_room(&mut self, first: usize, all: &mut Sum) {
        for (w, _, _) in self.claimed.drain(first..) {
            all.add(w.bytes, w.entries);
        }
    }

    /// Lets go of every claim made for room: the save they were for did not happen.
    pub(super) fn release_all_room(&mut self) {
        self.claimed.retain(|(_, why, _)| *why == Why::Unused);
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

/// Removes what a tier holds beside the generation its `current` names (generations a restore
/// held at the last save, what an interrupted save or removal left), unless a save, a restore
/// or `caches remove` is at it (then the one that is removes it, or the next weighing).
/// Best effort: what cannot be removed now stays for later.
pub(super) fn tidy(dir: &Path) {
    let (Ok(_saving), Ok(_reading)) = (
        lock(&dir.join("save.lock"), FlockArg::LockExclusiveNonblock),
        lock(&dir.join("read.lock"), FlockArg::LockExclusiveNonblock),
    ) else {
        return;
    };
    let Ok(current) = read_current(dir) else {
        return;
    };
    let named = current.map(|c| c.generation).unwrap_or_default();
    // `save.lock` is held: no save is writing an `incoming-*`.
    if let Err(e) = remove_entries(dir, |n| n.starts_with("incoming-")) {
        tracing::warn!("removing a cache leftover: {e}");
    }
    remove_unused_generations(dir, &named);
}
