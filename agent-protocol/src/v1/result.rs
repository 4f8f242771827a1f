//! `result.json`, version 1: what happened to a job, for users and scripts.
//!
//! Field names and enum spellings are the contract in DESIGN.md; fields may be added, never
//! renamed. Unlike the job spec, these types do **not** refuse unknown fields: a reader built
//! from this crate must keep reading results written by a newer runner that added fields.
//! The serialized shape is pinned by a golden file (`tests/golden/result-v1.json`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How the job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobStatus {
    /// Every step exited 0 and every output was collected (exit status 0).
    Succeeded,
    /// A step failed, timed out or hit a limit, or an output was refused (exit status 1).
    Failed,
    /// Refused before any step ran: bad spec or config, digest mismatch, a request above a
    /// ceiling, a layer the host cannot enforce (exit status 2).
    Refused,
    /// The runner itself failed after steps ran (exit status 3).
    RunnerError,
}

impl JobStatus {
    /// The spelling in `result.json`.
    pub const fn as_str(self) -> &'static str {
        match self {
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Refused => "refused",
            JobStatus::RunnerError => "runner-error",
        }
    }

    /// The exit status of `bulwark run` for this outcome.
    pub fn exit_code(self) -> i32 {
        match self {
            JobStatus::Succeeded => 0,
            JobStatus::Failed => 1,
            JobStatus::Refused => 2,
            JobStatus::RunnerError => 3,
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The job's trust level; it comes from `--trust` or the control plane, never the spec.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trust {
    /// Pull requests and forks: no credentials, strictest egress.
    #[default]
    Untrusted,
    /// Protected branches and release tags.
    Trusted,
}

impl Trust {
    /// The spelling in `result.json`, provenance and `--trust`.
    pub fn as_str(self) -> &'static str {
        match self {
            Trust::Untrusted => "untrusted",
            Trust::Trusted => "trusted",
        }
    }
}

impl fmt::Display for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Trust {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "untrusted" => Ok(Trust::Untrusted),
            "trusted" => Ok(Trust::Trusted),
            other => Err(format!(
                "unknown trust level {}; use untrusted or trusted",
                crate::error::quote(other)
            )),
        }
    }
}

/// How job processes were mapped to host users.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IsolationMode {
    /// Root daemon, a distinct host uid per running job.
    RootPerJobUid,
    /// Dedicated user with a subordinate uid range, one uid per job.
    Subuid,
    /// Plain rootless, one uid for everything (developer machines).
    RootlessSingleUid,
}

impl IsolationMode {
    /// The spelling in `result.json` and provenance.
    pub fn as_str(self) -> &'static str {
        match self {
            IsolationMode::RootPerJobUid => "root-per-job-uid",
            IsolationMode::Subuid => "subuid",
            IsolationMode::RootlessSingleUid => "rootless-single-uid",
        }
    }
}

impl fmt::Display for IsolationMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the sandbox actually enforced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Isolation {
    /// User mapping mode.
    pub mode: IsolationMode,
    /// Landlock ABI version applied (0: none).
    pub landlock_abi: u32,
    /// Seccomp policy applied, e.g. `allowlist`.
    pub seccomp: String,
    /// cgroup version used: `v1`, `v2` or `none`.
    pub cgroup: String,
    /// Limits actually enforced: `memory`, `pids`, `timeout`, `cpu`, `disk`, `free-disk`.
    pub limits_enforced: Vec<String>,
    /// Explicit weakening options that were on, e.g. `rlimit-fallback`; empty normally.
    #[serde(default)]
    pub weakened: Vec<String>,
    /// Layers the sandbox confirmed for every step's process just before exec, e.g.
    /// `landlock-abi-7-fully-enforced`, `landlock-scopes`, `seccomp-allowlist`,
    /// `no-new-privs`, `capabilities-none`; empty when no step ran.
    #[serde(default)]
    pub confirmed: Vec<String>,
}

/// Counters read from the job's cgroup before it was removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupCounters {
    /// Processes the kernel's OOM killer killed inside the job's memory cgroup.
    pub oom_kills: u64,
    /// Forks refused because the job reached its pids limit.
    pub pids_max_hit: u64,
    /// 100 ms periods in which the job used up its CPU limit and waited (0 without one).
    #[serde(default)]
    pub cpu_throttled_periods: u64,
    /// Milliseconds its processes waited because of the CPU limit.
    #[serde(default)]
    pub cpu_throttled_ms: u64,
}

/// One step's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepResult {
    /// Step name.
    pub name: String,
    /// Exit code, when the step's main process exited normally.
    pub exit_code: Option<i32>,
    /// Signal number, when it was killed by one.
    pub signal: Option<i32>,
    /// Wall time in milliseconds.
    pub duration_ms: u64,
    /// Whether a timeout (the step's or the job's) ended it.
    #[serde(default)]
    pub timed_out: bool,
    /// The limit that ended it, `memory`, `pids` or `timeout`; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    /// The job's credentials this step's processes could read (names, never values); absent
    /// when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<String>,
}

/// One collected output file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputRecord {
    /// Path relative to the output directory.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// sha256, 64 lowercase hex.
    pub sha256: String,
}

/// What went into the job, as resolved by the runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inputs {
    /// The source as fetched (a JSON object: kind, location, commit or digest).
    #[serde(default = "empty_object")]
    pub source: serde_json::Value,
    /// Each tool as fetched (name, url, sha256).
    #[serde(default)]
    pub tools: Vec<serde_json::Value>,
    /// The root filesystem, when one was used.
    #[serde(default)]
    pub rootfs: Option<serde_json::Value>,
    /// Each cache the job declared: what was restored into it (tier, generation, tree
    /// digest) and what was saved from it, or why not (docs/caches.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caches: Vec<serde_json::Value>,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

impl Default for Inputs {
    fn default() -> Self {
        Inputs {
            source: empty_object(),
            tools: Vec::new(),
            rootfs: None,
            caches: Vec::new(),
        }
    }
}

/// The whole of `result.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResult {
    /// How the job ended.
    pub status: JobStatus,
    /// `null`, or one sentence saying why it did not succeed.
    pub reason: Option<String>,
    /// The trust level it ran at.
    pub trust: Trust,
    /// What the sandbox enforced; `null` only for a job refused before the sandbox was set up.
    pub isolation: Option<Isolation>,
    /// Every step that started, in order.
    pub steps: Vec<StepResult>,
    /// Every collected output.
    pub outputs: Vec<OutputRecord>,
    /// Resolved inputs.
    #[serde(default)]
    pub inputs: Inputs,
    /// Start time, RFC 3339 UTC (`2025-01-02T03:04:05Z`).
    pub started: String,
    /// End time, RFC 3339 UTC.
    pub finished: String,
    /// The job's name.
    pub job: String,
    /// Unique id of this run.
    pub invocation_id: String,
    /// cgroup counters at the end of the job; absent where no cgroup was used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_counters: Option<CgroupCounters>,
    /// The job's egress through the runner's proxy; absent when the job had no network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<EgressRecord>,
    /// The job's own disk (`resources.disk`), as its steps left it; absent when it had none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskUse>,
    /// The credentials the job was given (docs/credentials.md): names, kinds and expiry, never
    /// a value; absent when it had none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<CredentialRecord>,
}

/// One credential a job was given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialRecord {
    /// The configured name (`/run/credentials/<name>/`).
    pub name: String,
    /// `aws`, `oauth-token-exchange` or `vault`.
    pub kind: String,
    /// When it expires (RFC 3339), as the issuing service said; `null` when it did not say.
    /// After a refresh, the expiry of the values the job holds now.
    pub expires: Option<String>,
    /// How many times newer values replaced the job's while it ran (docs/credentials.md).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub refreshed: u32,
    /// Why the last attempt to replace them failed, when it did (the job kept what it had).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_failed: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// How much of its disk a job used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskUse {
    /// The size asked for, in bytes (the filesystem's own structures take a little of it).
    pub size: u64,
    /// Bytes in use when the last step ended.
    pub used: u64,
}

/// What went through a job's egress proxy (details per connection in `egress.log`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressRecord {
    /// The operator ran the job in audit mode (everything but metadata and host loopback
    /// allowed, and logged).
    pub audit: bool,
    /// Connections allowed.
    pub allowed: u64,
    /// Connections denied.
    pub denied: u64,
    /// Bytes from the job to the network.
    pub bytes_up: u64,
    /// Bytes from the network to the job.
    pub bytes_down: u64,
    /// sha256 of `egress.log`.
    pub log_sha256: String,
    /// Some attempts counted above are not lines of `egress.log`: denied ones once they had
    /// used half of its cap, or any once it was full (its marker lines say which). Absent in
    /// results from runners before it existed.
    #[serde(default)]
    pub log_truncated: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> JobResult {
        JobResult {
            status: JobStatus::Succeeded,
            reason: None,
            trust: Trust::Trusted,
            isolation: Some(Isolation {
                mode: IsolationMode::RootPerJobUid,
                landlock_abi: 7,
                seccomp: "allowlist".to_owned(),
                cgroup: "v2".to_owned(),
                limits_enforced: vec!["memory".to_owned(), "pids".to_owned(), "timeout".to_owned()],
                weakened: vec![],
                confirmed: vec![
                    "landlock-abi-7-fully-enforced".to_owned(),
                    "seccomp-allowlist".to_owned(),
                ],
            }),
            steps: vec![StepResult {
                name: "build".to_owned(),
                exit_code: Some(0),
                signal: None,
                duration_ms: 1234,
                timed_out: false,
                limit: None,
                credentials: vec!["aws-release".to_owned()],
            }],
            outputs: vec![OutputRecord {
                path: "dist/app.tar.gz".to_owned(),
                size: 123,
                sha256: "0".repeat(64),
            }],
            inputs: Inputs::default(),
            started: "2025-01-02T03:04:05Z".to_owned(),
            finished: "2025-01-02T03:04:07Z".to_owned(),
            job: "hello".to_owned(),
            invocation_id: "0f6c2d2e-7d1b-4a55-9b7e-3c4f1e2a9b10".to_owned(),
            cgroup_counters: Some(CgroupCounters {
                oom_kills: 0,
                pids_max_hit: 0,
                cpu_throttled_periods: 0,
                cpu_throttled_ms: 0,
            }),
            egress: Some(EgressRecord {
                audit: false,
                allowed: 2,
                denied: 1,
                bytes_up: 100,
                bytes_down: 2000,
                log_sha256: "1".repeat(64),
                log_truncated: false,
            }),
            disk: Some(DiskUse {
                size: 4 << 30,
                used: 123 << 20,
            }),
            credentials: vec![CredentialRecord {
                name: "aws-release".to_owned(),
                kind: "aws".to_owned(),
                expires: Some("2025-01-02T04:04:05Z".to_owned()),
                refreshed: 2,
                refresh_failed: None,
            }],
        }
    }

    #[test]
    fn result_json_matches_the_golden_file() {
        let golden = include_str!("../../tests/golden/result-v1.json");
        let written = serde_json::to_string_pretty(&sample()).expect("serializes") + "\n";
        assert_eq!(
            written, golden,
            "result.json shape changed; see the checklist in v1/mod.rs"
        );
        let read: JobResult = serde_json::from_str(golden).expect("golden parses");
        assert_eq!(read, sample());
    }

    fn json<T: Serialize>(value: &T) -> String {
        serde_json::to_string(value).expect("serializes")
    }

    #[test]
    fn enum_spellings_are_the_documented_ones() {
        assert_eq!(json(&JobStatus::RunnerError), r#""runner-error""#);
        assert_eq!(json(&Trust::Trusted), r#""trusted""#);
        assert_eq!(
            json(&IsolationMode::RootlessSingleUid),
            r#""rootless-single-uid""#
        );
        for status in [
            JobStatus::Succeeded,
            JobStatus::Failed,
            JobStatus::Refused,
            JobStatus::RunnerError,
        ] {
            assert_eq!(json(&status), format!("{:?}", status.as_str()));
        }
        for mode in [
            IsolationMode::RootPerJobUid,
            IsolationMode::Subuid,
            IsolationMode::RootlessSingleUid,
        ] {
            assert_eq!(json(&mode), format!("{:?}", mode.as_str()));
        }
    }

    #[test]
    fn trust_parses_from_the_command_line_and_defaults_to_untrusted() {
        assert_eq!("trusted".parse::<Trust>(), Ok(Trust::Trusted));
        assert_eq!(Trust::default(), Trust::Untrusted);
        assert!("Trusted"
            .parse::<Trust>()
            .unwrap_err()
            .contains("use untrusted or trusted"));
    }

    #[test]
    fn a_result_from_a_newer_runner_with_extra_fields_still_reads() {
        let mut value = serde_json::to_value(sample()).expect("serializes");
        value["added_later"] = serde_json::json!({"x": 1});
        value["steps"][0]["added_later"] = serde_json::json!(true);
        let read: JobResult = serde_json::from_value(value).expect("extra fields are tolerated");
        assert_eq!(read, sample());
    }

    #[test]
    fn an_egress_record_without_log_truncated_reads_as_not_truncated() {
        let mut value = serde_json::to_value(sample()).expect("serializes");
        let egress = value["egress"].as_object_mut().expect("egress");
        assert!(egress.remove("log_truncated").is_some());
        let read: JobResult = serde_json::from_value(value).expect("parses");
        assert_eq!(read.egress.map(|e| e.log_truncated), Some(false));
    }

    #[test]
    fn a_refused_job_has_null_isolation_and_optional_fields_default() {
        let text = r#"{"status":"refused","reason":"resources.memory: above the ceiling","trust":"untrusted",
            "isolation":null,"steps":[],"outputs":[],"started":"2025-01-02T03:04:05Z",
            "finished":"2025-01-02T03:04:05Z","job":"hello","invocation_id":"x"}"#;
        let read: JobResult = serde_json::from_str(text).expect("parses");
        assert_eq!(read.isolation, None);
        assert_eq!(read.inputs, Inputs::default());
        assert_eq!(read.status.exit_code(), 2);
    }
}
