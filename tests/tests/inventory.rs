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
        q.stdout.starts_with(&format!("{app}  app.txt  built ")),
        "{q}"
    );
    assert!(q.stdout.contains("used hello (file://"), "{q}");
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
    assert_eq!(lines.len(), 3, "{a}");
    assert!(lines[..2].iter().all(|l| l.starts_with("REFUSED ")), "{a}");
    assert!(
        lines[2].starts_with("indexed 0 new statement(s) of 0"),
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
}
