//! cgroups: memory, pids and CPU limits for a job, and a reliable way to kill all of it.
//!
//! Detection is per controller, because hosts differ: on a pure cgroup v2 host the memory
//! and pids controllers sit on the unified hierarchy; on a hybrid host (like these machines)
//! they are v1 hierarchies under `/sys/fs/cgroup/<controller>` while `/sys/fs/cgroup/unified`
//! is a cgroup2 mount with no useful controller, which does not count. v2 is used only when
//! *both* memory and pids are available there; otherwise v1 when both are there.
//!
//! Each job gets `<hierarchy>/bulwark/<job id>` (v1: one per controller, plus `freezer` for
//! killing).
//!
//! ## Socket buffers
//!
//! The kernel's TCP buffers belong to no process's heap, and a job can fill a great many of
//! them: loopback connections whose reader stops reading hold up to a few MiB each (64 such
//! connections queued 262 MiB here), and together they count against the host-wide pool
//! (`net.ipv4.tcp_mem`) whose pressure slows TCP for every other job and the runner's own
//! connections. cgroup v2 charges socket memory to the job's `memory.max` with everything
//! else. v1 charges it to a cgroup only once that cgroup has a TCP limit, so a v1 job gets
//! `memory.kmem.tcp.limit_in_bytes` = its memory limit, at most [`V1_TCP_BUFFER_CAP`]
//! (counted apart from `memory.limit_in_bytes`, so a v1 job may use up to that much more);
//! past it, its sockets see memory pressure (writes wait, EAGAIN), not the OOM killer.
//! Where a v1 kernel has no such file (built without kernel-memory accounting), the job runs
//! without it: `probe` has no layer for it, and `docs/threat-model.md` says so.
//!
//! ## CPU
//!
//! A CPU limit is bandwidth: the job's processes together get at most `cpus` CPUs' worth of
//! time in every 100 ms period (v2 `cpu.max`, v1 `cpu.cfs_quota_us` over `cpu.cfs_period_us`),
//! however many threads they run; beyond it they wait for the next period. The cpu
//! controller is used only for a job with a limit, and is then required: where the usable
//! version has no cpu controller (v1 without a `cpu` hierarchy, a v2 cgroup whose delegation
//! left `cpu` out) the job's cgroup is not made and the error says why. It is a separate
//! question from memory and pids, so a host without it still runs jobs that ask for no CPU
//! limit. On v2, once one job enabled `cpu` for `bulwark/`, every later job there also gets
//! an equal share by weight against the others. Killing a whole job: v2 writes `cgroup.kill`; v1 has no such file, so we freeze
//! the cgroup (nothing can fork while frozen), SIGKILL every pid listed, thaw, and wait until
//! the cgroup is empty.
//!
//! ## Rootless on cgroup v2: a delegated cgroup
//!
//! An ordinary user can enforce limits only inside a cgroup delegated to it, which is what
//! systemd makes for a unit with `Delegate=yes` (a service of a dedicated `bulwark` user, or
//! `systemd-run --user --scope -p Delegate=yes bulwark run ...`): the unit's cgroup, its
//! `cgroup.procs` and `cgroup.subtree_control` belong to the user. Without root, Bulwark
//! therefore works in the cgroup it was started in, `D` (from `/proc/self/cgroup`), laid out
//! the way systemd's delegation rules ask for (a cgroup with processes in it cannot hand
//! controllers to children, so the runner leaves `D` for a leaf of its own first):
//!
//! ```text
//! D/                   memory and pids enabled for children; no processes
//! D/bulwark-runner/    the runner itself (every `bulwark` process started in D)
//! D/bulwark/<job id>/  one job: its limits, its processes
//! ```
//!
//! A `D` that is not ours, or that still holds other processes (an interactive shell's own
//! scope), cannot be used, and the error says so; the job is then refused, or runs with
//! rlimits alone where the operator allowed that.
//!
//! Two consequences to know. Jobs share whatever limits the unit sets on `D` (systemd's
//! `MemoryMax=`, `TasksMax=`) with the runner: a job can only be held tighter than its own
//! limits say, never looser, but a unit limit smaller than a job's can make the runner's own
//! allocations or forks fail. And a rootless job's limit files (`memory.max`, `pids.max`) belong
//! to the user the job's processes run as on the host; the job cannot reach them all the same:
//! `/sys` is not mounted in the sandbox, its cgroup namespace is rooted at its own cgroup, the
//! seccomp filter refuses `mount` and new namespaces, and `nsdelegate` (systemd's default)
//! forbids writing a namespace root's limits from inside it.
//!
//! As root, anything is writable, so ownership cannot say whether `D` was delegated; systemd
//! marks a delegated cgroup with the extended attribute `trusted.delegate=1`, and also
//! `user.delegate=1` (readable without `CAP_SYS_ADMIN`, which `systemd/bulwark.service` does
//! not grant), and a root runner uses the same layout in such a `D` (the unit has
//! `Delegate=yes`, so its jobs stay inside the service's cgroup, where stopping the service
//! reaches them). Only a `D` that root owns counts: systemd marks the units it delegates to
//! other users too (`user@.service`), and a job placed in a cgroup a user controls could be
//! moved out of its limits by that user. Otherwise, as from a root shell, job cgroups go under
//! the hierarchy's own root, as on v1.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Which cgroup version enforces the job's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Legacy per-controller hierarchies.
    V1,
    /// The unified hierarchy.
    V2,
}

impl Version {
    /// "v1" or "v2".
    pub fn as_str(self) -> &'static str {
        match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        }
    }
}

/// What this host offers.
#[derive(Debug, Clone, Default)]
pub struct Support {
    /// cgroup2 mount point, if any.
    pub v2_mount: Option<PathBuf>,
    /// Controllers available at the cgroup2 mount root.
    pub v2_controllers: Vec<String>,
    /// v1 hierarchy mount points by controller name.
    pub v1: Vec<(String, PathBuf)>,
    /// The cgroup this process was started in, on the cgroup2 mount (see the module docs).
    pub v2_own: Option<PathBuf>,
    /// Why `v2_own` could not be worked out, when it could not.
    pub v2_own_unknown: Option<String>,
}

/// The leaf a rootless runner moves itself into inside its delegated cgroup.
pub const RUNNER_LEAF: &str = "bulwark-runner";

impl Support {
    fn v1_path(&self, controller: &str) -> Option<&Path> {
        self.v1
            .iter()
            .find(|(c, _)| c == controller)
            .map(|(_, p)| p.as_path())
    }

    /// The version that can enforce both memory and pids limits here, if any.
    pub fn usable(&self) -> Option<Version> {
        let has = |c: &str| self.v2_controllers.iter().any(|x| x == c);
        if self.v2_mount.is_some() && has("memory") && has("pids") {
            return Some(Version::V2);
        }
        if self.v1_path("memory").is_some()
            && self.v1_path("pids").is_some()
            && self.v1_path("freezer").is_some()
        {
            return Some(Version::V1);
        }
        None
    }

    /// Where v2 job cgroups are made: the directory whose `bulwark/` holds them, and whether
    /// that is this process's delegated cgroup (rootless) rather than the hierarchy's root.
    fn v2_top(&self) -> Option<(PathBuf, bool)> {
        let mount = self.v2_mount.clone()?;
        if nix::unistd::geteuid().is_root() {
            return Some(match &self.v2_own {
                Some(own) if *own != mount && delegated_to_root(own) => (own.clone(), true),
                _ => (mount, false),
            });
        }
        Some((self.v2_own.clone()?, true))
    }

    /// The v2 directory holding one directory per job.
    fn v2_parent(&self) -> Option<PathBuf> {
        self.v2_top().map(|(top, _)| top.join(PARENT))
    }

    /// Which version enforces a CPU limit here: the [`Support::usable`] one, when it has the
    /// cpu controller, and in a delegated v2 cgroup when `cpu` was delegated too; otherwise
    /// why not.
    pub fn cpu(&self) -> Result<Version, String> {
        match self.usable() {
            None => Err("no usable cgroup hierarchy".into()),
            Some(Version::V1) => self
                .v1_path("cpu")
                .map(|_| Version::V1)
                .ok_or_else(|| "this host mounts no cgroup v1 cpu hierarchy".into()),
            Some(Version::V2) => {
                if !self.v2_controllers.iter().any(|c| c == "cpu") {
                    return Err("the cgroup2 mount has no cpu controller".into());
                }
                match self.v2_top() {
                    Some((top, true))
                        if !lists_controllers(&top, "cgroup.controllers", &["cpu"]) =>
                    {
                        Err(no_cpu_to_hand(&top))
                    }
                    _ => Ok(Version::V2),
                }
            }
        }
    }

    /// Whether the calling user can create job cgroups, checked by creating and removing one;
    /// the error says why none can be made. In a delegated cgroup this lays the cgroup out
    /// (module docs), which stays so: `bulwark probe` in a delegated scope leaves the runner
    /// leaf behind it, as a run would.
    pub fn check_writable(&self) -> io::Result<()> {
        let probe = format!("probe-{}", std::process::id());
        let cg = JobCgroup::create(self, &probe, &Limits::default(), &[])?;
        let _ = cg.remove(Duration::from_secs(1));
        Ok(())
    }

    /// One line for `probe`.
    pub fn describe(&self) -> String {
        let v1: Vec<&str> = self.v1.iter().map(|(c, _)| c.as_str()).collect();
        let cpu = match self.cpu() {
            Ok(v) => format!("; CPU limits on {}", v.as_str()),
            Err(why) => format!("; no CPU limits: {why}"),
        };
        let delegated = match (self.usable(), self.v2_top()) {
            (Some(Version::V2), Some((top, true))) => {
                let controllers =
                    fs::read_to_string(top.join("cgroup.controllers")).unwrap_or_default();
                let whose = if nix::unistd::geteuid().is_root() {
                    "which systemd delegated to root"
                } else {
                    "the cgroup bulwark started in"
                };
                format!(
                    "; job cgroups under {}, {whose} (its controllers [{}])",
                    top.join(PARENT).display(),
                    controllers.trim()
                )
            }
            (Some(Version::V2), Some((top, false))) => format!(
                "; job cgroups under {} (bulwark was not started in a cgroup systemd delegated to root)",
                top.join(PARENT).display()
            ),
            _ => String::new(),
        };
        format!(
            "cgroup2 at {} with controllers [{}]{delegated}; cgroup v1 controllers [{}]{cpu}",
            self.v2_mount
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "nowhere".into()),
            self.v2_controllers.join(" "),
            v1.join(" ")
        )
    }
}

/// Reads the host's cgroup mounts.
pub fn detect() -> Support {
    let mut s = Support::default();
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return s;
    };
    for line in info.lines() {
        // fields: id parent maj:min root mountpoint options [optional...] - fstype source superopts
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mount_root = left.split(' ').nth(3).unwrap_or_default();
        let mountpoint = left.split(' ').nth(4).unwrap_or_default();
        let mut r = right.split(' ');
        let fstype = r.next().unwrap_or_default();
        let _source = r.next();
        let superopts = r.next().unwrap_or_default();
        match fstype {
            "cgroup2" => {
                let p = PathBuf::from(mountpoint);
                s.v2_controllers = fs::read_to_string(p.join("cgroup.controllers"))
                    .map(|c| c.split_whitespace().map(String::from).collect())
                    .unwrap_or_default();
                // Only a v2 that can enforce the limits needs to know where we are (hybrid
                // hosts skip the read on every launch).
                let has = |c: &str| s.v2_controllers.iter().any(|x| x == c);
                // Several cgroup2 mounts: the last one counts, for all of these fields.
                s.v2_own = None;
                s.v2_own_unknown = None;
                if has("memory") && has("pids") {
                    let own = fs::read_to_string("/proc/self/cgroup")
                        .map_err(|e| format!("reading /proc/self/cgroup: {e}"))
                        .and_then(|c| own_v2_cgroup(&c, mount_root));
                    match own {
                        Ok(rel) => s.v2_own = Some(p.join(rel)),
                        Err(why) => s.v2_own_unknown = Some(why),
                    }
                }
                s.v2_mount = Some(p);
            }
            "cgroup" => {
                for opt in superopts.split(',') {
                    if ["memory", "pids", "freezer", "cpu"].contains(&opt) {
                        s.v1.push((opt.to_string(), PathBuf::from(mountpoint)));
                    }
                }
            }
            _ => {}
        }
    }
    s
}

/// This process's cgroup on the unified hierarchy, relative to the mount, from the text of
/// `/proc/self/cgroup` (the `0::/path` line) and the mount's root in the hierarchy (the fourth
/// field of its `mountinfo` line: `/` unless only a subtree is mounted, as in some
/// containers). A runner that already moved itself into its [`RUNNER_LEAF`] counts as started
/// in the leaf's parent, so that a second look (or a second runner started from the first
/// one's cgroup) finds the same delegated cgroup. The error says why the cgroup is not
/// reachable through this mount.
fn own_v2_cgroup(proc_self_cgroup: &str, mount_root: &str) -> Result<PathBuf, String> {
    let path = proc_self_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or("/proc/self/cgroup has no cgroup v2 (0::) line")?
        .trim();
    // A cgroup outside this cgroup namespace's view reads "/../..."; so does a mount made
    // outside it.
    let outside = |p: &str| !p.starts_with('/') || p.split('/').any(|c| c == "..");
    if outside(path) || outside(mount_root) {
        return Err(format!(
            "this process's cgroup {path} is not visible through the cgroup2 mount (its root \
             is {mount_root}): a cgroup namespace or a container hides it"
        ));
    }
    let rel = Path::new(path)
        .strip_prefix(mount_root)
        .map_err(|_| {
            format!(
                "this process's cgroup {path} lies outside the part of the hierarchy mounted \
                 (from {mount_root})"
            )
        })?
        .to_path_buf();
    Ok(match rel.file_name() {
        Some(leaf) if leaf == RUNNER_LEAF => rel.parent().unwrap_or(Path::new("")).to_path_buf(),
        _ => rel,
    })
}

/// Whether systemd delegated the cgroup `dir` (`Delegate=yes`) to a unit running as root: it
/// sets `trusted.delegate` (readable only with `CAP_SYS_ADMIN`) and `user.delegate` to `1` on
/// such a cgroup, and root owns the cgroup, its `cgroup.procs` and `cgroup.subtree_control`,
/// and whatever a runner made in it before. A cgroup some other user controls never counts,
/// however it is marked (module docs). Anything unreadable counts as not delegated.
fn delegated_to_root(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let marked = ["trusted.delegate", "user.delegate"]
        .iter()
        .any(|name| matches!(crate::sys::getxattr(dir, name), Ok(Some(v)) if v == b"1"));
    let root_owned = |p: &Path| fs::symlink_metadata(p).is_ok_and(|m| m.uid() == 0);
    let root_owned_if_there = |p: &Path| match fs::symlink_metadata(p) {
        Ok(m) => m.uid() == 0,
        Err(e) => e.kind() == io::ErrorKind::NotFound,
    };
    marked
        && root_owned(dir)
        && root_owned(&dir.join("cgroup.procs"))
        && root_owned(&dir.join("cgroup.subtree_control"))
        && root_owned_if_there(&dir.join(RUNNER_LEAF))
        && root_owned_if_there(&dir.join(PARENT))
}

/// What to tell whoever runs bulwark when the cgroup it started in cannot be used.
fn delegate_hint() -> &'static str {
    if nix::unistd::geteuid().is_root() {
        "run bulwark in a unit of its own with Delegate=yes (as systemd/bulwark.service), e.g. \
         `systemd-run --scope -p Delegate=yes bulwark ...`"
    } else {
        "run bulwark in a unit of its own with Delegate=yes, e.g. \
         `systemd-run --user --scope -p Delegate=yes bulwark ...`"
    }
}

/// Enables the cpu controller for the children of the v2 cgroup `dir`, or says why it cannot
/// be: not offered to `dir` (a delegation without `cpu`, or a parent that does not enable
/// it), or refused (a realtime process in the way).
fn enable_cpu(dir: &Path) -> io::Result<()> {
    if lists_controllers(dir, "cgroup.subtree_control", &["cpu"]) {
        return Ok(());
    }
    if !lists_controllers(dir, "cgroup.controllers", &["cpu"]) {
        return Err(io::Error::other(no_cpu_to_hand(dir)));
    }
    // A second runner just started in a delegated `dir` is there until it moves into the
    // runner leaf, which makes enabling fail with EBUSY for a moment (as in
    // `prepare_delegated`).
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match fs::write(dir.join("cgroup.subtree_control"), "+cpu") {
            Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) && Instant::now() < deadline => {
                sleep(Duration::from_millis(20));
            }
            other => return other.map_err(io_at("enable the cpu controller in", dir)),
        }
    }
}

/// Why a CPU limit cannot be had in the cgroup `dir`: its parent does not offer it `cpu`.
fn no_cpu_to_hand(dir: &Path) -> String {
    format!(
        "{} has no cpu controller to hand to job cgroups, which the job's CPU limit \
         (resources.cpus / limits.max_cpus) needs: the unit must delegate it (Delegate=yes, or \
         Delegate=memory pids cpu)",
        dir.display()
    )
}

/// Whether the cgroup file `file` of `dir` (`cgroup.controllers`, `cgroup.subtree_control`)
/// lists every one of `controllers` (unreadable: no).
fn lists_controllers(dir: &Path, file: &str, controllers: &[&str]) -> bool {
    fs::read_to_string(dir.join(file)).is_ok_and(|s| {
        let listed: Vec<&str> = s.split_whitespace().collect();
        controllers.iter().all(|c| listed.contains(c))
    })
}

/// For a long-running parent of runs (`bulwark daemon`): where job cgroups go inside the
/// cgroup this process was started in (a delegated v2 cgroup, module docs), moves this
/// process into [`RUNNER_LEAF`] and enables the controllers, as each run does for itself.
/// A process that stayed in the delegated cgroup would keep every run it starts from
/// enabling controllers there (a cgroup with processes in it cannot hand them to children),
/// and every job would be refused. Returns whether it moved; elsewhere (v1, a root runner
/// outside a delegated unit, no usable hierarchy) it does nothing.
pub fn settle_long_running(support: &Support) -> io::Result<bool> {
    if support.usable() != Some(Version::V2) {
        return Ok(false);
    }
    match support.v2_top() {
        Some((top, true)) => prepare_delegated(&top, &[]).map(|()| true),
        _ => Ok(false),
    }
}

/// Makes this process's delegated cgroup `top` ready to hold job cgroups with memory and pids
/// limits: the process and its `children` move into [`RUNNER_LEAF`] and the
/// controllers are enabled in `top`, unless an earlier runner did that already. Two runners
/// started in `top` at once each find the other still in `top` for a moment, so enabling is
/// retried for a second before the processes still there are named in the error.
fn prepare_delegated(top: &Path, children: &[u32]) -> io::Result<()> {
    let denied = |e: &io::Error| {
        matches!(
            e.raw_os_error(),
            Some(nix::libc::EACCES) | Some(nix::libc::EPERM) | Some(nix::libc::EROFS)
        )
    };
    if !lists_controllers(top, "cgroup.controllers", &["memory", "pids"]) {
        let has = fs::read_to_string(top.join("cgroup.controllers")).unwrap_or_default();
        return Err(io::Error::other(format!(
            "{} has no memory and pids controllers to hand to job cgroups (its \
             cgroup.controllers: [{}]): the unit must delegate them (Delegate=yes, or \
             Delegate=memory pids)",
            top.display(),
            has.trim()
        )));
    }
    let leaf = top.join(RUNNER_LEAF);
    let procs = leaf.join("cgroup.procs");
    let mut made_leaf = false;
    if !lists_controllers(top, "cgroup.subtree_control", &["memory", "pids"]) {
        match fs::create_dir(&leaf) {
            Ok(()) => made_leaf = true,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) if denied(&e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "{} is not delegated to this user (creating {}: {e}): {}",
                        top.display(),
                        leaf.display(),
                        delegate_hint()
                    ),
                ))
            }
            Err(e) => return Err(io_at("create", &leaf)(e)),
        }
    }
    // Every process of the runner belongs in the leaf, also when another runner enabled the
    // controllers: `top` itself must stay empty for them to stay enabled.
    let in_leaf = fs::read_to_string("/proc/self/cgroup")
        .map(|c| {
            c.lines()
                .any(|l| l.starts_with("0::") && l.ends_with(&format!("/{RUNNER_LEAF}")))
        })
        .unwrap_or(false);
    if !in_leaf && leaf.is_dir() {
        if let Err(e) = fs::write(&procs, "0") {
            if made_leaf {
                let _ = fs::remove_dir(&leaf);
            }
            return Err(if denied(&e) {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot move this process into {} ({e}): {} is not fully delegated to \
                         this user (its cgroup.procs must be the user's too): {}",
                        leaf.display(),
                        top.display(),
                        delegate_hint()
                    ),
                )
            } else {
                io_at("move this process into", &leaf)(e)
            });
        }
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        move_children(children, &procs)?;
        if lists_controllers(top, "cgroup.subtree_control", &["memory", "pids"]) {
            return Ok(());
        }
        match fs::write(top.join("cgroup.subtree_control"), "+memory +pids") {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) && Instant::now() < deadline => {
                sleep(Duration::from_millis(20));
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "{} still holds processes other than bulwark's ({}), so it cannot hand \
                         memory and pids to job cgroups: {}",
                        top.display(),
                        processes_in(top),
                        delegate_hint()
                    ),
                ))
            }
            Err(e) => return Err(io_at("enable memory and pids in", top)(e)),
        }
    }
}

/// Moves `children`, the runner's own child processes that started in `top` (the sandbox
/// helper, started early to overlap its exec with the runner's work), into the leaf whose
/// `cgroup.procs` is `procs`. The caller holds them unreaped, so their pids cannot have been
/// reused by another process; one that exited meanwhile (ESRCH) has nothing left to move.
fn move_children(children: &[u32], procs: &Path) -> io::Result<()> {
    for pid in children {
        match fs::write(procs, pid.to_string()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(nix::libc::ESRCH) => {}
            Err(e) => return Err(io_at("move a child of this process into", procs)(e)),
        }
    }
    Ok(())
}

/// The processes in the cgroup `dir` (its `cgroup.procs`; none when unreadable).
fn pids_in(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// `pid "command", ...` for the first few processes in the cgroup `dir`.
fn processes_in(dir: &Path) -> String {
    let pids = pids_in(dir);
    let mut named: Vec<String> = pids
        .iter()
        .take(5)
        .map(|pid| {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            // Any process may name itself anything, escapes included.
            format!("{pid} {:?}", comm.trim_end_matches('\n'))
        })
        .collect();
    if pids.len() > 5 {
        named.push(format!("and {} more", pids.len() - 5));
    }
    named.join(", ")
}

/// Counters read before the cgroup is removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Processes the OOM killer killed in this cgroup (any OOM killer's: the host's too).
    pub oom_kills: u64,
    /// Times the OOM killer ran for this cgroup's own limit (v2 `memory.events` `oom`):
    /// whether a kill was the limit's and not the host's OOM killer's. `None` on v1, which
    /// does not tell (its `memory.failcnt` stays 0 through a limit's OOM kill on current
    /// kernels).
    pub memory_limit_ooms: Option<u64>,
    /// Times a fork was refused because the pids limit was reached.
    pub pids_max_hit: u64,
    /// Periods in which the job used up its CPU limit and had to wait (0 without a limit).
    pub cpu_throttled_periods: u64,
    /// How long its processes waited for that, in milliseconds.
    pub cpu_throttled_ms: u64,
}

/// Limits for a job's cgroup; `None` leaves that one unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of memory, swap excluded (no swap is allowed).
    pub memory: Option<u64>,
    /// Processes and threads at once.
    pub pids: Option<u64>,
    /// CPU bandwidth in thousandths of a CPU (module docs, "CPU").
    pub cpu_millis: Option<u64>,
}

/// The CPU bandwidth period, in microseconds (the kernel's default).
const CPU_PERIOD_US: u64 = 100_000;

/// The most a v1 job's sockets may hold in kernel buffers (module docs, "Socket buffers"):
/// a build's downloads need a few MiB per connection; two jobs at this cap stay well below
/// the host-wide TCP pressure threshold of a machine with a few GiB of memory.
pub const V1_TCP_BUFFER_CAP: u64 = 256 << 20;

/// A job's cgroup(s).
#[derive(Debug)]
pub struct JobCgroup {
    version: Version,
    /// v2: the one directory; v1: memory, pids, freezer directories.
    dirs: Vec<PathBuf>,
    /// Made inside a delegated cgroup (module docs), where only a record finds it again.
    delegated: bool,
}

/// The parent directory name under each hierarchy.
pub const PARENT: &str = "bulwark";

fn io_at(what: &str, path: &Path) -> impl FnOnce(io::Error) -> io::Error {
    let context = format!("{what} {}", path.display());
    move |e| io::Error::new(e.kind(), format!("{context}: {e}"))
}

impl JobCgroup {
    /// Creates the job's cgroup(s) and sets the limits. `runner_children` are child processes
    /// of the caller, still unreaped, that it started before (the sandbox helper): in a
    /// delegated cgroup they leave it for the runner's leaf together with the caller.
    pub fn create(
        support: &Support,
        job_id: &str,
        limits: &Limits,
        runner_children: &[u32],
    ) -> io::Result<Self> {
        let want_cpu = limits.cpu_millis.is_some();
        let version = support
            .usable()
            .ok_or_else(|| io::Error::other("no usable cgroup hierarchy"))?;
        let cg = match version {
            Version::V2 => {
                let (top, delegated) = support.v2_top().ok_or_else(|| {
                    io::Error::other(match (&support.v2_mount, &support.v2_own_unknown) {
                        (None, _) => "no cgroup2 mount".to_string(),
                        (Some(_), Some(why)) => why.clone(),
                        (Some(_), None) => "cannot tell which cgroup this process is in".into(),
                    })
                })?;
                if delegated {
                    prepare_delegated(&top, runner_children)?;
                } else {
                    // Controllers must be enabled on every level above the job.
                    let _ = fs::write(top.join("cgroup.subtree_control"), "+memory +pids");
                }
                if want_cpu {
                    enable_cpu(&top)?;
                }
                let parent = top.join(PARENT);
                match fs::create_dir(&parent) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io_at("create", &parent)(e)),
                }
                fs::write(parent.join("cgroup.subtree_control"), "+memory +pids")
                    .map_err(io_at("enable controllers in", &parent))?;
                if want_cpu {
                    enable_cpu(&parent)?;
                }
                let dir = parent.join(job_id);
                fs::create_dir(&dir).map_err(io_at("create", &dir))?;
                JobCgroup {
                    version,
                    dirs: vec![dir],
                    delegated,
                }
            }
            Version::V1 => {
                let mut dirs = Vec::new();
                let cpu = want_cpu.then_some("cpu");
                for c in ["memory", "pids", "freezer"].into_iter().chain(cpu) {
                    let made = support
                        .v1_path(c)
                        .ok_or_else(|| {
                            io::Error::other(format!(
                                "this host has no cgroup v1 {c} hierarchy{}",
                                if c == "cpu" {
                                    " for the job's CPU limit (resources.cpus / limits.max_cpus)"
                                } else {
                                    ""
                                }
                            ))
                        })
                        .and_then(|base| {
                            let dir = base.join(PARENT).join(job_id);
                            fs::create_dir_all(&dir).map_err(io_at("create", &dir))?;
                            Ok(dir)
                        });
                    match made {
                        Ok(dir) => dirs.push(dir),
                        Err(e) => {
                            // The hierarchies done so far: nothing runs in them yet, and
                            // the caller, refused, keeps no record a later cleanup could
                            // find them by.
                            for d in dirs.iter().rev() {
                                let _ = fs::remove_dir(d);
                            }
                            return Err(e);
                        }
                    }
                }
                JobCgroup {
                    version,
                    dirs,
                    delegated: false,
                }
            }
        };
        if let Err(e) = cg.set_limits(limits) {
            let _ = cg.remove(Duration::from_secs(1));
            return Err(e);
        }
        Ok(cg)
    }

    /// Re-opens the cgroups of a job id (for cleaning up after a dead run).
    pub fn existing(support: &Support, job_id: &str) -> Option<Self> {
        let version = support.usable()?;
        let dirs: Vec<PathBuf> = match version {
            // Where this process would make it, and, as root, the hierarchy's root too (where
            // a root runner started outside a delegated cgroup makes it).
            Version::V2 => {
                let mut dirs = vec![support.v2_parent()?.join(job_id)];
                if nix::unistd::geteuid().is_root() {
                    let legacy = support.v2_mount.clone()?.join(PARENT).join(job_id);
                    if !dirs.contains(&legacy) {
                        dirs.push(legacy);
                    }
                }
                dirs
            }
            Version::V1 => ["memory", "pids", "freezer", "cpu"]
                .iter()
                .filter_map(|c| support.v1_path(c).map(|p| p.join(PARENT).join(job_id)))
                .collect(),
        };
        let mut dirs: Vec<PathBuf> = dirs.into_iter().filter(|d| d.is_dir()).collect();
        if version == Version::V2 {
            dirs.truncate(1); // one job, one v2 cgroup
        }
        (!dirs.is_empty()).then_some(JobCgroup {
            version,
            dirs,
            delegated: false,
        })
    }

    /// For a cgroup made inside a delegated cgroup, its directory: what
    /// [`JobCgroup::from_record`] reads back when a later run cleans up after this one (which
    /// may have been started in another delegated cgroup, where [`JobCgroup::existing`] would
    /// not look). `None` where `existing` finds it from any runner (v1, and v2 at the
    /// hierarchy's root), so that launches there write nothing more.
    pub fn record(&self) -> Option<String> {
        self.delegated.then(|| {
            self.dirs
                .iter()
                .map(|d| format!("{}\n", d.display()))
                .collect()
        })
    }

    /// The cgroups a [`JobCgroup::record`] names, for job `job_id`. Only directories that
    /// exist, lie under one of this host's cgroup mounts and are named `bulwark/<job_id>` are
    /// taken, whatever else the record says.
    pub fn from_record(support: &Support, job_id: &str, record: &str) -> Option<Self> {
        let mut version = None;
        let mut dirs = Vec::new();
        for line in record.lines() {
            let dir = Path::new(line);
            let named = dir.is_absolute()
                && !line.split('/').any(|c| c == "..")
                && dir.file_name().is_some_and(|n| n == job_id)
                && dir
                    .parent()
                    .and_then(|p| p.file_name())
                    .is_some_and(|n| n == PARENT);
            let v = if support
                .v2_mount
                .as_ref()
                .is_some_and(|m| dir.starts_with(m))
            {
                Version::V2
            } else if support.v1.iter().any(|(_, m)| dir.starts_with(m)) {
                Version::V1
            } else {
                continue;
            };
            if named && dir.is_dir() && *version.get_or_insert(v) == v {
                dirs.push(dir.to_path_buf());
            }
            if version == Some(Version::V2) && !dirs.is_empty() {
                break; // one job, one v2 cgroup
            }
        }
        Some(JobCgroup {
            version: version?,
            dirs,
            delegated: true,
        })
    }

    /// Which version this cgroup uses.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The job's directory in the hierarchy that has `controller`: v2's one directory, or the
    /// v1 one mounted with it (`<mount>/bulwark/<job id>`, the mount named after its
    /// controllers, like `cpu,cpuacct`); `None` where the job has none for it.
    fn controller_dir(&self, controller: &str) -> Option<&Path> {
        match self.version {
            Version::V2 => Some(&self.dirs[0]),
            Version::V1 => self
                .dirs
                .iter()
                .find(|d| {
                    d.parent()
                        .and_then(|p| p.parent())
                        .and_then(|p| p.file_name())
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.split(',').any(|c| c == controller))
                })
                .map(PathBuf::as_path),
        }
    }

    fn dir(&self, controller: &str) -> &Path {
        self.controller_dir(controller).unwrap_or(&self.dirs[0])
    }

    fn set_limits(&self, limits: &Limits) -> io::Result<()> {
        let Limits {
            memory,
            pids,
            cpu_millis,
        } = *limits;
        let quota = cpu_millis.map(|m| (m.saturating_mul(CPU_PERIOD_US) / 1000).max(1000));
        match self.version {
            Version::V2 => {
                let d = &self.dirs[0];
                if let Some(q) = quota {
                    let file = d.join("cpu.max");
                    fs::write(&file, format!("{q} {CPU_PERIOD_US}"))
                        .map_err(io_at("write", &file))?;
                }
                if let Some(m) = memory {
                    fs::write(d.join("memory.max"), m.to_string())
                        .map_err(io_at("write", &d.join("memory.max")))?;
                    let _ = fs::write(d.join("memory.swap.max"), "0");
                }
                if let Some(p) = pids {
                    fs::write(d.join("pids.max"), p.to_string())
                        .map_err(io_at("write", &d.join("pids.max")))?;
                }
            }
            Version::V1 => {
                if let Some(m) = memory {
                    let d = self.dir("memory");
                    fs::write(d.join("memory.limit_in_bytes"), m.to_string())
                        .map_err(io_at("write", &d.join("memory.limit_in_bytes")))?;
                    // Without swap accounting this file is absent; where present, no swap either.
                    let memsw = d.join("memory.memsw.limit_in_bytes");
                    if memsw.exists() {
                        fs::write(&memsw, m.to_string()).map_err(io_at("write", &memsw))?;
                    }
                    let _ = fs::write(d.join("memory.swappiness"), "0");
                    let tcp = d.join("memory.kmem.tcp.limit_in_bytes");
                    if tcp.exists() {
                        fs::write(&tcp, m.min(V1_TCP_BUFFER_CAP).to_string())
                            .map_err(io_at("write", &tcp))?;
                    }
                }
                if let Some(p) = pids {
                    let d = self.dir("pids");
                    fs::write(d.join("pids.max"), p.to_string())
                        .map_err(io_at("write", &d.join("pids.max")))?;
                }
                if let Some(q) = quota {
                    let d = self
                        .controller_dir("cpu")
                        .ok_or_else(|| io::Error::other("the job has no v1 cpu cgroup"))?;
                    // The period first: the kernel checks the quota against it.
                    for (name, value) in [
                        ("cpu.cfs_period_us", CPU_PERIOD_US),
                        ("cpu.cfs_quota_us", q),
                    ] {
                        fs::write(d.join(name), value.to_string())
                            .map_err(io_at("write", &d.join(name)))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The files a single-threaded process writes `0` (itself) to in order to join.
    ///
    /// v1: `tasks`, which moves only the writing thread. Moving a whole process (`cgroup.procs`)
    /// takes the kernel's global `cgroup_threadgroup_rwsem` for writing, and when nobody has
    /// written it for a while that first waits out an RCU grace period: 6–30 ms here, on more
    /// than one job launch in ten. Kernels since 5.17 (and 5.4 and later stable releases) skip
    /// that lock when a thread moves itself (it cannot exit or exec meanwhile); older ones
    /// take it either way, so this is a speed-up, never a change in what is enforced. For a
    /// process with one thread, moving the thread is moving the process: the caller must be
    /// single-threaded, and the helper checks that it is. v2: `cgroup.procs`
    /// (`cgroup.threads` cannot leave a domain cgroup).
    pub fn join_files(&self) -> Vec<PathBuf> {
        let file = match self.version {
            Version::V1 => "tasks",
            Version::V2 => "cgroup.procs",
        };
        self.dirs.iter().map(|d| d.join(file)).collect()
    }

    /// Pids currently in the job's cgroup.
    pub fn pids(&self) -> Vec<i32> {
        let d = match self.version {
            Version::V2 => &self.dirs[0],
            Version::V1 => self.dir("freezer"),
        };
        pids_in(d)
    }

    /// The OOM counters alone ([`Counters::oom_kills`], [`Counters::memory_limit_ooms`]):
    /// one file read, for the runner to note them at each step boundary.
    pub fn oom_counts(&self) -> (u64, Option<u64>) {
        let (file, limit_ooms) = match self.version {
            Version::V2 => (self.dirs[0].join("memory.events"), true),
            Version::V1 => (self.dir("memory").join("memory.oom_control"), false),
        };
        let text = fs::read_to_string(file).unwrap_or_default();
        let field = |key: &str| {
            text.lines()
                .filter_map(|l| l.split_once(' '))
                .find(|(k, _)| *k == key)
                .and_then(|(_, v)| v.trim().parse().ok())
                .unwrap_or(0)
        };
        (field("oom_kill"), limit_ooms.then(|| field("oom")))
    }

    /// OOM kills and pids-limit hits so far.
    pub fn counters(&self) -> Counters {
        let field = |path: PathBuf, key: &str| -> u64 {
            fs::read_to_string(path)
                .ok()
                .and_then(|s| {
                    s.lines()
                        .filter_map(|l| l.split_once(' '))
                        .find(|(k, _)| *k == key)
                        .and_then(|(_, v)| v.trim().parse().ok())
                })
                .unwrap_or(0)
        };
        // Without the cpu controller v2's cpu.stat has no throttling lines: zero.
        let cpu_stat = self.controller_dir("cpu").map(|d| d.join("cpu.stat"));
        let throttled = |key: &str| cpu_stat.clone().map_or(0, |p| field(p, key));
        let (oom_kills, memory_limit_ooms) = self.oom_counts();
        match self.version {
            Version::V2 => Counters {
                oom_kills,
                memory_limit_ooms,
                pids_max_hit: field(self.dirs[0].join("pids.events"), "max"),
                cpu_throttled_periods: throttled("nr_throttled"),
                cpu_throttled_ms: throttled("throttled_usec") / 1000,
            },
            Version::V1 => Counters {
                oom_kills,
                memory_limit_ooms,
                pids_max_hit: field(self.dir("pids").join("pids.events"), "max"),
                cpu_throttled_periods: throttled("nr_throttled"),
                cpu_throttled_ms: throttled("throttled_time") / 1_000_000,
            },
        }
    }

    /// Kills every process in the job's cgroup and waits (up to `wait`) until it is empty.
    pub fn kill_all(&self, wait: Duration) -> io::Result<()> {
        let deadline = Instant::now() + wait;
        loop {
            if self.pids().is_empty() {
                return Ok(());
            }
            match self.version {
                Version::V2 => {
                    let _ = fs::write(self.dirs[0].join("cgroup.kill"), "1");
                }
                Version::V1 => {
                    let freezer = self.dir("freezer").to_path_buf();
                    let _ = fs::write(freezer.join("freezer.state"), "FROZEN");
                    let frozen_by = Instant::now() + Duration::from_millis(500);
                    while Instant::now() < frozen_by {
                        match fs::read_to_string(freezer.join("freezer.state")) {
                            Ok(s) if s.trim() == "FROZEN" => break,
                            _ => sleep(Duration::from_millis(2)),
                        }
                    }
                    // Frozen tasks cannot exit, so their pids cannot be reused: signalling by
                    // pid is exact. When the freeze did not complete, a listed process may
                    // exit and its pid go to a process outside the job before the signal: the
                    // runner (root) would kill that. So each pid is pinned with a pidfd first
                    // and signalled only if it is still listed in the job's cgroup then: a
                    // listed pid names a live process in the cgroup, and if the pinned one
                    // exited meanwhile the pidfd's signal finds nothing (ESRCH).
                    let listed = self.pids();
                    let pinned: Vec<_> = listed
                        .iter()
                        .filter_map(|pid| crate::sys::pidfd_open(*pid).ok().map(|fd| (*pid, fd)))
                        .collect();
                    let still = self.pids();
                    for (pid, fd) in &pinned {
                        if still.contains(pid) {
                            let _ = crate::sys::pidfd_send_signal(fd, libc::SIGKILL);
                        }
                    }
                    let _ = fs::write(freezer.join("freezer.state"), "THAWED");
                }
            }
            if Instant::now() >= deadline {
                return Err(io::Error::other(format!(
                    "{} processes still in the job's cgroup",
                    self.pids().len()
                )));
            }
            sleep(Duration::from_millis(5));
        }
    }

    /// Kills what is left and removes the cgroup directories.
    pub fn remove(self, wait: Duration) -> io::Result<()> {
        self.kill_all(wait)?;
        let mut first_err = None;
        // One deadline for all of them: a cgroup that cannot be removed in one hierarchy
        // usually cannot in the others either, and the wait is the caller's to bound.
        let deadline = Instant::now() + wait;
        for d in &self.dirs {
            loop {
                match fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    // EBUSY while the last exiting task is being released.
                    Err(e) if Instant::now() < deadline => {
                        let _ = e;
                        sleep(Duration::from_millis(5));
                    }
                    Err(e) => {
                        first_err.get_or_insert(io_at("remove", d)(e));
                        break;
                    }
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_cgroup_is_read_from_the_unified_line_relative_to_the_mount() {
        let hybrid =
            "12:pids:/user.slice\n1:name=systemd:/user.slice/x.scope\n0::/user.slice/x.scope\n";
        assert_eq!(
            own_v2_cgroup(hybrid, "/"),
            Ok(PathBuf::from("user.slice/x.scope"))
        );
        assert_eq!(own_v2_cgroup("0::/\n", "/"), Ok(PathBuf::new()));
        // A runner already in its leaf counts as started in the delegated cgroup above it.
        assert_eq!(
            own_v2_cgroup("0::/system.slice/bulwark.service/bulwark-runner\n", "/"),
            Ok(PathBuf::from("system.slice/bulwark.service"))
        );
        // Only a subtree mounted (a container): the path is taken relative to it.
        assert_eq!(
            own_v2_cgroup("0::/machine/c1/job\n", "/machine/c1"),
            Ok(PathBuf::from("job"))
        );
        for (text, root, why) in [
            ("0::/../../elsewhere\n", "/", "not visible"),
            ("0::/\n", "/../..", "not visible"),
            ("0::/other/x\n", "/machine/c1", "outside the part"),
            ("4:memory:/a\n", "/", "no cgroup v2"),
            ("", "/", "no cgroup v2"),
        ] {
            let e = own_v2_cgroup(text, root).unwrap_err();
            assert!(e.contains(why), "{text:?} {root}: {e}");
        }
    }

    use crate::testutil::TempDir;

    /// A v1 "host" of plain directories (no cgroupfs): `cpu` as given.
    fn fake_v1(base: &Path, cpu: Option<PathBuf>) -> Support {
        let mut v1: Vec<(String, PathBuf)> = ["memory", "pids", "freezer"]
            .iter()
            .map(|c| {
                let p = base.join(c);
                fs::create_dir(&p).unwrap();
                (c.to_string(), p)
            })
            .collect();
        v1.extend(cpu.map(|p| ("cpu".to_string(), p)));
        Support {
            v1,
            ..Support::default()
        }
    }

    #[test]
    fn a_v1_job_cgroup_that_cannot_get_its_cpu_directory_leaves_no_other_directory() {
        let base = TempDir::new("cg-v1-cpu");
        let limits = Limits {
            memory: None,
            pids: None,
            cpu_millis: Some(500),
        };
        // No cpu hierarchy at all, and one whose job directory cannot be made.
        let blocked = base.join("cpu-is-a-file");
        fs::write(&blocked, "").unwrap();
        for (i, cpu) in [None, Some(blocked)].into_iter().enumerate() {
            let host = base.join(format!("host{i}"));
            fs::create_dir(&host).unwrap();
            let support = fake_v1(&host, cpu);
            assert_eq!(support.usable(), Some(Version::V1));
            let e = JobCgroup::create(&support, "job-1", &limits, &[]).unwrap_err();
            for c in ["memory", "pids", "freezer"] {
                let left = host.join(c).join(PARENT).join("job-1");
                assert!(!left.exists(), "{} left behind after: {e}", left.display());
            }
        }
    }

    #[test]
    fn a_v1_cpu_limit_lands_in_a_cpu_cpuacct_hierarchy_and_is_found_again() {
        let base = TempDir::new("cg-v1-cpuacct");
        let cpu = base.join("cpu,cpuacct");
        fs::create_dir(&cpu).unwrap();
        let support = fake_v1(&base, Some(cpu.clone()));
        let limits = Limits {
            memory: Some(64 << 20),
            pids: Some(100),
            cpu_millis: Some(1500),
        };
        let cg = JobCgroup::create(&support, "job-2", &limits, &[]).unwrap();
        let dir = cpu.join(PARENT).join("job-2");
        assert_eq!(
            fs::read_to_string(dir.join("cpu.cfs_quota_us")).unwrap(),
            "150000"
        );
        assert_eq!(
            fs::read_to_string(dir.join("cpu.cfs_period_us")).unwrap(),
            "100000"
        );
        assert!(cg.join_files().contains(&dir.join("tasks")));
        fs::write(
            dir.join("cpu.stat"),
            "nr_periods 10\nnr_throttled 4\nthrottled_time 250000000\n",
        )
        .unwrap();
        let c = cg.counters();
        assert_eq!((c.cpu_throttled_periods, c.cpu_throttled_ms), (4, 250));
        let again = JobCgroup::existing(&support, "job-2").unwrap();
        assert!(again.dirs.contains(&dir), "{:?}", again.dirs);
    }

    #[test]
    fn the_error_for_a_cgroup_without_cpu_reads_as_one_sentence() {
        let dir = TempDir::new("cg-v2-nocpu");
        fs::write(dir.join("cgroup.controllers"), "memory pids\n").unwrap();
        fs::write(dir.join("cgroup.subtree_control"), "memory pids\n").unwrap();
        let e = enable_cpu(&dir).unwrap_err().to_string();
        assert!(!e.contains("  "), "runs of spaces in: {e:?}");
        assert!(
            e.ends_with(
                "has no cpu controller to hand to job cgroups, which the job's CPU limit \
                 (resources.cpus / limits.max_cpus) needs: the unit must delegate it \
                 (Delegate=yes, or Delegate=memory pids cpu)"
            ),
            "{e}"
        );
    }
}
