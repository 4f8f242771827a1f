//! Golden files pin the shape of what users and verifiers rely on. Fields that vary between
//! runs (times, ids, temporary paths, the binary's digest, the isolation mode of the host that
//! runs the tests) are replaced by placeholders before comparing; everything else must match
//! byte for byte. To update after an intended change: BULWARK_UPDATE_GOLDEN=1 cargo test.
#![allow(clippy::unwrap_used)]

use std::fs;

use base64::Engine;
use bulwark_tests::{bulwark_bin, repo_root, sha256_file, Env};

const JOB: &str = r#"version = 1
name = "golden"
[resources]
timeout = "60s"
[[steps]]
name = "build"
run = "mkdir -p dist && printf 'golden artifact\n' > dist/app.txt && cp input.txt dist/input.txt"
[outputs]
paths = ["dist/*.txt"]
"#;

fn normalise(v: &mut serde_json::Value, env: &Env) {
    let p = &mut v["predicate"];
    let src = env.src.display().to_string();
    p["buildDefinition"]["externalParameters"]["job"]["path"] = "<job path>".into();
    let s = &mut p["buildDefinition"]["externalParameters"]["source"];
    assert_eq!(s["path"], src.as_str());
    s["path"] = "<source dir>".into();
    s["uri"] = "file://<source dir>".into();
    p["buildDefinition"]["resolvedDependencies"][0]["uri"] = "file://<source dir>".into();
    p["buildDefinition"]["internalParameters"]["isolation"] = "<host-dependent isolation>".into();
    p["buildDefinition"]["internalParameters"]["weakened"] = "<host-dependent>".into();
    let rd = &mut p["runDetails"];
    // The two binaries that made the Statement, by the digests of the files that ran.
    let bin = bulwark_bin();
    let deps = &rd["builder"]["builderDependencies"];
    assert_eq!(deps[0]["digest"]["sha256"], sha256_file(&bin).as_str());
    assert_eq!(
        deps[1]["digest"]["sha256"],
        sha256_file(&bin.with_file_name("bulwark-sandbox")).as_str()
    );
    rd["builder"]["builderDependencies"][0]["digest"]["sha256"] = "<bulwark binary sha256>".into();
    rd["builder"]["version"]["bulwark"] = "<version>".into();
    rd["builder"]["builderDependencies"][0]["uri"] = "pkg:cargo/bulwark-runner@<version>".into();
    rd["builder"]["builderDependencies"][1]["digest"]["sha256"] =
        "<bulwark-sandbox binary sha256>".into();
    rd["builder"]["builderDependencies"][1]["uri"] = "pkg:cargo/bulwark-sandbox@<version>".into();
    for k in ["invocationId", "startedOn", "finishedOn"] {
        rd["metadata"][k] = format!("<{k}>").into();
    }
    for b in rd["byproducts"].as_array_mut().unwrap() {
        b["digest"]["sha256"] = "<varies>".into();
    }
}

#[test]
fn the_statement_of_a_fixed_job_matches_the_golden_file() {
    let env = Env::new("golden");
    env.write_src("input.txt", "fixed input\n");
    let r = env.run(JOB);
    r.assert_code(0);
    let line = fs::read_to_string(r.out.join("provenance.intoto.jsonl")).unwrap();
    let envelope: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    let payload = base64::engine::general_purpose::STANDARD
        .decode(envelope["payload"].as_str().unwrap())
        .unwrap();
    let mut statement: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    normalise(&mut statement, &env);
    let got = serde_json::to_string_pretty(&statement).unwrap() + "\n";
    let golden = repo_root().join("tests/golden/statement-v1.json");
    let golden = if golden.exists() || std::env::var_os("BULWARK_UPDATE_GOLDEN").is_some() {
        golden
    } else {
        repo_root().join("golden/statement-v1.json")
    };
    if std::env::var_os("BULWARK_UPDATE_GOLDEN").is_some() {
        fs::write(&golden, &got).unwrap();
    }
    let want = fs::read_to_string(&golden).unwrap_or_else(|e| panic!("{}: {e}", golden.display()));
    assert_eq!(
        got, want,
        "the Statement's shape changed; if intended, update with BULWARK_UPDATE_GOLDEN=1"
    );
}
