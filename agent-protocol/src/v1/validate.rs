//! The semantic rules of a job spec, checked all at once.
//!
//! Validation never stops at the first problem: a user fixing a spec should see every error in
//! one run, in document order (the order of the sections in the spec format). Each rule is a
//! small function writing [`FieldError`](crate::FieldError)s with the field's path.
//!
//! Ceilings come from the operator's [`LimitsConfig`]. An explicit request above a ceiling is
//! refused rather than lowered, because a job that silently gets less than it asked for fails
//! later in a way that is much harder to understand. Defaults, by contrast, are lowered to the
//! ceiling: a spec that asks for nothing never fails for asking too much.

use std::collections::BTreeMap;
use std::time::Duration;

use super::allow::AllowEntry;
use super::config::LimitsConfig;
use super::job::*;
use super::rules::{
    check_commit, check_env_key, check_name, check_sha256, check_source_url, check_url, key_segment,
};
use crate::error::{quote, Errors, SpecError};
use crate::units::{
    cpu_millis, format_cpus, format_duration, format_size, parse_duration, parse_size,
};

/// Longest `run` command; the kernel refuses a single argument over 128KiB at exec.
pub const MAX_RUN_BYTES: usize = 64 << 10;

pub(super) fn validate(spec: &JobSpec, limits: &LimitsConfig) -> Result<ValidatedJob, SpecError> {
    let mut errors = Errors::default();
    if spec.version != SUPPORTED_VERSION {
        errors.push("version", unsupported_version(spec.version));
    }
    errors.take("name", check_name(&spec.name));
    if let Some(source) = &spec.source {
        check_source(source, &mut errors);
    }
    check_tools(&spec.tools, &mut errors);
    check_credentials(&spec.credentials, &mut errors);
    check_caches(&spec.caches, &mut errors);
    if let Some(rootfs) = &spec.rootfs {
        let url_ok = errors.take("rootfs.url", check_url(&rootfs.url)).is_some();
        errors.take("rootfs.sha256", check_sha256(&rootfs.sha256));
        let format = rootfs.format.or_else(|| ToolFormat::infer(&rootfs.url));
        match format {
            Some(ToolFormat::File) => errors.push("rootfs.format", "a root filesystem must be an archive: \"tar.gz\", \"tar.xz\" or \"zip\""),
            None if url_ok => errors.push("rootfs.format", "cannot tell the format from the URL; set format to \"tar.gz\", \"tar.xz\" or \"zip\""),
            _ => {}
        }
    }
    if let Some(network) = &spec.network {
        check_network(network, &mut errors);
    }
    let resources = check_resources(&spec.resources, limits, &mut errors);
    let mut steps = check_steps(&spec.steps, &resources, &mut errors);
    scope_credentials(spec, &mut steps, &mut errors);
    let output_patterns = check_outputs(&spec.outputs, &mut errors);
    SpecError::check(
        errors.list,
        ValidatedJob {
            spec: spec.clone(),
            timeout: resources.timeout.unwrap_or(DEFAULT_TIMEOUT),
            memory: resources.memory.unwrap_or(DEFAULT_MEMORY),
            pids: resources.pids.unwrap_or(DEFAULT_PIDS),
            cpus: resources.cpus,
            disk: resources.disk,
            steps,
            output_patterns,
        },
    )
}

pub(super) fn unsupported_version(version: impl std::fmt::Display) -> String {
    format!("unsupported version {version}; this runner reads version {SUPPORTED_VERSION}")
}

fn check_source(source: &SourceSpec, errors: &mut Errors) {
    let kinds = [&source.path, &source.git, &source.url]
        .iter()
        .filter(|v| v.is_some())
        .count();
    if kinds > 1 {
        errors.push("source", "give at most one of path, git or url");
    } else if kinds == 0 {
        errors.push(
            "source",
            "give one of path, git or url, or leave out [source] to use --source",
        );
    }
    if let Some(path) = &source.path {
        if path.is_empty() {
            errors.push(
                "source.path",
                "must not be empty (use \".\" for the spec's directory)",
            );
        } else if path.contains('\0') {
            errors.push("source.path", "must not contain NUL");
        }
    }
    if let Some(git) = &source.git {
        errors.take("source.git", check_source_url(git));
        if source.commit.is_none() {
            errors.push(
                "source.commit",
                "required with source.git; pin the full 40-digit commit id",
            );
        }
    }
    if let Some(commit) = &source.commit {
        if source.git.is_none() {
            errors.push("source.commit", "only valid with source.git");
        }
        errors.take("source.commit", check_commit(commit));
    }
    if let Some(git_ref) = &source.r#ref {
        if source.git.is_none() {
            errors.push("source.ref", "only valid with source.git");
        }
        errors.take("source.ref", check_git_ref(git_ref));
    }
    if let Some(url) = &source.url {
        errors.take("source.url", check_source_url(url));
        if source.sha256.is_none() {
            errors.push(
                "source.sha256",
                "required with source.url; give the archive's sha256",
            );
        }
    }
    if let Some(sha256) = &source.sha256 {
        if source.url.is_none() {
            errors.push("source.sha256", "only valid with source.url");
        }
        errors.take("source.sha256", check_sha256(sha256));
    }
}

/// A light check of a git ref: enough to keep it from being read as an option or a range.
fn check_git_ref(git_ref: &str) -> Result<(), String> {
    let bad = git_ref.is_empty()
        || git_ref.len() > 255
        || git_ref.starts_with('-')
        || git_ref.contains("..")
        || git_ref
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "~^:?*[\\".contains(c));
    if bad {
        Err(format!(
            "{} is not a valid git ref, like refs/heads/main",
            quote(git_ref)
        ))
    } else {
        Ok(())
    }
}

fn check_caches(caches: &[CacheSpec], errors: &mut Errors) {
    if caches.len() > MAX_CACHES {
        errors.push(
            "caches",
            format!("{} caches; at most {MAX_CACHES} are allowed", caches.len()),
        );
    }
    let mut seen = BTreeMap::new();
    for (i, cache) in caches.iter().enumerate() {
        let path = format!("caches[{i}].name");
        if errors.take(&path, check_name(&cache.name)).is_some() {
            if let Some(first) = seen.insert(cache.name.as_str(), i) {
                seen.insert(cache.name.as_str(), first);
                let message = format!(
                    "duplicate cache name {} (also caches[{first}])",
                    quote(&cache.name)
                );
                errors.push(path, message);
            }
        }
    }
}

fn check_tools(tools: &[ToolSpec], errors: &mut Errors) {
    if tools.len() > MAX_TOOLS {
        errors.push(
            "tools",
            format!("{} tools; at most {MAX_TOOLS} are allowed", tools.len()),
        );
    }
    let mut seen = BTreeMap::new();
    for (i, tool) in tools.iter().enumerate() {
        let path = format!("tools[{i}]");
        if errors
            .take(&format!("{path}.name"), check_name(&tool.name))
            .is_some()
        {
            if RESERVED_TOOL_NAMES.contains(&tool.name.as_str()) {
                let message = format!(
                    "{} is reserved: provenance lists the job's source and root filesystem under \
                     that name among the tools; rename the tool",
                    quote(&tool.name)
                );
                errors.push(format!("{path}.name"), message);
            }
            if let Some(first) = seen.insert(tool.name.as_str(), i) {
                seen.insert(tool.name.as_str(), first);
                let message = format!(
                    "duplicate tool name {} (also tools[{first}])",
                    quote(&tool.name)
                );
                errors.push(format!("{path}.name"), message);
            }
        }
        let url_ok = errors
            .take(&format!("{path}.url"), check_url(&tool.url))
            .is_some();
        errors.take(&format!("{path}.sha256"), check_sha256(&tool.sha256));
        if url_ok && tool.effective_format().is_none() {
            errors.push(
                format!("{path}.format"),
                "cannot tell the format from the URL; set format to \"tar.gz\", \"tar.xz\", \"zip\" or \"file\"",
            );
        }
    }
}

/// Names a tool may not have: `resolvedDependencies` in provenance holds the source and the
/// root filesystem under these names beside the tools, and a verifier must never take a tool
/// for either (or exempt it from pinning as if it were the source).
const RESERVED_TOOL_NAMES: &[&str] = &["source", "rootfs"];

fn check_credentials(names: &[String], errors: &mut Errors) {
    if names.len() > MAX_CREDENTIALS {
        let message = format!(
            "{} names; at most {MAX_CREDENTIALS} are allowed",
            names.len()
        );
        errors.push("credentials", message);
    }
    for (i, name) in names.iter().enumerate() {
        let path = format!("credentials[{i}]");
        if errors.take(&path, check_name(name)).is_some() {
            if let Some(first) = names[..i].iter().position(|n| n == name) {
                errors.push(
                    path,
                    format!(
                        "duplicate credential {} (also credentials[{first}])",
                        quote(name)
                    ),
                );
            }
        }
    }
}

fn check_network(network: &NetworkSpec, errors: &mut Errors) {
    if network.allow.len() > MAX_ALLOW_ENTRIES {
        let message = format!(
            "{} entries; at most {MAX_ALLOW_ENTRIES} are allowed",
            network.allow.len()
        );
        errors.push("network.allow", message);
    }
    for (i, entry) in network.allow.iter().enumerate() {
        errors.take(&format!("network.allow[{i}]"), AllowEntry::parse(entry));
    }
}

/// Resolved resources; `None` where the value was refused.
struct Resources {
    timeout: Option<Duration>,
    timeout_was_default: bool,
    memory: Option<u64>,
    pids: Option<u64>,
    cpus: Option<u64>,
    disk: Option<u64>,
}

fn check_resources(r: &ResourcesSpec, limits: &LimitsConfig, errors: &mut Errors) -> Resources {
    let above = |value: String, ceiling: String, key: &str| {
        format!("{value} is above the operator's ceiling of {ceiling} (limits.{key})")
    };
    let timeout = match &r.timeout {
        None => Some(DEFAULT_TIMEOUT.min(limits.max_timeout)),
        Some(text) => errors
            .take("resources.timeout", parse_duration(text))
            .and_then(|t| {
                let problem = if t.is_zero() {
                    Some("must be greater than zero".to_owned())
                } else if t > limits.max_timeout {
                    Some(above(
                        format_duration(t),
                        format_duration(limits.max_timeout),
                        "max_timeout",
                    ))
                } else {
                    None
                };
                problem.map_or(Some(t), |p| errors.take("resources.timeout", Err(p)))
            }),
    };
    let memory = match &r.memory {
        None => Some(DEFAULT_MEMORY.min(limits.max_memory)),
        Some(text) => errors
            .take("resources.memory", parse_size(text))
            .and_then(|m| {
                let problem = if m == 0 {
                    Some("must be greater than zero".to_owned())
                } else if m < MIN_MEMORY {
                    Some(format!(
                        "{} is below the minimum of {}",
                        format_size(m),
                        format_size(MIN_MEMORY)
                    ))
                } else if m > limits.max_memory {
                    Some(above(
                        format_size(m),
                        format_size(limits.max_memory),
                        "max_memory",
                    ))
                } else {
                    None
                };
                problem.map_or(Some(m), |p| errors.take("resources.memory", Err(p)))
            }),
    };
    let pids = match r.pids {
        None => Some(DEFAULT_PIDS.min(limits.max_pids)),
        Some(0) => errors.take(
            "resources.pids",
            Err("must be greater than zero".to_owned()),
        ),
        Some(p) if p > limits.max_pids => errors.take(
            "resources.pids",
            Err(above(
                p.to_string(),
                limits.max_pids.to_string(),
                "max_pids",
            )),
        ),
        Some(p) => Some(p),
    };
    // No request: the operator's ceiling, when there is one, bounds every job.
    let cpus = match r.cpus {
        None => limits.max_cpus,
        Some(count) => errors
            .take("resources.cpus", cpu_millis(count))
            .and_then(|m| match limits.max_cpus {
                Some(max) if m > max => errors.take(
                    "resources.cpus",
                    Err(above(format_cpus(m), format_cpus(max), "max_cpus")),
                ),
                _ => Some(m),
            }),
    };
    let disk = match &r.disk {
        None => limits.max_disk,
        Some(text) => errors
            .take("resources.disk", parse_size(text))
            .and_then(|d| {
                let problem = if d < MIN_DISK {
                    Some(format!(
                        "{} is below the minimum of {}",
                        format_size(d),
                        format_size(MIN_DISK)
                    ))
                } else {
                    match limits.max_disk {
                        Some(max) if d > max => {
                            Some(above(format_size(d), format_size(max), "max_disk"))
                        }
                        _ => None,
                    }
                };
                problem.map_or(Some(d), |p| errors.take("resources.disk", Err(p)))
            }),
    };
    Resources {
        timeout,
        timeout_was_default: r.timeout.is_none(),
        memory,
        pids,
        cpus,
        disk,
    }
}

fn check_steps(
    steps: &[StepSpec],
    resources: &Resources,
    errors: &mut Errors,
) -> Vec<ValidatedStep> {
    if steps.is_empty() {
        errors.push("steps", "a job needs at least one [[steps]]");
    }
    if steps.len() > MAX_STEPS {
        errors.push(
            "steps",
            format!("{} steps; at most {MAX_STEPS} are allowed", steps.len()),
        );
    }
    let mut seen = BTreeMap::new();
    let mut validated = Vec::with_capacity(steps.len());
    for (i, step) in steps.iter().enumerate() {
        let path = format!("steps[{i}]");
        if errors
            .take(&format!("{path}.name"), check_name(&step.name))
            .is_some()
        {
            if let Some(first) = seen.insert(step.name.as_str(), i) {
                seen.insert(step.name.as_str(), first);
                let message = format!(
                    "duplicate step name {} (also steps[{first}])",
                    quote(&step.name)
                );
                errors.push(format!("{path}.name"), message);
            }
        }
        if step.run.trim().is_empty() {
            errors.push(format!("{path}.run"), "must not be empty");
        } else if step.run.contains('\0') {
            errors.push(format!("{path}.run"), "must not contain NUL");
        } else if step.run.len() > MAX_RUN_BYTES {
            let message =
                "is longer than 64KiB; put long scripts in a file in the repository and run that";
            errors.push(format!("{path}.run"), message);
        }
        check_env(&step.env, &path, errors);
        let timeout = step.timeout.as_deref().and_then(|text| {
            let t = errors.take(&format!("{path}.timeout"), parse_duration(text))?;
            let problem = match resources.timeout {
                _ if t.is_zero() => Some("must be greater than zero".to_owned()),
                Some(job) if t > job => Some(format!(
                    "{} is above the job's timeout of {}{}",
                    format_duration(t),
                    format_duration(job),
                    if resources.timeout_was_default {
                        " (the default; raise resources.timeout)"
                    } else {
                        " (resources.timeout)"
                    },
                )),
                _ => None,
            };
            problem.map_or(Some(t), |p| errors.take(&format!("{path}.timeout"), Err(p)))
        });
        validated.push(ValidatedStep {
            name: step.name.clone(),
            run: step.run.clone(),
            env: step.env.clone(),
            timeout,
            credentials: Vec::new(),
        });
    }
    validated
}

/// Resolves which of the job's credentials each step may read (`steps[i].credentials`):
/// once any step lists some, each step gets exactly its list, and a credential no step lists
/// is refused (it would be exchanged for nobody); when none lists any, every step gets all.
fn scope_credentials(spec: &JobSpec, steps: &mut [ValidatedStep], errors: &mut Errors) {
    let scoped = spec.steps.iter().any(|s| s.credentials.is_some());
    for (i, (step, validated)) in spec.steps.iter().zip(steps.iter_mut()).enumerate() {
        let Some(names) = &step.credentials else {
            if !scoped {
                validated.credentials.clone_from(&spec.credentials);
            }
            continue;
        };
        if names.len() > MAX_CREDENTIALS {
            let message = format!(
                "{} names; at most {MAX_CREDENTIALS} are allowed",
                names.len()
            );
            errors.push(format!("steps[{i}].credentials"), message);
            continue;
        }
        for (j, name) in names.iter().enumerate() {
            let path = format!("steps[{i}].credentials[{j}]");
            if let Some(first) = names[..j].iter().position(|n| n == name) {
                let message = format!(
                    "duplicate credential {} (also steps[{i}].credentials[{first}])",
                    quote(name)
                );
                errors.push(path, message);
            } else if !spec.credentials.contains(name) {
                let message = format!(
                    "{} is not one of the job's credentials; list it in the top-level `credentials` too",
                    quote(name)
                );
                errors.push(path, message);
            } else {
                validated.credentials.push(name.clone());
            }
        }
    }
    if !scoped {
        return;
    }
    for (i, name) in spec.credentials.iter().enumerate() {
        let used = spec
            .steps
            .iter()
            .any(|s| s.credentials.as_ref().is_some_and(|l| l.contains(name)));
        if !used {
            let message = format!(
                "{} is read by no step (steps list their credentials); name it in the step that needs it, or drop it",
                quote(name)
            );
            errors.push(format!("credentials[{i}]"), message);
        }
    }
}

fn check_env(env: &BTreeMap<String, String>, step_path: &str, errors: &mut Errors) {
    if env.len() > MAX_ENV_PER_STEP {
        let message = format!(
            "{} variables; at most {MAX_ENV_PER_STEP} are allowed",
            env.len()
        );
        errors.push(format!("{step_path}.env"), message);
    }
    for (key, value) in env {
        let path = format!("{step_path}.env.{}", key_segment(key));
        if errors.take(&path, check_env_key(key)).is_none() {
            continue;
        }
        if PROXY_ENV_VARS.contains(&key.as_str()) {
            errors.push(path, "set by the runner; a step cannot override it");
        } else if value.contains('\0') {
            errors.push(path, "must not contain NUL");
        }
    }
}

fn check_outputs(outputs: &OutputsSpec, errors: &mut Errors) -> Vec<String> {
    if outputs.paths.len() > MAX_OUTPUT_PATTERNS {
        let message = format!(
            "{} patterns; at most {MAX_OUTPUT_PATTERNS} are allowed",
            outputs.paths.len()
        );
        errors.push("outputs.paths", message);
    }
    let mut patterns = Vec::with_capacity(outputs.paths.len());
    // Literal paths by their case-folded key, with their index: two that differ only in
    // case (or in what else a filesystem folds) name one file there (`casefold`). Patterns
    // with wildcards are checked on what they match, by the runner.
    let mut literals: BTreeMap<String, (usize, &str)> = BTreeMap::new();
    for (i, pattern) in outputs.paths.iter().enumerate() {
        match check_output_pattern(pattern) {
            Ok(normalized) => {
                if !normalized.contains(['*', '?']) {
                    let key = super::casefold::case_folded(normalized);
                    if let Some(&(first, seen)) = literals.get(&key) {
                        let other = &outputs.paths[first];
                        if seen != normalized {
                            errors.push(
                                format!("outputs.paths[{i}]"),
                                format!(
                                    "{} and outputs.paths[{first}] {} differ only in case, \
                                     Unicode normalization, invisible characters or trailing \
                                     dots, so they name one file {FOLDED_NAMES}; rename one",
                                    quote(pattern),
                                    quote(other)
                                ),
                            );
                        }
                    } else {
                        literals.insert(key, (i, normalized));
                    }
                }
                patterns.push(normalized.to_owned());
            }
            Err(message) => errors.push(format!("outputs.paths[{i}]"), message),
        }
    }
    patterns
}

/// The longest output pattern: a path a build names is far shorter, and matching costs the
/// pattern's length for every entry walked.
pub const MAX_OUTPUT_PATTERN_BYTES: usize = 1024;

/// The most `**` components in one output pattern (`dist/**/lib/**/*.so` has two).
pub const MAX_OUTPUT_DOUBLE_STARS: usize = 4;

/// Checks one output pattern; returns it without any leading `./`.
fn check_output_pattern(pattern: &str) -> Result<&str, String> {
    if pattern.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if pattern.contains('\0') {
        return Err("must not contain NUL".to_owned());
    }
    if pattern.len() > MAX_OUTPUT_PATTERN_BYTES {
        return Err(format!(
            "is {} bytes long; at most {MAX_OUTPUT_PATTERN_BYTES}",
            pattern.len()
        ));
    }
    if pattern.chars().any(char::is_control) {
        return Err(format!(
            "must not contain control characters, got {}",
            quote(pattern)
        ));
    }
    if pattern.starts_with('/') {
        return Err(format!(
            "must be relative to /workspace, got {}",
            quote(pattern)
        ));
    }
    let mut rest = pattern;
    while let Some(stripped) = rest.strip_prefix("./") {
        rest = stripped;
    }
    if rest.is_empty() || rest == "." {
        return Err("names the whole workspace; name files or globs inside it".to_owned());
    }
    for component in rest.split('/') {
        let problem = match component {
            "" => Some("has an empty component (a double or trailing slash)"),
            "." => Some("must not contain a . component"),
            ".." => Some("must not contain a .. component"),
            c if c.contains('\\') => Some("must not contain a backslash"),
            c if c.contains(['[', ']', '{', '}']) => {
                Some("character classes and braces are not supported; use * and ?")
            }
            c if c.contains("**") && c != "**" => Some("** must be a whole path component"),
            _ => None,
        };
        if let Some(problem) = problem {
            return Err(format!("{problem}, got {}", quote(pattern)));
        }
    }
    let double_stars = rest.split('/').filter(|c| *c == "**").count();
    if double_stars > MAX_OUTPUT_DOUBLE_STARS {
        return Err(format!(
            "has {double_stars} ** components; at most {MAX_OUTPUT_DOUBLE_STARS}, got {}",
            quote(pattern)
        ));
    }
    if let Some(name) = reserved_output(rest) {
        let first = rest.split('/').next().unwrap_or(rest);
        return Err(if first == name {
            format!("collides with the runner's own file {name} in the output directory")
        } else {
            format!(
                "collides with the runner's own file {name} in the output directory \
                 {FOLDED_NAMES}, got {}",
                quote(pattern)
            )
        });
    }
    Ok(rest)
}
