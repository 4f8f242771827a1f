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
    let internal = json!({
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
            let mut d = ResourceDescriptor::sha256(
                Some("source".into()),
                Some(format!("file://{path}")),
                tree,
            );
            let mut ann = serde_json::Map::new();
            ann.insert(
                "digestAlgorithm".into(),
                json!(format!(
                    "{} (docs/build-type.md)",
                    crate::source::TREE_ALGORITHM
                )),
            );
            d.annotations = Some(ann);
            Some(d)
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

/// The signing key: `explicit`, or `<state>/keys/signing.key`, created (P-256) on first use.
/// Returns the key and, when it was the default, the path of its public key.
pub fn load_or_create_key(
    explicit: Option<&Path>,
    state: &Path,
) -> Result<(LocalKey, Option<PathBuf>)> {
    if let Some(p) = explicit {
        return Ok((LocalKey::load(p)?, None));
    }
    let dir = state.join("keys");
    let key_path = dir.join("signing.key");
    if !key_path.exists() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let key = LocalKey::generate(Algorithm::P256)?;
        key.write_pair(&dir)?;
    }
    Ok((LocalKey::load(&key_path)?, Some(dir.join("signing.pub"))))
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
