//! Subordinate ids: one host uid per job for a runner that is not root (`subuid` mode).
//!
//! Why: in plain rootless mode every job runs as the runner's own host uid, so a job that
//! escaped its sandbox would be the runner, with its signing key, its tool store and every
//! other job's files. A runner running as a dedicated user with a subordinate range in
//! `/etc/subuid` and `/etc/subgid` can instead hand each job a uid of that range, as root mode
//! does with its own range: an escape then lands on an id that owns nothing.
//!
//! How: an unprivileged process may map only its own id into a user namespace it creates.
//! Ranges are written by the setuid-root `newuidmap` and `newgidmap` (Debian's `uidmap`),
//! which allow exactly what `/etc/subuid` and `/etc/subgid` grant the caller. They must run
//! outside the new namespace, so a [`Mapper`] child is forked *before* `unshare`, waits, and
//! runs them against its parent once the namespace exists; the parent then checks the maps it
//! got, line for line.
//!
//! Two users of it:
//! - the job helper maps only `JOB_UID -> job uid` (and the gid likewise): the runner's own id
//!   is not mapped in the job's namespace at all;
//! - [`ownership_main`] (`bulwark-sandbox --ownership`) maps `0 -> runner, 1 -> job` and hands a
//!   prepared workspace to the job's ids before the job, and back to the runner afterwards (and
//!   after a run that died), so that the runner can collect outputs and delete the directory.
//!   Changing ownership between the two ids needs CAP_CHOWN over both, which only such a
//!   namespace gives an unprivileged runner. It walks without following symlinks, and only
//!   ever while no process of the job exists.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{open, openat, AtFlags, OFlag};
use nix::sys::stat::{fchmod, fchmodat, fstat, fstatat, FchmodatFlags, FileStat, Mode, SFlag};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{dup, fchown, fchownat, getgid, getpid, getuid, Gid, Pid, Uid};
use serde::{Deserialize, Serialize};

use crate::spec::Stage;
use crate::sys::Forked;

/// Where the id-mapping tools are looked for, in order.
const TOOL_DIRS: [&str; 2] = ["/usr/bin", "/bin"];

/// The job's subordinate ids and the tools that map them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubidMap {
    /// Host uid of the job (from the runner's subordinate uid range).
    pub uid: u32,
    /// Host gid of the job (from the runner's subordinate gid range).
    pub gid: u32,
    /// Absolute path of `newuidmap`.
    pub newuidmap: PathBuf,
    /// Absolute path of `newgidmap`.
    pub newgidmap: PathBuf,
}

/// The id-mapping tools, checked to be what they claim: root-owned setuid regular files that
/// only root can write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools {
    /// `newuidmap`.
    pub newuidmap: PathBuf,
    /// `newgidmap`.
    pub newgidmap: PathBuf,
}

impl Tools {
    /// Finds both tools, or says what is missing and how to get it.
    pub fn find() -> Result<Tools, String> {
        let one = |name: &str| -> Result<PathBuf, String> {
            let mut seen = Vec::new();
            for dir in TOOL_DIRS {
                let path = Path::new(dir).join(name);
                match std::fs::metadata(&path) {
                    Ok(meta) => {
                        check_tool(&path, &meta)?;
                        return Ok(path);
                    }
                    Err(e) => seen.push(format!("{}: {e}", path.display())),
                }
            }
            Err(format!(
                "{name} not found ({}); install it (Debian: apt install uidmap)",
                seen.join("; ")
            ))
        };
        Ok(Tools {
            newuidmap: one("newuidmap")?,
            newgidmap: one("newgidmap")?,
        })
    }
}

fn check_tool(path: &Path, meta: &std::fs::Metadata) -> Result<(), String> {
    if !meta.is_file() || meta.uid() != 0 || meta.mode() & 0o4000 == 0 {
        return Err(format!(
            "{} is not a set-user-id regular file owned by root (owner {}, mode {:o}); reinstall \
             it (Debian: apt install --reinstall uidmap)",
            path.display(),
            meta.uid(),
            meta.mode() & 0o7777
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{} is writable by group or others (mode {:o}); it must not be",
            path.display(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}

/// The subordinate ranges `/etc/subuid`-style `text` grants the user named `name` with id
/// `id` (shadow matches an entry by name or by number), as inclusive ranges, in file order.
pub fn granted_ranges(text: &str, name: &str, id: u32) -> Vec<(u32, u32)> {
    let id = id.to_string();
    text.lines()
        .filter_map(|line| {
            let mut f = line.trim().split(':');
            let owner = f.next()?;
            if owner != name && owner != id {
                return None;
            }
            let start: u32 = f.next()?.trim().parse().ok()?;
            let count: u32 = f.next()?.trim().parse().ok()?;
            if f.next().is_some() || count == 0 {
                return None;
            }
            Some((start, start.checked_add(count - 1)?))
        })
        .collect()
}

/// A child forked before `unshare(CLONE_NEWUSER)` that writes its parent's id maps with the
/// setuid tools when told to. Dropping it unused makes the child exit without mapping.
#[derive(Debug)]
pub struct Mapper {
    child: Pid,
    go: Option<OwnedFd>,
    result: File,
    uid_lines: Vec<(u32, u32)>,
    gid_lines: Vec<(u32, u32)>,
}

impl Mapper {
    /// Forks the mapper. `uid_lines` and `gid_lines` are `(inside, outside)` pairs of single
    /// ids. The caller must be single-threaded (checked) and must not have unshared its user
    /// namespace yet.
    pub fn start(
        tools: (&Path, &Path),
        uid_lines: Vec<(u32, u32)>,
        gid_lines: Vec<(u32, u32)>,
    ) -> Result<Mapper, String> {
        let (go_read, go_write) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("mapper pipe: {e}"))?;
        let (result_read, result_write) =
            nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("mapper pipe: {e}"))?;
        let target = getpid();
        let args = |lines: &[(u32, u32)]| -> Vec<String> {
            let mut a = vec![target.to_string()];
            for (inside, outside) in lines {
                a.extend([inside.to_string(), outside.to_string(), "1".into()]);
            }
            a
        };
        let (uid_args, gid_args) = (args(&uid_lines), args(&gid_lines));
        match crate::sys::fork_single_threaded().map_err(|e| format!("fork the mapper: {e}"))? {
            Forked::Child => {
                drop(go_write);
                drop(result_read);
                let mut result = File::from(result_write);
                let mut byte = [0u8; 1];
                // EOF (the parent gave up or died): map nothing.
                if !matches!(File::from(go_read).read(&mut byte), Ok(1)) {
                    crate::sys::exit_now(1);
                }
                for (tool, args) in [(tools.0, &uid_args), (tools.1, &gid_args)] {
                    let said = std::process::Command::new(tool)
                        .args(args)
                        .env_clear()
                        .stdin(std::process::Stdio::null())
                        .output();
                    let failure = match said {
                        Ok(out) if out.status.success() => continue,
                        Ok(out) => format!(
                            "{} {} failed ({}): {}",
                            tool.display(),
                            args.join(" "),
                            out.status,
                            String::from_utf8_lossy(&out.stderr[..out.stderr.len().min(1024)])
                                .trim()
                        ),
                        Err(e) => format!("running {}: {e}", tool.display()),
                    };
                    let _ = result.write_all(failure.as_bytes());
                    crate::sys::exit_now(1);
                }
                crate::sys::exit_now(0);
            }
            Forked::Parent(child) => Ok(Mapper {
                child,
                go: Some(go_write),
                result: File::from(result_read),
                uid_lines,
                gid_lines,
            }),
        }
    }

    /// Call after `unshare(CLONE_NEWUSER)` (and after denying setgroups, if the caller wants
    /// it denied; newgidmap leaves it allowed for a subordinate grant): has the maps written,
    /// waits for the mapper, and checks `/proc/self/uid_map` and `gid_map` hold exactly the
    /// lines asked for.
    pub fn finish(mut self) -> Result<(), String> {
        if let Some(go) = self.go.take() {
            File::from(go)
                .write_all(b"g")
                .map_err(|e| format!("waking the mapper: {e}"))?;
        }
        let mut said = String::new();
        let _ = (&self.result).take(4096).read_to_string(&mut said);
        let status = loop {
            match waitpid(self.child, None) {
                Err(nix::errno::Errno::EINTR) => continue,
                other => break other,
            }
        };
        match status {
            Ok(WaitStatus::Exited(_, 0)) => {}
            Ok(s) if !said.is_empty() => return Err(format!("{said} ({s:?})")),
            Ok(s) => return Err(format!("the id mapper ended with {s:?}")),
            Err(e) => return Err(format!("waiting for the id mapper: {e}")),
        }
        check_map("/proc/self/uid_map", &self.uid_lines)?;
        check_map("/proc/self/gid_map", &self.gid_lines)
    }
}

fn check_map(file: &str, expected: &[(u32, u32)]) -> Result<(), String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
    let mut got: Vec<(u32, u32, u32)> = Vec::new();
    for line in text.lines() {
        let f: Vec<u32> = line
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        if let [inside, outside, count] = f[..] {
            got.push((inside, outside, count));
        } else {
            return Err(format!("{file}: unexpected line {line:?}"));
        }
    }
    let mut want: Vec<(u32, u32, u32)> = expected.iter().map(|&(i, o)| (i, o, 1)).collect();
    got.sort_unstable();
    want.sort_unstable();
    if got != want {
        return Err(format!(
            "{file} is {got:?} after mapping, expected {want:?}; refusing to go on"
        ));
    }
    Ok(())
}

/// Which way [`ownership_main`] hands a tree over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HandTo {
    /// From the runner's ids to the job's (before the job: the tree is the runner's own).
    Job,
    /// From the job's ids back to the runner's (after every job process is gone), with the
    /// owner's read, write and search bits added so the runner can collect and delete.
    Runner,
}

/// What `bulwark-sandbox --ownership` reads on standard input.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnershipSpec {
    /// [`crate::spec::PROTOCOL`] of the runner that wrote this spec.
    pub protocol: String,
    /// Pid of the runner: the walk dies with it (a walk outliving its runner could hand
    /// entries to the job again while the next run takes them back).
    pub runner_pid: u32,
    /// The job's ids and the mapping tools.
    pub subids: SubidMap,
    /// Which way.
    pub to: HandTo,
    /// Files or directory trees (walked without following symlinks) to hand over.
    pub paths: Vec<PathBuf>,
}

/// Inside the ownership namespace: the runner's ids.
const RUNNER_INSIDE: u32 = 0;
/// Inside the ownership namespace: the job's ids.
const JOB_INSIDE: u32 = 1;

/// Entry point of `bulwark-sandbox --ownership`: reports a `setup_failed` event on standard
/// output and exits 125 on any failure, exits 0 when every path was handed over.
pub fn ownership_main() -> ! {
    let result = ownership().map(|()| 0);
    crate::spec::exit_with(&mut std::io::stdout(), result)
}

fn ownership() -> Result<(), Stage> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| ("read spec", e.to_string()))?;
    let spec: OwnershipSpec =
        serde_json::from_str(&input).map_err(|e| ("parse spec", e.to_string()))?;
    if spec.protocol != crate::spec::PROTOCOL {
        return Err((
            "protocol",
            "install bulwark and bulwark-sandbox from one build".into(),
        ));
    }
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| ("pdeathsig", e.to_string()))?;
    if nix::unistd::getppid().as_raw() != i32::try_from(spec.runner_pid).unwrap_or(-1) {
        return Err((
            "pdeathsig",
            "the runner exited before the walk started".into(),
        ));
    }
    // Every path is opened now, as the runner, before any namespace exists.
    let roots: Vec<(PathBuf, OwnedFd)> = spec
        .paths
        .iter()
        .map(|p| {
            open(
                p,
                OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map(|fd| (p.clone(), fd))
            .map_err(|e| ("open", format!("{}: {e}", p.display())))
        })
        .collect::<Result<_, _>>()?;
    let ids = &spec.subids;
    let mapper = Mapper::start(
        (&ids.newuidmap, &ids.newgidmap),
        vec![(RUNNER_INSIDE, getuid().as_raw()), (JOB_INSIDE, ids.uid)],
        vec![(RUNNER_INSIDE, getgid().as_raw()), (JOB_INSIDE, ids.gid)],
    )
    .map_err(|e| ("subordinate ids", e))?;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER)
        .map_err(|e| ("unshare user namespace", e.to_string()))?;
    std::fs::write("/proc/self/setgroups", "deny")
        .map_err(|e| ("setgroups deny", e.to_string()))?;
    mapper.finish().map_err(|e| ("subordinate ids", e))?;
    let (from, to) = match spec.to {
        HandTo::Job => (RUNNER_INSIDE, JOB_INSIDE),
        HandTo::Runner => (JOB_INSIDE, RUNNER_INSIDE),
    };
    let walk = Walk {
        from,
        to,
        reclaim: spec.to == HandTo::Runner,
    };
    for (path, fd) in &roots {
        walk.root(fd)
            .map_err(|e| ("hand over", format!("{}: {e}", path.display())))?;
    }
    Ok(())
}

/// One hand-over: entries whose uid (or gid) is `from` get `to`.
///
/// Handing back (`reclaim`), every directory of the job's becomes exactly 0700 and every
/// regular file exactly 0600, or 0700 if its owner could execute it (a cache saved from the
/// tree keeps its programs runnable; the runner never runs them): nothing else the job set
/// survives that could matter to the runner's
/// uid, such as set-user-id or set-group-id bits (re-applying the old mode after the chown
/// would make a job's setuid file a setuid-runner file), group or other access while the
/// tree waits to be collected and removed, or ACL entries (a mode change sets an ACL's mask,
/// so named entries grant nothing).
struct Walk {
    from: u32,
    to: u32,
    reclaim: bool,
}

/// A directory on the way down: its identity, to check the way back up, and the names in it
/// still to visit.
struct Level {
    dev: u64,
    ino: u64,
    names: Vec<OsString>,
}

impl Walk {
    fn root(&self, fd: &OwnedFd) -> Result<(), String> {
        let st = fstat(fd.as_fd()).map_err(|e| e.to_string())?;
        if kind(&st) != SFlag::S_IFDIR {
            // A single file (the proxy socket): through its O_PATH descriptor, no path walk.
            let (uid, gid) = self.ids(&st);
            if uid.is_some() || gid.is_some() {
                fchownat(fd, "", uid, gid, AtFlags::AT_EMPTY_PATH).map_err(|e| e.to_string())?;
            }
            return Ok(());
        }
        let top = openat(fd, ".", DIR_FLAGS, Mode::empty()).map_err(|e| e.to_string())?;
        self.tree(top, &st)
    }

    fn ids(&self, st: &FileStat) -> (Option<Uid>, Option<Gid>) {
        (
            (st.st_uid == self.from).then(|| Uid::from_raw(self.to)),
            (st.st_gid == self.from).then(|| Gid::from_raw(self.to)),
        )
    }

    /// A directory, through its own descriptor.
    fn own_dir(&self, dir: &OwnedFd, st: &FileStat) -> Result<(), nix::errno::Errno> {
        let (uid, gid) = self.ids(st);
        if uid.is_some() || gid.is_some() {
            fchown(dir.as_fd(), uid, gid)?;
        }
        if self.reclaim && st.st_uid == self.from {
            fchmod(dir.as_fd(), Mode::from_bits_truncate(0o700))?;
        }
        Ok(())
    }

    /// Depth first, holding one directory descriptor at a time whatever the depth (a job
    /// decides how deep its tree is; a descriptor per level would run out): down with
    /// `openat(name, O_NOFOLLOW)`, back up with `openat("..")`, checked against the device
    /// and inode noted on the way down. No process of the job exists while this runs, so
    /// nothing moves under it; a check that fails stops the walk.
    fn tree(&self, top: OwnedFd, st: &FileStat) -> Result<(), String> {
        self.own_dir(&top, st).map_err(|e| e.to_string())?;
        let names = list(&top).map_err(|e| e.to_string())?;
        let mut here = top;
        let mut stack = vec![Level {
            dev: st.st_dev,
            ino: st.st_ino,
            names,
        }];
        let mut path: Vec<OsString> = Vec::new();
        loop {
            let Some(level) = stack.last_mut() else {
                return Ok(());
            };
            let Some(name) = level.names.pop() else {
                stack.pop();
                let Some(parent) = stack.last() else {
                    return Ok(());
                };
                let up = openat(&here, "..", DIR_FLAGS | OFlag::O_NOFOLLOW, Mode::empty())
                    .map_err(|e| at(&path, e))?;
                let ust = fstat(&up).map_err(|e| at(&path, e))?;
                if (ust.st_dev, ust.st_ino) != (parent.dev, parent.ino) {
                    return Err(format!(
                        "{}: its parent changed during the walk; stopped",
                        shown(&path)
                    ));
                }
                here = up;
                path.pop();
                continue;
            };
            path.push(name.clone());
            let st = fstatat(&here, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(|e| at(&path, e))?;
            let k = kind(&st);
            if k == SFlag::S_IFDIR {
                let sub = openat(
                    &here,
                    name.as_os_str(),
                    DIR_FLAGS | OFlag::O_NOFOLLOW,
                    Mode::empty(),
                )
                .map_err(|e| at(&path, e))?;
                self.own_dir(&sub, &st).map_err(|e| at(&path, e))?;
                let names = list(&sub).map_err(|e| at(&path, e))?;
                stack.push(Level {
                    dev: st.st_dev,
                    ino: st.st_ino,
                    names,
                });
                here = sub;
                continue;
            }
            let (uid, gid) = self.ids(&st);
            if uid.is_some() || gid.is_some() {
                fchownat(
                    &here,
                    name.as_os_str(),
                    uid,
                    gid,
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(|e| at(&path, e))?;
            }
            if self.reclaim && k == SFlag::S_IFREG && st.st_uid == self.from {
                fchmodat(
                    &here,
                    name.as_os_str(),
                    Mode::from_bits_truncate(0o600 | (st.st_mode & 0o100)),
                    FchmodatFlags::NoFollowSymlink,
                )
                .map_err(|e| at(&path, e))?;
            }
            path.pop();
        }
    }
}

/// `path: e`, the path shortened to its last components (a job decides how long it is, and
/// the message reaches result.json).
fn at(path: &[OsString], e: nix::errno::Errno) -> String {
    format!("{}: {e}", shown(path))
}

fn shown(path: &[OsString]) -> String {
    const KEEP: usize = 8;
    let tail: Vec<String> = path
        .iter()
        .skip(path.len().saturating_sub(KEEP))
        .map(|n| {
            let n = n.to_string_lossy();
            if n.chars().count() > 64 {
                format!("{}…", n.chars().take(64).collect::<String>())
            } else {
                n.into_owned()
            }
        })
        .collect();
    if path.len() > KEEP {
        format!("…({} levels)/{}", path.len() - KEEP, tail.join("/"))
    } else {
        tail.join("/")
    }
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_CLOEXEC);

fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
}

/// The names in a directory, without `.` and `..`.
fn list(dir: &OwnedFd) -> Result<Vec<OsString>, nix::errno::Errno> {
    let mut listing = nix::dir::Dir::from_fd(dup(dir)?)?;
    let mut names = Vec::new();
    for entry in listing.iter() {
        let name = OsStr::from_bytes(entry?.file_name().to_bytes()).to_owned();
        if name != "." && name != ".." {
            names.push(name);
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-back walk on a tree a hostile job left, run directly (as root, which has the
    /// CAP_CHOWN and CAP_FOWNER the ownership namespace gives over both ids).
    #[test]
    fn handing_back_keeps_no_special_bits_or_access_at_any_depth() {
        use std::os::unix::fs::PermissionsExt;
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: needs root to own files as another uid (the root pass runs it)");
            return;
        }
        let (job, runner) = (4_000_123u32, 4_000_124u32);
        let base = crate::testutil::TempDir::named("bulwark-subid-walk");
        std::fs::create_dir_all(base.join("open")).unwrap();
        std::fs::copy("/bin/true", base.join("open/suid")).unwrap();
        std::fs::set_permissions(
            base.join("open/suid"),
            std::fs::Permissions::from_mode(0o6755),
        )
        .unwrap();
        std::fs::set_permissions(base.join("open"), std::fs::Permissions::from_mode(0o3777))
            .unwrap();
        std::os::unix::fs::symlink("/etc/passwd", base.join("open/link")).unwrap();
        // Deeper than the descriptor limit the walk runs under (lowered below): a walk holding
        // one descriptor per level would fail there.
        const DEPTH: usize = 400;
        let made = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "mkdir deep && cd deep && i=0 && while [ $i -lt {DEPTH} ]; do mkdir d && cd d || \
                 exit 1; i=$((i+1)); done && echo x > f && chmod 4755 f"
            ))
            .current_dir(&base)
            .status()
            .unwrap();
        assert!(made.success());
        let chown_all = std::process::Command::new("chown")
            .args(["-R", "-h", &format!("{job}:{job}")])
            .arg(base.path())
            .status()
            .unwrap();
        assert!(chown_all.success());
        // chown cleared the set-id bits; put them back as the job would have.
        std::fs::set_permissions(
            base.join("open/suid"),
            std::fs::Permissions::from_mode(0o6755),
        )
        .unwrap();
        let top = open(
            base.path(),
            OFlag::O_PATH | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )
        .unwrap();
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        // The limit is the whole test process's: no other test may hold many descriptors now.
        let _heavy = crate::testutil::DESCRIPTOR_HEAVY
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        setrlimit(Resource::RLIMIT_NOFILE, 256, hard).unwrap();
        let walked = Walk {
            from: job,
            to: runner,
            reclaim: true,
        }
        .root(&top);
        setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
        walked.unwrap();
        let meta = |p: &Path| std::fs::symlink_metadata(p).unwrap();
        let suid = meta(&base.join("open/suid"));
        assert_eq!(
            (suid.uid(), suid.gid(), suid.mode() & 0o7777),
            (runner, runner, 0o700)
        );
        let open_dir = meta(&base.join("open"));
        assert_eq!((open_dir.uid(), open_dir.mode() & 0o7777), (runner, 0o700));
        assert_eq!(
            meta(&base.join("open/link")).uid(),
            runner,
            "the link itself"
        );
        assert_eq!(meta(Path::new("/etc/passwd")).uid(), 0, "never followed");
        // Everything, at every depth: the runner's, no set-id bit, nothing for group or others.
        let left = std::process::Command::new("find")
            .arg(base.path())
            .args(["-not", "-type", "l", "(", "-not", "-user"])
            .arg(runner.to_string())
            .args(["-o", "-perm", "/7077", ")", "-print"])
            .output()
            .unwrap();
        assert!(left.status.success());
        assert_eq!(
            String::from_utf8_lossy(&left.stdout),
            "",
            "entries left as the job set them"
        );
        let deepest = std::process::Command::new("find")
            .arg(base.path())
            .args(["-name", "f", "-user"])
            .arg(runner.to_string())
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&deepest.stdout).contains("/d/d/f"),
            "the deepest file was reached"
        );
    }

    #[test]
    fn granted_ranges_match_by_name_or_number_and_skip_malformed_lines() {
        let text = "alice:100000:65536\n1001:300000:10\nbob:165536:65536\nalice:x:1\n\
                    alice:5:0\nalice:7:1:extra\n# alice:1:1\n";
        assert_eq!(
            granted_ranges(text, "alice", 1001),
            vec![(100000, 165535), (300000, 300009)]
        );
        assert_eq!(granted_ranges(text, "carol", 1002), vec![]);
        assert_eq!(
            granted_ranges("alice:4294967295:2\n", "alice", 1),
            vec![],
            "a range past the last id is refused, not wrapped"
        );
    }
}
