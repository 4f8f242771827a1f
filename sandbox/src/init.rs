//! The job's init: pid 1 of the job's pid namespace.
//!
//! It builds the filesystem view, brings up the job's loopback, then runs each step: forks the
//! step's process (which locks itself down in [`crate::process`] and execs), waits for it with
//! the step's and the job's deadlines, and when the step's main process exits kills everything
//! else in the namespace before the next step starts. Being pid 1 is what makes that complete:
//! every orphan (a double-forked, `setsid`, signal-ignoring daemon) is reparented here, and
//! `kill(-1, SIGKILL)` from pid 1 reaches every process of the namespace. When init itself
//! dies, the kernel kills the whole namespace.
//!
//! Init holds no secret (a trusted job's credentials only while it writes them: the first ones
//! as the root is built, newer ones as they arrive, [`crate::credential_updates`]) and no
//! environment from the runner (the helper is started with an empty environment), is not
//! dumpable (so a job cannot read its memory or descriptors through `/proc/1`), keeps only its
//! status and log channels open (and, for a job whose credentials are refreshed, the update
//! channel and the writable clone of their tmpfs), and gives up its capabilities
//! once the job's root is built (all but one that grants nothing, kept so that the kernel
//! still ranks init above the job's processes: see [`crate::capabilities`]).

use std::fs::File;

use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{sethostname, Pid};

use crate::forwarder::Forwarder;
use crate::seccomp::JobFilters;
use crate::spec::{Event, SandboxSpec, StepSpec};
use crate::sys::Forked;

/// What the helper prepared for init: the sources of the job's mounts, the directory
/// of the egress proxy's socket and the seccomp program.
#[derive(Debug)]
pub struct Inherited {
    /// Source of `/workspace`.
    pub workspace: OwnedFd,
    /// Source of `/tmp`.
    pub tmp: OwnedFd,
    /// Directory holding the proxy socket, when the job has network.
    pub egress_dir: Option<OwnedFd>,
    /// Verified tool trees, in the order of `spec.tools`.
    pub tool_dirs: Vec<OwnedFd>,
    /// The pinned root filesystem, if any.
    pub rootfs_dir: Option<OwnedFd>,
    /// Source of `/cache`, when the job has caches.
    pub cache_dir: Option<OwnedFd>,
    /// The job's seccomp program, built by the helper while it waited for the spec.
    pub seccomp: JobFilters,
    /// The namespaces the helper started in (the runner's).
    pub outer_namespaces: Vec<crate::namespaces::NamespaceId>,
    /// Read end of a pipe whose only write end the helper holds: end-of-file means the helper
    /// is gone.
    pub helper_alive: OwnedFd,
    /// The credential update channel (the helper's standard input, after the spec), when the
    /// spec allows updates.
    pub updates: Option<OwnedFd>,
}

/// Runs as pid 1 of the job; never returns.
pub fn run(spec: &mut SandboxSpec, mut status: File, log: OwnedFd, fds: Inherited) -> ! {
    let code = match setup(spec, &mut status, &fds) {
        Ok((filters, mut forwarder, credentials_writer)) => {
            // The credentials are files in the job's view now: init holds no copy while the
            // job runs (each is zeroed as it is dropped).
            spec.credentials.clear();
            let spec = &*spec;
            crate::spec::phase(spec, &mut status, "init-root-built");
            let Inherited {
                workspace,
                tmp,
                egress_dir,
                tool_dirs,
                rootfs_dir,
                cache_dir,
                seccomp,
                outer_namespaces,
                helper_alive,
                updates,
            } = fds;
            let mut updates = match (updates, credentials_writer) {
                (Some(channel), Some(writer)) => Some(
                    crate::credential_updates::CredentialUpdates::new(channel, writer),
                ),
                _ => None,
            };
            drop((
                workspace,
                tmp,
                tool_dirs,
                rootfs_dir,
                cache_dir,
                seccomp,
                outer_namespaces,
                helper_alive,
            ));
            report(&mut status, &Event::Ready);
            // `egress_dir` stays open: the forwarder connects through it for every connection.
            let code = run_steps(
                spec,
                &filters,
                &log,
                &mut status,
                &mut forwarder,
                &mut updates,
            );
            drop(egress_dir);
            code
        }
        Err((stage, message)) => {
            report(
                &mut status,
                &Event::SetupFailed {
                    stage: stage.into(),
                    message,
                },
            );
            125
        }
    };
    crate::sys::exit_now(code)
}

fn report(status: &mut File, event: &Event) {
    // One write of a line far below PIPE_BUF: atomic. If the runner is gone there is nobody
    // to tell, and the parent-death signal ends us anyway.
    let _ = event.write_to(status);
}

type Stage = (&'static str, String);

/// What init prepares once and every step's process applies.
pub struct Prepared {
    /// Compiled seccomp filters.
    pub filters: JobFilters,
    /// The Landlock rulesets, one per distinct set of credentials the steps may read.
    pub landlock: crate::landlock::StepRulesets,
    /// The runner's namespaces, which no job process may share.
    pub outer_namespaces: Vec<crate::namespaces::NamespaceId>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared").finish_non_exhaustive()
    }
}

fn setup(
    spec: &SandboxSpec,
    status: &mut File,
    fds: &Inherited,
) -> Result<(Prepared, Option<Forwarder>, Option<OwnedFd>), Stage> {
    use std::os::fd::AsRawFd;
    let (workspace, tmp, tool_dirs) = (&fds.workspace, &fds.tmp, &fds.tool_dirs);
    let (egress_dir, rootfs_dir) = (fds.egress_dir.as_ref(), fds.rootfs_dir.as_ref());
    let filters = fds.seccomp.clone();
    // If the helper (our parent, outside this pid namespace) dies, so do we, and with us the
    // whole namespace.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| ("pdeathsig", e.to_string()))?;
    // A helper that died before that call sent no signal; our parent pid cannot tell (it is
    // outside this pid namespace: getppid() is 0), the pipe it holds can.
    let mut alive = [nix::poll::PollFd::new(
        fds.helper_alive.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    match nix::poll::poll(&mut alive, nix::poll::PollTimeout::ZERO) {
        Ok(0) => {}
        Ok(_) => {
            return Err((
                "pdeathsig",
                "the sandbox helper exited before init started".into(),
            ))
        }
        Err(e) => return Err(("pdeathsig", format!("checking the helper: {e}"))),
    }
    let ws = format!("/proc/self/fd/{}", workspace.as_raw_fd());
    let tp = format!("/proc/self/fd/{}", tmp.as_raw_fd());
    let tools: Vec<(String, std::path::PathBuf)> = spec
        .tools
        .iter()
        .zip(tool_dirs)
        .map(|(t, fd)| {
            (
                t.name.clone(),
                std::path::PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())),
            )
        })
        .collect();
    let rootfs =
        rootfs_dir.map(|fd| std::path::PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())));
    let cache = fds
        .cache_dir
        .as_ref()
        .map(|fd| std::path::PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())));
    let places = crate::mount::Places {
        workspace: ws.as_ref(),
        tmp: tp.as_ref(),
        tools: &tools,
        rootfs: rootfs.as_deref(),
        cache: cache.as_deref(),
    };
    let credentials_writer =
        crate::mount::build_root(spec, &places).map_err(|e| ("mount", e.to_string()))?;
    crate::spec::phase(spec, status, "init-mounted");
    sethostname(&spec.hostname).map_err(|e| ("hostname", e.to_string()))?;
    crate::sys::loopback_up().map_err(|e| ("loopback", e.to_string()))?;
    nix::sys::prctl::set_dumpable(false).map_err(|e| ("dumpable", e.to_string()))?;
    crate::spec::phase(spec, status, "init-loopback-up");
    let landlock = crate::landlock::StepRulesets::prepare(&spec.steps)
        .map_err(|e| ("landlock", e.to_string()))?;
    crate::spec::phase(spec, status, "init-filters-prepared");
    // The job's one way out: a forwarder on its loopback to the runner's proxy socket, reached
    // through the directory descriptor the helper opened (after pivot_root, /proc is the job's
    // own, and /proc/self/fd is init's table).
    let forwarder = match (&spec.egress, egress_dir) {
        (Some(e), Some(dir)) => {
            let listener = std::net::TcpListener::bind(("127.0.0.1", e.port)).map_err(|err| {
                (
                    "egress forwarder",
                    format!("listen on 127.0.0.1:{}: {err}", e.port),
                )
            })?;
            listener
                .set_nonblocking(true)
                .map_err(|err| ("egress forwarder", err.to_string()))?;
            let target =
                std::path::PathBuf::from(format!("/proc/self/fd/{}/egress.sock", dir.as_raw_fd()));
            Some(Forwarder::new(listener, target, e.max_connections))
        }
        (Some(_), None) => return Err(("egress forwarder", "no proxy socket directory".into())),
        (None, _) => None,
    };
    // Everything that needed a capability is done (the mounts, the host name, loopback, the
    // forwarder's port): from here on init holds none it could use (see `capabilities`).
    crate::capabilities::drop_for_init().map_err(|e| ("capabilities", e.to_string()))?;
    let outer_namespaces = fds.outer_namespaces.clone();
    Ok((
        Prepared {
            filters,
            landlock,
            outer_namespaces,
        },
        forwarder,
        credentials_writer,
    ))
}

fn run_steps(
    spec: &SandboxSpec,
    filters: &Prepared,
    log: &OwnedFd,
    status: &mut File,
    forwarder: &mut Option<Forwarder>,
    updates: &mut Option<crate::credential_updates::CredentialUpdates>,
) -> i32 {
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    if let Err(e) = chld.thread_set_mask() {
        report(
            status,
            &Event::SetupFailed {
                stage: "signals".into(),
                message: e.to_string(),
            },
        );
        return 125;
    }
    let sfd = match SignalFd::with_flags(&chld, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK) {
        Ok(s) => s,
        Err(e) => {
            report(
                status,
                &Event::SetupFailed {
                    stage: "signals".into(),
                    message: e.to_string(),
                },
            );
            return 125;
        }
    };
    let grace = Duration::from_millis(spec.kill_grace_ms);
    let job_deadline = Instant::now() + Duration::from_millis(spec.job_timeout_ms);
    let mut job_timed_out = false;
    for step in &spec.steps {
        let start = Instant::now();
        let deadline = match step.timeout_ms {
            Some(ms) => job_deadline.min(start + Duration::from_millis(ms)),
            None => job_deadline,
        };
        crate::spec::phase(spec, status, "init-step-fork");
        let outcome = run_step(
            step, spec, filters, log, status, &sfd, deadline, grace, forwarder, updates,
        );
        crate::spec::phase(spec, status, "init-step-reaped");
        let duration_ms = start.elapsed().as_millis().try_into().unwrap_or(u64::MAX);
        let (exit_code, signal) = match outcome.status {
            Some(WaitStatus::Exited(_, c)) => (Some(c), None),
            Some(WaitStatus::Signaled(_, s, _)) => (None, Some(s as i32)),
            _ => (None, None),
        };
        report(
            status,
            &Event::StepFinished {
                step: step.name.clone(),
                exit_code,
                signal,
                duration_ms,
                timed_out: outcome.timed_out,
            },
        );
        if outcome.timed_out && Instant::now() >= job_deadline {
            job_timed_out = true;
        }
        if exit_code != Some(0) {
            break;
        }
    }
    report(status, &Event::Done { job_timed_out });
    0
}

struct Outcome {
    status: Option<WaitStatus>,
    timed_out: bool,
}

#[allow(clippy::too_many_arguments)]
fn run_step(
    step: &StepSpec,
    spec: &SandboxSpec,
    filters: &Prepared,
    log: &OwnedFd,
    status: &mut File,
    sfd: &SignalFd,
    deadline: Instant,
    grace: Duration,
    forwarder: &mut Option<Forwarder>,
    updates: &mut Option<crate::credential_updates::CredentialUpdates>,
) -> Outcome {
    let main = match crate::sys::fork_single_threaded() {
        Ok(Forked::Child) => crate::process::exec_step(
            step,
            &spec.rlimits,
            filters,
            log,
            status,
            spec.report_phases,
        ),
        Ok(Forked::Parent(pid)) => pid,
        Err(e) => {
            report(
                status,
                &Event::SetupFailed {
                    stage: "fork".into(),
                    message: e.to_string(),
                },
            );
            return Outcome {
                status: None,
                timed_out: false,
            };
        }
    };
    let mut main_status = None;
    let mut timed_out = false;
    let mut kill_at: Option<Instant> = None;
    loop {
        reap(main, &mut main_status);
        if main_status.is_some() {
            break;
        }
        let now = Instant::now();
        if kill_at.is_none() && now >= deadline {
            // Time is up: ask every process of the job to stop, then insist after the grace.
            timed_out = true;
            let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
            kill_at = Some(now + grace);
        }
        if let Some(k) = kill_at {
            if now >= k {
                let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
            }
        }
        let next = kill_at.filter(|k| *k > now).unwrap_or(deadline);
        let wait = next
            .saturating_duration_since(now)
            .max(Duration::from_millis(1));
        let timeout =
            PollTimeout::try_from(wait.min(Duration::from_secs(3600))).unwrap_or(PollTimeout::MAX);
        // One poll for all: SIGCHLD, the credential updates and the forwarder's connections.
        let channel = updates.as_ref().and_then(|u| u.channel());
        let ready = |r: Option<PollFlags>| r.is_some_and(|r| !r.is_empty());
        // SIGCHLD first, the update channel second when there is one (no allocation here:
        // this runs at every wake-up of a step).
        let sig = sfd.as_fd();
        let n = if channel.is_some() { 2 } else { 1 };
        let pairs = [
            (sig, PollFlags::POLLIN),
            (channel.unwrap_or(sig), PollFlags::POLLIN),
        ];
        let updates_ready = match forwarder.as_mut() {
            Some(fw) => ready(
                fw.poll_once(&pairs[..n], Some(wait))
                    .ok()
                    .and_then(|r| r.get(1).copied()),
            ),
            None => {
                let mut fds = pairs.map(|(fd, events)| PollFd::new(fd, events));
                let _ = poll(&mut fds[..n], timeout);
                n == 2 && ready(fds[1].revents())
            }
        };
        if updates_ready {
            if let Some(u) = updates.as_mut() {
                u.on_readable(status);
            }
        }
        while let Ok(Some(_)) = sfd.read_signal() {}
    }
    // The main process is gone: whatever it left behind goes too, before the next step.
    kill_everything_else();
    Outcome {
        status: main_status,
        timed_out,
    }
}

fn reap(main: Pid, main_status: &mut Option<WaitStatus>) {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(st) => {
                if st.pid() == Some(main) {
                    *main_status = Some(st);
                }
            }
        }
    }
}

/// Kills every process of the namespace but init and waits until all are reaped.
fn kill_everything_else() {
    loop {
        // ESRCH: nothing left to signal; the wait below then ends with ECHILD.
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
        match waitpid(None, None) {
            Ok(_) => continue,
            Err(Errno::ECHILD) => return,
            Err(Errno::EINTR) => continue,
            Err(_) => return,
        }
    }
}
