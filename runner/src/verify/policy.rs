//! The verification policy: which verified provenance an operator accepts for deployment.
//!
//! A policy is a small TOML file (`docs/policy.md`), read with `deny_unknown_fields`: a
//! misspelled key (`builder_id` for `builder_ids`) would otherwise silently drop a check, and a
//! policy that checks less than its author believes is worse than no policy. For the same reason
//! values are validated when the file is read, not when a statement is checked: a digest that is
//! not 64 hex digits, an isolation mode or trust level that does not exist, a list that could
//! never match (`builder_ids = []`) are errors naming the key (exit 2), not rejections of every
//! artifact.
//!
//! The checks read only a statement that has already been verified and parsed (see the parent
//! module), and read the fields whose meaning `docs/build-type.md` defines for our `buildType`.
//! Each check fails closed: a field the check needs that is absent or of the wrong shape
//! rejects, with the field named. Each rejection names its check (the policy key) and the values
//! it saw and wanted, because "rejected" alone sends the operator to decode base64 by hand.
//!
//! Alternatives rejected: a general policy language (Rego, CUE) is more than a deploy gate
//! needs and would add a large dependency to a security-critical path; SLSA's
//! `slsa-verifier` flags cover the builder and source but not isolation, trust or tool pins.

use std::path::Path;
use std::time::{Duration, SystemTime};

use bulwark_protocol::error::quote;
use serde::Deserialize;
use serde_json::Value;

use super::Rejection;
use crate::provenance::statement::{ResourceDescriptor, Statement};

/// How far in the future `finishedOn` may lie (clock skew between builder and verifier) before
/// `max_age` rejects the statement as dated in the future.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// The isolation modes a runner records (`result.json`, `internalParameters.isolation.mode`).
pub const ISOLATION_MODES: [&str; 3] = ["root-per-job-uid", "subuid", "rootless-single-uid"];

/// The policy file as written, before validation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    builder_ids: Option<Vec<String>>,
    source_uris: Option<Vec<String>>,
    source_refs: Option<Vec<String>>,
    require_trust: Option<String>,
    require_isolation: Option<Vec<String>>,
    allowed_dependency_digests: Option<Vec<String>>,
    quarantined_digests: Option<Vec<String>>,
    max_age: Option<String>,
    forbid_weakened: Option<bool>,
}

/// The trust level a policy demands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequiredTrust {
    /// Only `trusted` jobs.
    Trusted,
    /// `trusted` or `untrusted` (a recorded level is still required).
    Untrusted,
}

/// A validated policy. [`Policy::default`] is what applies without `--policy`: only
/// `forbid_weakened`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `runDetails.builder.id` must be one of these.
    pub builder_ids: Option<Vec<String>>,
    /// Globs on the source URI.
    pub source_uris: Option<Vec<String>>,
    /// Globs on `externalParameters.source.ref`.
    pub source_refs: Option<Vec<String>>,
    /// The trust level required.
    pub require_trust: Option<RequiredTrust>,
    /// `internalParameters.isolation.mode` must be one of these.
    pub require_isolation: Option<Vec<String>>,
    /// Pins for every resolved dependency except the source (lowercase hex).
    pub allowed_dependency_digests: Option<Vec<String>>,
    /// Digests that reject wherever they appear as a dependency (lowercase hex).
    pub quarantined_digests: Vec<String>,
    /// Oldest acceptable `finishedOn`, as an age.
    pub max_age: Option<Duration>,
    /// `internalParameters.weakened` must be empty.
    pub forbid_weakened: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            builder_ids: None,
            source_uris: None,
            source_refs: None,
            require_trust: None,
            require_isolation: None,
            allowed_dependency_digests: None,
            quarantined_digests: Vec::new(),
            max_age: None,
            forbid_weakened: true,
        }
    }
}

/// Why a policy file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("policy {}: cannot read", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, an unknown key, or a value of the wrong type.
    #[error("policy {}: {message}", path.display())]
    Syntax {
        /// The file.
        path: std::path::PathBuf,
        /// One line: position, the parser's message naming the key.
        message: String,
    },
    /// A key whose value can never be right.
    #[error("policy {}: {key}: {message}", path.display())]
    Invalid {
        /// The file.
        path: std::path::PathBuf,
        /// The policy key.
        key: &'static str,
        /// What is wrong and what to write instead.
        message: String,
    },
}

impl Policy {
    /// Reads and validates a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Policy::from_toml_str(&text).map_err(|e| e.at(path))
    }

    /// Parses and validates policy text (errors carry an empty path; [`Policy::load`] sets it).
    pub fn from_toml_str(text: &str) -> Result<Policy, PolicyError> {
        let raw: RawPolicy = toml::from_str(text).map_err(|e| PolicyError::Syntax {
            path: Default::default(),
            message: toml_message(text, &e),
        })?;
        let invalid = |key: &'static str, message: String| PolicyError::Invalid {
            path: Default::default(),
            key,
            message,
        };
        for (key, list) in [
            ("builder_ids", &raw.builder_ids),
            ("source_uris", &raw.source_uris),
            ("source_refs", &raw.source_refs),
            ("require_isolation", &raw.require_isolation),
        ] {
            if list.as_ref().is_some_and(Vec::is_empty) {
                return Err(invalid(
                    key,
                    "an empty list rejects everything; remove the key to allow any value".into(),
                ));
            }
        }
        let require_trust = match raw.require_trust.as_deref() {
            None => None,
            Some("trusted") => Some(RequiredTrust::Trusted),
            Some("untrusted") => Some(RequiredTrust::Untrusted),
            Some(other) => {
                return Err(invalid(
                    "require_trust",
                    format!(
                        "{} is not a trust level; use \"trusted\" or \"untrusted\"",
                        quote(other)
                    ),
                ))
            }
        };
        if let Some(modes) = &raw.require_isolation {
            if let Some(bad) = modes
                .iter()
                .find(|m| !ISOLATION_MODES.contains(&m.as_str()))
            {
                return Err(invalid(
                    "require_isolation",
                    format!(
                        "{} is not an isolation mode; use {}",
                        quote(bad),
                        ISOLATION_MODES.map(|m| format!("{m:?}")).join(", ")
                    ),
                ));
            }
        }
        let digests = |key: &'static str, list: Option<Vec<String>>| match list {
            None => Ok(None),
            Some(list) => list
                .into_iter()
                .map(|d| {
                    if d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()) {
                        Ok(d.to_ascii_lowercase())
                    } else {
                        Err(invalid(
                            key,
                            format!("{} is not a sha256 digest (64 hex digits)", quote(&d)),
                        ))
                    }
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
        };
        let allowed_dependency_digests =
            digests("allowed_dependency_digests", raw.allowed_dependency_digests)?;
        let quarantined_digests =
            digests("quarantined_digests", raw.quarantined_digests)?.unwrap_or_default();
        let max_age = match raw.max_age.as_deref() {
            None => None,
            Some(s) => Some(parse_age(s).map_err(|m| invalid("max_age", m))?),
        };
        Ok(Policy {
            builder_ids: raw.builder_ids,
            source_uris: raw.source_uris,
            source_refs: raw.source_refs,
            require_trust,
            require_isolation: raw.require_isolation,
            allowed_dependency_digests,
            quarantined_digests,
            max_age,
            forbid_weakened: raw.forbid_weakened.unwrap_or(true),
        })
    }

    /// Checks a verified statement; the first failing check is the rejection.
    ///
    /// Order: quarantine first (a quarantined dependency is the reason an operator most needs
    /// to see), then who built it, from what, how, and when.
    pub fn check(&self, statement: &Statement, now: SystemTime) -> Result<(), Rejection> {
        let build = &statement.predicate.build_definition;
        let run = &statement.predicate.run_details;
        let external = &build.external_parameters;
        let internal = &build.internal_parameters;

        if !self.quarantined_digests.is_empty() {
            let deps = build
                .resolved_dependencies
                .iter()
                .map(|d| ("resolvedDependencies", d))
                .chain(
                    run.builder
                        .builder_dependencies
                        .iter()
                        .map(|d| ("builderDependencies", d)),
                );
            for (list, dep) in deps {
                if let Some(sha) = sha256_of(dep) {
                    if self.quarantined_digests.contains(&sha) {
                        return Err(Rejection::new(
                            "quarantined_digests",
                            format!("{list} {} has quarantined sha256 {sha}", describe(dep)),
                        ));
                    }
                }
            }
        }

        if let Some(ids) = &self.builder_ids {
            if !ids.contains(&run.builder.id) {
                return Err(Rejection::new(
                    "builder_ids",
                    format!(
                        "runDetails.builder.id is {}, not one of {}",
                        quote(&run.builder.id),
                        list(ids)
                    ),
                ));
            }
        }

        if let Some(globs) = &self.source_uris {
            let Some((field, uri)) = source_uri(statement) else {
                return Err(Rejection::new(
                    "source_uris",
                    "the statement names no source uri (neither externalParameters.source.uri \
                     nor a resolvedDependencies entry named \"source\")",
                ));
            };
            if !globs.iter().any(|g| glob_matches(g, uri)) {
                return Err(Rejection::new(
                    "source_uris",
                    format!(
                        "{field} is {}, which matches none of {}",
                        quote(uri),
                        list(globs)
                    ),
                ));
            }
        }

        if let Some(globs) = &self.source_refs {
            let Some(r) = external.pointer("/source/ref").and_then(Value::as_str) else {
                return Err(Rejection::new(
                    "source_refs",
                    "the statement has no externalParameters.source.ref (a local source has \
                     none)",
                ));
            };
            if !globs.iter().any(|g| glob_matches(g, r)) {
                return Err(Rejection::new(
                    "source_refs",
                    format!(
                        "externalParameters.source.ref is {}, which matches none of {}",
                        quote(r),
                        list(globs)
                    ),
                ));
            }
        }

        if let Some(required) = self.require_trust {
            let trust = external.get("trust").and_then(Value::as_str);
            let ok = match required {
                RequiredTrust::Trusted => trust == Some("trusted"),
                RequiredTrust::Untrusted => matches!(trust, Some("trusted" | "untrusted")),
            };
            if !ok {
                let wanted = match required {
                    RequiredTrust::Trusted => "\"trusted\"",
                    RequiredTrust::Untrusted => "\"trusted\" or \"untrusted\"",
                };
                return Err(Rejection::new(
                    "require_trust",
                    format!(
                        "externalParameters.trust is {}, the policy requires {wanted}",
                        shown(external.get("trust"))
                    ),
                ));
            }
        }

        if let Some(modes) = &self.require_isolation {
            let mode = internal.pointer("/isolation/mode");
            if !mode
                .and_then(Value::as_str)
                .is_some_and(|m| modes.iter().any(|w| w == m))
            {
                return Err(Rejection::new(
                    "require_isolation",
                    format!(
                        "internalParameters.isolation.mode is {}, not one of {}",
                        shown(mode),
                        list(modes)
                    ),
                ));
            }
        }

        if self.forbid_weakened {
            match internal.get("weakened").and_then(Value::as_array) {
                Some(w) if w.is_empty() => {}
                Some(w) => {
                    let names: Vec<String> = w.iter().map(|v| shown(Some(v))).collect();
                    return Err(Rejection::new(
                        "forbid_weakened",
                        format!(
                            "internalParameters.weakened lists [{}]; set forbid_weakened = false \
                             to accept weakened builds",
                            names.join(", ")
                        ),
                    ));
                }
                None => {
                    return Err(Rejection::new(
                        "forbid_weakened",
                        format!(
                            "internalParameters.weakened is {}, expected an empty list",
                            shown(internal.get("weakened"))
                        ),
                    ))
                }
            }
        }

        if let Some(allowed) = &self.allowed_dependency_digests {
            for dep in &build.resolved_dependencies {
                if dep.name.as_deref() == Some("source") {
                    continue;
                }
                match sha256_of(dep) {
                    Some(sha) if allowed.contains(&sha) => {}
                    Some(sha) => {
                        return Err(Rejection::new(
                            "allowed_dependency_digests",
                            format!(
                                "resolvedDependencies {} has sha256 {sha}, which is not in the \
                                 allowed list",
                                describe(dep)
                            ),
                        ))
                    }
                    None => {
                        return Err(Rejection::new(
                            "allowed_dependency_digests",
                            format!(
                                "resolvedDependencies {} has no sha256 digest",
                                describe(dep)
                            ),
                        ))
                    }
                }
            }
        }

        if let Some(max_age) = self.max_age {
            let finished = &run.metadata.finished_on;
            let Ok(at) = humantime::parse_rfc3339(finished) else {
                return Err(Rejection::new(
                    "max_age",
                    format!(
                        "runDetails.metadata.finishedOn {} is not an RFC 3339 UTC timestamp",
                        quote(finished)
                    ),
                ));
            };
            match now.duration_since(at) {
                Ok(age) if age > max_age => {
                    return Err(Rejection::new(
                        "max_age",
                        format!(
                            "finished {} ago (runDetails.metadata.finishedOn {finished}), more \
                             than max_age {}",
                            whole_seconds(age),
                            whole_seconds(max_age)
                        ),
                    ))
                }
                Ok(_) => {}
                Err(e) if e.duration() > MAX_CLOCK_SKEW => {
                    return Err(Rejection::new(
                        "max_age",
                        format!(
                            "runDetails.metadata.finishedOn {finished} is {} in the future",
                            whole_seconds(e.duration())
                        ),
                    ))
                }
                Err(_) => {}
            }
        }
        Ok(())
    }
}

impl PolicyError {
    fn at(self, file: &Path) -> PolicyError {
        match self {
            PolicyError::Read { source, .. } => PolicyError::Read {
                path: file.to_path_buf(),
                source,
            },
            PolicyError::Syntax { message, .. } => PolicyError::Syntax {
                path: file.to_path_buf(),
                message,
            },
            PolicyError::Invalid { key, message, .. } => PolicyError::Invalid {
                path: file.to_path_buf(),
                key,
                message,
            },
        }
    }
}

/// The source URI a policy matches: `externalParameters.source.uri` (git and tarball
/// sources), else the `uri` of the resolved dependency named `source` (local sources, whose
/// external parameters carry a path and a tree digest but no URI). Both are signed.
fn source_uri(statement: &Statement) -> Option<(&'static str, &str)> {
    let build = &statement.predicate.build_definition;
    if let Some(uri) = build
        .external_parameters
        .pointer("/source/uri")
        .and_then(Value::as_str)
    {
        return Some(("externalParameters.source.uri", uri));
    }
    build
        .resolved_dependencies
        .iter()
        .find(|d| d.name.as_deref() == Some("source"))
        .and_then(|d| d.uri.as_deref())
        .map(|u| ("resolvedDependencies \"source\" uri", u))
}

fn sha256_of(dep: &ResourceDescriptor) -> Option<String> {
    dep.digest.get("sha256").map(|s| s.to_ascii_lowercase())
}

fn describe(dep: &ResourceDescriptor) -> String {
    match (&dep.name, &dep.uri) {
        (Some(n), Some(u)) => format!("{} ({})", quote(n), quote(u)),
        (Some(n), None) => quote(n),
        (None, Some(u)) => quote(u),
        (None, None) => "(unnamed)".to_string(),
    }
}

fn list(items: &[String]) -> String {
    format!(
        "[{}]",
        items
            .iter()
            .map(|s| quote(s))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// A JSON value from the statement, quoted and bounded, or `absent`.
fn shown(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "absent".to_string(),
        Some(Value::String(s)) => quote(s),
        Some(other) => quote(&other.to_string()),
    }
}

fn whole_seconds(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_secs(d.as_secs()))
}

/// Parses `max_age`: the duration forms of job specs (`90s`, `10m`, `1h30m`) plus a leading
/// days group (`30d`, `1d12h`), since provenance ages are naturally counted in days.
pub fn parse_age(s: &str) -> Result<Duration, String> {
    const FORMS: &str = "forms like 90s, 10m, 1h, 30d or 1d12h (units d, h, m, s, ms)";
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    let (days, rest, had_days) = match s[digits..].strip_prefix('d') {
        Some(rest) if digits > 0 => {
            let n: u64 = s[..digits]
                .parse()
                .map_err(|_| format!("{} is too large", quote(s)))?;
            let secs = n
                .checked_mul(86_400)
                .ok_or_else(|| format!("{} is too large", quote(s)))?;
            (Duration::from_secs(secs), rest, true)
        }
        _ => (Duration::ZERO, s, false),
    };
    let more = if rest.is_empty() && had_days {
        Duration::ZERO
    } else {
        bulwark_protocol::parse_duration(rest)
            .map_err(|_| format!("{} is not a duration; use {FORMS}", quote(s)))?
    };
    let total = days
        .checked_add(more)
        .ok_or_else(|| format!("{} is too large", quote(s)))?;
    if total.is_zero() {
        return Err(format!("{} is zero; use {FORMS}", quote(s)));
    }
    Ok(total)
}

/// Glob match over the whole of `text`: `*` matches any run of characters including `/`, `?`
/// exactly one character; everything else matches itself. (Unlike output globs, a URI is not
/// a path in a tree we walk, so `*` deliberately crosses `/`: `https://git.example.com/org/*`
/// covers every repository of the organisation.)
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    crate::glob::wildcard_matches(pattern, text)
}

/// One line from a TOML error: `line L, column C: message`.
fn toml_message(text: &str, e: &toml::de::Error) -> String {
    let message = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    match e.span() {
        Some(span) => {
            let start = span.start.min(text.len());
            let start = (0..=start)
                .rev()
                .find(|i| text.is_char_boundary(*i))
                .unwrap_or(0);
            let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
            let line = text[..start].matches('\n').count() + 1;
            let column = text[line_start..start].chars().count() + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provenance::statement::{
        BuildDefinition, BuildMetadata, Builder, Provenance, RunDetails,
    };
    use serde_json::json;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const C: &str = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

    fn statement() -> Statement {
        Statement {
            type_: crate::provenance::statement::STATEMENT_TYPE.into(),
            subject: vec![ResourceDescriptor::sha256(Some("app".into()), None, A)],
            predicate_type: crate::provenance::statement::SLSA_PROVENANCE_V1.into(),
            predicate: Provenance {
                build_definition: BuildDefinition {
                    build_type: crate::provenance::statement::BUILD_TYPE.into(),
                    external_parameters: json!({
                        "source": { "uri": "https://git.example.com/org/app.git", "ref": "refs/heads/main" },
                        "job": { "path": "job.toml", "sha256": A },
                        "trust": "trusted",
                    }),
                    internal_parameters: json!({
                        "isolation": { "mode": "subuid" },
                        "weakened": [],
                    }),
                    resolved_dependencies: vec![
                        ResourceDescriptor::sha256(
                            Some("source".into()),
                            Some("git+https://git.example.com/org/app.git".into()),
                            A,
                        ),
                        ResourceDescriptor::sha256(
                            Some("jq".into()),
                            Some("https://example.org/jq.tgz".into()),
                            B,
                        ),
                    ],
                },
                run_details: RunDetails {
                    builder: Builder {
                        id: "https://ci.example.com/pool-a".into(),
                        version: Default::default(),
                        builder_dependencies: vec![ResourceDescriptor::sha256(
                            Some("bulwark".into()),
                            None,
                            C,
                        )],
                    },
                    metadata: BuildMetadata {
                        invocation_id: "1".into(),
                        started_on: "2030-01-01T00:00:00Z".into(),
                        finished_on: "2030-01-01T00:00:10Z".into(),
                    },
                    byproducts: vec![],
                },
            },
        }
    }

    fn now() -> SystemTime {
        humantime::parse_rfc3339("2030-01-01T01:00:00Z").unwrap()
    }

    fn rejection(policy: &str, st: &Statement) -> String {
        let p = Policy::from_toml_str(policy).unwrap();
        p.check(st, now()).unwrap_err().to_string()
    }

    #[test]
    fn an_unknown_field_is_an_error_naming_the_field_and_its_line() {
        let e = Policy::from_toml_str("builder_ids = [\"x\"]\nbuilder_id = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 2, column 1") && e.contains("unknown field `builder_id`"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn values_that_can_never_be_right_are_errors_naming_the_key() {
        for (text, want) in [
            (
                "builder_ids = []",
                "builder_ids: an empty list rejects everything",
            ),
            (
                "require_trust = \"yes\"",
                "require_trust: \"yes\" is not a trust level",
            ),
            (
                "require_isolation = [\"chroot\"]",
                "require_isolation: \"chroot\" is not an isolation mode",
            ),
            (
                "quarantined_digests = [\"abc\"]",
                "quarantined_digests: \"abc\" is not a sha256 digest",
            ),
            (
                "allowed_dependency_digests = [\"xyz\"]",
                "allowed_dependency_digests: \"xyz\"",
            ),
            (
                "max_age = \"30 days\"",
                "max_age: \"30 days\" is not a duration",
            ),
            ("max_age = \"0s\"", "max_age: \"0s\" is zero"),
            ("max_age = \"0d\"", "max_age: \"0d\" is zero"),
            ("forbid_weakened = \"no\"", "invalid type"),
        ] {
            let e = Policy::from_toml_str(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn an_empty_policy_only_forbids_weakened_builds() {
        let p = Policy::from_toml_str("").unwrap();
        assert_eq!(p, Policy::default());
        assert!(p.forbid_weakened);
        assert!(p.check(&statement(), now()).is_ok());
    }

    #[test]
    fn ages_count_days_hours_minutes_and_seconds() {
        assert_eq!(parse_age("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_age("1d12h"), Ok(Duration::from_secs(36 * 3_600)));
        assert_eq!(parse_age("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_age("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_age("1h"), Ok(Duration::from_secs(3_600)));
        for bad in [
            "",
            "d",
            "30",
            "1.5d",
            "-1d",
            "1h1d",
            "1dd",
            "99999999999999999999d",
        ] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn star_crosses_slashes_and_question_mark_is_one_character() {
        assert!(glob_matches(
            "https://git.example.com/org/*",
            "https://git.example.com/org/a/b.git"
        ));
        assert!(!glob_matches(
            "https://git.example.com/org/*",
            "https://git.example.com/other/a"
        ));
        assert!(glob_matches("refs/tags/v*", "refs/tags/v1.2.3"));
        assert!(!glob_matches("refs/tags/v*", "refs/heads/v1"));
        assert!(glob_matches("refs/heads/main", "refs/heads/main"));
        assert!(!glob_matches("refs/heads/main", "refs/heads/main2"));
        assert!(glob_matches("v?.0", "v1.0") && glob_matches("v?.0", "vé.0"));
        assert!(!glob_matches("v?.0", "v10.0"));
        assert!(glob_matches("*", "") && !glob_matches("?", ""));
        assert!(glob_matches("a*b*c", "aXbYbZc") && !glob_matches("a*b*c", "aXbY"));
        // Adversarial input stays fast (no exponential backtracking).
        let long = "a".repeat(5_000);
        assert!(!glob_matches("*a*a*a*a*a*b", &long));
    }

    #[test]
    fn each_check_rejects_naming_itself_and_the_values_seen() {
        let st = statement();
        let cases = [
            ("builder_ids = [\"https://other\"]", "builder_ids: runDetails.builder.id is \"https://ci.example.com/pool-a\", not one of [\"https://other\"]"),
            ("source_uris = [\"https://git.example.com/other/*\"]", "source_uris: externalParameters.source.uri is \"https://git.example.com/org/app.git\", which matches none of [\"https://git.example.com/other/*\"]"),
            ("source_refs = [\"refs/tags/v*\"]", "source_refs: externalParameters.source.ref is \"refs/heads/main\", which matches none of [\"refs/tags/v*\"]"),
            ("require_isolation = [\"root-per-job-uid\"]", "require_isolation: internalParameters.isolation.mode is \"subuid\", not one of [\"root-per-job-uid\"]"),
            (&format!("allowed_dependency_digests = [\"{A}\"]"), &format!("allowed_dependency_digests: resolvedDependencies \"jq\" (\"https://example.org/jq.tgz\") has sha256 {B}, which is not in the allowed list")),
            (&format!("quarantined_digests = [\"{C}\"]"), &format!("quarantined_digests: builderDependencies \"bulwark\" has quarantined sha256 {C}")),
            (&format!("quarantined_digests = [\"{}\"]", B.to_uppercase()), &format!("quarantined_digests: resolvedDependencies \"jq\" (\"https://example.org/jq.tgz\") has quarantined sha256 {B}")),
            ("max_age = \"30m\"", "max_age: finished 59m 50s ago (runDetails.metadata.finishedOn 2030-01-01T00:00:10Z), more than max_age 30m"),
        ];
        for (policy, want) in cases {
            assert_eq!(rejection(policy, &st), want, "{policy}");
        }
        let accept = format!(
            "builder_ids = [\"https://ci.example.com/pool-a\"]\nsource_uris = [\"https://git.example.com/org/*\"]\n\
             source_refs = [\"refs/heads/main\"]\nrequire_trust = \"trusted\"\nrequire_isolation = [\"subuid\"]\n\
             allowed_dependency_digests = [\"{B}\"]\nquarantined_digests = [\"{}\"]\nmax_age = \"2h\"\n",
            "d".repeat(64)
        );
        Policy::from_toml_str(&accept)
            .unwrap()
            .check(&st, now())
            .unwrap();
    }

    #[test]
    fn trust_is_checked_and_untrusted_accepts_both_levels() {
        let mut st = statement();
        assert!(Policy::from_toml_str("require_trust = \"untrusted\"")
            .unwrap()
            .check(&st, now())
            .is_ok());
        st.predicate.build_definition.external_parameters["trust"] = json!("untrusted");
        assert_eq!(
            rejection("require_trust = \"trusted\"", &st),
            "require_trust: externalParameters.trust is \"untrusted\", the policy requires \"trusted\""
        );
        assert!(Policy::from_toml_str("require_trust = \"untrusted\"")
            .unwrap()
            .check(&st, now())
            .is_ok());
        st.predicate.build_definition.external_parameters["trust"] = json!("root");
        assert!(rejection("require_trust = \"untrusted\"", &st)
            .starts_with("require_trust: externalParameters.trust is \"root\""));
    }

    #[test]
    fn absent_fields_reject_rather_than_pass() {
        let mut st = statement();
        let ext = &mut st.predicate.build_definition.external_parameters;
        ext["source"] = json!({ "path": "/src", "treeDigest": A });
        ext.as_object_mut().unwrap().remove("trust");
        let int = &mut st.predicate.build_definition.internal_parameters;
        int["isolation"] = Value::Null;
        int.as_object_mut().unwrap().remove("weakened");
        // A local source: the uri comes from the signed "source" dependency.
        assert_eq!(
            rejection("source_uris = [\"file:///*\"]", &st),
            "source_uris: resolvedDependencies \"source\" uri is \"git+https://git.example.com/org/app.git\", which matches none of [\"file:///*\"]"
        );
        assert!(rejection("source_refs = [\"*\"]", &st)
            .starts_with("source_refs: the statement has no externalParameters.source.ref"));
        assert_eq!(rejection("require_trust = \"untrusted\"", &st), "require_trust: externalParameters.trust is absent, the policy requires \"trusted\" or \"untrusted\"");
        assert_eq!(rejection("forbid_weakened = false\nrequire_isolation = [\"subuid\"]", &st), "require_isolation: internalParameters.isolation.mode is absent, not one of [\"subuid\"]");
        assert_eq!(
            rejection("", &st),
            "forbid_weakened: internalParameters.weakened is absent, expected an empty list"
        );
        st.predicate.build_definition.resolved_dependencies.clear();
        assert!(
            rejection("forbid_weakened = false\nsource_uris = [\"*\"]", &st)
                .starts_with("source_uris: the statement names no source uri")
        );
        st.predicate.run_details.metadata.finished_on = "yesterday".into();
        assert_eq!(rejection("forbid_weakened = false\nmax_age = \"1d\"", &st), "max_age: runDetails.metadata.finishedOn \"yesterday\" is not an RFC 3339 UTC timestamp");
    }

    #[test]
    fn weakened_builds_are_rejected_by_default_and_accepted_when_allowed() {
        let mut st = statement();
        st.predicate.build_definition.internal_parameters["weakened"] = json!(["seccomp"]);
        assert_eq!(
            rejection("", &st),
            "forbid_weakened: internalParameters.weakened lists [\"seccomp\"]; set forbid_weakened = false to accept weakened builds"
        );
        assert!(Policy::from_toml_str("forbid_weakened = false")
            .unwrap()
            .check(&st, now())
            .is_ok());
    }

    #[test]
    fn a_dependency_without_a_digest_fails_pinning_and_the_source_is_exempt() {
        let mut st = statement();
        st.predicate.build_definition.resolved_dependencies[1]
            .digest
            .clear();
        assert_eq!(
            rejection(&format!("allowed_dependency_digests = [\"{B}\"]"), &st),
            "allowed_dependency_digests: resolvedDependencies \"jq\" (\"https://example.org/jq.tgz\") has no sha256 digest"
        );
        st.predicate
            .build_definition
            .resolved_dependencies
            .truncate(1);
        assert!(Policy::from_toml_str("allowed_dependency_digests = []")
            .unwrap()
            .check(&st, now())
            .is_ok());
    }

    #[test]
    fn a_statement_dated_in_the_future_beyond_clock_skew_fails_max_age() {
        let mut st = statement();
        st.predicate.run_details.metadata.finished_on = "2030-01-01T01:04:00Z".into();
        assert!(Policy::from_toml_str("max_age = \"1h\"")
            .unwrap()
            .check(&st, now())
            .is_ok());
        st.predicate.run_details.metadata.finished_on = "2030-01-02T00:00:00Z".into();
        assert_eq!(
            rejection("max_age = \"1h\"", &st),
            "max_age: runDetails.metadata.finishedOn 2030-01-02T00:00:00Z is 23h in the future"
        );
    }
}
