//! `bulwark probe`: which isolation layers this host can enforce, and what is missing.
//!
//! Reading sysctls is not proof (an LSM can still refuse a user namespace), so after listing
//! the layers the probe starts a real trial sandbox running `/bin/true` with every layer on.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use bulwark_sandbox::spec::{Event, Rlimits, SandboxSpec, StepSpec};
use bulwark_sandbox::subid::HandTo;

use crate::job::JOB_PATH;

/// Runs the probe, prints the report, returns 0 (full isolation) or 1 (degraded).
pub fn run(
    json: bool,
    config: &bulwark_protocol::Config,
    config_path: Option<&std::path::Path>,
    config_note: Option<String>,
) -> u8 {
    let allow_rlimit_fallback = config.limits.allow_rlimit_fallback;
    let host = bulwark_sandbox::probe::host_layers(true);
    let root = crate::config::is_root();
    let mode = crate::job::isolation_mode(config.limits.isolation, root);
    // Subuid mode: whether this user can hand jobs subordinate ids. Reported when configured,
    // and as a hint to a rootless runner that is not using it.
    let subuid = (!root).then(|| crate::subuid::setup(config.limits.job_uids));
    let trial = match (&mode, &subuid) {
        (Err(e), _) => Err(e.clone()),
        (Ok(bulwark_protocol::IsolationMode::Subuid), Some(Err(e))) => {
            Err(format!("subuid mode: {e}"))
        }
        (Ok(m), s) => trial_sandbox(
            config,
            s.as_ref()
                .and_then(|s| s.as_ref().ok())
                .filter(|_| *m == bulwark_protocol::IsolationMode::Subuid),
        ),
    };
    let mode_name = match &mode {
        Ok(m) => m.as_str().to_string(),
        Err(e) => format!("none ({e})"),
    };
    let subuid_line = subuid.as_ref().map(|s| match s {
        Ok(s) => (
            true,
            format!(
                "uids {} of {}'s subordinate ranges, {} and {}",
                s.range,
                s.user,
                s.tools.newuidmap.display(),
                s.tools.newgidmap.display()
            ),
        ),
        Err(e) => (false, e.clone()),
    });
    // Job disks: optional, unless the operator gave every job one (limits.max_disk), which
    // a host that cannot make them would refuse every job for.
    let job_disks = bulwark_sandbox::disk::check_available();
    let disks_needed = config.limits.max_disk.is_some();
    let full = host.layers.iter().all(|l| l.available)
        && trial.is_ok()
        && (job_disks.is_ok() || !disks_needed);
    // Not an isolation layer, but a reason jobs would fail in a way that looks like one.
    let dirs = crate::config::Dirs::resolve(config).ok();
    let noexec = dirs.as_ref().and_then(|d| d.state_noexec());
    // `bulwark run` makes the state directory: say now if it could not, and what to change.
    let creatable = dirs.as_ref().map(|d| {
        d.state_creatable().map_err(|e| {
            format!(
                "{e}; {}",
                crate::config::state_dir_advice(config, config_path)
            )
        })
    });
    let disk = dirs
        .as_ref()
        .and_then(|d| disk_line(d, config.limits.min_free_disk));
    let settings = host_settings(config, host.cgroup_version.is_some());
    if json {
        let layers: Vec<_> = host
            .layers
            .iter()
            .map(|l| serde_json::json!({ "layer": l.name, "available": l.available, "detail": l.detail }))
            .collect();
        let v = serde_json::json!({
            "isolation_mode": mode_name,
            "subuid": subuid_line.as_ref().map(|(ok, d)| serde_json::json!({"available": ok, "detail": d})),
            "layers": layers,
            "trial_sandbox": match &trial { Ok(()) => serde_json::json!({"ok": true}), Err(e) => serde_json::json!({"ok": false, "error": e}) },
            "full_isolation": full,
            "state_dir_noexec": noexec,
            "state_dir": creatable.as_ref().map(|c| match c {
                Ok(()) => serde_json::json!({"ok": true}),
                Err(e) => serde_json::json!({"ok": false, "detail": e}),
            }),
            "disk": disk.as_ref().map(|(ok, d)| serde_json::json!({"ok": ok, "detail": d})),
            "job_disks": match &job_disks { Ok(()) => serde_json::json!({"available": true}), Err(e) => serde_json::json!({"available": false, "detail": e, "needed": disks_needed}) },
            "host_settings": settings.iter().map(|(name, ok, detail)| serde_json::json!({"setting": name, "ok": ok, "detail": detail})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        println!("isolation mode: {mode_name}");
        for l in &host.layers {
            println!(
                "{:<16} {:<9} {}",
                l.name,
                if l.available { "ok" } else { "MISSING" },
                l.detail
            );
        }
        if let Some((ok, detail)) = &subuid_line {
            let used = matches!(mode, Ok(bulwark_protocol::IsolationMode::Subuid));
            let state = match (ok, used) {
                (true, true) => "ok",
                (true, false) => "unused",
                (false, true) => "MISSING",
                (false, false) => "no",
            };
            let hint = if *ok && !used {
                " (limits.isolation = \"subuid\" gives every job its own uid)"
            } else {
                ""
            };
            println!("{:<16} {:<9} {detail}{hint}", "subuid", state);
        }
        match &trial {
            Ok(()) => println!(
                "{:<16} {:<9} /bin/true ran with every layer on",
                "trial-sandbox", "ok"
            ),
            Err(e) => println!("{:<16} {:<9} {e}", "trial-sandbox", "FAILED"),
        }
        match (&dirs, noexec, &creatable) {
            (_, _, Some(Err(e))) => println!("{:<16} {:<9} {e}", "state-dir", "WARNING"),
            (Some(d), Some(true), _) => {
                println!(
                    "{:<16} {:<9} {}",
                    "state-dir",
                    "WARNING",
                    d.noexec_warning()
                )
            }
            (Some(d), Some(false), _) => println!(
                "{:<16} {:<9} {}: jobs can run what they build",
                "state-dir",
                "ok",
                d.state.display()
            ),
            _ => {}
        }
        if let Some((ok, detail)) = &disk {
            let state = if *ok { "ok" } else { "WARNING" };
            println!("{:<16} {:<9} {detail}", "disk", state);
        }
        let (state, detail) = match (&job_disks, disks_needed) {
            (Ok(()), _) => (
                "ok",
                "resources.disk / limits.max_disk: a filesystem of fixed size per job".to_string(),
            ),
            (Err(e), true) => ("MISSING", format!("{e} (limits.max_disk is set)")),
            (Err(e), false) => ("no", e.clone()),
        };
        println!("{:<16} {:<9} {detail}", "job-disks", state);
        for (name, ok, detail) in &settings {
            println!(
                "{:<16} {:<9} {detail}",
                name,
                if *ok { "ok" } else { "WARNING" }
            );
        }
        if let Some(note) = config_note {
            println!("{note}");
        }
        if host.cgroup_version.is_none() {
            println!(
                "note: without cgroups `bulwark run` refuses jobs unless limits.allow_rlimit_fallback = true (currently {allow_rlimit_fallback})"
            );
        }
        println!(
            "{}",
            if full {
                "full isolation"
            } else {
                "degraded: see MISSING/FAILED above"
            }
        );
    }
    if full {
        0
    } else {
        1
    }
}

/// Host settings that no layer of the sandbox can make safe, and that the operator can
/// (docs/threat-model.md, "rlimits"): `(name, ok, detail)` each. Warnings, not missing layers:
/// they do not make `probe` report degraded isolation.
fn host_settings(
    config: &bulwark_protocol::Config,
    memory_charged: bool,
) -> Vec<(&'static str, bool, String)> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let mut out = Vec::new();
    if let Some(pattern) = read("/proc/sys/kernel/core_pattern") {
        out.push(core_dumps(pattern.trim()));
    }
    if let Some(max) = read("/proc/sys/fs/file-max").and_then(|m| m.trim().parse::<u64>().ok()) {
        out.push(open_files(
            max,
            config.limits.max_pids,
            memory_charged.then_some(config.limits.max_memory),
            config.daemon.slots as u64,
            open_file_kernel_bytes(),
        ));
    }
    out
}

/// `kernel.core_pattern`: a pipe runs a host program as root for every crash in a job,
/// whatever the job's `RLIMIT_CORE` (which the job may lower to 0, the value that pipes ignore).
fn core_dumps(pattern: &str) -> (&'static str, bool, String) {
    match pattern.strip_prefix('|') {
        Some(program) => (
            "core-dumps",
            false,
            format!(
                "kernel.core_pattern pipes every crash to {}, which runs as root on the host and reads the crashing job process's memory whatever its RLIMIT_CORE; set kernel.core_pattern=core on build hosts",
                program.split_whitespace().next().unwrap_or("a program")
            ),
        ),
        None => (
            "core-dumps",
            true,
            "written to files, which RLIMIT_CORE 0 stops in jobs".into(),
        ),
    }
}

/// Kernel memory one open file takes at least (its `struct file`, from the `filp` slab cache
/// charged to the memory cgroup of the process that opens it): what bounds the files a job
/// with a memory limit can hold open, long before `limits.max_pids` × its descriptor limit
/// does. Read from `/sys/kernel/slab/filp/object_size` where the kernel shows it; otherwise
/// the smallest it has been (184 bytes since Linux 6.12; 232 or 256 before), so that the
/// count errs on the side of more files.
const OPEN_FILE_KERNEL_BYTES: u64 = 184;

/// [`OPEN_FILE_KERNEL_BYTES`], as this kernel has it when it says (never less than 64: a
/// value that small is not a `struct file`).
fn open_file_kernel_bytes() -> u64 {
    std::fs::read_to_string("/sys/kernel/slab/filp/object_size")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|&n| n >= 64)
        .unwrap_or(OPEN_FILE_KERNEL_BYTES)
}

/// `fs.file-max` against what jobs can hold open: one count for the whole host, while
/// descriptors are bounded per process only. Each job holds at most `max_pids` × its
/// descriptor limit, and, where its memory is a cgroup's (`max_memory`: `Some`), no more
/// than its memory limit pays for; `slots` jobs run at once.
fn open_files(
    file_max: u64,
    max_pids: u64,
    max_memory: Option<u64>,
    slots: u64,
    file_bytes: u64,
) -> (&'static str, bool, String) {
    let nofile = bulwark_sandbox::spec::JOB_NOFILE;
    let slots = slots.max(1);
    let by_pids = max_pids.saturating_mul(nofile);
    let per_job = max_memory.map_or(by_pids, |m| by_pids.min(m / file_bytes.max(1)));
    let jobs_can_hold = per_job.saturating_mul(slots);
    let why = match max_memory {
        Some(m) if per_job < by_pids => format!(
            "{slots} slot(s) × limits.max_memory {m} bytes / {file_bytes} bytes of kernel memory per open file, charged to the job's cgroup"
        ),
        _ => format!("{slots} slot(s) × limits.max_pids {max_pids} × {nofile} descriptors"),
    };
    if file_max >= jobs_can_hold {
        (
            "open-files",
            true,
            format!(
                "fs.file-max {file_max}, above what jobs can hold open ({jobs_can_hold}: {why})"
            ),
        )
    } else {
        (
            "open-files",
            false,
            format!(
                "fs.file-max {file_max} is below what jobs can hold open ({jobs_can_hold}: {why}): a job can leave every unprivileged process on the host with ENFILE; raise it (`sysctl -w fs.file-max=9223372036854775807`, what systemd sets at boot, and in /etc/sysctl.d to keep it), or lower limits.max_memory and limits.max_pids"
            ),
        )
    }
}

/// The disk reserve on the filesystem of the job directories (`<state>/jobs`, or the nearest
/// directory above it that exists): whether jobs would start, and why not. `None` when the
/// reserve is off.
fn disk_line(
    dirs: &crate::config::Dirs,
    setting: bulwark_protocol::DiskReserve,
) -> Option<(bool, String)> {
    let jobs = dirs.jobs();
    let dir = jobs.ancestors().find(|d| d.is_dir())?;
    let reserve = crate::disk_reserve::Reserve::new(dir, setting)?;
    let space = match reserve.space() {
        Ok(space) => space,
        Err(e) => return Some((false, e.to_string())),
    };
    Some(match reserve.judge(&space, 0) {
        Ok(()) => (
            true,
            format!(
                "{}: {} available, limits.min_free_disk = {setting} ({}) stays free",
                dir.display(),
                crate::disk_reserve::human(space.available),
                crate::disk_reserve::human(space.need)
            ),
        ),
        Err(e) => (false, format!("{e}: jobs are refused until there is more")),
    })
}

/// Starts a sandbox running `/bin/true` and checks that it reports every layer enforced. As
/// root it leases a job uid, so the trial takes the same uid switch as `bulwark run`; in
/// subuid mode (`subuid` given) likewise a subordinate uid, mapped by newuidmap.
fn trial_sandbox(
    config: &bulwark_protocol::Config,
    subuid: Option<&crate::subuid::Setup>,
) -> Result<(), String> {
    let lease = if crate::config::is_root() || subuid.is_some() {
        let dirs = crate::config::Dirs::resolve(config).map_err(|e| format!("{e:#}"))?;
        dirs.create().map_err(|e| format!("{e:#}"))?;
        Some(
            match subuid {
                Some(s) => crate::uids::lease_subordinate(&s.range, &s.user, s.uid),
                None => crate::uids::lease(&config.limits.root_job_uids()),
            }
            .map_err(|e| format!("{e:#}"))?,
        )
    } else {
        None
    };
    let subids = subuid.zip(lease.as_ref()).map(|(s, l)| s.map_for(l.uid));
    let base = std::env::temp_dir().join(format!(
        "bulwark-probe-{}-{}",
        std::process::id(),
        crate::fsutil::random_hex(4)
    ));
    let ws = base.join("workspace");
    let tmp = base.join("tmp");
    std::fs::create_dir_all(&ws)
        .and_then(|_| std::fs::create_dir_all(&tmp))
        .map_err(|e| format!("creating {}: {e}", base.display()))?;
    let helper = crate::helper_process::HelperBinary::open()?;
    if let Some(ids) = &subids {
        let paths = crate::subuid::job_trees(&ws, &tmp);
        let handed = crate::subuid::hand_over(&helper, ids, HandTo::Job, &paths);
        if let Err(e) = handed {
            let _ = crate::subuid::hand_over(&helper, ids, HandTo::Runner, &paths);
            let _ = crate::fsutil::remove_tree(&base);
            return Err(format!(
                "handing the trial's directories to uid {}: {e}",
                ids.uid
            ));
        }
    } else if let Some(l) = &lease {
        for d in [&ws, &tmp] {
            std::os::unix::fs::lchown(d, Some(l.uid), Some(l.uid))
                .map_err(|e| format!("chown {}: {e}", d.display()))?;
        }
    }
    let spec = SandboxSpec {
        hostname: "bulwark-probe".into(),
        steps: vec![StepSpec {
            name: "probe".into(),
            argv: vec!["/bin/true".into()],
            env: vec![("PATH".into(), JOB_PATH.into())],
            timeout_ms: Some(10_000),
            credentials: Vec::new(),
        }],
        job_timeout_ms: 10_000,
        kill_grace_ms: 1_000,
        rlimits: Rlimits {
            nofile: 1024,
            core: 0,
            nproc: None,
            address_space: None,
        },
        subids: subids.clone(),
        ..crate::job::base_spec(
            "probe",
            ws.clone(),
            tmp.clone(),
            lease
                .as_ref()
                .filter(|_| subids.is_none())
                .map(|l| (l.uid, l.uid)),
        )
    };
    let mut result = run_trial(&helper, &spec);
    // As `bulwark run` does: what cannot be handed back stays (and is reported), and the
    // lease then ends unclean, so the uid is checked before it is handed out again.
    let mut clean = true;
    if let Some(ids) = &subids {
        let back = crate::subuid::hand_over(
            &helper,
            ids,
            HandTo::Runner,
            &crate::subuid::job_trees(&ws, &tmp),
        );
        if let Err(e) = back {
            clean = false;
            let e = format!(
                "handing the trial's directories in {} back from uid {}: {e}",
                base.display(),
                ids.uid
            );
            result = match result {
                Ok(()) => Err(e),
                Err(first) => Err(format!("{first}; then {e}")),
            };
        }
    }
    if clean {
        let _ = crate::fsutil::remove_tree(&base);
    }
    if let Some(l) = lease {
        if clean {
            l.release_clean();
        }
    }
    result
}

fn run_trial(
    helper: &crate::helper_process::HelperBinary,
    spec: &SandboxSpec,
) -> Result<(), String> {
    let mut child = helper.spawn(spec, Stdio::null())?;
    let mut enforced = None;
    let mut finished = None;
    let mut failed = None;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            match serde_json::from_str::<Event>(&line) {
                Ok(Event::StepEnforced { enforced: e, .. }) => enforced = Some(e),
                Ok(Event::StepFinished { exit_code, .. }) => finished = exit_code,
                Ok(Event::SetupFailed { stage, message }) => {
                    failed.get_or_insert(format!("{stage}: {message}"));
                }
                _ => {}
            }
        }
    }
    let _ = child.wait();
    if let Some(f) = failed {
        return Err(f);
    }
    match (enforced, finished) {
        (Some(e), Some(0)) if e.no_new_privs && e.capabilities_dropped => Ok(()),
        (e, f) => Err(format!(
            "trial sandbox did not complete (enforced: {e:?}, exit: {f:?})"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::{core_dumps, open_files};

    #[test]
    fn a_piped_core_pattern_is_a_warning_naming_the_program() {
        let (name, ok, detail) = core_dumps("|/usr/lib/systemd/systemd-coredump %P %u %g");
        assert_eq!((name, ok), ("core-dumps", false));
        assert!(
            detail.contains("pipes every crash to /usr/lib/systemd/systemd-coredump,"),
            "{detail}"
        );
        assert!(detail.contains("kernel.core_pattern=core"), "{detail}");
        assert!(core_dumps("core").1);
        assert!(core_dumps("/var/crash/core.%p").1);
    }

    #[test]
    fn open_files_compares_the_host_count_with_what_jobs_can_hold_open() {
        // Without a memory cgroup: 4096 processes × 65536 descriptors × 2 slots.
        let (name, ok, detail) = open_files(2_466_170, 4096, None, 2, 256);
        assert_eq!((name, ok), ("open-files", false));
        assert!(
            detail.contains("(536870912: 2 slot(s) × limits.max_pids 4096"),
            "{detail}"
        );
        assert!(detail.contains("sysctl -w fs.file-max="), "{detail}");
        // With one, what the job's memory pays for: 1 GiB / 256 bytes, far below the
        // descriptors' 268435456.
        let (_, ok, detail) = open_files(8_000_000, 4096, Some(1 << 30), 1, 256);
        assert!(ok, "{detail}");
        assert!(
            detail.contains("(4194304: 1 slot(s) × limits.max_memory"),
            "{detail}"
        );
        assert!(!open_files(4_000_000, 4096, Some(1 << 30), 1, 256).1);
        // The kernel's own size of an open file: 184 bytes (6.12 on) pays for more of them.
        let (_, ok, detail) = open_files(5_000_000, 4096, Some(1 << 30), 1, 184);
        assert!(!ok && detail.contains("(5835553: "), "{detail}");
        // The default ceilings (16 GiB) on a host with the kernel's default fs.file-max for
        // 23 GB of memory: a job can hold 67108864 files open, so this is a real warning.
        assert!(!open_files(2_466_170, 4096, Some(16 << 30), 1, 256).1);
        // systemd's value: never below.
        assert!(open_files(i64::MAX as u64, 4096, None, 256, 256).1);
        // Slots 0 (never configured so) counts as one; nothing overflows.
        assert!(!open_files(100, u64::MAX, Some(u64::MAX), 0, 256).1);
        assert!(!open_files(100, u64::MAX, None, 0, 256).1);
    }
}
