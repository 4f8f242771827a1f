//! `bulwark verify` against provenance from real runs: accepted as written, in both files, and
//! rejected (exit 1) with the failing check named for every kind of tampering and every policy
//! check; unusable input exits 2 naming the file.
//!
//! Statements that must carry a *valid* signature and still be rejected (an unknown payload
//! type, a Statement v0.1, an old `finishedOn`) are re-signed here, independently of the
//! runner's code, with the Ed25519 key `bulwark keygen` wrote: the test builds the DSSE PAE
//! itself. Re-signing the unmodified statement is accepted first, so a rejection is known to
//! come from the check under test and not from a wrong signature.
//!
//! Runs as root and rootless alike: nothing depends on the isolation mode except that one
//! check requires a mode the job did not have, read from the job's own statement.
#![allow(clippy::unwrap_used)]

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine;
use bulwark_tests::{bulwark_bin, one_step, sha256_file, Env, Run};
use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::Signer;
use serde_json::{json, Value};

const IN_TOTO: &str = "application/vnd.in-toto+json";

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// What `bulwark verify` did.
#[derive(Debug)]
struct Verified {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Verified {
    /// Asserts the exit status and that stdout holds `line` as a line prefix.
    fn expect(&self, code: i32, line: &str) -> &Self {
        assert_eq!(self.code, code, "{self:#?}");
        assert!(
            self.stdout.lines().any(|l| l.starts_with(line)),
            "expected a line starting {line:?}\n{self:#?}"
        );
        self
    }
}

fn bulwark_verify<I, S>(args: I) -> Verified
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let o = Command::new(bulwark_bin())
        .arg("verify")
        .args(args)
        .output()
        .unwrap();
    Verified {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn keygen(dir: &Path, algorithm: &str) -> String {
    let o = Command::new(bulwark_bin())
        .args(["keygen", "--algorithm", algorithm, "--out"])
        .arg(dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "keygen: {stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    stdout
        .split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .unwrap()
        .to_string()
}

/// A job that ran with outputs and an Ed25519 key, and its provenance.
struct Built {
    env: Env,
    run: Run,
    keys: PathBuf,
    keyid: String,
    n: std::cell::Cell<u32>,
}

fn build(tag: &str) -> Built {
    let env = Env::new(tag);
    let keys = env.dir.join("keys");
    let keyid = keygen(&keys, "ed25519");
    env.write_src("README", "verify me\n");
    let job = one_step(
        "verify",
        "mkdir -p dist && echo built > dist/app.txt",
        "[outputs]\npaths = [\"dist/app.txt\"]\n",
    );
    let key = keys.join("signing.key");
    let run = env.run_with(&job, &["--key", key.to_str().unwrap()]);
    run.assert_code(0);
    assert!(run.out.join("provenance.intoto.jsonl").exists(), "{run}");
    Built {
        env,
        run,
        keys,
        keyid,
        n: std::cell::Cell::new(0),
    }
}

impl Built {
    fn artifact(&self) -> PathBuf {
        self.run.out.join("dist/app.txt")
    }
    fn jsonl(&self) -> PathBuf {
        self.run.out.join("provenance.intoto.jsonl")
    }
    fn bundle(&self) -> PathBuf {
        self.run.out.join("provenance.sigstore.json")
    }
    fn public(&self) -> PathBuf {
        self.keys.join("signing.pub")
    }
    fn envelope(&self) -> Value {
        let text = fs::read_to_string(self.jsonl()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        serde_json::from_str(text.lines().next().unwrap()).unwrap()
    }
    fn payload(&self) -> Vec<u8> {
        b64()
            .decode(self.envelope()["payload"].as_str().unwrap())
            .unwrap()
    }
    fn statement(&self) -> Value {
        serde_json::from_slice(&self.payload()).unwrap()
    }
    /// Writes `text` to a fresh file in the test directory.
    fn write(&self, name: &str, text: &str) -> PathBuf {
        let n = self.n.get() + 1;
        self.n.set(n);
        let p = self.env.dir.join(format!("{n}-{name}"));
        fs::write(&p, text).unwrap();
        p
    }
    /// Whether the run recorded a weakened layer (rootless hosts without delegated cgroups
    /// run with the operator's rlimit fallback, which provenance records).
    fn weakened(&self) -> bool {
        self.statement()["predicate"]["buildDefinition"]["internalParameters"]["weakened"]
            .as_array()
            .is_some_and(|w| !w.is_empty())
    }
    /// `bulwark verify --provenance prov --key <ours> [--policy <policy>] <artifact>`. A run that
    /// recorded a weakened layer is verified with `forbid_weakened = false` prepended.
    fn verify(&self, prov: &Path, policy: Option<&str>) -> Verified {
        let mut args: Vec<PathBuf> = vec!["--provenance".into(), prov.into()];
        args.extend(["--key".into(), self.public()]);
        let policy = match (policy, self.weakened()) {
            (p, false) => p.map(String::from),
            (p, true) => Some(format!("forbid_weakened = false\n{}", p.unwrap_or(""))),
        };
        if let Some(text) = policy {
            args.extend(["--policy".into(), self.write("policy.toml", &text)]);
        }
        args.push(self.artifact());
        bulwark_verify(args)
    }
    fn rejected(&self, check_and_details: &str) -> String {
        format!(
            "REJECTED {}: {check_and_details}",
            self.artifact().display()
        )
    }
    fn accepted(&self) -> String {
        format!("ACCEPTED {} (\"dist/app.txt\")", self.artifact().display())
    }
    /// A one-line `.intoto.jsonl` with `payload` signed by our key, independently of the runner.
    fn signed(&self, payload: &[u8], payload_type: &str) -> PathBuf {
        let pem = fs::read_to_string(self.keys.join("signing.key")).unwrap();
        let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&pem).unwrap();
        let mut pae = format!(
            "DSSEv1 {} {payload_type} {} ",
            payload_type.len(),
            payload.len()
        )
        .into_bytes();
        pae.extend_from_slice(payload);
        let envelope = json!({
            "payload": b64().encode(payload),
            "payloadType": payload_type,
            "signatures": [{ "keyid": self.keyid, "sig": b64().encode(key.sign(&pae).to_bytes()) }],
        });
        self.write("resigned.intoto.jsonl", &format!("{envelope}\n"))
    }
    /// The statement, edited by `edit`, signed by our key.
    fn resigned(&self, edit: impl Fn(&mut Value), payload_type: &str) -> PathBuf {
        let mut st = self.statement();
        edit(&mut st);
        self.signed(&serde_json::to_vec(&st).unwrap(), payload_type)
    }
}

#[test]
fn provenance_from_a_real_run_is_accepted_from_both_files_and_as_json() {
    let b = build("verify-good");
    b.verify(&b.jsonl(), None).expect(0, &b.accepted());
    b.verify(&b.bundle(), None).expect(0, &b.accepted());

    let weakened = b.weakened();
    let allow = b.write("allow.toml", &format!("forbid_weakened = {}\n", !weakened));
    let mut args: Vec<PathBuf> = vec!["--json".into(), "--provenance".into(), b.bundle()];
    args.extend(["--policy".into(), allow.clone()]);
    args.extend(["--key".into(), b.public(), b.artifact()]);
    let v = bulwark_verify(args);
    assert_eq!(v.code, 0, "{v:#?}");
    let list: Value = serde_json::from_str(&v.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["accepted"], json!(true), "{list}");
    assert_eq!(list[0]["subject"], json!("dist/app.txt"), "{list}");
    assert_eq!(
        list[0]["sha256"],
        json!(sha256_file(&b.artifact())),
        "{list}"
    );

    // Several trusted keys: any one that verifies is enough.
    let other = b.env.dir.join("other-keys");
    keygen(&other, "p256");
    let mut args: Vec<PathBuf> = vec!["--provenance".into(), b.jsonl()];
    args.extend(["--key".into(), other.join("signing.pub")]);
    args.extend(["--key".into(), b.public(), b.artifact()]);
    args.extend(["--policy".into(), allow]);
    bulwark_verify(args).expect(0, &b.accepted());

    // A policy holding everything the statement says accepts it.
    let st = b.statement();
    let builder = st["predicate"]["runDetails"]["builder"]["id"]
        .as_str()
        .unwrap();
    let mode = st["predicate"]["buildDefinition"]["internalParameters"]["isolation"]["mode"]
        .as_str()
        .unwrap();
    let pins: Vec<Value> = st["predicate"]["buildDefinition"]["resolvedDependencies"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["name"] != "source")
        .map(|d| d["digest"]["sha256"].clone())
        .collect();
    let policy = format!(
        "builder_ids = [\"{builder}\"]\nsource_uris = [\"file:///*\"]\nrequire_trust = \"untrusted\"\n\
         require_isolation = [\"{mode}\"]\nallowed_dependency_digests = {}\n\
         quarantined_digests = [\"{}\"]\nmax_age = \"1h\"\n",
        Value::Array(pins),
        "0".repeat(64)
    );
    b.verify(&b.jsonl(), Some(&policy)).expect(0, &b.accepted());
    b.verify(&b.bundle(), Some(&policy))
        .expect(0, &b.accepted());
}

#[test]
fn a_weakened_build_is_rejected_unless_the_policy_accepts_weakened_builds() {
    let b = build("verify-weakened");
    let p = b.resigned(
        |st| {
            st["predicate"]["buildDefinition"]["internalParameters"]["weakened"] =
                json!(["rlimit-fallback"])
        },
        IN_TOTO,
    );
    let run = |policy: Option<&str>| {
        let mut args: Vec<PathBuf> = vec!["--provenance".into(), p.clone()];
        args.extend(["--key".into(), b.public(), b.artifact()]);
        if let Some(text) = policy {
            args.extend(["--policy".into(), b.write("policy.toml", text)]);
        }
        bulwark_verify(args)
    };
    let want = b.rejected("forbid_weakened: internalParameters.weakened lists [\"rlimit-fallback\"]; set forbid_weakened = false to accept weakened builds");
    run(None).expect(1, &want);
    run(Some("forbid_weakened = true")).expect(1, &want);
    run(Some("forbid_weakened = false")).expect(0, &b.accepted());
}

#[test]
fn a_payload_changed_by_one_byte_is_rejected_by_the_signature_check_in_both_files() {
    let b = build("verify-tamper");
    let payload = b.payload();
    let text = String::from_utf8(payload.clone()).unwrap();
    let changed = text.replacen("\"dist/app.txt\"", "\"dist/App.txt\"", 1);
    assert_eq!(
        payload
            .iter()
            .zip(changed.as_bytes())
            .filter(|(a, b)| a != b)
            .count(),
        1
    );
    serde_json::from_str::<Value>(&changed).unwrap();
    let forged = b64().encode(changed.as_bytes());
    let want = b.rejected("signature: no signature verifies with a trusted key");

    let mut env = b.envelope();
    env["payload"] = json!(forged);
    let jsonl = b.write("tampered.intoto.jsonl", &format!("{env}\n"));
    b.verify(&jsonl, None).expect(1, &want);

    let mut bundle: Value = serde_json::from_str(&fs::read_to_string(b.bundle()).unwrap()).unwrap();
    bundle["dsseEnvelope"]["payload"] = json!(forged);
    let bundle = b.write("tampered.sigstore.json", &bundle.to_string());
    b.verify(&bundle, None).expect(1, &want);
}

#[test]
fn a_signature_with_one_bit_flipped_is_rejected() {
    let b = build("verify-bitflip");
    let mut env = b.envelope();
    let mut sig = b64()
        .decode(env["signatures"][0]["sig"].as_str().unwrap())
        .unwrap();
    sig[10] ^= 0x01;
    env["signatures"][0]["sig"] = json!(b64().encode(&sig));
    let p = b.write("bitflip.intoto.jsonl", &format!("{env}\n"));
    b.verify(&p, None).expect(
        1,
        &b.rejected("signature: no signature verifies with a trusted key"),
    );
}

#[test]
fn provenance_signed_by_a_key_that_is_not_trusted_is_rejected_naming_both_key_ids() {
    let b = build("verify-otherkey");
    let other = b.env.dir.join("other-keys");
    let other_id = keygen(&other, "p256");
    let mut args: Vec<PathBuf> = vec!["--provenance".into(), b.jsonl()];
    args.extend(["--key".into(), other.join("signing.pub"), b.artifact()]);
    let v = bulwark_verify(args);
    v.expect(
        1,
        &b.rejected(&format!(
            "signature: no signature verifies with a trusted key (trusted: {other_id}; signatures by: {})",
            b.keyid
        )),
    );
}

#[test]
fn with_two_trusted_keys_builder_keys_accepts_a_builder_only_from_its_own_key() {
    let b = build("verify-builder-keys");
    let other = b.env.dir.join("other-keys");
    let other_id = keygen(&other, "p256");
    let builder = b.statement()["predicate"]["runDetails"]["builder"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let verify_bound = |keyid: &str| {
        let weakened = if b.weakened() {
            "forbid_weakened = false\n"
        } else {
            ""
        };
        let policy = b.write(
            "bound.toml",
            &format!("{weakened}[builder_keys]\n\"{builder}\" = [\"{keyid}\"]\n"),
        );
        let mut args: Vec<PathBuf> = vec!["--provenance".into(), b.jsonl()];
        args.extend(["--key".into(), b.public(), "--key".into()]);
        args.extend([
            other.join("signing.pub"),
            "--policy".into(),
            policy,
            b.artifact(),
        ]);
        bulwark_verify(args)
    };
    // Both keys are trusted; the builder is bound to the other one, which did not sign.
    verify_bound(&other_id).expect(
        1,
        &b.rejected(&format!(
            "builder_keys: runDetails.builder.id is \"{builder}\", whose keys are [{other_id}], \
             but the statement is signed by [{}]: another builder's key cannot speak for it",
            b.keyid
        )),
    );
    verify_bound(&b.keyid).expect(0, &b.accepted());
}

#[test]
fn an_artifact_whose_digest_is_not_a_subject_is_rejected_and_the_others_still_judged() {
    let b = build("verify-subject");
    let modified = b.env.dir.join("app.txt");
    let mut bytes = fs::read(b.artifact()).unwrap();
    bytes.push(b'x');
    fs::write(&modified, &bytes).unwrap();
    let allow = b.write(
        "allow.toml",
        &format!("forbid_weakened = {}\n", !b.weakened()),
    );
    let mut args: Vec<PathBuf> = vec!["--provenance".into(), b.bundle(), "--policy".into(), allow];
    args.extend(["--key".into(), b.public(), b.artifact(), modified.clone()]);
    let v = bulwark_verify(args);
    v.expect(1, &b.accepted()).expect(
        1,
        &format!(
            "REJECTED {}: subject: sha256 {} is not the digest of any of the 1 subjects (\"dist/app.txt\")",
            modified.display(),
            sha256_file(&modified)
        ),
    );
}

#[test]
fn each_policy_check_rejects_real_provenance_naming_the_check_and_the_values_seen() {
    let b = build("verify-policy");
    let st = b.statement();
    let builder = st["predicate"]["runDetails"]["builder"]["id"]
        .as_str()
        .unwrap();
    let mode = st["predicate"]["buildDefinition"]["internalParameters"]["isolation"]["mode"]
        .as_str()
        .unwrap();
    let other_mode = if mode == "subuid" {
        "root-per-job-uid"
    } else {
        "subuid"
    };
    let runner = &st["predicate"]["runDetails"]["builder"]["builderDependencies"][0];
    let runner_sha = runner["digest"]["sha256"].as_str().unwrap();
    let source = &st["predicate"]["buildDefinition"]["resolvedDependencies"][0];
    assert_eq!(source["name"], "source", "{st}");
    let tree = source["digest"]["sha256"].as_str().unwrap();
    let cases = [
        (
            "builder_ids = [\"https://ci.example.com/bulwark/pool-a\"]".to_string(),
            format!("builder_ids: runDetails.builder.id is \"{builder}\", not one of [\"https://ci.example.com/bulwark/pool-a\"]"),
        ),
        (
            "require_trust = \"trusted\"".to_string(),
            "require_trust: externalParameters.trust is \"untrusted\", the policy requires \"trusted\"".to_string(),
        ),
        (
            format!("require_isolation = [\"{other_mode}\"]"),
            format!("require_isolation: internalParameters.isolation.mode is \"{mode}\", not one of [\"{other_mode}\"]"),
        ),
        (
            format!("quarantined_digests = [\"{runner_sha}\"]"),
            format!("quarantined_digests: builderDependencies \"bulwark\" (\"{}\") has quarantined sha256 {runner_sha}", runner["uri"].as_str().unwrap()),
        ),
        (
            format!("quarantined_digests = [\"{tree}\"]"),
            "quarantined_digests: resolvedDependencies \"source\"".to_string(),
        ),
        (
            "source_uris = [\"https://git.example.com/org/*\"]".to_string(),
            "source_uris: resolvedDependencies \"source\" uri is \"file:///".to_string(),
        ),
        (
            "source_refs = [\"refs/heads/main\", \"refs/tags/v*\"]".to_string(),
            "source_refs: the statement has no externalParameters.source.ref".to_string(),
        ),
    ];
    for (policy, want) in cases {
        b.verify(&b.jsonl(), Some(&policy))
            .expect(1, &b.rejected(&want));
    }
    // The same verdict from the bundle.
    b.verify(&b.bundle(), Some("require_trust = \"trusted\""))
        .expect(1, &b.rejected("require_trust: "));
}

#[test]
fn an_unknown_payload_type_is_rejected_even_with_a_valid_signature() {
    let b = build("verify-ptype");
    // Our own signer is right: the unmodified statement re-signed is accepted.
    b.verify(&b.signed(&b.payload(), IN_TOTO), None)
        .expect(0, &b.accepted());
    b.verify(&b.signed(&b.payload(), "application/json"), None)
        .expect(
            1,
            &b.rejected(
                "payloadType: \"application/json\", expected \"application/vnd.in-toto+json\"",
            ),
        );
    // Rewriting the type of the runner's own envelope breaks its signature (the type is signed)
    // and is refused either way.
    let mut env = b.envelope();
    env["payloadType"] = json!("application/vnd.example+json");
    let p = b.write("retyped.intoto.jsonl", &format!("{env}\n"));
    b.verify(&p, None).expect(1, &b.rejected("payloadType: "));
}

#[test]
fn a_statement_v0_1_is_rejected_by_name_even_with_a_valid_signature() {
    let b = build("verify-v01");
    b.verify(&b.resigned(|_| {}, IN_TOTO), None)
        .expect(0, &b.accepted());
    let p = b.resigned(
        |st| st["_type"] = json!("https://in-toto.io/Statement/v0.1"),
        IN_TOTO,
    );
    b.verify(&p, None).expect(
        1,
        &b.rejected("_type: in-toto Statement v0.1 (https://in-toto.io/Statement/v0.1) is not accepted; only Statement v1 (https://in-toto.io/Statement/v1)"),
    );
    let p = b.resigned(
        |st| st["predicateType"] = json!("https://slsa.dev/provenance/v0.2"),
        IN_TOTO,
    );
    b.verify(&p, None).expect(
        1,
        &b.rejected("predicateType: \"https://slsa.dev/provenance/v0.2\", expected \"https://slsa.dev/provenance/v1\""),
    );
}

#[test]
fn provenance_older_than_max_age_is_rejected() {
    let b = build("verify-age");
    let old = b.resigned(
        |st| {
            st["predicate"]["runDetails"]["metadata"]["startedOn"] = json!("2020-01-01T00:00:00Z");
            st["predicate"]["runDetails"]["metadata"]["finishedOn"] = json!("2020-01-01T00:01:00Z");
        },
        IN_TOTO,
    );
    b.verify(&old, None).expect(0, &b.accepted());
    let v = b.verify(&old, Some("max_age = \"30d\""));
    v.expect(1, &b.rejected("max_age: finished "));
    assert!(
        v.stdout.contains(
            "(runDetails.metadata.finishedOn 2020-01-01T00:01:00Z), more than max_age 30days"
        ),
        "{v:#?}"
    );
    // The fresh statement passes the same policy.
    b.verify(&b.jsonl(), Some("max_age = \"30d\""))
        .expect(0, &b.accepted());
}

#[test]
fn one_bad_envelope_in_a_jsonl_file_rejects_every_artifact() {
    let b = build("verify-lines");
    let good = b.envelope();
    let mut bad = good.clone();
    let mut sig = b64()
        .decode(bad["signatures"][0]["sig"].as_str().unwrap())
        .unwrap();
    sig[0] ^= 0x80;
    bad["signatures"][0]["sig"] = json!(b64().encode(&sig));
    let p = b.write("two.intoto.jsonl", &format!("{good}\n\n{bad}\n"));
    b.verify(&p, None).expect(
        1,
        &b.rejected("signature: envelope 2 of 2: no signature verifies with a trusted key"),
    );
    let p = b.write("twice.intoto.jsonl", &format!("{good}\n{good}\n"));
    b.verify(&p, None).expect(0, &b.accepted());
}

#[test]
fn a_policy_with_an_unknown_field_or_a_bad_value_exits_2_naming_the_file_and_key() {
    let b = build("verify-badpolicy");
    for (text, want) in [
        (
            "builder_ids = [\"x\"]\nbuilder_id = \"x\"\n",
            "line 2, column 1: unknown field `builder_id`",
        ),
        (
            "require_trust = \"yes\"\n",
            "require_trust: \"yes\" is not a trust level",
        ),
        (
            "max_age = \"30 days\"\n",
            "max_age: \"30 days\" is not a duration",
        ),
    ] {
        let policy = b.write("policy.toml", text);
        let mut args: Vec<PathBuf> = vec!["--provenance".into(), b.jsonl(), "--policy".into()];
        args.extend([policy, "--key".into(), b.public(), b.artifact()]);
        let v = bulwark_verify(args);
        assert_eq!(v.code, 2, "{text}: {v:#?}");
        assert!(v.stdout.is_empty(), "{v:#?}");
        assert!(
            v.stderr.contains("policy.toml: ") && v.stderr.contains(want),
            "{text}: {v:#?}"
        );
    }
}

#[test]
fn unreadable_inputs_exit_2_naming_the_file() {
    let b = build("verify-unreadable");
    let missing = b.env.dir.join("missing.tar.gz");
    let garbage = b.write("garbage.intoto.jsonl", "{\"payload\": \"x\"}\nnot json\n");
    let cases: Vec<(Vec<PathBuf>, String)> = vec![
        (
            vec![
                "--provenance".into(),
                b.jsonl(),
                "--key".into(),
                b.public(),
                missing.clone(),
            ],
            format!("artifact {}: cannot read", missing.display()),
        ),
        (
            vec![
                "--provenance".into(),
                b.jsonl(),
                "--key".into(),
                b.keys.join("signing.key"),
                b.artifact(),
            ],
            format!(
                "public key {}: not an SPKI PEM",
                b.keys.join("signing.key").display()
            ),
        ),
        (
            vec![
                "--provenance".into(),
                garbage.clone(),
                "--key".into(),
                b.public(),
                b.artifact(),
            ],
            format!(
                "provenance {}: line 1: not a DSSE envelope",
                garbage.display()
            ),
        ),
        (
            vec![
                "--provenance".into(),
                missing.clone(),
                "--key".into(),
                b.public(),
                b.artifact(),
            ],
            format!("provenance {}: cannot read", missing.display()),
        ),
        (
            vec!["--provenance".into(), b.jsonl(), b.artifact()],
            "--key <PUB>".to_string(),
        ),
    ];
    for (args, want) in cases {
        let v = bulwark_verify(&args);
        assert_eq!(v.code, 2, "{args:?}: {v:#?}");
        assert!(v.stderr.contains(&want), "{args:?}: want {want:?}: {v:#?}");
        assert!(v.stdout.is_empty(), "{v:#?}");
    }
}

/// A provenance file of `bytes` bytes: an envelope (nothing signed) with an unknown field `x`
/// holding tiny objects, the shape that costs a JSON value tree a hundred times its size.
fn padded_envelope(path: &Path, bytes: usize) {
    let head =
        r#"{"payload":"","payloadType":"application/vnd.in-toto+json","signatures":[],"x":["#;
    let n = (bytes - head.len()) / 7;
    let mut text = String::with_capacity(bytes + 16);
    text.push_str(head);
    for i in 0..n {
        if i > 0 {
            text.push(',');
        }
        text.push_str(r#"{"":0}"#);
    }
    text.push_str("]}\n");
    fs::write(path, text).unwrap();
}

#[test]
fn a_60_mb_padded_envelope_is_refused_by_name_within_a_few_hundred_mib_of_address_space() {
    // Without prlimit(1) the bound cannot be imposed: said, not silently green.
    if Command::new("prlimit").arg("--version").output().is_err() {
        eprintln!("skipped: prlimit(1) not found; it bounds the verifier's address space");
        return;
    }
    let dir = bulwark_tests::TempDir::new("verify-padded");
    let keyid = keygen(&dir.join("keys"), "ed25519");
    assert!(keyid.starts_with("sha256:"));
    let prov = dir.join("padded.intoto.jsonl");
    padded_envelope(&prov, 60 << 20);
    let artifact = dir.join("app.tar.gz");
    fs::write(&artifact, "app").unwrap();
    // The whole file is read (60 MiB) and kept as text; a tree of it took 6 GB. 384 MiB of
    // address space holds the debug binary, the text and the typed envelope.
    let limited = |args: &[&OsStr]| {
        let o = Command::new("prlimit")
            .arg(format!("--as={}", 384u64 << 20))
            .arg("--")
            .arg(bulwark_bin())
            .args(args)
            .output()
            .unwrap();
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let key = dir.join("keys/signing.pub");
    let (code, stdout, stderr) = limited(&[
        OsStr::new("verify"),
        OsStr::new("--provenance"),
        prov.as_os_str(),
        OsStr::new("--key"),
        key.as_os_str(),
        artifact.as_os_str(),
    ]);
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "bulwark: verify: provenance {}: not a DSSE envelope or a Sigstore bundle: unknown \
             field `x`",
            prov.display()
        )),
        "{stderr}"
    );
    // `inventory add` reads provenance the same way: the file is refused, not the process.
    let index = dir.join("inventory.jsonl");
    let (code, stdout, stderr) = limited(&[
        OsStr::new("inventory"),
        OsStr::new("add"),
        OsStr::new("--key"),
        key.as_os_str(),
        OsStr::new("--index"),
        index.as_os_str(),
        prov.as_os_str(),
    ]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stdout.starts_with(&format!(
            "REFUSED {}: not a DSSE envelope or a Sigstore bundle: unknown field `x`",
            prov.display()
        )),
        "{stdout}{stderr}"
    );
}
