//! `bulwark inventory`: real runs are recorded in the host's inventory as they are signed, and
//! `inventory query` finds the artifacts that used a given tool; `inventory add` indexes only
//! provenance that verifies with the operator's key, and never a file with a tampered or
//! foreign envelope in it. Runs as root and rootless alike.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;
use std::process::Command;

use base64::Engine;
use bulwark_tests::{bulwark_bin, sha256_file, Env};

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn inventory(args: &[&std::ffi::OsStr]) -> Out {
    let o = Command::new(bulwark_bin())
        .arg("inventory")
        .args(args)
        .output()
        .unwrap();
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn os<S: AsRef<std::ffi::OsStr> + ?Sized>(s: &S) -> &std::ffi::OsStr {
    s.as_ref()
}

/// A pinned tool (a tar.gz with bin/hello) served from a `file://` root, and a job that uses it
/// and outputs one file; returns the tool's sha256.
fn tool_and_job(env: &Env, tool_version: &str) -> (String, String) {
    let root = env.dir.join("tools-root");
    let src = env.dir.join(format!("toolsrc-{tool_version}"));
    fs::create_dir_all(src.join("bin")).unwrap();
    fs::write(
        src.join("bin/hello"),
        format!("#!/bin/sh\necho hello {tool_version}\n"),
    )
    .unwrap();
    fs::create_dir_all(&root).unwrap();
    let archive = root.join(format!("hello-{tool_version}.tar.gz"));
    let status = Command::new("tar")
        .arg("-C")
        .arg(&src)
        .arg("-czf")
        .arg(&archive)
        .arg("bin")
        .status()
        .unwrap();
    assert!(status.success());
    let sha = sha256_file(&archive);
    env.write_config_sections(
        "",
        &format!("[fetch]\nfile_roots = [\"{}\"]\n", root.display()),
    );
    let job = format!(
        "version = 1\nname = \"inv\"\n[[tools]]\nname = \"hello\"\nurl = \"file://{}\"\nsha256 = \"{sha}\"\n[[steps]]\nname = \"build\"\nrun = \"sh /tools/hello/bin/hello > app.txt\"\n[outputs]\npaths = [\"app.txt\"]\n",
        archive.display()
    );
    (sha, job)
}

#[test]
fn a_run_is_in_the_hosts_inventory_and_a_query_finds_what_used_its_tool() {
    let env = Env::new("inventory");
    let (sha, job) = tool_and_job(&env, "1.0");
    let r = env.run(&job);
    r.assert_code(0);
    let app = sha256_file(&r.out.join("app.txt"));
    let config = env.config.clone();
    // By the tool's digest: the artifact, what matched, where its provenance is.
    let q = inventory(&[
        os("query"),
        os("--config"),
        config.as_os_str(),
        os("--digest"),
        os(&sha),
    ]);
    assert_eq!(q.code, 0, "{q}");
    assert!(
        q.stdout.starts_with(&format!("{app}  \"app.txt\"  built ")),
        "{q}"
    );
    assert!(q.stdout.contains("used \"hello\" (file://"), "{q}");
    assert!(
        q.stdout
            .contains(&r.out.join("provenance.intoto.jsonl").display().to_string()),
        "{q}"
    );
    // JSON, and by the artifact's own digest.
    let q = inventory(&[
        os("query"),
        os("--config"),
        config.as_os_str(),
        os("--digest"),
        os(&app),
        os("--json"),
    ]);
    assert_eq!(q.code, 0, "{q}");
    let v: serde_json::Value = serde_json::from_str(&q.stdout).unwrap();
    assert_eq!(v[0]["artifact"]["sha256"], app.as_str());
    // Nothing used another digest: exit 1.
    let q = inventory(&[
        os("query"),
        os("--config"),
        config.as_os_str(),
        os("--digest"),
        os(&"e".repeat(64)),
    ]);
    assert_eq!(q.code, 1, "{q}");
    assert!(q.stdout.is_empty(), "{q}");
    // A malformed question is a usage error naming the option.
    let q = inventory(&[
        os("query"),
        os("--config"),
        config.as_os_str(),
        os("--commit"),
        os("12"),
    ]);
    assert_eq!(q.code, 2, "{q}");
    assert!(q.stderr.contains("--commit"), "{q}");
}

/// `provenance.intoto.jsonl` with its payload changed by one statement field, signature kept.
fn tampered(from: &Path, to: &Path) {
    let text = fs::read_to_string(from.join("provenance.intoto.jsonl")).unwrap();
    let mut env: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let payload = b64.decode(env["payload"].as_str().unwrap()).unwrap();
    let mut statement: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    statement["subject"][0]["digest"]["sha256"] = "f".repeat(64).into();
    env["payload"] = b64.encode(serde_json::to_vec(&statement).unwrap()).into();
    fs::create_dir_all(to).unwrap();
    fs::write(
        to.join("provenance.intoto.jsonl"),
        format!("{}\n", serde_json::to_string(&env).unwrap()),
    )
    .unwrap();
}

#[test]
fn inventory_add_indexes_only_what_verifies_and_each_statement_once() {
    let env = Env::new("inventory-add");
    let (sha, job) = tool_and_job(&env, "2.0");
    let r = env.run(&job);
    r.assert_code(0);
    let key = env.state.join("keys/signing.pub");
    let index = env.dir.join("fleet.jsonl");
    // Both files of the run hold the same statement: indexed once.
    let a = inventory(&[
        os("add"),
        os("--key"),
        key.as_os_str(),
        os("--index"),
        index.as_os_str(),
        r.out.as_os_str(),
    ]);
    assert_eq!(a.code, 0, "{a}");
    assert!(
        a.stdout
            .contains("indexed 1 new statement(s) of 2 verified"),
        "{a}"
    );
    // A tampered copy and a file signed by another key: refused, named, nothing added.
    let bad = env.dir.join("collected/tampered");
    tampered(&r.out, &bad);
    let other = env.dir.join("otherkey");
    let k = Command::new(bulwark_bin())
        .args(["keygen", "--out"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(k.status.success());
    let a = inventory(&[
        os("add"),
        os("--key"),
        key.as_os_str(),
        os("--index"),
        index.as_os_str(),
        env.dir.join("collected").as_os_str(),
    ]);
    assert_eq!(a.code, 1, "{a}");
    assert!(
        a.stdout.contains("REFUSED")
            && a.stdout
                .contains("tampered/provenance.intoto.jsonl: signature"),
        "{a}"
    );
    let a = inventory(&[
        os("add"),
        os("--key"),
        other.join("signing.pub").as_os_str(),
        os("--index"),
        index.as_os_str(),
        r.out.as_os_str(),
    ]);
    assert_eq!(a.code, 1, "{a}");
    assert_eq!(fs::read_to_string(&index).unwrap().lines().count(), 1);
    // The index answers: by the tool, by builder id.
    let q = inventory(&[
        os("query"),
        os("--index"),
        index.as_os_str(),
        os("--digest"),
        os(&sha),
        os("--builder"),
        os("https://bulwark.invalid/builder/local"),
    ]);
    assert_eq!(q.code, 0, "{q}");
    assert!(q.stdout.contains("app.txt"), "{q}");
    // The forged digest is in no index.
    let q = inventory(&[
        os("query"),
        os("--index"),
        index.as_os_str(),
        os("--digest"),
        os(&"f".repeat(64)),
    ]);
    assert_eq!(q.code, 1, "{q}");
}

/// What `add` and `query` print is escaped: a forged envelope's key id (nothing signed it)
/// and a collected file's name are shown in REFUSED lines, a job's output names in query
/// lines; none may print a line of its own (`indexed …`) or reorder the line (U+202E).
#[test]
fn inventory_output_lines_are_escaped() {
    let env = Env::new("inventory-escape");
    let keys = env.dir.join("keys");
    let k = Command::new(bulwark_bin())
        .args(["keygen", "--out"])
        .arg(&keys)
        .output()
        .unwrap();
    assert!(k.status.success());
    let collected = env.dir.join("collected");
    fs::create_dir_all(&collected).unwrap();
    let forged = serde_json::json!({
        "payloadType": "application/vnd.in-toto+json",
        "payload": "e30=",
        "signatures": [{
            "keyid": "x\nindexed 9 new statement(s) of 9 verified into /forged",
            "sig": "AAAA",
        }],
    });
    fs::write(collected.join("a.intoto.jsonl"), format!("{forged}\n")).unwrap();
    fs::write(
        collected.join("b\nindexed 7 new statement(s).intoto.jsonl"),
        format!("{forged}\n"),
    )
    .unwrap();
    // Not envelopes at all: the reason is said once, after the path, without verify's prefix.
    let garbage = collected.join("c.intoto.jsonl");
    fs::write(&garbage, "not json\n").unwrap();
    let index = env.dir.join("fleet.jsonl");
    let a = inventory(&[
        os("add"),
        os("--key"),
        keys.join("signing.pub").as_os_str(),
        os("--index"),
        index.as_os_str(),
        collected.as_os_str(),
    ]);
    assert_eq!(a.code, 1, "{a}");
    let lines: Vec<&str> = a.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{a}");
    assert!(lines[..3].iter().all(|l| l.starts_with("REFUSED ")), "{a}");
    assert!(
        lines[3].starts_with("indexed 0 new statement(s) of 0"),
        "{a}"
    );
    assert!(
        lines.contains(
            &format!(
                "REFUSED {}: line 1: not a DSSE envelope: expected ident at line 1 column 2",
                garbage.display()
            )
            .as_str()
        ),
        "{a}"
    );
    // A job's output name with a newline and a right-to-left override, in a query line.
    let record = serde_json::json!({
        "statement_sha256": "1".repeat(64),
        "provenance": "/out/provenance.intoto.jsonl",
        "invocation_id": "inv",
        "finished": "2026-11-26T10:00:00Z",
        "builder_id": "https://ci.example/pool-a",
        "dependencies": [],
        "subjects": [{"name": "app\u{202e}txt.exe\nforged line", "sha256": "a".repeat(64)}],
    });
    fs::write(&index, format!("{record}\n")).unwrap();
    let q = inventory(&[os("query"), os("--index"), index.as_os_str()]);
    assert_eq!(q.code, 0, "{q}");
    assert_eq!(q.stdout.lines().count(), 1, "{q}");
    assert!(!q.stdout.contains('\u{202e}'), "{q}");
    // A name that spells the line's own fields (U+2215 for the slashes it may not hold) is
    // quoted: the fields that follow its closing quote are the record's.
    let spoof = "app.tar.gz  built 2026-01-01T00:00:00Z by https:\u{2215}\u{2215}ci.example.com\u{2215}release, trusted, signed by sha256:00";
    let mut spoofed = record.clone();
    spoofed["subjects"][0]["name"] = spoof.into();
    fs::write(&index, format!("{spoofed}\n")).unwrap();
    let q = inventory(&[os("query"), os("--index"), index.as_os_str()]);
    assert_eq!(q.code, 0, "{q}");
    assert!(
        q.stdout.starts_with(&format!(
            "{}  \"{spoof}\"  built 2026-11-26T10:00:00Z by https://ci.example/pool-a, ",
            "a".repeat(64)
        )),
        "{q}"
    );
}

/// A fresh key pair in `dir` (`bulwark keygen`); returns its key id as keygen prints it.
fn keygen(dir: &Path) -> String {
    let k = Command::new(bulwark_bin())
        .args(["keygen", "--out"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(k.status.success(), "{k:?}");
    let out = String::from_utf8_lossy(&k.stdout).into_owned();
    let keyid = out
        .split("keyid ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap_or_else(|| panic!("no key id in {out}"));
    assert!(keyid.starts_with("sha256:") && keyid.len() == 71, "{out}");
    keyid.to_string()
}

/// Runs a one-output job with `builder_id` configured, signed with `key` (a private key).
fn run_as(env: &Env, builder_id: &str, key: &Path) -> bulwark_tests::Run {
    env.write_config("");
    let config = fs::read_to_string(&env.config).unwrap();
    fs::write(
        &env.config,
        format!("builder_id = \"{builder_id}\"\n{config}"),
    )
    .unwrap();
    let job = "version = 1\nname = \"bound\"\n[[steps]]\nname = \"build\"\nrun = \"echo built > app.txt\"\n[outputs]\npaths = [\"app.txt\"]\n";
    let r = env.run_with(job, &["--key", key.to_str().unwrap()]);
    r.assert_code(0);
    r
}

#[test]
fn with_builder_keys_a_key_claiming_another_builder_s_id_is_refused_and_never_indexed() {
    const POOL_A: &str = "https://ci.example/bulwark/pool-a";
    const POOL_B: &str = "https://ci.example/bulwark/pool-b";
    let env = Env::new("inventory-bound");
    let (a_dir, b_dir) = (env.dir.join("key-a"), env.dir.join("key-b"));
    let (key_a, key_b) = (keygen(&a_dir), keygen(&b_dir));
    // Host A's key signs a statement claiming pool B's builder id (a misconfigured or
    // compromised host), and one for its own pool.
    let forged = run_as(&env, POOL_B, &a_dir.join("signing.key"));
    let own = run_as(&env, POOL_A, &a_dir.join("signing.key"));
    // The run's own record names the key that signed it.
    let host = fs::read_to_string(env.state.join("inventory.jsonl")).unwrap();
    assert_eq!(host.lines().count(), 2, "{host}");
    assert!(
        host.lines()
            .all(|l| l.contains(&format!("\"signers\":[\"{key_a}\"]"))),
        "{host}"
    );
    let policy = env.dir.join("policy.toml");
    fs::write(
        &policy,
        format!("[builder_keys]\n\"{POOL_A}\" = [\"{key_a}\"]\n\"{POOL_B}\" = [\"{key_b}\"]\n"),
    )
    .unwrap();
    let index = env.dir.join("fleet.jsonl");
    let (pub_a, pub_b) = (a_dir.join("signing.pub"), b_dir.join("signing.pub"));
    let add = |index: &Path, builder_keys: Option<&Path>| {
        let mut args = vec![
            os("add"),
            os("--key"),
            pub_a.as_os_str(),
            os("--key"),
            pub_b.as_os_str(),
            os("--index"),
            index.as_os_str(),
        ];
        if let Some(p) = builder_keys {
            args.extend([os("--builder-keys"), p.as_os_str()]);
        }
        args.extend([forged.out.as_os_str(), own.out.as_os_str()]);
        inventory(&args)
    };
    let a = add(&index, Some(&policy));
    assert_eq!(a.code, 1, "{a}");
    // Both files of the forged run are refused, naming the builder id, both keys, the remedy.
    let refused: Vec<&str> = a
        .stdout
        .lines()
        .filter(|l| l.starts_with("REFUSED "))
        .collect();
    assert_eq!(refused.len(), 2, "{a}");
    for line in &refused {
        assert!(
            line.contains(&forged.out.display().to_string())
                && line.contains(&format!(
                    "builder_keys: runDetails.builder.id is \"{POOL_B}\", whose keys are \
                     [{key_b}], but the statement is signed by [{key_a}]"
                ))
                && line.contains("add its key id to the builder's entry in [builder_keys]"),
            "{a}"
        );
    }
    assert!(
        a.stdout
            .contains("indexed 1 new statement(s) of 2 verified")
            && a.stdout.contains("2 file(s) refused"),
        "{a}"
    );
    assert!(!a.stderr.contains("warning"), "{a}");
    let text = fs::read_to_string(&index).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(!text.contains(POOL_B), "{text}");
    // Pool B built nothing here; pool A's artifact is shown with the key that signed it.
    let query = |index: &Path, extra: &[&str]| {
        let mut args = vec![os("query"), os("--index"), index.as_os_str()];
        args.extend(extra.iter().map(os));
        inventory(&args)
    };
    let q = query(&index, &["--builder", POOL_B]);
    assert_eq!(q.code, 1, "{q}");
    let q = query(&index, &["--builder", POOL_A]);
    assert_eq!(q.code, 0, "{q}");
    assert!(
        q.stdout.contains(&format!(
            "by {POOL_A}, untrusted, signed by {key_a} (invocation "
        )),
        "{q}"
    );
    let q = query(&index, &["--signer", &key_a, "--json"]);
    assert_eq!(q.code, 0, "{q}");
    let v: serde_json::Value = serde_json::from_str(&q.stdout).unwrap();
    assert_eq!(v[0]["signers"], serde_json::json!([key_a]), "{q}");
    assert_eq!(v[0]["builder_id"], POOL_A, "{q}");
    assert_eq!(query(&index, &["--signer", &key_b]).code, 1);

    // Without --builder-keys: a warning, and the forged statement goes in under pool B, but
    // its line says that pool A's key signed it.
    let loose = env.dir.join("loose.jsonl");
    let a = add(&loose, None);
    assert_eq!(a.code, 0, "{a}");
    assert!(
        a.stderr
            .contains("warning: 2 keys and no --builder-keys: builder ids are not bound to keys"),
        "{a}"
    );
    let q = query(&loose, &["--builder", POOL_B]);
    assert_eq!(q.code, 0, "{q}");
    assert!(q.stdout.contains(&format!("signed by {key_a}")), "{q}");

    // A line written before signers were recorded still reads; its signer is said unknown,
    // and a --signer query says it could not judge it.
    // (The same statement under another digest, so that it is a record of its own.)
    let first = text.lines().next().unwrap();
    let digest = &first["{\"statement_sha256\":\"".len()..][..64];
    let line = first
        .replace(&format!(",\"signers\":[\"{key_a}\"]"), "")
        .replacen(digest, &"0".repeat(64), 1);
    assert!(!line.contains("signers"), "{line}");
    fs::write(&index, format!("{text}{line}\n")).unwrap();
    let q = query(&index, &["--builder", POOL_A]);
    assert_eq!(q.code, 0, "{q}");
    assert_eq!(q.stdout.lines().count(), 2, "{q}");
    assert!(
        q.stdout.contains(", signer not recorded (invocation "),
        "{q}"
    );
    let q = query(&index, &["--signer", &key_a]);
    assert_eq!(q.code, 0, "{q}");
    assert_eq!(q.stdout.lines().count(), 1, "{q}");
    assert!(
        q.stderr
            .contains("1 record(s) were indexed before signers were recorded"),
        "{q}"
    );
}
