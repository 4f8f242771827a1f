//! Interoperability: tools Bulwark did not write accept the provenance it writes, and reject it
//! once tampered with.
//!
//! For both key algorithms, a real job is run with an output and `--key` from `bulwark keygen`,
//! and three independent verifiers (tests/interop/) are run over the result:
//! securesystemslib's DSSE `Envelope.verify` over `provenance.intoto.jsonl`, the
//! in-toto-attestation package's Statement v1 and SLSA Provenance v1 protobufs over its payload,
//! and `@sigstore/verify` over `provenance.sigstore.json`, offline, with the public key.
//!
//! The verifiers are installed by `tests/interop/setup.sh` (`.ci/run` runs it) into
//! `$BULWARK_INTEROP_DIR`, default `/opt/bulwark-interop`, world-readable so the rootless pass
//! of scripts/test.sh runs them too. Without them these tests fail, saying so: they never pass
//! without having checked anything.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use bulwark_tests::{bulwark_bin, one_step, repo_root, Env, Run};

const JSONL: &str = "provenance.intoto.jsonl";
const BUNDLE: &str = "provenance.sigstore.json";

/// The installed verifiers and the scripts that drive them.
struct Tools {
    /// `$BULWARK_INTEROP_DIR` or /opt/bulwark-interop.
    dir: PathBuf,
    /// The venv's python.
    python: PathBuf,
    /// Where verify_dsse.py, validate_statement.py and verify_bundle.mjs are.
    scripts: PathBuf,
}

fn tools() -> Tools {
    let dir = std::env::var_os("BULWARK_INTEROP_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/bulwark-interop"));
    let python = dir.join("venv/bin/python");
    let sigstore = dir.join("node/node_modules/@sigstore/verify/package.json");
    assert!(
        python.exists() && sigstore.exists(),
        "the interop verifiers are not installed in {} (no {} or no {}): run \
         tests/interop/setup.sh (as root for the default /opt/bulwark-interop, or with \
         BULWARK_INTEROP_DIR=<dir> for both setup.sh and the tests)",
        dir.display(),
        python.display(),
        sigstore.display()
    );
    // In the repository: tests/interop; in the rootless pass's staging copy: interop/.
    let scripts = [
        repo_root().join("tests/interop"),
        repo_root().join("interop"),
    ]
    .into_iter()
    .find(|d| d.join("verify_dsse.py").exists())
    .unwrap_or_else(|| {
        panic!(
            "no tests/interop/verify_dsse.py under {}",
            repo_root().display()
        )
    });
    Tools {
        dir,
        python,
        scripts,
    }
}

/// What one verifier said.
struct Verdict {
    what: String,
    output: Output,
}

impl Verdict {
    fn ok(&self) -> bool {
        self.output.status.success()
    }

    fn text(&self) -> String {
        format!(
            "{} exited {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.what,
            self.output.status.code(),
            String::from_utf8_lossy(&self.output.stdout),
            String::from_utf8_lossy(&self.output.stderr)
        )
    }

    fn assert_accepted(&self) {
        assert!(self.ok(), "expected acceptance:\n{}", self.text());
        assert!(
            String::from_utf8_lossy(&self.output.stdout).contains(": OK:"),
            "exit 0 without saying OK:\n{}",
            self.text()
        );
    }

    fn assert_rejected(&self) {
        assert!(!self.ok(), "expected rejection:\n{}", self.text());
        assert!(
            String::from_utf8_lossy(&self.output.stderr).contains("FAIL:"),
            "rejected without saying why (no FAIL: line):\n{}",
            self.text()
        );
    }
}

impl Tools {
    fn run(&self, what: &str, program: &Path, args: &[&Path]) -> Verdict {
        let output = Command::new(program)
            .args(args)
            .env("BULWARK_INTEROP_DIR", &self.dir)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
        Verdict {
            what: what.to_string(),
            output,
        }
    }

    /// securesystemslib `Envelope.verify` over every line of the JSONL file.
    fn verify_dsse(&self, jsonl: &Path, public: &Path) -> Verdict {
        self.run(
            "verify_dsse.py (securesystemslib)",
            &self.python,
            &[&self.scripts.join("verify_dsse.py"), jsonl, public],
        )
    }

    /// in-toto-attestation's Statement v1 and SLSA Provenance v1 protobufs over the payloads.
    fn validate_statement(&self, jsonl: &Path) -> Verdict {
        self.run(
            "validate_statement.py (in-toto-attestation)",
            &self.python,
            &[&self.scripts.join("validate_statement.py"), jsonl],
        )
    }

    /// `@sigstore/verify` over the bundle, offline, with the public key.
    fn verify_bundle(&self, bundle: &Path, public: &Path) -> Verdict {
        self.run(
            "verify_bundle.mjs (@sigstore/verify)",
            Path::new("node"),
            &[&self.scripts.join("verify_bundle.mjs"), bundle, public],
        )
    }
}

/// A key pair from `bulwark keygen` and a finished job signed with it.
struct Signed {
    env: Env,
    public: PathBuf,
    run: Run,
}

fn signed_job(algorithm: &str) -> Signed {
    let env = Env::new(&format!("interop-{algorithm}"));
    env.write_src("greeting.txt", "hello\n");
    let keys = env.dir.join("keys");
    let o = Command::new(bulwark_bin())
        .args(["keygen", "--algorithm", algorithm, "--out"])
        .arg(&keys)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "bulwark keygen --algorithm {algorithm} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let job = one_step(
        "interop",
        "mkdir -p dist\ntr a-z A-Z < greeting.txt > dist/greeting.txt\necho built",
        "[outputs]\npaths = [\"dist/*.txt\"]\n",
    );
    let key = keys.join("signing.key");
    let run = env.run_with(&job, &["--key", key.to_str().unwrap()]);
    run.assert_code(0);
    for name in [JSONL, BUNDLE] {
        assert!(run.out.join(name).exists(), "no {name} written\n{run}");
    }
    Signed {
        public: keys.join("signing.pub"),
        env,
        run,
    }
}

fn all_three_accept(algorithm: &str) {
    let tools = tools();
    let s = signed_job(algorithm);
    let jsonl = s.run.out.join(JSONL);
    let bundle = s.run.out.join(BUNDLE);
    tools.verify_dsse(&jsonl, &s.public).assert_accepted();
    tools.validate_statement(&jsonl).assert_accepted();
    tools.verify_bundle(&bundle, &s.public).assert_accepted();
}

/// Rewrites the payload of the envelope in `text` (a JSONL line or a bundle) with `edit`,
/// re-encoded, leaving the signature as it was.
fn tamper(text: &str, edit: &dyn Fn(&mut Vec<u8>)) -> String {
    let mut doc: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    let envelope = match doc.get_mut("dsseEnvelope") {
        Some(e) => e,
        None => &mut doc,
    };
    let mut payload = b64_decode(envelope["payload"].as_str().unwrap());
    let before = payload.clone();
    edit(&mut payload);
    assert_eq!(before.len(), payload.len());
    assert_eq!(
        before.iter().zip(&payload).filter(|(a, b)| a != b).count(),
        1,
        "the edit changes exactly one byte"
    );
    envelope["payload"] = serde_json::Value::String(b64_encode(&payload));
    if text.trim_end().contains('\n') {
        serde_json::to_string_pretty(&doc).unwrap() + "\n"
    } else {
        doc.to_string() + "\n"
    }
}

/// Changes one byte of the payload at the first occurrence of `needle` (its last byte, +1).
fn change_one_byte_in(needle: &'static str) -> impl Fn(&mut Vec<u8>) {
    move |p: &mut Vec<u8>| {
        let at = p
            .windows(needle.len())
            .position(|w| w == needle.as_bytes())
            .unwrap_or_else(|| panic!("payload lacks {needle}"))
            + needle.len()
            - 1;
        p[at] += 1;
    }
}

fn tampered_copies(s: &Signed, edit: &dyn Fn(&mut Vec<u8>)) -> (PathBuf, PathBuf) {
    let jsonl = s.env.dir.join("tampered.intoto.jsonl");
    let bundle = s.env.dir.join("tampered.sigstore.json");
    let text = fs::read_to_string(s.run.out.join(JSONL)).unwrap();
    assert_eq!(text.lines().count(), 1, "one envelope per run:\n{text}");
    fs::write(&jsonl, tamper(&text, edit)).unwrap();
    let text = fs::read_to_string(s.run.out.join(BUNDLE)).unwrap();
    fs::write(&bundle, tamper(&text, edit)).unwrap();
    (jsonl, bundle)
}

fn all_three_reject_a_misspelled_field(algorithm: &str) {
    let tools = tools();
    let s = signed_job(algorithm);
    // "buildType" becomes "buildTypf": the signature no longer matches, and the statement
    // check, which has no key, sees an unknown field in the SLSA predicate.
    let (jsonl, bundle) = tampered_copies(&s, &change_one_byte_in("\"buildType"));
    tools.verify_dsse(&jsonl, &s.public).assert_rejected();
    tools.validate_statement(&jsonl).assert_rejected();
    tools.verify_bundle(&bundle, &s.public).assert_rejected();
}

fn both_signature_checks_reject_a_changed_value(algorithm: &str) {
    let tools = tools();
    let s = signed_job(algorithm);
    // A well-formed statement that says something else: only the signature can tell.
    let (jsonl, bundle) = tampered_copies(&s, &change_one_byte_in("\"trust\":\"u"));
    tools.verify_dsse(&jsonl, &s.public).assert_rejected();
    tools.verify_bundle(&bundle, &s.public).assert_rejected();
    // And neither accepts the untouched files with the other algorithm's key.
    let other = if algorithm == "p256" {
        "ed25519"
    } else {
        "p256"
    };
    let keys = s.env.dir.join("other-keys");
    let o = Command::new(bulwark_bin())
        .args(["keygen", "--algorithm", other, "--out"])
        .arg(&keys)
        .output()
        .unwrap();
    assert!(o.status.success());
    let wrong = keys.join("signing.pub");
    tools
        .verify_dsse(&s.run.out.join(JSONL), &wrong)
        .assert_rejected();
    tools
        .verify_bundle(&s.run.out.join(BUNDLE), &wrong)
        .assert_rejected();
}

#[test]
fn securesystemslib_in_toto_attestation_and_sigstore_verify_accept_p256_provenance() {
    all_three_accept("p256");
}

#[test]
fn securesystemslib_in_toto_attestation_and_sigstore_verify_accept_ed25519_provenance() {
    all_three_accept("ed25519");
}

#[test]
fn every_verifier_rejects_a_p256_envelope_whose_payload_changed_by_one_byte() {
    all_three_reject_a_misspelled_field("p256");
}

#[test]
fn every_verifier_rejects_an_ed25519_envelope_whose_payload_changed_by_one_byte() {
    all_three_reject_a_misspelled_field("ed25519");
}

#[test]
fn both_signature_verifiers_reject_a_changed_p256_statement_and_a_wrong_key() {
    both_signature_checks_reject_a_changed_value("p256");
}

#[test]
fn both_signature_verifiers_reject_a_changed_ed25519_statement_and_a_wrong_key() {
    both_signature_checks_reject_a_changed_value("ed25519");
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
fn b64_encode(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 with padding (panics on anything else: our own output).
fn b64_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = B64
            .iter()
            .position(|&x| x == c)
            .unwrap_or_else(|| panic!("not standard base64: {c:?}")) as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[test]
fn the_tests_own_base64_round_trips() {
    for data in [&b""[..], b"f", b"fo", b"foo", b"foob", b"fooba", b"foobar"] {
        assert_eq!(b64_decode(&b64_encode(data)), data);
    }
    assert_eq!(b64_encode(b"foobar"), "Zm9vYmFy");
    assert_eq!(b64_encode(b"fo"), "Zm8=");
}
