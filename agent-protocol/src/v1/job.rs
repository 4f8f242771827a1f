//! The job spec, version 1: what a job asks for.
//!
//! These structs are the wire format: TOML in a repository, the same field names as JSON when
//! the control plane sends a job. Every struct refuses unknown fields, so a typo or a section
//! this runner does not support is an error rather than something silently ignored (an ignored
//! `[resources] memroy = "1GiB"` would run the job with limits the author did not intend).
//!
//! Parsing ([`JobSpec::from_toml_str`]) only checks shape. [`JobSpec::validate`] then checks
//! every rule against the operator's [`LimitsConfig`] and returns a [`ValidatedJob`] with
//! durations and sizes resolved; the runner acts only on a `ValidatedJob`. Values such as
//! `timeout = "10m"` stay strings in the wire type so that a bad value becomes a field error
//! naming the path, with all other errors, rather than a serde error that stops at the first.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::config::LimitsConfig;
use crate::error::SpecError;
pub use crate::units::CpuCount;

pub use super::rules::NAME_PATTERN;

/// The only job spec version this crate reads.
pub const SUPPORTED_VERSION: u32 = 1;

/// Files the runner itself writes into the output directory; no output may be named so, in
/// any case ([`reserved_output`]). Each is lower case, with no trailing dot.
pub const RESERVED_OUTPUT_NAMES: &[&str] = &[
    "result.json",
    "job.log",
    "egress.log",
    "provenance.intoto.jsonl",
    "provenance.sigstore.json",
    // The job log while the job runs (the runner's `joblog::PARTIAL_NAME`), renamed to
    // `job.log` when it ends.
    ".job.log.partial",
];

/// Most `[[steps]]` in one job.
pub const MAX_STEPS: usize = 64;
/// Most `outputs.paths` patterns in one job.
pub const MAX_OUTPUT_PATTERNS: usize = 256;
/// Most `[[tools]]` in one job.
pub const MAX_TOOLS: usize = 64;
/// Most `network.allow` entries in one job.
pub const MAX_ALLOW_ENTRIES: usize = 256;
/// Most `env` entries in one step.
pub const MAX_ENV_PER_STEP: usize = 256;
/// Most credentials one job may ask for.
pub const MAX_CREDENTIALS: usize = 8;
/// Most `[[caches]]` in one job.
pub const MAX_CACHES: usize = 8;

/// Job timeout when `[resources]` gives none (lowered to the operator's ceiling if that is lower).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);
/// Memory limit when `[resources]` gives none (lowered to the ceiling if that is lower).
pub const DEFAULT_MEMORY: u64 = 4 << 30;
/// Process limit when `[resources]` gives none (lowered to the ceiling if that is lower).
pub const DEFAULT_PIDS: u64 = 1024;
/// Smallest memory limit a job may ask for.
pub const MIN_MEMORY: u64 = 1 << 20;

/// Smallest job disk (`resources.disk`, `limits.max_disk`): room for the filesystem's own
/// structures and some files.
pub const MIN_DISK: u64 = 16 << 20;

/// Environment variables the runner sets to point at the job's egress forwarder; a step's
/// `env` may not override them.
pub const PROXY_ENV_VARS: &[&str] = &[
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// A job spec as written: the whole document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Spec format version; must be 1.
    pub version: u32,
    /// Job name, matching [`NAME_PATTERN`].
    pub name: String,
    /// Where the source comes from; absent means the runner's `--source` directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceSpec>,
    /// Pinned tools, fetched and verified by the runner.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolSpec>,
    /// A pinned root filesystem used instead of the host's system directories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs: Option<RootfsSpec>,
    /// Egress allowlist; absent or empty means no network at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkSpec>,
    /// Resource requests; each omitted value takes its default.
    #[serde(default)]
    pub resources: ResourcesSpec,
    /// The steps, run in order in one sandbox.
    #[serde(default)]
    pub steps: Vec<StepSpec>,
    /// What to copy out of `/workspace` when the job succeeds.
    #[serde(default)]
    pub outputs: OutputsSpec,
    /// Names of credentials the operator configured (`[credentials.<name>]`) that the job
    /// needs: given only to trusted jobs leased from a coordinator (docs/credentials.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<String>,
    /// Build caches, each a directory kept between runs of jobs with the same source
    /// (docs/caches.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caches: Vec<CacheSpec>,
}

/// One `[[caches]]` entry: a directory at `/cache/<name>`, restored from what an earlier job
/// with the same source left there and saved when the job succeeds (docs/caches.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    /// Name, matching [`NAME_PATTERN`]; mounted at `/cache/<name>`.
    pub name: String,
}

/// `[rootfs]`: a root filesystem tarball, verified like a tool, whose top-level directories
/// replace the host's `/usr`, `/bin`, `/lib*` and `/etc` in the job's view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootfsSpec {
    /// Where to fetch it (`https`, `http` or `file`).
    pub url: String,
    /// Expected sha256 of the download, 64 lowercase hex.
    pub sha256: String,
    /// Archive format (`tar.gz`, `tar.xz` or `zip`); inferred from the URL when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<ToolFormat>,
}

/// `[source]`: at most one of `path`, `git` or `url`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// A local directory, relative to the spec file (local mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A git repository URL; requires `commit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<String>,
    /// The full commit id to check out (40 lowercase hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// The ref the commit is expected on, recorded in provenance.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
    /// A source archive URL; requires `sha256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The archive's sha256 (64 lowercase hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// One `[[tools]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolSpec {
    /// Name, matching [`NAME_PATTERN`]; mounted at `/tools/<name>`.
    pub name: String,
    /// Where to fetch it (https, http or file).
    pub url: String,
    /// The sha256 of the fetched file (64 lowercase hex).
    pub sha256: String,
    /// Archive format; inferred from the URL when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<ToolFormat>,
}

/// How a fetched tool is unpacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ToolFormat {
    /// A gzip-compressed tar archive.
    #[serde(rename = "tar.gz")]
    TarGz,
    /// An xz-compressed tar archive.
    #[serde(rename = "tar.xz")]
    TarXz,
    /// A zip archive.
    #[serde(rename = "zip")]
    Zip,
    /// A single file, used as is (made executable at `/tools/<name>/<name>`).
    #[serde(rename = "file")]
    File,
}

impl ToolFormat {
    /// The name used in specs: `tar.gz`, `tar.xz`, `zip`, `file`.
    pub fn as_str(self) -> &'static str {
        match self {
            ToolFormat::TarGz => "tar.gz",
            ToolFormat::TarXz => "tar.xz",
            ToolFormat::Zip => "zip",
            ToolFormat::File => "file",
        }
    }

    /// The format a URL's path ends in (`.tar.gz`/`.tgz`, `.tar.xz`/`.txz`, `.zip`), ignoring
    /// any query or fragment; `None` when the name says nothing, and then the spec must say.
    pub fn infer(url: &str) -> Option<ToolFormat> {
        let path = url.split(['?', '#']).next().unwrap_or(url);
        let file = path.rsplit('/').next().unwrap_or(path);
        [
            (".tar.gz", ToolFormat::TarGz),
            (".tgz", ToolFormat::TarGz),
            (".tar.xz", ToolFormat::TarXz),
            (".txz", ToolFormat::TarXz),
            (".zip", ToolFormat::Zip),
        ]
        .into_iter()
        .find(|(ext, _)| file.len() > ext.len() && file.ends_with(ext))
        .map(|(_, format)| format)
    }
}

impl ToolSpec {
    /// The declared format, or the one inferred from the URL.
    pub fn effective_format(&self) -> Option<ToolFormat> {
        self.format.or_else(|| ToolFormat::infer(&self.url))
    }
}

/// `[network]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    /// Allowlist entries (see [`super::allow::AllowEntry`]); empty means no network.
    #[serde(default)]
    pub allow: Vec<String>,
}

/// `[resources]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcesSpec {
    /// Whole-job timeout, like `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Memory limit, like `4GiB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// Most processes and threads at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
    /// CPU time per wall-clock time, in CPUs (`2`, `1.5`): the job's processes together get
    /// at most this much CPU bandwidth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<CpuCount>,
    /// Size of the job's own filesystem for `/workspace` and `/tmp`, like `20GiB`: writes
    /// past it fail in the job (root mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<String>,
}

/// One `[[steps]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// Name, matching [`NAME_PATTERN`], unique in the job.
    pub name: String,
    /// Shell command, run with `/bin/sh -c` in `/workspace`.
    pub run: String,
    /// Extra environment; may not set the proxy variables.
    #[serde(
        default,
        deserialize_with = "unique_keys",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub env: BTreeMap<String, String>,
    /// Per-step timeout, at most the job's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Which of the job's `credentials` this step may read. Once any step says, each step
    /// reads exactly what it lists (absent: none); when no step says, every step reads all
    /// of them ([`ValidatedStep::credentials`], docs/credentials.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Vec<String>>,
}

/// `[outputs]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputsSpec {
    /// Relative paths or globs (`*`, `?`, `**`) under `/workspace`.
    #[serde(default)]
    pub paths: Vec<String>,
}

/// A job that passed validation, with every default and unit resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedJob {
    /// The spec as written.
    pub spec: JobSpec,
    /// Whole-job timeout.
    pub timeout: Duration,
    /// Memory limit in bytes.
    pub memory: u64,
    /// Process limit.
    pub pids: u64,
    /// CPU bandwidth limit in thousandths of a CPU; `None`: not limited (neither the spec
    /// nor the operator's `limits.max_cpus` set one).
    pub cpus: Option<u64>,
    /// Size of the job's disk in bytes; `None`: `/workspace` and `/tmp` on the host's state
    /// filesystem, bounded only by the free-space reserve.
    pub disk: Option<u64>,
    /// The steps, in order.
    pub steps: Vec<ValidatedStep>,
    /// Output patterns with any leading `./` removed.
    pub output_patterns: Vec<String>,
}

/// A table of strings in which no key is given twice. TOML refuses a repeated key; JSON, as
/// serde reads it, keeps the last: a spec sent as JSON with `{"A": "benign", "A": "evil"}`
/// would mean one thing to a reader keeping the first and another to the runner.
fn unique_keys<'de, D>(d: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Unique;
    impl<'de> serde::de::Visitor<'de> for Unique {
        type Value = BTreeMap<String, String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a table of strings")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut m: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((k, v)) = m.next_entry::<String, String>()? {
                if out.contains_key(&k) {
                    return Err(serde::de::Error::custom(format!(
                        "duplicate key {}",
                        crate::error::quote(&k)
                    )));
                }
                out.insert(k, v);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Unique)
}

/// A validated step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedStep {
    /// Step name.
    pub name: String,
    /// Shell command.
    pub run: String,
    /// Extra environment (never a proxy variable).
    pub env: BTreeMap<String, String>,
    /// Per-step timeout, if any.
    pub timeout: Option<Duration>,
    /// The job's credentials this step may read, resolved: what it lists when any step of
    /// the job lists credentials, else all of the job's.
    pub credentials: Vec<String>,
}

impl JobSpec {
    /// Reads a TOML job spec. Checks syntax, types and unknown fields only.
    ///
    /// A spec of another version is reported as such even when it also uses fields this
    /// version does not know, since "unknown field" would send the user the wrong way.
    pub fn from_toml_str(s: &str) -> Result<JobSpec, SpecError> {
        toml::from_str(s).map_err(|e| {
            let version = s
                .parse::<toml::Table>()
                .ok()
                .and_then(|t| t.get("version").cloned());
            match version {
                Some(toml::Value::Integer(v)) if v != i64::from(SUPPORTED_VERSION) => {
                    wrong_version(v)
                }
                _ => SpecError::from_toml(s, &e),
            }
        })
    }

    /// Reads a JSON job spec (same field names as TOML).
    pub fn from_json_str(s: &str) -> Result<JobSpec, SpecError> {
        serde_json::from_str(s).map_err(|e| {
            let value = serde_json::from_str::<serde_json::Value>(s).ok();
            match value
                .as_ref()
                .and_then(|v| v.get("version"))
                .and_then(serde_json::Value::as_i64)
            {
                Some(v) if v != i64::from(SUPPORTED_VERSION) => wrong_version(v),
                _ => SpecError::from_json(&e),
            }
        })
    }

    /// Semantic validation against the operator's ceilings; returns all field errors, in
    /// document order.
    pub fn validate(&self, limits: &LimitsConfig) -> Result<ValidatedJob, SpecError> {
        super::validate::validate(self, limits)
    }
}

fn wrong_version(version: i64) -> SpecError {
    let message = super::validate::unsupported_version(version);
    SpecError::Invalid(vec![crate::FieldError::new("version", message)])
}

/// Whether a relative output path (after any leading `./`) would land on one of the files the
/// runner writes ([`reserved_output`]). The runner must also apply this to every path a glob
/// matches.
pub fn is_reserved_output(path: &str) -> bool {
    reserved_output(path).is_some()
}

/// The runner's file a relative output path (after any leading `./`) would land on, or be a
/// directory in place of: its first component compared with [`RESERVED_OUTPUT_NAMES`] as a
/// filesystem that folds names compares them ([`super::casefold`]), so that `JOB.LOG`,
/// `job.log.` (vfat drops the dot), `job\u{200B}.log` (ext4's casefold ignores the
/// zero-width space) and `RESULT~1.JSO` (vfat's short name for `result.json`) are refused
/// too.
pub fn reserved_output(path: &str) -> Option<&'static str> {
    let mut path = path;
    while let Some(rest) = path.strip_prefix("./") {
        path = rest;
    }
    let first = path.split('/').next().unwrap_or(path);
    let folded = super::casefold::case_folded(first);
    RESERVED_OUTPUT_NAMES
        .iter()
        .copied()
        .find(|name| *name == folded || super::casefold::may_be_short_name_of(&folded, name))
}

/// How a filesystem can take an output's path for another's, said where an output is
/// refused for it.
pub const FOLDED_NAMES: &str = "where a filesystem folds names (case, Unicode normalization, \
     invisible characters, trailing dots, 8.3 short names: a case-folding ext4 directory, vfat, \
     NTFS, macOS)";

#[cfg(test)]
mod tests;
