//! Test helpers: a temporary directory removed on drop.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A fresh directory under the system temp dir, removed when dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "bulwark-coordinator-{tag}-{}-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One DSSE envelope line of `provenance.intoto.jsonl`, as a runner reports it (the signature
/// is not checked by the coordinator): an in-toto Statement v1 with one artifact `dist/app` of
/// sha256 `artifact`, a git source at `commit`, a tool `jq` of sha256 `tool` and the
/// builder's binary of sha256 `bin`.
pub fn provenance_line(artifact: &str, commit: &str, tool: &str, bin: &str) -> String {
    use base64::Engine as _;
    let statement = serde_json::json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "dist/app", "digest": {"sha256": artifact.to_uppercase()}}],
        "predicateType": "https://slsa.dev/provenance/v1",
        "predicate": {
            "buildDefinition": {
                "buildType": "x",
                "externalParameters": {},
                "resolvedDependencies": [
                    {"name": "source", "uri": "git+https://git.example/app.git", "digest": {"gitCommit": commit}},
                    {"name": "jq", "uri": "https://tools.example/jq.tgz", "digest": {"sha256": tool}}
                ]
            },
            "runDetails": {
                "builder": {"id": "https://ci.example/pool", "builderDependencies": [
                    {"name": "bulwark", "digest": {"sha256": bin}}
                ]},
                "metadata": {"invocationId": "inv", "finishedOn": "2026-11-27T09:00:00Z"}
            }
        }
    });
    let payload = base64::engine::general_purpose::STANDARD.encode(statement.to_string());
    serde_json::json!({
        "payloadType": "application/vnd.in-toto+json",
        "payload": payload,
        "signatures": [{"keyid": "k", "sig": "AA=="}]
    })
    .to_string()
}

/// A self-signed certificate for `name` (and 127.0.0.1) and its key (PKCS#8, P-256), made with
/// the system's `openssl` under `dir` as `<stem>.crt` and `<stem>.key`; `None` (the caller
/// skips, saying so) where openssl is not installed (`.ci/run` installs it).
pub fn self_signed(dir: &Path, stem: &str, name: &str) -> Option<(PathBuf, PathBuf)> {
    let (cert, key) = (
        dir.join(format!("{stem}.crt")),
        dir.join(format!("{stem}.key")),
    );
    let o = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj"])
        .arg(format!("/CN={name}"))
        .arg("-addext")
        .arg(format!("subjectAltName=DNS:{name},IP:127.0.0.1"))
        // Its own trust anchor in tests, but an end entity: webpki refuses a CA as a server.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .ok()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    Some((cert, key))
}
