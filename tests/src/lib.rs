//! Shared helpers for Bulwark's integration tests.
//!
//! Every test runs the real `bulwark` binary against a private state directory and
//! configuration in a fresh temporary directory, so tests run in parallel without seeing each
//! other's jobs. Jobs that attack the sandbox run small Python programs (the host's python3 is
//! visible read-only in the sandbox) that make raw system calls and print what they observed;
//! the tests then assert both the errno the job saw and the host state afterwards.
//!
//! Modes: tests under a `root_mode` module need root (per-job uids, cgroups); the rootless pass
//! of `scripts/test.sh` skips them with `--skip root_mode::`, and the root pass skips
//! `rootless_mode::`, so no test is counted as passed where it could not run.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use sha2::{Digest, Sha256};

pub mod control;
pub mod relay;
pub mod rewrite;

/// The `bulwark` binary under test: `$BULWARK_BIN`, or the one next to the test executable's
/// directory (`target/<profile>/bulwark`).
pub fn bulwark_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BULWARK_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let bin = profile_dir.join("bulwark");
    assert!(
        bin.exists(),
        "{} not built: run `cargo build` first (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// The `bulwark-coordinator` binary under test: beside [`bulwark_bin`].
pub fn coordinator_bin() -> PathBuf {
    let bin = bulwark_bin().with_file_name("bulwark-coordinator");
    assert!(
        bin.exists(),
        "{} not built: run `cargo build` first (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// The repository root (for examples and the spec corpus): `$BULWARK_REPO` or the workspace.
pub fn repo_root() -> PathBuf {
    if let Some(p) = std::env::var_os("BULWARK_REPO") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Whether the tests run as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A private directory with a configuration and state of its own.
#[derive(Debug)]
pub struct Env {
    /// The temporary directory.
    pub dir: PathBuf,
    /// `config.toml` in it.
    pub config: PathBuf,
    /// The state directory the configuration names.
    pub state: PathBuf,
    /// A source directory, copied into /workspace by `run`.
    pub src: PathBuf,
    extra_config: String,
    n: std::cell::Cell<u32>,
}

impl Env {
    /// A fresh environment.
    pub fn new(tag: &str) -> Env {
        let dir = std::env::temp_dir().join(format!(
            "bulwark-it-{tag}-{}-{}",
            std::process::id(),
            random_hex(4)
        ));
        fs::create_dir_all(dir.join("src")).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let env = Env {
            config: dir.join("config.toml"),
            state: dir.join("state"),
            src: dir.join("src"),
            dir,
            extra_config: String::new(),
            n: std::cell::Cell::new(0),
        };
        env.write_config("");
        env
    }

    /// Rewrites the configuration with `limits_extra` appended to `[limits]` and `sections`
    /// (whole TOML sections such as `[egress]`) after it.
    pub fn write_config_sections(&self, limits_extra: &str, sections: &str) {
        let fallback = if is_root() {
            ""
        } else {
            "allow_rlimit_fallback = true\n"
        };
        let text = format!(
            "[limits]\nkill_grace = \"1s\"\n{fallback}{limits_extra}\n[paths]\nstate_dir = \"{}\"\nruntime_dir = \"{}\"\n{sections}\n",
            self.state.display(),
            self.dir.join("run").display(),
        );
        fs::write(&self.config, text).unwrap();
    }

    /// Rewrites the configuration with `limits_extra` appended to `[limits]`.
    pub fn write_config(&self, limits_extra: &str) {
        // Rootless: no cgroup is delegated on these hosts, so allow the explicit fallback.
        let fallback = if is_root() {
            ""
        } else {
            "allow_rlimit_fallback = true\n"
        };
        let text = format!(
            "[limits]\nkill_grace = \"1s\"\n{fallback}{limits_extra}\n[paths]\nstate_dir = \"{}\"\nruntime_dir = \"{}\"\n{}",
            self.state.display(),
            self.dir.join("run").display(),
            self.extra_config
        );
        fs::write(&self.config, text).unwrap();
    }

    /// Writes a file into the source directory.
    pub fn write_src(&self, rel: &str, contents: &str) {
        let p = self.src.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, contents).unwrap();
    }

    /// Runs a job spec given as TOML text with `--source src --out <fresh> --config`.
    pub fn run(&self, job: &str) -> Run {
        self.run_with(job, &[])
    }

    /// Like [`Env::run`] with extra arguments.
    pub fn run_with(&self, job: &str, extra: &[&str]) -> Run {
        let (cmd, out) = self.command(job, extra);
        Run::from_output(run_output(cmd), out)
    }

    /// Runs `bulwark run SPEC --config <this config> --out <dir>/<out_name>` with no
    /// `--source`, so the spec's own `[source]` (or none) applies.
    pub fn run_spec(&self, spec: &Path, out_name: &str) -> Run {
        let out = self.dir.join(out_name);
        let mut cmd = Command::new(bulwark_bin());
        cmd.arg("run")
            .arg(spec)
            .arg("--config")
            .arg(&self.config)
            .arg("--out")
            .arg(&out);
        Run::from_output(run_output(cmd), out)
    }

    /// Starts what [`Env::run`] runs in the background, its output captured; the returned
    /// [`Started::finish`] waits for it.
    pub fn start(&self, job: &str) -> Started {
        let (mut cmd, out) = self.command(job, &[]);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Started { child, out }
    }

    /// The command `run` would execute, and the output directory it uses.
    pub fn command(&self, job: &str, extra: &[&str]) -> (Command, PathBuf) {
        let n = self.n.get() + 1;
        self.n.set(n);
        let spec = self.dir.join(format!("job{n}.toml"));
        fs::write(&spec, job).unwrap();
        let out = self.dir.join(format!("out{n}"));
        let mut cmd = Command::new(bulwark_bin());
        cmd.arg("run")
            .arg(&spec)
            .arg("--source")
            .arg(&self.src)
            .arg("--out")
            .arg(&out)
            .arg("--config")
            .arg(&self.config)
            .args(extra);
        (cmd, out)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if std::env::var_os("BULWARK_KEEP_TEST_DIRS").is_none() {
            // A test that failed with a run still going (or killed) may leave a job disk
            // mounted in its directory: detached first, so that the removal does not walk
            // into it and no mount or loop device outlives the test.
            let dir = self.dir.to_string_lossy().into_owned();
            let mounts: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
                .filter(|m| m.starts_with(&format!("{dir}/")))
                .collect();
            for m in mounts.iter().rev() {
                let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
            }
            let _ = remove_tree(&self.dir);
        }
    }
}

/// The workspace's one guard for test directories (`bulwark-<tag>-<pid>-<random>`, removed on
/// drop also when a test fails; kept with `BULWARK_KEEP_TEST_DIRS`).
pub use bulwark_sandbox::testutil::TempDir;

fn run_output(mut cmd: Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap()
}

/// A `bulwark run` started by [`Env::start`].
#[derive(Debug)]
pub struct Started {
    child: std::process::Child,
    out: PathBuf,
}

impl Started {
    /// The pid of its `bulwark run`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for it and says what it did.
    pub fn finish(self) -> Run {
        Run::from_output(self.child.wait_with_output().unwrap(), self.out)
    }
}

/// What a `bulwark run` did.
#[derive(Debug)]
pub struct Run {
    /// Exit status.
    pub code: i32,
    /// The job's log as echoed to stdout.
    pub stdout: String,
    /// The runner's own messages.
    pub stderr: String,
    /// The output directory.
    pub out: PathBuf,
    /// Parsed result.json, if written.
    pub result: Option<serde_json::Value>,
    /// job.log, if written.
    pub log: String,
}

impl Run {
    /// Collects a finished run.
    pub fn from_output(o: Output, out: PathBuf) -> Run {
        let result = fs::read_to_string(out.join("result.json"))
            .ok()
            .map(|s| serde_json::from_str(&s).unwrap());
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            log: fs::read_to_string(out.join("job.log")).unwrap_or_default(),
            out,
            result,
        }
    }

    /// result.json (panics with the runner's output if absent).
    pub fn result(&self) -> &serde_json::Value {
        self.result
            .as_ref()
            .unwrap_or_else(|| panic!("no result.json\n{self}"))
    }

    /// Asserts the exit status, showing everything on failure.
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "unexpected exit status\n{self}");
        self
    }

    /// The value printed by the job on a line `KEY=value` in its log.
    pub fn value(&self, key: &str) -> String {
        let prefix = format!("{key}=");
        self.log
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("the job printed no {key}=\n{self}"))
            .to_string()
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stderr\n{}\n--- job.log\n{}\n--- result.json\n{}",
            self.code,
            self.stderr,
            self.log,
            self.result
                .as_ref()
                .map(|r| r.to_string())
                .unwrap_or_default()
        )
    }
}

/// sha256 of a file, lowercase hex.
pub fn sha256_file(p: &Path) -> String {
    hex(&Sha256::digest(fs::read(p).unwrap()))
}

/// Lowercase hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Random hex from the kernel.
pub fn random_hex(n: usize) -> String {
    use std::io::Read;
    let mut b = vec![0u8; n];
    fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    hex(&b)
}

/// Removes a tree, making directories writable first (jobs may leave mode-000 directories).
pub fn remove_tree(p: &Path) -> std::io::Result<()> {
    let m = match fs::symlink_metadata(p) {
        Ok(m) => m,
        Err(_) => return Ok(()),
    };
    if m.is_dir() {
        let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o700));
        for e in fs::read_dir(p)? {
            remove_tree(&e?.path())?;
        }
        fs::remove_dir(p)
    } else {
        fs::remove_file(p)
    }
}

/// Pids of host processes whose command line contains `marker`.
pub fn processes_with(marker: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()))
        .filter(|pid| *pid != me)
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(marker)
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Waits up to `secs` seconds until a process with `marker` in its command line runs and
/// returns its pid; panics naming `what` otherwise.
pub fn wait_for_process(marker: &str, what: &str, secs: u64) -> i32 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(pid) = processes_with(marker).first() {
            return *pid;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} never started ({marker:?} not seen in {secs} s)"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Waits up to `secs` seconds until no process with `marker` in its command line runs;
/// panics saying `what` outlived it (with the pids left) otherwise.
pub fn wait_for_no_process(marker: &str, what: &str, secs: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let left = processes_with(marker);
        if left.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} ({marker:?}: pids {left:?}, after {secs} s)"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// This host's first IPv4 address on an interface other than `lo`, if it has one (the target
/// of tests that show a job cannot reach the host's own services).
pub fn host_ipv4() -> Option<std::net::Ipv4Addr> {
    nix::ifaddrs::getifaddrs()
        .ok()?
        .filter(|i| i.interface_name != "lo")
        .filter_map(|i| i.address.and_then(|a| a.as_sockaddr_in().map(|s| s.ip())))
        .next()
}

/// A job spec with one step running `run` (a shell command), with optional extra TOML.
pub fn one_step(name: &str, run: &str, extra: &str) -> String {
    format!("version = 1\nname = \"{name}\"\n{extra}\n[[steps]]\nname = \"main\"\nrun = '''\n{run}\n'''\n")
}

/// Python helper that makes raw system calls and reports the errno name.
pub const SYSCALL_PY: &str = r#"
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def sc(nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_ulong(a) for a in args])
    e = ctypes.get_errno()
    return "ok" if r >= 0 else errno.errorcode.get(e, str(e))
def report(name, nr, *args):
    print(f"{name}={sc(nr, *args)}", flush=True)
"#;
