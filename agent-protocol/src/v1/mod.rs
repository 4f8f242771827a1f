//! Version 1 of Bulwark's user-facing formats: the job spec ([`job`]), the operator
//! configuration ([`config`]) and `result.json` ([`result`]), with their validation.
//!
//! Why versioned modules: these shapes are a contract with users, scripts and the control
//! plane (DESIGN.md, "The user-facing contract (v1)"). Keeping them under `v1` makes a
//! breaking change a visible act: a `v2` module beside this one, not an edit in place. The
//! alternative, one unversioned set of types evolved with `#[serde(default)]`, was rejected
//! because the job spec refuses unknown fields on purpose, so "just add a field" is already a
//! compatibility decision that deserves a checklist.
//!
//! # When changing the protocol
//!
//! 1. Adding an optional field to the job spec or config: old specs still parse, but a spec
//!    using the field is refused by older runners (unknown field). Give it a default, document
//!    it in DESIGN.md's contract section, and add a good spec under `tests/good-specs/`.
//! 2. Adding a rule: add a malformed spec under `tests/bad-specs/` with its `# expect:` line,
//!    and make the message name the field path and what to do instead.
//! 3. Adding a field to `result.json`: fine at any time (readers ignore unknown fields);
//!    update `tests/golden/result-v1.json`. Renaming or removing one is a breaking change.
//! 4. Renaming, removing or changing the meaning of anything: that is `v2`. Copy this module,
//!    bump [`job::SUPPORTED_VERSION`] there, keep `v1` readable, and write the migration note
//!    in the README.
//! 5. Changing a default or a limit constant (`DEFAULT_*`, `MAX_*`): it changes what existing
//!    specs get; say so in the README's changelog.

pub mod allow;
pub mod casefold;
pub mod config;
pub mod control;
pub mod credentials;
pub mod job;
pub mod lookup;
pub mod result;
mod rules;
mod validate;

pub use allow::{AllowEntry, AllowHost, CeilingEntry, IpNet};
pub use casefold::case_folded;
pub use config::{
    CachesConfig, Config, DaemonConfig, DiskReserve, EgressConfig, FetchConfig, HostConfig,
    IsolationChoice, LimitsConfig, PathsConfig, UidRange, CACHE_ENTRY_CHARGE,
    DEFAULT_FETCH_MAX_BYTES, DEFAULT_FETCH_TIMEOUT, DEFAULT_JOB_UIDS, DEFAULT_LIVE_LOG_INTERVAL,
};
pub use credentials::{CredentialKind, CredentialProvider};
pub use job::{
    is_reserved_output, reserved_output, CacheSpec, JobSpec, NetworkSpec, OutputsSpec,
    ResourcesSpec, RootfsSpec, SourceSpec, StepSpec, ToolFormat, ToolSpec, ValidatedJob,
    ValidatedStep, FOLDED_NAMES, NAME_PATTERN, RESERVED_OUTPUT_NAMES,
};
pub use result::{
    CgroupCounters, CredentialRecord, DiskUse, EgressRecord, Inputs, Isolation, IsolationMode,
    JobResult, JobStatus, OutputRecord, StepResult, Trust,
};
pub use rules::{check_name, check_sha256, check_source_url, redact_url};
