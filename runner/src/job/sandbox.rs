//! Asking the sandbox helper to run the job and reading what it reports: the sandbox spec
//! (steps, environment, limits, tools, egress), the per-job egress proxy, the helper process
//! with its status and log channels, and the enforcement it confirms.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use bulwark_protocol::{format_size, StepResult};
use bulwark_sandbox::cgroup::JobCgroup;
use bulwark_sandbox::spec::{Event, Rlimits, SandboxSpec, StepSpec};

use super::{JobRun, Reported, Stop, JOB_PATH};
use crate::config::Dirs;
use crate::joblog::LogCapture;
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
                    credentials: s.credentials.clone(),
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
                nofile: bulwark_sandbox::spec::JOB_NOFILE,
                core: 0,
                nproc: fallback.then_some(self.job.pids),
                address_space: fallback.then_some(self.job.memory),
            },
            credentials: self.credential_files.clone(),
            // Only credentials that expire are ever refreshed.
            credential_updates: self.updates.is_some()
                && self.credentials.iter().any(|c| c.expires.is_some()),
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
    ) -> Result<Option<Egress>, Stop> {
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
            let reach = if self.args.trust == bulwark_protocol::Trust::Trusted {
                "anywhere but the metadata addresses, link-local and this host's own addresses"
            } else {
                "any public address (private networks only where its allow list names the address)"
            };
            eprintln!("bulwark: warning: egress audit mode is on (egress.audit): this job may connect to {reach}; every connection is logged and recorded in result.json and provenance");
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
        let policy = crate::egress::EgressPolicy::new(
            &allow,
            &self.config.egress.hosts,
            audit,
            &self.config.host.addresses,
        )
        .map_err(|e| refuse("policy", &e))?
        .reaching_private_in_audit(self.args.trust == bulwark_protocol::Trust::Trusted);
        let socket = dir.join("egress.sock");
        // Bound through a descriptor of its directory: a unix socket's path may hold at most
        // 107 bytes, and `<runtime>/jobs/<job id>/egress.sock` is longer than that for a job
        // name the spec may choose (63 characters) under `/run/bulwark`, and for shorter ones
        // under a longer runtime directory; `/proc/self/fd/N/egress.sock` always fits.
        let dir_fd = nix::fcntl::open(
            &dir,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| refuse("opening the socket directory", &std::io::Error::from(e)))?;
        let short = PathBuf::from(format!(
            "/proc/self/fd/{}/egress.sock",
            std::os::fd::AsRawFd::as_raw_fd(&dir_fd)
        ));
        let proxy = crate::egress::start(
            &short,
            policy,
            &self.out.join("egress.log"),
            crate::egress::ProxyLimits::default(),
        )
        .map_err(|e| refuse("starting", &e))?;
        let egress = Egress {
            dir: dir.clone(),
            proxy,
            _dir_fd: dir_fd,
        };
        // Only the job's init (running as the job's uid) may connect; no other job or user.
        if let Some(uid) = host_uid {
            for p in [&dir, &socket] {
                std::os::unix::fs::lchown(p, Some(uid), Some(uid))
                    .map_err(|e| refuse("handing the socket to the job's uid", &e))?;
            }
        }
        std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(|e| refuse("socket mode", &e))?;
        Ok(Some(egress))
    }

    pub(super) fn run_sandbox(
        &mut self,
        spec: &SandboxSpec,
        helper: crate::helper_process::Started,
        cg: Option<&bulwark_sandbox::cgroup::JobCgroup>,
    ) -> Result<Reported, Stop> {
        let mut helper = helper;
        // job.log first: if it cannot be made, the helper is killed before it ever gets a spec.
        let mut log_stream = helper
            .take_stderr()
            .ok_or_else(|| Stop::Refused("no log channel".into()))?;
        let masker = crate::creds::mask::Masker::new(self.masks.iter().map(|m| m.expose()));
        let mut log = LogCapture::create(&self.out, self.config.limits.log_cap, !self.args.quiet)
            .map(|l| l.masking(masker))
            .map_err(|e| {
                Stop::Refused(format!("creating job.log in {}: {e}", self.out.display()))
            })?;
        let (mut child, mut update_pipe) = helper.send(spec).map_err(Stop::Refused)?;
        let Some(mut status_stream) = child.stdout.take() else {
            // Cannot happen (stdout is always piped), but nothing after `send` may leave a
            // running helper behind.
            let _ = child.kill();
            let _ = child.wait();
            return Err(Stop::Runner(
                "no status channel from the sandbox helper".into(),
            ));
        };
        // Backstop: if init somehow outlives every deadline, kill the helper (and with it, by
        // parent-death signals, the whole sandbox).
        let backstop = Instant::now()
            + Duration::from_millis(
                spec.job_timeout_ms
                    .saturating_add(spec.kill_grace_ms.saturating_mul(2)),
            )
            + Duration::from_secs(30);
        let mut killed = false;
        let mut next_disk_check = Instant::now() + crate::disk_reserve::INTERVAL;
        let mut reported = Reported::default();
        let mut lines = StatusLines::default();
        let (mut status_open, mut log_open) = (true, true);
        let mut buf = vec![0u8; 64 * 1024];
        // One loop over both channels, on this thread: no reader threads to start and join.
        while status_open || log_open {
            let wait = if killed {
                PollTimeout::NONE
            } else {
                let now = Instant::now();
                let left = backstop.saturating_duration_since(now);
                if left.is_zero() {
                    let _ = child.kill();
                    killed = true;
                    reported.backstop = true;
                    continue;
                }
                // The disk reserve, checked every interval while the job runs: a job that
                // brings its filesystem below it is stopped like a job past the backstop.
                if let Some(disk) = &self.disk {
                    if now >= next_disk_check {
                        next_disk_check = now + crate::disk_reserve::INTERVAL;
                        if let Err(e) = disk.check(0) {
                            let _ = child.kill();
                            killed = true;
                            reported.stopped = Some(e.to_string());
                            continue;
                        }
                    }
                }
                let left = match &self.disk {
                    Some(_) => left.min(next_disk_check.saturating_duration_since(now)),
                    None => left,
                };
                // Rounded up to whole milliseconds: rounded down, the last one would spin.
                PollTimeout::try_from(
                    (left + Duration::from_micros(999)).min(Duration::from_secs(3600)),
                )
                .unwrap_or(PollTimeout::MAX)
            };
            // Newer credentials from the daemon, once the sandbox can take them (init reads
            // the channel only from then on).
            let stdin = std::io::stdin();
            let updates_open = update_pipe.is_some()
                && self.sandbox_ready
                && self
                    .updates
                    .as_ref()
                    .is_some_and(|u| u.is_open() || u.has_queued());
            let mut fds = Vec::with_capacity(3);
            if status_open {
                fds.push(PollFd::new(status_stream.as_fd(), PollFlags::POLLIN));
            }
            if log_open {
                fds.push(PollFd::new(log_stream.as_fd(), PollFlags::POLLIN));
            }
            if updates_open {
                fds.push(PollFd::new(stdin.as_fd(), PollFlags::POLLIN));
            }
            let wait = match self.updates.as_ref() {
                Some(u) if updates_open && u.has_queued() => PollTimeout::ZERO,
                _ => wait,
            };
            match poll(&mut fds, wait) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    // Nothing left to wait with: end the sandbox, and the job fails closed
                    // (what it reported from here on is unknown).
                    let _ = child.kill();
                    reported.setup_failed.get_or_insert((
                        "status".into(),
                        format!("polling the sandbox helper's channels: {e}"),
                    ));
                    break;
                }
            }
            let ready: Vec<bool> = fds
                .iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect();
            drop(fds);
            let mut ready = ready.into_iter();
            if status_open && ready.next() == Some(true) {
                match read_chunk(&mut status_stream, &mut buf) {
                    Chunk::Data(n) => {
                        lines.take(&buf[..n], |line| self.on_status_line(line, &mut reported));
                        // A step boundary: OOM kills from here on are what may end the sandbox
                        // or the next step. Read only while the sandbox still lives once read:
                        // a count read after it died (the runner reading behind) may hold the
                        // kill that ended it.
                        if std::mem::take(&mut reported.oom_kills_stale) {
                            if let Some(cg) = cg {
                                let (kills, limit_ooms) = cg.oom_counts();
                                if matches!(child.try_wait(), Ok(None)) {
                                    reported.oom_before_step.insert(
                                        reported.steps.len(),
                                        (kills, limit_ooms.unwrap_or(0)),
                                    );
                                }
                            }
                        }
                    }
                    Chunk::Again => {}
                    Chunk::End(error) => {
                        if let Some(e) = error {
                            // Fail closed: what was not read may be what was enforced.
                            reported.setup_failed.get_or_insert((
                                "status".into(),
                                format!("reading the sandbox helper's status: {e}"),
                            ));
                        }
                        status_open = false;
                        lines.finish(|line| self.on_status_line(line, &mut reported));
                    }
                }
            }
            if log_open && ready.next() == Some(true) {
                match read_chunk(&mut log_stream, &mut buf) {
                    Chunk::Data(n) => log.take(&buf[..n]),
                    Chunk::Again => {}
                    Chunk::End(error) => {
                        if let Some(e) = error {
                            log.fail(e);
                        }
                        log_open = false;
                    }
                }
            }
            let readable = updates_open && ready.next() == Some(true);
            let queued = self.updates.as_ref().is_some_and(|u| u.has_queued());
            // Checked again: the status just read may have said the steps are over.
            if updates_open && self.sandbox_ready && status_open && (readable || queued) {
                self.forward_updates(&mut log, &mut update_pipe, readable);
            }
        }
        drop(update_pipe);
        let status = child.wait();
        match log.finish() {
            Ok(stats) if stats.dropped > 0 => {
                eprintln!(
                    "bulwark: job log truncated at {} (limits.log_cap); {} bytes dropped",
                    format_size(self.config.limits.log_cap),
                    stats.dropped
                );
            }
            Ok(_) => {}
            // The disk reserve stopped the job: the disk may well have been too full for the
            // log too, and the stop is what the result must say.
            Err(e) if reported.stopped.is_some() => {
                eprintln!("bulwark: warning: job.log is incomplete: {e}");
            }
            Err(e) => return Err(Stop::Runner(format!("writing job.log: {e}"))),
        }
        tracing::debug!(?status, "sandbox helper exited");
        Ok(reported)
    }

    /// Reads the daemon's newer credentials (standard input was reported `readable`, or lines
    /// came with the first handoff) and sends them on to init: masked in the job's log first,
    /// so that no value of theirs can reach it unmasked. What could not be renewed, or not
    /// applied, is said in `result.json` for the credentials concerned.
    fn forward_updates(
        &mut self,
        log: &mut LogCapture,
        pipe: &mut Option<std::fs::File>,
        readable: bool,
    ) {
        let Some(updates) = self.updates.as_mut() else {
            return;
        };
        for handoff in updates.read(readable) {
            let mut handoff = match handoff {
                Ok(h) => h,
                Err(e) => {
                    self.update_failed(None, &e);
                    continue;
                }
            };
            for f in std::mem::take(&mut handoff.failed) {
                self.update_failed(Some(&[f.name]), &format!("renewing it: {}", f.reason));
            }
            if handoff.credentials.is_empty() {
                continue;
            }
            let prepared = match crate::creds::into_update(&self.job.spec.credentials, handoff) {
                Ok(p) => p,
                Err(e) => {
                    self.update_failed(None, &e);
                    continue;
                }
            };
            log.mask_more(prepared.masks.iter().map(|m| m.expose()));
            // The job may write the newer values into a cache too: kept for its save.
            self.masks.extend(prepared.masks.iter().cloned());
            let update = bulwark_sandbox::spec::CredentialUpdate {
                files: prepared.files,
            };
            let sent = bulwark_sandbox::secret_buf::SecretBuf::json_line(&update)
                .map_err(|e| e.to_string())
                .and_then(|line| match pipe.as_mut() {
                    Some(p) => p.write_all(line.as_bytes()).map_err(|e| e.to_string()),
                    None => Err("the update channel is closed".into()),
                });
            match sent {
                Ok(()) => self.updates_sent.push_back(prepared.records),
                Err(e) => {
                    // Init is gone while steps still run (the caller checked): nothing more
                    // can be sent.
                    *pipe = None;
                    let names: Vec<String> =
                        prepared.records.iter().map(|r| r.name.clone()).collect();
                    self.update_failed(Some(&names), &format!("sending it to the sandbox: {e}"));
                }
            }
        }
    }

    /// An update that did not reach the job: said in `result.json` for the credentials named
    /// (all, when which ones is unknown) and on the run's standard error.
    fn update_failed(&mut self, names: Option<&[String]>, why: &str) {
        eprintln!("bulwark: warning: credential update not applied: {why}");
        for r in &mut self.credentials {
            if names.is_none_or(|n| n.contains(&r.name)) {
                r.refresh_failed = Some(why.to_owned());
            }
        }
    }

    /// The steps are over: newer credentials would reach nobody. Standard input is closed,
    /// so that the daemon, whose end then reports an error, starts no further exchange.
    fn stop_updates(&mut self) {
        self.sandbox_ready = false;
        if let Some(u) = self.updates.as_mut() {
            u.close();
        }
    }

    /// One line of the helper's status channel.
    fn on_status_line(&mut self, line: &[u8], reported: &mut Reported) {
        let parsed = std::str::from_utf8(line)
            .map_err(|e| e.to_string())
            .and_then(|l| serde_json::from_str::<Event>(l).map_err(|e| e.to_string()));
        match parsed {
            Ok(ev) => self.on_event(ev, reported),
            // Fail closed: an event we cannot read may be the one that says what was enforced
            // (a helper from another build would say it differently).
            Err(e) => {
                reported.setup_failed.get_or_insert((
                    "status".into(),
                    format!("unreadable status line from the sandbox helper ({e})"),
                ));
            }
        }
    }

    /// The credentials a step may read, as its record names them.
    fn step_credentials(&self, step: &str) -> Vec<String> {
        if self.credential_files.is_empty() {
            return Vec::new();
        }
        let declared = self.job.steps.iter().find(|s| s.name == step);
        declared.map(|s| s.credentials.clone()).unwrap_or_default()
    }

    pub(super) fn on_event(&mut self, ev: Event, r: &mut Reported) {
        match ev {
            Event::Ready => {
                self.sandbox_ready = true;
                r.oom_kills_stale = true;
            }
            Event::CredentialsUpdated { names } => {
                let newer = self.updates_sent.pop_front().unwrap_or_default();
                for r in &mut self.credentials {
                    let Some(n) = newer.iter().find(|n| n.name == r.name) else {
                        continue;
                    };
                    if names.contains(&r.name) {
                        r.expires.clone_from(&n.expires);
                        r.refreshed = r.refreshed.saturating_add(1);
                        r.refresh_failed = None;
                    }
                }
            }
            Event::CredentialUpdateFailed { message } => {
                // The update it was (init reports each in order), or, with none in flight,
                // the channel itself.
                let names: Option<Vec<String>> = self
                    .updates_sent
                    .pop_front()
                    .map(|records| records.into_iter().map(|r| r.name).collect());
                self.update_failed(names.as_deref(), &format!("the sandbox: {message}"));
            }
            Event::StepEnforced { step, enforced } => {
                r.any_step_started = true;
                let record = StepResult {
                    name: step.clone(),
                    exit_code: None,
                    signal: None,
                    duration_ms: 0,
                    timed_out: false,
                    limit: None,
                    credentials: self.step_credentials(&step),
                };
                r.running = Some((record, std::time::Instant::now()));
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
                let credentials = self.step_credentials(&step);
                r.running = None;
                r.oom_kills_stale = true;
                r.steps.push(StepResult {
                    name: step,
                    exit_code,
                    signal,
                    duration_ms,
                    timed_out,
                    limit: None,
                    credentials,
                });
            }
            Event::SetupFailed { stage, message } => {
                r.setup_failed.get_or_insert((stage, message));
            }
            Event::Done { job_timed_out } => {
                r.done = Some(job_timed_out);
                self.stop_updates();
            }
            Event::Phase { .. } => {}
        }
    }
}

/// A job's running egress proxy and its socket's directory.
pub(super) struct Egress {
    /// `<runtime>/jobs/<job id>`, holding `egress.sock`.
    pub dir: PathBuf,
    proxy: crate::egress::JobProxy,
    /// The directory, open for as long as the proxy: the socket was bound through it, and the
    /// proxy removes it through it when it stops (fields drop in order: the proxy first).
    _dir_fd: std::os::fd::OwnedFd,
}

impl Egress {
    /// Stops the proxy (see `JobProxy::shutdown`); returns the socket's directory and the
    /// proxy's summary.
    pub fn shutdown(self) -> (PathBuf, std::io::Result<crate::egress::EgressSummary>) {
        let summary = self.proxy.shutdown();
        (self.dir, summary)
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

/// What one read of a channel the poll said was ready gave.
enum Chunk {
    /// This many bytes.
    Data(usize),
    /// Interrupted by a signal: try again.
    Again,
    /// End of the stream, or the error that ended it.
    End(Option<std::io::Error>),
}

fn read_chunk(stream: &mut impl Read, buf: &mut [u8]) -> Chunk {
    match stream.read(buf) {
        Ok(0) => Chunk::End(None),
        Ok(n) => Chunk::Data(n),
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Chunk::Again,
        Err(e) => Chunk::End(Some(e)),
    }
}

/// Splits the status channel into lines. A line longer than [`StatusLines::MAX`] is not an
/// event this runner knows: it is passed on cut short, so that it reads as unreadable (and
/// fails the job), and its remainder is dropped; memory stays bounded.
#[derive(Debug, Default)]
struct StatusLines {
    pending: Vec<u8>,
    overlong: bool,
}

impl StatusLines {
    const MAX: usize = 1 << 20;

    fn take(&mut self, data: &[u8], mut on_line: impl FnMut(&[u8])) {
        for chunk in data.split_inclusive(|b| *b == b'\n') {
            let (body, ends) = match chunk.strip_suffix(b"\n") {
                Some(body) => (body, true),
                None => (chunk, false),
            };
            if !self.overlong {
                let room = Self::MAX - self.pending.len();
                self.pending
                    .extend_from_slice(&body[..body.len().min(room)]);
                if body.len() > room {
                    self.overlong = true;
                    on_line(&self.pending);
                    self.pending.clear();
                }
            }
            if ends {
                if !self.overlong {
                    on_line(&self.pending);
                }
                self.pending.clear();
                self.overlong = false;
            }
        }
    }

    /// End of the channel: a last line without a newline still counts.
    fn finish(&mut self, mut on_line: impl FnMut(&[u8])) {
        if !self.pending.is_empty() && !self.overlong {
            on_line(&self.pending);
        }
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::StatusLines;

    #[test]
    fn status_lines_split_across_reads_and_bounded() {
        let mut seen: Vec<Vec<u8>> = Vec::new();
        let mut l = StatusLines::default();
        l.take(b"{\"a\":1}\n{\"b\"", |x| seen.push(x.to_vec()));
        l.take(b":2}\n\n{\"c\":3}", |x| seen.push(x.to_vec()));
        l.finish(|x| seen.push(x.to_vec()));
        assert_eq!(
            seen,
            vec![
                b"{\"a\":1}".to_vec(),
                b"{\"b\":2}".to_vec(),
                b"".to_vec(),
                b"{\"c\":3}".to_vec()
            ]
        );
        // An endless line is passed on once, cut at MAX, and the rest of it is dropped.
        seen.clear();
        let big = vec![b'x'; StatusLines::MAX + 10];
        l.take(&big, |x| seen.push(x.to_vec()));
        l.take(b"yyy\nok\n", |x| seen.push(x.to_vec()));
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].len(), StatusLines::MAX);
        assert_eq!(seen[1], b"ok".to_vec());
    }
}
