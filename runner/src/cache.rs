//! Build caches: directories a job declares (`[[caches]] name = "cargo"`), mounted read-write at
//! `/cache/<name>`, that start as the last successful job of the same source and trust level
//! left them.
//!
//! A cache is an input that no digest in the spec pins, written by earlier builds: the classic
//! way to poison a release (a pull request's build writes a tampered dependency into the cache
//! that the release build then restores; GitHub Actions' cache poisoning). The design follows
//! from that:
//!
//! - **Two tiers per cache.** Each (source, name) has a `trusted` and an `untrusted` store.
//!   A trusted job restores from the trusted store only and saves to it. An untrusted job
//!   restores from the untrusted store, or from the trusted one while no untrusted job has
//!   saved yet, and saves only to the untrusted store: untrusted jobs may read what trusted
//!   jobs read but never write it (DESIGN.md, "Trust levels").
//! - **Copied in, copied out.** The job gets its own copy, never the store: a job cannot change
//!   what another job (running now, or later) restores, and what it leaves is saved only when
//!   it succeeded and after every one of its processes is gone, so no background writer can
//!   change the tree while or after it is copied. Both copies use the source-copy rules
//!   ([`crate::source`]): no symlink followed, no fifo or device opened, setuid bits dropped,
//!   bounded by `caches.max_size` and `caches.max_entries` and by the disk reserve.
//! - **Recorded, checked.** Saving computes the tree's `bulwark-tree-v2` digest and records it
//!   beside the tree; a restore recomputes it while copying and refuses the job if the two
//!   differ (the store was changed on the host after the save). The restored digest goes into
//!   `result.json` and into provenance as a resolved dependency, so the inventory can answer
//!   "which artifacts were built from this cache" like it does for tools.
//! - **Scoped by source.** Caches are keyed by where the source the spec names came from (the
//!   git URL, the archive URL, or the local directory), as the job's identity token names its
//!   repository: whoever submits the job vouches for that source.
//!
//! Layout under `<state>/caches/<scope key>/`: `.scope` (the scope, for people), and
//! `<name>/<tier>/` holding `current` (JSON: which generation, its digest and size),
//! `gen-<random>/` (the tree), `save.lock` and `read.lock`. A restore holds `read.lock` shared
//! only while it reads `current` and takes a shared lock on that generation's directory, which
//! it holds for its copy. A save holds `save.lock` for its whole copy (saves of one cache take
//! turns; the last one wins), writes the new generation under `incoming-<random>/`, flushes
//! the filesystem, renames it to `gen-<random>/` and replaces `current` (the commit point);
//! then, under `read.lock` exclusively (held by restores for moments only), it removes every
//! other generation that no restore has locked. Whatever a dead save left, and generations
//! in use at the last save, are taken out by the restore holding them when its copy ends, or
//! by any later save or weighing ([`evict::tidy`]).
//!
//! The store as a whole is bounded (`caches.max_total`, `caches.max_total_entries`,
//! `caches.max_unused`): see [`evict`]. Saves running at once keep `limits.min_free_disk`
//! together, each holding the room it may write: see [`reserve`]. A job that was given
//! credentials saves no cache holding any of their values ([`Store::save_refusing`]): a
//! trusted job's cache is restored by pull requests.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bulwark_protocol::{CachesConfig, Trust};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::creds::mask::Finder;
use crate::disk_reserve::Room;
use crate::source::{
    copy_tree, copy_tree_from, copy_tree_refusing, tree_digest, CopyError, Tree, TREE_ALGORITHM,
};

mod evict;
mod reserve;
pub use evict::{weight, Bounds, Weighed, Why, ENTRY_CHARGE};
use evict::{Claimed, Purpose, StoreLock, Trash};

/// Where a job's caches live inside its sandbox.
pub const MOUNT_POINT: &str = "/cache";

/// The store's tiers: whose jobs wrote a cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Tier {
    /// Written by trusted jobs; read by every job.
    Trusted,
    /// Written by untrusted jobs; read by untrusted jobs only.
    Untrusted,
}

impl Tier {
    /// The tier's name, as in the store and `result.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Trusted => "trusted",
            Tier::Untrusted => "untrusted",
        }
    }

    /// The tier a job of `trust` saves to.
    pub fn written_by(trust: Trust) -> Tier {
        match trust {
            Trust::Trusted => Tier::Trusted,
            Trust::Untrusted => Tier::Untrusted,
        }
    }

    /// The tiers a job of `trust` restores from, in order of preference.
    pub fn read_by(trust: Trust) -> &'static [Tier] {
        match trust {
            Trust::Trusted => &[Tier::Trusted],
            Trust::Untrusted => &[Tier::Untrusted, Tier::Trusted],
        }
    }
}

/// `current`: the generation a restore takes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Current {
    generation: String,
    tree_sha256: String,
    files: u64,
    bytes: u64,
    entries: u64,
    saved: String,
    job: String,
    /// The saving run's invocation id (its `result.json` and provenance carry it).
    #[serde(default)]
    invocation: String,
}

/// One cache as restored into a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The tier it came from.
    pub tier: Tier,
    /// The generation restored.
    pub generation: String,
    /// Its `bulwark-tree-v2` digest, recomputed while copying and equal to the recorded one.
    pub tree_sha256: String,
    /// Regular files.
    pub files: u64,
    /// Bytes of file content.
    pub bytes: u64,
    /// When it was saved (RFC 3339).
    pub saved: String,
}

/// One cache as saved after a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    /// The tier it went to.
    pub tier: Tier,
    /// The new generation.
    pub generation: String,
    /// Its `bulwark-tree-v2` digest.
    pub tree_sha256: String,
    /// Regular files.
    pub files: u64,
    /// Bytes of file content.
    pub bytes: u64,
    /// Other caches removed to make room for it, or because nobody used them for
    /// `caches.max_unused`.
    pub removed: usize,
}

/// The cache store under a state directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    bounds: Bounds,
    /// `limits.min_free_disk`, which saves keep on the store's filesystem together
    /// ([`reserve`]).
    disk: bulwark_protocol::DiskReserve,
    /// How that filesystem is measured (fixed in tests).
    measure: reserve::Measure,
    /// The `--config` the run was given, which a command this store's messages suggest
    /// needs too (`caches remove` finds the store through the configuration's state
    /// directory).
    config_arg: Option<PathBuf>,
}

/// What `caches prune` did.
#[derive(Debug, Default)]
pub struct Pruned {
    /// Removed (or, in a dry run, would be), each with why.
    pub removed: Vec<(Weighed, Why)>,
    /// Would have been removed but were in use.
    pub busy: Vec<Weighed>,
    /// What the store weighs afterwards ([`weight`]).
    pub total: u64,
    /// Its entries.
    pub total_entries: u64,
    /// What could not be examined or removed, and why.
    pub failed: Vec<String>,
}

/// The scope key: the first 128 bits of the scope's sha256, in hex (a scope is a URL or a path,
/// which may be long or hold anything).
pub fn scope_key(scope: &str) -> String {
    crate::outputs::hex(&Sha256::digest(scope.as_bytes()))[..32].to_string()
}

impl Store {
    /// The store of the state directory `state`, with the default bounds.
    pub fn new(state: &Path) -> Store {
        Store {
            root: state.join("caches"),
            bounds: Bounds::of(&CachesConfig::default()),
            disk: bulwark_protocol::DiskReserve::Off,
            measure: crate::disk_reserve::space_at,
            config_arg: None,
        }
    }

    /// This store as found through `--config FILE` (`None`: the default configuration), which
    /// the commands its messages suggest then include.
    pub fn with_config_arg(self, config: Option<&Path>) -> Store {
        Store {
            // Absolute: the command may be run from another directory.
            config_arg: config.map(|c| std::path::absolute(c).unwrap_or_else(|_| c.to_owned())),
            ..self
        }
    }

    /// This store with other bounds.
    pub fn with_bounds(self, bounds: Bounds) -> Store {
        Store { bounds, ..self }
    }

    /// This store with the disk reserve `disk` (`limits.min_free_disk`) kept by its saves,
    /// together ([`reserve`]).
    pub fn with_disk_reserve(self, disk: bulwark_protocol::DiskReserve) -> Store {
        Store { disk, ..self }
    }

    /// Where the caches are kept.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn tier_dir(&self, scope: &str, name: &str, tier: Tier) -> PathBuf {
        self.root
            .join(scope_key(scope))
            .join(name)
            .join(tier.as_str())
    }

    /// Copies the cache `name` of `scope` that a job of `trust` reads into `dst` (an existing,
    /// empty directory), everything made owned by `owner` when given. `None`: nothing was
    /// saved yet, and `dst` stays empty. A stored tree whose digest is not the recorded one is
    /// an error naming it; so is a copy that does not fit in `room`; each names what to remove
    /// to start the cache afresh.
    pub fn restore(
        &self,
        scope: &str,
        name: &str,
        trust: Trust,
        dst: &Path,
        room: Room,
        owner: Option<(u32, u32)>,
    ) -> Result<Option<Restored>, String> {
        for &tier in Tier::read_by(trust) {
            let dir = self.tier_dir(scope, name, tier);
            if !fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
                continue;
            }
            let afresh = format!(
                "`bulwark caches remove --key {} --name {name} --tier {}{}` starts this cache afresh",
                scope_key(scope),
                tier.as_str(),
                self.config_arg
                    .as_ref()
                    .map(|c| format!(" --config {}", c.display()))
                    .unwrap_or_default()
            );
            let (current, gen, in_use) = {
                let _reading = match lock(&dir.join("read.lock"), FlockArg::LockShared) {
                    Ok(l) => l,
                    // Removed by hand since it was seen: nothing to restore from it.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(format!("{}: {e}", dir.display())),
                };
                let Some(current) = read_current(&dir).map_err(|e| format!("{e}; {afresh}"))?
                else {
                    continue;
                };
                let gen = dir.join(&current.generation);
                // The last use, which `caches.max_unused` and the eviction order go by, set
                // before the copy so that no weighing meanwhile takes this cache for unused.
                if let Ok(f) = crate::fsutil::open_regular(&dir.join("current"), true) {
                    let _ = f.set_modified(SystemTime::now());
                }
                // Locked before `read.lock` is let go: a save that replaces `current` from
                // here on, or `bulwark caches remove`, leaves this generation alone until the
                // copy, which reads through this very descriptor, is done.
                let in_use = crate::fsutil::open_dir(&gen)
                    .and_then(|fd| {
                        Flock::lock(fd, FlockArg::LockShared).map_err(|(_, e)| io::Error::from(e))
                    })
                    .map_err(|e| format!("{}: {e}; {afresh}", gen.display()))?;
                (current, gen, in_use)
            };
            let copied = copy_tree_from(&in_use, dst, Tree::Whole, room, owner);
            // A save may have replaced this generation while it was copied, and left it for
            // whoever holds it last: this restore, when no other one does.
            drop(in_use);
            let mut trash = Trash::new(&self.root);
            evict::tidy(&dir, &mut trash);
            for e in trash.empty() {
                tracing::debug!("{e}");
            }
            let stats = copied.map_err(|e| {
                if e.is_no_room() {
                    format!(
                        "{}: restoring it would take the job directory's filesystem below \
                         limits.min_free_disk; free space there, or {afresh}",
                        gen.display()
                    )
                } else if e.source.raw_os_error() == Some(nix::libc::ENOSPC) {
                    format!(
                        "{}: it does not fit beside the job's other files (on the job's disk, \
                         when it has one: resources.disk); {afresh}",
                        gen.display()
                    )
                } else if e.is_too_deep()
                    || e.source.raw_os_error() == Some(nix::libc::ENAMETOOLONG)
                {
                    format!("{}; {afresh}", copy_error(&gen, &e))
                } else {
                    copy_error(&gen, &e)
                }
            })?;
            let digest = tree_digest(&stats.entries);
            if digest != current.tree_sha256 {
                return Err(format!(
                    "the stored tree {} does not match the digest recorded when it was saved \
                     ({TREE_ALGORITHM} {}, now {digest}): it was changed on this host after the \
                     save; {afresh}",
                    gen.display(),
                    current.tree_sha256,
                ));
            }
            return Ok(Some(Restored {
                tier,
                generation: current.generation,
                tree_sha256: digest,
                files: stats.files,
                bytes: stats.bytes,
                saved: current.saved,
            }));
        }
        Ok(None)
    }

    /// Saves `src` (a job's cache directory, every process of the job gone) as the new
    /// generation of the cache `name` of `scope` that a job of `trust` writes. `room` bounds
    /// the copy (the configuration's size and entry limits); so does the room left above the
    /// disk reserve on the store's filesystem once other saves in progress have theirs
    /// ([`reserve`]). A cache over either is not saved, and the error says why. (The tests'
    /// shorthand for [`Store::save_refusing`] with no credentials to refuse, which jobs call.)
    #[cfg(test)]
    #[allow(clippy::too_many_arguments)] // which cache, whose, from where, bounds, saved by
    pub fn save(
        &self,
        scope: &str,
        name: &str,
        trust: Trust,
        src: &Path,
        room: Room,
        job: &str,
        invocation: &str,
    ) -> Result<Saved, String> {
        self.save_refusing(scope, name, trust, src, room, job, invocation, None)
    }

    /// Saves `src` (a job's cache directory, every process of the job gone) as the new
    /// generation of the cache `name` of `scope` that a job of `trust` writes, within `room`
    /// and the room above the disk reserve ([`reserve`]). For a job that was given
    /// credentials, with `refuse` (their values), a tree holding any of them (in a file, a link target or a path; as issued, or in a form
    /// the log would mask) is not saved, the error naming the credential and the file, never
    /// the value. Nothing of it stays in the store, and `current` is not changed.
    #[allow(clippy::too_many_arguments)] // which cache, whose, from where, bounds, by, refused
    pub fn save_refusing(
        &self,
        scope: &str,
        name: &str,
        trust: Trust,
        src: &Path,
        room: Room,
        job: &str,
        invocation: &str,
        refuse: Option<&Finder>,
    ) -> Result<Saved, String> {
        let tier = Tier::written_by(trust);
        let scope_dir = self.root.join(scope_key(scope));
        let dir = scope_dir.join(name).join(tier.as_str());
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("creating {}: {e}", dir.display()))?;
        // `.scope`: no cache name starts with a dot, so this never meets a cache's directory.
        let scope_file = scope_dir.join(".scope");
        if !scope_file.exists() {
            crate::fsutil::write_atomic(&scope_file, format!("{scope}\n").as_bytes())
                .map_err(|e| format!("writing {}: {e}", scope_file.display()))?;
        }
        let _saving = lock(&dir.join("save.lock"), FlockArg::LockExclusive)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut trash = Trash::new(&self.root);
        // What a dead save, or a restore of an older generation, left.
        evict::tidy(&dir, &mut trash);
        // Held until this save ends (returned, failed or unwound): the room it may write.
        let granted = reserve::reserve(&self.root, room, self.disk, self.measure)?;
        let room = granted.room;
        let id = crate::fsutil::random_hex(8);
        let incoming = dir.join(format!("incoming-{id}"));
        // Locked from its creation until `current` names it, so that no tidying (another
        // process's restore or weighing) takes it meanwhile: made under `read.lock`, which
        // tidying holds while it looks for leftovers.
        let building = lock(&dir.join("read.lock"), FlockArg::LockShared)
            .and_then(|_reading| {
                fs::DirBuilder::new().mode(0o700).create(&incoming)?;
                let fd = crate::fsutil::open_dir(&incoming)?;
                Flock::lock(fd, FlockArg::LockExclusiveNonblock)
                    .map_err(|(_, e)| io::Error::from(e))
            })
            .map_err(|e| format!("creating {}: {e}", incoming.display()))?;
        let copied = match refuse {
            Some(values) => copy_tree_refusing(src, &incoming, Tree::Whole, room, values),
            None => copy_tree(src, &incoming, Tree::Whole, room, None),
        };
        let stats = match copied {
            Ok(stats) => stats,
            Err(e) => {
                let removed = crate::fsutil::remove_tree(&incoming);
                let job_path = Path::new(MOUNT_POINT).join(name);
                if let Some(credential) = e.credential() {
                    if let Err(r) = removed {
                        // Left for the next tidying (no `current` names it); the file that
                        // held the value was emptied by the copy.
                        tracing::warn!(path = %incoming.display(), "removing a refused cache save: {r}");
                    }
                    return Err(format!(
                        "{}; a saved cache reaches every later job of this source, pull \
                         requests' included: keep credential {credential:?} and tools' logins \
                         out of {MOUNT_POINT} (point the tool's home or configuration at /tmp \
                         or /workspace, or delete the file in the job's last step)",
                        copy_error(&job_path, &e)
                    ));
                }
                return Err(if e.is_no_room() {
                    format!(
                        "{} holds more than a saved cache may: at most {} bytes (its files' \
                         contents and {} bytes per entry) and {} \
                         entries here (caches.max_size, caches.max_entries, and the room above \
                         limits.min_free_disk on the state directory's filesystem{})",
                        job_path.display(),
                        room.bytes.map_or("unbounded".into(), |b| b.to_string()),
                        ENTRY_CHARGE,
                        room.entries.map_or("unbounded".into(), |n| n.to_string()),
                        if granted.others > 0 {
                            format!(
                                ", less the {} bytes other cache saves in progress held; a \
                                 later job's save may fit",
                                granted.others
                            )
                        } else {
                            String::new()
                        },
                    )
                } else {
                    copy_error(&job_path, &e)
                });
            }
        };
        let digest = tree_digest(&stats.entries);
        let discard = |why: String| {
            let _ = crate::fsutil::remove_tree(&incoming);
            why
        };
        // The tree is on disk before `current` names it: after a crash, `current` names either
        // the previous generation or a whole new one, never a tree that is partly written.
        File::open(&incoming)
            .and_then(|f| nix::unistd::syncfs(&f).map_err(io::Error::from))
            .map_err(|e| discard(format!("saving into {}: {e}", dir.display())))?;
        // Room is made and the new generation committed under the store lock, so that two
        // saves never count the same room twice.
        let store_lock = StoreLock::take(&self.root).map_err(discard)?;
        let weighing = match evict::weigh(&self.root, Some(&dir)) {
            Ok(w) => w,
            Err(e) => {
                drop(store_lock);
                return Err(discard(e));
            }
        };
        let entries = stats.entries.len() as u64;
        let incoming_cache = evict::Incoming {
            trust,
            bytes: stats.bytes,
            entries,
        };
        let mut plan = evict::plan(
            weighing.saved,
            Purpose::Save(incoming_cache),
            self.bounds,
            SystemTime::now(),
            &mut trash,
        );
        let generation = format!("gen-{id}");
        let gen = dir.join(&generation);
        let placed = plan.fits.then(|| {
            fs::rename(&incoming, &gen).and_then(|()| {
                let current = Current {
                    generation: generation.clone(),
                    tree_sha256: digest.clone(),
                    files: stats.files,
                    bytes: stats.bytes,
                    entries,
                    saved: crate::job::now_rfc3339(),
                    job: job.to_string(),
                    invocation: invocation.to_string(),
                };
                let json = serde_json::to_vec(&current).map_err(io::Error::other)?;
                crate::fsutil::write_atomic(&dir.join("current"), &json)
            })
        });
        // `current` replaced is the commit point, and `write_atomic` may fail after its rename
        // (flushing the directory): then the new generation is the one restores take.
        let committed = match &placed {
            Some(Ok(())) => true,
            Some(Err(_)) => {
                matches!(read_current(&dir), Ok(Some(c)) if c.generation == generation)
            }
            None => false,
        };
        if committed {
            plan.remove_chosen(&mut trash);
        }
        drop(store_lock);
        drop(building);
        // What this save writes is on disk now (or gone): its room need not be held while
        // evicted trees are deleted, which may take a while.
        drop(granted);
        let removed = plan.removed.len();
        report_weighing(&plan, &weighing.failed);
        for untidy in &weighing.untidy {
            evict::tidy(untidy, &mut trash);
        }
        let mut failed = trash.empty();
        failed.extend(Trash::empty_leftovers(&self.root));
        for e in failed {
            tracing::warn!("cache store: {e}");
        }
        let saved = |generation: String, tree_sha256: String| Saved {
            tier,
            generation,
            tree_sha256,
            files: stats.files,
            bytes: stats.bytes,
            removed,
        };
        match placed {
            None => {
                return Err(discard(format!(
                    "the build cache store is full: caches.max_total ({} bytes, each cache \
                     counted as its file contents plus {ENTRY_CHARGE} bytes per entry) or \
                     caches.max_total_entries ({}) would be passed, and no room could be made \
                     {}",
                    self.bounds.max_total,
                    self.bounds.max_total_entries,
                    match trust {
                        Trust::Trusted =>
                            "from less recently used trusted caches (those in use right now stay)",
                        // A pull request's cache never pushes out a trusted one.
                        Trust::Untrusted => "from less recently used untrusted caches",
                    },
                )));
            }
            Some(Err(e)) if committed => {
                tracing::warn!(dir = %dir.display(), "cache saved, but flushing its record failed: {e}");
            }
            Some(Err(e)) => {
                // Only when `current` is known to name another is the new tree removed; when
                // that cannot be told, it stays (a later tidying removes it if it is not
                // current).
                let _ = crate::fsutil::remove_tree(&incoming);
                if matches!(read_current(&dir), Ok(Some(_)) | Ok(None)) {
                    let _ = crate::fsutil::remove_tree(&gen);
                }
                return Err(format!("saving into {}: {e}", dir.display()));
            }
            Some(Ok(())) => {}
        }
        // Older generations go once no restore has them locked; those in use stay for the
        // last restore holding them, or a later weighing, to remove.
        let mut trash = Trash::new(&self.root);
        evict::tidy(&dir, &mut trash);
        for e in trash.empty() {
            tracing::debug!("{e}");
        }
        Ok(saved(generation, digest))
    }

    /// Removes every cache unused for longer than `caches.max_unused`; then, while the trusted
    /// caches are over `caches.max_total` or `caches.max_total_entries`, the least recently
    /// used trusted ones; then, while the whole store is, the least recently used untrusted
    /// ones. A cache in use is kept and listed as busy, and the rest go all the same.
    /// `dry_run`: only says what would go.
    pub fn prune(&self, dry_run: bool) -> Result<Pruned, String> {
        if !fs::symlink_metadata(&self.root).is_ok_and(|m| m.is_dir()) {
            // Nothing was ever saved here.
            return Ok(Pruned::default());
        }
        let mut trash = Trash::new(&self.root);
        let store_lock = StoreLock::take(&self.root)?;
        let weighing = evict::weigh(&self.root, None)?;
        let plan = evict::plan(
            weighing.saved,
            Purpose::Prune { dry_run },
            self.bounds,
            SystemTime::now(),
            &mut trash,
        );
        drop(store_lock);
        let mut failed = weighing.failed;
        failed.extend(plan.failed);
        if !dry_run {
            for untidy in &weighing.untidy {
                evict::tidy(untidy, &mut trash);
            }
            failed.extend(trash.empty());
            failed.extend(Trash::empty_leftovers(&self.root));
        }
        Ok(Pruned {
            removed: if dry_run { plan.chosen } else { plan.removed },
            busy: plan.busy,
            total: plan.total,
            total_entries: plan.total_entries,
            failed,
        })
    }
}

/// Tells the operator's log which caches a save's weighing removed, and that some could not
/// be examined. Other scopes are named at the info and debug levels only: at the default
/// level the runner's stderr may be shown to whoever submitted the job.
fn report_weighing(plan: &evict::Plan, weighing_failed: &[String]) {
    for (w, why) in &plan.removed {
        tracing::info!(
            key = %w.key,
            name = %w.name,
            tier = w.tier.as_str(),
            bytes = w.bytes,
            entries = w.entries,
            "cache removed from the store: {}",
            match why {
                Why::Unused => "unused for longer than caches.max_unused",
                Why::Room => "least recently used, to stay within the store's bounds",
            }
        );
    }
    let failed = weighing_failed.len() + plan.failed.len();
    if failed > 0 {
        tracing::warn!(
            "{failed} cache(s) of this host's store could not be examined or removed; \
             `bulwark caches prune` names them"
        );
        for e in weighing_failed.iter().chain(&plan.failed) {
            tracing::debug!("{e}");
        }
    }
}

/// One saved cache as `bulwark caches list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Listed {
    /// The source it belongs to (`git:<url>`, `url:<url>`, `local:file://<dir>`, `none`).
    pub scope: String,
    /// The scope's key: the store's directory for it, and what `caches remove --key` takes.
    pub key: String,
    /// The cache's name.
    pub name: String,
    /// `trusted` or `untrusted`.
    pub tier: &'static str,
    /// The generation restores take; `None` when none is (no save completed, or removed).
    pub generation: Option<String>,
    /// Its `bulwark-tree-v2` digest.
    pub tree_sha256: Option<String>,
    /// Regular files.
    pub files: Option<u64>,
    /// Bytes of file content.
    pub bytes: Option<u64>,
    /// When it was saved (RFC 3339).
    pub saved: Option<String>,
    /// When it was last saved or restored (RFC 3339): what `caches.max_unused` and the
    /// eviction order go by.
    pub used: Option<String>,
    /// The name of the job that saved it.
    pub job: Option<String>,
    /// The invocation id of the run that saved it.
    pub invocation: Option<String>,
    /// Generations on disk: the current one, and older ones that a restore held at the last
    /// save (kept until the restore holding them lets go).
    pub generations: usize,
    /// What could not be read, if anything.
    pub problem: Option<String>,
}

/// What `caches remove` did with one cache tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    /// The cache's name.
    pub name: String,
    /// The tier.
    pub tier: Tier,
    /// `Err`: why it could not be removed (whole or in part).
    pub result: Result<(), String>,
}

impl Store {
    /// The store of the state directory `config` names.
    pub fn of(config: &bulwark_protocol::Config) -> Result<Store, String> {
        let dirs = crate::config::Dirs::resolve(config).map_err(|e| format!("{e:#}"))?;
        Ok(Store::new(&dirs.state)
            .with_bounds(Bounds::of(&config.caches))
            .with_disk_reserve(config.limits.min_free_disk))
    }

    /// Every cache tier of this store that holds anything, by scope, name and tier.
    pub fn list(&self) -> Result<Vec<Listed>, String> {
        let mut out = Vec::new();
        for key_dir in subdirs(&self.root)? {
            let key = key_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let scope = fs::read_to_string(key_dir.join(".scope"))
                .map(|s| s.trim_end_matches('\n').to_string())
                .unwrap_or_else(|_| "(unknown: its .scope file is missing)".to_string());
            let names = match subdirs(&key_dir) {
                Ok(n) => n,
                Err(e) => {
                    out.push(Listed::problem(&scope, &key, "", "trusted", e));
                    continue;
                }
            };
            for name_dir in names {
                let name = name_dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                for tier in [Tier::Trusted, Tier::Untrusted] {
                    let dir = name_dir.join(tier.as_str());
                    if !fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
                        continue;
                    }
                    let generations = match subdirs(&dir) {
                        Ok(g) => g.iter().filter(|p| is_generation(p)).count(),
                        Err(e) => {
                            out.push(Listed::problem(&scope, &key, &name, tier.as_str(), e));
                            continue;
                        }
                    };
                    let (current, problem) = match read_current(&dir) {
                        Ok(c) => (c, None),
                        Err(e) => (None, Some(e)),
                    };
                    // A tier that was removed (or never saved) keeps only its lock files.
                    if current.is_none() && problem.is_none() && generations == 0 {
                        continue;
                    }
                    out.push(Listed {
                        scope: scope.clone(),
                        key: key.clone(),
                        name: name.clone(),
                        tier: tier.as_str(),
                        generation: current.as_ref().map(|c| c.generation.clone()),
                        tree_sha256: current.as_ref().map(|c| c.tree_sha256.clone()),
                        files: current.as_ref().map(|c| c.files),
                        bytes: current.as_ref().map(|c| c.bytes),
                        saved: current.as_ref().map(|c| c.saved.clone()),
                        used: current.as_ref().and(last_use(&dir)),
                        job: current.as_ref().map(|c| c.job.clone()),
                        invocation: current
                            .as_ref()
                            .map(|c| c.invocation.clone())
                            .filter(|i| !i.is_empty()),
                        generations,
                        problem,
                    });
                }
            }
        }
        out.sort_by(|a, b| (&a.scope, &a.name, a.tier).cmp(&(&b.scope, &b.name, b.tier)));
        Ok(out)
    }

    /// Removes the caches of the scope whose key is `key` (see [`scope_key`]): all of them, or
    /// only the one named `name`, and only its `tier` when given. For each tier: waits for a
    /// save to finish and for every restore copying from it, unlinks `current` (from then on
    /// restores find nothing; an untrusted job falls back to the trusted tier), then removes
    /// every generation. The tier's directory and lock files stay (removing a lock file would
    /// let two holders of "the" lock exist); an interrupted removal leaves generations that
    /// `current` no longer names (taken out by the next restore, save or weighing) or trees in
    /// `.trash/` (deleted after the next save, or by `caches prune`).
    pub fn remove(
        &self,
        key: &str,
        name: Option<&str>,
        tier: Option<Tier>,
    ) -> Result<Vec<Removal>, String> {
        if key.len() != 32 || !key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(format!(
                "{key:?} is not a scope key (32 lowercase hex digits, as caches list prints)"
            ));
        }
        if let Some(n) = name {
            bulwark_protocol::check_name(n).map_err(|e| format!("cache name: {e}"))?;
        }
        let key_dir = self.root.join(key);
        let names: Vec<String> = match name {
            Some(n) => vec![n.to_string()],
            None => subdirs(&key_dir)?
                .iter()
                .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(String::from))
                .collect(),
        };
        let tiers = match tier {
            Some(t) => vec![t],
            None => vec![Tier::Trusted, Tier::Untrusted],
        };
        let mut done = Vec::new();
        for name in &names {
            for &tier in &tiers {
                let dir = key_dir.join(name).join(tier.as_str());
                if !fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
                    continue;
                }
                let holds = read_current(&dir).ok().flatten().is_some()
                    || subdirs(&dir).is_ok_and(|g| g.iter().any(|p| is_generation(p)));
                if !holds {
                    continue;
                }
                done.push(Removal {
                    name: name.clone(),
                    tier,
                    result: remove_tier(&self.root, &dir),
                });
            }
        }
        Ok(done)
    }
}

/// Empties one tier directory: its generations and `current`, under its locks, waiting for
/// a save of it and every restore copying from it; the trees are deleted after the locks go.
fn remove_tier(root: &Path, dir: &Path) -> Result<(), String> {
    let claimed = Claimed::take(dir, true)?.ok_or_else(|| format!("{}: busy", dir.display()))?;
    let mut trash = Trash::new(root);
    let discarded = claimed.discard(&mut trash);
    let failed = trash.empty();
    discarded?;
    match failed.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

impl Listed {
    fn problem(scope: &str, key: &str, name: &str, tier: &'static str, problem: String) -> Listed {
        Listed {
            scope: scope.to_string(),
            key: key.to_string(),
            name: name.to_string(),
            tier,
            generation: None,
            tree_sha256: None,
            files: None,
            bytes: None,
            saved: None,
            used: None,
            job: None,
            invocation: None,
            generations: 0,
            problem: Some(problem),
        }
    }
}

/// When the cache in `dir` was last saved or restored: its `current`'s modification time.
fn last_use(dir: &Path) -> Option<String> {
    let modified = fs::symlink_metadata(dir.join("current"))
        .and_then(|m| m.modified())
        .ok()?;
    Some(humantime::format_rfc3339_seconds(modified).to_string())
}

/// Whether `path` names a generation directory (`gen-<id>`).
fn is_generation(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("gen-"))
}

/// The directories in `dir` whose names do not start with a dot (none when it does not
/// exist); symlinks and other files are left out.
fn subdirs(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("reading {}: {e}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("reading {}: {e}", dir.display()))?;
        let name = entry.file_name();
        if name.as_encoded_bytes().first() == Some(&b'.') {
            continue;
        }
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// The smaller of two bounds, each field alone.
pub fn tighter(a: Room, b: Room) -> Room {
    let min = |x: Option<u64>, y: Option<u64>| match (x, y) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    };
    Room {
        bytes: min(a.bytes, b.bytes),
        entries: min(a.entries, b.entries),
    }
}

/// The bound the configuration puts on one saved cache.
pub fn configured_room(config: &CachesConfig) -> Room {
    Room {
        bytes: Some(config.max_size),
        entries: Some(config.max_entries),
    }
}

/// A copy's failure at `e.path` under `base`.
fn copy_error(base: &Path, e: &CopyError) -> String {
    match e.path.as_str() {
        "." => format!("{}: {}", base.display(), e.source),
        rel => format!("{}: {}", base.join(rel).display(), e.source),
    }
}

fn lock(path: &Path, how: FlockArg) -> io::Result<Flock<File>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(path)?;
    Flock::lock(file, how).map_err(|(_, e)| io::Error::from(e))
}

fn read_current(dir: &Path) -> Result<Option<Current>, String> {
    let path = dir.join("current");
    let bytes = match crate::fsutil::read_regular_capped(&path, 64 << 10) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let current: Current =
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let generation_ok = current
        .generation
        .strip_prefix("gen-")
        .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()));
    if !generation_ok {
        return Err(format!(
            "{}: generation {:?} is not a generation's name",
            path.display(),
            current.generation,
        ));
    }
    Ok(Some(current))
}

#[cfg(test)]
mod tests;
