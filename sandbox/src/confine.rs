//! Confining a program the runner runs on the host (`bulwark-sandbox --confine`): git.
//!
//! The runner fetches a `[source] git` repository with `/usr/bin/git` before the job starts,
//! outside any sandbox: git needs the network and the runner's checked addresses, and the
//! checkout must be a plain tree for the runner to measure. Its configuration is locked down
//! (`runner/src/gitsource`), and as root it runs as the job's uid; but a hostile server or
//! repository that gets code running inside git (a bug in pack or protocol parsing) would still
//! have everything that uid, or in rootless mode the runner's own user, may do on the host:
//!
//! - write wherever that user may: world-writable `/tmp`, `/var/tmp` or `/dev/shm`, where a
//!   file that is setuid to the job uid would outlive the fetch and give anyone who runs it
//!   that uid, hence the workspace of the next job the uid is leased to; in rootless mode, the
//!   runner's own state (signing key, tool store);
//! - connect anywhere, not only to the repository's port;
//! - signal the user's other processes, or reach their abstract unix sockets.
//!
//! So the runner starts git through this mode, already switched to the uid it runs as, in a
//! process group of its own. This process stays as a small supervisor and forks git: a runner
//! killed mid-fetch (a cancelled job's run is killed with SIGKILL) kills nothing itself, and
//! git's own children (`git-remote-https`, `index-pack`) would go on, blocked on a silent
//! server, outside any deadline or size check. The supervisor asks for SIGTERM when the runner
//! dies (`--parent` names it, and is checked to still be the parent once that is set), reads it
//! from a signalfd, and then kills its whole process group with SIGKILL; when git ends it exits
//! with git's status (128 + the signal when git was killed by one). The forked child asks for
//! SIGKILL when the supervisor dies, then, before it execs the program: sets `no_new_privs`;
//! applies a Landlock ruleset under which the whole filesystem may be read and executed, but
//! written only beneath the `--write` directories (the destination and git's private HOME) and
//! `/dev/null`; where the
//! kernel has Landlock network rules (ABI 4), allows TCP connects only to the `--connect`
//! ports and no bind at all; and (ABI 6) scopes signals and abstract unix sockets to git's own
//! processes. Landlock holds for git's children too (`git-remote-https`, `index-pack`), and
//! cannot be undone. Then, because Landlock governs neither metadata nor pathname unix
//! sockets, it sets umask 022 and installs a seccomp filter (`seccomp::compile_confine`): no
//! `chown`, times, xattrs or io_uring, `chmod` never to a setuid, setgid, sticky or group- or
//! world-writable mode, no socket but TCP over IPv4 or IPv6 (no UDP or ICMP to any address,
//! no `AF_UNIX`, `AF_NETLINK` or `AF_VSOCK`), no datagram `socketpair`. Without it, in
//! rootless and subuid modes, code in git could `chmod 0777` the runner's tool store for another user to fill, or ask the user's
//! systemd manager (a pathname socket) to run a command outside Landlock. Whatever cannot be
//! applied refuses: git does not run.
//!
//! Alternatives rejected: a full job sandbox for git (namespaces, a tmpfs root, seccomp) would
//! need a second network path for the runner's fetch rules and a hand-over of the checkout out
//! of the sandbox's view; a private mount namespace with fresh `/tmp` and `/var/tmp` (names
//! only the directories we thought of; any other writable place stays open); scanning the host
//! for files of the uid after the fetch (slow, and racy).

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;

use landlock::{
    Access, AccessFs, AccessNet, CompatLevel, Compatible, NetPort, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};

use crate::spec::Stage;

/// What to confine the program to, from the command line.
#[derive(Debug, Default, PartialEq, Eq)]
struct Confinement {
    /// Directories written beneath.
    write: Vec<OsString>,
    /// TCP ports connected to.
    connect: Vec<u16>,
    /// The runner's pid: the program is killed when it dies.
    parent: i32,
    /// The program (absolute) and its arguments, argv[0] first.
    argv: Vec<OsString>,
}

/// Entry point of `bulwark-sandbox --confine --parent PID [--write DIR]... [--connect PORT]...
/// -- PROGRAM ARGS...`: runs PROGRAM confined and exits with its status, or reports why not on
/// standard error and exits 125.
pub fn confine_main(args: Vec<OsString>) -> ! {
    let err = match parse(args).and_then(|c| supervise(&c)) {
        Ok(never) => match never {},
        Err(stage) => stage,
    };
    fail(err)
}

fn fail((stage, message): Stage) -> ! {
    let err = format!("bulwark-sandbox: confine: {stage}: {message}\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr(), err.as_bytes());
    crate::sys::exit_now(125)
}

/// Forks the confined program and waits for it; kills the whole process group when the runner
/// dies (module docs).
fn supervise(c: &Confinement) -> Result<std::convert::Infallible, Stage> {
    use nix::sys::signal::{SigSet, Signal};
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let sig = |e: nix::errno::Errno| ("signals", e.to_string());
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGCHLD);
    mask.thread_block().map_err(sig)?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC).map_err(sig)?;
    // The runner switched to git's uid before this program ran (a change of credentials clears
    // the parent-death signal), and nothing here changes them again. Then the runner must still
    // be the parent: had it died before the signal was set, nothing would send it.
    nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(|e| ("pdeathsig", e.to_string()))?;
    if nix::unistd::getppid().as_raw() != c.parent {
        return Err((
            "pdeathsig",
            format!(
                "the runner (pid {}) is no longer this process's parent",
                c.parent
            ),
        ));
    }
    let supervisor = nix::unistd::getpid();
    let child = match crate::sys::fork_single_threaded().map_err(|e| ("fork", e.to_string()))? {
        crate::sys::Forked::Child => {
            drop(signals);
            let confined = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
                .map_err(|e| ("pdeathsig", e.to_string()))
                .and_then(|()| {
                    if nix::unistd::getppid() == supervisor {
                        Ok(())
                    } else {
                        Err(("pdeathsig", "the supervisor is gone".to_owned()))
                    }
                })
                .and_then(|()| SigSet::empty().thread_set_mask().map_err(sig))
                .and_then(|()| confine_and_exec(c));
            match confined {
                Ok(never) => match never {},
                Err(stage) => fail(stage),
            }
        }
        crate::sys::Forked::Parent(pid) => pid,
    };
    loop {
        let info = signals.read_signal().map_err(sig)?;
        match info.map(|i| i.ssi_signo as i32) {
            Some(n) if n == Signal::SIGTERM as i32 => {
                // The runner is gone: so is everything it started here, git's children too.
                let _ = nix::sys::signal::killpg(nix::unistd::getpgrp(), Signal::SIGKILL);
                crate::sys::exit_now(128 + n)
            }
            _ => match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => crate::sys::exit_now(code),
                Ok(WaitStatus::Signaled(_, signal, _)) => crate::sys::exit_now(128 + signal as i32),
                Ok(_) => {}
                Err(e) => return Err(("wait", e.to_string())),
            },
        }
    }
}

fn parse(args: Vec<OsString>) -> Result<Confinement, Stage> {
    let usage = || {
        (
            "arguments",
            "usage: bulwark-sandbox --confine --parent PID [--write DIR]... [--connect PORT]... \
             -- PROGRAM ARGS..."
                .to_owned(),
        )
    };
    let mut c = Confinement::default();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        match arg.to_str() {
            Some("--write") => {
                let dir = it.next().ok_or_else(usage)?;
                if !dir.as_bytes().starts_with(b"/") {
                    return Err(("arguments", format!("--write {dir:?}: not absolute")));
                }
                c.write.push(dir);
            }
            Some("--parent") => {
                let pid = it.next().ok_or_else(usage)?;
                c.parent = pid
                    .to_str()
                    .and_then(|p| p.parse::<i32>().ok())
                    .filter(|p| *p > 1)
                    .ok_or_else(|| ("arguments", format!("--parent {pid:?}: not a pid")))?;
            }
            Some("--connect") => {
                let port = it.next().ok_or_else(usage)?;
                let port = port
                    .to_str()
                    .and_then(|p| p.parse::<u16>().ok())
                    .filter(|p| *p != 0)
                    .ok_or_else(|| ("arguments", format!("--connect {port:?}: not a port")))?;
                c.connect.push(port);
            }
            Some("--") => {
                c.argv = it.collect();
                break;
            }
            _ => return Err(usage()),
        }
    }
    match c.argv.first() {
        Some(p) if p.as_bytes().starts_with(b"/") && c.parent != 0 => Ok(c),
        _ => Err(usage()),
    }
}

fn confine_and_exec(c: &Confinement) -> Result<std::convert::Infallible, Stage> {
    nix::sys::prctl::set_no_new_privs().map_err(|e| ("no_new_privs", e.to_string()))?;
    let found = crate::sys::landlock_abi_version();
    let abi_n = crate::landlock::usable_abi();
    if abi_n == 0 {
        return Err((
            "landlock",
            crate::landlock::LandlockError::Unsupported { found }.to_string(),
        ));
    }
    let abi = ABI::from(abi_n as i32);
    let ll = |e: landlock::RulesetError| ("landlock", e.to_string());
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(abi))
        .map_err(ll)?;
    let network = abi_n >= 4;
    if network {
        ruleset = ruleset
            .handle_access(AccessNet::from_all(abi))
            .map_err(ll)?;
    }
    if abi_n >= 6 {
        ruleset = ruleset.scope(Scope::from_all(abi)).map_err(ll)?;
    }
    let open = |path: &std::ffi::OsStr| {
        PathFd::new(path).map_err(|e| ("landlock", format!("{}: {e}", path.to_string_lossy())))
    };
    let mut created = ruleset
        .create()
        .map_err(ll)?
        .add_rule(PathBeneath::new(
            open("/".as_ref())?,
            AccessFs::from_read(abi),
        ))
        .map_err(ll)?
        .add_rule(PathBeneath::new(
            open("/dev/null".as_ref())?,
            AccessFs::from_file(abi),
        ))
        .map_err(ll)?;
    for dir in &c.write {
        created = created
            .add_rule(PathBeneath::new(open(dir)?, AccessFs::from_all(abi)))
            .map_err(ll)?;
    }
    if network {
        for port in &c.connect {
            created = created
                .add_rule(NetPort::new(*port, AccessNet::ConnectTcp))
                .map_err(ll)?;
        }
    }
    let status = created.restrict_self().map_err(ll)?;
    if status.ruleset != RulesetStatus::FullyEnforced || !status.no_new_privs {
        return Err(("landlock", format!("not fully enforced: {status:?}")));
    }
    // What Landlock does not govern: mode, owner, times and xattrs of files the uid owns
    // anywhere, and pathname unix sockets (see `seccomp::compile_confine`). With umask 022
    // the modes git gives its own files never need a bit the filter refuses.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    let filter = crate::seccomp::compile_confine().map_err(|e| ("seccomp", e.to_string()))?;
    crate::seccomp::install(&filter).map_err(|e| ("seccomp", e.to_string()))?;
    let argv: Vec<CString> = c
        .argv
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(|e| ("arguments", e.to_string()))?;
    let Some(program) = argv.first() else {
        return Err(("arguments", "no program".into()));
    };
    // Landlock checks a path when it is opened, not a write to a descriptor already open: one
    // the runner inherited without close-on-exec (`bulwark run ... 3>>ci.log`) would let git
    // write wherever it leads. Git gets standard input, output and error only.
    crate::sys::close_fds_from(3).map_err(|e| ("close descriptors", e.to_string()))?;
    // The environment is the one the runner gave this process, unchanged.
    let err = nix::unistd::execv(program, &argv).unwrap_err();
    Err(("exec", format!("{}: {err}", program.to_string_lossy())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_command_line_names_writable_directories_ports_and_the_program() {
        let c = parse(args(&[
            "--parent",
            "77",
            "--write",
            "/d",
            "--connect",
            "443",
            "--write",
            "/h",
            "--",
            "/usr/bin/git",
            "fetch",
        ]))
        .unwrap();
        assert_eq!(
            c,
            Confinement {
                write: args(&["/d", "/h"]),
                connect: vec![443],
                parent: 77,
                argv: args(&["/usr/bin/git", "fetch"]),
            }
        );
    }

    #[test]
    fn a_bad_command_line_is_refused_before_anything_runs() {
        for bad in [
            &["--parent", "9", "--", "git"][..], // relative program
            &["--parent", "9", "--write", "rel", "--", "/bin/true"], // relative directory
            &["--parent", "9", "--connect", "0", "--", "/bin/true"], // port 0
            &["--parent", "9", "--connect", "65536", "--", "/bin/true"], // not a port
            &["--parent", "9", "--write"],       // missing value
            &["--parent", "9", "/bin/true"],     // no --
            &["--parent", "9", "--"],            // no program
            &["--", "/bin/true"],                // no parent
            &["--parent", "1", "--", "/bin/true"], // init is nobody's runner
            &["--parent", "x", "--", "/bin/true"], // not a pid
        ] {
            assert!(parse(args(bad)).is_err(), "{bad:?}");
        }
    }
}
