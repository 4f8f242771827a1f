//! The fleet's inventory: which finished jobs used this tool, this commit, built this artifact.
//!
//! When a tool or a commit turns out to be compromised, incident response asks the control
//! plane first: it has every finished job's provenance, from every runner. So the coordinator
//! indexes each result's provenance as it records it (docs/inventory.md, "A fleet"): every
//! digest a statement names (its subjects' and its resolved dependencies', the builder's own
//! binaries included) becomes a key of the `inventory` table, next to the job's id, in the
//! same transaction as the result, and so does every dependency's `uri` (the source repository,
//! a tool's URL, the runner's package). A query looks the digest (or a commit's prefix, or a
//! uri or its prefix) up in that index, then reads the few jobs it names and says which of
//! their artifacts match and why.
//!
//! What is indexed is what the runner holding the job's lease reported, over a request signed
//! with its key; the coordinator does not hold the runners' provenance signing keys, so it
//! does not check the envelopes' signatures (`bulwark verify` and `bulwark inventory add` do).
//! A compromised runner could report false provenance here, as it could sign false provenance
//! with its own key: the index answers "which jobs said they used X", the starting point of
//! an investigation, and each artifact is verified before it is trusted again.
//!
//! A job whose provenance the coordinator cannot read as in-toto Statement v1 envelopes keeps
//! its result, and is recorded as unindexed ([`UNINDEXED`]); every answer says how many such
//! jobs there are, so no answer silently misses one.

use std::collections::BTreeSet;

use base64::Engine as _;
use serde::Serialize;
use serde_json::Value;

use crate::state::IndexedJob;

/// `payloadType` of an in-toto statement in DSSE.
const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// `_type` of an in-toto Statement v1.
const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";

/// Longest digest value indexed (a sha512 is 128 hex digits); a longer one is not a digest.
const MAX_KEY_VALUE: usize = 128;

/// Longest dependency uri indexed; a longer one is not a key (no query finds it by uri).
pub const MAX_URI: usize = 2048;

/// The key of a job whose provenance could not be read.
pub const UNINDEXED: &str = "x:unindexed";

/// Most jobs one query reads, and most artifacts it answers; a query that finds more says so
/// (`cut`), newest first.
pub const MAX_JOBS: u32 = 10_000;
/// See [`MAX_JOBS`].
pub const MAX_HITS: usize = 50_000;

fn is_hex(v: &str) -> bool {
    !v.is_empty() && v.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What one statement of a job's provenance says, as far as the inventory is concerned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Statement {
    /// Its artifacts: path and sha256 (lowercase).
    pub subjects: Vec<Subject>,
    /// Its resolved dependencies, then the builder's own binaries (`builder: true`).
    pub dependencies: Vec<Dependency>,
    /// `runDetails.metadata.finishedOn`.
    pub finished: String,
    /// `runDetails.builder.id`.
    pub builder_id: String,
}

/// An artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Subject {
    /// Its path in the job's outputs.
    pub name: String,
    /// Its sha256.
    pub sha256: String,
}

/// A dependency as provenance names it (shared with the host's inventory).
pub use bulwark_protocol::v1::lookup::Dependency;
use bulwark_protocol::v1::lookup::UriPattern;

/// Reads a job's `provenance.intoto.jsonl` (one DSSE envelope per line); the error names the
/// line and what is wrong with it.
pub fn read(provenance: &str) -> Result<Vec<Statement>, String> {
    let mut out = Vec::new();
    for (i, line) in provenance.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |what: &str| format!("provenance line {}: {what}", i + 1);
        let envelope: Value =
            serde_json::from_str(line).map_err(|e| at(&format!("not JSON: {e}")))?;
        if envelope.get("payloadType").and_then(Value::as_str) != Some(PAYLOAD_TYPE) {
            return Err(at(&format!("payloadType is not {PAYLOAD_TYPE:?}")));
        }
        let payload = envelope
            .get("payload")
            .and_then(Value::as_str)
            .and_then(|p| base64::engine::general_purpose::STANDARD.decode(p).ok())
            .ok_or_else(|| at("payload is not standard base64"))?;
        let statement: Value = serde_json::from_slice(&payload)
            .map_err(|e| at(&format!("the payload is not JSON: {e}")))?;
        out.push(statement_facts(&statement).map_err(|e| at(&e))?);
    }
    Ok(out)
}

fn statement_facts(s: &Value) -> Result<Statement, String> {
    if s.get("_type").and_then(Value::as_str) != Some(STATEMENT_TYPE) {
        return Err(format!("the payload is not an {STATEMENT_TYPE} statement"));
    }
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(String::from);
    let subjects = s
        .get("subject")
        .and_then(Value::as_array)
        .ok_or("the statement has no subject list")?
        .iter()
        .enumerate()
        .map(|(i, sub)| {
            let sha256 = text(sub.pointer("/digest/sha256"))
                .unwrap_or_default()
                .to_ascii_lowercase();
            if sha256.len() == 64 && is_hex(&sha256) {
                Ok(Subject {
                    name: text(sub.get("name")).unwrap_or_default(),
                    sha256,
                })
            } else {
                Err(format!("subject {i}: digest.sha256 is not 64 hex digits"))
            }
        })
        .collect::<Result<Vec<_>, String>>()?;
    let dependency = |d: &Value, builder: bool| Dependency {
        name: text(d.get("name")),
        uri: text(d.get("uri")),
        digest: d
            .get("digest")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_ascii_lowercase())))
                    .collect()
            })
            .unwrap_or_default(),
        builder,
    };
    let list = |pointer: &str| {
        s.pointer(pointer)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let deps = list("/predicate/buildDefinition/resolvedDependencies");
    if let Some(bad) = deps
        .iter()
        .filter_map(|d| d.pointer("/digest/gitCommit"))
        .find(|c| {
            !c.as_str()
                .is_some_and(|c| is_hex(c) && c.len() <= MAX_KEY_VALUE)
        })
    {
        return Err(format!("a gitCommit digest is not hex: {bad}"));
    }
    let mut dependencies: Vec<Dependency> = list("/predicate/buildDefinition/resolvedDependencies")
        .iter()
        .map(|d| dependency(d, false))
        .collect();
    dependencies.extend(
        list("/predicate/runDetails/builder/builderDependencies")
            .iter()
            .map(|d| dependency(d, true)),
    );
    Ok(Statement {
        subjects,
        dependencies,
        finished: text(s.pointer("/predicate/runDetails/metadata/finishedOn")).unwrap_or_default(),
        builder_id: text(s.pointer("/predicate/runDetails/builder/id")).unwrap_or_default(),
    })
}

/// The index keys of `statements`: `d:<value>` for every digest value they name (subjects'
/// and dependencies', any algorithm), and `c:<value>` for every `gitCommit`, lowercase hex
/// only; `u:<uri>` for every dependency's uri (as written, at most [`MAX_URI`] bytes).
pub fn keys(statements: &[Statement]) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for s in statements {
        for uri in s.dependencies.iter().filter_map(|d| d.uri.as_deref()) {
            if !uri.is_empty() && uri.len() <= MAX_URI {
                keys.insert(format!("u:{uri}"));
            }
        }
        let values = s.subjects.iter().map(|sub| sub.sha256.as_str()).chain(
            s.dependencies
                .iter()
                .flat_map(|d| d.digest.values().map(String::as_str)),
        );
        for v in values {
            if is_hex(v) && v.len() <= MAX_KEY_VALUE {
                keys.insert(format!("d:{v}"));
            }
        }
        for d in &s.dependencies {
            if let Some(c) = d.digest.get("gitCommit") {
                if is_hex(c) && c.len() <= MAX_KEY_VALUE {
                    keys.insert(format!("c:{c}"));
                }
            }
        }
    }
    keys
}

/// What `inventory query` asks for; each filter given must hold, and at least one is given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// A digest (hex, any algorithm) of a dependency or of the artifact itself.
    pub digest: Option<String>,
    /// A git commit, or a prefix of one of at least 7 hex digits, of the job's source.
    pub commit: Option<String>,
    /// A dependency's uri (the source repository, a tool's URL) as provenance records it;
    /// ending in `*`, a prefix of one. With `digest`, both describe one dependency.
    pub uri: Option<String>,
}

impl Query {
    /// The uri asked for: exact, or a prefix (it ended in `*`).
    pub fn uri_pattern(&self) -> Option<UriPattern<'_>> {
        self.uri.as_deref().map(UriPattern::parse)
    }
}

impl Query {
    /// Checks the query's form and lowercases it; the error names the option.
    pub fn check(mut self) -> Result<Query, String> {
        let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
        if let Some(d) = &self.digest {
            let d = d.to_ascii_lowercase();
            let d = d.strip_prefix("sha256:").unwrap_or(&d).to_string();
            if !hex(&d) || d.len() < 40 || d.len() > MAX_KEY_VALUE {
                return Err(format!(
                    "digest {d:?}: give a whole digest in hex (sha256: 64 digits)"
                ));
            }
            self.digest = Some(d);
        }
        if let Some(c) = &self.commit {
            let c = c.to_ascii_lowercase();
            if !hex(&c) || c.len() < 7 || c.len() > 64 {
                return Err(format!(
                    "commit {c:?}: give a commit id in hex, at least its first 7 digits"
                ));
            }
            self.commit = Some(c);
        }
        if let Some(u) = &self.uri {
            if UriPattern::parse(u).text().is_empty()
                || u.len() > MAX_URI
                || u.chars().any(char::is_control)
            {
                let shown: String = u.chars().take(80).collect();
                return Err(format!(
                    "uri {shown:?}: give a uri as provenance records it (at most {MAX_URI} bytes, no control characters), or its prefix followed by *"
                ));
            }
        }
        if self.digest.is_none() && self.commit.is_none() && self.uri.is_none() {
            return Err("give a digest, a commit or a uri (or several)".into());
        }
        Ok(self)
    }
}

/// One artifact a query found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hit {
    /// The job that built it.
    pub job_id: String,
    /// The job's name.
    pub job_name: String,
    /// The trust level the coordinator gave the job.
    pub trust: String,
    /// The runner that ran it.
    pub runner_id: Option<String>,
    /// The artifact.
    pub artifact: Subject,
    /// When the build finished (its provenance's `finishedOn`).
    pub finished: String,
    /// `runDetails.builder.id`.
    pub builder_id: String,
    /// The dependencies that matched (empty when the digest is the artifact's own).
    pub matched: Vec<Dependency>,
}

/// The artifacts of `job`, whose provenance reads as `statements`, that `query` finds, by the
/// rules the host's inventory uses too ([`bulwark_protocol::v1::lookup`]).
pub fn hits(query: &Query, job: &IndexedJob, statements: &[Statement]) -> Vec<Hit> {
    let lookup = bulwark_protocol::v1::lookup::Lookup {
        commit: query.commit.as_deref(),
        uri: query.uri.as_deref(),
        name: None,
        digest: query.digest.as_deref(),
    };
    let mut out = Vec::new();
    for s in statements {
        let found = lookup.matches(
            &s.dependencies,
            s.subjects.iter().map(|sub| sub.sha256.as_str()),
        );
        for (sub, matched) in s.subjects.iter().zip(found) {
            let Some(matched) = matched else { continue };
            out.push(Hit {
                job_id: job.id.clone(),
                job_name: job.name.clone(),
                trust: job.trust.clone(),
                runner_id: job.runner_id.clone(),
                artifact: sub.clone(),
                finished: s.finished.clone(),
                builder_id: s.builder_id.clone(),
                matched,
            });
        }
    }
    out
}

/// What a query answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Answer {
    /// The artifacts found, newest job first.
    pub hits: Vec<Hit>,
    /// More than [`MAX_JOBS`] jobs or [`MAX_HITS`] artifacts matched: only the newest are here.
    pub cut: bool,
    /// Finished jobs whose provenance could not be read: no answer covers them.
    pub unindexed: u64,
}

/// Runs `query` (checked) over the coordinator's inventory: the finished jobs it names, newest
/// first, and the artifacts of each that match ([`Answer`]). Reads only.
pub fn query(db: &crate::state::Db, query: &Query) -> Result<Answer, String> {
    let mut answer = Answer {
        unindexed: db.unindexed_jobs().map_err(|e| format!("{e:#}"))?,
        ..Answer::default()
    };
    let mut read_jobs = 0u32;
    db.inventory_jobs(
        query.digest.as_deref(),
        query.commit.as_deref(),
        query.uri_pattern(),
        MAX_JOBS + 1,
        |job| {
            read_jobs += 1;
            if read_jobs > MAX_JOBS {
                answer.cut = true;
                return false;
            }
            // Indexed, so it was read when it was recorded; should it not read now, it is
            // counted, not dropped.
            let Ok(statements) = read(job.provenance.as_deref().unwrap_or_default()) else {
                answer.unindexed += 1;
                tracing::warn!(job_id = %job.id, "indexed provenance no longer reads");
                return true;
            };
            answer.hits.extend(hits(query, &job, &statements));
            if answer.hits.len() > MAX_HITS {
                answer.hits.truncate(MAX_HITS);
                answer.cut = true;
                return false;
            }
            true
        },
    )
    .map_err(|e| format!("{e:#}"))?;
    Ok(answer)
}

#[cfg(test)]
mod tests;
