//! Signed provenance for a job's outputs: an in-toto Statement v1 with an SLSA Provenance v1
//! predicate, in a DSSE envelope signed by the runner's key.
//!
//! Why the runner and not the job: provenance is evidence about the job, so the job must not be
//! able to write or sign it. The statement is built from the runner's own records (its copies
//! of the outputs, hashed while they were copied after every job process was gone; its
//! `result.json`; its log), and the key is read only at signing time from a place no sandbox
//! can see. Alternatives rejected: the `in-toto` crate (no Statement v1, no SLSA v1) and the
//! `sigstore` crate (no DSSE signing with a local key).
//!
//! Written as `provenance.intoto.jsonl` (one envelope per line) and as a Sigstore bundle v0.3
//! in `provenance.sigstore.json`; both hold the same envelope.

pub mod bundle;
pub mod dsse;
pub mod keys;
pub mod statement;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bulwark_protocol::{JobResult, OutputRecord};
use serde_json::json;

use self::keys::{Algorithm, LocalKey, Signer};
use self::statement::{
    BuildDefinition, BuildMetadata, Builder, Provenance, ResourceDescriptor, RunDetails, Statement,
    BUILD_TYPE, SLSA_PROVENANCE_V1, STATEMENT_TYPE,
};

/// File names in the output directory.
pub const JSONL_NAME: &str = "provenance.intoto.jsonl";
/// See [`JSONL_NAME`].
pub const BUNDLE_NAME: &str = "provenance.sigstore.json";

/// Everything the statement says, gathered by the runner.
#[derive(Debug, Clone)]
pub struct ProvenanceInput<'a> {
    /// The job's result (status, isolation, outputs, inputs, times, invocation id).
    pub result: &'a JobResult,
    /// Path of the job spec as given, and the sha256 of its bytes.
    pub job_path: String,
    /// sha256 of the job spec file.
    pub job_sha256: String,
    /// Operator-configured builder id.
    pub builder_id: String,
    /// Network allow list in force (empty: no network).
    pub network_allow: Vec<String>,
    /// sha256 of files in the output directory that are byproducts: name → digest.
    pub byproducts: Vec<(String, String)>,
    /// sha256 of the running bulwark binary.
    pub runner_sha256: String,
    /// sha256 of the sandbox helper binary that ran the job.
    pub helper_sha256: Option<String>,
}

/// Builds the Statement.
pub fn build_statement(input: &ProvenanceInput<'_>) -> Statement {
    let r = input.result;
    let subject = r
        .outputs
        .iter()
        .map(|o: &OutputRecord| ResourceDescriptor::sha256(Some(o.path.clone()), None, &o.sha256))
        .collect();
    let source = &r.inputs.source;
    let external = json!({
        "source": source_parameter(source),
        "job": { "path": input.job_path, "sha256": input.job_sha256 },
        "trust": r.trust.as_str(),
    });
    let isolation = r.isolation.as_ref();
    let mut internal = json!({
        "isolation": isolation.map(|i| json!({
            "mode": i.mode.as_str(),
            "landlockAbi": i.landlock_abi,
            "seccomp": i.seccomp,
            "cgroup": i.cgroup,
            "limitsEnforced": i.limits_enforced,
            "confirmed": i.confirmed,
        })),
        "network": { "allow": input.network_allow, "audit": r.egress.as_ref().is_some_and(|e| e.audit) },
        "weakened": isolation.map(|i| i.weakened.clone()).unwrap_or_default(),
    });
    // A trusted job's credentials: which, of what kind, read by which steps, renewed how
    // often (names only, never a value). Absent for a job that had none.
    if !r.credentials.is_empty() {
        internal["credentials"] = r
            .credentials
            .iter()
            .map(|c| {
                let steps: Vec<&str> = r
                    .steps
                    .iter()
                    .filter(|s| s.credentials.contains(&c.name))
                    .map(|s| s.name.as_str())
                    .collect();
                json!({ "name": c.name, "kind": c.kind, "steps": steps, "refreshed": c.refreshed })
            })
            .collect();
    }
    let mut resolved = Vec::new();
    if let Some(dep) = source_dependency(source) {
        resolved.push(dep);
    }
    for t in &r.inputs.tools {
        if let (Some(url), Some(sha)) = (
            t.get("url").and_then(|v| v.as_str()),
            t.get("sha256").and_then(|v| v.as_str()),
        ) {
            resolved.push(ResourceDescriptor::sha256(
                t.get("name").and_then(|v| v.as_str()).map(String::from),
                Some(url.to_string()),
                sha,
            ));
        }
    }
    if let Some(rootfs) = &r.inputs.rootfs {
        if let (Some(url), Some(sha)) = (
            rootfs.get("url").and_then(|v| v.as_str()),
            rootfs.get("sha256").and_then(|v| v.as_str()),
        ) {
            resolved.push(ResourceDescriptor::sha256(
                Some("rootfs".into()),
                Some(url.to_string()),
                sha,
            ));
        }
    }
    resolved.extend(r.inputs.caches.iter().filter_map(cache_dependency));
    let version = env!("CARGO_PKG_VERSION");
    Statement {
        type_: STATEMENT_TYPE.to_string(),
        subject,
        predicate_type: SLSA_PROVENANCE_V1.to_string(),
        predicate: Provenance {
            build_definition: BuildDefinition {
                build_type: BUILD_TYPE.to_string(),
                external_parameters: external,
                internal_parameters: internal,
                resolved_dependencies: resolved,
            },
            run_details: RunDetails {
                builder: Builder {
                    id: input.builder_id.clone(),
                    version: [("bulwark".to_string(), version.to_string())]
                        .into_iter()
                        .collect(),
                    builder_dependencies: std::iter::once(ResourceDescriptor::sha256(
                        Some("bulwark".into()),
                        Some(format!("pkg:cargo/bulwark-runner@{version}")),
                        &input.runner_sha256,
                    ))
                    .chain(input.helper_sha256.as_ref().map(|sha| {
                        ResourceDescriptor::sha256(
                            Some("bulwark-sandbox".into()),
                            Some(format!("pkg:cargo/bulwark-sandbox@{version}")),
                            sha,
                        )
                    }))
                    .collect(),
                },
                metadata: BuildMetadata {
                    invocation_id: r.invocation_id.clone(),
                    started_on: r.started.clone(),
                    finished_on: r.finished.clone(),
                },
                byproducts: input
                    .byproducts
                    .iter()
                    .map(|(name, sha)| ResourceDescriptor::sha256(Some(name.clone()), None, sha))
                    .collect(),
            },
        },
    }
}

fn source_parameter(source: &serde_json::Value) -> serde_json::Value {
    match source.get("kind").and_then(|k| k.as_str()) {
        Some("local") => {
            json!({ "path": source.get("path"), "treeDigest": source.get("tree_sha256") })
        }
        Some("url") => json!({ "uri": source.get("uri"), "sha256": source.get("sha256") }),
        Some(_) => json!({ "uri": source.get("uri"), "ref": source.get("ref") }),
        None => json!({}),
    }
}

fn source_dependency(source: &serde_json::Value) -> Option<ResourceDescriptor> {
    match source.get("kind").and_then(|k| k.as_str())? {
        "local" => {
            let path = source.get("path")?.as_str()?;
            let tree = source.get("tree_sha256")?.as_str()?;
            Some(tree_descriptor(
                "source".into(),
                format!("file://{path}"),
                tree,
                serde_json::Map::new(),
            ))
        }
        "url" => Some(ResourceDescriptor::sha256(
            Some("source".into()),
            Some(source.get("uri")?.as_str()?.to_string()),
            source.get("sha256")?.as_str()?,
        )),
        "git" => {
            let mut d = ResourceDescriptor {
                name: Some("source".into()),
                uri: Some(format!("git+{}", source.get("uri")?.as_str()?)),
                ..Default::default()
            };
            d.digest.insert(
                "gitCommit".into(),
                source.get("commit")?.as_str()?.to_string(),
            );
            Some(d)
        }
        _ => None,
    }
}

/// A cache restored into the job (docs/caches.md): named `cache:<name>`, its tree digest as
/// `sha256` like a local source's, with the tier and generation it came from. A cache that
/// started empty was no input and is not listed.
fn cache_dependency(cache: &serde_json::Value) -> Option<ResourceDescriptor> {
    let name = cache.get("name")?.as_str()?;
    let restored = cache.get("restored").filter(|r| !r.is_null())?;
    let tier = restored.get("tier")?.as_str()?;
    let mut ann = serde_json::Map::new();
    ann.insert("generation".into(), restored.get("generation")?.clone());
    if let Some(scope) = cache.get("scope") {
        ann.insert("scope".into(), scope.clone());
    }
    Some(tree_descriptor(
        format!("cache:{name}"),
        format!("bulwark-cache:{tier}/{name}"),
        restored.get("tree_sha256")?.as_str()?,
        ann,
    ))
}

/// A tree named by its `bulwark-tree-v2` digest, put under `sha256` with an annotation that
/// says which digest it is, beside `more` annotations.
fn tree_descriptor(
    name: String,
    uri: String,
    tree: &str,
    mut more: serde_json::Map<String, serde_json::Value>,
) -> ResourceDescriptor {
    let mut d = ResourceDescriptor::sha256(Some(name), Some(uri), tree);
    more.insert(
        "digestAlgorithm".into(),
        json!(format!(
            "{} (docs/build-type.md)",
            crate::source::TREE_ALGORITHM
        )),
    );
    d.annotations = Some(more);
    d
}

/// Signs `statement` and writes both provenance files into `out` (temporary name, rename).
pub fn write(out: &Path, statement: &Statement, signer: &dyn Signer) -> Result<()> {
    let payload = serde_json::to_vec(statement).context("encoding the statement")?;
    let envelope = dsse::sign(&payload, dsse::IN_TOTO_PAYLOAD_TYPE, signer)?;
    let mut line = dsse::to_line(&envelope)?;
    line.push('\n');
    crate::fsutil::write_atomic(&out.join(JSONL_NAME), line.as_bytes())
        .with_context(|| format!("writing {JSONL_NAME}"))?;
    let bundle = bundle::wrap(&envelope)?;
    let mut json = serde_json::to_vec_pretty(&bundle)?;
    json.push(b'\n');
    crate::fsutil::write_atomic(&out.join(BUNDLE_NAME), &json)
        .with_context(|| format!("writing {BUNDLE_NAME}"))?;
    Ok(())
}

/// Where the default signing key lives under the state directory.
pub fn default_key_path(state: &Path) -> PathBuf {
    state.join("keys").join(keys::PRIVATE_NAME)
}

/// The signing key: `explicit`, or `<state>/keys/signing.key`, created (P-256) on first use.
/// Returns the key and, when it was the default, the path of its public key.
///
/// Several runs may be first at once, and a run may die anywhere: the private key appears under
/// its name only whole (written aside, then linked into place, never replacing one), a run that
/// lost the race to create it uses the winner's, and every run makes sure `signing.pub` is
/// there and matches the key it signs with (the run that made the key may have died before
/// writing it, or still be writing it).
pub fn load_or_create_key(
    explicit: Option<&Path>,
    state: &Path,
) -> Result<(LocalKey, Option<PathBuf>)> {
    if let Some(p) = explicit {
        return Ok((LocalKey::load(p)?, None));
    }
    let key_path = default_key_path(state);
    let dir = key_path.parent().unwrap_or(state).to_path_buf();
    if std::fs::symlink_metadata(&key_path).is_err() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        // `false`: another run created it meanwhile; that key is the one loaded below.
        LocalKey::generate(Algorithm::P256)?.write_private_new(&dir)?;
    }
    let key = LocalKey::load(&key_path)?;
    let pub_path = dir.join(keys::PUBLIC_NAME);
    let public = key.public_key_pem()?;
    if std::fs::read_to_string(&pub_path).ok().as_deref() != Some(public.as_str()) {
        key.write_public(&dir)?;
    }
    Ok((key, Some(pub_path)))
}

/// sha256 of the running binary.
pub fn own_binary_sha256() -> Result<String> {
    sha256_file(Path::new("/proc/self/exe"))
}

/// sha256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(sha256_read(f)?)
}

/// sha256 of everything `r` yields, read in 1 MiB blocks, lowercase hex.
pub fn sha256_read(mut r: impl std::io::Read) -> std::io::Result<String> {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(crate::outputs::hex(&h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_that_are_first_at_once_all_sign_with_the_one_default_key() {
        for round in 0..5 {
            let dir = crate::tools::testutil::TempDir::new("default-key");
            let state = dir.path().join("state");
            let barrier = std::sync::Barrier::new(8);
            let keyids: Vec<String> = std::thread::scope(|s| {
                let runs: Vec<_> = (0..8)
                    .map(|_| {
                        s.spawn(|| {
                            barrier.wait();
                            let (key, public) = load_or_create_key(None, &state)
                                .unwrap_or_else(|e| panic!("round {round}: {e:#}"));
                            assert_eq!(public, Some(state.join("keys/signing.pub")));
                            key.keyid().to_string()
                        })
                    })
                    .collect();
                runs.into_iter().map(|r| r.join().unwrap()).collect()
            });
            assert!(keyids.iter().all(|k| *k == keyids[0]), "{keyids:?}");
            let public =
                keys::PublicKey::load(&state.join("keys/signing.pub")).expect("signing.pub");
            assert_eq!(public.keyid(), keyids[0]);
            // Nothing but the pair is left in the key directory (no temporary files).
            let mut names: Vec<String> = std::fs::read_dir(state.join("keys"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            assert_eq!(names, ["signing.key", "signing.pub"]);
        }
    }

    #[test]
    fn a_default_key_whose_public_half_is_missing_gets_it_back() {
        // A run that died after the private key was in place and before signing.pub was.
        let dir = crate::tools::testutil::TempDir::new("default-pub");
        let state = dir.path().join("state");
        let (first, _) = load_or_create_key(None, &state).unwrap();
        std::fs::remove_file(state.join("keys/signing.pub")).unwrap();
        let (again, public) = load_or_create_key(None, &state).unwrap();
        assert_eq!(again.keyid(), first.keyid());
        let public = keys::PublicKey::load(&public.unwrap()).unwrap();
        assert_eq!(public.keyid(), first.keyid());
    }
}
