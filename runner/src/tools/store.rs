//! The content-addressed tool store under `<state>/tools`.
//!
//! ```text
//! blobs/<sha256>                  verified downloads, 0444
//! trees/<sha256>-<format>[-...]/  unpacked, read-only (dirs 0555, files 0444/0555)
//! trees/<id>.digest               bulwark-tree-v2 digest of that tree, tool name and URL
//! tmp/                            downloads and unpacks in progress
//! locks/<sha256>.lock             flock: one process fetches a digest at a time
//! quarantine/                     entries verify_all found corrupt; never used again
//! ```
//!
//! A tree is published by renaming a finished, read-only directory into `trees/`, after its
//! digest file; a cache hit is the two existing, and costs two `stat`s: no request, no rehash.
//! The store is owned by the runner and nothing else writes it, so re-hashing on every job
//! would only cost time (a 256 MiB tool is ~150 ms); `verify_all` (`bulwark tools verify`) is
//! the explicit recheck. A download happens under an exclusive `flock` on
//! `locks/<sha256>.lock`, and the cache is checked again once the lock is held, so two
//! processes needing the same tool download it once: the second waits, then finds it.
//!
//! Alternatives rejected: keying trees by tool name (a renamed tool would be fetched again and
//! two names could not share a digest); hard-linking trees out of a shared object store like
//! OSTree (more moving parts for no gain at this scale); a lock per store (serializes
//! unrelated tools); lock files that are removed after use (a waiter could lock an unlinked
//! inode while a third process creates a new file, and both would proceed).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use bulwark_protocol::{check_name, check_sha256, ToolFormat, ToolSpec};
use nix::fcntl::{openat, readlinkat, Flock, FlockArg, OFlag};
use nix::sys::stat::Mode;
use sha2::{Digest, Sha256};

use super::archive::{self, ArchiveError, UnpackLimits, UnpackMode};
use super::fetch::{self, display_url, FetchError, FetchPolicy};
use crate::fsutil::{read_entries, remove_tree, Kind};
use crate::source::{tree_digest, TreeEntry, TREE_ALGORITHM};

/// Why a tool could not be made available. Displayed with its causes joined by `: `
/// (`anyhow`'s `{:#}`), e.g. `tool "jq": https://example.org/jq.tgz: HTTP 404`.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The store itself could not be opened or written.
    #[error("tool store {path}")]
    Store {
        /// The path that failed.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The spec's name, digest or format is unusable.
    #[error("tool {name:?}: {reason}")]
    Spec {
        /// Tool name.
        name: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The download failed.
    #[error("tool {name:?}: {url}")]
    Fetch {
        /// Tool name.
        name: String,
        /// The URL, without credentials.
        url: String,
        /// Cause.
        #[source]
        source: FetchError,
    },
    /// The download's digest is not the pinned one; nothing of it was kept.
    #[error("tool {name:?}: {url}: sha256 mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// Tool name.
        name: String,
        /// The URL, without credentials.
        url: String,
        /// The digest pinned by the spec.
        expected: String,
        /// The digest of what was served.
        actual: String,
    },
    /// The time for the job's inputs ([`FetchPolicy::deadline`]) ran out before this one was in.
    #[error("tool {name:?}: no time left to fetch it (the job's inputs must all be in within its timeout)")]
    OutOfTime {
        /// Tool name.
        name: String,
    },
    /// The verified download could not be unpacked.
    #[error("tool {name:?}: {url}")]
    Unpack {
        /// Tool name.
        name: String,
        /// The URL, without credentials.
        url: String,
        /// Cause.
        #[source]
        source: ArchiveError,
    },
}

/// A tool ready to be mounted. While this (or a clone) lives, [`Store::prune`] leaves the
/// tree alone: keep it until every process that could see the tree is gone.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// Tool name from the spec.
    pub name: String,
    /// URL from the spec (as given; never holds credentials, those are refused).
    pub url: String,
    /// The verified sha256 of the download.
    pub sha256: String,
    /// The read-only unpacked directory (for format `file`: holding one file named after the
    /// tool, mode 0555).
    pub dir: PathBuf,
    /// Whether it was already in the store (no request was made).
    pub cache_hit: bool,
    /// Whether this call downloaded the URL (so the URL served these bytes just now).
    /// False on a cache hit, and when a download another job left was unpacked.
    pub fetched: bool,
    /// The tree's shared lock, which keeps [`Store::prune`] from removing it.
    pub in_use: std::sync::Arc<InUse>,
}

/// A shared `flock` on an unpacked tree's directory: [`Store::prune`] removes a tree only under
/// an exclusive lock on it, so a tree is never removed while a job that mounted it runs.
#[derive(Debug)]
pub struct InUse {
    _lock: Flock<File>,
}

impl Resolved {
    /// The directory to put on the job's `PATH`, relative to the mount of [`Resolved::dir`]:
    /// `bin` when the tree has a `bin` directory, else the tree itself (`""`).
    pub fn path_entry(&self) -> &'static str {
        match fs::symlink_metadata(self.dir.join("bin")) {
            Ok(m) if m.is_dir() => "bin",
            _ => "",
        }
    }
}

/// One corrupt entry found by [`Store::verify_all`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Corrupt {
    /// `blobs/<sha256>` or `trees/<id>`.
    pub entry: String,
    /// The tool it was stored for, when recorded.
    pub tool: Option<String>,
    /// What was expected and found.
    pub problem: String,
    /// Where it was moved.
    pub quarantined: PathBuf,
}

/// What [`Store::verify_all`] checked and found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Blobs rehashed.
    pub blobs: u64,
    /// Trees rehashed.
    pub trees: u64,
    /// Corrupt entries, each moved to `quarantine/`.
    pub corrupt: Vec<Corrupt>,
}

/// One tree [`Store::prune`] removed (or, in a dry run, would remove).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pruned {
    /// `trees/<id>`.
    pub entry: String,
    /// The tool it was stored for, when recorded.
    pub tool: Option<String>,
    /// When a job last used it (its digest file's modification time).
    pub last_used: std::time::SystemTime,
    /// Bytes of regular files in it.
    pub bytes: u64,
}

/// What [`Store::prune`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Trees removed (or that would be, in a dry run).
    pub trees: Vec<Pruned>,
    /// Downloads removed because no tree of theirs is left, and their bytes.
    pub blobs: Vec<(String, u64)>,
    /// Leftovers of interrupted fetches removed from `tmp/`, and their bytes.
    pub leftovers: Vec<(String, u64)>,
    /// Trees unused long enough but held by a running job (or a fetch) now: kept.
    pub busy: Vec<String>,
    /// Trees used recently enough: kept.
    pub kept: u64,
}

impl PruneReport {
    /// Every byte removed (or that would be).
    pub fn bytes(&self) -> u64 {
        let trees: u64 = self.trees.iter().map(|t| t.bytes).sum();
        let others: u64 = self.blobs.iter().chain(&self.leftovers).map(|b| b.1).sum();
        trees + others
    }
}

/// The tool store.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

const DIGEST_SUFFIX: &str = ".digest";

impl Store {
    /// Opens (creating if needed) the store at `root`; the runner passes `<state>/tools`.
    pub fn open(root: &Path) -> Result<Store, ToolError> {
        let store_err = |path: &Path, source| ToolError::Store {
            path: path.to_owned(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(|e| store_err(root, e))?;
        let root = root.canonicalize().map_err(|e| store_err(root, e))?;
        for sub in ["blobs", "trees", "tmp", "locks", "quarantine"] {
            let dir = root.join(sub);
            match fs::DirBuilder::new().mode(0o700).create(&dir) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                    return Err(store_err(&dir, e))
                }
                _ => {}
            }
        }
        Ok(Store { root })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Returns the read-only unpacked directory of `tool`, fetching, verifying and unpacking
    /// it first when the store does not have it. Cache hit: no network request and no rehash.
    pub fn ensure(
        &self,
        tool: &ToolSpec,
        policy: &FetchPolicy,
        mode: UnpackMode,
    ) -> Result<Resolved, ToolError> {
        let name = tool.name.clone();
        let spec_err = |reason: String| ToolError::Spec {
            name: name.clone(),
            reason,
        };
        check_name(&tool.name).map_err(|e| spec_err(format!("name: {e}")))?;
        check_sha256(&tool.sha256).map_err(|e| spec_err(format!("sha256: {e}")))?;
        let format = tool.effective_format().ok_or_else(|| {
            spec_err(format!(
                "{}: the format cannot be inferred from the URL; set format = \"tar.gz\", \"tar.xz\", \"zip\" or \"file\"",
                display_url(&tool.url)
            ))
        })?;
        let id = tree_id(&tool.sha256, format, &tool.name, mode);
        let resolved = |cache_hit, fetched, in_use| Resolved {
            name: tool.name.clone(),
            url: tool.url.clone(),
            sha256: tool.sha256.clone(),
            dir: self.root.join("trees").join(&id),
            cache_hit,
            fetched,
            in_use: std::sync::Arc::new(in_use),
        };
        if let Some(held) = self.hold_tree(&id)? {
            return Ok(resolved(true, false, held));
        }
        // Anything past a cache hit takes time: within what is left of the job's inputs'
        // deadline, asked again after each wait (the lock, the download).
        let out_of_time = || ToolError::OutOfTime {
            name: tool.name.clone(),
        };
        let in_time = |policy: &FetchPolicy| policy.within_deadline().ok_or_else(out_of_time);
        let policy = &in_time(policy)?;
        let _lock = match policy.deadline {
            None => self.lock(&tool.sha256)?,
            Some(deadline) => self
                .lock_before(&tool.sha256, deadline)?
                .ok_or_else(out_of_time)?,
        };
        if let Some(held) = self.hold_tree(&id)? {
            return Ok(resolved(true, false, held));
        }
        let policy = &in_time(policy)?;
        self.clean_tmp(&tool.sha256);
        let blob = self.root.join("blobs").join(&tool.sha256);
        // A stored download about to be unpacked again (its tree is gone, e.g. quarantined) is
        // rehashed first: only a true cache hit skips the check. One that fails it is set
        // aside (or removed) before anything else; if it cannot be, the tool is refused, never
        // unpacked from bytes that do not have its digest.
        if blob.exists() && hash_file(&blob).ok().as_deref() != Some(tool.sha256.as_str()) {
            self.set_aside(&blob, "blob")?;
        }
        let fetched_now = !blob.exists();
        if fetched_now {
            self.download(tool, policy, &blob)?;
        }
        // A verified download is kept even when no time is left to unpack it.
        let policy = &in_time(policy)?;
        let result = self.unpack_and_publish(tool, &id, &blob, format, mode, policy);
        if result.is_err() && fetched_now {
            let _ = fs::remove_file(&blob);
        }
        result?;
        // Published under the digest's lock, which prune also takes: it is still there.
        let held = self.hold_tree(&id)?.ok_or_else(|| {
            self.store_err(self.root.join("trees").join(&id))(io::Error::other(
                "the tree just unpacked is gone",
            ))
        })?;
        Ok(resolved(false, fetched_now, held))
    }

    /// Fetches `tool.url` and checks that it serves `tool.sha256`, keeping nothing. For a
    /// job's `[source] url`, whose URL, not only its bytes, provenance records and a
    /// verification policy's `source_uris` judges: otherwise a store holding the digest
    /// (fetched by another job, maybe an untrusted one, from anywhere) would satisfy a spec
    /// naming any URL at all, and the statement would say the source came from there.
    pub fn confirm_origin(&self, tool: &ToolSpec, policy: &FetchPolicy) -> Result<(), ToolError> {
        let url = display_url(&tool.url);
        let policy = policy
            .within_deadline()
            .ok_or_else(|| ToolError::OutOfTime {
                name: tool.name.clone(),
            })?;
        let mut sink = OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .map_err(self.store_err(PathBuf::from("/dev/null")))?;
        let got =
            fetch::fetch(&tool.url, &policy, &mut sink).map_err(|source| ToolError::Fetch {
                name: tool.name.clone(),
                url: url.clone(),
                source,
            })?;
        if got.sha256 != tool.sha256 {
            return Err(ToolError::DigestMismatch {
                name: tool.name.clone(),
                url,
                expected: tool.sha256.clone(),
                actual: got.sha256,
            });
        }
        Ok(())
    }

    /// A published tree `id`, held: a shared lock on its directory, taken and then checked to
    /// be still the directory published under that name, with its digest file. `None` when
    /// there is no such tree (never published, or pruned meanwhile).
    ///
    /// Records the use: the digest file's modification time is when a job last used the tree,
    /// which is what [`Store::prune`] goes by.
    fn hold_tree(&self, id: &str) -> Result<Option<InUse>, ToolError> {
        use std::os::unix::fs::MetadataExt;
        let trees = self.root.join("trees");
        let path = trees.join(id);
        let dir = match OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(dir) => dir,
            // ENOTDIR, ELOOP: something else under the tree's name, never trusted; the fetch
            // path quarantines it.
            Err(_) => return Ok(None),
        };
        let lock = Flock::lock(dir, FlockArg::LockShared)
            .map_err(|(_, errno)| self.store_err(path.clone())(errno.into()))?;
        let opened = lock.metadata().map_err(self.store_err(path.clone()))?;
        let same = fs::symlink_metadata(&path)
            .is_ok_and(|m| m.dev() == opened.dev() && m.ino() == opened.ino());
        let digest = trees.join(format!("{id}{DIGEST_SUFFIX}"));
        let Ok(record) = OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&digest)
        else {
            return Ok(None);
        };
        if !same || !record.metadata().is_ok_and(|m| m.is_file()) {
            return Ok(None);
        }
        // Best effort: a store the runner cannot write would refuse the fetch path anyway.
        let _ = record.set_modified(std::time::SystemTime::now());
        Ok(Some(InUse { _lock: lock }))
    }

    fn store_err(&self, path: PathBuf) -> impl Fn(io::Error) -> ToolError {
        move |source| ToolError::Store {
            path: path.clone(),
            source,
        }
    }

    /// Takes the exclusive lock of one digest, waiting for another process holding it.
    fn lock(&self, sha256: &str) -> Result<Flock<File>, ToolError> {
        let (file, path) = self.lock_file(sha256)?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| self.store_err(path)(errno.into()))
    }

    /// Takes the exclusive lock of one digest if no one holds it.
    fn try_lock(&self, sha256: &str) -> Result<Option<Flock<File>>, ToolError> {
        let (file, _) = self.lock_file(sha256)?;
        Ok(Flock::lock(file, FlockArg::LockExclusiveNonblock).ok())
    }

    /// `locks/<sha256>.lock`, opened (created when missing; never removed).
    fn lock_file(&self, sha256: &str) -> Result<(File, PathBuf), ToolError> {
        let path = self.root.join("locks").join(format!("{sha256}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(self.store_err(path.clone()))?;
        Ok((file, path))
    }

    /// [`Store::lock`], waiting no later than `deadline`: `None` when another process still
    /// holds it then.
    fn lock_before(
        &self,
        sha256: &str,
        deadline: std::time::Instant,
    ) -> Result<Option<Flock<File>>, ToolError> {
        let (file, path) = self.lock_file(sha256)?;
        crate::fsutil::lock_until(file, deadline)
            .map_err(|errno| self.store_err(path)(errno.into()))
    }

    /// Removes what a process that died while holding this digest's lock left in `tmp/`.
    fn clean_tmp(&self, sha256: &str) {
        let Ok(entries) = fs::read_dir(self.root.join("tmp")) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(sha256) {
                let _ = remove_tree(&entry.path());
            }
        }
    }

    fn download(
        &self,
        tool: &ToolSpec,
        policy: &FetchPolicy,
        blob: &Path,
    ) -> Result<(), ToolError> {
        let url = display_url(&tool.url);
        let tmp = self.root.join("tmp").join(format!(
            "{}.{}.download",
            tool.sha256,
            crate::fsutil::random_hex(8)
        ));
        let io_err = self.store_err(tmp.clone());
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(&io_err)?;
        // No fsync: it would double the cold-fetch time, and a blob or tree cut short by a
        // power loss is exactly what `verify_all` finds and quarantines (docs/tools.md).
        let result = fetch::fetch(&tool.url, policy, &mut file)
            .map_err(|source| ToolError::Fetch {
                name: tool.name.clone(),
                url: url.clone(),
                source,
            })
            .and_then(|got| {
                if got.sha256 == tool.sha256 {
                    Ok(())
                } else {
                    Err(ToolError::DigestMismatch {
                        name: tool.name.clone(),
                        url: url.clone(),
                        expected: tool.sha256.clone(),
                        actual: got.sha256,
                    })
                }
            })
            .and_then(|()| {
                file.set_permissions(fs::Permissions::from_mode(0o444))
                    .and_then(|()| fs::rename(&tmp, blob))
                    .map_err(&io_err)
            });
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    fn unpack_and_publish(
        &self,
        tool: &ToolSpec,
        id: &str,
        blob: &Path,
        format: ToolFormat,
        mode: UnpackMode,
        policy: &FetchPolicy,
    ) -> Result<(), ToolError> {
        let tmp = self
            .root
            .join("tmp")
            .join(format!("{id}.{}", crate::fsutil::random_hex(8)));
        let io_err = self.store_err(tmp.clone());
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .map_err(&io_err)?;
        let result = (|| {
            let size = fs::metadata(blob)
                .map_err(self.store_err(blob.to_path_buf()))?
                .len();
            let limits = UnpackLimits::for_download(policy.max_bytes, size, policy.timeout)
                .within_room(
                    policy.room.bytes.map(|r| r.saturating_sub(size)),
                    policy.room.entries,
                );
            archive::unpack(blob, format, &tool.name, &tmp, mode, limits).map_err(|source| {
                ToolError::Unpack {
                    name: tool.name.clone(),
                    url: display_url(&tool.url),
                    source,
                }
            })?;
            let digest = if format == ToolFormat::File {
                // One file, copied from the verified blob: its digest is known, no rehash.
                tree_digest(&[TreeEntry {
                    path: tool.name.clone().into_bytes(),
                    kind: 'x',
                    content: tool.sha256.clone().into_bytes(),
                }])
            } else {
                digest_tree(&tmp).map_err(&io_err)?
            };
            archive::make_read_only(&tmp).map_err(&io_err)?;
            let trees = self.root.join("trees");
            let digest_file = trees.join(format!("{id}{DIGEST_SUFFIX}"));
            let record = format!(
                "{TREE_ALGORITHM} {digest}\ntool {}\nurl {}\n",
                tool.name,
                display_url(&tool.url)
            );
            let target = trees.join(id);
            if fs::symlink_metadata(&target).is_ok() {
                // A tree without its digest file: never trusted, set aside. Before the digest
                // file is written: the other way round, a failure here would leave this tree
                // beside a digest file, which is what a cache hit takes for a published tree.
                self.set_aside(&target, "tree")?;
            }
            crate::fsutil::write_atomic(&digest_file, record.as_bytes())
                .map_err(self.store_err(digest_file.clone()))?;
            // Moving a directory to another parent rewrites its `..`, which needs write
            // permission on it for anyone but root: open the top level for the rename only
            // (everything inside stays read-only; the store itself is the runner's alone).
            let top = |mode| fs::set_permissions(&tmp, fs::Permissions::from_mode(mode));
            top(0o755).map_err(self.store_err(tmp.clone()))?;
            fs::rename(&tmp, &target).map_err(self.store_err(target.clone()))?;
            fs::set_permissions(&target, fs::Permissions::from_mode(0o555))
                .map_err(self.store_err(target))
        })();
        if result.is_err() {
            let _ = remove_tree(&tmp);
        }
        result
    }

    /// Takes an entry that must not be used out of its place: into `quarantine/`, or, when
    /// that fails (a full disk, a broken `quarantine/`), removed. An error means it is still
    /// there, and the caller must not go on to use or trust what is under that name.
    fn set_aside(&self, path: &Path, kind: &str) -> Result<(), ToolError> {
        let Err(moving) = self.quarantine(path, kind) else {
            return Ok(());
        };
        tracing::warn!(
            path = %path.display(),
            error = %moving,
            "cannot move a corrupt store entry to quarantine; removing it"
        );
        let _ = remove_tree(path);
        match fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.store_err(path.to_path_buf())(e)),
            Ok(_) => Err(self.store_err(path.to_path_buf())(io::Error::other(
                format!(
                    "a corrupt entry can be neither moved to quarantine ({moving}) nor removed"
                ),
            ))),
        }
    }

    fn quarantine(&self, path: &Path, kind: &str) -> io::Result<PathBuf> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let dest = self.root.join("quarantine").join(format!(
            "{kind}-{name}-{stamp}-{}",
            crate::fsutil::random_hex(4)
        ));
        // A read-only directory can only change parent when writable (its `..` is rewritten).
        let is_dir = fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
        if is_dir {
            fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
        }
        fs::rename(path, &dest)?;
        if is_dir {
            fs::set_permissions(&dest, fs::Permissions::from_mode(0o555))?;
        }
        Ok(dest)
    }

    /// Removes what no job has used for `unused_for`: unpacked trees whose last use (their
    /// digest file's modification time, set by every job that used them) is older, then the
    /// downloads none of whose trees is left, and what interrupted fetches left in `tmp/`.
    /// With `dry_run`, only reports.
    ///
    /// Never removes a tree a running job holds ([`InUse`]: its mount would lose its files) or
    /// anything of a digest being fetched: both locks are tried without waiting, and what is
    /// busy is kept and reported. A tree is first renamed out of `trees/` under both locks (so
    /// a job arriving later sees no tree and fetches it anew), then removed.
    /// `quarantine/` is left alone: its entries are evidence for the operator to look at.
    pub fn prune(
        &self,
        unused_for: std::time::Duration,
        dry_run: bool,
    ) -> Result<PruneReport, ToolError> {
        let mut report = PruneReport::default();
        let cutoff = std::time::SystemTime::now()
            .checked_sub(unused_for)
            .unwrap_or(std::time::UNIX_EPOCH);
        let trees = self.root.join("trees");
        for entry in sorted_names(&trees).map_err(self.store_err(trees.clone()))? {
            if entry.ends_with(DIGEST_SUFFIX) {
                continue;
            }
            let sha = entry.split('-').next().unwrap_or("").to_owned();
            if check_sha256(&sha).is_err() {
                continue; // not the store's: never touched
            }
            let digest_file = trees.join(format!("{entry}{DIGEST_SUFFIX}"));
            let last_used = |p: &Path| fs::symlink_metadata(p).and_then(|m| m.modified()).ok();
            // A tree without its digest file was never published whole: its own age counts.
            let recent = |p: &Path, tree: &Path| {
                last_used(p)
                    .or_else(|| last_used(tree))
                    .is_none_or(|t| t > cutoff)
            };
            let path = trees.join(&entry);
            if recent(&digest_file, &path) {
                report.kept += 1;
                continue;
            }
            let Some(_fetching) = self.try_lock(&sha)? else {
                report.busy.push(format!("trees/{entry}"));
                continue;
            };
            let Ok(dir) = OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_NOFOLLOW)
                .open(&path)
            else {
                continue;
            };
            let _held = match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => lock,
                Err(_) => {
                    report.busy.push(format!("trees/{entry}"));
                    continue;
                }
            };
            // A job that used it since the listing has finished (its shared lock is gone)
            // and counts as a use.
            if recent(&digest_file, &path) {
                report.kept += 1;
                continue;
            }
            let tool = fs::read_to_string(&digest_file).ok().and_then(|r| {
                r.lines()
                    .find_map(|l| l.strip_prefix("tool "))
                    .map(str::to_owned)
            });
            report.trees.push(Pruned {
                entry: format!("trees/{entry}"),
                tool,
                last_used: last_used(&digest_file)
                    .or_else(|| last_used(&path))
                    .unwrap_or(std::time::UNIX_EPOCH),
                bytes: tree_bytes(&path),
            });
            if dry_run {
                continue;
            }
            // Out of `trees/` first, then the digest file: `hold_tree` then finds nothing.
            let away = self
                .root
                .join("tmp")
                .join(format!("{sha}.{}.pruned", crate::fsutil::random_hex(8)));
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                .and_then(|()| fs::rename(&path, &away))
                .map_err(self.store_err(path.clone()))?;
            let _ = fs::remove_file(&digest_file);
            drop(_held);
            remove_tree(&away).map_err(self.store_err(away))?;
        }
        // Downloads with no tree left, and leftovers of interrupted fetches, per digest.
        let mut digests: Vec<String> = Vec::new();
        for dir in ["blobs", "tmp"] {
            let path = self.root.join(dir);
            for name in sorted_names(&path).map_err(self.store_err(path.clone()))? {
                let sha: String = name.chars().take(64).collect();
                if check_sha256(&sha).is_ok() && !digests.contains(&sha) {
                    digests.push(sha);
                }
            }
        }
        for sha in digests {
            let Some(_fetching) = self.try_lock(&sha)? else {
                continue;
            };
            let blob = self.root.join("blobs").join(&sha);
            // Listed again under the lock: a tree published meanwhile counts.
            let prefix = format!("{sha}-");
            let trees_left = sorted_names(&trees)
                .map_err(self.store_err(trees.clone()))?
                .iter()
                .any(|t| {
                    t.starts_with(&prefix)
                        && !t.ends_with(DIGEST_SUFFIX)
                        && !report.trees.iter().any(|p| p.entry == format!("trees/{t}"))
                });
            if !trees_left {
                if let Ok(meta) = fs::symlink_metadata(&blob) {
                    report.blobs.push((format!("blobs/{sha}"), meta.len()));
                    if !dry_run {
                        fs::remove_file(&blob).map_err(self.store_err(blob.clone()))?;
                    }
                }
            }
            // Under the digest's lock nothing is being fetched: whatever is in tmp/ for it
            // was left by a process that died (our own pruned trees are gone already).
            let tmp = self.root.join("tmp");
            for name in sorted_names(&tmp).map_err(self.store_err(tmp.clone()))? {
                if name.starts_with(&sha) {
                    let path = tmp.join(&name);
                    report
                        .leftovers
                        .push((format!("tmp/{name}"), tree_bytes(&path)));
                    if !dry_run {
                        remove_tree(&path).map_err(self.store_err(path))?;
                    }
                }
            }
        }
        Ok(report)
    }

    /// Rechecks every entry: rehashes each blob against its name and each unpacked tree
    /// against the digest recorded when it was unpacked. Corrupt entries are moved to
    /// `quarantine/` (never used again; the next `ensure` fetches anew) and reported.
    pub fn verify_all(&self) -> Result<VerifyReport, ToolError> {
        let mut report = VerifyReport::default();
        let blobs = self.root.join("blobs");
        for entry in sorted_names(&blobs).map_err(self.store_err(blobs.clone()))? {
            let path = blobs.join(&entry);
            let sha = entry.clone();
            let _lock = check_sha256(&sha)
                .ok()
                .map(|()| self.lock(&sha))
                .transpose()?;
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            report.blobs += 1;
            // An entry that cannot be rehashed is reported and set aside like a changed one
            // (the next job fetches it anew), and the check goes on: stopping at it would
            // leave every entry after it unchecked.
            let problem = match meta.is_file().then(|| hash_file(&path)) {
                None => format!("sha256 mismatch: expected {sha}, got not a regular file"),
                Some(Err(e)) => format!("cannot be rehashed: {e}"),
                Some(Ok(actual)) if actual != sha => {
                    format!("sha256 mismatch: expected {sha}, got {actual}")
                }
                Some(Ok(_)) => continue,
            };
            let quarantined = self
                .quarantine(&path, "blob")
                .map_err(self.store_err(path))?;
            report.corrupt.push(Corrupt {
                entry: format!("blobs/{entry}"),
                tool: None,
                problem,
                quarantined,
            });
        }
        let trees = self.root.join("trees");
        for entry in sorted_names(&trees).map_err(self.store_err(trees.clone()))? {
            if entry.ends_with(DIGEST_SUFFIX) {
                continue;
            }
            let path = trees.join(&entry);
            let sha = entry.split('-').next().unwrap_or("").to_owned();
            let _lock = check_sha256(&sha)
                .ok()
                .map(|()| self.lock(&sha))
                .transpose()?;
            if fs::symlink_metadata(&path).is_err() {
                continue;
            }
            report.trees += 1;
            let digest_file = trees.join(format!("{entry}{DIGEST_SUFFIX}"));
            let record = fs::read_to_string(&digest_file).unwrap_or_default();
            let expected = record
                .lines()
                // Records from before v2 are checked against the v2 digest too: it equals
                // v1 for every tree whose names hold no backslash or newline.
                .find_map(|l| {
                    l.strip_prefix(TREE_ALGORITHM)
                        .or_else(|| l.strip_prefix("bulwark-tree-v1"))
                })
                .map(|d| d.trim().to_owned());
            let tool = record
                .lines()
                .find_map(|l| l.strip_prefix("tool "))
                .map(str::to_owned);
            let problem = match (expected, digest_tree(&path)) {
                (_, Err(e)) => format!("cannot be rehashed: {e}"),
                (None, Ok(_)) => "no recorded tree digest".to_owned(),
                (Some(e), Ok(actual)) if e != actual => {
                    format!("tree digest mismatch: expected {e}, got {actual}")
                }
                (Some(_), Ok(_)) => continue,
            };
            let quarantined = self
                .quarantine(&path, "tree")
                .map_err(self.store_err(path))?;
            if digest_file.exists() {
                let _ = self.quarantine(&digest_file, "tree");
            }
            report.corrupt.push(Corrupt {
                entry: format!("trees/{entry}"),
                tool,
                problem,
                quarantined,
            });
        }
        Ok(report)
    }
}

/// Bytes of the regular files under `path` (not following links); what cannot be read counts 0.
fn tree_bytes(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    if meta.is_file() {
        return meta.len();
    }
    if !meta.is_dir() {
        return 0;
    }
    fs::read_dir(path)
        .map(|entries| entries.flatten().map(|e| tree_bytes(&e.path())).sum())
        .unwrap_or(0)
}

/// The name of a tree: its download's digest and format; a single file also by its name (it
/// is stored as `<name>`), and a root filesystem apart (devices skipped, bits stripped).
fn tree_id(sha256: &str, format: ToolFormat, name: &str, mode: UnpackMode) -> String {
    let mut id = format!("{sha256}-{}", format.as_str());
    if format == ToolFormat::File {
        id.push('-');
        id.push_str(name);
    }
    if mode == UnpackMode::Rootfs {
        id.push_str("-rootfs");
    }
    id
}

fn sorted_names(dir: &Path) -> io::Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

fn hash_file(path: &Path) -> io::Result<String> {
    let mut file = File::open(path)?;
    hash_reader(&mut file)
}

fn hash_reader(reader: &mut impl Read) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(crate::outputs::hex(&hasher.finalize()))
}

/// The `bulwark-tree-v2` digest (docs/build-type.md) of an unpacked tree, walked through
/// descriptors without following symlinks. Anything but a directory, file or symlink (which
/// unpacking never creates) is recorded with kind `?`, so it changes the digest.
pub fn digest_tree(dir: &Path) -> io::Result<String> {
    let root: OwnedFd = File::open(dir)?.into();
    let mut entries = Vec::new();
    walk(&root, b"", &mut entries, 0)?;
    Ok(tree_digest(&entries))
}

fn walk(dir: &OwnedFd, prefix: &[u8], out: &mut Vec<TreeEntry>, depth: usize) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    if depth > archive::MAX_DEPTH {
        return Err(io::Error::other("tree too deep"));
    }
    let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    for entry in read_entries(dir)? {
        // Bytes, not text: two names that differ only in bytes that are not UTF-8 are two
        // names (the digest escapes such bytes).
        let name = entry.name.as_bytes();
        let path = if prefix.is_empty() {
            name.to_vec()
        } else {
            [prefix, b"/", name].concat()
        };
        let (kind, content) = match entry.kind {
            Kind::Dir => {
                let child = openat(dir, entry.name.as_os_str(), dir_flags, Mode::empty())?;
                walk(&child, &path, out, depth + 1)?;
                ('d', Vec::new())
            }
            Kind::File => {
                let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                let fd = openat(dir, entry.name.as_os_str(), flags, Mode::empty())?;
                let kind = if entry.mode & 0o111 != 0 { 'x' } else { 'f' };
                (kind, hash_reader(&mut File::from(fd))?.into_bytes())
            }
            Kind::Symlink => {
                let target = readlinkat(dir, entry.name.as_os_str())?;
                ('l', target.as_bytes().to_vec())
            }
            other => ('?', other.name().as_bytes().to_vec()),
        };
        out.push(TreeEntry {
            path,
            kind,
            content,
        });
    }
    Ok(())
}
