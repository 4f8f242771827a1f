//! Asking the sandbox helper to run the job and reading what it reports: the sandbox spec
//! (steps, environment, limits, tools, egress), the per-job egress proxy, the helper process
//! with its status and log channels, and the enforcement it confirms.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use bulwark_protocol::{format_size, StepResult};
use bulwark_sandbox::cgroup::JobCgroup;
use bulwark_sandbox::spec::{Event, Rlimits, SandboxSpec, StepSpec};

use super::{JobRun, Reported, Stop, JOB_PATH};
use crate::config::Dirs;
use crate::workspace::JobDir;

impl JobRun<'_> {
    pub(super) fn sandbox_spec(
        &self,
        jobdir: &JobDir,
        host_uid: Option<u32>,
        cg: Option<&JobCgroup>,
        fallback: bool,
    ) -> SandboxSpec {
        let steps = self
            .job
            .steps
            .iter()
            .map(|s| {
                let mut env: Vec<(String, String)> = vec![
                    ("PATH".into(), JOB_PATH.into()),
                    ("HOME".into(), "/workspace".into()),
                    ("TMPDIR".into(), "/tmp".into()),
                ];
                for (k, v) in &s.env {
                    env.retain(|(ek, _)| ek != k);
                    env.push((k.clone(), v.clone()));
                }
                StepSpec {
                    name: s.name.clone(),
                    argv: vec!["/bin/sh".into(), "-c".into(), s.run.clone()],
                    env,
                    timeout_ms: s
                        .timeout
                        .map(|t| t.as_millis().try_into().unwrap_or(u64::MAX)),
                }
            })
            .collect();
        SandboxSpec {
            cgroup_join: cg.map(|c| c.join_files()).unwrap_or_default(),
            steps,
            job_timeout_ms: self.job.timeout.as_millis().try_into().unwrap_or(u64::MAX),
            kill_grace_ms: self
                .config
                .limits
                .kill_grace
                .as_millis()
                .try_into()
                .unwrap_or(u64::MAX),
            rlimits: Rlimits {
                nofile: 65536,
                core: 0,
                nproc: fallback.then_some(self.job.pids),
                address_space: fallback.then_some(self.job.memory),
            },
            ..super::base_spec(
                &jobdir.id,
                jobdir.workspace.clone(),
                jobdir.tmp.clone(),
                host_uid.map(|u| (u, u)),
            )
        }
    }

    /// Starts the job's egress proxy when its network policy allows anything (or the operator
    /// runs jobs in audit mode). Returns the socket directory and the running proxy.
    pub(super) fn start_egress(
        &self,
        jobdir: &JobDir,
        host_uid: Option<u32>,
    ) -> Result<Option<(PathBuf, crate::egress::JobProxy)>, Stop> {
        let allow: Vec<String> = self
            .job
            .spec
            .network
            .as_ref()
            .map(|n| n.allow.clone())
            .unwrap_or_default();
        let audit = self.config.egress.audit;
        if allow.is_empty() && !audit {
            return Ok(None);
        }
        if audit {
            eprintln!("bulwark: warning: egress audit mode is on (egress.audit): this job may connect anywhere but the metadata addresses and this host's loopback; every connection is logged and recorded in result.json and provenance");
        }
        let refuse = |what: &str, e: &dyn std::fmt::Display| {
            Stop::Refused(format!("egress proxy: {what}: {e}"))
        };
        let dirs = Dirs::resolve(self.config).map_err(|e| refuse("runtime directory", &e))?;
        let dir = dirs.runtime.join("jobs").join(&jobdir.id);
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|e| refuse("creating the socket directory", &e))?;
        }
        let policy = crate::egress::EgressPolicy::new(&allow, &self.config.egress.hosts, audit)
            .map_err(|e| refuse("policy", &e))?;
        let socket = dir.join("egress.sock");
        let proxy = crate::egress::start(
            &socket,
            policy,
            &self.out.join("egress.log"),
            crate::egress::ProxyLimits::default(),
        )
        .map_err(|e| refuse("starting", &e))?;
        // Only the job's init (running as the job's uid) may connect; no other job or user.
        if let Some(uid) = host_uid {
            for p in [&dir, &socket] {
                std::os::unix::fs::lchown(p, Some(uid), Some(uid))
                    .map_err(|e| refuse("handing the socket to the job's uid", &e))?;
            }
        }
        std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(|e| refuse("socket mode", &e))?;
        Ok(Some((dir, proxy)))
    }

    pub(super) fn run_sandbox(
        &mut self,
        spec: &SandboxSpec,
        helper: crate::helper_process::Started,
    ) -> Result<Reported, Stop> {
        let mut helper = helper;
        // job.log first: if it cannot be made, the helper is killed before it ever gets a spec.
        let log = helper
            .take_stderr()
            .ok_or_else(|| Stop::Refused("no log channel".into()))?;
        let log_thread =
            crate::joblog::capture(log, &self.out, self.config.limits.log_cap, !self.args.quiet)
                .map_err(|e| {
                    Stop::Refused(format!("creating job.log in {}: {e}", self.out.display()))
                })?;
        let mut child = helper.send(spec).map_err(Stop::Refused)?;
        // Backstop: if init somehow outlives every deadline, kill the helper (and with it, by
        // parent-death signals, the whole sandbox).
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let helper_pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let backstop = Duration::from_millis(
            spec.job_timeout_ms
                .saturating_add(spec.kill_grace_ms.saturating_mul(2)),
        ) + Duration::from_secs(30);
        let watchdog = std::thread::spawn(move || {
            if done_rx.recv_timeout(backstop) == Err(mpsc::RecvTimeoutError::Timeout) {
                let _ = nix::sys::signal::kill(helper_pid, nix::sys::signal::Signal::SIGKILL);
            }
        });
        let mut reported = Reported::default();
        if let Some(status) = child.stdout.take() {
            for line in BufReader::new(status).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Event>(&line) {
                    Ok(ev) => self.on_event(ev, &mut reported),
                    // Fail closed: an event we cannot read may be the one that says what
                    // was enforced (a helper from another build would say it differently).
                    Err(e) => {
                        reported.setup_failed.get_or_insert((
                            "status".into(),
                            format!("unreadable status line from the sandbox helper ({e})"),
                        ));
                    }
                }
            }
        }
        let status = child.wait();
        let _ = done_tx.send(());
        let _ = watchdog.join();
        match log_thread.join() {
            Ok(Ok(stats)) if stats.dropped > 0 => {
                eprintln!(
                    "bulwark: job log truncated at {} (limits.log_cap); {} bytes dropped",
                    format_size(self.config.limits.log_cap),
                    stats.dropped
                );
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(Stop::Runner(format!("writing job.log: {e}"))),
            Err(_) => return Err(Stop::Runner("the job log thread panicked".into())),
        }
        tracing::debug!(?status, "sandbox helper exited");
        Ok(reported)
    }

    pub(super) fn on_event(&mut self, ev: Event, r: &mut Reported) {
        match ev {
            Event::Ready => {}
            Event::StepEnforced { step, enforced } => {
                r.any_step_started = true;
                if !self.args.quiet {
                    eprintln!("bulwark: ▶ step {step}");
                }
                // Every step must report the same protections; keep the weakest seen.
                match &r.enforced {
                    Some(prev) if *prev != enforced => {
                        r.setup_failed.get_or_insert((
                            "consistency".into(),
                            format!(
                                "step {step} reported different protections than an earlier step"
                            ),
                        ));
                    }
                    _ => r.enforced = Some(enforced),
                }
            }
            Event::StepFinished {
                step,
                exit_code,
                signal,
                duration_ms,
                timed_out,
            } => {
                if !self.args.quiet {
                    let how = match (exit_code, signal, timed_out) {
                        (_, _, true) => "timed out".to_string(),
                        (Some(0), _, _) => "ok".to_string(),
                        (Some(c), _, _) => format!("exit {c}"),
                        (None, Some(s), _) => format!("signal {s}"),
                        _ => "ended".into(),
                    };
                    eprintln!("bulwark: ◀ step {step}: {how} ({duration_ms} ms)");
                }
                r.steps.push(StepResult {
                    name: step,
                    exit_code,
                    signal,
                    duration_ms,
                    timed_out,
                    limit: None,
                });
            }
            Event::SetupFailed { stage, message } => {
                r.setup_failed.get_or_insert((stage, message));
            }
            Event::Done { job_timed_out } => r.done = Some(job_timed_out),
            Event::Phase { .. } => {}
        }
    }
}

/// The layer names recorded in `isolation.confirmed`.
pub(super) fn confirmed_layers(en: &bulwark_sandbox::spec::Enforced) -> Vec<String> {
    // Namespaces the job's process was seen (by the kernel's nsfs identities, just before
    // exec) to be in apart from the runner's.
    let mut v: Vec<String> = en
        .namespaces
        .iter()
        .map(|ns| {
            let label = match ns.as_str() {
                "mnt" => "mount",
                "net" => "network",
                other => other,
            };
            format!("{label}-namespace")
        })
        .collect();
    v.push(format!("landlock-abi-{}-fully-enforced", en.landlock_abi));
    if en.landlock_scoped {
        v.push("landlock-scopes".into());
    }
    if en.seccomp == "allowlist" {
        v.push("seccomp-allowlist".into());
    }
    if en.no_new_privs {
        v.push("no-new-privs".into());
    }
    if en.capabilities_dropped {
        v.push("capabilities-none".into());
    }
    v
}
