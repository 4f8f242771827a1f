//! The disk reserve (`limits.min_free_disk`): a job may not take the last of a filesystem.
//!
//! A job writes its workspace and `/tmp` on the filesystem of the runner's job directories;
//! without a bound, one job (an untrusted pull request, or a build that loops) fills it, and
//! every other job on the host and every service that writes there fails with it, for as long
//! as the job is allowed to run. The runner's own writes (`result.json`, provenance) would
//! still succeed only as long as root's reserved blocks last.
//!
//! What this does:
//! - before a job starts, the filesystem must have more than the reserve available (else the
//!   job is refused, exit 2);
//! - what the runner writes for the job before it runs is bounded by the room above the
//!   reserve: each tool, root filesystem and url source (download and unpacked tree, which
//!   stay in the tool store after the job) and a git source (the checkout) is refused when it
//!   would take more, and so is a source copied into the workspace (local or from the store);
//! - while the job runs, the runner checks every [`INTERVAL`] from the loop that reads the
//!   job's log; when the filesystem is below the reserve, the job is stopped (its sandbox
//!   killed, its directory removed). Which job filled it cannot be told from the free space,
//!   and every job on that filesystem is stopped alike, so none is failed as if by its own
//!   doing: the result is the runner's failure (`runner-error`, exit 3, as DESIGN.md counts a
//!   full disk; a refusal, exit 2, before any step ran), with the reason;
//! - before outputs are copied, the output directory's filesystem must hold them and still
//!   keep the reserve (else the job fails, exit 1: it is this job's outputs that would cross).
//!
//! Alternatives rejected:
//! - project quotas (ext4 `prjquota`, XFS `pquota`) would be a hard per-job bound, but they
//!   need a filesystem feature and mount option few hosts have, and root; a filesystem image
//!   per job needs loop devices and root and costs a `mkfs` per job. Both would leave rootless
//!   runners unprotected;
//! - measuring each job's usage (as Kubernetes' kubelet does for ephemeral storage) means
//!   walking the workspace over and over; the reserve protects what matters on a shared
//!   host, the space everyone else needs, with one `statvfs` per check.
//!
//! The limit is a threshold, not a quota. Between two checks a job can write what the disk
//! takes in [`INTERVAL`] (at 2 GB/s, 200 MB), and with `fallocate` (allowed: builds and
//! package tools use it) it can reserve every free block at once; either way the space is
//! gone for other writers until the check stops the job and its directory is removed, at
//! most [`INTERVAL`] and the removal later. So the reserve protects the host from a job that
//! keeps what it took, not from a moment of ENOSPC. "Available" is what unprivileged users
//! may still use (`f_bavail`): job processes are never root on the host.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bulwark_protocol::DiskReserve;

/// How often the runner checks while a job runs.
pub const INTERVAL: Duration = Duration::from_millis(100);

/// `bytes` for a person: exact in the largest binary unit that divides it (`256MiB`), else to
/// one decimal in the largest unit it reaches (`42.6GiB`).
pub fn human(bytes: u64) -> String {
    const UNITS: [(&str, u64); 5] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("B", 1),
    ];
    let (name, size) = UNITS
        .iter()
        .copied()
        .find(|(_, size)| bytes >= *size)
        .unwrap_or(("B", 1));
    if bytes % size == 0 {
        format!("{}{name}", bytes / size)
    } else {
        format!("{:.1}{name}", bytes as f64 / size as f64)
    }
}

/// The reserve to keep on one filesystem.
#[derive(Debug, Clone)]
pub struct Reserve {
    path: PathBuf,
    setting: DiskReserve,
}

/// A filesystem with less available than its reserve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    /// The directory whose filesystem was checked.
    pub path: PathBuf,
    /// Bytes available to unprivileged users.
    pub available: u64,
    /// Bytes that must stay available.
    pub need: u64,
    /// `limits.min_free_disk` as configured.
    pub setting: DiskReserve,
    /// Bytes the check was asked to leave room for (outputs to copy), if any.
    pub writing: u64,
}

impl fmt::Display for Shortfall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let setting = match self.setting {
            DiskReserve::Percent(_) => format!("{} ({})", self.setting, human(self.need)),
            _ => self.setting.to_string(),
        };
        if self.writing > 0 {
            write!(
                f,
                "writing {} to {} would leave less than limits.min_free_disk = {setting} available on its filesystem ({} available)",
                human(self.writing),
                self.path.display(),
                human(self.available)
            )
        } else {
            write!(
                f,
                "the filesystem of {} has {} available, below limits.min_free_disk = {setting}",
                self.path.display(),
                human(self.available)
            )
        }
    }
}

/// What the filesystem holding `path` has available, and keeps under `setting` (nothing when
/// it is off).
pub fn space_at(path: &Path, setting: DiskReserve) -> Result<Space, CheckError> {
    Reserve {
        path: path.to_path_buf(),
        setting,
    }
    .space()
}

impl Reserve {
    /// The reserve `setting` on the filesystem holding `path`; `None` when it is off.
    pub fn new(path: &Path, setting: DiskReserve) -> Option<Reserve> {
        (setting != DiskReserve::Off).then(|| Reserve {
            path: path.to_path_buf(),
            setting,
        })
    }

    /// The directory whose filesystem is checked.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the filesystem has available and must keep, in bytes and in inodes.
    pub fn space(&self) -> Result<Space, CheckError> {
        let st = nix::sys::statvfs::statvfs(&self.path).map_err(|e| CheckError::Statvfs {
            path: self.path.clone(),
            source: e.into(),
        })?;
        let frsize = st.fragment_size();
        let total = st.blocks().saturating_mul(frsize);
        // Inodes run out too (a tool of a hundred thousand empty files is a few hundred
        // kilobytes): the same share is kept of them, or 1% when the reserve is a size.
        // A filesystem that reports no inode count (btrfs) has no such limit to keep.
        let inodes = (st.files() > 0).then(|| {
            let share = match self.setting {
                DiskReserve::Percent(p) => u64::from(p),
                DiskReserve::Off => 0,
                DiskReserve::Bytes(_) => 1,
            };
            (st.files_available(), st.files() / 100 * share)
        });
        Ok(Space {
            available: st.blocks_available().saturating_mul(frsize),
            need: self.setting.bytes_of(total).unwrap_or(0),
            inodes,
        })
    }

    /// Checks that `writing` more bytes still leave the reserve available, in bytes and in
    /// inodes.
    pub fn check(&self, writing: u64) -> Result<(), CheckError> {
        self.judge(&self.space()?, writing)
    }

    /// [`Reserve::check`] on a `space` already measured.
    pub fn judge(&self, space: &Space, writing: u64) -> Result<(), CheckError> {
        if space.available.saturating_sub(writing) < space.need {
            return Err(CheckError::Short(Shortfall {
                path: self.path.clone(),
                available: space.available,
                need: space.need,
                setting: self.setting,
                writing,
            }));
        }
        if let Some((available, need)) = space.inodes.filter(|(a, n)| a < n) {
            return Err(CheckError::Inodes {
                path: self.path.clone(),
                available,
                need,
                setting: self.setting,
            });
        }
        Ok(())
    }
}

/// What may still be written on a filesystem above the reserve: bytes of file content and
/// entries (inodes); `None` for no bound. Handed to everything the runner writes for a job
/// before it runs (downloads, unpacked trees, git checkouts, source copies).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Room {
    /// Bytes.
    pub bytes: Option<u64>,
    /// Entries (files, directories, symlinks).
    pub entries: Option<u64>,
}

/// What a filesystem has available and must keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Bytes available to unprivileged users.
    pub available: u64,
    /// Bytes to keep.
    pub need: u64,
    /// Inodes available to unprivileged users and inodes to keep, where the filesystem counts
    /// them.
    pub inodes: Option<(u64, u64)>,
}

impl Space {
    /// What may still be written above the reserve.
    pub fn room(&self) -> Room {
        Room {
            bytes: Some(self.available.saturating_sub(self.need)),
            entries: self.inodes.map(|(a, n)| a.saturating_sub(n)),
        }
    }
}

/// Why a check did not pass.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// Below the reserve.
    #[error("{0}")]
    Short(Shortfall),
    /// Below the reserve in inodes.
    #[error("the filesystem of {} has {available} inodes available, below the {need} that limits.min_free_disk = {setting} keeps free", path.display())]
    Inodes {
        path: PathBuf,
        available: u64,
        need: u64,
        setting: DiskReserve,
    },
    /// The filesystem could not be asked: fails closed like a shortfall.
    #[error("cannot check the space available on the filesystem of {}: {source}", path.display())]
    Statvfs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn available_here() -> (u64, u64) {
        let st = nix::sys::statvfs::statvfs(&std::env::temp_dir()).unwrap();
        (
            st.blocks_available() * st.fragment_size(),
            st.blocks() * st.fragment_size(),
        )
    }

    /// What the daemon's metrics read: with the reserve off, nothing is kept, in bytes or in
    /// inodes; with a size, 1% of the inodes as well.
    #[test]
    fn the_space_read_with_the_reserve_off_keeps_nothing() {
        let tmp = std::env::temp_dir();
        let off = space_at(&tmp, DiskReserve::Off).unwrap();
        assert_eq!(off.need, 0);
        assert!(off.available > 0);
        if let Some((available, keep)) = off.inodes {
            assert!(available > 0);
            assert_eq!(keep, 0);
        }
        let sized = space_at(&tmp, DiskReserve::Bytes(1 << 20)).unwrap();
        assert_eq!(sized.need, 1 << 20);
        if let (Some((_, keep)), Some(total)) = (
            sized.inodes,
            nix::sys::statvfs::statvfs(&tmp).ok().map(|s| s.files()),
        ) {
            assert_eq!(keep, total / 100);
        }
    }

    #[test]
    fn sizes_for_people_are_exact_when_they_can_be() {
        assert_eq!(human(0), "0B");
        assert_eq!(human(256 << 20), "256MiB");
        assert_eq!(human((42 << 30) + (600 << 20)), "42.6GiB");
        assert_eq!(human(1536), "1.5KiB");
    }

    #[test]
    fn off_is_no_reserve() {
        assert!(Reserve::new(Path::new("/"), DiskReserve::Off).is_none());
    }

    #[test]
    fn a_reserve_above_what_is_available_is_a_shortfall_naming_the_key() {
        let (_, total) = available_here();
        let r = Reserve::new(&std::env::temp_dir(), DiskReserve::Bytes(total + 1)).unwrap();
        let err = r.check(0).unwrap_err();
        let CheckError::Short(s) = &err else {
            panic!("{err}")
        };
        assert_eq!(s.need, total + 1);
        let text = err.to_string();
        assert!(
            text.contains("available, below limits.min_free_disk = "),
            "{text}"
        );
    }

    #[test]
    fn bytes_about_to_be_written_count_against_the_reserve() {
        let (available, _) = available_here();
        let r = Reserve::new(&std::env::temp_dir(), DiskReserve::Bytes(1)).unwrap();
        r.check(0).unwrap();
        let err = r.check(available).unwrap_err().to_string();
        assert!(
            err.starts_with("writing ") && err.contains("would leave less than"),
            "{err}"
        );
    }

    #[test]
    fn inodes_are_kept_like_bytes() {
        let r = Reserve::new(&std::env::temp_dir(), DiskReserve::Percent(5)).unwrap();
        let space = r.space().unwrap();
        if let Some((available, need)) = space.inodes {
            assert!(need > 0 && available > need, "{space:?}");
            assert_eq!(space.room().entries, Some(available - need));
        } else {
            eprintln!("SKIP part: this filesystem reports no inode count");
        }
    }

    #[test]
    fn a_missing_directory_fails_closed() {
        let r = Reserve::new(Path::new("/nonexistent/bulwark"), DiskReserve::Percent(5)).unwrap();
        assert!(matches!(r.check(0), Err(CheckError::Statvfs { .. })));
    }
}
