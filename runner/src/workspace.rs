//! Per-job directories under the state directory, and cleaning up after a run that died.
//!
//! Each job gets `<state>/jobs/<job id>/` holding `workspace/` (mounted at `/workspace`),
//! `tmp/` (mounted at `/tmp`) and `lock`. A job with a disk of its own (`resources.disk`,
//! root mode) has instead `disk.img` mounted at `disk/`, with `workspace/` and `tmp/` in it
//! (`bulwark_sandbox::disk`); removing the directory unmounts it first, and so does the
//! cleanup after a dead run. The runner holds an exclusive `flock` on `lock` for
//! the job's whole life; the kernel drops it when the runner dies, even by SIGKILL. So at the
//! start of every run, any job directory whose lock can be taken belongs to a dead run: its
//! cgroups are killed and removed, then the directory is removed. The job's processes are
//! already gone by then (the helper and init die with the runner through parent-death
//! signals); the cgroup kill is the second, independent guarantee.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use bulwark_sandbox::cgroup::{JobCgroup, Support};
use nix::fcntl::{Flock, FlockArg};

use crate::config::Dirs;

/// A live job's directories, locked for as long as this value exists.
#[derive(Debug)]
pub struct JobDir {
    /// Job id (also the cgroup name).
    pub id: String,
    /// `<state>/jobs/<id>`.
    pub path: PathBuf,
    /// Source of `/workspace`.
    pub workspace: PathBuf,
    /// Source of `/tmp`.
    pub tmp: PathBuf,
    /// Source of `/cache`, beside the workspace; made only for a job with caches.
    pub cache: PathBuf,
    /// Where the job's own filesystem is mounted, when it has one (its size in bytes).
    pub disk: Option<(PathBuf, u64)>,
    _lock: Flock<File>,
}

/// The file in the state directory whose lock serializes job disks being made: checking that
/// a disk fits above the free-space reserve and preallocating it are one step, or two jobs
/// could each find room for their disk and together take the filesystem below the reserve,
/// stopping every job without a disk of its own.
const DISK_RESERVATIONS: &str = ".disk-reservations";

/// Takes the state directory's disk-reservation lock (see [`DISK_RESERVATIONS`]), waiting for
/// another run making its job's disk (a few tens of milliseconds), but not past
/// [`RESERVATION_WAIT`]: a run stuck making one must not hold every later disk job forever.
pub fn lock_disk_reservations(dirs: &Dirs) -> Result<Flock<File>> {
    let path = dirs.state.join(DISK_RESERVATIONS);
    // Non-blocking open: a fifo put there would otherwise wait for a reader.
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC | nix::libc::O_NONBLOCK)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    if !file.metadata()?.is_file() {
        anyhow::bail!("{} is not a regular file", path.display());
    }
    match crate::fsutil::lock_until(file, std::time::Instant::now() + RESERVATION_WAIT) {
        Ok(Some(locked)) => Ok(locked),
        Ok(None) => anyhow::bail!(
            "another run has been making its job's disk for more than {} s (it holds {})",
            RESERVATION_WAIT.as_secs(),
            path.display()
        ),
        Err(e) => anyhow::bail!("locking {}: {e}", path.display()),
    }
}

/// Longest wait for another run making its job's disk.
const RESERVATION_WAIT: Duration = Duration::from_secs(60);

/// [`create`], for every caller that may give a job a disk of its own (`bulwark run` and
/// `bulwark exec`): with a disk, under the reservation lock (see [`DISK_RESERVATIONS`]), the
/// disk is first checked to fit above the reserve `min_free_disk` of the job directories'
/// filesystem, and made before the lock is released. A caller that made a disk without it
/// would reopen the race the lock closes.
pub fn create_reserved(
    dirs: &Dirs,
    job_name: &str,
    started: &str,
    disk: Option<u64>,
    min_free_disk: bulwark_protocol::DiskReserve,
) -> Result<JobDir> {
    let Some(bytes) = disk else {
        return create(dirs, job_name, started, None);
    };
    let _reservation = lock_disk_reservations(dirs)?;
    if let Some(reserve) = crate::disk_reserve::Reserve::new(&dirs.jobs(), min_free_disk) {
        // The disk is taken from the host's filesystem whole, at once.
        reserve.check(bytes).map_err(|e| {
            anyhow::anyhow!(
                "the job's disk of {} does not fit: {e}; free space there, ask for a smaller \
                 disk (resources.disk / limits.max_disk), or lower limits.min_free_disk",
                bulwark_protocol::format_size(bytes)
            )
        })?;
    }
    create(dirs, job_name, started, Some(bytes))
}

/// The job directory's entries for a job disk: the image and where it is mounted.
const DISK_IMAGE: &str = "disk.img";
const DISK_MOUNT: &str = "disk";

/// Creates and locks a new job directory; with `disk` (bytes), on a filesystem of the job's
/// own of that size.
pub fn create(dirs: &Dirs, job_name: &str, started: &str, disk: Option<u64>) -> Result<JobDir> {
    if disk.is_some() {
        bulwark_sandbox::disk::check_available()
            .map_err(|e| anyhow::anyhow!("cannot give the job a disk of its own: {e}"))?;
    }
    let stamp: String = started
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let id = format!("{job_name}-{stamp}-{}", crate::fsutil::random_hex(4));
    let path = dirs.jobs().join(&id);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&path)
        .with_context(|| format!("creating job directory {}", path.display()))?;
    // The runner's alone (0700 whatever its umask) until, in root mode, [`JobDir::admit`] lets
    // the job's uid pass through it: nobody else ever may. The job can make a setuid or
    // setgid file of its own in its workspace and open the workspace to everyone (its mounts
    // are `nosuid` only in its own view); if another host user could reach that file, it
    // would run as the job's uid, which owns the job's namespaces, or in rootless mode as the
    // runner's user, which holds the signing key.
    fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    // The lock file appears under its name only once it is held: made and locked under a
    // temporary name, then renamed (the lock belongs to the file, not the name). Otherwise
    // another run's `cleanup_stale` could find it unlocked in between, take this directory
    // for a dead run's and remove it.
    let lock_path = path.join("lock");
    let new_lock = path.join(".lock.new");
    // 0600, like the records beside it: in root mode the job's uid passes through this
    // directory to its workspace, and a lock it could open could be held by the job (a
    // process of it left behind) after the runner died: `cleanup_stale` would take the dead
    // run for a live one forever.
    let file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(&new_lock)
        .with_context(|| format!("creating {}", new_lock.display()))?;
    let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| anyhow::anyhow!("locking {}: {e}", new_lock.display()))?;
    fs::rename(&new_lock, &lock_path)
        .with_context(|| format!("renaming {} into place", new_lock.display()))?;
    let mut jobdir = JobDir {
        id,
        workspace: path.join("workspace"),
        tmp: path.join("tmp"),
        cache: path.join("cache"),
        path,
        disk: None,
        _lock: lock,
    };
    // Whatever fails from here on takes the directory with it at once: a disk that could
    // not be made whole may hold, preallocated, all the room its filesystem had left.
    if let Err(e) = jobdir.make_contents(disk) {
        if let Err(r) = jobdir.remove() {
            tracing::warn!("{r:#}");
        }
        return Err(e);
    }
    Ok(jobdir)
}

/// The file in a job directory that names the job's cgroups (see `JobCgroup::record`).
const CGROUP_RECORD: &str = "cgroups";

/// The file in a job directory whose cgroup could not be emptied: later cleanups try again,
/// waiting less each time (a process stuck in the kernel would otherwise cost every run's
/// start the whole wait).
pub const CGROUP_STUCK_RECORD: &str = "cgroup-stuck";

/// The file in a job directory that names the job's subordinate ids (subuid mode; see
/// `crate::subuid`): written before its files are handed to the job.
const SUBID_RECORD: &str = "subids";

impl JobDir {
    /// Makes `workspace/` and `tmp/`, on a disk of `disk` bytes of the job's own when asked.
    fn make_contents(&mut self, disk: Option<u64>) -> Result<()> {
        if let Some(bytes) = disk {
            let mount = self.path.join(DISK_MOUNT);
            fs::DirBuilder::new()
                .mode(0o711)
                .create(&mount)
                .with_context(|| format!("creating {}", mount.display()))?;
            bulwark_sandbox::disk::create(&self.path.join(DISK_IMAGE), bytes, &mount)
                .with_context(|| {
                    format!(
                        "making the job's disk of {} (resources.disk / limits.max_disk)",
                        bulwark_protocol::format_size(bytes)
                    )
                })?;
            // Mounted: from here on `remove` unmounts it.
            self.disk = Some((mount.clone(), bytes));
            // The filesystem's root is root's, 0755; the job's uid passes through it as
            // through the job directory.
            fs::set_permissions(&mount, std::os::unix::fs::PermissionsExt::from_mode(0o711))
                .with_context(|| format!("setting the mode of {}", mount.display()))?;
            self.workspace = mount.join("workspace");
            self.tmp = mount.join("tmp");
            self.cache = mount.join("cache");
        }
        for d in [&self.workspace, &self.tmp] {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(d)
                .with_context(|| format!("creating {}", d.display()))?;
        }
        Ok(())
    }

    /// Root mode: lets the job's host uid `uid` (whose gid is the same number) pass through
    /// the job directory to its workspace, `/tmp` and caches, and no other user: group `uid`,
    /// mode 0710. The sandbox helper opens them as that uid and gid with no other group; git
    /// writes the workspace as it. Done before anything runs as that uid.
    pub fn admit(&self, uid: u32) -> Result<()> {
        std::os::unix::fs::chown(&self.path, None, Some(uid))
            .and_then(|()| {
                fs::set_permissions(
                    &self.path,
                    std::os::unix::fs::PermissionsExt::from_mode(0o710),
                )
            })
            .with_context(|| {
                format!(
                    "letting uid {uid} into its job directory {}",
                    self.path.display()
                )
            })
    }

    /// Notes where the job's cgroups are when only a note finds them again (a delegated
    /// cgroup), so that the run that cleans up after this one, if it dies, finds them even
    /// from another cgroup.
    pub fn record_cgroup(&self, cg: &JobCgroup) -> Result<()> {
        let Some(record) = cg.record() else {
            return Ok(());
        };
        let path = self.path.join(CGROUP_RECORD);
        write_private(&path, record.as_bytes())
    }

    /// Notes the job's subordinate ids, before anything is handed to them, so that the run
    /// that cleans up after this one, if it dies, can take the files back first.
    pub fn record_subids(&self, ids: &bulwark_sandbox::subid::SubidMap) -> Result<()> {
        let path = self.path.join(SUBID_RECORD);
        write_private(&path, crate::subuid::record(ids).as_bytes())
    }

    /// Removes the job's directory (the lock goes with it), unmounting its disk first: the
    /// job's files go with the filesystem, and the directory is never walked into a mount.
    pub fn remove(self) -> Result<()> {
        if let Some((mount, _)) = &self.disk {
            bulwark_sandbox::disk::unmount(mount)?;
        }
        crate::fsutil::remove_tree(&self.path)
            .with_context(|| format!("removing job directory {}", self.path.display()))
    }
}

/// Writes a record of the runner's into a job directory, readable by the runner alone.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .with_context(|| format!("writing {}", path.display()))
}

/// How long a job directory without a lock file is left alone by other runs' cleanup.
const LOCKLESS_GRACE: Duration = Duration::from_secs(60);

/// Takes a dead subuid-mode run's files back from its job's ids: called with the job
/// directory's `subids` record and the paths that were handed over.
pub type Reclaim<'a> = dyn Fn(&str, &[PathBuf]) -> std::result::Result<(), String> + 'a;

/// Removes what dead runs left behind in this state directory: their cgroups and directories
/// (a subuid-mode run's files are first taken back with `reclaim`). Returns the job ids
/// cleaned.
pub fn cleanup_stale(dirs: &Dirs, cgroups: &Support, reclaim: &Reclaim<'_>) -> Vec<String> {
    let mut cleaned = Vec::new();
    let Ok(entries) = fs::read_dir(dirs.jobs()) else {
        return cleaned;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        let id = entry.file_name().to_string_lossy().into_owned();
        let lock_path = path.join("lock");
        let held_by_us = match OpenOptions::new().write(true).open(&lock_path) {
            Ok(f) => match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
                Ok(l) => Some(l),
                Err(_) => continue, // a live run holds it
            },
            // Not openable for another reason (descriptor or memory limits): say nothing
            // about whether the run lives, so leave it.
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => continue,
            // No lock file: either a live run is between creating the directory and creating
            // its lock (a few microseconds), or a run died right there. Only a directory that
            // has stayed lockless for a minute is taken for dead.
            Err(_) => {
                let age = fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok());
                if age.is_none_or(|a| a < LOCKLESS_GRACE) {
                    continue;
                }
                None
            }
        };
        let recorded = fs::read_to_string(path.join(CGROUP_RECORD))
            .ok()
            .and_then(|r| JobCgroup::from_record(cgroups, &id, &r));
        let mut processes_gone = true;
        let stuck = path.join(CGROUP_STUCK_RECORD);
        let wait = if fs::symlink_metadata(&stuck).is_ok() {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        if let Some(cg) = recorded.or_else(|| JobCgroup::existing(cgroups, &id)) {
            if let Err(e) = cg.remove(wait) {
                tracing::warn!(job_id = %id, "could not remove the cgroup of a dead run: {e}");
                processes_gone = false;
            }
        }
        // Its processes still run: the directory is what names their cgroup to a later run,
        // and holds files of a uid that still runs. Left whole for a later run to try again.
        if !processes_gone {
            let _ = fs::write(&stuck, b"");
            eprintln!(
                "bulwark: warning: left the directory of dead run {id} for later: its cgroup \
                 could not be emptied"
            );
            continue;
        }
        // A subuid-mode run's files still belong to its job's uid, which this runner can
        // delete nothing of until it takes them back; and only once its processes are gone
        // (`reclaim` checks for processes of that uid too). Until then the directory stays
        // whole, record included, for a later run.
        let socket_dir = dirs.runtime.join("jobs").join(&id);
        if let Ok(record) = fs::read_to_string(path.join(SUBID_RECORD)) {
            let mut paths = vec![path.join("workspace"), path.join("tmp"), path.join("cache")];
            paths.extend(
                fs::symlink_metadata(&socket_dir)
                    .ok()
                    .map(|_| socket_dir.clone()),
            );
            paths.retain(|p| fs::symlink_metadata(p).is_ok());
            if let Err(e) = reclaim(&record, &paths) {
                eprintln!(
                    "bulwark: warning: left the directory of dead run {id} for later: cannot take \
                     back its files: {e}"
                );
                continue;
            }
        }
        // The dead run's proxy socket directory, if it had network.
        let _ = crate::fsutil::remove_tree(&socket_dir);
        // Its disk, if it had one: its files go with it, and the walk below must not go in.
        if let Err(e) = bulwark_sandbox::disk::unmount(&path.join(DISK_MOUNT)) {
            tracing::warn!(job_id = %id, "could not unmount the disk of a dead run: {e}");
            continue;
        }
        if let Err(e) = crate::fsutil::remove_tree(&path) {
            tracing::warn!(job_id = %id, "could not remove the directory of a dead run: {e}");
            continue;
        }
        drop(held_by_us);
        cleaned.push(id);
    }
    cleaned
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fresh state and runtime directories, under a guard that removes them.
    fn dirs() -> (crate::tools::testutil::TempDir, Dirs) {
        let base = crate::tools::testutil::TempDir::named("bulwark-ws");
        let d = Dirs {
            state: base.join("state"),
            runtime: base.join("run"),
        };
        d.create().unwrap();
        (base, d)
    }

    #[test]
    fn a_live_run_s_directory_is_never_cleaned_even_before_its_lock_exists() {
        let (_base, d) = dirs();
        // A run that has created its directory but not yet its lock file.
        let young = d.jobs().join("young-job");
        fs::create_dir(&young).unwrap();
        // A live, locked run.
        let live = create(&d, "live", "2026-01-01T00:00:00Z", None).unwrap();
        // A dead run: its lock exists but nobody holds it.
        let dead = d.jobs().join("dead-job");
        fs::create_dir(&dead).unwrap();
        fs::write(dead.join("lock"), "").unwrap();
        let cleaned = cleanup_stale(&d, &Default::default(), &|_, _| Ok(()));
        assert_eq!(cleaned, vec!["dead-job".to_string()]);
        assert!(young.exists() && live.path.exists() && !dead.exists());
    }

    #[test]
    fn a_job_directory_s_lock_and_records_are_the_runner_s_alone() {
        use std::os::unix::fs::PermissionsExt;
        let (_base, d) = dirs();
        let job = create(&d, "private", "2026-01-01T00:00:00Z", None).unwrap();
        let ids = bulwark_sandbox::subid::SubidMap {
            uid: 4_000_000_000,
            gid: 4_000_000_000,
            newuidmap: "/usr/bin/newuidmap".into(),
            newgidmap: "/usr/bin/newgidmap".into(),
        };
        job.record_subids(&ids).unwrap();
        for name in ["lock", SUBID_RECORD] {
            let mode = fs::metadata(job.path.join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{name} has mode {mode:o}");
        }
        job.remove().unwrap();
    }

    #[test]
    fn another_run_s_cleanup_never_takes_a_directory_being_created() {
        // Two runs at once: one creating its job directory while the other cleans up. The
        // lock file must never be visible unlocked (it appears only once it is held).
        let (_base, d) = dirs();
        for i in 0..300 {
            let barrier = std::sync::Barrier::new(2);
            let done = std::sync::atomic::AtomicBool::new(false);
            std::thread::scope(|s| {
                let cleaner = s.spawn(|| {
                    barrier.wait();
                    while !done.load(std::sync::atomic::Ordering::Relaxed) {
                        cleanup_stale(&d, &Default::default(), &|_, _| Ok(()));
                    }
                });
                barrier.wait();
                let job = create(&d, "race", &format!("2026-01-01T00:00:{i:02}Z"), None);
                done.store(true, std::sync::atomic::Ordering::Relaxed);
                cleaner.join().unwrap();
                let job = job.unwrap_or_else(|e| panic!("iteration {i}: {e:#}"));
                assert!(job.workspace.is_dir(), "iteration {i}");
                job.remove().unwrap();
            });
        }
    }

    /// Unmounts (lazily) what a test mounted, however the test ends.
    struct Mounted(PathBuf);

    impl Drop for Mounted {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }

    #[test]
    fn a_job_disk_that_cannot_be_made_gives_the_space_back_and_leaves_no_directory() {
        if let Err(e) = bulwark_sandbox::disk::check_available() {
            eprintln!("skipped: no job disks here: {e}");
            return;
        }
        // The state directory on a small ext4 of the test's own, too small for the disk
        // asked for: preallocating it fails with ENOSPC, as a host's state filesystem does
        // for a disk that passed the free-space check just before another job took the room.
        let base = crate::tools::testutil::TempDir::named("bulwark-ws-full");
        let (image, host) = (base.join("host.img"), base.join("host"));
        fs::create_dir(&host).unwrap();
        File::create(&image).unwrap().set_len(40 << 20).unwrap();
        let run = |cmd: &mut std::process::Command| {
            let out = cmd.output().unwrap();
            assert!(out.status.success(), "{cmd:?}: {out:?}");
        };
        run(std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-O", "^has_journal"])
            .arg(&image));
        run(std::process::Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&host));
        let _mounted = Mounted(host.clone());
        let d = Dirs {
            state: host.join("state"),
            runtime: base.join("run"),
        };
        d.create().unwrap();
        let free = || {
            let s = nix::sys::statvfs::statvfs(&host).unwrap();
            s.blocks_free() * s.fragment_size()
        };
        let before = free();
        let e = create(&d, "big", "2026-01-01T00:00:00Z", Some(64 << 20)).unwrap_err();
        let after = free();
        assert!(
            after + (1 << 20) >= before,
            "after `{e:#}` the host's filesystem has {after} bytes free, {before} before"
        );
        let left: Vec<_> = fs::read_dir(d.jobs()).unwrap().flatten().collect();
        assert!(left.is_empty(), "{left:?} left after `{e:#}`");
    }
}
