//! The last steps in a job process before it execs the step's command.
//!
//! The order is deliberate; each layer is applied while the calls it needs are still allowed:
//! 1. `setsid`: a new session without a controlling terminal, so TIOCSTI has no terminal to
//!    push into even before seccomp refuses it.
//! 2. stdio: stdin from /dev/null, stdout and stderr to the job log.
//! 3. rlimits: no core dumps (they could hold secrets), bounded descriptors, and the explicit
//!    fallback limits where no cgroup enforces memory or pids; and the job's processes made
//!    the kernel's first choice when the job's memory runs out ([`JOB_OOM_SCORE_ADJ`]).
//! 4. the working directory, `/workspace`.
//! 5. `no_new_privs`: exec can never grant privileges again; Landlock and seccomp need it.
//! 6. Landlock (needs no capability once `no_new_privs` is set).
//! 7. capabilities: the bounding set first (dropping from it needs CAP_SETPCAP, which the
//!    next sets remove), then ambient, inheritable, effective and permitted, read back empty.
//! 8. argv and environment prepared, so nothing after seccomp needs to allocate much.
//! 9. seccomp, last but for two writes, so that it need not allow any of the calls above.
//! 10. the enforcement report to init, then every descriptor above stderr closed.
//! 11. exec with exactly the declared environment.
//!
//! Any failure reports the stage and exits 126 without exec: the command never runs.

use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::{open, OFlag};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
use nix::sys::stat::Mode;
use nix::unistd::{chdir, dup2_stderr, dup2_stdin, dup2_stdout, execve, setsid};

use crate::init::Prepared;
use crate::spec::{Enforced, Event, Rlimits, StepSpec};

/// Most memory a job process may lock (`RLIMIT_MEMLOCK`), when the runner's own limit is
/// higher: systemd's default, enough for gpg's secure memory and crypto test suites.
const MAX_MEMLOCK: u64 = 8 << 20;

/// The job processes' `oom_score_adj`: when the job's cgroup reaches its memory limit, the
/// kernel kills the process with the highest score, and memory a job holds in `/tmp`,
/// `/dev/shm` or socket buffers is charged to the cgroup but belongs to no process. Left at
/// 0, the sandbox's own processes (the helper and init, a few MiB each) were the largest and
/// were killed first, so the job's end went unreported (a runner error instead of the step
/// failing at its memory limit). Raised, every job process scores above them: half the
/// limit's worth of points on top of its memory, so the sandbox's processes are chosen only
/// when no job process is left. On the host's own OOM the jobs go before the host's services
/// too, as they should.
///
/// Only ever raised: a runner started with a higher score (a container runtime sets 1000 for
/// a Kubernetes pod without memory requests) keeps it, since lowering a score a privileged
/// process set needs CAP_SYS_RESOURCE on the host. Best effort: where the write fails the
/// job runs all the same (it decides which process dies first, it protects nothing), and the
/// runner still reports the memory limit from the cgroup when the sandbox is what was killed
/// (`runner/src/job`). After exec a job could lower its score only down to what the runner
/// inherited, and writing it is refused by Landlock anyway.
pub const JOB_OOM_SCORE_ADJ: i32 = 500;

/// Runs in the forked job process; never returns.
pub fn exec_step(
    step: &StepSpec,
    rlimits: &Rlimits,
    filters: &Prepared,
    log: &OwnedFd,
    status: &mut File,
    report_phases: bool,
) -> ! {
    match prepare(step, rlimits, filters, log, status, report_phases) {
        Ok(never) => match never {},
        Err((stage, message)) => {
            let _ = Event::SetupFailed {
                stage: stage.to_string(),
                message,
            }
            .write_to(status);
            crate::sys::exit_now(126)
        }
    }
}

type StageError = (&'static str, String);

fn stage<E: std::fmt::Display>(name: &'static str) -> impl FnOnce(E) -> StageError {
    move |e| (name, e.to_string())
}

/// Raises this process's `oom_score_adj` to [`JOB_OOM_SCORE_ADJ`] when it is lower. Its `/proc`
/// files are its own only while it is dumpable (init, whose fork this is, is not: they belong
/// to the host's root then, which no uid here may write as); dumpable for this one write, with
/// nothing else of the job running yet, and not again until exec makes it so. Best effort (see
/// [`JOB_OOM_SCORE_ADJ`]): only making it non-dumpable again may fail the step.
fn prefer_for_oom_kill() -> std::io::Result<()> {
    use std::io::Read;
    let mut current = String::new();
    let low = std::fs::File::open("/proc/self/oom_score_adj")
        .and_then(|mut f| f.read_to_string(&mut current))
        .ok()
        .and_then(|_| current.trim().parse::<i32>().ok())
        .is_some_and(|adj| adj < JOB_OOM_SCORE_ADJ);
    if !low {
        return Ok(());
    }
    nix::sys::prctl::set_dumpable(true)?;
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/self/oom_score_adj")
        .and_then(|mut f| f.write_all(JOB_OOM_SCORE_ADJ.to_string().as_bytes()));
    nix::sys::prctl::set_dumpable(false)?;
    Ok(())
}

fn prepare(
    step: &StepSpec,
    rlimits: &Rlimits,
    filters: &Prepared,
    log: &OwnedFd,
    status: &mut File,
    report_phases: bool,
) -> Result<std::convert::Infallible, StageError> {
    let mark = |status: &mut File, name: &str| {
        if report_phases {
            let ev = Event::Phase {
                name: name.into(),
                mono_ns: crate::spec::monotonic_ns(),
            };
            let _ = ev.write_to(status);
        }
    };
    mark(status, "job-forked");
    // Init blocks SIGCHLD to read it from a signalfd; the mask survives exec, so undo it.
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(stage("signal mask"))?;
    setsid().map_err(stage("setsid"))?;

    let null = open(
        "/dev/null",
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(stage("open /dev/null"))?;
    dup2_stdin(null.as_fd()).map_err(stage("stdin"))?;
    dup2_stdout(log.as_fd()).map_err(stage("stdout"))?;
    dup2_stderr(log.as_fd()).map_err(stage("stderr"))?;
    // Closed now, not when this function returns: descriptors are closed wholesale before
    // exec, and an `OwnedFd` dropped after that would close a number already closed (which
    // std aborts on in debug builds) or, reused, someone else's.
    drop(null);

    setrlimit(Resource::RLIMIT_CORE, rlimits.core, rlimits.core).map_err(stage("rlimit core"))?;
    // Raising a hard limit needs privilege on the host; lowering never does.
    let (_, nofile_hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(stage("rlimit nofile"))?;
    let nofile = rlimits.nofile.min(nofile_hard);
    setrlimit(Resource::RLIMIT_NOFILE, nofile, nofile).map_err(stage("rlimit nofile"))?;
    if let Some(n) = rlimits.nproc {
        setrlimit(Resource::RLIMIT_NPROC, n, n).map_err(stage("rlimit nproc"))?;
    }
    if let Some(n) = rlimits.address_space {
        setrlimit(Resource::RLIMIT_AS, n, n).map_err(stage("rlimit as"))?;
    }
    // Whatever the runner was started with (a container's `--ulimit rtprio`, a limits.conf
    // entry): no real-time scheduling (a SCHED_FIFO spinner is not throttled by a CPU limit
    // and starves the host), no raised nice priority, and a bounded amount of locked memory.
    setrlimit(Resource::RLIMIT_RTPRIO, 0, 0).map_err(stage("rlimit rtprio"))?;
    setrlimit(Resource::RLIMIT_NICE, 0, 0).map_err(stage("rlimit nice"))?;
    let (_, memlock_hard) = getrlimit(Resource::RLIMIT_MEMLOCK).map_err(stage("rlimit memlock"))?;
    let memlock = MAX_MEMLOCK.min(memlock_hard);
    setrlimit(Resource::RLIMIT_MEMLOCK, memlock, memlock).map_err(stage("rlimit memlock"))?;
    prefer_for_oom_kill().map_err(stage("oom_score_adj"))?;

    chdir("/workspace").map_err(stage("chdir /workspace"))?;
    nix::sys::prctl::set_no_new_privs().map_err(stage("no_new_privs"))?;
    let landlock = filters
        .landlock
        .for_step(step)
        .ok_or_else(|| {
            (
                "landlock",
                "no ruleset was prepared for this step".to_owned(),
            )
        })?
        .restrict_self()
        .map_err(stage("landlock"))?;
    mark(status, "job-landlocked");
    crate::capabilities::drop_all().map_err(stage("capabilities"))?;
    mark(status, "job-capabilities-dropped");

    // Every namespace must be the job's own, as the kernel sees it now.
    let namespaces = crate::namespaces::current()
        .map_err(stage("namespaces"))
        .and_then(|ours| {
            crate::namespaces::confirm_fresh(&ours, &filters.outer_namespaces)
                .map_err(|e| ("namespaces", e))
        })?;
    let enforced = Enforced {
        namespaces,
        landlock_abi: landlock.abi,
        landlock_scoped: landlock.scoped,
        seccomp: "allowlist".into(),
        no_new_privs: nix::sys::prctl::get_no_new_privs().unwrap_or(false),
        capabilities_dropped: true,
    };
    // Build everything exec needs before seccomp and before closing descriptors.
    let argv: Vec<CString> = step
        .argv
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(stage("argv"))?;
    let envp: Vec<CString> = step
        .env
        .iter()
        .map(|(k, v)| CString::new(format!("{k}={v}")))
        .collect::<Result<_, _>>()
        .map_err(stage("environment"))?;
    let prog = argv
        .first()
        .cloned()
        .ok_or_else(|| ("argv", "empty command".to_string()))?;
    let prog = resolve_program(prog, &step.env);

    crate::seccomp::install(&filters.filters).map_err(stage("seccomp"))?;
    Event::StepEnforced {
        step: step.name.clone(),
        enforced,
    }
    .write_to(status)
    .map_err(stage("report"))?;
    mark(status, "job-exec");
    // Ignored signals survive exec too (the runner's SIGPIPE among them): the job starts with
    // every signal at its default. After the last report, so that SIGPIPE cannot kill this
    // process while it still reports to a status channel whose reader is gone.
    crate::sys::reset_signal_dispositions().map_err(stage("signal dispositions"))?;
    // Last before exec: the status channel and log are closed here (the job gets them as
    // nothing but its standard output and error), so a failure past this point could not
    // be reported on them; the caller's `OwnedFd`s are never dropped (it exits with
    // `exit_now`).
    crate::sys::close_fds_from(3).map_err(stage("close descriptors"))?;
    let e = execve(&prog, &argv, &envp).unwrap_err();
    let _ = writeln!(
        std::io::stderr(),
        "bulwark: exec {:?} failed: {e}",
        step.argv[0]
    );
    crate::sys::exit_now(127)
}

/// A command without a `/` is looked up in the step's `PATH`, as a shell would.
fn resolve_program(prog: CString, env: &[(String, String)]) -> CString {
    if prog.as_bytes().contains(&b'/') {
        return prog;
    }
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or("/usr/bin:/bin");
    for dir in path.split(':').filter(|d| d.starts_with('/')) {
        let candidate = format!("{dir}/{}", String::from_utf8_lossy(prog.as_bytes()));
        if nix::unistd::access(candidate.as_str(), nix::unistd::AccessFlags::X_OK).is_ok() {
            if let Ok(c) = CString::new(candidate) {
                return c;
            }
        }
    }
    prog
}
