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
//! - **What goes.** Caches unused for longer than `max_unused` (last use: the mtime of their
//!   `current`, set by every save and every restore), whatever their tier. Then, for a trusted
//!   job's save (or `prune`), the least recently used trusted caches while the trusted caches
//!   alone, the incoming one included, are over the bounds; then the least recently used
//!   untrusted caches while the whole store is. So an untrusted job's save never removes a
//!   trusted cache for room, and untrusted caches that cannot be removed right now (in use)
//!   never push out a trusted one: they keep the store over its bounds until a later
//!   weighing removes them. A save that still does not fit is not made, and nothing is
//!   removed for it: the caches it would push out are only chosen (each checked free) before
//!   the commit, and removed after it.
//! - **Never what is in use.** A tier is removed only with non-blocking locks on its
//!   `save.lock`, its `read.lock` and every generation: a cache being saved or copied into a
//!   job right now is skipped. Under those locks its `current` is unlinked and its trees
//!   renamed into `.trash/` (same filesystem), then the locks go at once; the trees are
//!   deleted after the store lock is let go. No weighing holds more than one tier's locks
//!   at a time, however many caches it removes.
//! - **Leftovers.** A generation a restore held when a newer one was saved, and what an
//!   interrupted save or removal left, are not weighed: [`tidy`] takes them out once nothing
//!   holds them, as every restore does for its tier when its copy is done, and every
//!   weighing for the tiers it finds them in. A save holds a lock on its new tree from its
//!   creation (made under `read.lock`, which tidying holds) until `current` names it, and
//!   tidying reads `current` again once it holds a tree's lock: no tidying takes a tree being
//!   saved, nor one a save has just made current.
//! - **Trash.** A tree in `.trash/` stays locked by the process deleting it; whatever a
//!   process that died left there (unlocked) is deleted after every save and by `prune`.
//!
//! What stays: a removed tier's directory and lock files (as with `caches remove`), a few
//! inodes per cache name.

use std::fs::{self, File};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bulwark_protocol::Trust;
use nix::fcntl::{Flock, FlockArg};

use super::{lock, read_current, subdirs, Tier};

/// The store lock's file, in the store's root.
const STORE_LOCK: &str = ".store.lock";

/// Where removed trees wait to be deleted, in the store's root.
const TRASH: &str = ".trash";

/// What each entry of a cache counts for, in bytes, on top of file contents: a directory's
/// block, a file's last partial block, an inode.
pub const ENTRY_CHARGE: u64 = bulwark_protocol::CACHE_ENTRY_CHARGE;

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
    /// Least recently used, while the store was over its bounds.
    Room,
}

/// What a weighing is for.
#[derive(Debug, Clone, Copy)]
pub enum Purpose {
    /// Making room for a cache about to be saved: the caches it pushes out are chosen, and
    /// removed by [`Plan::remove_chosen`] once it is saved.
    Save(Incoming),
    /// `caches prune`: removed at once (`dry_run`: only chosen).
    Prune {
        /// Only say what would go.
        dry_run: bool,
    },
}

/// The cache a weighing makes room for.
#[derive(Debug, Clone, Copy)]
pub struct Incoming {
    /// Who saves it.
    pub trust: Trust,
    /// Bytes of file contents.
    pub bytes: u64,
    /// Entries.
    pub entries: u64,
}

/// What one weighing decided and did.
#[derive(Debug, Default)]
pub struct Plan {
    /// Removed, each with why.
    pub removed: Vec<(Weighed, Why)>,
    /// Chosen to go (for a save: once it is made; in a dry run: what would go), with why.
    pub chosen: Vec<(Weighed, Why)>,
    /// Would have gone but was in use.
    pub busy: Vec<Weighed>,
    /// What the store weighs once the removed and chosen caches are gone, the incoming one
    /// included.
    pub total: u64,
    /// Its entries, likewise.
    pub total_entries: u64,
    /// Whether the incoming cache may be saved.
    pub fits: bool,
    /// Tiers that could not be examined or removed, and why.
    pub failed: Vec<String>,
}

/// A tier locked for removal: no save, restore or copy holds it.
#[derive(Debug)]
pub(super) struct Claimed {
    dir: PathBuf,
    _saving: Flock<File>,
    _reading: Flock<File>,
    held: Vec<(PathBuf, Flock<OwnedFd>)>,
}

impl Claimed {
    /// Locks `dir` for removal: its save and read locks and every generation (and leftover),
    /// exclusively. `wait`: waits for each holder; otherwise `Ok(None)` as soon as one is held.
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
        let mut held = Vec::new();
        for tree in subdirs(dir)? {
            let locked = crate::fsutil::open_dir(&tree)
                .and_then(|fd| Flock::lock(fd, how).map_err(|(_, e)| io::Error::from(e)));
            match locked {
                Ok(l) => held.push((tree, l)),
                Err(e) if busy(&e) => return Ok(None),
                Err(e) => return Err(format!("{}: {e}", tree.display())),
            }
        }
        Ok(Some(Claimed {
            dir: dir.to_path_buf(),
            _saving: saving,
            _reading: reading,
            held,
        }))
    }

    /// Unlinks `current` (from now on no restore finds this tier, and no weighing counts it)
    /// and moves every tree into `trash`; then lets the locks go.
    pub(super) fn discard(self, trash: &mut Trash) -> Result<(), String> {
        let current = self.dir.join("current");
        let at = |e: io::Error| format!("{}: {e}", self.dir.display());
        match fs::remove_file(&current) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(at(e)),
        }
        crate::fsutil::sync_parent(&current).map_err(at)?;
        for (tree, held) in self.held {
            trash
                .take(&tree, held)
                .map_err(|e| format!("moving {} out: {e}", tree.display()))?;
        }
        Ok(())
    }
}

/// Trees taken out of the store, to be deleted once no tier's lock is held: renamed into
/// `.trash/` under the tier's locks (quick), deleted by [`Trash::empty`] after they are let go
/// (as slow as the tree is large). Each tree stays locked until it is deleted, so that
/// [`Trash::empty_leftovers`] takes only what a process that died left there.
#[derive(Debug)]
pub(super) struct Trash {
    dir: PathBuf,
    moved: Vec<(PathBuf, Flock<OwnedFd>)>,
}

impl Trash {
    /// The trash of the store at `root`.
    pub(super) fn new(root: &Path) -> Trash {
        Trash {
            dir: root.join(TRASH),
            moved: Vec::new(),
        }
    }

    /// Moves `tree` (in the store, locked by `held`) into the trash.
    pub(super) fn take(&mut self, tree: &Path, held: Flock<OwnedFd>) -> io::Result<()> {
        match fs::DirBuilder::new().mode(0o700).create(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let to = self.dir.join(crate::fsutil::random_hex(8));
        fs::rename(tree, &to)?;
        self.moved.push((to, held));
        Ok(())
    }

    /// Deletes what was moved in; returns what could not be.
    pub(super) fn empty(self) -> Vec<String> {
        self.moved
            .iter()
            .filter_map(|(t, _held)| {
                crate::fsutil::remove_tree(t)
                    .err()
                    .map(|e| format!("removing {}: {e}", t.display()))
            })
            .collect()
    }

    /// Deletes what a process that died (or could not delete) left in the trash of the store
    /// at `root`: every entry nobody holds locked. Returns what could not be deleted.
    pub(super) fn empty_leftovers(root: &Path) -> Vec<String> {
        let Ok(entries) = fs::read_dir(root.join(TRASH)) else {
            return Vec::new();
        };
        let mut failed = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(_held) = lock_if_free(&path) else {
                continue;
            };
            if let Err(e) = crate::fsutil::remove_tree(&path) {
                failed.push(format!("removing {}: {e}", path.display()));
            }
        }
        failed
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
/// with a tree its `current` does not name (a generation, or a save's `incoming-*`).
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
    fn add(&mut self, w: &Weighed) {
        self.add_raw(w.bytes, w.entries);
    }

    fn add_raw(&mut self, bytes: u64, entries: u64) {
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

/// What became of one tier a weighing wanted gone.
enum Outcome {
    /// Removed now.
    Removed,
    /// Free now, chosen to go later (or, in a dry run, would go).
    Chosen,
    /// In use (or its locks failed: said in `failed`).
    Kept,
}

/// Decides, under the store lock, what goes (see the module's docs) and removes what goes at
/// once: caches unused for longer than `max_unused` always; the others only for `prune`.
/// For a save, the caches it would push out are chosen (each checked free now) and `fits`
/// says whether it may be made; when it may not, none is chosen.
pub(super) fn plan(
    saved: Vec<Weighed>,
    purpose: Purpose,
    bounds: Bounds,
    now: SystemTime,
    trash: &mut Trash,
) -> Plan {
    let mut plan = Plan::default();
    let dry_run = matches!(purpose, Purpose::Prune { dry_run: true });
    let remove_now = |plan: &mut Plan, trash: &mut Trash, w: &Weighed, at_once: bool| {
        let claimed = match Claimed::take(&w.dir, false) {
            Ok(Some(c)) => c,
            Ok(None) => return Outcome::Kept,
            Err(e) => {
                plan.failed.push(e);
                return Outcome::Kept;
            }
        };
        if !at_once {
            return Outcome::Chosen;
        }
        match claimed.discard(trash) {
            Ok(()) => Outcome::Removed,
            Err(e) => {
                plan.failed.push(e);
                Outcome::Kept
            }
        }
    };
    let mut kept = Vec::new();
    let mut all = Sum::default();
    let mut trusted = Sum::default();
    for w in saved {
        let unused = now.duration_since(w.used).unwrap_or_default() > bounds.max_unused;
        if !unused {
            kept.push(w);
            continue;
        }
        match remove_now(&mut plan, trash, &w, !dry_run) {
            Outcome::Removed => plan.removed.push((w, Why::Unused)),
            Outcome::Chosen => plan.chosen.push((w, Why::Unused)),
            Outcome::Kept => {
                // Expired but held: counted, and left for a later weighing.
                all.add(&w);
                if w.tier == Tier::Trusted {
                    trusted.add(&w);
                }
                plan.busy.push(w);
            }
        }
    }
    if let Purpose::Save(i) = purpose {
        all.add_raw(i.bytes, i.entries);
        if i.trust == Trust::Trusted {
            trusted.add_raw(i.bytes, i.entries);
        }
    }
    for w in &kept {
        all.add(w);
        if w.tier == Tier::Trusted {
            trusted.add(w);
        }
    }
    // Least recently used first; trusted caches only for a trusted save or `prune`, and only
    // while the trusted ones alone are over.
    kept.sort_by_key(|w| w.used);
    let (untrusted, trusted_kept): (Vec<Weighed>, Vec<Weighed>) =
        kept.into_iter().partition(|w| w.tier == Tier::Untrusted);
    let trusted_may_go = match purpose {
        Purpose::Save(i) => i.trust == Trust::Trusted,
        Purpose::Prune { .. } => true,
    };
    let at_once = matches!(purpose, Purpose::Prune { dry_run: false });
    let first_chosen = plan.chosen.len();
    let candidates = trusted_may_go
        .then_some(trusted_kept)
        .into_iter()
        .flatten()
        .map(|w| (w, true))
        .chain(untrusted.into_iter().map(|w| (w, false)));
    for (w, is_trusted) in candidates {
        let over = if is_trusted {
            trusted.over(bounds)
        } else {
            all.over(bounds)
        };
        if !over {
            continue;
        }
        let outcome = remove_now(&mut plan, trash, &w, at_once);
        if matches!(outcome, Outcome::Kept) {
            plan.busy.push(w);
            continue;
        }
        all.sub(&w);
        if is_trusted {
            trusted.sub(&w);
        }
        match outcome {
            Outcome::Removed => plan.removed.push((w, Why::Room)),
            _ => plan.chosen.push((w, Why::Room)),
        }
    }
    plan.fits = match purpose {
        Purpose::Save(i) if i.trust == Trust::Trusted => !trusted.over(bounds),
        _ => !all.over(bounds),
    };
    if matches!(purpose, Purpose::Save(_)) && !plan.fits {
        // Nothing is removed for a cache that will not be saved.
        for (w, _) in plan.chosen.drain(first_chosen..) {
            all.add(&w);
        }
    }
    plan.total = all.weight;
    plan.total_entries = all.entries;
    plan
}

impl Plan {
    /// Removes the caches chosen for a save that was made (each if still free: one in use by
    /// now stays, and the store is over its bounds until a later weighing).
    pub(super) fn remove_chosen(&mut self, trash: &mut Trash) {
        for (w, why) in std::mem::take(&mut self.chosen) {
            let removed = match Claimed::take(&w.dir, false) {
                Ok(Some(c)) => c.discard(trash).map_err(|e| self.failed.push(e)).is_ok(),
                Ok(None) => false,
                Err(e) => {
                    self.failed.push(e);
                    false
                }
            };
            if removed {
                self.removed.push((w, why));
            } else {
                self.total = self.total.saturating_add(weight(w.bytes, w.entries));
                self.total_entries = self.total_entries.saturating_add(w.entries);
                self.busy.push(w);
            }
        }
    }
}

/// Takes out of a tier what it holds beside the generation its `current` names: generations
/// a restore held at the last save, what an interrupted save or removal left. Each tree goes
/// only when an exclusive lock on it is free now: a restore copying from it, or a save
/// writing it (which holds its tree locked until `current` names it), keeps it; `read.lock`
/// is held meanwhile, so no restore starts on one. Waits only for `read.lock`, which
/// everything but `caches remove` holds for moments.
pub(super) fn tidy(dir: &Path, trash: &mut Trash) {
    let Ok(_reading) = lock(&dir.join("read.lock"), FlockArg::LockExclusive) else {
        return;
    };
    let Ok(current) = read_current(dir) else {
        return;
    };
    let named = current.map(|c| c.generation).unwrap_or_default();
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let leftover =
            name.starts_with("incoming-") || (name.starts_with("gen-") && *name != *named);
        if !leftover {
            continue;
        }
        let path = entry.path();
        let Some(held) = lock_if_free(&path) else {
            continue;
        };
        // `current` read again now that the tree is locked: a save renames its tree to
        // `gen-*` and then writes `current` without `read.lock`, and lets go of its lock on
        // the tree only after `current` names it; so the tree, once locked here, is the
        // current generation exactly when `current` names it now.
        match read_current(dir) {
            Ok(Some(c)) if *c.generation == *name => continue,
            Ok(_) => {}
            Err(_) => return,
        }
        if let Err(e) = trash.take(&path, held) {
            tracing::debug!(path = %path.display(), "moving a cache leftover out: {e}");
        }
    }
}

/// An exclusive lock on the directory `path`, if nobody holds one now.
fn lock_if_free(path: &Path) -> Option<Flock<OwnedFd>> {
    crate::fsutil::open_dir(path)
        .ok()
        .and_then(|fd| Flock::lock(fd, FlockArg::LockExclusiveNonblock).ok())
}
