//! A job's disk: `/workspace` and `/tmp` on a filesystem of their own, of a fixed size.
//!
//! Without it a job writes to the host's state filesystem, bounded only by the runner's
//! free-space reserve, a threshold checked every 100 ms: one job can take the room every
//! other job on the host would have used, or all of it at once with `fallocate`. A real bound
//! needs the kernel to refuse the write that goes over. The ways to get that:
//!
//! - project quotas (ext4 or XFS): only where the filesystem was made and mounted for them
//!   (`prjquota`), and only on kernels built with quota formats (these machines' kernel has
//!   `CONFIG_QUOTA` but not `CONFIG_QFMT_V2`, so ext4 refuses to mount with quotas at all);
//! - a size-limited tmpfs: works everywhere, rootless too, but the job's files then live in
//!   RAM, charged to its memory limit; a build's multi-gigabyte target directory does not
//!   belong there;
//! - a filesystem image per job, which is what this module does: a file of exactly the
//!   limit's size, **preallocated** (`fallocate`, so the space is the job's from the start and
//!   the host's filesystem can never be filled past it by the job), formatted fresh
//!   (`mkfs.ext4`, without a journal: nothing on it outlives the job), attached to a loop
//!   device and mounted `nosuid,nodev,noatime` at `<job dir>/disk`, with `workspace/` and
//!   `tmp/` inside. A write past the size fails with ENOSPC in the job, and only in the job.
//!
//! Costs and limits: root only (loop devices and mounting ext4 need `CAP_SYS_ADMIN` in the
//! host's user namespace; rootless and subuid jobs asking for a disk are refused); at launch
//! about 10 ms for a 1 GiB disk and 44 ms for 20 GiB, mostly `mkfs.ext4` (e2fsprogs must be
//! installed; `bench/limits.sh`); the size is taken from the host's filesystem whether the job
//! uses it or not.
//!
//! What the kernel parses: the job writes files through ext4, never the image's blocks (the
//! image is outside everything the sandbox shows, and `/dev` in the sandbox has no loop
//! devices), so the filesystem the kernel mounts is one `mkfs.ext4` made and ext4 maintained.
//! The loop device is attached with `LO_FLAGS_AUTOCLEAR`: it detaches itself when the mount
//! goes, so a runner killed mid-job leaves a mount (removed by the next run's cleanup, see
//! [`unmount`]) but never a loop device with nothing on it.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::mount::{MntFlags, MsFlags};

/// Where `mkfs.ext4` is looked for (never through the caller's `PATH`).
const MKFS: [&str; 2] = ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"];

/// The `mkfs.ext4` this host has, if any.
pub fn mkfs_program() -> Option<PathBuf> {
    MKFS.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// Whether job disks can be made here, and if not, why: root, `/dev/loop-control` and
/// `mkfs.ext4` are needed.
pub fn check_available() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err(
            "a job disk is a filesystem image mounted through a loop device, which \
                    needs root"
                .into(),
        );
    }
    if !in_initial_user_namespace() {
        return Err(
            "the runner runs in a user namespace (a container?), where ext4 cannot be \
                    mounted"
                .into(),
        );
    }
    if !has_sys_admin() {
        return Err(
            "the runner lacks CAP_SYS_ADMIN, which mounting a job disk needs (a \
                    systemd unit's CapabilityBoundingSet must include it)"
                .into(),
        );
    }
    if fs::metadata("/dev/loop-control").is_err() {
        return Err("this host has no /dev/loop-control (no loop device support)".into());
    }
    if mkfs_program().is_none() {
        return Err(format!(
            "mkfs.ext4 not found (looked for {}); install e2fsprogs",
            MKFS.join(", ")
        ));
    }
    Ok(())
}

/// Whether this process is in the host's own user namespace: there, and only there, its uid
/// map is the identity over every id (`0 0 4294967295`).
fn in_initial_user_namespace() -> bool {
    fs::read_to_string("/proc/self/uid_map").is_ok_and(|m| {
        let fields: Vec<&str> = m.split_whitespace().collect();
        fields == ["0", "0", "4294967295"]
    })
}

/// Whether this process's effective capabilities include `CAP_SYS_ADMIN` (from
/// `/proc/self/status`; unreadable counts as no).
fn has_sys_admin() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .is_some_and(|eff| eff & (1 << CAP_SYS_ADMIN) != 0)
}

/// Makes a disk of `bytes` for a job: the image file `image` (created, must not exist),
/// formatted and mounted at the directory `mountpoint` (must exist, empty). On error nothing
/// stays mounted; the image file is the caller's to remove with its directory.
pub fn create(image: &Path, bytes: u64, mountpoint: &Path) -> io::Result<()> {
    let at = |what: &str, path: &Path| {
        let context = format!("{what} {}", path.display());
        move |e: io::Error| io::Error::new(e.kind(), format!("{context}: {e}"))
    };
    let mkfs = mkfs_program().ok_or_else(|| {
        io::Error::other(format!(
            "mkfs.ext4 not found (looked for {}); install e2fsprogs",
            MKFS.join(", ")
        ))
    })?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_CLOEXEC | nix::libc::O_NOFOLLOW)
        .open(image)
        .map_err(at("creating", image))?;
    let len = i64::try_from(bytes).map_err(|_| io::Error::other("disk size out of range"))?;
    // Every block now, so that the job's writes can never meet a full host filesystem.
    nix::fcntl::fallocate(&file, nix::fcntl::FallocateFlags::empty(), 0, len)
        .map_err(io::Error::from)
        .map_err(at("reserving the job's disk space for", image))?;
    format(&mkfs, image)?;
    mount(&file, mountpoint)
}

/// `mkfs.ext4` on the image: no journal (nothing on it outlives the job), no blocks reserved
/// for root (the job's uid gets all of them), no discard (the blocks stay allocated), inode
/// tables not written (`lazy_itable_init`; the image was just preallocated, so they read as
/// zeros already, and [`mount`] tells the kernel not to zero them in the background either).
/// Cleared environment, no input; its output is kept for the error only.
fn format(mkfs: &Path, image: &Path) -> io::Result<()> {
    let out = Command::new(mkfs)
        .args([
            "-q",
            "-F",
            "-m",
            "0",
            "-O",
            "^has_journal",
            "-E",
            "nodiscard,lazy_itable_init=1",
        ])
        .arg(image)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("running {}: {e}", mkfs.display())))?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stderr);
        let said: String = said.trim().chars().take(300).collect();
        return Err(io::Error::other(format!(
            "{} failed ({}): {said}",
            mkfs.display(),
            out.status
        )));
    }
    Ok(())
}

/// Attaches `image` to a loop device and mounts it at `mountpoint`, `noinit_itable` (see
/// [`format`]: background zeroing would only write zeros over zeros, I/O the job pays for).
/// The device detaches itself once the mount is gone (its descriptor here is dropped on
/// return).
fn mount(image: &File, mountpoint: &Path) -> io::Result<()> {
    let (device, _held) = crate::sys::loop_attach(image)?;
    nix::mount::mount(
        Some(&device),
        mountpoint,
        Some("ext4"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOATIME,
        Some("noinit_itable"),
    )
    .map_err(io::Error::from)
    .map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "mounting the job's disk ({}) at {}: {e}",
                device.display(),
                mountpoint.display()
            ),
        )
    })
}

/// Whether something is mounted at `dir` (it is on another device than its parent).
pub fn is_mounted(dir: &Path) -> bool {
    let Some(parent) = dir.parent() else {
        return false;
    };
    match (fs::symlink_metadata(dir), fs::metadata(parent)) {
        (Ok(d), Ok(p)) => d.is_dir() && d.dev() != p.dev(),
        _ => false,
    }
}

/// Unmounts a job's disk at `mountpoint`, if one is mounted there: plainly, or, when
/// something still holds it (a moment after the job's last process), detached from the tree
/// at once and freed by the kernel when the last holder goes (`MNT_DETACH`). Never follows
/// a symlink at `mountpoint`.
pub fn unmount(mountpoint: &Path) -> io::Result<()> {
    if !is_mounted(mountpoint) {
        return Ok(());
    }
    let flags = MntFlags::UMOUNT_NOFOLLOW;
    match nix::mount::umount2(mountpoint, flags) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => {
            nix::mount::umount2(mountpoint, flags | MntFlags::MNT_DETACH).map_err(io::Error::from)
        }
        Err(e) => Err(io::Error::from(e)),
    }
    .map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("unmounting the job's disk at {}: {e}", mountpoint.display()),
        )
    })
}

/// Inodes of the filesystem at `mountpoint`, and how many are free: a disk holds only so many
/// files (ext4 gives one per 4KiB on a small disk, per 16KiB from 512MiB), and a job making
/// many small ones meets ENOSPC with most of its bytes still free.
pub fn files(mountpoint: &Path) -> io::Result<(u64, u64)> {
    let s = nix::sys::statvfs::statvfs(mountpoint).map_err(io::Error::from)?;
    Ok((s.files(), s.files_available()))
}

/// Whether the filesystem holding `path` writes a preallocated file's blocks in place, so
/// that once an image is preallocated nothing written into it takes more of that filesystem:
/// ext4, XFS and tmpfs do. Copy-on-write filesystems (btrfs, ZFS, bcachefs) write rewritten
/// blocks elsewhere, so a job could still take room there; an unknown one counts as such.
pub fn preallocation_holds(path: &Path) -> bool {
    const EXT4: i64 = 0xEF53;
    const XFS: i64 = 0x5846_5342;
    const TMPFS: i64 = 0x0102_1994;
    nix::sys::statfs::statfs(path).is_ok_and(|s| {
        // The magic's integer type differs between targets; every value here fits in i64.
        #[allow(clippy::unnecessary_cast)]
        let magic = s.filesystem_type().0 as i64;
        [EXT4, XFS, TMPFS].contains(&magic)
    })
}

/// Size and free bytes of the filesystem at `mountpoint`.
pub fn usage(mountpoint: &Path) -> io::Result<(u64, u64)> {
    let s = nix::sys::statvfs::statvfs(mountpoint).map_err(io::Error::from)?;
    let unit = s.fragment_size();
    Ok((
        s.blocks().saturating_mul(unit),
        s.blocks_available().saturating_mul(unit),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preallocation_is_trusted_only_on_filesystems_that_write_in_place() {
        // tmpfs (here /dev/shm) writes in place; procfs is no such filesystem, and a path
        // that does not exist says nothing, so it counts as not holding.
        assert!(preallocation_holds(Path::new("/dev/shm")));
        assert!(!preallocation_holds(Path::new("/proc")));
        assert!(!preallocation_holds(Path::new("/nonexistent/bulwark")));
    }
}
