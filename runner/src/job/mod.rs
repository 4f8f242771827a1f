//! `bulwark run`: one job, start to finish.
//!
//! The order is the contract: nothing of the job runs until the spec, the configuration, the
//! output directory and every isolation layer have been checked (exit 2 otherwise); outputs
//! are read only after every job process is gone; `result.json` is written last, atomically.
//!
//! This file holds that order; `inputs.rs` fetches and verifies what goes into the job (source,
//! tools, rootfs) and `sandbox.rs` builds the sandbox spec, starts the egress proxy and the
//! helper, and reads what the sandbox reports.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use bulwark_protocol::{
    format_size, Config, Inputs, Isolation, IsolationChoice, IsolationMode, JobResult, JobSpec,
    JobStatus, StepResult, Trust, ValidatedJob,
};
use bulwark_sandbox::cgroup::{self, JobCgroup, Limits};
use bulwark_sandbox::spec::EgressSpec;
use bulwark_sandbox::subid::HandTo;

use crate::config::{self, Dirs};
use crate::exit;
use crate::outputs::{self, Bounds};
use crate::workspace::{self, JobDir};

mod caches;
mod inputs;
mod sandbox;

use sandbox::confirmed_layers;

/// Arguments of `bulwark run`.
#[derive(Debug)]
pub struct RunArgs {
    /// The job spec file.
    pub job: PathBuf,
    /// Source directory overriding `[source] path`.
    pub source: Option<PathBuf>,
    /// Output directory (absent or empty).
    pub out: Option<PathBuf>,
    /// Signing key (provenance is not produced yet).
    pub key: Option<PathBuf>,
    /// Trust level from the operator.
    pub trust: Trust,
    /// Configuration file.
    pub config: Option<PathBuf>,
    /// Do not echo the job's log to the terminal.
    pub quiet: bool,
    /// Credentials `bulwark daemon` exchanged for this job (read from standard input with the
    /// hidden `--credentials-stdin`); `None`: the run has none to give.
    pub credentials: Option<crate::creds::Handoff>,
    /// The rest of standard input with `--credentials-stdin`: newer credentials the daemon
    /// sends while the job runs.
    pub credential_updates: Option<crate::creds::Updates>,
}

/// System directories bound read-only into every sandbox (those that exist on the host).
pub const SYSTEM_PATHS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];

/// Host `/etc` entries the system's tools need; never `shadow`, keys or other host secrets.
pub const ETC_ENTRIES: &[&str] = &[
    "/etc/alternatives",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/ssl/certs",
    "/etc/ca-certificates",
    "/etc/ca-certificates.conf",
    "/etc/nsswitch.conf",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/protocols",
    "/etc/services",
    "/etc/os-release",
    "/etc/debian_version",
    "/etc/mime.types",
    "/etc/gai.conf",
];

/// Port of the egress forwarder on the job's loopback (`HTTP_PROXY=http://127.0.0.1:3128`).
pub const EGRESS_PORT: u16 = 3128;

/// `PATH` inside the sandbox.
pub const JOB_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A sandbox spec with what every sandbox of this runner shares: this build's protocol and
/// this runner's pid, the host's system paths and `/etc` entries, no cgroups, no tools, no
/// network, and conservative limits. Callers override the rest with struct update syntax.
pub fn base_spec(
    job_id: &str,
    workspace: PathBuf,
    tmp: PathBuf,
    host_ids: Option<(u32, u32)>,
) -> bulwark_sandbox::spec::SandboxSpec {
    bulwark_sandbox::spec::SandboxSpec {
        protocol: bulwark_sandbox::spec::PROTOCOL.to_string(),
        runner_pid: std::process::id(),
        job_id: job_id.to_string(),
        workspace,
        tmp,
        system_paths: SYSTEM_PATHS.iter().map(PathBuf::from).collect(),
        etc_entries: ETC_ENTRIES.iter().map(PathBuf::from).collect(),
        host_ids,
        subids: None,
        cgroup_join: Vec::new(),
        hostname: "bulwark-job".into(),
        steps: Vec::new(),
        job_timeout_ms: 10_000,
        kill_grace_ms: 1_000,
        rlimits: bulwark_sandbox::spec::Rlimits {
            nofile: bulwark_sandbox::spec::JOB_NOFILE,
            core: 0,
            nproc: None,
            address_space: None,
        },
        report_phases: false,
        rootfs: None,
        cache: None,
        tools: Vec::new(),
        egress: None,
        credentials: Vec::new(),
        credential_updates: false,
    }
}

/// How a job that ran ended: status, the reason when it did not succeed, and its outputs.
type Outcome = (
    JobStatus,
    Option<String>,
    Vec<bulwark_protocol::OutputRecord>,
);

/// A run that ended early, with its exit status class.
#[derive(Debug)]
enum Stop {
    /// Refused before any step ran (exit 2).
    Refused(String),
    /// The runner failed after steps ran (exit 3).
    Runner(String),
}

pub(crate) fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Runs `bulwark run`; returns the exit status.
pub fn run(mut args: RunArgs) -> u8 {
    let updates = args.credential_updates.take();
    let started = now_rfc3339();
    // Stage 1: everything that can be refused without an output directory.
    let (loaded, job, job_sha256, spec_dir) = match load_and_validate(&args) {
        Ok(v) => v,
        Err(msg) => {
            eprintln!("bulwark: {msg}");
            return exit::REFUSED;
        }
    };
    // The handoff must hold exactly what the spec asks for: checked before the output
    // directory is claimed, like every other refusal of stage 1.
    let prepared = match args
        .credentials
        .clone()
        .map(|h| crate::creds::into_sandbox(&job.spec.credentials, h))
        .transpose()
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("bulwark: {e}");
            return exit::REFUSED;
        }
    };
    let out = match prepare_out_dir(args.out.as_deref(), &job.spec.name, &started) {
        Ok(o) => o,
        Err(msg) => {
            eprintln!("bulwark: {msg}");
            return exit::REFUSED;
        }
    };
    if loaded.path.is_none() {
        eprintln!(
            "bulwark: no configuration file ({} does not exist): built-in defaults and ceilings apply",
            config::default_config_path().display()
        );
    }
    let mut runner = JobRun::new(&args, &loaded.config, &job, out.clone(), started, spec_dir);
    if let Some(prepared) = prepared {
        runner.credential_files = prepared.files;
        runner.masks = prepared.masks;
        runner.credentials = prepared.records;
        runner.updates = updates;
    }
    let (status, reason, outputs) = match runner.execute() {
        Ok((status, reason, outputs)) => (status, reason, outputs),
        Err(Stop::Refused(r)) => (JobStatus::Refused, Some(r), Vec::new()),
        Err(Stop::Runner(r)) => (JobStatus::RunnerError, Some(r), Vec::new()),
    };
    // The claim on the output directory, when no log was ever written into it (the run ended
    // before its sandbox did): an empty partial log is no evidence of anything.
    let claim = out.join(crate::joblog::PARTIAL_NAME);
    if std::fs::symlink_metadata(&claim).is_ok_and(|m| m.is_file() && m.len() == 0) {
        let _ = std::fs::remove_file(&claim);
    }
    let mut result = JobResult {
        status,
        reason: reason.clone(),
        trust: args.trust,
        isolation: runner.isolation.clone(),
        steps: runner.steps.clone(),
        outputs,
        inputs: runner.inputs.clone(),
        started: runner.started.clone(),
        finished: now_rfc3339(),
        job: job.spec.name.clone(),
        invocation_id: runner.invocation_id.clone(),
        cgroup_counters: runner.counters,
        egress: runner.egress.clone(),
        disk: runner.disk_use,
        credentials: runner.credentials.clone(),
    };
    let mut code = match status {
        JobStatus::Succeeded => exit::SUCCEEDED,
        JobStatus::Failed => exit::FAILED,
        JobStatus::Refused => exit::REFUSED,
        JobStatus::RunnerError => exit::RUNNER_ERROR,
    };
    let mut json = serde_json::to_vec_pretty(&result).unwrap_or_default();
    json.push(b'\n');
    if let Err(e) = crate::fsutil::write_replace(&out.join("result.json"), &json) {
        eprintln!(
            "bulwark: writing {}: {e}",
            out.join("result.json").display()
        );
        code = exit::RUNNER_ERROR;
    }
    if code == exit::SUCCEEDED && !result.outputs.is_empty() {
        let t = Instant::now();
        let signed = sign_provenance(
            &args,
            &loaded.config,
            &job,
            &job_sha256,
            &result,
            &out,
            runner.helper.as_ref(),
        );
        tracing::info!(
            provenance_ms = t.elapsed().as_secs_f64() * 1000.0,
            subjects = result.outputs.len(),
            "provenance built, signed and written"
        );
        match signed {
            Ok(Some(public)) => eprintln!(
                "bulwark: provenance signed with this runner's default key; public key: {}",
                public.display()
            ),
            Ok(None) => {}
            Err(e) => {
                // No provenance for a run the runner could not finish; say why in result.json.
                for name in [
                    crate::provenance::JSONL_NAME,
                    crate::provenance::BUNDLE_NAME,
                ] {
                    let _ = std::fs::remove_file(out.join(name));
                }
                result.status = JobStatus::RunnerError;
                result.reason = Some(format!("signing provenance failed: {e:#}"));
                let mut json = serde_json::to_vec_pretty(&result).unwrap_or_default();
                json.push(b'\n');
                let _ = crate::fsutil::write_replace(&out.join("result.json"), &json);
                eprintln!(
                    "bulwark: job {}: signing provenance failed: {e:#}",
                    job.spec.name
                );
                return exit::RUNNER_ERROR;
            }
        }
    }
    match (&status, &reason) {
        (JobStatus::Succeeded, _) => eprintln!(
            "bulwark: job {} succeeded; results in {}",
            job.spec.name,
            out.display()
        ),
        (s, Some(r)) => eprintln!(
            "bulwark: job {} {}: {}; results in {}",
            job.spec.name,
            s.as_str(),
            visible_line(r),
            out.display()
        ),
        (s, None) => eprintln!(
            "bulwark: job {} {}; results in {}",
            job.spec.name,
            s.as_str(),
            out.display()
        ),
    }
    code
}

/// What stage 1 loaded: the configuration, the validated spec, the sha256 of its bytes, and the
/// directory it was read from (open).
type Loaded = (config::Loaded, ValidatedJob, String, OwnedFd);

/// `text` for one line of the runner's own output: a reason quotes names the job chose (an
/// output's path in the workspace), which may hold escape sequences (a terminal title, OSC 52
/// clipboard writes), line breaks (a forged `bulwark:` line in a CI log) or marks that hide or
/// reorder text (U+202E showing `zg.rat.exe` as `exe.tar.gz`); each is shown escaped
/// (`\u{1b}`, `\u{202e}`) by `bulwark_protocol::terminal::escape`, the one escape for such
/// text. `result.json` keeps the text as it was (JSON escapes it).
pub(crate) fn visible_line(text: &str) -> std::borrow::Cow<'_, str> {
    bulwark_protocol::terminal::escape(text)
}

fn load_and_validate(args: &RunArgs) -> Result<Loaded, String> {
    let loaded = config::load(args.config.as_deref()).map_err(|e| format!("{e:#}"))?;
    let path = args.job.display();
    let (spec_dir, text) = read_job_spec(&args.job).map_err(|e| format!("job spec {path}: {e}"))?;
    let job_sha256 = {
        use sha2::Digest;
        crate::outputs::hex(&sha2::Sha256::digest(text.as_bytes()))
    };
    // A `.json` file is the wire form (what `bulwark daemon` writes from a lease).
    let spec = if args.job.extension().is_some_and(|e| e == "json") {
        JobSpec::from_json_str(&text)
    } else {
        JobSpec::from_toml_str(&text)
    }
    .map_err(|e| format!("job spec {path}: {e}"))?;
    let job = check_spec(&spec, args.trust, &loaded.config)
        .map_err(|e| format!("job spec {path}: {e}"))?;
    if !job.spec.credentials.is_empty() && args.credentials.is_none() {
        return Err(format!(
            "job spec {path}: credentials: given only to trusted jobs a coordinator leased to \
             `bulwark daemon` (they are exchanged for the job's identity token); plain \
             `bulwark run` has none to give"
        ));
    }
    // A key that cannot sign must refuse the job before it runs, not after. It is read here
    // only to check it, and dropped (zeroized) at once; signing reads it again at the end.
    if let Some(k) = &args.key {
        crate::provenance::keys::LocalKey::load(k).map_err(|e| format!("--key: {e:#}"))?;
    } else if let Ok(dirs) = Dirs::resolve(&loaded.config) {
        // So is the default key once it exists (one that does not is made whole at signing).
        let default = crate::provenance::default_key_path(&dirs.state);
        if std::fs::symlink_metadata(&default).is_ok() {
            crate::provenance::keys::LocalKey::load(&default).map_err(|e| {
                format!("the default signing key: {e:#}; restore it, or give --key")
            })?;
        }
    }
    Ok((loaded, job, job_sha256, spec_dir))
}

/// Everything this host's configuration says about a parsed spec at this trust level: the
/// spec validated against the ceilings, its allow list against the trust level's egress
/// ceiling, and credentials only for a trusted job. `bulwark run` refuses with it, and
/// `bulwark daemon` checks a leased spec with it before it asks for any identity token.
pub fn check_spec(spec: &JobSpec, trust: Trust, config: &Config) -> Result<ValidatedJob, String> {
    let job = spec.validate(&config.limits).map_err(|e| e.to_string())?;
    if let Some(net) = job.spec.network.as_ref().filter(|n| !n.allow.is_empty()) {
        check_egress_ceiling(&net.allow, trust, config)?;
    }
    if !job.spec.caches.is_empty() && !config.caches.enabled {
        return Err(
            "caches: this runner has caches turned off (caches.enabled = false in its \
             configuration); remove [[caches]] from the spec, or turn them on"
                .into(),
        );
    }
    if !job.spec.credentials.is_empty() && trust != Trust::Trusted {
        return Err(
            "credentials: an untrusted job never gets credentials; remove them from the spec, \
             or run the job as trusted from a coordinator"
                .into(),
        );
    }
    Ok(job)
}

/// Largest job spec `bulwark run` reads, in bytes: far above any real spec (the protocol's
/// own bounds on steps, tools and patterns keep one to a few kilobytes).
pub const MAX_SPEC_BYTES: u64 = 1 << 20;

/// Reads the job spec file: the file itself, a regular file, at most [`MAX_SPEC_BYTES`].
///
/// The spec usually sits in the tree it builds (`[source] path` is relative to it), which a pull
/// request controls, and the runner reads it with its own privileges (root, in root mode). A
/// spec that is a symlink to a host file (`job.toml -> /etc/shadow`) would be read as root and
/// its first malformed line quoted in the syntax error, which lands in the CI log; a symlink to
/// `/dev/zero` or a fifo would make the runner read forever or hang. So the last component is
/// opened without following a symlink (`O_NOFOLLOW`; the operator gives the file's own path),
/// without blocking on a fifo (`O_NONBLOCK`), and what was opened must be a regular file of a
/// bounded size, read through the descriptor that was checked.
///
/// The job file's directory is opened once, here, and the file read through it; that
/// descriptor is what `[source] path` is later resolved beneath (see `JobRun::source_dir`), so a
/// directory renamed or swapped for a symlink after the spec was read cannot move the source.
fn read_job_spec(path: &Path) -> Result<(OwnedFd, String), String> {
    use nix::fcntl::{open, openat, OFlag};
    use nix::sys::stat::Mode;
    use std::io::Read;
    let cannot = |e: nix::Error| format!("cannot read: {}", std::io::Error::from(e));
    let name = path
        .file_name()
        .ok_or("refused: it names no file".to_string())?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = open(
        parent,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(cannot)?;
    let fd = openat(
        &dir,
        name,
        OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        nix::errno::Errno::ELOOP => {
            "refused: it is a symlink; give the path of the job file itself".to_string()
        }
        e => cannot(e),
    })?;
    let file = std::fs::File::from(fd);
    let meta = file.metadata().map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("refused: it is not a regular file".into());
    }
    let too_large = || format!("refused: larger than {MAX_SPEC_BYTES} bytes");
    if meta.len() > MAX_SPEC_BYTES {
        return Err(too_large());
    }
    let mut text = String::new();
    file.take(MAX_SPEC_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read: {e}"))?;
    if text.len() as u64 > MAX_SPEC_BYTES {
        return Err(too_large());
    }
    Ok((dir, text))
}

fn prepare_out_dir(out: Option<&Path>, name: &str, started: &str) -> Result<PathBuf, String> {
    let dir = match out {
        Some(d) => d.to_path_buf(),
        None => PathBuf::from("bulwark-out").join(format!("{name}-{}", started.replace(':', ""))),
    };
    match std::fs::read_dir(&dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(format!(
                    "--out {}: the output directory must be absent or empty",
                    dir.display()
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&dir)
                .map_err(|e| format!("--out {}: cannot create: {e}", dir.display()))?;
        }
        Err(e) => return Err(format!("--out {}: {e}", dir.display())),
    }
    let canonical =
        std::fs::canonicalize(&dir).map_err(|e| format!("--out {}: {e}", dir.display()))?;
    check_out_dir_unchangeable(&canonical)
        .map_err(|why| format!("--out {}: refused: {why}", dir.display()))?;
    let dir = canonical;
    // Claimed for this run: two runs given the same directory (or the same default one: one
    // job name, one second, one working directory) both find it absent or empty, and would
    // write their logs, results, outputs and provenance over each other's. The log's partial
    // file is made exclusively now; the run that cannot make it leaves the directory alone.
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dir.join(crate::joblog::PARTIAL_NAME))
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(format!(
                "--out {}: another run is writing into it; give each run its own output \
                 directory",
                dir.display()
            ))
        }
        Err(e) => {
            return Err(format!(
                "--out {}: cannot write into it: {e}",
                dir.display()
            ))
        }
    }
    Ok(dir)
}

/// Refuses an output directory that a user other than this one (or root) could rename or
/// replace while the runner writes into it.
///
/// Everything in the output directory is written by path (`result.json`, `job.log`, the
/// outputs, provenance). If another user owns the directory or may rename an entry on the
/// way to it, that user can swap it for a symlink while the job runs, and the runner, as root,
/// then writes the job's outputs (names and bytes the job chose) wherever it points:
/// `/etc/cron.d`, `/root/.ssh`. The default `./bulwark-out` is made wherever `bulwark run` was
/// started, a shared checkout or `/tmp` (where another user may have made `bulwark-out`
/// first). So the directory must be this user's and not writable by group or others, and
/// every directory above it must belong to root or this user and be writable by no one else,
/// unless it is sticky (`/tmp`: there only an entry's owner may rename it).
fn check_out_dir_unchangeable(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let me = nix::unistd::geteuid().as_raw();
    let meta = std::fs::symlink_metadata(dir).map_err(|e| e.to_string())?;
    if meta.uid() != me || meta.mode() & 0o022 != 0 {
        return Err(format!(
            "it belongs to uid {} with mode {:o}, so someone other than uid {me} could change \
             it while the runner writes into it; give an output directory only uid {me} can \
             change",
            meta.uid(),
            meta.mode() & 0o7777
        ));
    }
    for above in dir.ancestors().skip(1) {
        let m =
            std::fs::symlink_metadata(above).map_err(|e| format!("{}: {e}", above.display()))?;
        let owner_ok = m.uid() == 0 || m.uid() == me;
        let shared = m.mode() & 0o022 != 0 && m.mode() & 0o1000 == 0;
        if !owner_ok || shared {
            return Err(format!(
                "it lies in {} (uid {}, mode {:o}), where someone other than uid {me} could \
                 swap it for a symlink while the runner writes into it; give an output \
                 directory only uid {me} can change, on a path only it can change",
                above.display(),
                m.uid(),
                m.mode() & 0o7777
            ));
        }
    }
    Ok(())
}

struct JobRun<'a> {
    args: &'a RunArgs,
    config: &'a Config,
    job: &'a ValidatedJob,
    out: PathBuf,
    started: String,
    invocation_id: String,
    isolation: Option<Isolation>,
    steps: Vec<StepResult>,
    inputs: Inputs,
    counters: Option<bulwark_protocol::CgroupCounters>,
    /// The job disk's use after the steps, when it had one.
    disk_use: Option<bulwark_protocol::DiskUse>,
    egress: Option<bulwark_protocol::EgressRecord>,
    /// The sandbox helper that ran the job, kept open so provenance hashes that file.
    helper: Option<crate::helper_process::HelperBinary>,
    /// Subuid mode: the job's ids and the paths handed to them that have not been handed back
    /// yet (every exit path hands them back before the job directory is removed).
    handed_to_job: Option<(bulwark_sandbox::subid::SubidMap, Vec<PathBuf>)>,
    /// `limits.min_free_disk` on the job directory's filesystem, checked while the job runs.
    disk: Option<crate::disk_reserve::Reserve>,
    /// Something of the job's uid may still run: its lease must not be released clean.
    lease_unclean: bool,
    /// The store trees mounted into the job (tools, root filesystem), held so that `bulwark
    /// tools prune` cannot remove them under it; released when the job's run ends.
    trees_in_use: Vec<std::sync::Arc<crate::tools::InUse>>,
    /// When the job's tools, root filesystem and url source must all be in:
    /// `JobRun::inputs_budget` from when the runner starts fetching them.
    inputs_deadline: Option<Instant>,
    /// The directory the job spec was read from: `[source] path` is resolved beneath it.
    spec_dir: OwnedFd,
    /// The job's cgroup could not be emptied and removed: its directory (and the record in
    /// it) is left for a later run's cleanup.
    cgroup_left: bool,
    /// The job's credential files, for the sandbox spec (docs/credentials.md).
    credential_files: Vec<bulwark_sandbox::spec::CredentialFile>,
    /// Every credential value the job was given, the first and every newer one sent on to
    /// it: masked in the job's log, and never saved in a cache ([`JobRun::save_caches`]).
    masks: Vec<crate::creds::Mask>,
    /// What `result.json` records of the credentials.
    credentials: Vec<bulwark_protocol::CredentialRecord>,
    /// Newer credentials from the daemon, read once the sandbox is ready.
    updates: Option<crate::creds::Updates>,
    /// What each update sent to the sandbox and not yet confirmed will make of the records.
    updates_sent: std::collections::VecDeque<Vec<bulwark_protocol::CredentialRecord>>,
    /// The sandbox reported itself ready: updates may be sent.
    sandbox_ready: bool,
}

/// What the sandbox reported.
#[derive(Debug, Default)]
struct Reported {
    setup_failed: Option<(String, String)>,
    enforced: Option<bulwark_sandbox::spec::Enforced>,
    steps: Vec<StepResult>,
    done: Option<bool>,
    any_step_started: bool,
    /// The step that started and has not finished (its record as far as known), and when.
    running: Option<(StepResult, std::time::Instant)>,
    /// The job cgroup's OOM counts (kills; invocations at its own limit, v2, else 0) read at
    /// the boundary before each step, by the step's index (when the sandbox was ready, when the
    /// step before finished), while the sandbox lived: what happened before a step is not what
    /// ended it, nor what ended the sandbox after the last boundary.
    oom_before_step: std::collections::BTreeMap<usize, (u64, u64)>,
    /// Set at those events, for the runner to read the count (it holds the cgroup).
    oom_kills_stale: bool,
    /// The runner killed the sandbox past every deadline (the backstop).
    backstop: bool,
    /// Why the runner stopped the job while it ran (the disk reserve).
    stopped: Option<String>,
}

impl<'a> JobRun<'a> {
    /// A run of `job` that has not started: nothing fetched, no sandbox, no lease.
    fn new(
        args: &'a RunArgs,
        config: &'a Config,
        job: &'a ValidatedJob,
        out: PathBuf,
        started: String,
        spec_dir: OwnedFd,
    ) -> JobRun<'a> {
        JobRun {
            args,
            config,
            job,
            out,
            started,
            invocation_id: crate::fsutil::random_hex(16),
            isolation: None,
            steps: Vec::new(),
            inputs: Inputs::default(),
            counters: None,
            disk_use: None,
            egress: None,
            helper: None,
            handed_to_job: None,
            disk: None,
            lease_unclean: false,
            trees_in_use: Vec::new(),
            inputs_deadline: None,
            spec_dir,
            cgroup_left: false,
            credential_files: Vec::new(),
            masks: Vec::new(),
            credentials: Vec::new(),
            updates: None,
            updates_sent: std::collections::VecDeque::new(),
            sandbox_ready: false,
        }
    }
}

impl JobRun<'_> {
    fn execute(&mut self) -> Result<Outcome, Stop> {
        let limits = &self.config.limits;
        // Every layer this job relies on must be enforceable here.
        // Whether this user may create cgroups is learned by creating the job's own, below.
        let mut host = bulwark_sandbox::probe::host_layers(false);
        if host.cgroup_version.is_some() && !config::is_root() {
            if let Err(e) = host.cgroups.check_writable() {
                host.cgroup_version = None;
                if let Some(layer) = host.layers.iter_mut().find(|l| l.name == "cgroups") {
                    layer.available = false;
                    layer.detail = format!("this user cannot make job cgroups: {e}");
                }
            }
        }
        check_required_layers(&host, limits.allow_rlimit_fallback, self.job.cpus)
            .map_err(Stop::Refused)?;
        if let Some(bytes) = self.job.disk {
            bulwark_sandbox::disk::check_available().map_err(|e| {
                Stop::Refused(format!(
                    "this host cannot give the job its disk of {} (resources.disk, or \
                     limits.max_disk for a spec that asks for none): {e}",
                    format_size(bytes)
                ))
            })?;
        }
        let fallback = host.cgroup_version.is_none();
        let root = config::is_root();
        let mode = isolation_mode(limits.isolation, root).map_err(Stop::Refused)?;
        let subuid = if mode == IsolationMode::Subuid {
            Some(
                crate::subuid::setup(limits.job_uids)
                    .map_err(|e| Stop::Refused(format!("limits.isolation = \"subuid\": {e}")))?,
            )
        } else {
            None
        };
        let mut limits_enforced = vec!["timeout".to_string()];
        let mut weakened = Vec::new();
        if fallback {
            limits_enforced.extend([
                "memory:rlimit-as".to_string(),
                "pids:rlimit-nproc".to_string(),
            ]);
            weakened.push("rlimit-fallback".to_string());
            eprintln!("bulwark: warning: no usable cgroup; memory and pids are limited by rlimits only (limits.allow_rlimit_fallback = true), which is recorded in result.json");
        } else {
            limits_enforced.splice(0..0, ["memory".to_string(), "pids".to_string()]);
            if self.job.cpus.is_some() {
                limits_enforced.push("cpu".to_string());
            }
        }
        if self.job.disk.is_some() {
            limits_enforced.push("disk".to_string());
        }
        if limits.min_free_disk != bulwark_protocol::DiskReserve::Off {
            limits_enforced.push("free-disk".to_string());
        }
        if self.config.egress.audit {
            // Audit mode lets the job reach any host but the metadata addresses and this
            // host's loopback: a weakening the operator chose, recorded like the others.
            weakened.push("egress-audit".to_string());
        }
        self.isolation = Some(Isolation {
            mode,
            landlock_abi: host.landlock_abi,
            seccomp: "allowlist".into(),
            cgroup: host
                .cgroup_version
                .map(|v| v.as_str().to_string())
                .unwrap_or_else(|| "none".into()),
            limits_enforced,
            weakened,
            confirmed: Vec::new(),
        });

        let dirs = Dirs::resolve(self.config).map_err(|e| Stop::Refused(format!("{e:#}")))?;
        dirs.create().map_err(|e| Stop::Refused(format!("{e:#}")))?;
        if dirs.state_noexec() == Some(true) {
            eprintln!("bulwark: warning: {}", dirs.noexec_warning());
        }
        // The helper is exec'd while the job's directories, inputs and cgroups are prepared;
        // it waits for its spec (and is killed unused if the job is refused meanwhile).
        let helper = crate::helper_process::HelperBinary::open().map_err(Stop::Refused)?;
        let started = helper
            .start(std::process::Stdio::piped())
            .map_err(Stop::Refused)?;
        self.helper = Some(helper);
        let cleaned = clean_after(&dirs, &host.cgroups, subuid.as_ref(), self.helper.as_ref());
        if !cleaned.is_empty() {
            eprintln!(
                "bulwark: cleaned up after {} dead run(s): {}",
                cleaned.len(),
                cleaned.join(", ")
            );
        }
        let lease = match (&subuid, root) {
            (_, true) => Some(crate::uids::lease(&limits.root_job_uids())),
            (Some(s), false) => Some(crate::uids::lease_subordinate(&s.range, &s.user, s.uid)),
            (None, false) => None,
        }
        .transpose()
        .map_err(|e| Stop::Refused(format!("{e:#}")))?;
        let subids = subuid
            .as_ref()
            .zip(lease.as_ref())
            .map(|(s, l)| s.map_for(l.uid));
        // A disk is checked against the reserve and taken under one lock, with every other
        // run's disk (see `workspace::create_reserved`).
        let jobdir = workspace::create_reserved(
            &dirs,
            &self.job.spec.name,
            &self.started,
            self.job.disk,
            limits.min_free_disk,
        )
        .map_err(|e| Stop::Refused(format!("{e:#}")))?;
        self.disk = crate::disk_reserve::Reserve::new(&jobdir.path, limits.min_free_disk);
        let result = match self.disk.as_ref().map(|d| d.check(0)) {
            Some(Err(e)) => Err(Stop::Refused(format!(
                "{e}; free space there, or lower limits.min_free_disk"
            ))),
            _ => Ok(()),
        };
        let result = result.and_then(|()| match lease.as_ref().filter(|_| root) {
            Some(l) => jobdir
                .admit(l.uid)
                .map_err(|e| Stop::Refused(format!("{e:#}"))),
            None => Ok(()),
        });
        // A job on a disk of its own writes nothing more to the host's filesystem than the
        // disk it was given at once: whoever takes that filesystem below the reserve while it
        // runs, it is not this job, which is not stopped for it. Only where the filesystem
        // writes a preallocated file in place (on copy-on-write ones its rewrites take room).
        if jobdir.disk.is_some() && bulwark_sandbox::disk::preallocation_holds(&jobdir.path) {
            self.disk = None;
        }
        let result = result.and_then(|()| {
            self.execute_in(
                &jobdir,
                lease.as_ref().filter(|_| root).map(|l| l.uid),
                subids,
                &host,
                fallback,
                started,
            )
        });
        // Subuid mode, on a path that ended before handing the job's files back. If they
        // cannot be handed back now, the directory is left whole (lock released, `subids`
        // record kept) for the next run's cleanup: removing what this runner may would delete
        // the record and leave the job's files where nothing would ever take them back.
        let mut keep_jobdir = false;
        if let Some((ids, paths)) = self.handed_to_job.take() {
            let back = match &self.helper {
                Some(helper) => crate::subuid::hand_over(helper, &ids, HandTo::Runner, &paths),
                None => Err("no sandbox helper".into()),
            };
            if let Err(e) = back {
                eprintln!(
                    "bulwark: warning: the job's files stay with uid {} in {} until a later run \
                     can take them back: {e}",
                    ids.uid,
                    jobdir.path.display()
                );
                keep_jobdir = true;
            }
        }
        if self.cgroup_left {
            let _ = std::fs::write(jobdir.path.join(workspace::CGROUP_STUCK_RECORD), b"");
            eprintln!(
                "bulwark: warning: the job's cgroup could not be emptied; {} stays for a later \
                 run's cleanup to try again",
                jobdir.path.display()
            );
            keep_jobdir = true;
        }
        if keep_jobdir {
            drop(jobdir);
        } else if let Err(e) = jobdir.remove() {
            tracing::warn!("{e:#}");
        }
        // A runner error may mean job processes survived: then the lease ends unclean and the
        // next holder of this uid checks for leftovers first.
        if let Some(l) = lease {
            if !keep_jobdir && !self.lease_unclean && !matches!(result, Err(Stop::Runner(_))) {
                l.release_clean();
            }
        }
        result
    }

    /// Kills every process of the job uid `uid` (root mode) and says what became of them for
    /// an error message; the lease ends unclean unless they are seen gone.
    fn kill_every_process_of(&mut self, uid: u32) -> String {
        let killed = match &self.helper {
            Some(helper) => helper.kill_uid(uid),
            None => Err("no sandbox helper".into()),
        };
        let gone = killed.is_ok() && crate::uids::wait_until_unused(uid, Duration::from_secs(2));
        if gone {
            return format!("and the process was killed (every process of uid {uid} is gone)");
        }
        self.lease_unclean = true;
        let why = killed.err().map_or_else(
            || format!("a process of uid {uid} still runs after the sweep (SIGKILL)"),
            |e| format!("killing it failed: {e}"),
        );
        format!("{why}; uid {uid} is not given to another job while a process of it runs")
    }

    fn execute_in(
        &mut self,
        jobdir: &JobDir,
        host_uid: Option<u32>,
        subids: Option<bulwark_sandbox::subid::SubidMap>,
        host: &bulwark_sandbox::probe::HostLayers,
        fallback: bool,
        helper: crate::helper_process::Started,
    ) -> Result<Outcome, Stop> {
        let limits = &self.config.limits;
        // Pinned tools: fetched (or found in the store), verified by sha256, unpacked read-only
        // before anything of the job runs; any failure refuses the job. Together with the
        // root filesystem and a url source, within the job's own timeout (or fetch.timeout
        // when that is longer, so that one input that fits it alone always fits): each
        // download alone has fetch.timeout, but a spec may name 64 tools.
        self.inputs_deadline = Instant::now().checked_add(self.inputs_budget());
        // Root mode: what the runner copies into the job is the job's uid's as it is made.
        let owner = host_uid.map(|uid| (uid, uid));
        let tools = self.resolve_tools()?;
        let rootfs = self.resolve_rootfs()?;
        let url_source = self
            .job
            .spec
            .source
            .as_ref()
            .and_then(|s| s.url.clone().zip(s.sha256.clone()));
        let git_source = self.job.spec.source.as_ref().and_then(|s| {
            s.git
                .clone()
                .zip(s.commit.clone())
                .map(|(g, c)| (g, c, s.r#ref.clone()))
        });
        let mut git_owned = false;
        if let (Some((url, sha256)), None) = (url_source, &self.args.source) {
            self.fetch_url_source(&url, &sha256, jobdir, owner)?;
        } else if let (Some((url, commit, git_ref)), None) = (git_source, &self.args.source) {
            // Fetched by the runner with git confined (cleared environment, no hooks, no
            // submodules, checked addresses; as root, running as the job's uid), checked out
            // at exactly the commit.
            let mut policy = crate::gitsource::GitPolicy::from_config(self.config)
                .map_err(|e| Stop::Refused(format!("fetch configuration: {e}")))?;
            policy.room = self.workspace_room(jobdir)?;
            policy.confine_with = self.helper.as_ref().map(|h| h.exec_path());
            if policy.confine_with.is_none() {
                return Err(Stop::Refused(
                    "source.git: no sandbox helper to confine git with".into(),
                ));
            }
            // Git's Landlock confinement takes what this kernel has: below ABI 4 its TCP
            // connects, below ABI 6 its signals and abstract sockets are not confined. Said,
            // not refused: the job's own sandbox accepts these kernels too.
            let abi = bulwark_sandbox::landlock::usable_abi();
            if abi < 6 && !self.args.quiet {
                eprintln!(
                    "bulwark: warning: Landlock ABI {abi} here: git's {} not confined (needs \
                     ABI {})",
                    if abi < 4 {
                        "TCP connects, signals and abstract unix sockets are"
                    } else {
                        "signals and abstract unix sockets are"
                    },
                    if abi < 4 { 4 } else { 6 }
                );
            }
            let fetched = crate::gitsource::fetch(
                &url,
                &commit,
                git_ref.as_deref(),
                &jobdir.workspace,
                &policy,
                // Root mode: git runs as the job's uid, not as root.
                host_uid,
            );
            // Git ran as the job's uid, and its process group is gone; anything else of that
            // uid now (a process git put in a session of its own) would outlive the job in
            // the host's namespaces and wait for the next job of this uid. Only a compromised
            // git does that, so the job is refused (its checkout cannot be trusted), and every
            // process of the uid is killed; should one survive, the uid is not handed out
            // again while it runs. A process of git's own group that was killed when git was
            // stopped (a checkout past its size bound) may take a moment to die (writing to
            // disk, say): one that is still there after two seconds was not in that group.
            let outlived = |uid: &u32| {
                !crate::uids::wait_until_unused(*uid, std::time::Duration::from_secs(2))
            };
            if let Some(uid) = host_uid.filter(outlived) {
                let swept = self.kill_every_process_of(uid);
                return Err(Stop::Refused(format!(
                    "source.git: a process of the job's uid {uid} outlived the git fetch (git \
                     left it running in a session of its own); the job is refused, {swept}"
                )));
            }
            let got = fetched
                .map_err(|e| Stop::Refused(format!("source.git: {:#}", anyhow::Error::from(e))))?;
            git_owned = true;
            if !self.args.quiet {
                eprintln!("bulwark: source {} at {}", got.uri, got.commit);
            }
            self.inputs.source = got.to_json();
        } else if let Some(src) = self.source_dir()? {
            let abs = &src.path;
            // A local source's caches are kept under its path as text (`docs/caches.md`): two
            // paths that differ only in bytes that are not UTF-8 would share them.
            if !self.job.spec.caches.is_empty() && abs.to_str().is_none() {
                return Err(Stop::Refused(format!(
                    "caches: the source directory {} is not named in UTF-8, which a cache's \
                     scope needs; rename it or run without [[caches]]",
                    abs.display()
                )));
            }
            let room = self.workspace_room(jobdir)?;
            let stats = src
                .copy_into(&jobdir.workspace, room, owner)
                .map_err(|e| self.copy_refusal(jobdir, e))?;
            if stats.skipped_count > 0 {
                // Names the source chose: at most the first 20, escaped (a newline in one
                // would print a line of its own).
                let shown = stats.skipped.clone();
                let more = stats.skipped_count - shown.len() as u64;
                let names = visible_line(&shown.join(", ")).into_owned();
                eprintln!(
                    "bulwark: source: skipped {} special file(s) (fifos, sockets, devices): \
                     {names}{}",
                    stats.skipped_count,
                    if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    }
                );
            }
            self.inputs.source = serde_json::json!({
                "kind": "local",
                "uri": format!("file://{}", abs.display()),
                "path": abs.display().to_string(),
                "tree_sha256": crate::source::tree_digest(&stats.entries),
                "files": stats.files,
                "bytes": stats.bytes,
            });
        }
        let has_caches = self.restore_caches(jobdir, host_uid)?;
        if let Some(uid) = host_uid {
            // What the runner copied in is the job's uid's already (given entry by entry as it
            // was made), and so is a git checkout (git ran as that uid; root walking by path
            // through a tree that uid wrote could be led elsewhere): only the two directories
            // themselves, which the runner made empty, are left to hand over.
            let give = |dir: &std::path::Path| std::os::unix::fs::lchown(dir, Some(uid), Some(uid));
            if !git_owned {
                give(&jobdir.workspace).map_err(|e| {
                    Stop::Refused(format!("handing the workspace to uid {uid}: {e}"))
                })?;
            }
            give(&jobdir.tmp)
                .map_err(|e| Stop::Refused(format!("handing /tmp to uid {uid}: {e}")))?;
        }
        let cg = if fallback {
            None
        } else {
            Some(
                JobCgroup::create(
                    &host.cgroups,
                    &jobdir.id,
                    &Limits {
                        memory: Some(self.job.memory),
                        pids: Some(self.job.pids),
                        cpu_millis: self.job.cpus,
                    },
                    helper.pid().as_slice(),
                )
                .map_err(|e| {
                    Stop::Refused(format!("cgroups: cannot create the job's cgroup: {e}"))
                })?,
            )
        };
        // Nothing runs in the cgroup yet: on a refusal from here on it is removed at once.
        let discard = |cg: Option<JobCgroup>| {
            if let Some(cg) = cg {
                let _ = cg.remove(Duration::from_secs(1));
            }
        };
        if let Some(c) = &cg {
            if let Err(e) = jobdir.record_cgroup(c) {
                discard(cg);
                return Err(Stop::Refused(format!("{e:#}")));
            }
        }
        let egress = match self.start_egress(jobdir, host_uid) {
            Ok(egress) => egress,
            Err(stop) => {
                discard(cg);
                return Err(stop);
            }
        };
        // Subuid mode: the workspace, /tmp and the proxy socket's directory become the job's
        // (recorded first, so that a run that dies from here on is cleaned up by the next).
        if let Some(ids) = &subids {
            let mut paths = crate::subuid::job_trees(&jobdir.workspace, &jobdir.tmp);
            paths.extend(egress.as_ref().map(|e| e.dir.clone()));
            if has_caches {
                paths.push(jobdir.cache.clone());
            }
            let handed = jobdir
                .record_subids(ids)
                .map_err(|e| format!("{e:#}"))
                .and_then(|()| {
                    self.handed_to_job = Some((ids.clone(), paths.clone()));
                    let helper = self.helper.as_ref().ok_or("no sandbox helper")?;
                    crate::subuid::hand_over(helper, ids, HandTo::Job, &paths)
                });
            if let Err(e) = handed {
                discard(cg);
                return Err(Stop::Refused(format!(
                    "handing the workspace to the job's uid {}: {e}",
                    ids.uid
                )));
            }
        }
        let mut spec = self.sandbox_spec(jobdir, host_uid, cg.as_ref(), fallback);
        spec.subids = subids.clone();
        spec.rootfs = rootfs;
        spec.cache = has_caches.then(|| jobdir.cache.clone());
        if !tools.is_empty() {
            let tool_path: Vec<String> = tools
                .iter()
                .map(|t| match t.path_entry() {
                    "" => format!("/tools/{}", t.name),
                    sub => format!("/tools/{}/{sub}", t.name),
                })
                .collect();
            for step in &mut spec.steps {
                if let Some((_, path)) = step.env.iter_mut().find(|(k, _)| k == "PATH") {
                    *path = format!("{}:{path}", tool_path.join(":"));
                }
            }
            spec.tools = tools
                .iter()
                .map(|t| bulwark_sandbox::spec::ToolMount {
                    name: t.name.clone(),
                    host_dir: t.dir.clone(),
                })
                .collect();
        }
        if let Some(e) = &egress {
            spec.egress = Some(EgressSpec {
                socket_dir: e.dir.clone(),
                port: EGRESS_PORT,
                max_connections: 128,
            });
            let url = format!("http://127.0.0.1:{EGRESS_PORT}");
            for step in &mut spec.steps {
                // The proxy variables always win over the spec (which cannot set them anyway).
                step.env.retain(|(k, _)| {
                    !bulwark_protocol::v1::job::PROXY_ENV_VARS.contains(&k.as_str())
                });
                for k in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
                    step.env.push((k.into(), url.clone()));
                }
                for k in ["NO_PROXY", "no_proxy"] {
                    step.env.push((k.into(), "localhost,127.0.0.1,::1".into()));
                }
            }
        }
        let reported = self.run_sandbox(&spec, helper, cg.as_ref());
        // The job's disk as the steps left it: full (as good as: ext4 keeps a few blocks
        // back from anything but its own metadata) means a write failed for want of room.
        // Out of inodes is full too: no file can be made however many bytes are free.
        let mut disk_full = false;
        let mut disk_out_of_files = None;
        if let Some((mount, size)) = &jobdir.disk {
            if let Ok((total, available)) = bulwark_sandbox::disk::usage(mount) {
                self.disk_use = Some(bulwark_protocol::DiskUse {
                    size: *size,
                    used: total.saturating_sub(available),
                });
                disk_full = available < (1 << 20).max(total / 200);
            }
            if let Ok((files, 0)) = bulwark_sandbox::disk::files(mount) {
                disk_out_of_files = Some(files);
            }
        }
        // Every job process is gone once init is; the cgroup check is the independent proof.
        let mut counters = cgroup::Counters::default();
        if let Some(cg) = cg {
            counters = cg.counters();
            self.counters = Some(bulwark_protocol::CgroupCounters {
                oom_kills: counters.oom_kills,
                pids_max_hit: counters.pids_max_hit,
                cpu_throttled_periods: counters.cpu_throttled_periods,
                cpu_throttled_ms: counters.cpu_throttled_ms,
            });
            if let Err(e) = cg.remove(Duration::from_secs(10)) {
                // The job directory is what names this cgroup to a later run (its id, and on
                // a delegated v2 cgroup its record): `execute` keeps it for a later run's
                // cleanup, which tries again. Subuid mode: nothing is handed
                // back while job processes live.
                self.cgroup_left = true;
                return Err(Stop::Runner(format!(
                    "job processes survived the sandbox: {e}"
                )));
            }
        }
        // Subuid mode: every job process is gone; the files come back to the runner before
        // it reads outputs or removes anything.
        // Cleared only once handed back: on failure `execute` tries again and, failing,
        // keeps the job directory (record included) for a later run.
        if let Some((ids, paths)) = &self.handed_to_job {
            let helper = self.helper.as_ref().ok_or_else(|| {
                Stop::Runner("no sandbox helper to hand the job's files back".into())
            })?;
            crate::subuid::hand_over(helper, ids, HandTo::Runner, paths).map_err(|e| {
                Stop::Runner(format!(
                    "handing the job's files back from uid {}: {e}",
                    ids.uid
                ))
            })?;
            self.handed_to_job = None;
        }
        if let Some(egress) = egress {
            // Every job process is gone (init has exited): nothing can use the proxy any more.
            let (dir, summary) = egress.shutdown();
            let _ = crate::fsutil::remove_tree(&dir);
            let summary =
                summary.map_err(|e| Stop::Runner(format!("stopping the egress proxy: {e}")))?;
            let log_sha256 = crate::provenance::sha256_file(&self.out.join("egress.log"))
                .map_err(|e| Stop::Runner(format!("egress.log: {e:#}")))?;
            self.egress = Some(bulwark_protocol::EgressRecord {
                audit: self.config.egress.audit,
                allowed: summary.allowed,
                denied: summary.denied,
                bytes_up: summary.bytes_up,
                bytes_down: summary.bytes_down,
                log_sha256,
                log_truncated: summary.truncated,
            });
        }
        let reported = reported?;
        if let Some(en) = &reported.enforced {
            if let Some(iso) = self.isolation.as_mut() {
                iso.landlock_abi = en.landlock_abi;
                iso.confirmed = confirmed_layers(en);
            }
        }
        self.steps = reported.steps.clone();
        if let Some(why) = &reported.stopped {
            // Which job filled the disk cannot be told from the filesystem's free space: every
            // job on it is stopped alike, so none is failed as if by its own doing. DESIGN.md
            // counts a full disk as the runner's failure (exit 3); before any step, a refusal.
            let msg = format!(
                "{why}, while the job ran: the runner stopped it (as it stops every job on that \
                 filesystem) and removed its files"
            );
            return if reported.any_step_started {
                Err(Stop::Runner(msg))
            } else {
                Err(Stop::Refused(msg))
            };
        }
        if let Some((stage, message)) = &reported.setup_failed {
            let msg =
                format!("the sandbox could not apply {stage}: {message}; the job did not run");
            return if reported.any_step_started {
                Err(Stop::Runner(msg))
            } else {
                Err(Stop::Refused(msg))
            };
        }
        if !reported.steps.is_empty() && reported.enforced.is_none() {
            return Err(Stop::Runner(
                "a step ran without the sandbox reporting which protections it enforced".into(),
            ));
        }
        if reported.done.is_none() {
            let declared: Vec<&str> = self.job.steps.iter().map(|s| s.name.as_str()).collect();
            let running = reported
                .running
                .as_ref()
                .map(|(r, t)| (r.clone(), t.elapsed()));
            let limit = || {
                format!(
                    "the job's memory limit of {} ({} OOM kill(s) in the job's cgroup)",
                    format_size(self.job.memory),
                    counters.oom_kills
                )
            };
            match unfinished(
                killed_at_limit(&counters, &reported),
                running,
                reported.any_step_started,
                &self.steps,
                &declared,
            ) {
                Unfinished::Unexplained if reported.backstop => {
                    return Err(Stop::Runner(
                        "the sandbox outlived every deadline and the runner killed it".into(),
                    ))
                }
                Unfinished::Unexplained => {
                    return Err(Stop::Runner(
                        "the sandbox ended without reporting completion".into(),
                    ))
                }
                Unfinished::NotStarted => {
                    return Err(Stop::Refused(format!(
                        "the sandbox could not start within {}: raise resources.memory",
                        limit()
                    )))
                }
                Unfinished::InStep(step) => {
                    eprintln!(
                        "bulwark: the job reached its memory limit and the kernel ended its \
                         sandbox during step {}",
                        bulwark_protocol::terminal::escape(&step.name)
                    );
                    // Named at its limit with the other failed steps, below.
                    self.steps.push(step);
                }
                Unfinished::BetweenSteps { next } => {
                    let next = next.map_or("the job's end".into(), |n| format!("step {n}"));
                    return Ok((
                        JobStatus::Failed,
                        Some(format!(
                            "the job reached {} and the kernel ended its sandbox before {next}: \
                             what the steps before left in /tmp or /dev/shm counts",
                            limit()
                        )),
                        Vec::new(),
                    ));
                }
                // A failed step's record stands, named at its limit below.
                Unfinished::AfterFailure => {}
            }
        }
        // Name the limit that ended a failed step.
        // The step's own OOM kills: those since the boundary before it, where the runner read
        // it while the sandbox lived; otherwise (the runner read behind) any, but only for a
        // step a signal ended, not one that exited with a status of its own.
        let ended_by_its_oom = |last: &StepResult| match self
            .steps
            .len()
            .checked_sub(1)
            .and_then(|i| reported.oom_before_step.get(&i))
        {
            Some(&(before, _)) => counters.oom_kills > before,
            None => counters.oom_kills > 0 && last.signal.is_some(),
        };
        let memory = self.steps.last().is_some_and(ended_by_its_oom);
        if let Some(last) = self.steps.last_mut() {
            if last.exit_code != Some(0) {
                if last.timed_out {
                    last.limit = Some("timeout".into());
                } else if memory {
                    last.limit = Some("memory".into());
                } else if counters.pids_max_hit > 0 {
                    last.limit = Some("pids".into());
                } else if disk_full || disk_out_of_files.is_some() {
                    last.limit = Some("disk".into());
                }
            }
        }
        if let Some(failed) = self.steps.iter().find(|s| s.exit_code != Some(0)) {
            let how = match (failed.exit_code, failed.signal) {
                (Some(c), _) => format!("exited with status {c}"),
                (None, Some(s)) => format!("was killed by signal {s}"),
                _ => "ended abnormally".into(),
            };
            let limit = match failed.limit.as_deref() {
                Some("timeout") => " after reaching its time limit".to_string(),
                Some("memory") => format!(
                    " after reaching the memory limit of {} ({} OOM kill(s) in the job's cgroup)",
                    format_size(self.job.memory),
                    counters.oom_kills
                ),
                Some("pids") => format!(
                    " after reaching the pids limit of {} ({} fork(s) refused)",
                    self.job.pids, counters.pids_max_hit
                ),
                Some("disk") => match disk_out_of_files.filter(|_| !disk_full) {
                    Some(files) => format!(
                        " after using up the files its disk of {} can hold ({files}; \
                         resources.disk)",
                        format_size(self.job.disk.unwrap_or_default())
                    ),
                    None => format!(
                        " after filling its disk of {} (resources.disk)",
                        format_size(self.job.disk.unwrap_or_default())
                    ),
                },
                _ => String::new(),
            };
            return Ok((
                JobStatus::Failed,
                Some(format!("step {} {how}{limit}", failed.name)),
                Vec::new(),
            ));
        }
        if let (Some(m), true) = (self.job.cpus, counters.cpu_throttled_periods > 0) {
            eprintln!(
                "bulwark: note: the job's CPU limit of {} held it back for {} ms in {} period(s) of 100 ms",
                bulwark_protocol::format_cpus(m),
                counters.cpu_throttled_ms,
                counters.cpu_throttled_periods
            );
        }
        if counters.pids_max_hit > 0 || counters.oom_kills > 0 {
            eprintln!(
                "bulwark: note: the job hit its limits ({} fork(s) refused at pids {}, {} OOM kill(s)) but its steps succeeded",
                counters.pids_max_hit, self.job.pids, counters.oom_kills
            );
        }
        let bounds = Bounds {
            max_outputs: limits.max_outputs,
            max_bytes: limits.max_output_bytes,
        };
        let out_reserve = crate::disk_reserve::Reserve::new(&self.out, limits.min_free_disk);
        let room = |total: u64| match &out_reserve {
            Some(r) => r.check(total).map_err(|e| e.to_string()),
            None => Ok(()),
        };
        match outputs::collect_within(
            &jobdir.workspace,
            &self.job.output_patterns,
            &self.out,
            bounds,
            room,
        ) {
            Ok(records) => {
                // Only a job that succeeded leaves its caches for the next one.
                self.save_caches(jobdir);
                Ok((JobStatus::Succeeded, None, records))
            }
            Err(e) => Ok((JobStatus::Failed, Some(e.to_string()), Vec::new())),
        }
    }
}

/// Removes what dead runs left in the state directory `dirs` (their cgroups, job directories,
/// disks and proxy sockets; a subuid-mode run's files are first taken back from its job's
/// ids through `helper`): what every run does before it prepares its own job. Returns the
/// ids of the runs cleaned.
fn clean_after(
    dirs: &Dirs,
    cgroups: &cgroup::Support,
    subuid: Option<&crate::subuid::Setup>,
    helper: Option<&crate::helper_process::HelperBinary>,
) -> Vec<String> {
    let reclaim = |record: &str, paths: &[PathBuf]| -> Result<(), String> {
        let (Some(setup), Some(helper)) = (subuid, helper) else {
            return Err("it ran in subuid mode, which this run is not configured for".into());
        };
        let ids = crate::subuid::from_record(setup, record).ok_or_else(|| {
            format!("its subids record {record:?} names no id of this runner's range")
        })?;
        crate::subuid::hand_over(helper, &ids, HandTo::Runner, paths)
    };
    workspace::cleanup_stale(dirs, cgroups, &reclaim)
}

/// Removes what dead runs of this configuration left behind, as the next `bulwark run` would
/// (see [`clean_after`]): `bulwark daemon` calls it when it starts, so that the workspaces,
/// cgroups and loop disks of runs that died with a crashed daemon are not kept until the
/// next job. A run still alive is left alone (its lock is held). Returns the ids of the runs
/// cleaned; an error when the state directory or the subuid setup cannot be used (what each
/// run would refuse on, too).
pub fn clean_dead_runs(config: &Config) -> Result<Vec<String>, String> {
    let dirs = Dirs::resolve(config).map_err(|e| format!("{e:#}"))?;
    dirs.create().map_err(|e| format!("{e:#}"))?;
    let root = config::is_root();
    let subuid = match isolation_mode(config.limits.isolation, root)? {
        IsolationMode::Subuid => Some(
            crate::subuid::setup(config.limits.job_uids)
                .map_err(|e| format!("limits.isolation = \"subuid\": {e}"))?,
        ),
        _ => None,
    };
    let helper = match subuid {
        Some(_) => Some(crate::helper_process::HelperBinary::open()?),
        None => None,
    };
    Ok(clean_after(
        &dirs,
        &cgroup::detect(),
        subuid.as_ref(),
        helper.as_ref(),
    ))
}

/// The isolation mode `choice` (`limits.isolation`) means for a runner that is (or is not)
/// root, or why it cannot be had.
pub(crate) fn isolation_mode(choice: IsolationChoice, root: bool) -> Result<IsolationMode, String> {
    match (choice, root) {
        (IsolationChoice::Auto | IsolationChoice::RootPerJobUid, true) => {
            Ok(IsolationMode::RootPerJobUid)
        }
        (IsolationChoice::Auto | IsolationChoice::RootlessSingleUid, false) => {
            Ok(IsolationMode::RootlessSingleUid)
        }
        (IsolationChoice::Subuid, false) => Ok(IsolationMode::Subuid),
        (IsolationChoice::RootPerJobUid, false) => Err(
            "limits.isolation = \"root-per-job-uid\" needs a runner running as root; run \
             bulwark as root, or choose \"subuid\" for a dedicated user"
                .into(),
        ),
        (IsolationChoice::Subuid, true) => Err(
            "limits.isolation = \"subuid\" is for a runner that is not root; as root every job \
             gets its own uid from limits.job_uids (\"root-per-job-uid\")"
                .into(),
        ),
        (IsolationChoice::RootlessSingleUid, true) => Err(
            "limits.isolation = \"rootless-single-uid\" is for a runner that is not root; as \
             root every job gets its own uid (\"root-per-job-uid\")"
                .into(),
        ),
    }
}

/// Refuses a job where a layer it needs cannot be enforced, naming the layer. cgroups may be
/// replaced by rlimits only when the operator allowed it, and never for a CPU limit
/// (`cpu_millis`), which rlimits cannot express.
fn check_required_layers(
    host: &bulwark_sandbox::probe::HostLayers,
    allow_rlimit_fallback: bool,
    cpu_millis: Option<u64>,
) -> Result<(), String> {
    for name in ["user-namespaces", "landlock", "seccomp"] {
        match host.layer(name) {
            Some(layer) if layer.available => {}
            Some(layer) => {
                return Err(format!(
                    "this host cannot enforce {name}: {}; run `bulwark probe` for every layer",
                    layer.detail
                ));
            }
            None => return Err(format!("this host cannot enforce {name}: not probed")),
        }
    }
    if host.cgroup_version.is_none() && !allow_rlimit_fallback {
        let detail = host
            .layer("cgroups")
            .map(|l| l.detail.clone())
            .unwrap_or_default();
        return Err(format!("this host cannot enforce cgroups: {detail}"));
    }
    if let Some(m) = cpu_millis {
        let what = format!(
            "the job's CPU limit of {} (resources.cpus, or limits.max_cpus for a spec that asks \
             for none)",
            bulwark_protocol::format_cpus(m)
        );
        match host.cgroup_version {
            None => {
                let detail = host
                    .layer("cgroups")
                    .map(|l| l.detail.clone())
                    .unwrap_or_default();
                return Err(format!(
                    "this host cannot enforce {what}: it needs cgroups, which rlimits cannot \
                     replace here: {detail}"
                ));
            }
            Some(_) => {
                if let Err(why) = host.cgroups.cpu() {
                    return Err(format!("this host cannot enforce {what}: {why}"));
                }
            }
        }
    }
    Ok(())
}

/// Builds, signs and writes the provenance of a successful job. Returns the default public
/// key's path when the default key was used.
fn sign_provenance(
    args: &RunArgs,
    config: &Config,
    job: &ValidatedJob,
    job_sha256: &str,
    result: &JobResult,
    out: &Path,
    helper: Option<&crate::helper_process::HelperBinary>,
) -> anyhow::Result<Option<PathBuf>> {
    use crate::provenance::{self, ProvenanceInput};
    let dirs = Dirs::resolve(config)?;
    let mut byproducts = Vec::new();
    for name in ["job.log", "result.json", "egress.log"] {
        let p = out.join(name);
        if p.exists() {
            byproducts.push((name.to_string(), provenance::sha256_file(&p)?));
        }
    }
    let input = ProvenanceInput {
        result,
        job_path: args.job.display().to_string(),
        job_sha256: job_sha256.to_string(),
        builder_id: config.builder_id.clone(),
        network_allow: job
            .spec
            .network
            .as_ref()
            .map(|n| n.allow.clone())
            .unwrap_or_default(),
        byproducts,
        runner_sha256: provenance::own_binary_sha256()?,
        helper_sha256: helper
            .map(|h| h.sha256())
            .transpose()
            .map_err(|e| anyhow::anyhow!(e))?,
    };
    let statement = provenance::build_statement(&input);
    // The key is read now, after every job process is gone, and dropped when this returns.
    let (key, default_pub) = provenance::load_or_create_key(args.key.as_deref(), &dirs.state)?;
    provenance::write(out, &statement, &key)?;
    // The host's inventory answers for everything built here. Its failure is said, not
    // fatal: the artifact and its provenance are good, and `bulwark inventory add` can index
    // the output directory later.
    let written = out.join(provenance::JSONL_NAME);
    // Recorded with the key id that signed it, as `inventory add` records the verifying key.
    let keyid = provenance::keys::Signer::keyid(&key);
    if let Err(e) = crate::inventory::record_own(&dirs.state, &statement, &written, keyid) {
        eprintln!(
            "bulwark: warning: not recorded in the inventory ({e:#}); index it with `bulwark \
             inventory add --key <signing.pub> {}`",
            out.display()
        );
    }
    Ok(default_pub)
}

/// Refuses a network allow list above the operator's ceiling for the job's trust level.
fn check_egress_ceiling(allow: &[String], trust: Trust, config: &Config) -> Result<(), String> {
    let (ceiling, key) = match trust {
        Trust::Untrusted => (&config.egress.ceiling_untrusted, "egress.ceiling_untrusted"),
        Trust::Trusted => (&config.egress.ceiling_trusted, "egress.ceiling_trusted"),
    };
    let entries: Vec<bulwark_protocol::AllowEntry> = allow
        .iter()
        .enumerate()
        .map(|(i, a)| {
            bulwark_protocol::AllowEntry::parse(a).map_err(|e| format!("network.allow[{i}]: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let ceiling: Vec<bulwark_protocol::CeilingEntry> = ceiling
        .iter()
        .map(|c| bulwark_protocol::CeilingEntry::parse(c).map_err(|e| format!("{key}: {e}")))
        .collect::<Result<_, _>>()?;
    let host = crate::egress::policy::host_addresses(&config.host.addresses)
        .map_err(|e| format!("egress: {e}"))?;
    crate::egress::check_ceiling(&entries, &ceiling, &host).map_err(|e| format!("{e} ({key})"))
}

/// What a sandbox that ended without reporting completion (init died, taking every job
/// process with it) tells, from the job's cgroup and the steps it reported.
#[derive(Debug, PartialEq)]
enum Unfinished {
    /// No OOM kill at the job's memory limit explains it (none since the last step boundary,
    /// the limit never reached, or the runner's own backstop): the runner's failure.
    Unexplained,
    /// The kernel killed the sandbox at the memory limit before any step started: nothing of
    /// the job ran.
    NotStarted,
    /// Killed at the memory limit during this step (its record, ended by SIGKILL): the job
    /// held its memory where no process owns it (`/tmp`, `/dev/shm`, socket buffers) and the
    /// kernel chose the sandbox's own process. The job's doing, not the runner's.
    InStep(StepResult),
    /// Killed at the memory limit between steps, each of which had succeeded: what they left
    /// kept the job at its limit. A failure: not every step ran. `next` is the step that did
    /// not start (none when the last had ended).
    BetweenSteps { next: Option<String> },
    /// Killed at the memory limit after a step had failed: that failure stands.
    AfterFailure,
}

/// Whether the job's cgroup counted an OOM kill since the sandbox was ready or the last step
/// ended (a kill an earlier step survived is not what ended it), where it can tell, at its
/// own limit since then too (v2: not the host's OOM killer; v1 cannot tell, and the host's
/// picks the job's processes, scored higher, first), and the runner did not kill the sandbox
/// itself.
fn killed_at_limit(counters: &cgroup::Counters, reported: &Reported) -> bool {
    let (kills_before, limit_ooms_before) = reported
        .oom_before_step
        .values()
        .next_back()
        .copied()
        .unwrap_or_default();
    !reported.backstop
        && counters
            .memory_limit_ooms
            .is_none_or(|n| n > limit_ooms_before)
        && counters.oom_kills > kills_before
}

/// `killed_at_limit`: the job's cgroup reached its memory limit and counted an OOM kill since
/// the sandbox was ready or the last step ended, and the runner did not kill the sandbox
/// itself.
fn unfinished(
    killed_at_limit: bool,
    running: Option<(StepResult, Duration)>,
    any_step_started: bool,
    steps: &[StepResult],
    declared: &[&str],
) -> Unfinished {
    if !killed_at_limit {
        return Unfinished::Unexplained;
    }
    if let Some((step, ran)) = running {
        return Unfinished::InStep(StepResult {
            // Init's death ended every process in the sandbox with SIGKILL.
            signal: Some(nix::sys::signal::Signal::SIGKILL as i32),
            exit_code: None,
            duration_ms: ran.as_millis().try_into().unwrap_or(u64::MAX),
            ..step
        });
    }
    if !any_step_started {
        return Unfinished::NotStarted;
    }
    if steps.iter().any(|s| s.exit_code != Some(0)) {
        return Unfinished::AfterFailure;
    }
    let next = declared
        .iter()
        .find(|d| !steps.iter().any(|s| s.name == **d))
        .map(|d| (*d).to_owned());
    Unfinished::BetweenSteps { next }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bulwark_sandbox::probe::{HostLayers, Layer};

    fn step(name: &str, exit_code: Option<i32>) -> StepResult {
        StepResult {
            name: name.into(),
            exit_code,
            signal: None,
            duration_ms: 5,
            timed_out: false,
            limit: None,
            credentials: vec!["aws".into()],
        }
    }

    /// A sandbox that ended without reporting completion is the runner's failure unless an
    /// OOM kill at the job's memory limit explains it; then it is the job's, and never a
    /// success.
    #[test]
    fn only_an_oom_kill_at_the_limit_since_the_last_step_boundary_counts() {
        let counters = |oom_kills, memory_limit_ooms| cgroup::Counters {
            oom_kills,
            memory_limit_ooms,
            ..Default::default()
        };
        let since = |kills, limit_ooms| Reported {
            oom_before_step: [(0, (kills, limit_ooms))].into(),
            ..Default::default()
        };
        for limit_ooms in [Some(1), None] {
            assert!(killed_at_limit(&counters(1, limit_ooms), &since(0, 0)));
            assert!(killed_at_limit(&counters(3, limit_ooms), &since(2, 0)));
            // Nothing new since the last step ended: an earlier step survived that kill.
            assert!(!killed_at_limit(&counters(2, limit_ooms), &since(2, 0)));
        }
        // Not the cgroup's own limit (v2 tells): the host's OOM killer; also when the limit
        // was reached before the last boundary, in a step that survived it.
        assert!(!killed_at_limit(&counters(1, Some(0)), &since(0, 0)));
        // (The last boundary's counts are what count: step 1's here.)
        let limit_reached_before = Reported {
            oom_before_step: [(0, (0, 0)), (1, (1, 1))].into(),
            ..Default::default()
        };
        assert!(!killed_at_limit(
            &counters(2, Some(1)),
            &limit_reached_before
        ));
        assert!(killed_at_limit(
            &counters(2, Some(2)),
            &limit_reached_before
        ));
        // The runner's own backstop killed the sandbox.
        let backstop = Reported {
            backstop: true,
            ..Default::default()
        };
        assert!(!killed_at_limit(&counters(1, None), &backstop));
    }

    #[test]
    fn a_sandbox_killed_at_the_memory_limit_is_the_jobs_failure_not_the_runners() {
        let declared = ["fetch", "build", "test"];
        let ok = step("fetch", Some(0));
        let running = || Some((step("build", None), Duration::from_millis(1500)));
        assert_eq!(
            unfinished(false, running(), true, std::slice::from_ref(&ok), &declared),
            Unfinished::Unexplained
        );
        assert_eq!(
            unfinished(false, None, false, &[], &declared),
            Unfinished::Unexplained
        );
        // During a step: its record, ended by SIGKILL, keeping what it was known by.
        let Unfinished::InStep(killed) =
            unfinished(true, running(), true, std::slice::from_ref(&ok), &declared)
        else {
            panic!("not in a step");
        };
        assert_eq!(
            killed,
            StepResult {
                signal: Some(9),
                duration_ms: 1500,
                ..step("build", None)
            }
        );
        assert_eq!(
            unfinished(true, None, false, &[], &declared),
            Unfinished::NotStarted
        );
        // Between steps that succeeded: the next one did not start.
        assert_eq!(
            unfinished(true, None, true, std::slice::from_ref(&ok), &declared),
            Unfinished::BetweenSteps {
                next: Some("build".into())
            }
        );
        let all: Vec<StepResult> = declared.iter().map(|d| step(d, Some(0))).collect();
        assert_eq!(
            unfinished(true, None, true, &all, &declared),
            Unfinished::BetweenSteps { next: None }
        );
        // After a failed step, that failure stands.
        assert_eq!(
            unfinished(true, None, true, &[ok, step("build", Some(137))], &declared),
            Unfinished::AfterFailure
        );
    }

    fn host(missing: &str, cgroups: bool) -> HostLayers {
        let layers = ["user-namespaces", "landlock", "seccomp", "cgroups"]
            .into_iter()
            .map(|name| Layer {
                name,
                available: name != missing,
                detail: format!("{name} detail"),
            })
            .collect();
        HostLayers {
            layers,
            landlock_abi: 7,
            cgroups: Default::default(),
            cgroup_version: cgroups.then_some(bulwark_sandbox::cgroup::Version::V1),
        }
    }

    #[test]
    fn a_missing_layer_refuses_the_job_naming_it() {
        for layer in ["user-namespaces", "landlock", "seccomp"] {
            let e = check_required_layers(&host(layer, true), true, None).unwrap_err();
            assert!(
                e.starts_with(&format!("this host cannot enforce {layer}: {layer} detail")),
                "{e}"
            );
        }
        assert!(check_required_layers(&host("none", true), false, None).is_ok());
    }

    fn args_for(dir: &Path, job: &str) -> RunArgs {
        let config = dir.join("config.toml");
        std::fs::write(&config, "").unwrap();
        RunArgs {
            job: dir.join(job),
            source: None,
            out: None,
            key: None,
            trust: Trust::Untrusted,
            config: Some(config),
            quiet: true,
            credentials: None,
            credential_updates: None,
        }
    }

    #[test]
    fn a_job_spec_that_is_a_symlink_to_a_host_file_is_refused_without_quoting_it() {
        let dir = crate::tools::testutil::TempDir::new("spec-link");
        // A file only its owner may read, shaped so that a TOML syntax error quotes it.
        let secret = dir.path().join("shadow");
        std::fs::write(
            &secret,
            "root:$y$j9T$SECRETSALT$SECRETHASH:19000:0:99999:7:::\n",
        )
        .unwrap();
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        std::os::unix::fs::symlink(&secret, dir.path().join("job.toml")).unwrap();
        let e = load_and_validate(&args_for(dir.path(), "job.toml")).unwrap_err();
        assert!(
            !e.contains("SECRET"),
            "the host file was read and quoted: {e}"
        );
        assert!(e.contains("refused: it is a symlink"), "{e}");
    }

    #[test]
    fn a_job_spec_that_is_a_fifo_or_too_large_is_refused_without_hanging() {
        let dir = crate::tools::testutil::TempDir::new("spec-kind");
        nix::unistd::mkfifo(
            &dir.path().join("fifo.toml"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        // Without O_NONBLOCK the open itself would wait for a writer: a watchdog fails the
        // test instead of hanging it.
        let (tx, rx) = std::sync::mpsc::channel();
        let args = args_for(dir.path(), "fifo.toml");
        std::thread::spawn(move || {
            let _ = tx.send(load_and_validate(&args).map(|_| ()));
        });
        let e = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("reading a fifo job spec hung")
            .unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        // Larger than the bound: refused by its size, not read into memory.
        let big = std::fs::File::create(dir.path().join("big.toml")).unwrap();
        big.set_len(MAX_SPEC_BYTES + 1).unwrap();
        let e = load_and_validate(&args_for(dir.path(), "big.toml")).unwrap_err();
        assert!(e.contains("larger than"), "{e}");
        // A spec of ordinary size still loads.
        std::fs::write(
            dir.path().join("ok.toml"),
            "version = 1\nname = \"ok\"\n[[steps]]\nname = \"s\"\nrun = \"true\"\n",
        )
        .unwrap();
        load_and_validate(&args_for(dir.path(), "ok.toml")).unwrap();
    }

    #[test]
    fn a_damaged_default_key_refuses_the_job_before_it_runs() {
        let dir = crate::tools::testutil::TempDir::new("spec-key");
        let state = dir.path().join("state");
        let args = args_for(dir.path(), "job.toml");
        std::fs::write(
            args.config.as_ref().unwrap(),
            format!("[paths]\nstate_dir = {:?}\n", state.display().to_string()),
        )
        .unwrap();
        std::fs::write(
            &args.job,
            "version = 1\nname = \"ok\"\n[[steps]]\nname = \"s\"\nrun = \"true\"\n",
        )
        .unwrap();
        // No default key yet: nothing to check (it is made at signing).
        load_and_validate(&args).unwrap();
        // An empty key file, as a run that died while writing the key used to leave.
        std::fs::create_dir_all(state.join("keys")).unwrap();
        let key = state.join("keys/signing.key");
        std::fs::write(&key, "").unwrap();
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let e = load_and_validate(&args).unwrap_err();
        assert!(e.starts_with("the default signing key: signing key"), "{e}");
    }

    fn job_run<'a>(
        args: &'a RunArgs,
        config: &'a Config,
        job: &'a ValidatedJob,
        spec_dir: OwnedFd,
    ) -> JobRun<'a> {
        JobRun::new(
            args,
            config,
            job,
            PathBuf::from("/nonexistent"),
            now_rfc3339(),
            spec_dir,
        )
    }

    #[test]
    fn a_job_directory_swapped_for_a_symlink_after_the_spec_was_read_cannot_move_the_source() {
        let dir = crate::tools::testutil::TempDir::new("source-swap");
        let ci = dir.path().join("ci");
        std::fs::create_dir_all(ci.join("src")).unwrap();
        std::fs::write(ci.join("src/README"), "inside\n").unwrap();
        // Where the swap leads: a directory of the same shape elsewhere on the host.
        let host = dir.path().join("host");
        std::fs::create_dir_all(host.join("src")).unwrap();
        std::fs::write(host.join("src/secret"), "host-secret\n").unwrap();
        std::fs::write(
            ci.join("job.toml"),
            "version = 1\nname = \"swap\"\n[source]\npath = \"src\"\n\
             [[steps]]\nname = \"s\"\nrun = \"true\"\n",
        )
        .unwrap();
        let args = args_for(&ci, "job.toml");
        let (loaded, job, _, spec_dir) = load_and_validate(&args).unwrap();
        // Once the spec is read, whoever may rename in the directory above the job file
        // (the user a CI checks pull requests out as) swaps the job file's directory.
        let real = dir.path().join("ci-real");
        std::fs::rename(&ci, &real).unwrap();
        std::os::unix::fs::symlink(&host, &ci).unwrap();
        let runner = job_run(&args, &loaded.config, &job, spec_dir);
        let src = runner.source_dir().unwrap().expect("a source directory");
        assert_eq!(src.path, std::fs::canonicalize(real.join("src")).unwrap());
        let ws = dir.path().join("ws");
        std::fs::create_dir(&ws).unwrap();
        src.copy_into(&ws, Default::default(), None).unwrap();
        assert!(
            ws.join("README").exists(),
            "the checked directory was not copied"
        );
        assert!(
            !ws.join("secret").exists(),
            "the swapped-in directory was copied"
        );
    }

    #[test]
    fn two_runs_given_the_same_output_directory_at_once_never_share_it() {
        let dir = crate::tools::testutil::TempDir::new("out-claim");
        let started = "2026-01-01T00:00:00Z";
        // Absent: both find it so; the one that comes second must not write into it.
        let absent = dir.path().join("absent");
        let first = prepare_out_dir(Some(&absent), "job", started).unwrap();
        let second = prepare_out_dir(Some(&absent), "job", started);
        assert!(second.is_err(), "two runs share {}", first.display());
        // Empty: likewise.
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        prepare_out_dir(Some(&empty), "job", started).unwrap();
        let e = prepare_out_dir(Some(&empty), "job", started).unwrap_err();
        assert!(e.contains("--out"), "{e}");
    }

    #[test]
    fn a_job_with_the_longest_name_the_spec_allows_still_gets_its_egress_proxy() {
        let dir = crate::tools::testutil::TempDir::new("egress-name");
        let name = "n".repeat(63);
        let args = args_for(dir.path(), "job.toml");
        std::fs::write(
            args.config.as_ref().unwrap(),
            format!(
                "[paths]\nstate_dir = {:?}\nruntime_dir = {:?}\n",
                dir.path().join("state").display().to_string(),
                dir.path().join("run").display().to_string()
            ),
        )
        .unwrap();
        std::fs::write(
            &args.job,
            format!(
                "version = 1\nname = \"{name}\"\n[network]\nallow = [\"example.com:443\"]\n\
                 [[steps]]\nname = \"s\"\nrun = \"true\"\n"
            ),
        )
        .unwrap();
        let (loaded, job, _, spec_dir) = load_and_validate(&args).unwrap();
        let dirs = Dirs::resolve(&loaded.config).unwrap();
        dirs.create().unwrap();
        let mut runner = job_run(&args, &loaded.config, &job, spec_dir);
        runner.out = dir.path().join("out");
        std::fs::create_dir(&runner.out).unwrap();
        let jobdir = workspace::create(&dirs, &name, &runner.started, None).unwrap();
        let socket = dirs
            .runtime
            .join("jobs")
            .join(&jobdir.id)
            .join("egress.sock");
        assert!(
            socket.as_os_str().len() > 107,
            "the path fits anyway: {}",
            socket.display()
        );
        let egress = runner
            .start_egress(&jobdir, None)
            .unwrap_or_else(|e| panic!("{e:?}"))
            .expect("a proxy for a job with network");
        // The proxy listens at the socket's real place (a client connects there through a
        // descriptor of its directory, as the job's init does).
        let socket_dir = std::fs::File::open(&egress.dir).unwrap();
        let via = format!(
            "/proc/self/fd/{}/egress.sock",
            std::os::fd::AsRawFd::as_raw_fd(&socket_dir)
        );
        std::os::unix::net::UnixStream::connect(&via).expect("the proxy accepts");
        let (sock_dir, summary) = egress.shutdown();
        summary.unwrap();
        assert!(
            !sock_dir.join("egress.sock").exists(),
            "the socket outlived the proxy"
        );
        jobdir.remove().unwrap();
    }

    #[test]
    fn an_output_directory_another_user_could_swap_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = crate::tools::testutil::TempDir::new("out-owner");
        let started = "2026-01-01T00:00:00Z";
        // A directory anyone may write in, without the sticky bit: anyone can rename `out`.
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = prepare_out_dir(Some(&shared.join("out")), "job", started).unwrap_err();
        assert!(e.contains("refused") && e.contains("shared"), "{e}");
        // With the sticky bit (as /tmp), only an entry's owner may rename it: accepted.
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        prepare_out_dir(Some(&shared.join("sticky-out")), "job", started).unwrap();
        // An (empty) output directory that belongs to someone else.
        if nix::unistd::geteuid().is_root() {
            let theirs = dir.path().join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(4_000_000_000), None).unwrap();
            let e = prepare_out_dir(Some(&theirs), "job", started).unwrap_err();
            assert!(e.contains("belongs to uid 4000000000"), "{e}");
        } else {
            eprintln!("SKIP part: chown to another uid needs root");
        }
        // This user's own directory on a path only it and root can change: accepted.
        prepare_out_dir(Some(&dir.path().join("mine")), "job", started).unwrap();
    }

    #[test]
    fn a_reason_naming_a_job_chosen_file_reaches_the_terminal_without_its_controls() {
        // An output the job named to set the terminal's title and forge a runner line.
        let reason = "output dist/\u{1b}]0;owned\u{7}x\nbulwark: job release succeeded: refused: \
                      it is a symlink, only regular files are accepted";
        let shown = visible_line(reason);
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(
            shown.contains("\\u{1b}]0;owned\\u{7}x\\nbulwark:"),
            "{shown}"
        );
        assert_eq!(visible_line("plain reason"), "plain reason");
        // A name that reads backwards past a right-to-left override, or hides a zero-width
        // space: the marks are shown, not obeyed.
        let reason = "output dist/app\u{202e}zg.rat.exe\u{200b}: refused: it is a fifo";
        assert_eq!(
            visible_line(reason),
            "output dist/app\\u{202e}zg.rat.exe\\u{200b}: refused: it is a fifo"
        );
    }

    #[test]
    fn missing_cgroups_refuse_unless_the_rlimit_fallback_is_allowed() {
        let e = check_required_layers(&host("cgroups", false), false, None).unwrap_err();
        assert!(e.contains("cannot enforce cgroups: cgroups detail"), "{e}");
        assert!(check_required_layers(&host("cgroups", false), true, None).is_ok());
    }

    #[test]
    fn a_cpu_limit_refuses_the_job_where_no_cpu_controller_can_enforce_it() {
        // No cgroups: the rlimit fallback does not stand in for a CPU limit.
        let e = check_required_layers(&host("cgroups", false), true, Some(1500)).unwrap_err();
        assert!(
            e.starts_with("this host cannot enforce the job's CPU limit of 1.5 (resources.cpus")
                && e.contains("rlimits cannot replace here: cgroups detail"),
            "{e}"
        );
        // cgroups, but no cpu controller on the version in use.
        let v1 = |controllers: &[&str]| -> Vec<(String, PathBuf)> {
            controllers
                .iter()
                .map(|c| (c.to_string(), PathBuf::from(format!("/sys/fs/cgroup/{c}"))))
                .collect()
        };
        let mut without_cpu = host("none", true);
        without_cpu.cgroups.v1 = v1(&["memory", "pids", "freezer"]);
        let e = check_required_layers(&without_cpu, false, Some(2000)).unwrap_err();
        assert!(
            e.contains("CPU limit of 2 ")
                && e.contains("this host mounts no cgroup v1 cpu hierarchy"),
            "{e}"
        );
        let mut with_cpu = host("none", true);
        with_cpu.cgroups.v1 = v1(&["memory", "pids", "freezer", "cpu"]);
        assert!(check_required_layers(&with_cpu, false, Some(2000)).is_ok());
    }
}
