//! What the runner asks of the sandbox helper, and what the helper reports back.
//!
//! The runner writes one [`SandboxSpec`] as JSON to the helper's standard input and closes it.
//! The helper writes [`Event`]s as JSON lines to its standard output (the status channel) and
//! the job's combined output goes to its standard error (the log channel). Keeping the two
//! apart means nothing a job prints can be mistaken for a status event.
//!
//! The runner (`bulwark`) and the helper (`bulwark-sandbox`) are separate binaries that must
//! come from one build: the spec carries [`PROTOCOL`] (the package version and a digest of this
//! file, made by `build.rs`), the helper refuses any other, and the runner treats a status
//! line it cannot parse as a failure. Keep `deny_unknown_fields` so a mismatch fails loudly.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Uid and gid the job has inside its user namespace (named `build` in its `/etc/passwd`).
pub const JOB_UID: u32 = 1000;
/// See [`JOB_UID`].
pub const JOB_GID: u32 = 1000;

/// The runner-helper protocol of this build: the package version and a digest of this file.
pub const PROTOCOL: &str = concat!(env!("CARGO_PKG_VERSION"), "+", env!("BULWARK_SPEC_DIGEST"));

/// Everything the helper needs to build and run one job's sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSpec {
    /// [`PROTOCOL`] of the runner that wrote this spec; the helper refuses any other.
    pub protocol: String,
    /// Pid of the runner: the helper checks it is still its parent after setting its
    /// parent-death signal.
    pub runner_pid: u32,
    /// Identifier of the job (for messages only).
    pub job_id: String,
    /// Host directory mounted read-write at `/workspace`.
    pub workspace: PathBuf,
    /// Host directory mounted read-write at `/tmp`.
    pub tmp: PathBuf,
    /// Host system paths made visible read-only at the same place (`/usr`, `/bin`, ...).
    /// A path that is a symlink on the host (merged `/usr`) is recreated as the same symlink.
    pub system_paths: Vec<PathBuf>,
    /// Host `/etc` entries made visible read-only (files or directories, symlinks recreated).
    pub etc_entries: Vec<PathBuf>,
    /// Root mode: the unprivileged host uid and gid the helper switches to before it creates
    /// any namespace. `None`: keep the caller's ids (rootless).
    pub host_ids: Option<(u32, u32)>,
    /// `subuid` mode: the job's host ids from the runner's subordinate ranges, mapped to the
    /// job's ids by `newuidmap`/`newgidmap` (see [`crate::subid`]). Exclusive with `host_ids`.
    #[serde(default)]
    pub subids: Option<crate::subid::SubidMap>,
    /// Files of the job's cgroups (`tasks` on v1, `cgroup.procs` on v2) the helper writes `0`
    /// to, moving itself in before anything else, so that every process of the job is born
    /// inside them (see `JobCgroup::join_files`).
    pub cgroup_join: Vec<PathBuf>,
    /// Hostname inside the job's UTS namespace.
    pub hostname: String,
    /// Steps, run in order in the one sandbox.
    pub steps: Vec<StepSpec>,
    /// Wall-clock limit of the whole job, in milliseconds.
    pub job_timeout_ms: u64,
    /// Time between SIGTERM and SIGKILL when a limit is reached, in milliseconds.
    pub kill_grace_ms: u64,
    /// Resource limits set on each job process.
    pub rlimits: Rlimits,
    /// Report [`Event::Phase`] timestamps (benchmarks).
    #[serde(default)]
    pub report_phases: bool,
    /// A verified, unpacked root filesystem whose top-level directories replace
    /// `system_paths` and `etc_entries` (the host's system is then not visible at all).
    #[serde(default)]
    pub rootfs: Option<PathBuf>,
    /// Host directory mounted read-write at `/cache`, holding one directory per cache the job
    /// declared, when it declared any.
    #[serde(default)]
    pub cache: Option<PathBuf>,
    /// Verified, read-only tool directories mounted at `/tools/<name>`.
    #[serde(default)]
    pub tools: Vec<ToolMount>,
    /// The job's way out, when its network policy allows anything: init forwards connections
    /// to `127.0.0.1:<port>` inside the job's network namespace to the runner's proxy socket.
    #[serde(default)]
    pub egress: Option<EgressSpec>,
    /// Short-lived credentials for a trusted job, written to `/run/credentials/<dir>/<name>`
    /// on a tmpfs of the sandbox's own (docs/credentials.md). Never on the host's disk.
    #[serde(default)]
    pub credentials: Vec<CredentialFile>,
    /// The runner may send newer credentials while the job runs ([`CredentialUpdate`] lines
    /// on the helper's standard input after the spec, which init reads): the helper keeps
    /// the channel open for init instead of closing it after the spec.
    #[serde(default)]
    pub credential_updates: bool,
}

impl SandboxSpec {
    /// Whether init takes credential updates: the runner asked for them, for a job that has
    /// credentials.
    pub fn takes_credential_updates(&self) -> bool {
        self.credential_updates && !self.credentials.is_empty()
    }
}

/// Newer credential files for a running job (a refreshed session), one JSON line on the update
/// channel. Each file replaces the one of that name in `/run/credentials/<dir>/` at once
/// (written beside it, then renamed), so a reader sees the old contents or the new, never a
/// mix. Only directories the job was started with can be updated.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialUpdate {
    /// The new files.
    pub files: Vec<CredentialFile>,
}

/// One credential file. Its contents are a secret: `Debug` shows only the path, and the
/// contents are overwritten with zeros when it is dropped (the runner's copies, the helper's,
/// and init's, which drops them as soon as they are written).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialFile {
    /// The credential's name (`/run/credentials/<dir>`), matching the job spec's name pattern.
    pub dir: String,
    /// The file's name in it (a plain name, no `/`).
    pub name: String,
    /// The contents. On the wire as lowercase hex ([`secret_hex`]).
    #[serde(with = "secret_hex")]
    pub contents: String,
}

/// A credential's contents as lowercase hex in the sandbox spec. Why not a JSON string: the
/// contents hold newlines, and a JSON string with an escape is parsed through a scratch buffer
/// of the parser's that is freed without being zeroed, leaving a copy in the helper (and, after
/// the fork, in init). Hex has no escape, so the parser hands over a slice of its input, which
/// the helper zeroes; the decoded bytes go straight into the [`CredentialFile`], zeroed when it
/// is dropped.
pub mod secret_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(contents: &str, s: S) -> Result<S::Ok, S::Error> {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut hex = zeroize::Zeroizing::new(String::with_capacity(contents.len() * 2));
        for b in contents.bytes() {
            hex.push(char::from(DIGITS[usize::from(b >> 4)]));
            hex.push(char::from(DIGITS[usize::from(b & 0xf)]));
        }
        s.serialize_str(&hex)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        use serde::de::Error;
        // Borrowed from the input: a string that needed unescaping is refused, not copied.
        let hex = <&'de str>::deserialize(d)?;
        if hex.len() % 2 != 0 {
            return Err(D::Error::custom(
                "credential contents: odd number of hex digits",
            ));
        }
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(hex.len() / 2));
        for pair in hex.as_bytes().chunks_exact(2) {
            match (digit(pair[0]), digit(pair[1])) {
                (Some(hi), Some(lo)) => bytes.push(hi << 4 | lo),
                _ => return Err(D::Error::custom("credential contents: not lowercase hex")),
            }
        }
        match String::from_utf8(std::mem::take(&mut *bytes)) {
            Ok(text) => Ok(text),
            Err(e) => {
                zeroize::Zeroize::zeroize(&mut e.into_bytes());
                Err(D::Error::custom("credential contents: not UTF-8"))
            }
        }
    }
}

impl Drop for CredentialFile {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.contents);
    }
}

impl std::fmt::Debug for CredentialFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialFile")
            .field("dir", &self.dir)
            .field("name", &self.name)
            .field(
                "contents",
                &format_args!("<{} bytes redacted>", self.contents.len()),
            )
            .finish()
    }
}

/// One pinned tool.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolMount {
    /// Tool name (`/tools/<name>`); matches the job spec's name pattern, so no `/` or `..`.
    pub name: String,
    /// The unpacked, verified directory in the runner's tool store.
    pub host_dir: PathBuf,
}

/// Where init listens and where it forwards to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressSpec {
    /// Host directory holding the proxy's socket `egress.sock` (opened by the helper before it
    /// drops privileges; never visible in the job's filesystem).
    pub socket_dir: PathBuf,
    /// Port of the forwarder on the job's loopback.
    pub port: u16,
    /// Most connections the forwarder keeps open at once.
    pub max_connections: usize,
}

/// One step of a job.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// Step name.
    pub name: String,
    /// Program and arguments (`/bin/sh -c ...`).
    pub argv: Vec<String>,
    /// The complete environment of the step's process.
    pub env: Vec<(String, String)>,
    /// Per-step wall-clock limit in milliseconds.
    pub timeout_ms: Option<u64>,
    /// The credentials (`/run/credentials/<name>`) this step's processes may read; Landlock
    /// denies the others.
    #[serde(default)]
    pub credentials: Vec<String>,
}

/// The `RLIMIT_NOFILE` every job process gets (or the inherited hard limit, when lower).
pub const JOB_NOFILE: u64 = 65536;

/// Resource limits applied with setrlimit(2) to every job process.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rlimits {
    /// RLIMIT_NOFILE (soft and hard).
    pub nofile: u64,
    /// RLIMIT_CORE (0: no core dumps, which could hold secrets).
    pub core: u64,
    /// RLIMIT_NPROC, only as the explicit fallback where no pids cgroup exists.
    pub nproc: Option<u64>,
    /// RLIMIT_AS, only as the explicit fallback where no memory cgroup exists.
    pub address_space: Option<u64>,
}

/// What the sandbox actually enforced for a step's process, reported before exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enforced {
    /// Namespaces (names under `/proc/self/ns`) the step's process was seen to be in apart
    /// from the runner's, just before exec.
    pub namespaces: Vec<String>,
    /// Landlock ABI whose full filesystem feature set is enforced.
    pub landlock_abi: u32,
    /// Whether the ABI 6 scopes (abstract unix sockets, signals) are enforced.
    pub landlock_scoped: bool,
    /// Always "allowlist" when reported.
    pub seccomp: String,
    /// `no_new_privs` is set.
    pub no_new_privs: bool,
    /// Every capability set, including bounding and ambient, is empty.
    pub capabilities_dropped: bool,
}

/// Status events, one JSON object per line on the helper's standard output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case", deny_unknown_fields)]
pub enum Event {
    /// The sandbox is built; steps are about to run.
    Ready,
    /// A step's process is about to exec with these protections in force.
    StepEnforced {
        /// Step name.
        step: String,
        /// What was enforced.
        enforced: Enforced,
    },
    /// A step's main process ended (or was killed) and everything it left was killed.
    StepFinished {
        /// Step name.
        step: String,
        /// Exit code, when it exited.
        exit_code: Option<i32>,
        /// Signal number, when a signal ended it.
        signal: Option<i32>,
        /// Wall-clock duration.
        duration_ms: u64,
        /// The step or job time limit ended it.
        timed_out: bool,
    },
    /// A protection or setup stage could not be applied: nothing of the job ran past it.
    SetupFailed {
        /// The stage, such as `landlock` or `pivot_root`.
        stage: String,
        /// What went wrong.
        message: String,
    },
    /// A point in the sandbox's setup reached, on the monotonic clock (benchmarks only).
    Phase {
        /// What was reached.
        name: String,
        /// CLOCK_MONOTONIC in nanoseconds.
        mono_ns: u64,
    },
    /// A [`CredentialUpdate`] is in place: these credentials' files now hold the new values.
    CredentialsUpdated {
        /// The credentials (directories) updated.
        names: Vec<String>,
    },
    /// A [`CredentialUpdate`] could not be applied (the job keeps what it had) or the update
    /// channel failed (no further update arrives).
    CredentialUpdateFailed {
        /// What went wrong.
        message: String,
    },
    /// All steps ran (or one failed) and every job process is gone.
    Done {
        /// The whole-job time limit was reached.
        job_timed_out: bool,
    },
}

/// A setup stage that failed and why: reported as [`Event::SetupFailed`].
pub type Stage = (&'static str, String);

/// Ends a helper process with `result`: its exit code, or a `setup_failed` event on `status`
/// and exit code 125.
pub fn exit_with(status: &mut impl std::io::Write, result: Result<i32, Stage>) -> ! {
    let code = match result {
        Ok(code) => code,
        Err((stage, message)) => {
            let _ = Event::SetupFailed {
                stage: stage.into(),
                message,
            }
            .write_to(status);
            125
        }
    };
    crate::sys::exit_now(code)
}

impl Event {
    /// Serializes to one line (without the newline).
    pub fn to_line(&self) -> String {
        // Serializing these plain types cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{\"event\":\"ready\"}"))
    }

    /// Writes the event and its newline to the status channel in one `write` (a line is far
    /// below `PIPE_BUF`, so it is atomic: init and a step's process, which share the channel,
    /// never interleave their lines; `writeln!` would write the two separately).
    pub fn write_to(&self, status: &mut impl std::io::Write) -> std::io::Result<()> {
        let mut line = self.to_line();
        line.push('\n');
        status.write_all(line.as_bytes())
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| {
            (t.tv_sec() as u64)
                .saturating_mul(1_000_000_000)
                .saturating_add(t.tv_nsec() as u64)
        })
        .unwrap_or(0)
}

/// Writes a phase event when the spec asks for them.
pub fn phase(spec: &SandboxSpec, status: &mut impl std::io::Write, name: &str) {
    if spec.report_phases {
        let _ = Event::Phase {
            name: name.to_string(),
            mono_ns: monotonic_ns(),
        }
        .write_to(status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_contents_travel_as_hex_and_come_back_exactly() {
        let file = CredentialFile {
            dir: "aws".into(),
            name: "credentials".into(),
            contents: "[default]\naws_secret_access_key = s3cr\"t\n".into(),
        };
        let json = serde_json::to_string(&file).unwrap();
        // No escape in the wire form, and the secret is not there as text.
        assert!(!json.contains('\\') && !json.contains("s3cr"), "{json}");
        let back: CredentialFile = serde_json::from_str(&json).unwrap();
        assert_eq!(back.contents, file.contents);
        for bad in ["0", "zz", "0A", "\\u0030\\u0030", "ff"] {
            let json = format!(r#"{{"dir":"a","name":"b","contents":"{bad}"}}"#);
            assert!(
                serde_json::from_str::<CredentialFile>(&json).is_err(),
                "{bad}"
            );
        }
    }
}
