//! The sandbox helper: the process the runner starts for each job.
//!
//! It is the `bulwark-sandbox` binary, installed next to `bulwark`, started with an
//! empty environment, the [`SandboxSpec`] on standard input, the status channel on standard
//! output and the job log on standard error. It is single-threaded throughout, which is what
//! lets it unshare a user namespace and fork safely.
//!
//! The sequence, in order:
//! 1. read the spec;
//! 2. join the job's cgroups, so every later process is born inside them;
//! 3. root mode: drop to the job's own unprivileged host uid and gid (no supplementary groups)
//!    *before* creating any namespace, so that from here on the helper holds nothing the job's
//!    host uid does not, and everything below is the same code path as rootless;
//! 4. unshare user, mount, pid, net, ipc, uts and cgroup namespaces at once;
//! 5. map the job's uid and gid 1000 to our host ids (one id each, setgroups denied); in
//!    subuid mode to the job's subordinate ids instead, through `newuidmap`/`newgidmap` run by
//!    a child forked before step 4 (see `crate::subid`), and become them;
//! 6. only now the parent-death signal (an id change clears it), so that a killed runner
//!    takes the job down with it;
//! 7. open the `/workspace` and `/tmp` sources as descriptors (in fact between the maps and
//!    becoming the mapped ids in step 5, while in subuid mode our host uid is still the
//!    runner's);
//! 8. fork init, pid 1 of the new pid namespace, and relay its exit status.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::{open, OFlag};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::Signal;
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{
    dup2_stdin, dup2_stdout, getgid, getppid, getuid, setgroups, setresgid, setresuid, Gid, Uid,
};

use crate::spec::{phase, SandboxSpec, Stage, JOB_GID, JOB_UID};
use crate::sys::Forked;

/// File name of the helper binary, which the runner looks for next to its own.
pub const HELPER_BINARY: &str = "bulwark-sandbox";

/// Longest sandbox spec the helper reads: far above what a valid job makes (64 steps of at
/// most 64 KiB each, their environments, tools), a bound on memory only.
const MAX_SPEC_BYTES: usize = 64 << 20;

fn at<E: std::fmt::Display>(stage: &'static str) -> impl FnOnce(E) -> Stage {
    move |e| (stage, e.to_string())
}

/// Entry point of the `bulwark-sandbox` binary; never returns.
pub fn main() -> ! {
    // The runner execs this binary through /proc/self/fd/N (so that what it checked is what
    // runs), which would leave the command name as "N" in ps and top.
    let _ = nix::sys::prctl::set_name(c"bulwark-sandbox");
    // The status channel moves off fd 1 (which becomes /dev/null), so that nothing printed by
    // accident can be read as an event; fd 2 stays the job log.
    // Descriptors the runner inherited from whatever started it (and did not mark close-on-
    // exec) arrive here too; none of them may reach init or the job. Only 0, 1 and 2 are ours.
    let closed = crate::sys::close_fds_from(3);
    // Close-on-exec (F_DUPFD_CLOEXEC), as every descriptor of ours: the subuid mapper's
    // setuid `newuidmap` gets none of them; the job gets the log only as its stdout/stderr.
    let mut status = match std::io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => File::from(fd),
        Err(_) => crate::sys::exit_now(125),
    };
    let result = closed
        .map_err(at("close inherited descriptors"))
        .and_then(|()| run(&mut status));
    crate::spec::exit_with(&mut status, result)
}

fn run(status: &mut File) -> Result<i32, Stage> {
    // Non-dumpable before the spec, which may carry a trusted job's credentials, is read: no
    // other process of this uid (the runner's user rootless; the job's, once root mode
    // switches to it) can read this memory through /proc, and a crash leaves no core dump
    // (a piped `core_pattern` ignores RLIMIT_CORE, not this). Dumpable again only while the
    // id maps are written (step 5), which needs it.
    nix::sys::prctl::set_dumpable(false).map_err(at("dumpable"))?;
    // The seccomp program depends on nothing in the spec: it is built while the runner is
    // still preparing the job and the spec has not arrived.
    let seccomp = crate::seccomp::compile().map_err(|e| ("seccomp", e.to_string()))?;
    // The spec may carry a trusted job's credentials: the text is zeroed once parsed, before
    // init is forked, so that no copy of it outlives this point in either process; read into
    // a buffer that zeroes what it leaves behind when it grows (`secret_buf`). The spec is
    // the first line: the runner may keep the pipe open for credential updates, which it
    // sends only once init reports the sandbox ready (so none can have come with the spec).
    let mut lines = crate::secret_buf::SecretLines::new(MAX_SPEC_BYTES);
    let mut input = lines
        .read_line(std::io::stdin().as_fd())
        .map_err(at("read spec"))?
        .ok_or_else(|| ("read spec", "no spec on standard input".to_owned()))?;
    if input.len() != 1 || lines.is_mid_line() {
        return Err(("read spec", "more than the spec on standard input".into()));
    }
    let input = input.remove(0);
    let mut spec: SandboxSpec = serde_json::from_slice(input.as_bytes()).map_err(|e| {
        (
            "parse spec",
            format!("{e} (install bulwark and bulwark-sandbox from one build)"),
        )
    })?;
    drop(input);
    if spec.protocol != crate::spec::PROTOCOL {
        return Err((
            "protocol",
            format!(
                "the runner speaks {}, this helper {}: install bulwark and bulwark-sandbox from \
                 one build",
                spec.protocol,
                crate::spec::PROTOCOL
            ),
        ));
    }
    phase(&spec, status, "helper-read-spec");
    // A runner that is already gone (or a spec naming another) gets nothing built; the check
    // is made again once the parent-death signal is set (step 6), which closes the window.
    if getppid().as_raw() != i32::try_from(spec.runner_pid).unwrap_or(-1) {
        return Err((
            "pdeathsig",
            "the runner exited before the sandbox started".into(),
        ));
    }
    // The rest of standard input is init's credential update channel, when the spec allows
    // updates; this process never reads it.
    let updates = match spec.takes_credential_updates() {
        true => Some(
            std::io::stdin()
                .as_fd()
                .try_clone_to_owned()
                .map_err(at("credential update channel"))?,
        ),
        false => None,
    };
    let null = open("/dev/null", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(at("open /dev/null"))?;
    dup2_stdin(null.as_fd()).map_err(at("stdin"))?;
    dup2_stdout(null.as_fd()).map_err(at("stdout"))?;
    let log: OwnedFd = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map_err(at("log channel"))?;

    // The proxy socket's directory, opened while we may still walk the runtime directory
    // (root mode: it is not reachable by the job's uid). Init connects through this descriptor,
    // so the socket never appears in the job's filesystem.
    let egress_dir = match &spec.egress {
        Some(e) => Some(
            open(
                &e.socket_dir,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(at("open egress socket directory"))?,
        ),
        None => None,
    };

    // 2. cgroups: this thread moves itself ("0"). On v1 that is the `tasks` file, which moves
    //    one thread without the kernel's global migration lock (see `JobCgroup::join_files`);
    //    it moves the whole helper only because the helper has one thread, so that is checked
    //    first: a second thread would stay outside the job's limits.
    if !spec.cgroup_join.is_empty() {
        let threads = crate::sys::threads_in_this_process()
            .map_err(|e| ("cgroup", format!("counting the helper's threads: {e}")))?;
        if threads != 1 {
            return Err((
                "cgroup",
                format!("the helper has {threads} threads; it joins the job's cgroups by moving its one thread"),
            ));
        }
    }
    for file in &spec.cgroup_join {
        let mut f = OpenOptions::new()
            .write(true)
            .open(file)
            .map_err(|e| ("cgroup", format!("{}: {e}", file.display())))?;
        f.write_all(b"0")
            .map_err(|e| ("cgroup", format!("{}: {e}", file.display())))?;
    }

    // 3. Root mode: become the job's host uid. Order: groups, then gid, then uid (after the
    //    uid change we could no longer change groups).
    if let Some((uid, gid)) = spec.host_ids {
        setgroups(&[]).map_err(at("setgroups"))?;
        setresgid(Gid::from_raw(gid), Gid::from_raw(gid), Gid::from_raw(gid))
            .map_err(at("setresgid"))?;
        setresuid(Uid::from_raw(uid), Uid::from_raw(uid), Uid::from_raw(uid))
            .map_err(at("setresuid"))?;
    }
    let (outer_uid, outer_gid) = (getuid(), getgid());
    phase(&spec, status, "helper-cgroup-and-ids");

    // 4. Namespaces. The ones we start in are the runner's: recorded first, so that every
    //    step's process can prove its own are different. In subuid mode the child that will
    //    write our id maps is forked first: it must stay outside the new user namespace.
    let outer_namespaces = crate::namespaces::current().map_err(at("namespaces"))?;
    let mapper = match &spec.subids {
        Some(ids) if spec.host_ids.is_none() => Some(
            crate::subid::Mapper::start(
                (&ids.newuidmap, &ids.newgidmap),
                vec![(JOB_UID, ids.uid)],
                vec![(JOB_GID, ids.gid)],
            )
            .map_err(|e| ("subordinate ids", e))?,
        ),
        Some(_) => {
            return Err((
                "subordinate ids",
                "the spec asks for both root-mode host ids and subordinate ids".into(),
            ))
        }
        None => None,
    };
    unshare(
        CloneFlags::CLONE_NEWUSER
            | CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWCGROUP,
    )
    .map_err(at("unshare namespaces"))?;

    // 5. Id maps: exactly one uid and one gid. Our own ids, with setgroups denied first
    //    (required for an unprivileged gid map, and it stops the job from dropping groups to
    //    evade a group-deny permission); or in subuid mode the job's subordinate ids (our own
    //    ids are then not mapped in the job's namespace at all) and no supplementary groups.
    //    Only a dumpable process's /proc files are its own: non-dumpable, they belong to root,
    //    so neither could this process write its maps nor would newuidmap (which checks the
    //    owner) write them. So dumpable for exactly this, and not again after.
    nix::sys::prctl::set_dumpable(true).map_err(at("dumpable"))?;
    match mapper {
        // Subuid mode: the runner's supplementary groups came along and must not reach the
        // job. With a gid map written by newgidmap from a subordinate grant, setgroups stays
        // allowed, so they are dropped here (the job process, without CAP_SETGID, can never
        // set any again).
        Some(mapper) => {
            mapper.finish().map_err(|e| ("subordinate ids", e))?;
            setgroups(&[]).map_err(at("setgroups in namespace"))?;
        }
        None => {
            fs::write("/proc/self/setgroups", "deny").map_err(at("setgroups deny"))?;
            fs::write("/proc/self/uid_map", format!("{JOB_UID} {outer_uid} 1\n"))
                .map_err(at("uid_map"))?;
            fs::write("/proc/self/gid_map", format!("{JOB_GID} {outer_gid} 1\n"))
                .map_err(at("gid_map"))?;
        }
    }
    nix::sys::prctl::set_dumpable(false).map_err(at("dumpable"))?;
    // Sources of /workspace and /tmp, opened in the new mount namespace (a bind source must
    // belong to it) without following a symlink at the last component, and before we become
    // the job's ids inside it: in subuid mode until then our host uid is still the runner's,
    // which can walk to its state directory wherever it is (a home directory of mode 0700,
    // say), where the job's uid could not. Their parents belong to the runner (root, or the
    // runner's user), mode 0700, or in root mode 0710 with the job's gid as their group so that
    // the job's uid alone may pass (see the runner's workspace module): it cannot replace them.
    let dir_flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let workspace =
        open(&spec.workspace, dir_flags, Mode::empty()).map_err(at("open workspace"))?;
    let tmp = open(&spec.tmp, dir_flags, Mode::empty()).map_err(at("open tmp"))?;
    let cache_dir: Option<OwnedFd> = match &spec.cache {
        Some(p) => Some(open(p, dir_flags, Mode::empty()).map_err(at("open cache"))?),
        None => None,
    };
    let rootfs_dir: Option<OwnedFd> = match &spec.rootfs {
        Some(p) => Some(
            open(p, dir_flags, Mode::empty())
                .map_err(|e| ("open rootfs", format!("{}: {e}", p.display())))?,
        ),
        None => None,
    };
    // Tools likewise: bind sources are taken from descriptors, so no host path (the state
    // directory may even sit under /tmp, which the new root covers) is walked again later.
    let tool_dirs: Vec<OwnedFd> = spec
        .tools
        .iter()
        .map(|t| {
            open(&t.host_dir, dir_flags, Mode::empty())
                .map_err(|e| ("open tool", format!("{}: {e}", t.host_dir.display())))
        })
        .collect::<Result<_, _>>()?;

    // Become the mapped ids so files we create have a valid owner. Uid 0 is not mapped in this
    // namespace, so this change does not clear the capabilities we hold in it.
    setresgid(
        Gid::from_raw(JOB_GID),
        Gid::from_raw(JOB_GID),
        Gid::from_raw(JOB_GID),
    )
    .map_err(at("setresgid in namespace"))?;
    setresuid(
        Uid::from_raw(JOB_UID),
        Uid::from_raw(JOB_UID),
        Uid::from_raw(JOB_UID),
    )
    .map_err(at("setresuid in namespace"))?;

    // 6. Die with the runner. Set after the last change of our host uid, which clears it
    //    (root mode's switch above; in subuid mode the switch to the job's id just now, which
    //    is a new host uid too); then check that the runner did not die before it was set.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(at("pdeathsig"))?;
    if getppid().as_raw() != i32::try_from(spec.runner_pid).unwrap_or(-1) {
        return Err((
            "pdeathsig",
            "the runner exited before the sandbox started".into(),
        ));
    }

    phase(&spec, status, "helper-namespaces-and-maps");
    // 8. Init. It checks, once its parent-death signal is set, that we still hold this pipe.
    let (helper_alive, alive_write) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(at("liveness pipe"))?;
    match crate::sys::fork_single_threaded().map_err(at("fork init"))? {
        Forked::Child => crate::init::run(
            &mut spec,
            status.try_clone().map_err(at("status"))?,
            log,
            crate::init::Inherited {
                workspace,
                tmp,
                egress_dir,
                tool_dirs,
                rootfs_dir,
                cache_dir,
                seccomp,
                outer_namespaces,
                helper_alive: {
                    drop(alive_write);
                    helper_alive
                },
                updates,
            },
        ),
        Forked::Parent(init) => {
            // Init writes the credentials, and any update; this process never needs them.
            spec.credentials.clear();
            drop(updates);
            // Held until we exit.
            let _alive_write = alive_write;
            drop(helper_alive);
            drop(log);
            drop(workspace);
            drop(tmp);
            drop(egress_dir);
            drop(tool_dirs);
            drop((rootfs_dir, cache_dir));
            loop {
                match waitpid(init, None) {
                    Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                    Ok(WaitStatus::Signaled(_, sig, _)) => {
                        return Err(("init", format!("init was killed by {sig}")));
                    }
                    Ok(_) => continue,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(("init", e.to_string())),
                }
            }
        }
    }
}
