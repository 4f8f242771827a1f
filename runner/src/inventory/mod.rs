//! The inventory: which artifacts used this tool, this commit, this builder.
//!
//! When a tool or a commit turns out to be compromised, incident response asks one question
//! first: what did we build with it? Provenance answers it per artifact; the inventory answers
//! it across all of them, in seconds, from an index of the facts that matter in every
//! statement: its subjects (name and sha256), every resolved dependency (source, tools, root
//! filesystem: name, uri, digests), the builder (id, and the digests of the `bulwark` and
//! `bulwark-sandbox` binaries that ran the job), the trust level and when it finished.
//!
//! Two ways in, one format (JSON Lines, one record per statement, `records` below):
//!
//! - `bulwark run` appends the statement it has just signed to `<state>/inventory.jsonl`, so a
//!   build host answers for everything it built without anyone collecting anything;
//! - `bulwark inventory add --key PUB PATH...` indexes provenance files or directories of them
//!   (collected from many hosts, say), and only what verifies: each envelope's signature is
//!   checked with the operator's keys and its statement typed exactly as `bulwark verify` does
//!   ([`crate::verify::verify_envelope`]), so a forged or altered file never enters the index.
//!   A statement already indexed (by the sha256 of its canonical JSON) is not added twice: a
//!   job's `.intoto.jsonl` and `.sigstore.json` carry the same one.
//!
//! Who vouches for a record: every record names the key ids that signed its statement
//! (`signers`: the verifying keys for `add`, the runner's own key for `run`). The builder id
//! is written by the host that signs, so with several trusted keys any of them could claim
//! any builder id; `add --builder-keys POLICY.toml` applies the verify policy's
//! `[builder_keys]` ([`crate::verify::policy::check_builder_keys`], the very check `verify`
//! makes) and refuses a file whose statement's builder id is not bound to a key that signed
//! it. Only that table is applied, not the whole policy: the inventory must record untrusted,
//! weakened and quarantined builds too, since those are what an investigation looks for.
//! Without it and with several keys, `add` warns rather than refuses: refusing would lose
//! evidence and break fleet indexing that works today, while the recorded signer still tells
//! a claim from its source (`query --signer`). Lines written before `signers` existed lack the
//! field and still read (signer unknown; a `--signer` query counts them and says so).
//!
//! `bulwark inventory query` reads the index line by line; each filter is first tried as a
//! plain substring of the line, so the lines that cannot match are never parsed (a digest or
//! a commit appears in the line as written). The index is the runner's or the operator's own
//! file, so a line that is not a record is an error that names it, never a line silently
//! skipped: an answer that may be incomplete must say so. (Every line's shape is checked, a
//! record object from `{"statement_sha256":` to `}`; only lines that could match are parsed
//! whole.)
//!
//! Why not a database: the index is append-only, written by one runner at a time under a
//! lock, and read whole by a query; a scan of JSON lines does that in a second per few hundred
//! thousand statements (`bench/inventory.sh`), needs no schema migrations and can be read with
//! `grep` and `jq` when Bulwark is not at hand.

pub mod cli;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::fcntl::Flock;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::provenance::keys::PublicKey;
use crate::provenance::statement::{ResourceDescriptor, Statement};

/// The index file under the state directory that `bulwark run` appends to.
pub const INDEX_NAME: &str = "inventory.jsonl";

/// Exit statuses of `bulwark inventory`.
pub mod exit {
    /// `query`: at least one artifact matched. `add`: every file was indexed.
    pub const OK: u8 = 0;
    /// `query`: nothing matched. `add`: some provenance was refused (listed), the rest indexed.
    pub const NONE: u8 = 1;
    /// Usage error, unreadable index or keys.
    pub const USAGE: u8 = 2;
}

/// One statement in the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// sha256 of the statement's canonical JSON: what identifies it in the index.
    pub statement_sha256: String,
    /// Where it was indexed from (the output directory's provenance file).
    pub provenance: String,
    /// `runDetails.metadata.invocationId`.
    pub invocation_id: String,
    /// `runDetails.metadata.finishedOn`.
    pub finished: String,
    /// `runDetails.builder.id`.
    pub builder_id: String,
    /// Key ids (`sha256:<64 hex>`, as `bulwark keygen` prints them and `[builder_keys]` names
    /// them) of the trusted keys whose signatures on the envelope verified: who vouches for
    /// `builder_id`. Empty only in lines written before signers were recorded (unknown, not
    /// "nobody"): such lines lack the field and still read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signers: Vec<String>,
    /// `externalParameters.trust`, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<String>,
    /// The resolved dependencies (source, tools, root filesystem), then the builder's own
    /// binaries (`builder: true`).
    pub dependencies: Vec<Dependency>,
    /// The artifacts.
    pub subjects: Vec<Subject>,
}

/// A dependency as provenance names it.
pub use bulwark_protocol::v1::lookup::Dependency;

/// An artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    /// Its path in the output directory.
    pub name: String,
    /// Its sha256.
    pub sha256: String,
}

impl Record {
    /// The record of `statement`, found in `provenance`, signed by the keys `signers`.
    pub fn of(statement: &Statement, provenance: &Path, signers: &[String]) -> Result<Record> {
        let canonical = serde_json::to_vec(statement).context("encoding the statement")?;
        // Digests in lowercase, as queries ask for them (Bulwark writes them so; another
        // producer's statement might not).
        let lower = |m: &BTreeMap<String, String>| -> BTreeMap<String, String> {
            m.iter()
                .map(|(k, v)| (k.clone(), v.to_ascii_lowercase()))
                .collect()
        };
        let dep = |d: &ResourceDescriptor, builder: bool| Dependency {
            name: d.name.clone(),
            uri: d.uri.clone(),
            digest: lower(&d.digest),
            builder,
        };
        let p = &statement.predicate;
        let mut dependencies: Vec<Dependency> = p
            .build_definition
            .resolved_dependencies
            .iter()
            .map(|d| dep(d, false))
            .collect();
        dependencies.extend(
            p.run_details
                .builder
                .builder_dependencies
                .iter()
                .map(|d| dep(d, true)),
        );
        Ok(Record {
            statement_sha256: crate::outputs::hex(&Sha256::digest(&canonical)),
            provenance: provenance.display().to_string(),
            invocation_id: p.run_details.metadata.invocation_id.clone(),
            finished: p.run_details.metadata.finished_on.clone(),
            builder_id: p.run_details.builder.id.clone(),
            signers: signers.to_vec(),
            trust: p
                .build_definition
                .external_parameters
                .get("trust")
                .and_then(|t| t.as_str())
                .map(String::from),
            dependencies,
            subjects: statement
                .subject
                .iter()
                .filter_map(|s| {
                    Some(Subject {
                        name: s.name.clone().unwrap_or_default(),
                        sha256: s.digest.get("sha256")?.to_ascii_lowercase(),
                    })
                })
                .collect(),
        })
    }
}

/// Opens (creating, 0600, never through a symlink) and locks the index for appending.
fn open_locked(index: &Path) -> Result<Flock<File>> {
    if let Some(dir) = index.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(index)
        .with_context(|| format!("opening the inventory {}", index.display()))?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        anyhow::bail!("the inventory {} is not a regular file", index.display());
    }
    // Another user's index is not extended (nor made to look private: its owner could still
    // rewrite every answer): `--index` names a file of one's own.
    let me = nix::unistd::geteuid().as_raw();
    if std::os::unix::fs::MetadataExt::uid(&meta) != me {
        anyhow::bail!(
            "the inventory {} belongs to uid {}, not to this user (uid {me}): another user's \
             index is neither trusted nor extended; give --index a file of your own",
            index.display(),
            std::os::unix::fs::MetadataExt::uid(&meta)
        );
    }
    // Made 0600 when created; one made looser by hand is tightened (it says what was built
    // where, and only its owner should write it).
    if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o077 != 0 {
        file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .with_context(|| format!("making {} private", index.display()))?;
    }
    // Waited for, but not forever: a holder stuck on a network filesystem must not hold up
    // the end of every job.
    match crate::fsutil::lock_until(file, std::time::Instant::now() + LOCK_WAIT) {
        Ok(Some(locked)) => Ok(locked),
        Ok(None) => anyhow::bail!(
            "locking the inventory {}: another process has held it for more than {} s",
            index.display(),
            LOCK_WAIT.as_secs()
        ),
        Err(e) => anyhow::bail!("locking the inventory {}: {e}", index.display()),
    }
}

/// Longest wait for another writer of the index.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The `statement_sha256` of an index line, read from its fixed opening without parsing the
/// rest; `None` for a line that is not a record.
fn line_statement(line: &[u8]) -> Option<&str> {
    const OPENING: &[u8] = b"{\"statement_sha256\":\"";
    let rest = line.strip_prefix(OPENING)?;
    let digest = rest.get(..64)?;
    (rest.get(64) == Some(&b'"') && digest.iter().all(u8::is_ascii_hexdigit))
        .then(|| std::str::from_utf8(digest).ok())
        .flatten()
}

/// Drops a last line without its newline, which a writer that died (or ran out of space)
/// mid-write left: with the lock held no one is completing it, and left there it would glue
/// the next record to it. A last line that is a whole record (an index joined or edited by
/// hand) gets its newline instead. Reads only the file's tail.
fn drop_partial_tail(file: &mut File, index: &Path) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len();
    let mut end = len;
    let mut buf = vec![0u8; 64 << 10];
    while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.read_exact_at(chunk, start)
            .with_context(|| format!("reading {}", index.display()))?;
        if end == len && chunk.last() == Some(&b'\n') {
            return Ok(());
        }
        if let Some(i) = chunk.iter().rposition(|b| *b == b'\n') {
            end = start + i as u64 + 1;
            break;
        }
        end = start;
    }
    if len - end <= MAX_WHOLE_TAIL {
        let mut tail = vec![0u8; (len - end) as usize];
        file.read_exact_at(&mut tail, end)
            .with_context(|| format!("reading {}", index.display()))?;
        if serde_json::from_slice::<Record>(&tail).is_ok() {
            return file
                .write_all(b"\n")
                .with_context(|| format!("ending the last line of {}", index.display()));
        }
    }
    file.set_len(end)
        .with_context(|| format!("dropping a partial last line of {}", index.display()))
}

/// Longest unterminated last line of the index read to see whether it is a whole record.
const MAX_WHOLE_TAIL: u64 = 16 << 20;

/// Appends `records` to the index, leaving out statements it already holds. Returns how
/// many were added.
pub fn append(index: &Path, records: &[Record]) -> Result<usize> {
    let mut locked = open_locked(index)?;
    drop_partial_tail(&mut locked, index)?;
    // What the index holds of the statements being added, and which keys it records as
    // having signed them. Each line's opening says which statement it is; only the lines of
    // these statements are parsed, so an index of a few hundred thousand statements is read
    // in a fraction of a second.
    let incoming: HashSet<&str> = records
        .iter()
        .map(|r| r.statement_sha256.as_str())
        .collect();
    let mut known: Known = HashMap::new();
    let mut reader = BufReader::with_capacity(1 << 20, &*locked);
    let mut line = Vec::new();
    let mut n = 0usize;
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .with_context(|| format!("reading {}", index.display()))?;
        if read == 0 {
            break;
        }
        n += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let not_a_record =
            || anyhow::anyhow!("{} line {n}: not an inventory record", index.display());
        let digest = line_statement(&line).ok_or_else(not_a_record)?;
        if incoming.contains(digest) {
            let record: Record = serde_json::from_slice(&line).map_err(|_| not_a_record())?;
            known
                .entry(record.statement_sha256)
                .or_default()
                .extend(record.signers);
        }
    }
    drop(reader);
    write_new(&mut locked, index, records, &mut known)
}

/// Statements an index holds, with the key ids it records as having signed each.
type Known = HashMap<String, BTreeSet<String>>;

/// Appends those of `records` whose statement is not in `known`, in one write of whole lines
/// under the lock: a reader sees each line whole or not at all (it stops at a last line
/// without its newline).
fn write_new(
    file: &mut File,
    index: &Path,
    records: &[Record],
    known: &mut Known,
) -> Result<usize> {
    let mut added = 0;
    let mut text = String::new();
    for r in records {
        // A statement already held with these signers adds nothing (a job's
        // `.intoto.jsonl` and `.sigstore.json` carry the same one); signed by a key not
        // recorded yet (countersigned, or the same statement signed by another key), it is
        // recorded again, with its signers, so that a query by either key finds it.
        match known.get_mut(&r.statement_sha256) {
            Some(have) if r.signers.iter().all(|k| have.contains(k)) => continue,
            Some(have) => have.extend(r.signers.iter().cloned()),
            None => {
                known.insert(
                    r.statement_sha256.clone(),
                    r.signers.iter().cloned().collect(),
                );
            }
        }
        text.push_str(&serde_json::to_string(r)?);
        text.push('\n');
        added += 1;
    }
    file.write_all(text.as_bytes())
        .with_context(|| format!("appending to {}", index.display()))?;
    Ok(added)
}

/// What `bulwark run` records of a statement it signed with the key `keyid` and wrote to
/// `provenance`. Its statement is new (a fresh invocation id), so the index is not read for
/// duplicates: only its tail is looked at, and the cost stays the same however large the index
/// grows.
pub fn record_own(
    state: &Path,
    statement: &Statement,
    provenance: &Path,
    keyid: &str,
) -> Result<()> {
    let index = state.join(INDEX_NAME);
    let record = Record::of(statement, provenance, &[keyid.to_string()])?;
    let mut locked = open_locked(&index)?;
    drop_partial_tail(&mut locked, &index)?;
    write_new(&mut locked, &index, &[record], &mut HashMap::new()).map(drop)
}

/// The provenance files under `path` (itself, when it is a file): `*.intoto.jsonl` and
/// `*.sigstore.json`, symlinks not followed, in a stable order.
pub fn provenance_files(path: &Path) -> Result<Vec<PathBuf>> {
    let meta =
        std::fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    if !meta.is_dir() {
        anyhow::bail!("{} is neither a file nor a directory", path.display());
    }
    let mut found = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries =
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?;
        for e in entries {
            let e = e.with_context(|| format!("reading {}", dir.display()))?;
            let kind = e.file_type()?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if kind.is_dir() {
                stack.push(e.path());
            } else if kind.is_file()
                && (name.ends_with(".intoto.jsonl") || name.ends_with(".sigstore.json"))
            {
                found.push(e.path());
            }
        }
    }
    found.sort();
    Ok(found)
}

/// What `add` did with one file.
#[derive(Debug)]
pub struct FileOutcome {
    /// The file.
    pub path: PathBuf,
    /// Its records, or why it was refused (nothing of a refused file is indexed: whoever
    /// could replace one envelope in it could have replaced the others).
    pub records: Result<Vec<Record>, String>,
}

/// Reads and verifies every provenance file under `paths` with `keys`; with `builder_keys`
/// (a verify policy's `[builder_keys]`), a statement whose builder id is not bound to a key
/// that signed it refuses its file.
pub fn read_verified(
    paths: &[PathBuf],
    keys: &[PublicKey],
    builder_keys: Option<&BuilderKeys>,
) -> Result<Vec<FileOutcome>> {
    let mut out = Vec::new();
    for p in paths {
        let files = provenance_files(p)?;
        if files.is_empty() {
            anyhow::bail!(
                "no provenance file (*.intoto.jsonl, *.sigstore.json) under {}",
                p.display()
            );
        }
        for file in files {
            // Recorded absolute: a relative path means nothing to a later query.
            let file = std::path::absolute(&file).unwrap_or(file);
            let records = verified_records(&file, keys, builder_keys);
            out.push(FileOutcome {
                path: file,
                records,
            });
        }
    }
    Ok(out)
}

/// Which key ids may sign for which builder id: a verify policy's `[builder_keys]`.
pub type BuilderKeys = BTreeMap<String, Vec<String>>;

/// The builder id is written by whichever host signed: bound, a key may speak only for its
/// own builders, as `bulwark verify` judges it.
fn spoken_for(
    bound: &BuilderKeys,
    s: &crate::verify::Signed,
) -> Result<(), crate::verify::Rejection> {
    crate::verify::policy::check_builder_keys(
        bound,
        &s.statement.predicate.run_details.builder.id,
        &s.signers,
    )
    .map_err(|mut r| {
        // The check's own advice says what to add when the builder is unknown; for a key
        // that is not the builder's, this is the way on.
        r.details
            .push_str(if r.details.contains("binds to no key") {
                "; not indexed"
            } else {
                "; not indexed: if that key does build for that builder, add its key id to the \
             builder's entry in [builder_keys]"
            });
        r
    })
}

fn verified_records(
    file: &Path,
    keys: &[PublicKey],
    builder_keys: Option<&BuilderKeys>,
) -> Result<Vec<Record>, String> {
    // `provenance_files` listed a regular file, not a symlink; opened again here, the name may
    // meanwhile be a symlink or a fifo (whoever writes the collected directory can swap it):
    // neither is followed nor waited on.
    let opened =
        crate::fsutil::open_regular(file, true).map_err(|e| format!("cannot read: {e}"))?;
    let envelopes = crate::verify::load_provenance_from(file, opened).map_err(|e| e.reason())?;
    let total = envelopes.len();
    let mut records = Vec::with_capacity(total);
    let mut checker = crate::provenance::dsse::Checker::new(keys);
    for (i, env) in envelopes.into_iter().enumerate() {
        let signed = env.and_then(|e| crate::verify::verify_signed_with(&mut checker, &e));
        if checker.over_budget() {
            return Err(crate::provenance::dsse::VerifyError::Budget.to_string());
        }
        let signed = signed
            .and_then(|s| match builder_keys {
                Some(bound) => spoken_for(bound, &s).map(|()| s),
                None => Ok(s),
            })
            .map_err(|r| {
                let which = if total > 1 {
                    format!("envelope {} of {total}: ", i + 1)
                } else {
                    String::new()
                };
                format!("{which}{}: {}", r.check, r.details)
            })?;
        records.push(
            Record::of(&signed.statement, file, &signed.signers).map_err(|e| format!("{e:#}"))?,
        );
    }
    Ok(records)
}

/// One hit per artifact of a statement: a statement indexed more than once (signed again by
/// another key) gives one hit, with every key that signed it.
fn merge_copies(hits: Vec<(String, Hit)>) -> Vec<Hit> {
    let mut at: HashMap<(String, String, String), usize> = HashMap::new();
    let mut out: Vec<Hit> = Vec::with_capacity(hits.len());
    for (statement, h) in hits {
        let key = (
            statement,
            h.artifact.name.clone(),
            h.artifact.sha256.clone(),
        );
        match at.get(&key) {
            Some(&i) => {
                let merged = &mut out[i];
                for k in h.signers {
                    if !merged.signers.contains(&k) {
                        merged.signers.push(k);
                    }
                }
            }
            None => {
                at.insert(key, out.len());
                out.push(h);
            }
        }
    }
    out
}

/// What a query asks for; every filter given must hold (none given: every artifact).
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// A digest (any algorithm, lowercase hex) of a dependency or of the artifact itself.
    pub digest: Option<String>,
    /// A git commit, or a prefix of one of at least 7 hex digits.
    pub commit: Option<String>,
    /// A dependency's uri; ending in `*`, a prefix of one.
    pub uri: Option<String>,
    /// A dependency's name (a tool's name is chosen by the job: a hint, not an identity).
    pub name: Option<String>,
    /// The builder id.
    pub builder: Option<String>,
    /// A key id that signed the statement (records written before signers were recorded
    /// never match; [`Answer::unknown_signer`] counts them).
    pub signer: Option<String>,
}

/// One artifact a query found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hit {
    /// The artifact.
    pub artifact: Subject,
    /// The statement it is a subject of.
    pub invocation_id: String,
    /// When that build finished.
    pub finished: String,
    /// Who built it.
    pub builder_id: String,
    /// The key ids that signed its statement; absent when the record predates signers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub signers: Vec<String>,
    /// At which trust level.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trust: Option<String>,
    /// Where its provenance was indexed from.
    pub provenance: String,
    /// The dependencies that matched (empty when only the artifact's own digest or the
    /// builder id did; with `--commit`, the source's among them).
    pub matched: Vec<Dependency>,
}

impl Query {
    /// Checks the query's own form; the error names the option.
    pub fn check(&mut self) -> Result<(), String> {
        let hex = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
        if let Some(d) = &mut self.digest {
            *d = d.to_ascii_lowercase();
            let d = d.strip_prefix("sha256:").unwrap_or(d).to_string();
            if !hex(&d) || d.len() < 40 {
                return Err(format!(
                    "--digest {d:?}: give a whole digest in hex (sha256: 64 digits)"
                ));
            }
            self.digest = Some(d);
        }
        if let Some(c) = &mut self.commit {
            *c = c.to_ascii_lowercase();
            if !hex(c) || c.len() < 7 || c.len() > 64 {
                return Err(format!(
                    "--commit {c:?}: give a commit id in hex, at least its first 7 digits"
                ));
            }
        }
        if let Some(k) = &mut self.signer {
            *k = k.to_ascii_lowercase();
            if !crate::verify::policy::is_keyid(k) {
                return Err(format!(
                    "--signer {k:?}: give a key id, \"sha256:\" and 64 hex digits, as `bulwark \
                     keygen` prints it"
                ));
            }
        }
        for (flag, v) in [
            ("--uri", &self.uri),
            ("--name", &self.name),
            ("--builder", &self.builder),
        ] {
            if v.as_deref() == Some("") {
                return Err(format!("{flag}: must not be empty"));
            }
        }
        Ok(())
    }

    /// Substrings every matching line must contain, as JSON writes them.
    fn needles(&self) -> Vec<String> {
        let quoted = |s: &str| {
            let q = serde_json::to_string(s).unwrap_or_default();
            q[1..q.len().saturating_sub(1)].to_string()
        };
        let mut n = Vec::new();
        if let Some(d) = &self.digest {
            n.push(d.clone());
        }
        if let Some(c) = &self.commit {
            n.push(c.clone());
        }
        if let Some(u) = &self.uri {
            n.push(quoted(
                bulwark_protocol::v1::lookup::UriPattern::parse(u).text(),
            ));
        }
        if let Some(v) = &self.name {
            n.push(quoted(v));
        }
        if let Some(v) = &self.builder {
            n.push(quoted(v));
        }
        if let Some(v) = &self.signer {
            n.push(v.clone());
        }
        n
    }

    /// The artifacts of `record` this query finds.
    ///
    /// `--commit` is a git source's: it holds on its own dependency, whatever the other filters
    /// name (built from this commit with this jq). `--uri`, `--name` and `--digest` describe
    /// one dependency together, or the digest is the artifact's own (this artifact, if it was
    /// built from this commit, with a tool from there).
    pub fn hits(&self, record: &Record) -> Vec<Hit> {
        if self
            .builder
            .as_ref()
            .is_some_and(|b| *b != record.builder_id)
        {
            return Vec::new();
        }
        if self
            .signer
            .as_ref()
            .is_some_and(|k| !record.signers.contains(k))
        {
            return Vec::new();
        }
        let lookup = bulwark_protocol::v1::lookup::Lookup {
            commit: self.commit.as_deref(),
            uri: self.uri.as_deref(),
            name: self.name.as_deref(),
            digest: self.digest.as_deref(),
        };
        let found = lookup.matches(
            &record.dependencies,
            record.subjects.iter().map(|s| s.sha256.as_str()),
        );
        record
            .subjects
            .iter()
            .zip(found)
            .filter_map(|(s, matched)| {
                Some(Hit {
                    artifact: s.clone(),
                    invocation_id: record.invocation_id.clone(),
                    finished: record.finished.clone(),
                    builder_id: record.builder_id.clone(),
                    signers: record.signers.clone(),
                    trust: record.trust.clone(),
                    provenance: record.provenance.clone(),
                    matched: matched?,
                })
            })
            .collect()
    }
}

/// What a query found, and what it could not decide.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    /// The artifacts found.
    pub hits: Vec<Hit>,
    /// With `--signer`: how many records hold no signer (indexed before signers were
    /// recorded), so that the query could not say whether that key signed them.
    pub unknown_signer: usize,
}

/// Runs `query` over the index; an unreadable line is an error naming it. (The tests'
/// shorthand for [`answer`]'s hits.)
#[cfg(test)]
pub fn search(index: &Path, query: &Query) -> Result<Vec<Hit>> {
    answer(index, query).map(|a| a.hits)
}

/// Runs `query` over the index (an unreadable line is an error naming it): the artifacts
/// found, and with `--signer` the count of records whose signer is unknown.
pub fn answer(index: &Path, query: &Query) -> Result<Answer> {
    let file = crate::fsutil::open_regular(index, false)
        .with_context(|| format!("opening the inventory {}", index.display()))?;
    // An index others may write could say anything: its answers are not given.
    let mode = std::os::unix::fs::PermissionsExt::mode(&file.metadata()?.permissions());
    if mode & 0o022 != 0 {
        anyhow::bail!(
            "the inventory {} can be written by other users (mode {:o}): its answers could \
             have been rewritten; make it writable by its owner only (chmod go-w)",
            index.display(),
            mode & 0o7777
        );
    }
    let needles = query.needles();
    // Records that predate signers cannot be judged by `--signer`; they are counted when they
    // would match the rest of the query.
    let unsigned = Query {
        signer: None,
        ..query.clone()
    };
    let unsigned_needles = unsigned.needles();
    let unjudged = |record: &Record| {
        query.signer.is_some() && record.signers.is_empty() && !unsigned.hits(record).is_empty()
    };
    // Each hit with the statement it came from, for `merge_copies`.
    let tagged = |record: &Record| {
        let statement = &record.statement_sha256;
        query
            .hits(record)
            .into_iter()
            .map(move |h| (statement.clone(), h))
            .collect::<Vec<_>>()
    };
    let mut hits = Vec::new();
    let mut unknown_signer = 0usize;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut line = String::new();
    let mut n = 0usize;
    loop {
        line.clear();
        let read = reader
            .read_line(&mut line)
            .with_context(|| format!("reading {}", index.display()))?;
        if read == 0 {
            break;
        }
        n += 1;
        if line.trim().is_empty() {
            continue;
        }
        // A last line without its newline is being written right now, unless it is a whole
        // record (an index joined or edited by hand): then it counts.
        if !line.ends_with('\n') {
            if let Ok(record) = serde_json::from_str::<Record>(&line) {
                unknown_signer += usize::from(unjudged(&record));
                hits.extend(tagged(&record));
            }
            continue;
        }
        let shaped = line.starts_with("{\"statement_sha256\":") && line.trim_end().ends_with('}');
        // `"signers"` (with its quotes) appears in a record's line only as that field: every
        // other string is quoted with its quotes escaped.
        if shaped && query.signer.is_some() && !line.contains("\"signers\"") {
            if !unsigned_needles.iter().all(|x| line.contains(x.as_str())) {
                continue;
            }
        } else if shaped && !needles.iter().all(|x| line.contains(x.as_str())) {
            continue;
        }
        let record: Record = serde_json::from_str(&line).with_context(|| {
            format!(
                "{} line {n}: not an inventory record; the answer would be incomplete",
                index.display()
            )
        })?;
        unknown_signer += usize::from(unjudged(&record));
        hits.extend(tagged(&record));
    }
    Ok(Answer {
        hits: merge_copies(hits),
        unknown_signer,
    })
}
