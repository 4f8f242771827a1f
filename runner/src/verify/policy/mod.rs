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

/// Largest policy file read (a policy is a few lines; a long digest list is a few KiB).
pub const MAX_POLICY_BYTES: u64 = 1 << 20;

/// Whether `k` is a key id as the runner writes them: `sha256:` and 64 lowercase hex digits.
pub fn is_keyid(k: &str) -> bool {
    k.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The isolation modes a runner records (`result.json`, `internalParameters.isolation.mode`).
pub const ISOLATION_MODES: [&str; 3] = ["root-per-job-uid", "subuid", "rootless-single-uid"];

/// The policy file as written, before validation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    builder_ids: Option<Vec<String>>,
    builder_keys: Option<std::collections::BTreeMap<String, Vec<String>>>,
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
    /// Which keys (by key id) may sign for which `runDetails.builder.id`: a statement whose
    /// builder id is not here, or that no key bound to it signed, is rejected.
    pub builder_keys: Option<std::collections::BTreeMap<String, Vec<String>>>,
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
            builder_keys: None,
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
    /// Reads and validates a policy file: a regular file (a fifo is refused, not waited on) of
    /// at most [`MAX_POLICY_BYTES`], so that `--policy /dev/zero` neither fills memory nor hangs.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let bytes =
            crate::fsutil::read_regular_capped(path, MAX_POLICY_BYTES).map_err(|source| {
                PolicyError::Read {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
        let text = String::from_utf8(bytes).map_err(|e| PolicyError::Read {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error()),
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
        if let Some(bound) = &raw.builder_keys {
            if bound.is_empty() {
                return Err(invalid(
                    "builder_keys",
                    "an empty table rejects everything; remove the key to bind no builder to a key"
                        .into(),
                ));
            }
            for (builder, keyids) in bound {
                if keyids.is_empty() {
                    return Err(invalid(
                        "builder_keys",
                        format!(
                            "{}: an empty list rejects everything it builds; name its key ids",
                            quote(builder)
                        ),
                    ));
                }
                if let Some(bad) = keyids.iter().find(|k| !is_keyid(k)) {
                    return Err(invalid(
                        "builder_keys",
                        format!(
                            "{}: {} is not a key id; use \"sha256:\" and 64 lowercase hex \
                             digits, as `bulwark keygen` prints and every signature carries",
                            quote(builder),
                            quote(bad)
                        ),
                    ));
                }
            }
        }
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
            builder_keys: raw.builder_keys,
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
    ///
    /// `signers` are the key ids of the trusted keys whose signatures on the statement's
    /// envelope verified (what `builder_keys` judges).
    pub fn check(
        &self,
        statement: &Statement,
        signers: &[String],
        now: SystemTime,
    ) -> Result<(), Rejection> {
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

        if let Some(bound) = &self.builder_keys {
            check_builder_keys(bound, &run.builder.id, signers)?;
        }

        if let Some(globs) = &self.source_uris {
            let Some((field, uri)) = source_uri(statement) else {
                return Err(Rejection::new(
                    "source_uris",
                    "the statement names no source uri (neither externalParameters.source.uri \
                     nor, for a local source, a resolvedDependencies entry named \"source\" \
                     with uri file://<externalParameters.source.path>)",
                ));
            };
            // Parsed first: every later check, and the glob, judge a URL the runner could have
            // fetched. One that does not parse (`https://evil.com:1.git.example.com/x` has a
            // port that is not a number) would otherwise match as text.
            let parsed = match reqwest::Url::parse(uri) {
                Ok(parsed) => parsed,
                Err(e) => {
                    return Err(Rejection::new(
                        "source_uris",
                        format!(
                            "{field} is {}, which does not parse as a URL ({e}): the runner \
                             fetches only URLs that parse, so it matches nothing",
                            quote(uri)
                        ),
                    ))
                }
            };
            if has_dot_segment(uri) {
                return Err(Rejection::new(
                    "source_uris",
                    format!(
                        "{field} is {}, which has a \".\" or \"..\" segment: the runner fetched \
                         the URI with those segments resolved, so no glob can say where from",
                        quote(uri)
                    ),
                ));
            }
            if has_encoded_separator(uri) {
                return Err(Rejection::new(
                    "source_uris",
                    format!(
                        "{field} is {}, which has a percent-encoded \"/\" or \"\\\" (%2f, %5c) \
                         in its path: a server that decodes it reads other segments than the \
                         glob saw, so no glob can say where from",
                        quote(uri)
                    ),
                ));
            }
            if let Some(normal) = unnormalized(field, uri, &parsed) {
                return Err(Rejection::new(
                    "source_uris",
                    format!(
                        "{field} is {}, which the runner fetched as {}: only a URI in that \
                         normalized form is matched",
                        quote(uri),
                        quote(&normal)
                    ),
                ));
            }
            if !globs.iter().any(|g| uri_glob_matches(g, uri)) {
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
                    "the statement has no externalParameters.source.ref (local and url \
                     (tarball) sources have none)",
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
            let source = source_dependency(statement);
            for dep in &build.resolved_dependencies {
                if source.is_some_and(|s| std::ptr::eq(s, dep)) {
                    continue;
                }
                match sha256_of(dep) {
                    Some(sha) if allowed.contains(&sha) => {}
                    Some(sha) => {
                        return Err(Rejection::new(
                            "allowed_dependency_digests",
                            format!(
                                "resolvedDependencies {} has sha256 {}, which is not in the \
                                 allowed list",
                                describe(dep),
                                shown_digest(&sha)
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

/// The `builder_keys` check on its own: `builder_id` must be a key of `bound` and one of its key
/// ids among `signers` (the key ids of the trusted keys whose signatures verified). `bulwark
/// inventory add --builder-keys` applies this and no other policy key.
pub fn check_builder_keys(
    bound: &std::collections::BTreeMap<String, Vec<String>>,
    builder_id: &str,
    signers: &[String],
) -> Result<(), Rejection> {
    let Some(keyids) = bound.get(builder_id) else {
        return Err(Rejection::new(
            "builder_keys",
            format!(
                "runDetails.builder.id is {}, which builder_keys binds to no key; \
                 add it to [builder_keys] with its key ids if that builder is trusted",
                quote(builder_id)
            ),
        ));
    };
    if !signers.iter().any(|s| keyids.contains(s)) {
        return Err(Rejection::new(
            "builder_keys",
            format!(
                "runDetails.builder.id is {}, whose keys are {}, but the statement is \
                 signed by {}: another builder's key cannot speak for it",
                quote(builder_id),
                keyid_list(keyids),
                keyid_list(signers)
            ),
        ));
    }
    Ok(())
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
/// sources), else the `uri` of the source dependency (local sources, whose external parameters
/// carry a path and a tree digest but no URI). Both are signed.
fn source_uri(statement: &Statement) -> Option<(&'static str, &str)> {
    let build = &statement.predicate.build_definition;
    if let Some(uri) = build
        .external_parameters
        .pointer("/source/uri")
        .and_then(Value::as_str)
    {
        return Some(("externalParameters.source.uri", uri));
    }
    source_dependency(statement)
        .and_then(|d| d.uri.as_deref())
        .map(|u| ("resolvedDependencies \"source\" uri", u))
}

/// The resolved dependency that is the build's source: the first entry named `source` whose
/// `uri` is the one `externalParameters.source` implies (`<uri>` for an archive, `git+<uri>`
/// for git, `file://<path>` for a local directory; see `docs/build-type.md`).
///
/// The name alone does not identify it: a job may name a tool `source`, and the runner records
/// every tool under its own name, so a statement can hold several entries named `source`, or
/// (for a job without a source) only a tool of that name. Only the entry tied to the signed
/// external parameters is exempt from pinning or read as the source.
fn source_dependency(statement: &Statement) -> Option<&ResourceDescriptor> {
    let build = &statement.predicate.build_definition;
    let source = build.external_parameters.get("source")?;
    let text = |key: &str| source.get(key).and_then(Value::as_str);
    let expected: Vec<String> = match (text("uri"), text("path")) {
        (Some(uri), _) => vec![uri.to_string(), format!("git+{uri}")],
        (None, Some(path)) => vec![format!("file://{path}")],
        (None, None) => return None,
    };
    build.resolved_dependencies.iter().find(|d| {
        d.name.as_deref() == Some("source") && d.uri.as_ref().is_some_and(|u| expected.contains(u))
    })
}

/// The `url` crate's serialization of a URI the job gave (`externalParameters.source.uri`),
/// `parsed`, when it differs from the text: the runner's fetchers act on the serialization, so
/// a glob over the text would judge one location while the source came from another
/// (`https://evil.example\.example.com/` is fetched from `evil.example`). The `file://` URI of
/// a local source is the runner's own canonical path and is taken as written.
fn unnormalized(field: &str, uri: &str, parsed: &reqwest::Url) -> Option<String> {
    (field == "externalParameters.source.uri" && parsed.as_str() != uri).then(|| parsed.to_string())
}

/// [`glob_matches`] with the host kept apart: when the pattern has a `scheme://host` part
/// followed by a path, that part must match the URI's `scheme://host` on its own, so a `*` in
/// the host (`https://*.example.com/*`) cannot run on into the path and match
/// `https://evil.example/x.example.com/repo`. A pattern without a path after its host (`*`,
/// `https://*`) matches the whole text, as before.
pub fn uri_glob_matches(pattern: &str, uri: &str) -> bool {
    match (split_host(pattern), split_host(uri)) {
        (Some((p_host, p_rest)), Some((u_host, u_rest))) => {
            glob_matches(p_host, u_host) && glob_matches(p_rest, u_rest)
        }
        (Some(_), None) => false,
        (None, _) => glob_matches(pattern, uri),
    }
}

/// `scheme://authority` and the rest from the first `/`, `\`, `?` or `#` after it (each ends
/// the authority for the `url` crate), when there is a rest.
fn split_host(s: &str) -> Option<(&str, &str)> {
    let start = s.find("://")? + 3;
    let end = start + s[start..].find(['/', '\\', '?', '#'])?;
    Some(s.split_at(end))
}

/// Whether `uri` has a `.` or `..` path segment, counting `\` as a separator and `%2e` as a
/// dot, as the `url` crate does for the special schemes. The runner fetches the `url` crate's
/// normalized form of a source URI but records the text the job gave, so
/// `https://host/org/../other/repo` is fetched from `other` while it would match
/// `https://host/org/*`. A URI with such a segment never matches.
fn has_dot_segment(uri: &str) -> bool {
    uri.split(['/', '\\']).any(|segment| {
        let s = segment.to_ascii_lowercase().replace("%2e", ".");
        s == "." || s == ".."
    })
}

/// Whether the path of `uri` (after `scheme://authority`, up to a `?` or `#`) has a segment that percent-decodes to one holding `/` or `\` (`%2f`, `%5c`, any case).
///
/// The `url` crate keeps such escapes as they are, so `https://host/org/..%2Fevil/repo` is in
/// normal form and matches `https://host/org/*` as text; but a server that decodes `%2f`
/// before resolving dot segments (some web servers and proxies do) serves `/evil/repo`. Which
/// servers do is not something a verifier can know, so such a URI never matches. The cost: a
/// source whose path holds an escaped slash on purpose (GitLab's API names a project
/// `group%2Fproject`) cannot be allowed by `source_uris`. `%2f` in the query is left to the
/// glob, as every other escape is.
fn has_encoded_separator(uri: &str) -> bool {
    let path = match uri.find("://") {
        Some(i) => {
            let rest = &uri[i + 3..];
            &rest[rest.find(['/', '\\', '?', '#']).unwrap_or(rest.len())..]
        }
        None => uri,
    };
    let path = path.split(['?', '#']).next().unwrap_or("");
    path.as_bytes().windows(3).any(|w| {
        w[0] == b'%'
            && matches!(
                (w[1], w[2].to_ascii_lowercase()),
                (b'2', b'f') | (b'5', b'c')
            )
    })
}

fn sha256_of(dep: &ResourceDescriptor) -> Option<String> {
    dep.digest.get("sha256").map(|s| s.to_ascii_lowercase())
}

/// A digest from the statement for a message: as it is when it is 64 hex digits, else quoted
/// and cut like any other value from the statement (nothing bounds what a digest field holds).
fn shown_digest(sha: &str) -> String {
    if sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        sha.to_string()
    } else {
        quote(sha)
    }
}

fn describe(dep: &ResourceDescriptor) -> String {
    match (&dep.name, &dep.uri) {
        (Some(n), Some(u)) => format!("{} ({})", quote(n), quote(u)),
        (Some(n), None) => quote(n),
        (None, Some(u)) => quote(u),
        (None, None) => "(unnamed)".to_string(),
    }
}

/// Key ids, whole (fixed-length text checked when read or computed by the runner: there is
/// nothing to bound, and a cut key id is useless to the operator).
fn keyid_list(keyids: &[String]) -> String {
    format!("[{}]", keyids.join(", "))
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
        bulwark_protocol::parse_duration(rest).map_err(|e| {
            // Its one message for a number or sum past what it holds (u64 milliseconds); every
            // other message is about the form, which FORMS (with days) says better.
            if e.ends_with(" is too large for a duration") {
                format!("{} is too large", quote(s))
            } else {
                format!("{} is not a duration; use {FORMS}", quote(s))
            }
        })?
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
mod tests;
