//! `bulwark daemon`: the long-running service of a build host registered with a coordinator
//! (docs/control-plane.md).
//!
//! What it does, in a loop: lease a job from the coordinator (signed request), run it exactly
//! as `bulwark run` would, report `result.json` and the signed provenance, and ask again. An
//! idle daemon asks every `[daemon] poll_interval`; after a failed request it waits that long,
//! doubling up to a minute (or the poll interval, when longer), so a coordinator outage is
//! not hammered by the fleet.
//!
//! Why each job is a `bulwark run` child process, not a function call: the run is the code
//! path every other test and user exercises, with all its refusals (the spec validated against
//! *this host's* ceilings, the layers this host can enforce) and its cleanup guarantees; a
//! crash or a leak in one job's run cannot take the daemon, or the next job, with it; and the
//! daemon itself stays a small async loop that never forks (DESIGN.md, "Process model"). The
//! child gets `--parent-pid`: it dies with the daemon (`PR_SET_PDEATHSIG`, checked against the
//! race where the daemon died first), and its own death kills every job process, so a crashed
//! daemon leaves no job running unobserved; the lease then ends and the coordinator records
//! the job as lost. Provenance is only ever what the run signed after its job finished.
//!
//! Trust: the level is the coordinator's (`--trust` from the lease), never the spec's. The
//! spec must name its source (a git commit or a url with its sha256): the daemon has no
//! directory to take one from, so a spec with `[source] path` or none is refused and
//! reported as refused without running. Everything else `bulwark run` would refuse on this
//! host's configuration (`job::check_spec`) is refused before anything is asked of anyone.
//!
//! Credentials (docs/credentials.md): for a trusted job whose spec names some, the daemon asks
//! the coordinator for the job's identity token, one per credential (audience from the
//! operator's `[credentials.<name>]`), exchanges each at its token service (`creds`), and
//! hands the result to the run over the run's standard input. A failed exchange refuses the
//! job; an untrusted job never causes a token request. While the job runs, credentials that
//! expire are exchanged again at two thirds of their lifetime and sent down the same pipe
//! (`refresh_credentials`).
//!
//! Stopping: SIGTERM or SIGINT stops leasing; the jobs that are running are finished and
//! reported first. A second signal kills their runs at once (its job processes die with it) and reports
//! the job as a runner error. A job leased while the stop was asked for is reported as not
//! run; a second signal while a report is being retried gives the report up (the coordinator
//! then records the job lost when its lease ends). Each run is its own process group, so a
//! Ctrl-C at the daemon's terminal (SIGINT to the foreground group) is the daemon's first
//! signal, not its runs' death. One daemon per state directory (a lock file).
//!
//! Starting, the daemon removes what dead runs left in its state directory (job
//! directories, cgroups, loop disks, as every `bulwark run` does before its own job): a
//! daemon that crashed took its runs with it, and an idle host should not keep their
//! workspaces until its next job.
//!
//! Jobs run side by side up to `[daemon] slots` (default 1), each its own `bulwark run` with
//! its own uid lease, cgroup and job directory; the loop leases again as soon as a slot is
//! free.
//!
//! No leased job is left unreported (`lease`): every lease request names the jobs the daemon
//! holds, so a lease whose answer was lost is offered to it again and runs; a lease it cannot
//! read (a newer coordinator's field) is reported as a runner error saying to upgrade, never
//! run; a job leased again while it runs here is neither run nor reported twice; and a job a
//! daemon before this one took and never reported (it died while the job ran) is reported as
//! a runner error when offered again, not run a second time, since what ran of it may have
//! had effects.
//!
//! Every output the run's `result.json` lists is uploaded to the coordinator before the
//! result is reported (the coordinator refuses a result whose outputs it lacks): streamed
//! from the job's output directory, signed over the digest the run computed, retried like the
//! report. If that fails, the job is reported as a runner error saying so. The job's
//! directory, outputs included, stays on the host for `[daemon] keep_outputs` either way.
//!
//! The run's `job.log` and `egress.log` are uploaded the same way, first, and listed in the
//! report: a job whose outputs cannot be delivered is still reported with its log.
//!
//! Cancelling: while a job runs the daemon asks the coordinator every `[daemon]
//! poll_interval` whether the operator cancelled it (`POST /v1/jobs/{id}/heartbeat`; after a
//! failure it waits longer, doubling up to a minute). If so, it kills the run (its sandboxed
//! processes die with it; a git fetch the run started is killed by the next run of that job
//! uid in root mode), and reports the job `failed`, saying it was cancelled, with the log of
//! what ran. A coordinator that cannot be reached cannot cancel: the job goes on.
//!
//! While the job runs, what its run has stored of `job.log` so far (masked, capped: the run's
//! own file) is also sent every `[daemon] live_log_interval`, appended by offset
//! (`PUT /v1/jobs/{id}/live-log/{offset}`), so an operator can follow a long build at the
//! coordinator. That view is a convenience, never evidence: a failure to send it is logged
//! and tried again at the next interval (or given up when the coordinator refuses more), and
//! it never delays or fails the job. The log the result lists is the log.

pub mod client;
mod lease;
pub mod metrics;
pub mod registration;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bulwark_protocol::control::{Heartbeat, Lease, LogFile, ResultReport, MAX_BODY_BYTES};
use bulwark_protocol::JobSpec;
use lease::{Answer, Journal, Unreadable};
use tokio::io::AsyncReadExt;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::{self, Dirs};
use client::{Client, ClientError};
use registration::Identity;

/// The longest wait between attempts after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// How long before its lease ends a job that is still running is stopped: time to report
/// what ran while the coordinator still takes it. A lease lasts the job's timeout and ten
/// minutes; the steps are held to the timeout by the run, but fetching the job's inputs
/// comes before them and has timeouts of its own.
const LEASE_END_MARGIN: Duration = Duration::from_secs(60);

/// Why the daemon stopped a job before it ended on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopped {
    /// The operator cancelled it at the coordinator.
    Cancelled,
    /// Its lease is about to end (by this host's clock): nothing of it would be taken later.
    LeaseEnding,
    /// The coordinator no longer holds this runner's lease on it (the lease ended by its
    /// clock, or the job was given up): nothing of it will be taken.
    LeaseGone,
}

impl Stopped {
    /// The reason `result.json` gives.
    fn reason(self) -> &'static str {
        match self {
            Stopped::Cancelled => "cancelled by the operator while it ran",
            Stopped::LeaseEnding => {
                "stopped as its lease was about to end (the job's timeout plus ten minutes, \
                 for fetching its inputs and running its steps): the coordinator would take \
                 nothing of it afterwards"
            }
            Stopped::LeaseGone => {
                "stopped: the coordinator no longer holds this runner's lease on it (its lease \
                 ended, or the job was given up)"
            }
        }
    }
}

/// How long from now until a job leased until `expires_at` (seconds since the epoch) is
/// stopped, [`LEASE_END_MARGIN`] before its lease ends (zero when that is past).
fn until_lease_ending(expires_at: u64, now: u64) -> Duration {
    Duration::from_secs(expires_at.saturating_sub(now)).saturating_sub(LEASE_END_MARGIN)
}

/// Most bytes of a run's standard error kept to explain a refusal.
const STDERR_TAIL: usize = 16 * 1024;

/// Most bytes of the live log sent in one request (the coordinator takes up to
/// [`MAX_BODY_BYTES`]); more waiting is sent at once, in further requests.
const LIVE_LOG_CHUNK: usize = 1 << 20;

/// `bulwark daemon`'s arguments.
#[derive(Debug)]
pub struct Args {
    /// Operator configuration.
    pub config: Option<PathBuf>,
}

/// Runs the daemon until it is told to stop. Exit status: 0 stopped by a signal; 2 it could
/// not start (configuration, registration, another daemon on this state directory).
pub fn run(args: Args) -> u8 {
    match start(&args) {
        Ok(Started {
            daemon,
            lock: _lock,
            metrics,
        }) => {
            // One thread: the `bulwark run` children are spawned from it, and their
            // PR_SET_PDEATHSIG fires when the *thread* that forked them ends; a worker thread
            // of a multi-threaded runtime may end while the daemon lives.
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("bulwark daemon: starting the async runtime: {e}");
                    return 2;
                }
            };
            // Job tasks are local to this thread (see above), so a LocalSet runs them.
            let local = tokio::task::LocalSet::new();
            match rt.block_on(local.run_until(std::rc::Rc::new(daemon).serve(metrics))) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("bulwark daemon: {e:#}");
                    2
                }
            }
        }
        Err(e) => {
            eprintln!("bulwark daemon: {e:#}");
            2
        }
    }
}

/// Takes the lock that lets one daemon (or `bulwark rekey`) use the state directory `state`
/// at a time; held until the returned lock is dropped.
pub(crate) fn lock_state(state: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let lock_path = state.join("daemon").join("lock");
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
            .open(&lock_path)
    }
    .with_context(|| format!("opening {}", lock_path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        anyhow!(
            "another bulwark daemon uses {} ({}: {e})",
            state.display(),
            lock_path.display()
        )
    })
}

/// Everything the loop needs, checked before it starts.
#[derive(Debug)]
struct Daemon {
    config_path: Option<PathBuf>,
    config: bulwark_protocol::Config,
    poll: Duration,
    /// Jobs run at once (`[daemon] slots`).
    slots: usize,
    identity: Identity,
    client: Client,
    jobs: PathBuf,
    exe: PathBuf,
    /// Jobs leased and not yet reported: named in every lease request (`holding`), so the
    /// coordinator does not offer them again; a lease of one of them is neither run nor
    /// reported a second time; and the sweep never touches their directories (with several
    /// slots, one job's sweep runs while others still write theirs). A job enters it when its
    /// lease is read, before the next request, and leaves it once its report is done.
    active: std::cell::RefCell<std::collections::HashSet<String>>,
    /// The leases taken and not yet reported, kept across restarts (`lease::Journal`).
    leases: Journal,
    /// Where `bulwark run` makes job directories, on whose filesystem the disk reserve is
    /// kept (its free space is a metric).
    job_dirs: PathBuf,
    /// Counters for `[daemon] metrics_listen`.
    metrics: metrics::Metrics,
    /// `<state>/runner`: the registration, named when the coordinator no longer knows it.
    runner_dir: PathBuf,
}

/// What [`start`] made ready.
struct Started {
    daemon: Daemon,
    /// The state directory's lock, held while the daemon runs.
    lock: nix::fcntl::Flock<std::fs::File>,
    /// `[daemon] metrics_listen`, bound here (a bad address stops the daemon before it
    /// serves), served once the loop runs.
    metrics: Option<std::net::TcpListener>,
}

fn start(args: &Args) -> Result<Started> {
    let loaded = config::load(args.config.as_deref())?;
    let dirs = Dirs::resolve(&loaded.config)?;
    dirs.create()?;
    // Job specs and outputs live here: private to the runner's user.
    let root = dirs.state.join("daemon");
    for d in [root.clone(), root.join("jobs"), root.join("leases")] {
        crate::fsutil::create_private_dir(&d)
            .with_context(|| format!("creating {}", d.display()))?;
    }
    // The identity is read under the lock: a `bulwark rekey` that held it has finished.
    let lock = lock_state(&dirs.state)?;
    let identity = registration::load(&dirs.state)?;
    let client = Client::new(
        &identity.registration.coordinator,
        loaded.config.daemon.coordinator_ca.as_deref(),
    )?;
    let exe = std::env::current_exe().context("finding the bulwark binary")?;
    let metrics_listener = match loaded.config.daemon.metrics_listen {
        Some(addr) => {
            let l = std::net::TcpListener::bind(addr)
                .with_context(|| format!("listening on {addr} (daemon.metrics_listen)"))?;
            l.set_nonblocking(true)
                .context("daemon.metrics_listen: a non-blocking listener")?;
            Some(l)
        }
        None => None,
    };
    // In a delegated cgroup v2 unit (systemd/bulwark.service has Delegate=yes), the daemon
    // leaves the unit's own cgroup for the runner leaf, or its runs could not enable the
    // controllers their jobs' cgroups need. Where that cannot be done, a job that needs
    // cgroups says why when it is refused; the daemon itself still starts (rlimit-only
    // configurations need no cgroup).
    match bulwark_sandbox::cgroup::settle_long_running(&bulwark_sandbox::cgroup::detect()) {
        Ok(true) => tracing::info!("moved into the runner leaf of the delegated cgroup"),
        Ok(false) => {}
        Err(e) => {
            eprintln!("bulwark daemon: warning: preparing the delegated cgroup for jobs: {e}")
        }
    }
    // A daemon that crashed took its runs with it (`--parent-pid`), and they left their job
    // directories, cgroups and loop disks behind: removed now rather than by the next job's
    // run, which may be hours away (and after the move above, from the cgroup the runs start
    // in, which finds their cgroups as they would). A failure is the next run's to refuse on.
    match crate::job::clean_dead_runs(&loaded.config) {
        Ok(cleaned) if !cleaned.is_empty() => eprintln!(
            "bulwark daemon: cleaned up after {} dead run(s): {}",
            cleaned.len(),
            cleaned.join(", ")
        ),
        Ok(_) => {}
        Err(e) => eprintln!("bulwark daemon: warning: cleaning up after dead runs: {e}"),
    }
    // A lease lasts the job's timeout and ten minutes: a timeout this host runs is at most
    // its ceiling, and a spec that names none is leased for the default timeout, whatever
    // this host would lower it to.
    let longest_lease = loaded
        .config
        .limits
        .max_timeout
        .max(bulwark_protocol::job::DEFAULT_TIMEOUT)
        .as_secs()
        .saturating_add(bulwark_protocol::control::LEASE_GRACE_SECS);
    let leases = Journal::new(root.join("leases"), longest_lease);
    // Job directories a daemon from before lease records left: any of them may be a job it
    // was running when it died, which the coordinator will offer again; recorded as taken,
    // before the first sweep could remove them, so that it is reported and not run twice.
    let adopted = leases.adopt(
        std::fs::read_dir(root.join("jobs"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().into_string().ok()),
        now_secs(),
    );
    if adopted > 0 {
        eprintln!(
            "bulwark daemon: recorded {adopted} earlier job director(ies) without a lease record as taken: offered again, those jobs are reported, not run twice"
        );
    }
    Ok(Started {
        daemon: Daemon {
            poll: loaded.config.daemon.poll_interval,
            slots: loaded.config.daemon.slots,
            config: loaded.config,
            config_path: loaded.path,
            identity,
            client,
            jobs: root.join("jobs"),
            exe,
            active: Default::default(),
            leases,
            job_dirs: dirs.jobs(),
            metrics: metrics::Metrics::new(),
            runner_dir: registration::dir(&dirs.state),
        },
        lock,
        metrics: metrics_listener,
    })
}

/// Whether the daemon was asked to stop, and how urgently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stop {
    No,
    AfterJob,
    Now,
}

/// The stop level, raised by SIGTERM and SIGINT (the first: stop leasing and finish the jobs
/// running; the second: abort them), watched by the main loop and every job task.
#[derive(Clone)]
struct StopWatch(tokio::sync::watch::Receiver<Stop>);

impl StopWatch {
    /// Starts the task that turns signals into stop levels.
    fn start() -> Result<StopWatch> {
        let mut term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("handling SIGINT")?;
        let (tx, rx) = tokio::sync::watch::channel(Stop::No);
        tokio::task::spawn_local(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                let next = if *tx.borrow() == Stop::No {
                    Stop::AfterJob
                } else {
                    Stop::Now
                };
                if tx.send(next).is_err() || next == Stop::Now {
                    return;
                }
            }
        });
        Ok(StopWatch(rx))
    }

    /// The level now.
    fn now(&self) -> Stop {
        *self.0.borrow()
    }

    /// Waits until the level is raised; returns it (never returns while nothing changes). At
    /// `Stop::Now` it returns at once, every time: a second signal seen by one wait (during the
    /// run, say) must still stop the next (the report's retries), and no later signal comes to
    /// raise it again.
    async fn raised(&mut self) -> Stop {
        if self.now() == Stop::Now {
            return Stop::Now;
        }
        if self.0.changed().await.is_err() {
            // The signal task is gone (it ends after Stop::Now): nothing more will change.
            std::future::pending::<()>().await;
        }
        self.now()
    }
}

impl Daemon {
    async fn serve(self: std::rc::Rc<Self>, metrics: Option<std::net::TcpListener>) -> Result<()> {
        let mut stop = StopWatch::start()?;
        let reg = &self.identity.registration;
        tracing::info!(runner_id = %reg.runner_id, coordinator = %reg.coordinator, slots = self.slots, "daemon started");
        eprintln!(
            "bulwark daemon: runner {} ({}) serving {} ({} job slot{})",
            reg.runner_id,
            reg.name,
            reg.coordinator,
            self.slots,
            if self.slots == 1 { "" } else { "s" }
        );
        if let Some(listener) = metrics {
            self.serve_metrics(listener, &stop)?;
        }
        self.sweep();
        let mut running = tokio::task::JoinSet::new();
        // When to ask the coordinator next (at once after a lease; a poll interval after an
        // empty queue; a growing backoff after a failed request or a failed run, so the same
        // failure does not repeat as fast as the coordinator answers).
        let mut hold = tokio::time::Instant::now();
        let mut wait = self.poll;
        let backoff = |wait: &mut Duration, hold: &mut tokio::time::Instant| {
            *hold = tokio::time::Instant::now() + *wait;
            *wait = (*wait * 2).min(MAX_BACKOFF.max(self.poll));
        };
        while stop.now() == Stop::No {
            let free = running.len() < self.slots;
            if free && tokio::time::Instant::now() >= hold {
                let leased = self.lease().await;
                self.metrics.lease(match &leased {
                    Ok(Some(_)) => metrics::LeaseOutcome::Job,
                    Ok(None) => metrics::LeaseOutcome::Empty,
                    Err(_) => metrics::LeaseOutcome::Failed,
                });
                match leased {
                    Ok(Some(answer)) => {
                        // The wait is not reset by an answer, only by a job that ran (below):
                        // a job that fails (or is reported without running) again and again
                        // keeps it growing.
                        let job_id = answer.job_id().to_owned();
                        // Leased again while this daemon runs or reports it (a coordinator
                        // that lost a write, or ignores `holding` and raced): the run under
                        // way reports it. A second run would fail at the job's directory, and
                        // its runner error, reported first, would be taken over the real result.
                        if self.active.borrow().contains(&job_id) {
                            tracing::warn!(job_id = %job_id, "the coordinator leased a job this daemon is running already: neither run nor reported again");
                            eprintln!(
                                "bulwark daemon: job {job_id}: leased again while it runs here; the run under way reports it"
                            );
                            backoff(&mut wait, &mut hold);
                            continue;
                        }
                        // A stop asked for while the lease was in flight: the job is not
                        // started (under systemd it could not finish before the final SIGKILL).
                        if stop.now() != Stop::No {
                            match answer {
                                Answer::Job(lease) => {
                                    self.metrics.finished("runner-error");
                                    let mut stop = stop.clone();
                                    // Taken here before (its record is there), it may have
                                    // run: reported as any job taken before is, with the log
                                    // of what ran, and its record goes once that is taken.
                                    let before = self.leases.holds(&lease.job_id);
                                    let report = if before {
                                        self.taken_before(&lease, &mut stop).await
                                    } else {
                                        synthetic_result(
                                            &lease,
                                            "runner-error",
                                            "the runner was stopping when this job was leased; it did not run",
                                        )
                                    };
                                    self.report(&lease, report, &mut stop).await;
                                }
                                Answer::Unreadable(u) => {
                                    self.report_unreadable(&u, &mut stop.clone()).await;
                                }
                            }
                            continue;
                        }
                        // Held from now: the next request (at once, below) names it.
                        self.active.borrow_mut().insert(job_id);
                        let daemon = std::rc::Rc::clone(&self);
                        let mut job_stop = stop.clone();
                        match answer {
                            Answer::Job(lease) => running
                                .spawn_local(async move { daemon.run_job(*lease, job_stop).await }),
                            // Reported, never run; and the loop does not ask again at once (a
                            // free slot would) but backs off, now and again when the report
                            // is done, the wait growing from one such lease to the next, so a
                            // runner too old for the fleet's jobs takes few of them (each
                            // reported to be resubmitted) until it is upgraded.
                            Answer::Unreadable(u) => {
                                backoff(&mut wait, &mut hold);
                                running.spawn_local(async move {
                                    daemon.report_unreadable(&u, &mut job_stop).await;
                                    daemon.release(&u.job_id);
                                    false
                                })
                            }
                        };
                        // A free slot asks again at once: a queue of jobs fills the slots.
                        continue;
                    }
                    Ok(None) => {
                        wait = self.poll;
                        hold = tokio::time::Instant::now() + self.poll;
                    }
                    Err(e) => {
                        let hint = removed_hint(&e, &self.runner_dir);
                        tracing::warn!(error = %e, "asking the coordinator for a job failed{hint}");
                        eprintln!(
                            "bulwark daemon: asking for a job: {e}{hint}; trying again in {wait:?}"
                        );
                        backoff(&mut wait, &mut hold);
                    }
                }
            }
            let free = running.len() < self.slots;
            tokio::select! {
                _ = tokio::time::sleep_until(hold), if free => {}
                done = running.join_next(), if !running.is_empty() => {
                    if matches!(done, Some(Ok(true))) {
                        wait = self.poll;
                    } else {
                        backoff(&mut wait, &mut hold);
                    }
                }
                _ = stop.raised() => {}
            }
        }
        if !running.is_empty() {
            eprintln!(
                "bulwark daemon: stopping after the {} running job(s) (signal again to abort them)",
                running.len()
            );
        }
        while running.join_next().await.is_some() {}
        eprintln!("bulwark daemon: stopped");
        Ok(())
    }

    /// Starts serving `[daemon] metrics_listen` on `listener`, beside the loop.
    fn serve_metrics(
        self: &std::rc::Rc<Self>,
        listener: std::net::TcpListener,
        stop: &StopWatch,
    ) -> Result<()> {
        let at = listener
            .local_addr()
            .context("daemon.metrics_listen: the bound address")?;
        let listener = tokio::net::TcpListener::from_std(listener)
            .context("daemon.metrics_listen: serving the listener")?;
        if !at.ip().is_loopback() {
            tracing::warn!(address = %at, "metrics served without authentication on a non-loopback address: make sure only the scraper reaches it");
        }
        eprintln!("bulwark daemon: metrics on {at}");
        let (daemon, stop) = (std::rc::Rc::clone(self), stop.clone());
        let render = move || {
            daemon
                .metrics
                .render(&daemon.gauges(stop.now() != Stop::No))
        };
        tokio::task::spawn_local(metrics::serve(listener, std::rc::Rc::new(render)));
        Ok(())
    }

    /// What the metrics read of the daemon's state at a scrape.
    fn gauges(&self, stopping: bool) -> metrics::Gauges {
        let reg = &self.identity.registration;
        let disk =
            crate::disk_reserve::space_at(&self.job_dirs, self.config.limits.min_free_disk).ok();
        metrics::Gauges {
            runner_id: reg.runner_id.clone(),
            runner: reg.name.clone(),
            slots: self.slots as u64,
            running: self.active.borrow().len() as u64,
            stopping,
            coordinator_last_answer: self.client.last_answer(),
            disk: disk.map(|d| metrics::Disk {
                available: d.available,
                reserve: d.need,
                inodes: d.inodes,
            }),
        }
    }

    /// Asks the coordinator for a job, naming the jobs this daemon holds (`lease::request_body`:
    /// one whose answer was lost is offered again). `None` when there is none; an error for
    /// an answer that names no job this daemon can report under.
    async fn lease(&self) -> Result<Option<Answer>, ClientError> {
        let reg = &self.identity.registration;
        let body = lease::request_body(self.active.borrow().iter());
        let answer = self
            .client
            .post_signed(
                "/v1/runners/lease",
                body,
                &reg.runner_id,
                &self.identity.key,
            )
            .await?;
        if answer.status == 204 {
            return Ok(None);
        }
        lease::read_answer(&answer.body, now_secs())
            .map(Some)
            .map_err(|reason| ClientError::Protocol {
                what: "POST /v1/runners/lease".into(),
                reason,
            })
    }

    /// The job `job_id` is no longer held: its report is done (or given up).
    fn release(&self, job_id: &str) {
        self.active.borrow_mut().remove(job_id);
    }

    /// Reports the job of a lease this runner cannot read as a runner error, never running
    /// anything of it (`lease` module docs).
    async fn report_unreadable(&self, u: &Unreadable, stop: &mut StopWatch) {
        // What could not be read may quote the spec's submitter (an unknown field's name):
        // shown escaped and cut, as the coordinator's words always are.
        let what = client::printable(&u.what);
        tracing::error!(job_id = %u.job_id, what = %what, "this runner cannot read the lease; the job is reported as a runner error and nothing of it runs");
        eprintln!(
            "bulwark daemon: job {}: cannot read its lease ({what}); reported as a runner error, nothing of it ran (upgrade bulwark on this host)",
            u.job_id,
        );
        self.metrics.finished("runner-error");
        let before = self.leases.holds(&u.job_id);
        match serde_json::to_vec(&u.report(&self.identity.registration.name, before)) {
            Ok(body) => {
                // (A record of an earlier, readable lease of it goes once it is reported.)
                self.send_report(&u.job_id, u.expires_at, body, stop).await;
            }
            Err(e) => {
                self.metrics.report_given_up();
                eprintln!("bulwark daemon: job {}: encoding the result: {e}", u.job_id);
            }
        }
    }

    /// Runs and reports one leased job (already in `active`, which it leaves once reported);
    /// `false` when it did not run (the runner failed to run it, or it was taken before).
    ///
    /// The lease is recorded in the journal before anything of the job is done: a job whose
    /// lease is recorded already was taken here before and never reported (a daemon before
    /// this one died while it ran, or its report failed), and is reported as a runner error,
    /// with the log of what ran, not run again (`lease` module docs).
    async fn run_job(&self, lease: Lease, mut stop: StopWatch) -> bool {
        let job_id = lease.job_id.clone();
        // Written and synced off the loop, which serves the other jobs meanwhile.
        let taken = {
            let (leases, lease, now) = (self.leases.clone(), lease.clone(), now_secs());
            tokio::task::spawn_blocking(move || leases.record(&lease, now))
                .await
                .map_err(anyhow::Error::from)
                .and_then(|r| r.map_err(anyhow::Error::from))
                .with_context(|| {
                    format!("recording the lease of job {job_id} in the daemon's leases directory")
                })
        };
        let (report, ran) = match taken {
            // Delivers the log of what ran itself: its reason must survive a failed upload.
            // Nothing ran now: the loop backs off, as after a failed run (were its report
            // refused, it would be offered again at once, and again).
            Ok(false) => (self.taken_before(&lease, &mut stop).await, false),
            Ok(true) => match self.execute(&lease, &mut stop).await {
                Ok(report) => {
                    // The run's own counts, before a failed upload could replace its report.
                    self.metrics.egress(lease.trust, &report.result);
                    // The coordinator records a result only once it holds every log and
                    // output the report lists. The logs go first: a job whose outputs cannot
                    // be delivered is still reported with its log.
                    (self.deliver_all(&lease, report, &mut stop).await, true)
                }
                Err(e) => self.could_not_run(&lease, &e),
            },
            Err(e) => self.could_not_run(&lease, &e),
        };
        let status = report
            .result
            .get("status")
            .and_then(|s| s.as_str())
            .unwrap_or("?")
            .to_string();
        eprintln!(
            "{}",
            outcome_line(&job_id, &lease.spec.name, &report.result)
        );
        self.metrics.finished(&status);
        self.report(&lease, report, &mut stop).await;
        // `[daemon] keep_outputs` counts from now, when the job was reported.
        if let Ok(d) = std::fs::File::open(self.jobs.join(&lease.job_id)) {
            let _ = d.set_modified(std::time::SystemTime::now());
        }
        self.release(&job_id);
        self.sweep();
        ran
    }

    /// The report of a job the runner failed to run (`e` says why, in this host's log only:
    /// host paths, the error chain), and `false`: nothing was run to deliver.
    fn could_not_run(&self, lease: &Lease, e: &anyhow::Error) -> (ResultReport, bool) {
        let job_id = &lease.job_id;
        tracing::error!(job_id = %job_id, error = %format!("{e:#}"), "running the job failed");
        eprintln!("bulwark daemon: job {job_id}: {e:#}");
        let reason = format!(
            "runner {} could not run the job; its log says why",
            self.identity.registration.name
        );
        (synthetic_result(lease, "runner-error", &reason), false)
    }

    /// The report of a job offered again whose lease this runner took before and never
    /// reported: a runner error, with the log of what ran when its run left one; the job is
    /// not run again (what ran of it may have had effects).
    async fn taken_before(&self, lease: &Lease, stop: &mut StopWatch) -> ResultReport {
        let job_id = &lease.job_id;
        tracing::warn!(job_id = %job_id, "offered again a job this runner took before and never reported: reported as a runner error, not run again");
        eprintln!(
            "bulwark daemon: job {job_id}: taken here before and never reported (a daemon stopped while it ran, or its report failed); reporting it as a runner error, not running it again"
        );
        let out = self.jobs.join(job_id).join("out");
        let mut logs = if out.is_dir() {
            // The run of the daemon before is gone (it dies with its daemon), so its partial
            // log is complete as far as it goes.
            off_the_loop(logs_of_what_ran, &out)
                .await
                .unwrap_or_else(|e| {
                    eprintln!("bulwark daemon: job {job_id}: the log of what ran: {e:#}");
                    Vec::new()
                })
        } else {
            Vec::new()
        };
        let blobs = Blob::logs(&logs);
        let mut log_note = String::new();
        if !blobs.is_empty() {
            log_note = match self.deliver(lease, &blobs, stop).await {
                Ok(()) => " (job.log shows what ran)".to_owned(),
                Err(why) => {
                    eprintln!("bulwark daemon: job {job_id}: {why}");
                    logs.clear();
                    format!(
                        " (the log of what ran could not be delivered; it is kept on this \
                         runner under daemon/jobs/{job_id}/out: {why})"
                    )
                }
            };
        }
        let reason = format!(
            "runner {} took this job before and did not report it (its daemon stopped or \
             died while the job ran, or the report failed): it is not run again, as what ran \
             of it may have had effects; resubmit the job{log_note}",
            self.identity.registration.name,
        );
        ResultReport {
            logs,
            ..synthetic_result(lease, "runner-error", &reason)
        }
    }

    /// Removes the directories of jobs finished longer than `[daemon] keep_outputs` ago.
    /// Failures are logged: a directory that cannot be removed now is tried again next time.
    /// Also forgets the leases no coordinator can offer again (`lease::Journal::prune`).
    fn sweep(&self) {
        let keep = self.config.daemon.keep_outputs;
        let active = self.active.borrow().clone();
        for (path, result) in sweep(&self.jobs, keep, std::time::SystemTime::now(), &active) {
            match result {
                Ok(()) => tracing::info!(path = %path.display(), "old job directory removed"),
                Err(e) => eprintln!(
                    "bulwark daemon: removing the old job directory {}: {e}",
                    path.display()
                ),
            }
        }
        for (path, result) in self.leases.prune(now_secs(), &active) {
            match result {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "record of an ended lease removed")
                }
                Err(e) => eprintln!(
                    "bulwark daemon: removing the record of an ended lease {}: {e}",
                    path.display()
                ),
            }
        }
    }

    /// Runs the leased job as a `bulwark run` child and collects what it left.
    async fn execute(&self, lease: &Lease, stop: &mut StopWatch) -> Result<ResultReport> {
        check_job_id(&lease.job_id)?;
        if let Err(reason) = check_source(&lease.spec) {
            return Ok(synthetic_result(lease, "refused", &reason));
        }
        // What the run would refuse is refused here, before any identity token is asked for.
        let job = match crate::job::check_spec(&lease.spec, lease.trust, &self.config) {
            Ok(job) => job,
            Err(e) => {
                return Ok(synthetic_result(
                    lease,
                    "refused",
                    &format!("job spec: {e}"),
                ))
            }
        };
        // The job's directory first: one already there (a run of this job before, whose
        // lease record is gone) means this is not the job's first run here, and it gets no
        // identity token minted, nor credentials exchanged only to be thrown away. (Leases
        // taken twice are caught before: the `active` set and the lease records.)
        let dir = self.jobs.join(&lease.job_id);
        std::fs::create_dir(&dir).with_context(|| {
            format!(
                "creating {} (left by an earlier run of this job, which is not run again)",
                dir.display()
            )
        })?;
        let handoff = match self.credentials_for(lease, job.timeout).await {
            Ok(h) => h,
            Err(reason) => return Ok(synthetic_result(lease, "refused", &reason)),
        };
        let spec_path = dir.join("job.json");
        let mut spec = serde_json::to_vec_pretty(&lease.spec).context("encoding the job spec")?;
        spec.push(b'\n');
        crate::fsutil::write_atomic(&spec_path, &spec)
            .with_context(|| format!("writing {}", spec_path.display()))?;
        let out = dir.join("out");
        let mut cmd = tokio::process::Command::new(&self.exe);
        cmd.arg("run")
            .arg(&spec_path)
            .arg("--out")
            .arg(&out)
            .arg("--trust")
            .arg(lease.trust.as_str())
            .arg("--quiet")
            .arg("--parent-pid")
            .arg(std::process::id().to_string())
            .stdin(if handoff.is_some() {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            // Its own process group: a Ctrl-C at the terminal the daemon runs in
            // reaches the daemon alone, which finishes its jobs as for SIGTERM; sent to the
            // runs too, it would kill them mid-job.
            .process_group(0)
            .kill_on_drop(true);
        if handoff.is_some() {
            cmd.arg("--credentials-stdin");
        }
        if let Some(c) = &self.config_path {
            cmd.arg("--config").arg(c);
        }
        tracing::info!(job_id = %lease.job_id, trust = lease.trust.as_str(), "job started");
        let mut child = cmd.spawn().context("starting bulwark run")?;
        // Observed however the run ends (on its own, cancelled, stopped, or an error here).
        let _timer = self.metrics.time_run();
        let mut refresh = None;
        if let Some(handoff) = handoff {
            // Through a pipe only: never a file, an argument or the environment. One line
            // (zeroed when dropped and when it grows: `SecretBuf`); the pipe stays open for
            // newer credentials while the job runs.
            use tokio::io::AsyncWriteExt;
            let line = handoff.to_line().map_err(anyhow::Error::msg)?;
            let mut stdin = child.stdin.take().context("the run's standard input")?;
            stdin
                .write_all(line.as_bytes())
                .await
                .context("handing the credentials to bulwark run")?;
            drop(line);
            let first = handoff
                .credentials
                .iter()
                .map(|c| (c.name.clone(), c.expires.clone()))
                .collect();
            drop(handoff);
            // The job is killed at its timeout: what a refresh asks for need not outlive that.
            let deadline = std::time::Instant::now() + job.timeout;
            refresh = Some(self.refresh_credentials(lease, deadline, first, stdin));
        }
        let refresh = async move {
            match refresh {
                Some(r) => r.await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(refresh);
        let mut stderr = child.stderr.take().context("the run's standard error")?;
        let mut tail = Vec::new();
        let mut buf = vec![0u8; 8192];
        let mut stderr_open = true;
        // Polled beside the run, never awaited alone: it cannot hold the loop up.
        let interval = self.config.daemon.live_log_interval;
        let follow = self.follow_log(
            lease,
            &out,
            interval.unwrap_or(bulwark_protocol::DEFAULT_LIVE_LOG_INTERVAL),
        );
        tokio::pin!(follow);
        let mut following = interval.is_some();
        // Cancelled by the operator, given up by the coordinator, or its lease about to end:
        // whichever comes first stops the job (a job must not run on where its result
        // cannot be taken, nor keep its credentials there).
        let lease_ending = until_lease_ending(lease.expires_at, now_secs());
        let stopping = async {
            tokio::select! {
                why = self.watch_cancel(lease) => why,
                () = tokio::time::sleep(lease_ending) => Stopped::LeaseEnding,
            }
        };
        tokio::pin!(stopping);
        let status = loop {
            tokio::select! {
                status = child.wait() => break status.context("waiting for bulwark run")?,
                why = &mut stopping => {
                    // Killing the run kills every job process (they die with it).
                    let _ = child.start_kill();
                    let status = child.wait().await.context("waiting for bulwark run")?;
                    // The run may have ended on its own just as the answer came (an exit
                    // status, where our kill leaves none): it is reported as it ended. A
                    // result.json alone would not say so: the run writes it before it signs
                    // the provenance.
                    if status.code().is_some() {
                        break status;
                    }
                    tracing::info!(job_id = %lease.job_id, why = ?why, "job stopped while it ran");
                    if why == Stopped::Cancelled {
                        self.metrics.cancelled();
                    }
                    return Ok(ResultReport {
                        logs: off_the_loop(logs_of_what_ran, &out).await?,
                        ..synthetic_result(lease, "failed", why.reason())
                    });
                }
                () = &mut follow, if following => following = false,
                () = &mut refresh => {}
                n = stderr.read(&mut buf), if stderr_open => match n {
                    Ok(0) | Err(_) => stderr_open = false,
                    Ok(n) => keep_tail(&mut tail, &buf[..n]),
                },
                level = stop.raised() => {
                    if level == Stop::Now {
                        let _ = child.start_kill();
                        let _ = child.wait().await;
                        return Ok(ResultReport {
                            logs: off_the_loop(logs_of_what_ran, &out).await?,
                            ..synthetic_result(
                                lease,
                                "runner-error",
                                "the runner was stopped while the job ran (a second SIGTERM or SIGINT)",
                            )
                        });
                    }
                }
            }
        };
        // What the run wrote to stderr just before it exited is read to the end, for a
        // while: a process that inherited the pipe and outlived the run (none should) must
        // not hold the daemon.
        let drain = async {
            while stderr_open {
                match stderr.read(&mut buf).await {
                    Ok(0) | Err(_) => stderr_open = false,
                    Ok(n) => keep_tail(&mut tail, &buf[..n]),
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
        tracing::info!(job_id = %lease.job_id, status = ?status.code(), "job ended");
        let (lease, out, code) = (lease.clone(), out.clone(), status.code());
        tokio::task::spawn_blocking(move || collect(&lease, &out, code, &tail))
            .await
            .context("collecting what the run left")?
    }

    /// Asks the coordinator every poll interval whether the operator cancelled the job, and
    /// returns when it has ([`Stopped::Cancelled`]), or when the coordinator says the job is
    /// not this runner's to ask about (`403`, `404`, `409`: its lease is over by the
    /// coordinator's clock, say; [`Stopped::LeaseGone`]). After a failed request it waits
    /// longer, doubling up to a minute (an outage is not hammered by every running job).
    async fn watch_cancel(&self, lease: &Lease) -> Stopped {
        let reg = &self.identity.registration;
        let target = format!("/v1/jobs/{}/heartbeat", lease.job_id);
        let mut wait = self.poll;
        loop {
            tokio::time::sleep(wait).await;
            wait = self.poll;
            match self
                .client
                .post_signed(&target, Vec::new(), &reg.runner_id, &self.identity.key)
                .await
            {
                Ok(answer) => match serde_json::from_slice::<Heartbeat>(&answer.body) {
                    Ok(Heartbeat { cancel: true }) => return Stopped::Cancelled,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(job_id = %lease.job_id, error = %e, "heartbeat: not an answer of the protocol")
                    }
                },
                Err(e) if matches!(e.status(), Some(403 | 404 | 409)) => {
                    tracing::warn!(job_id = %lease.job_id, error = %e, "heartbeat refused: the coordinator no longer holds this runner's lease on the job; stopping it");
                    return Stopped::LeaseGone;
                }
                Err(e) => {
                    wait = (wait * 2).min(MAX_BACKOFF.max(self.poll));
                    tracing::debug!(job_id = %lease.job_id, error = %e, "heartbeat failed; asking again in {wait:?}");
                }
            }
        }
    }

    /// Sends what the run has stored of `job.log` so far to the coordinator every `interval`,
    /// from where the last request left off (the caller drops this future when the run
    /// ends). Returns only when the coordinator refuses more (its cap, the lease over): the
    /// log then arrives with the result alone. A transient failure waits for the next tick;
    /// a gap (`409`: the coordinator holds less than was sent, say after a crash lost its
    /// last writes) starts again from the beginning, of which it keeps only what it lacks.
    async fn follow_log(&self, lease: &Lease, out: &Path, interval: Duration) {
        let reg = &self.identity.registration;
        let mut sent: u64 = 0;
        let interval = interval.max(Duration::from_millis(100));
        // Longer after a failure, doubling up to a minute: an outage is not hammered.
        let mut wait = interval;
        loop {
            tokio::time::sleep(wait).await;
            wait = interval;
            loop {
                // Not there yet, or renamed to job.log because the run is ending: next tick.
                let Ok(chunk) =
                    read_at(out, crate::joblog::PARTIAL_NAME, sent, LIVE_LOG_CHUNK).await
                else {
                    break;
                };
                if chunk.is_empty() {
                    break;
                }
                let n = chunk.len();
                let target = format!("/v1/jobs/{}/live-log/{sent}", lease.job_id);
                match self
                    .client
                    .put_signed(&target, chunk, &reg.runner_id, &self.identity.key)
                    .await
                {
                    Ok(_) => sent += n as u64,
                    Err(e) if e.is_transient() => {
                        wait = (wait * 2).min(MAX_BACKOFF.max(interval));
                        tracing::debug!(job_id = %lease.job_id, error = %e, "live log not sent; trying again in {wait:?}");
                        break;
                    }
                    Err(e) if e.status() == Some(409) && sent > 0 => {
                        tracing::warn!(job_id = %lease.job_id, error = %e, "live log: the coordinator lacks earlier bytes; sending from the start");
                        sent = 0;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(job_id = %lease.job_id, error = %e, "live log stopped; the log arrives with the result");
                        return;
                    }
                }
                if n < LIVE_LOG_CHUNK {
                    break;
                }
            }
        }
    }

    /// The job's credentials (docs/credentials.md), exchanged before it runs: `Ok(None)` when
    /// its spec asks for none; `Err(reason)` refuses the job (untrusted, a name this runner
    /// does not configure, a token or an exchange refused). Nothing is asked of the
    /// coordinator or any service for an untrusted job.
    async fn credentials_for(
        &self,
        lease: &Lease,
        timeout: Duration,
    ) -> Result<Option<crate::creds::Handoff>, String> {
        let wanted = &lease.spec.credentials;
        if wanted.is_empty() {
            return Ok(None);
        }
        if lease.trust != bulwark_protocol::Trust::Trusted {
            return Err("credentials: an untrusted job never gets credentials".into());
        }
        // From here this process holds the identity token and then the credentials.
        crate::creds::keep_out_of_dumps().map_err(|e| format!("credentials: {e}"))?;
        // Every name first: a name this runner does not configure refuses the job before any
        // token is minted or exchanged.
        for (i, name) in wanted.iter().enumerate() {
            if !self.config.credentials.contains_key(name) {
                return Err(format!(
                    "credentials[{i}]: no credential {name:?} is configured on this runner ([credentials.{name}])"
                ));
            }
        }
        let issued = self
            .issue(lease, wanted, timeout, metrics::Exchange::Start)
            .await?;
        Ok(Some(crate::creds::Handoff {
            credentials: issued,
            failed: Vec::new(),
        }))
    }

    /// Exchanges a fresh identity token of the job's for each credential in `names` (each
    /// configured on this runner: checked by the caller); each exchange at a token service is
    /// counted as `when`.
    async fn issue(
        &self,
        lease: &Lease,
        names: &[String],
        timeout: Duration,
        when: metrics::Exchange,
    ) -> Result<Vec<crate::creds::Issued>, String> {
        let policy = crate::tools::fetch::FetchPolicy::from_config(&self.config)
            .map_err(|e| format!("credentials: {e}"))?;
        let reg = &self.identity.registration;
        let mut issued = Vec::new();
        for name in names {
            let provider = self
                .config
                .credentials
                .get(name)
                .ok_or_else(|| {
                    format!("credentials.{name}: no credential {name:?} is configured on this runner ([credentials.{name}])")
                })?;
            let body = serde_json::to_vec(&bulwark_protocol::control::IdTokenRequest {
                audience: provider.audience.clone(),
            })
            .map_err(|e| format!("credentials.{name}: {e}"))?;
            let answer = self
                .client
                .post_signed(
                    &format!("/v1/jobs/{}/id-token", lease.job_id),
                    body,
                    &reg.runner_id,
                    &self.identity.key,
                )
                .await
                .map_err(|e| format!("credentials.{name}: the job's identity token: {e}"))?;
            let mut answer = answer;
            let parsed: Result<bulwark_protocol::control::IdToken, _> =
                serde_json::from_slice(&answer.body);
            // The answer's bytes hold the token: zeroed, not just freed.
            zeroize::Zeroize::zeroize(&mut answer.body);
            let token = parsed
                .map_err(|e| format!("credentials.{name}: the identity token answer: {e}"))?;
            let token = crate::creds::Secret::new(token.token);
            let (name, provider, policy, job_id) = (
                name.clone(),
                provider.clone(),
                policy.clone(),
                lease.job_id.clone(),
            );
            // The exchange uses the runner's blocking fetch client (its address rules).
            let one = tokio::task::spawn_blocking(move || {
                crate::creds::exchange(&name, &provider, token.expose(), timeout, &job_id, &policy)
            })
            .await
            .map_err(|e| format!("credentials: the exchange did not finish: {e}"))?;
            self.metrics.exchange(when, one.is_ok());
            let one = one.map_err(|e| e.to_string())?;
            tracing::info!(job_id = %lease.job_id, credential = %one.name, kind = %one.kind, expires = ?one.expires, "credential issued");
            issued.push(one);
        }
        Ok(issued)
    }

    /// Refreshes the credentials of a running job before they expire, each on its own
    /// schedule: at two thirds of its lifetime it is exchanged again with a fresh identity
    /// token and sent to the run as one more [`crate::creds::Handoff`] line. A failed exchange
    /// is said to the run too (it goes into `result.json`) and tried again: every 30 s, or
    /// sooner while the credential still has less than a minute left. The job keeps what it
    /// has meanwhile. Never returns: it is polled beside the run and dropped with it.
    ///
    /// A refresh asks for a lifetime no longer than what is left of the job before
    /// `deadline` (its timeout), not the whole timeout again: a credential renewed late in a
    /// job would otherwise stay valid long after the job was killed. (AWS sessions last at
    /// least 15 minutes whatever is asked.)
    async fn refresh_credentials(
        &self,
        lease: &Lease,
        deadline: std::time::Instant,
        first: Vec<(String, Option<String>)>,
        mut pipe: tokio::process::ChildStdin,
    ) {
        use tokio::io::AsyncWriteExt;
        let now = std::time::SystemTime::now();
        // Per credential: when to refresh it, and when what the job holds expires.
        let mut due: Vec<(String, std::time::Instant, std::time::SystemTime)> = Vec::new();
        for (name, expires) in &first {
            let Some(expires) = expires else { continue };
            match next_refresh(expires, now) {
                Some((at, exp)) => due.push((name.clone(), at, exp)),
                None => {
                    tracing::warn!(job_id = %lease.job_id, credential = %name, %expires, "credential expires before now by this host's clock, or at an unreadable time: not refreshed (check the clock)")
                }
            }
        }
        loop {
            let Some(next) = due.iter().map(|(_, at, _)| *at).min() else {
                return std::future::pending().await;
            };
            tokio::time::sleep_until(next.into()).await;
            // The run closes its end once the job's steps are over: nothing more is exchanged.
            if reader_gone(&pipe) {
                return std::future::pending().await;
            }
            let now_instant = std::time::Instant::now();
            let mut issued = Vec::new();
            let mut failed = Vec::new();
            for (name, at, expires) in &mut due {
                if *at > now_instant {
                    continue;
                }
                let left = deadline.saturating_duration_since(now_instant);
                let one = self
                    .issue(
                        lease,
                        std::slice::from_ref(name),
                        left,
                        metrics::Exchange::Refresh,
                    )
                    .await;
                match one {
                    Ok(mut one) => issued.append(&mut one),
                    Err(e) => {
                        let left = expires
                            .duration_since(std::time::SystemTime::now())
                            .unwrap_or_default();
                        tracing::warn!(job_id = %lease.job_id, credential = %name, error = %e, expires_in_s = left.as_secs(), "credential refresh failed (the job keeps what it has)");
                        let retry = if left.is_zero() {
                            Duration::from_secs(30)
                        } else {
                            (left / 2).clamp(Duration::from_secs(1), Duration::from_secs(30))
                        };
                        *at = std::time::Instant::now() + retry;
                        failed.push(crate::creds::RefreshFailure {
                            name: name.clone(),
                            reason: e,
                        });
                    }
                }
            }
            let now = std::time::SystemTime::now();
            for c in &issued {
                let next = c.expires.as_deref().and_then(|e| next_refresh(e, now));
                match next {
                    Some((at, exp)) => {
                        if let Some(d) = due.iter_mut().find(|d| d.0 == c.name) {
                            (d.1, d.2) = (at, exp);
                        }
                    }
                    // What was issued now does not expire, or its expiry is past by this
                    // host's clock or unreadable: not refreshed again.
                    None => {
                        if let Some(expires) = &c.expires {
                            tracing::warn!(job_id = %lease.job_id, credential = %c.name, %expires, "credential expires before now by this host's clock, or at an unreadable time: not refreshed again (check the clock)");
                        }
                        due.retain(|d| d.0 != c.name);
                    }
                }
            }
            let names: Vec<String> = issued.iter().map(|c| c.name.clone()).collect();
            let handoff = crate::creds::Handoff {
                credentials: issued,
                failed,
            };
            let sent = match handoff.to_line() {
                Ok(line) => pipe
                    .write_all(line.as_bytes())
                    .await
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            drop(handoff);
            if let Err(e) = sent {
                // The run is gone or going: nothing more to refresh.
                tracing::debug!(job_id = %lease.job_id, "credential refresh not sent: {e}");
                return std::future::pending().await;
            }
            if !names.is_empty() {
                tracing::info!(job_id = %lease.job_id, credentials = ?names, "credentials refreshed");
            }
        }
    }

    /// Uploads the report's logs, then its outputs; what could not be delivered turns the
    /// report into a runner error that says so (keeping the logs when they did arrive).
    async fn deliver_all(
        &self,
        lease: &Lease,
        report: ResultReport,
        stop: &mut StopWatch,
    ) -> ResultReport {
        let job_id = &lease.job_id;
        let kept = format!(
            "kept on runner {} under daemon/jobs/{job_id}/out",
            self.identity.registration.name
        );
        let logs = Blob::logs(&report.logs);
        if let Err(reason) = self.deliver(lease, &logs, stop).await {
            eprintln!("bulwark daemon: job {job_id}: {reason}");
            let reason = format!(
                "the job's logs could not be delivered to the coordinator; they are {kept} ({reason})"
            );
            return synthetic_result(lease, "runner-error", &reason);
        }
        let delivered = match report.outputs() {
            Ok(outputs) => {
                let blobs: Vec<Blob> = outputs
                    .into_iter()
                    .map(|o| Blob {
                        // The job chose the name: what reaches this host's log (and the
                        // coordinator, in a reason) shows its control characters, not them.
                        what: format!("output {}", client::printable(&o.path)),
                        rel: o.path,
                        sha256: o.sha256,
                        size: o.size,
                    })
                    .collect();
                self.deliver(lease, &blobs, stop).await
            }
            Err(e) => Err(e),
        };
        match delivered {
            Ok(()) => report,
            Err(reason) => {
                eprintln!("bulwark daemon: job {job_id}: {reason}");
                let reason = format!(
                    "the outputs could not be delivered to the coordinator; they are {kept} ({reason})"
                );
                ResultReport {
                    logs: report.logs,
                    ..synthetic_result(lease, "runner-error", &reason)
                }
            }
        }
    }

    /// Uploads `blobs` from the job's output directory, each content once, streamed
    /// (`PUT /v1/jobs/{id}/blobs/{sha256}`, signed over the digest the run computed).
    /// Transient failures are retried until the lease ends; anything else, or a second stop
    /// signal, gives up with the reason.
    async fn deliver(
        &self,
        lease: &Lease,
        blobs: &[Blob],
        stop: &mut StopWatch,
    ) -> Result<(), String> {
        let reg = &self.identity.registration;
        let out = self.jobs.join(&lease.job_id).join("out");
        let mut sent = std::collections::HashSet::new();
        for blob in blobs {
            let Blob {
                what,
                rel,
                sha256,
                size,
            } = blob;
            if !sent.insert(sha256.clone()) {
                continue;
            }
            let target = format!("/v1/jobs/{}/blobs/{sha256}", lease.job_id);
            let mut wait = self.poll;
            loop {
                let (file, len) = open_output(&out, rel).map_err(|e| format!("{what}: {e}"))?;
                if len != *size {
                    return Err(format!(
                        "{what}: {len} bytes on disk, {size} when the run recorded it"
                    ));
                }
                let put = self.client.put_signed_file(
                    &target,
                    file,
                    len,
                    sha256,
                    &reg.runner_id,
                    &self.identity.key,
                    lease.expires_at,
                );
                tokio::pin!(put);
                // A second stop signal ends an upload in flight too, not only a wait.
                let sent = loop {
                    tokio::select! {
                        sent = &mut put => break sent,
                        level = stop.raised() => if level == Stop::Now {
                            return Err("the runner was stopped while it uploaded them".into());
                        },
                    }
                };
                match sent {
                    Ok(_) => {
                        tracing::info!(job_id = %lease.job_id, what = %what, bytes = len, "uploaded");
                        break;
                    }
                    // 507: the coordinator's store is full, which waiting out the lease
                    // would not change; the job is reported as a runner error instead.
                    Err(e)
                        if e.is_transient()
                            && e.status() != Some(507)
                            && now_secs() < lease.expires_at =>
                    {
                        eprintln!(
                            "bulwark daemon: job {}: uploading {what}: {e}; trying again in {wait:?}",
                            lease.job_id
                        );
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            level = stop.raised() => if level == Stop::Now {
                                return Err("the runner was stopped while it uploaded them".into());
                            },
                        }
                        wait = (wait * 2).min(MAX_BACKOFF.max(self.poll));
                    }
                    Err(e) => return Err(format!("{what}: {e}")),
                }
            }
        }
        Ok(())
    }

    /// Sends the result, retrying transient failures until the lease ends; whether the
    /// coordinator took it (then the job's lease record is gone: see [`Daemon::send_report`]).
    async fn report(&self, lease: &Lease, report: ResultReport, stop: &mut StopWatch) -> bool {
        match report_body(lease, report, &self.identity.registration.name) {
            Ok(body) => {
                self.send_report(&lease.job_id, lease.expires_at, body, stop)
                    .await
            }
            Err(e) => {
                self.metrics.report_given_up();
                eprintln!(
                    "bulwark daemon: job {}: encoding the result: {e}",
                    lease.job_id
                );
                false
            }
        }
    }

    /// Sends the result report `body` of job `job_id`, whose lease ends at `expires_at`,
    /// retrying transient failures until then; whether the coordinator took it. Once it has,
    /// the job's lease record goes (the coordinator offers it to no one again); a report
    /// given up keeps it until the lease is over, so that the job, offered again meanwhile,
    /// is reported as taken before, not run again.
    async fn send_report(
        &self,
        job_id: &str,
        expires_at: u64,
        body: Vec<u8>,
        stop: &mut StopWatch,
    ) -> bool {
        let taken = self
            .send_report_once_taken(job_id, expires_at, body, stop)
            .await;
        if taken {
            if let Err(e) = self.leases.forget(job_id) {
                tracing::warn!(job_id = %job_id, error = %e, "forgetting the reported lease (pruned once the lease is over)");
            }
        }
        taken
    }

    async fn send_report_once_taken(
        &self,
        job_id: &str,
        expires_at: u64,
        body: Vec<u8>,
        stop: &mut StopWatch,
    ) -> bool {
        let reg = &self.identity.registration;
        let path = format!("/v1/jobs/{job_id}/result");
        let mut attempt = 0u32;
        let mut wait = self.poll;
        loop {
            match self
                .client
                .post_signed_in_lease(
                    &path,
                    body.clone(),
                    &reg.runner_id,
                    &self.identity.key,
                    expires_at,
                )
                .await
            {
                Ok(_) => {
                    tracing::info!(job_id = %job_id, "result reported");
                    return true;
                }
                // An earlier attempt did arrive; only its answer was lost.
                Err(e) if attempt > 0 && e.status() == Some(409) => {
                    tracing::info!(job_id = %job_id, "result reported (an earlier attempt arrived)");
                    return true;
                }
                Err(e) if e.is_transient() && now_secs() < expires_at => {
                    eprintln!(
                        "bulwark daemon: job {job_id}: reporting the result: {e}; trying again in {wait:?}"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        level = stop.raised() => if level == Stop::Now {
                            self.metrics.report_given_up();
                            return false;
                        },
                    }
                    wait = (wait * 2).min(MAX_BACKOFF.max(self.poll));
                    attempt += 1;
                }
                Err(e) => {
                    self.metrics.report_given_up();
                    tracing::error!(job_id = %job_id, error = %e, "the result could not be reported");
                    eprintln!(
                        "bulwark daemon: job {job_id}: the result could not be reported: {e}"
                    );
                    return false;
                }
            }
        }
    }
}

/// The job directories in `jobs` last changed more than `keep` before `now`, each removed
/// (whatever modes the job's outputs have), except those of the `active` jobs (leased and not
/// yet reported: a directory's time stops changing once its run has made `out/`, so a long
/// job would look old); what was tried and how it went.
fn sweep(
    jobs: &Path,
    keep: Duration,
    now: std::time::SystemTime,
    active: &std::collections::HashSet<String>,
) -> Vec<(PathBuf, std::io::Result<()>)> {
    let Ok(entries) = std::fs::read_dir(jobs) else {
        return Vec::new();
    };
    let mut done = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let old = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age >= keep);
        let name = e.file_name().to_string_lossy().into_owned();
        if meta.is_dir() && old && check_job_id(&name).is_ok() && !active.contains(&name) {
            let r = crate::fsutil::remove_tree(&path);
            done.push((path, r));
        }
    }
    done
}

/// Whether the reading end of `pipe` is closed (poll reports an error on the write end).
fn reader_gone(pipe: &impl std::os::fd::AsFd) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::POLLOUT)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(_) => fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLERR | PollFlags::POLLHUP)),
        Err(_) => false,
    }
}

/// When to refresh a credential issued at `issued_at` that expires at `expires` (RFC 3339):
/// at two thirds of its lifetime, at least a second after issue; with the expiry. `None` when
/// the expiry cannot be read or has passed.
fn next_refresh(
    expires: &str,
    issued_at: std::time::SystemTime,
) -> Option<(std::time::Instant, std::time::SystemTime)> {
    let expires = humantime::parse_rfc3339_weak(expires).ok()?;
    let lifetime = expires.duration_since(issued_at).ok()?;
    if lifetime.is_zero() {
        return None;
    }
    let point = issued_at + (lifetime * 2 / 3).max(Duration::from_secs(1));
    let wait = point
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    Some((std::time::Instant::now() + wait, expires))
}

pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A job id becomes a directory name: only plain ids are accepted
/// ([`bulwark_protocol::control::check_job_id`]).
fn check_job_id(id: &str) -> Result<()> {
    if bulwark_protocol::control::check_job_id(id).is_err() {
        bail!("the coordinator leased a job whose id is not a plain id");
    }
    Ok(())
}

/// A leased job must name its source: a git commit, or a url with its sha256.
fn check_source(spec: &JobSpec) -> Result<(), String> {
    match &spec.source {
        Some(s) if s.path.is_none() && (s.git.is_some() || s.url.is_some()) => Ok(()),
        Some(s) if s.path.is_some() => Err(
            "source.path: a job from the coordinator must name its source by git commit or url; this runner has no directory to take it from"
                .into(),
        ),
        _ => Err(
            "source: a job from the coordinator must name its source (git and commit, or url and sha256)"
                .into(),
        ),
    }
}

/// Up to `max` bytes of `name` in the output directory `out` from `offset` (fewer at its
/// end), opened as outputs are ([`open_output`]), read on the blocking pool.
async fn read_at(
    out: &Path,
    name: &'static str,
    offset: u64,
    max: usize,
) -> std::io::Result<Vec<u8>> {
    let out = out.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::os::unix::fs::FileExt;
        let (file, len) = open_output(&out, name)?;
        // Sized to what is there (usually nothing new), not to `max`. The file only grows.
        let there = len.saturating_sub(offset);
        let mut buf = vec![0u8; usize::try_from(there).map_or(max, |t| t.min(max))];
        file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    })
    .await
    .map_err(std::io::Error::other)?
}

fn keep_tail(tail: &mut Vec<u8>, bytes: &[u8]) {
    tail.extend_from_slice(bytes);
    if tail.len() > STDERR_TAIL {
        let cut = tail.len() - STDERR_TAIL;
        tail.drain(..cut);
    }
}

/// A file of the job's output directory to upload.
#[derive(Debug)]
struct Blob {
    /// What it is, for messages (`output dist/app`, `log job.log`).
    what: String,
    /// Its path under the output directory.
    rel: String,
    /// Its sha256 as the run recorded it.
    sha256: String,
    /// Its size as the run recorded it.
    size: u64,
}

impl Blob {
    /// The uploads of the job's logs `logs`.
    fn logs(logs: &[bulwark_protocol::control::LogFile]) -> Vec<Blob> {
        logs.iter()
            .map(|l| Blob {
                what: format!("log {}", l.name),
                rel: l.name.clone(),
                sha256: l.sha256.clone(),
                size: l.size,
            })
            .collect()
    }
}

/// Opens output `rel` of the output directory `out` for reading: beneath it, through no
/// symlink, a regular file (the run wrote it so; this holds it to that).
fn open_output(out: &Path, rel: &str) -> std::io::Result<(std::fs::File, u64)> {
    use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
    let dir = std::fs::File::open(out)?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK)
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
    let file = std::fs::File::from(openat2(&dir, rel, how)?);
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok((file, meta.len()))
}

/// The size and sha256 of log `name` in the output directory `out`; `None` when the run left
/// none.
fn hash_log(out: &Path, name: &str) -> Result<Option<LogFile>> {
    let (file, size) = match open_output(out, name) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(anyhow!(e).context(format!("opening {name} in {}", out.display()))),
    };
    // A size that no longer matches when it is uploaded refuses the upload (`deliver`).
    let sha256 = crate::provenance::sha256_read(file)
        .with_context(|| format!("reading {name} in {}", out.display()))?;
    Ok(Some(LogFile {
        name: name.to_owned(),
        size,
        sha256,
    }))
}

/// A run that died (killed, cancelled) left its log under the name it is written as
/// (`joblog::PARTIAL_NAME`): it becomes `job.log`, so the log of what ran is reported. The
/// run is gone, so nothing writes it any more; an existing `job.log` is left alone.
fn salvage_log(out: &Path) {
    let partial = out.join(crate::joblog::PARTIAL_NAME);
    let log = out.join("job.log");
    if !log.exists() && partial.exists() {
        if let Err(e) = std::fs::rename(&partial, &log) {
            eprintln!("bulwark daemon: keeping the log of {}: {e}", out.display());
        }
    }
}

/// The body of a result report: the report itself, or, when that is more than the
/// coordinator accepts (it would answer 413 and the job would end up lost), a runner error that
/// says so and where the result is kept, still with the job's logs (already uploaded; the
/// report names them by digest, a few hundred bytes).
fn report_body(
    lease: &Lease,
    report: ResultReport,
    runner_name: &str,
) -> serde_json::Result<Vec<u8>> {
    let body = serde_json::to_vec(&report)?;
    if body.len() <= MAX_BODY_BYTES {
        return Ok(body);
    }
    let reason = format!(
        "the result and provenance ({} bytes) are too large to report; they are kept on runner {} under daemon/jobs/{}/out",
        body.len(),
        runner_name,
        lease.job_id
    );
    let with_logs = ResultReport {
        logs: report.logs,
        ..synthetic_result(lease, "runner-error", &reason)
    };
    let body = serde_json::to_vec(&with_logs)?;
    if body.len() <= MAX_BODY_BYTES {
        return Ok(body);
    }
    serde_json::to_vec(&synthetic_result(lease, "runner-error", &reason))
}

/// `f(out)` on the runtime's blocking pool: reading and hashing a job's logs (up to the log
/// cap each) must not hold up the loop that serves the other jobs' heartbeats and uploads.
async fn off_the_loop<T: Send + 'static>(f: fn(&Path) -> Result<T>, out: &Path) -> Result<T> {
    let out = out.to_path_buf();
    tokio::task::spawn_blocking(move || f(&out))
        .await
        .context("reading the job's logs")?
}

/// The logs of a run the daemon stopped: what it stored of `job.log` so far (salvaged from
/// its partial file), hashed for upload.
fn logs_of_what_ran(out: &Path) -> anyhow::Result<Vec<bulwark_protocol::control::LogFile>> {
    salvage_log(out);
    let mut logs = Vec::new();
    for name in bulwark_protocol::control::LOG_NAMES {
        logs.extend(hash_log(out, name)?);
    }
    Ok(logs)
}

/// A result for a job that never reached `bulwark run`'s own `result.json`.
fn synthetic_result(lease: &Lease, status: &str, reason: &str) -> ResultReport {
    synthetic(status, reason, lease.trust, Some(&lease.spec.name))
}

/// A result the daemon makes for a job (its `status`, the `reason`, escaped and cut as the
/// daemon's words always are, its `trust` and the spec's `name`), without logs.
pub(super) fn synthetic(
    status: &str,
    reason: &str,
    trust: bulwark_protocol::Trust,
    name: Option<&str>,
) -> ResultReport {
    ResultReport {
        result: serde_json::json!({
            "status": status,
            "reason": client::printable(reason),
            "trust": trust.as_str(),
            "job": name,
        }),
        provenance: None,
        logs: Vec::new(),
    }
}

/// Reads what the run left in `out`: `result.json` and, if any, `provenance.intoto.jsonl`.
/// A run that wrote no `result.json` (refused before it had an output directory, or died) is
/// reported from its exit status and the last `bulwark:` line it printed.
fn collect(lease: &Lease, out: &Path, code: Option<i32>, stderr: &[u8]) -> Result<ResultReport> {
    let read = |name: &str| -> Result<Option<Vec<u8>>> {
        let path = out.join(name);
        match crate::fsutil::open_regular(&path, true) {
            Ok(f) => {
                use std::io::Read;
                let mut bytes = Vec::new();
                f.take(MAX_BODY_BYTES as u64 + 1)
                    .read_to_end(&mut bytes)
                    .with_context(|| format!("reading {}", path.display()))?;
                Ok(Some(bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow!(e).context(format!("reading {}", path.display()))),
        }
    };
    // The logs first: a run that died before its result.json still has the log that says why.
    if !out.join("result.json").exists() {
        salvage_log(out);
    }
    let mut logs = Vec::new();
    for name in bulwark_protocol::control::LOG_NAMES {
        if let Some(log) = hash_log(out, name)? {
            logs.push(log);
        }
    }
    let Some(result) = read("result.json")? else {
        let said = String::from_utf8_lossy(stderr)
            .lines()
            .rev()
            .find(|l| l.starts_with("bulwark: "))
            .map(|l| l.trim_start_matches("bulwark: ").to_string());
        let (status, fallback) = match code {
            Some(2) => ("refused", "bulwark run refused the job"),
            _ => ("runner-error", "bulwark run ended without a result"),
        };
        let reason = said.unwrap_or_else(|| format!("{fallback} (exit status {code:?})"));
        return Ok(ResultReport {
            logs,
            ..synthetic_result(lease, status, &reason)
        });
    };
    // What cannot be reported as the run wrote it is a runner error that still carries the
    // logs (they say what ran), never a report lost with them.
    let runner_error = |logs, reason: String| {
        Ok(ResultReport {
            logs,
            ..synthetic_result(lease, "runner-error", &reason)
        })
    };
    let result: serde_json::Value = match serde_json::from_slice(&result) {
        Ok(r) => r,
        Err(e) => {
            return runner_error(
                logs,
                format!(
                    "the run's result.json is not JSON ({e}; at most {MAX_BODY_BYTES} bytes are \
                     read)"
                ),
            )
        }
    };
    // The run writes a succeeding result.json before it signs the provenance: one that ended
    // otherwise (killed, or exit 3 as signing failed) did not finish, whatever the file says.
    if result["status"] == "succeeded" && code != Some(0) {
        return runner_error(
            logs,
            format!(
                "bulwark run ended with exit status {code:?} after writing a succeeding \
                 result.json (it failed while signing or writing the provenance); its outputs \
                 are not reported"
            ),
        );
    }
    let provenance = match read("provenance.intoto.jsonl")? {
        None => None,
        Some(p) if p.len() > MAX_BODY_BYTES / 2 => {
            return runner_error(
                logs,
                format!(
                    "provenance.intoto.jsonl is larger than {} bytes: too large to report \
                     (a job with very many outputs); its outputs are not reported",
                    MAX_BODY_BYTES / 2
                ),
            )
        }
        Some(p) => match String::from_utf8(p) {
            Ok(p) => Some(p),
            Err(_) => return runner_error(logs, "provenance.intoto.jsonl is not text".to_owned()),
        },
    };
    Ok(ResultReport {
        result,
        provenance,
        logs,
    })
}

/// What to do when the coordinator no longer knows this runner (`401`, "unknown or
/// removed": `bulwark-coordinator runners remove`, or a coordinator state made afresh):
/// asking again cannot help, registering again does. Empty for any other failure. The daemon
/// keeps asking, backing off, in case the coordinator's state is restored.
fn removed_hint(e: &client::ClientError, runner_dir: &Path) -> String {
    match e {
        client::ClientError::Refused {
            status: 401,
            message,
            ..
        } if message.contains("unknown or removed") => format!(
            " (this runner was removed at the coordinator, or the coordinator no longer has \
             its registration: to register again, stop the daemon, delete {}, and run \
             `bulwark register` with a new registration token)",
            runner_dir.display()
        ),
        _ => String::new(),
    }
}

/// The daemon's line for a job that ended: its status and, unless it succeeded, the reason
/// its result gives (what bulwark run or the daemon wrote; quoted from the job's spec at
/// times), escaped and bounded by [`client::printable`].
fn outcome_line(job_id: &str, name: &str, result: &serde_json::Value) -> String {
    let status = result.get("status").and_then(|s| s.as_str()).unwrap_or("?");
    let reason = match result.get("reason").and_then(|r| r.as_str()) {
        Some(r) if status != "succeeded" && !r.is_empty() => {
            format!(": {}", client::printable(r))
        }
        _ => String::new(),
    };
    format!(
        "bulwark daemon: job {job_id} ({}): {}{reason}",
        client::printable(name),
        client::printable(status)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The daemon's line for an ended job gives the reason of one that did not succeed,
    /// escaped and bounded (it may quote the job's spec).
    #[test]
    fn an_ended_jobs_line_gives_the_reason_escaped_and_bounded() {
        let refused = serde_json::json!({
            "status": "refused",
            "reason": format!("network.allow[0]: \u{1b}[31mevil:443 is above the ceiling{}", "x".repeat(900)),
        });
        let line = outcome_line("job-1", "hello", &refused);
        assert!(
            line.starts_with("bulwark daemon: job job-1 (hello): refused: network.allow[0]: \\u{1b}[31mevil:443 is above the ceiling"),
            "{line}"
        );
        assert!(line.ends_with('…') && line.chars().count() < 600, "{line}");
        let ok = serde_json::json!({"status": "succeeded", "reason": "ignored"});
        assert_eq!(
            outcome_line("job-1", "hello", &ok),
            "bulwark daemon: job job-1 (hello): succeeded"
        );
    }

    /// A runner the coordinator no longer knows is told how to register again; other
    /// refusals are not.
    #[test]
    fn a_removed_runner_is_told_how_to_register_again() {
        let removed = client::ClientError::Refused {
            what: "POST /v1/runners/lease".into(),
            status: 401,
            message: "signed request refused: runner runner-1 is unknown or removed".into(),
        };
        let hint = removed_hint(&removed, Path::new("/var/lib/bulwark/runner"));
        assert!(
            hint.contains("delete /var/lib/bulwark/runner, and run `bulwark register` with a new registration token"),
            "{hint}"
        );
        let skew = client::ClientError::Refused {
            what: "POST /v1/runners/lease".into(),
            status: 401,
            message: "signed request refused: timestamp outside the window".into(),
        };
        assert_eq!(removed_hint(&skew, Path::new("/s/runner")), "");
    }
    use sha2::Digest as _;

    /// A lease of a one-step job, of `trust`, that ended long ago.
    fn test_lease(trust: &str) -> Lease {
        serde_json::from_value(serde_json::json!({
            "job_id": "job-0123456789abcdef0123456789abcdef",
            "trust": trust,
            "expires_at": 1,
            "spec": {"version": 1, "name": "build", "steps": [{"name": "make", "run": "make"}]},
        }))
        .unwrap()
    }

    /// What a scripted coordinator saw: each lease request's body, each result (job, report).
    #[derive(Default)]
    struct Seen {
        leases: Vec<Vec<u8>>,
        results: Vec<(String, serde_json::Value)>,
    }

    type Shared = std::sync::Arc<(std::sync::Mutex<Seen>, std::sync::Condvar)>;

    /// How a scripted coordinator answers a request: `(path, body, seen)` to `(status, body)`.
    type Script = fn(&str, &[u8], &Shared) -> (u16, Vec<u8>);

    /// A coordinator on loopback answering each request (one per connection, closed after
    /// the answer) on a thread of its own with `answer(path, body, seen)`: `(status, body)`.
    fn scripted_coordinator(answer: Script) -> (String, Shared) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen: Shared = Default::default();
        let shared = std::sync::Arc::clone(&seen);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let seen = std::sync::Arc::clone(&shared);
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    let mut buf = [0u8; 4096];
                    let end = loop {
                        let n = conn.read(&mut buf).unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        got.extend_from_slice(&buf[..n]);
                        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                            break end;
                        }
                    };
                    let head = String::from_utf8_lossy(&got[..end]).into_owned();
                    let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                    let len = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    let mut body = got[end + 4..].to_vec();
                    while body.len() < len {
                        let n = conn.read(&mut buf).unwrap_or(0);
                        if n == 0 {
                            return;
                        }
                        body.extend_from_slice(&buf[..n]);
                    }
                    let (status, answer) = answer(&path, &body, &seen);
                    let head = if status == 204 {
                        "HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n".to_owned()
                    } else {
                        format!(
                            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                             content-length: {}\r\nconnection: close\r\n\r\n",
                            answer.len()
                        )
                    };
                    let _ = conn.write_all(head.as_bytes());
                    let _ = conn.write_all(&answer);
                });
            }
        });
        (url, seen)
    }

    /// A daemon of `slots` slots polling every 50 ms whose coordinator is at `url`, its state
    /// in `dir`, and whose `bulwark run` does not exist: a job that got as far as a run would
    /// be reported as a runner error saying it could not run.
    fn test_daemon(dir: &Path, url: &str, slots: usize) -> Daemon {
        use crate::provenance::keys::{Algorithm, LocalKey};
        let jobs = dir.join("jobs");
        let leases = dir.join("leases");
        std::fs::create_dir_all(&jobs).unwrap();
        std::fs::create_dir_all(&leases).unwrap();
        Daemon {
            config_path: None,
            config: bulwark_protocol::Config::default(),
            poll: Duration::from_millis(50),
            slots,
            identity: Identity {
                registration: registration::Registration {
                    coordinator: url.to_owned(),
                    runner_id: "runner-1".into(),
                    name: "host-1".into(),
                    issuer: "https://issuer.invalid".into(),
                },
                key: LocalKey::generate(Algorithm::P256).unwrap(),
            },
            client: Client::new(url, None).unwrap(),
            jobs: jobs.clone(),
            exe: dir.join("no-such-bulwark"),
            active: Default::default(),
            leases: Journal::new(leases, 7200),
            job_dirs: jobs,
            metrics: metrics::Metrics::new(),
            runner_dir: PathBuf::from("/nonexistent/runner"),
        }
    }

    /// Runs `daemon`'s loop as `bulwark daemon` does (one thread, its tasks local to it)
    /// until `until` completes; the loop ending first fails the test.
    fn serve_until(daemon: Daemon, until: impl std::future::Future<Output = ()>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async move {
            tokio::select! {
                r = std::rc::Rc::new(daemon).serve(None) => panic!("the loop ended: {r:?}"),
                () = until => {}
            }
        });
    }

    /// A lease of job `id` (lasting an hour) whose spec names no source, so that the daemon
    /// refuses it before anything would run (`refused`), with `extra` set in its first step.
    fn sourceless_lease(id: &str, extra: Option<(&str, &str)>) -> serde_json::Value {
        let mut lease = serde_json::json!({
            "job_id": id,
            "trust": "untrusted",
            "expires_at": now_secs() + 3600,
            "spec": {"version": 1, "name": "build", "steps": [{"name": "make", "run": "make"}]},
        });
        if let Some((k, v)) = extra {
            lease["spec"]["steps"][0][k] = v.into();
        }
        lease
    }

    /// The coordinator's script: the 1st and 2nd lease answers are job-a (the 2nd while the
    /// daemon still reports it: job-a's result is answered only once the 4th lease was
    /// asked for), the 3rd a lease of job-u this runner cannot read, the 4th job-t (which
    /// the test recorded as taken before), then nothing.
    fn script(path: &str, body: &[u8], seen: &Shared) -> (u16, Vec<u8>) {
        let (lock, cond) = &**seen;
        let mut s = lock.lock().unwrap();
        if path == "/v1/runners/lease" {
            s.leases.push(body.to_vec());
            cond.notify_all();
            let lease = match s.leases.len() {
                1 | 2 => sourceless_lease("job-a", None),
                3 => sourceless_lease("job-u", Some(("network", "none"))),
                4 => sourceless_lease("job-t", None),
                _ => return (204, Vec::new()),
            };
            return (200, serde_json::to_vec(&lease).unwrap());
        }
        let Some(job) = path
            .strip_prefix("/v1/jobs/")
            .and_then(|p| p.strip_suffix("/result"))
        else {
            return (404, br#"{"error":"not in the script"}"#.to_vec());
        };
        if job == "job-a" {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while s.leases.len() < 4 && std::time::Instant::now() < deadline {
                s = cond.wait_timeout(s, Duration::from_millis(100)).unwrap().0;
            }
        }
        let report: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        s.results.push((job.to_owned(), report));
        (204, Vec::new())
    }

    /// The daemon's loop against a coordinator that leases it a job it is still reporting,
    /// a lease it cannot read, and one it took before: each lease request names the jobs
    /// held (from the moment a lease is read, not once its task has started); the duplicate
    /// is neither run nor reported a second time; the unreadable one is reported as a runner
    /// error naming the field; the one taken before is reported, not run again.
    #[test]
    fn the_daemon_names_what_it_holds_and_reports_each_leased_job_once_without_running_twice() {
        let dir = crate::tools::testutil::TempDir::new("daemon-loop");
        let (url, seen) = scripted_coordinator(script);
        let daemon = test_daemon(dir.path(), &url, 3);
        let taken: Lease = serde_json::from_value(sourceless_lease("job-t", None)).unwrap();
        assert!(daemon.leases.record(&taken, now_secs()).unwrap());
        let watched = std::sync::Arc::clone(&seen);
        serve_until(daemon, async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(40);
            loop {
                {
                    let s = watched.0.lock().unwrap();
                    // Every job reported, and a few empty polls since: a report given
                    // twice would have arrived by then.
                    if s.results.len() >= 3 && s.leases.len() >= 8 {
                        return;
                    }
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the script never ended"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let s = seen.0.lock().unwrap();
        let holding = |i: usize| -> Vec<String> {
            let body: serde_json::Value = serde_json::from_slice(&s.leases[i]).unwrap();
            serde_json::from_value(body["holding"].clone()).unwrap()
        };
        assert!(holding(0).is_empty());
        assert_eq!(holding(1), ["job-a"], "held as soon as its lease was read");
        assert!(holding(2).contains(&"job-a".to_owned()));
        let of = |job: &str| -> Vec<&serde_json::Value> {
            s.results
                .iter()
                .filter(|(j, _)| j == job)
                .map(|(_, r)| &r["result"])
                .collect()
        };
        // job-a: its own run's report (refused: it names no source), once.
        let a = of("job-a");
        assert_eq!(a.len(), 1, "{:?}", s.results);
        assert_eq!(a[0]["status"], "refused", "{}", a[0]);
        let u = of("job-u");
        assert_eq!(u.len(), 1, "{:?}", s.results);
        assert_eq!(u[0]["status"], "runner-error");
        let why = u[0]["reason"].as_str().unwrap();
        assert!(
            why.contains("cannot read this job's lease")
                && why.contains("spec.steps[0].network: unknown field `network`"),
            "{why}"
        );
        let t = of("job-t");
        assert_eq!(t.len(), 1, "{:?}", s.results);
        assert_eq!(t[0]["status"], "runner-error", "not run: {}", t[0]);
        let why = t[0]["reason"].as_str().unwrap();
        assert!(
            why.contains("took this job before")
                && why.contains("not run again")
                && !why.contains("  "),
            "{why}"
        );
        // Reported, so forgotten: nothing left to keep from a run.
        assert_eq!(
            std::fs::read_dir(dir.path().join("leases"))
                .unwrap()
                .count(),
            0
        );
    }

    /// A coordinator that offers a job taken here before at every request and refuses its
    /// report (`400`) is not asked as fast as it answers: the daemon backs off after each
    /// such report, as after a failed run (50, 100, 200, 400, 800 ms: a handful of requests
    /// in a second and a half, where a loop without backoff sends hundreds).
    #[test]
    fn a_job_taken_before_offered_again_and_again_is_asked_for_with_a_growing_wait() {
        fn refusing(path: &str, body: &[u8], seen: &Shared) -> (u16, Vec<u8>) {
            let mut s = seen.0.lock().unwrap();
            if path == "/v1/runners/lease" {
                s.leases.push(body.to_vec());
                let lease = sourceless_lease("job-t", None);
                return (200, serde_json::to_vec(&lease).unwrap());
            }
            s.results.push((path.to_owned(), serde_json::Value::Null));
            (400, br#"{"error":"refused by the script"}"#.to_vec())
        }
        let dir = crate::tools::testutil::TempDir::new("daemon-backoff");
        let (url, seen) = scripted_coordinator(refusing);
        let daemon = test_daemon(dir.path(), &url, 1);
        let taken: Lease = serde_json::from_value(sourceless_lease("job-t", None)).unwrap();
        assert!(daemon.leases.record(&taken, now_secs()).unwrap());
        serve_until(daemon, async {
            tokio::time::sleep(Duration::from_millis(1500)).await
        });
        let s = seen.0.lock().unwrap();
        assert!(s.results.len() >= 2, "reported {} times", s.results.len());
        assert!(
            s.leases.len() <= 8,
            "{} lease requests in 1.5 s: no backoff",
            s.leases.len()
        );
    }

    #[test]
    fn a_job_is_stopped_a_minute_before_its_lease_ends() {
        assert_eq!(
            until_lease_ending(1_000 + 3_600, 1_000),
            Duration::from_secs(3_540)
        );
        assert_eq!(until_lease_ending(1_030, 1_000), Duration::ZERO);
        assert_eq!(until_lease_ending(900, 1_000), Duration::ZERO);
    }

    #[test]
    fn job_directories_older_than_keep_outputs_are_removed_and_nothing_else() {
        let dir = crate::tools::testutil::TempDir::new("sweep");
        let jobs = dir.path();
        for name in ["job-old", "job-new", ".hidden-old"] {
            std::fs::create_dir_all(jobs.join(name).join("out/dist")).unwrap();
            std::fs::write(jobs.join(name).join("out/dist/app"), "x").unwrap();
        }
        // An output the job left read-only is removed all the same.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            jobs.join("job-old/out/dist"),
            std::fs::Permissions::from_mode(0o500),
        )
        .unwrap();
        std::fs::write(jobs.join("job-file"), "not a directory").unwrap();
        let week = Duration::from_secs(7 * 86400);
        let old = std::time::SystemTime::now() - week - Duration::from_secs(60);
        for name in ["job-old", ".hidden-old", "job-file"] {
            std::fs::File::open(jobs.join(name))
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        let none = std::collections::HashSet::new();
        let done = sweep(jobs, week, std::time::SystemTime::now(), &none);
        assert_eq!(done.len(), 1, "{done:?}");
        assert!(done[0].1.is_ok(), "{done:?}");
        assert!(!jobs.join("job-old").exists());
        assert!(jobs.join("job-new/out/dist/app").exists());
        assert!(
            jobs.join(".hidden-old").exists(),
            "not a job id: left alone"
        );
        assert!(jobs.join("job-file").exists());
        // keep_outputs = "0s": everything finished goes, but not a job still running.
        let running: std::collections::HashSet<String> = ["job-new".to_owned()].into();
        let done = sweep(jobs, Duration::ZERO, std::time::SystemTime::now(), &running);
        assert!(done.is_empty(), "{done:?}");
        assert!(jobs.join("job-new/out/dist/app").exists());
        let done = sweep(jobs, Duration::ZERO, std::time::SystemTime::now(), &none);
        assert_eq!(done.len(), 1);
        assert!(!jobs.join("job-new").exists());
    }

    /// A second signal seen by one wait (the run's) still stops every later one (the report's
    /// retries): no third signal is needed, and none would raise the level again.
    #[test]
    fn once_told_to_stop_now_every_wait_returns_at_once() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (tx, rx) = tokio::sync::watch::channel(Stop::No);
            let mut stop = StopWatch(rx);
            tx.send(Stop::Now).unwrap();
            assert_eq!(stop.raised().await, Stop::Now);
            for _ in 0..2 {
                let again = tokio::time::timeout(Duration::from_secs(5), stop.raised()).await;
                assert_eq!(again.ok(), Some(Stop::Now));
                let mut other = stop.clone();
                let fresh = tokio::time::timeout(Duration::from_secs(5), other.raised()).await;
                assert_eq!(fresh.ok(), Some(Stop::Now));
            }
            drop(tx);
        });
    }

    #[test]
    fn a_report_too_large_to_send_becomes_a_runner_error_that_keeps_the_logs() {
        let lease = test_lease("trusted");
        let logs = vec![LogFile {
            name: "job.log".into(),
            size: 14,
            sha256: "ab".repeat(32),
        }];
        let report = |provenance: usize| ResultReport {
            result: serde_json::json!({"status": "succeeded", "reason": null}),
            provenance: Some("x".repeat(provenance)),
            logs: logs.clone(),
        };
        let fits: ResultReport =
            serde_json::from_slice(&report_body(&lease, report(1000), "pool-a-1").unwrap())
                .unwrap();
        assert_eq!(fits.result["status"], "succeeded");
        assert_eq!(fits.provenance.map(|p| p.len()), Some(1000));
        let body = report_body(&lease, report(MAX_BODY_BYTES), "pool-a-1").unwrap();
        assert!(body.len() <= MAX_BODY_BYTES);
        let cut: ResultReport = serde_json::from_slice(&body).unwrap();
        assert_eq!(cut.result["status"], "runner-error");
        let reason = cut.result["reason"].as_str().unwrap();
        assert!(
            reason.contains("too large to report")
                && reason.contains("pool-a-1")
                && reason.contains("daemon/jobs/job-0123456789abcdef0123456789abcdef/out"),
            "{reason}"
        );
        assert_eq!(cut.provenance, None);
        assert_eq!(cut.logs, logs);
    }

    #[test]
    fn a_run_that_died_without_a_result_is_reported_with_its_logs() {
        let dir = crate::tools::testutil::TempDir::new("collect");
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("job.log"), "step 1\nKilled\n").unwrap();
        let lease = test_lease("untrusted");
        let report = collect(&lease, &out, Some(1), b"bulwark: the runner died\n").unwrap();
        assert_eq!(report.result["status"], "runner-error");
        assert_eq!(report.result["reason"], "the runner died");
        assert_eq!(
            report.logs,
            [LogFile {
                name: "job.log".into(),
                size: 14,
                sha256: crate::outputs::hex(&sha2::Sha256::digest(b"step 1\nKilled\n")),
            }]
        );
        // Refused before it had an output directory: nothing to send.
        let none = collect(&lease, &dir.path().join("missing"), Some(2), b"").unwrap();
        assert!(none.logs.is_empty());
        assert_eq!(none.result["status"], "refused");
    }

    /// What the run left but cannot be reported as it stands is a runner error that keeps the
    /// logs: a succeeding result.json from a run that did not finish (killed, or exit 3 as
    /// signing failed: it is written before the provenance), a result.json cut short, a
    /// provenance file too large to send.
    #[test]
    fn a_result_that_cannot_stand_is_a_runner_error_with_the_logs() {
        let dir = crate::tools::testutil::TempDir::new("collect-stand");
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("job.log"), "built\n").unwrap();
        let lease = test_lease("trusted");
        std::fs::write(out.join("result.json"), r#"{"status":"succeeded"}"#).unwrap();
        for code in [None, Some(3), Some(1)] {
            let r = collect(&lease, &out, code, b"").unwrap();
            assert_eq!(r.result["status"], "runner-error", "{code:?}");
            let why = r.result["reason"].as_str().unwrap();
            assert!(
                why.contains("after writing a succeeding result.json"),
                "{why}"
            );
            assert_eq!(r.logs.len(), 1, "{code:?}");
        }
        assert_eq!(
            collect(&lease, &out, Some(0), b"").unwrap().result["status"],
            "succeeded"
        );
        std::fs::write(out.join("result.json"), r#"{"status":"succ"#).unwrap();
        let r = collect(&lease, &out, Some(1), b"").unwrap();
        assert_eq!(r.result["status"], "runner-error");
        assert_eq!(r.logs.len(), 1);
        std::fs::write(out.join("result.json"), r#"{"status":"succeeded"}"#).unwrap();
        std::fs::write(
            out.join("provenance.intoto.jsonl"),
            vec![b'x'; MAX_BODY_BYTES / 2 + 1],
        )
        .unwrap();
        let r = collect(&lease, &out, Some(0), b"").unwrap();
        assert_eq!(r.result["status"], "runner-error");
        assert!(
            r.result["reason"]
                .as_str()
                .unwrap()
                .contains("too large to report"),
            "{}",
            r.result
        );
        assert_eq!(r.logs.len(), 1);
    }

    #[test]
    fn a_credential_is_refreshed_at_two_thirds_of_its_lifetime_and_not_in_its_first_second() {
        use std::time::{Instant, SystemTime};
        // The wait is bounded from both sides without trusting the thread to run on: counted
        // from an instant taken before the issue time is read, it cannot have shrunk while the
        // thread was descheduled; counted from an instant taken after the call, it cannot have
        // grown.
        let before = Instant::now();
        let now = SystemTime::now();
        let at = |secs: u64| {
            humantime::format_rfc3339_seconds(now + Duration::from_secs(secs)).to_string()
        };
        // The wait to `when`, from before the issue time was read and from after the call.
        let waits = |when: Instant| {
            let after = Instant::now();
            (
                when.saturating_duration_since(before),
                when.saturating_duration_since(after),
            )
        };
        let (when, expires) = next_refresh(&at(600), now).unwrap();
        let (from_issue, from_after) = waits(when);
        assert!(
            from_issue > Duration::from_secs(390) && from_after <= Duration::from_secs(400),
            "{from_issue:?} after issue, {from_after:?} after the call"
        );
        assert!(expires <= now + Duration::from_secs(600));
        // A lifetime under 1.5 s: a second after issue, not sooner.
        let (when, _) = next_refresh(&at(1), now).unwrap();
        let (from_issue, from_after) = waits(when);
        assert!(
            from_issue > Duration::from_millis(900) && from_after <= Duration::from_secs(1),
            "{from_issue:?} after issue, {from_after:?} after the call"
        );
        // Already expired, or unreadable: nothing to schedule.
        let past = humantime::format_rfc3339_seconds(now - Duration::from_secs(5)).to_string();
        assert!(next_refresh(&past, now).is_none());
        assert!(next_refresh("yesterday", now).is_none());
    }
}
