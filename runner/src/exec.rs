//! `bulwark exec`: one command in a fresh sandbox with every layer on, and nothing else.
//!
//! No job spec, no source copy, no outputs, no log capture (the command's output goes straight
//! to stderr): the sandbox launch path alone, end to end, including the job's cgroup creation
//! and removal. It exists for the launch benchmark (`bench/launch.sh`) and for poking at the
//! sandbox by hand (`bulwark exec -- sh -c 'cat /proc/self/status'`). With `--phases` it
//! prints a JSON object of monotonic timestamps for each phase of the launch.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bulwark_sandbox::cgroup::{self, JobCgroup, Limits};
use bulwark_sandbox::spec::{monotonic_ns, Event, Rlimits, SandboxSpec, StepSpec};

use crate::config::{self, Dirs};
use crate::job::JOB_PATH;

/// Runs `bulwark exec`; returns the exit status (the command's, or 2 when refused).
pub fn run(config_path: Option<PathBuf>, phases: bool, argv: Vec<String>) -> u8 {
    let t0 = monotonic_ns();
    match run_inner(config_path, phases, argv, t0) {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("bulwark: {msg}");
            crate::exit::REFUSED
        }
    }
}

fn run_inner(
    config_path: Option<PathBuf>,
    phases: bool,
    argv: Vec<String>,
    t0: u64,
) -> Result<u8, String> {
    let mut marks: Vec<(String, u64)> = vec![("runner-start".into(), t0)];
    let loaded = config::load(config_path.as_deref()).map_err(|e| format!("{e:#}"))?;
    marks.push(("runner-config-loaded".into(), monotonic_ns()));
    let root = config::is_root();
    if crate::job::isolation_mode(loaded.config.limits.isolation, root)?
        == bulwark_protocol::IsolationMode::Subuid
    {
        return Err(
            "bulwark exec does not support subuid mode yet (limits.isolation = \
                    \"subuid\"); use bulwark run, which does"
                .into(),
        );
    }
    // The helper is exec'd while we lease a uid and make the job's directories and cgroups.
    // The job's output goes to our stderr, but never as our own descriptor: through it a job
    // could reach the caller's terminal (window size, line settings, line discipline: ioctls
    // seccomp does not refuse), truncate a file it was redirected to, or shut a socket down.
    // Only /dev/null is passed as it is; anything else is relayed through a pipe.
    let relay = !stderr_is_dev_null();
    let mut helper = crate::helper_process::HelperBinary::open()?.start(if relay {
        Stdio::piped()
    } else {
        Stdio::inherit()
    })?;
    let relay = helper.take_stderr().map(|mut log| {
        // To a terminal, control characters are shown, not sent (as `run` echoes).
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let mut buf = vec![0u8; 64 * 1024];
            let mut shown = bulwark_protocol::terminal::VisibleStream::default();
            loop {
                let n = match log.read(&mut buf) {
                    Ok(0) => {
                        let _ = std::io::stderr().lock().write_all(&shown.finish());
                        return;
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => return,
                };
                let mut err = std::io::stderr().lock();
                let _ = if terminal {
                    err.write_all(&shown.show(&buf[..n]))
                } else {
                    err.write_all(&buf[..n])
                };
            }
        })
    });
    marks.push(("runner-helper-started".into(), monotonic_ns()));
    let limits = &loaded.config.limits;
    let dirs = Dirs::resolve(&loaded.config).map_err(|e| format!("{e:#}"))?;
    dirs.create().map_err(|e| format!("{e:#}"))?;
    let support = cgroup::detect();
    let lease = if root {
        Some(crate::uids::lease(&limits.root_job_uids()).map_err(|e| format!("{e:#}"))?)
    } else {
        None
    };
    // A disk as `run` makes one: checked against the reserve under the reservation lock.
    let jobdir = crate::workspace::create_reserved(
        &dirs,
        "exec",
        &humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        limits.max_disk,
        limits.min_free_disk,
    )
    .map_err(|e| format!("{e:#}"))?;
    if let Some(l) = &lease {
        for d in [jobdir.workspace.clone(), jobdir.tmp.clone()] {
            if let Err(e) = std::os::unix::fs::lchown(&d, Some(l.uid), Some(l.uid)) {
                // Removed now: `exec` never cleans up after others, and a job disk stays
                // mounted until something does.
                let _ = jobdir.remove();
                return Err(format!("chown {}: {e}", d.display()));
            }
        }
        if let Err(e) = jobdir.admit(l.uid) {
            let _ = jobdir.remove();
            return Err(format!("{e:#}"));
        }
    }
    marks.push(("runner-workspace".into(), monotonic_ns()));
    let cg_limits = Limits {
        memory: Some(limits.max_memory),
        pids: Some(limits.max_pids),
        cpu_millis: limits.max_cpus,
    };
    let cg = match JobCgroup::create(&support, &jobdir.id, &cg_limits, helper.pid().as_slice()) {
        Ok(cg) => Some(cg),
        Err(e) if limits.max_cpus.is_some() => {
            let _ = jobdir.remove();
            return Err(format!(
                "cgroups: {e}; the CPU limit (limits.max_cpus) has no rlimit fallback"
            ));
        }
        Err(e) if !limits.allow_rlimit_fallback => {
            let _ = jobdir.remove();
            return Err(format!(
                "cgroups: {e}; set limits.allow_rlimit_fallback = true to run with rlimits alone"
            ));
        }
        Err(e) => {
            eprintln!("bulwark: warning: no job cgroup ({e}); memory and pids are limited by rlimits only (limits.allow_rlimit_fallback = true)");
            None
        }
    };
    marks.push(("runner-cgroup-created".into(), monotonic_ns()));
    let spec = SandboxSpec {
        cgroup_join: cg.as_ref().map(|c| c.join_files()).unwrap_or_default(),
        hostname: "bulwark-exec".into(),
        steps: vec![StepSpec {
            name: "exec".into(),
            argv,
            env: vec![
                ("PATH".into(), JOB_PATH.into()),
                ("HOME".into(), "/workspace".into()),
                ("TMPDIR".into(), "/tmp".into()),
            ],
            timeout_ms: None,
            credentials: Vec::new(),
        }],
        job_timeout_ms: u64::try_from(limits.max_timeout.as_millis()).unwrap_or(u64::MAX),
        kill_grace_ms: u64::try_from(limits.kill_grace.as_millis()).unwrap_or(u64::MAX),
        rlimits: Rlimits {
            nofile: bulwark_sandbox::spec::JOB_NOFILE,
            core: 0,
            nproc: cg.is_none().then_some(limits.max_pids),
            address_space: cg.is_none().then_some(limits.max_memory),
        },
        report_phases: phases,
        ..crate::job::base_spec(
            &jobdir.id,
            jobdir.workspace.clone(),
            jobdir.tmp.clone(),
            lease.as_ref().map(|l| (l.uid, l.uid)),
        )
    };
    let mut child = match helper.send(&spec) {
        Ok((child, _)) => child,
        Err(e) => {
            if let Some(cg) = cg {
                let _ = cg.remove(Duration::from_secs(1));
            }
            let _ = jobdir.remove();
            return Err(e);
        }
    };
    marks.push(("runner-spec-sent".into(), monotonic_ns()));
    // Written while the helper sets the sandbox up, off the critical path. Until it exists a
    // later run's cleanup looks for the cgroup where this process would make it, which finds
    // it everywhere but in a delegated cgroup other than its own.
    if let Some(c) = &cg {
        if let Err(e) = jobdir.record_cgroup(c) {
            eprintln!("bulwark: warning: {e:#}; a run cleaning up after this one, should it die, may miss its cgroup");
        }
    }
    let mut code = None;
    let mut failed = None;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            match serde_json::from_str::<Event>(&line) {
                Ok(Event::Phase { name, mono_ns }) => marks.push((name, mono_ns)),
                Ok(Event::StepFinished {
                    exit_code, signal, ..
                }) => code = Some(exit_code.unwrap_or(128 + signal.unwrap_or(0))),
                Ok(Event::SetupFailed { stage, message }) => {
                    failed.get_or_insert(format!("the sandbox could not apply {stage}: {message}"));
                }
                _ => {}
            }
        }
    }
    let _ = child.wait();
    if let Some(relay) = relay {
        let _ = relay.join();
    }
    marks.push(("runner-helper-reaped".into(), monotonic_ns()));
    if let Some(cg) = cg {
        cg.remove(Duration::from_secs(10))
            .map_err(|e| format!("removing the job's cgroup: {e}"))?;
    }
    marks.push(("runner-cgroup-removed".into(), monotonic_ns()));
    let _ = jobdir.remove();
    // The helper was reaped, so its pid namespace (every job process) is gone.
    if let Some(l) = lease {
        l.release_clean();
    }
    marks.push(("runner-end".into(), monotonic_ns()));
    if phases {
        let obj: serde_json::Map<String, serde_json::Value> = marks
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::from(v)))
            .collect();
        eprintln!("{}", serde_json::Value::Object(obj));
    }
    if let Some(f) = failed {
        return Err(f);
    }
    Ok(code
        .map(|c| u8::try_from(c & 0xff).unwrap_or(1))
        .unwrap_or(crate::exit::RUNNER_ERROR))
}

/// Whether our standard error is `/dev/null` (character device 1:3).
fn stderr_is_dev_null() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileTypeExt;
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    let Ok(meta) = std::fs::File::from(fd).metadata() else {
        return false;
    };
    let dev_null = std::fs::metadata("/dev/null").map(|m| std::os::unix::fs::MetadataExt::rdev(&m));
    meta.file_type().is_char_device()
        && dev_null.is_ok_and(|d| std::os::unix::fs::MetadataExt::rdev(&meta) == d)
}
