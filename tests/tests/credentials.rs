//! Credentials for trusted jobs (docs/credentials.md), end to end: a real coordinator mints
//! the job's identity token, `bulwark daemon` exchanges it at a token service the test runs
//! (tests/interop/fake_sts.py, which verifies the token with PyJWT against the coordinator's
//! JWKS, as a cloud would), and the job reads what was issued from `/run/credentials`.
//! Checked on both sides: what the job saw (the files, read-only; the masked log) and what the
//! service saw (which tokens it was shown, what it issued, and that nothing came for a job
//! that must get nothing).
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use bulwark_tests::control::*;
use bulwark_tests::Env;
use sha2::{Digest, Sha256};

/// The token service, stopped when dropped.
struct Sts {
    child: Child,
    port: u16,
    record: PathBuf,
}

impl Sts {
    fn start(env: &Env, c: &Coordinator, extra: &[&str]) -> Sts {
        let record = env.dir.join("sts.jsonl");
        let script = [
            bulwark_tests::repo_root().join("tests/interop/fake_sts.py"),
            bulwark_tests::repo_root().join("interop/fake_sts.py"),
        ]
        .into_iter()
        .find(|p| p.exists())
        .expect("tests/interop/fake_sts.py");
        let mut child = Command::new(interop_python())
            .arg(script)
            .arg("--jwks-url")
            .arg(format!("{}/.well-known/jwks.json", c.url))
            .args(["--issuer", ISSUER, "--record"])
            .arg(&record)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("fake_sts.py said {line:?}"))
            .parse()
            .unwrap();
        Sts {
            child,
            port,
            record,
        }
    }

    /// Every request the service got.
    fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Sts {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A host registered with a coordinator, its configuration naming four credentials at the
/// test's token service: three it grants, one (`denied`) whose role it refuses.
fn setup(tag: &str) -> (Env, Coordinator, Sts) {
    setup_with(tag, &[])
}

/// [`setup`], the token service started with `sts_args`.
fn setup_with(tag: &str, sts_args: &[&str]) -> (Env, Coordinator, Sts) {
    let env = Env::new(tag);
    let c = Coordinator::start(&env);
    let sts = Sts::start(&env, &c, sts_args);
    let base = format!("http://127.0.0.1:{}", sts.port);
    env.write_config_sections(
        "",
        &format!(
            r#"[fetch]
file_roots = ["{dir}"]
allow_private = ["127.0.0.1"]
[daemon]
poll_interval = "200ms"
metrics_listen = "127.0.0.1:0"
[credentials.aws]
kind = "aws"
endpoint = "{base}/aws"
audience = "sts.amazonaws.com"
role_arn = "arn:aws:iam::123456789012:role/release"
[credentials.gcp]
kind = "oauth-token-exchange"
endpoint = "{base}/token"
audience = "gcp-test"
scope = "https://www.googleapis.com/auth/cloud-platform"
[credentials.vault]
kind = "vault"
endpoint = "{base}"
audience = "vault"
role = "release"
[credentials.denied]
kind = "aws"
endpoint = "{base}/aws"
audience = "sts.amazonaws.com"
role_arn = "arn:aws:iam::123456789012:role/admin"
"#,
            dir = env.dir.display()
        ),
    );
    let token = c.registration_token(&env.dir, "10m");
    let o = register(&env, &c, &token, "creds-host");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (env, c, sts)
}

/// One scrape of the daemon's metrics (`[daemon] metrics_listen`).
fn host_metrics(env: &Env, c: &Coordinator) -> String {
    c.http
        .get(format!("http://{}/metrics", daemon_metrics_addr(env)))
        .send()
        .unwrap()
        .text()
        .unwrap()
}

fn with_credentials(spec: &str, names: &[&str]) -> String {
    let list: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    spec.replacen(
        "[source]",
        &format!("credentials = [{}]\n[source]", list.join(", ")),
        1,
    )
}

/// Submits `spec` as trusted and waits for it to succeed; its id and record.
fn run_trusted(env: &Env, c: &Coordinator, spec: &str) -> (String, serde_json::Value) {
    let id = c.submit(spec, "trusted");
    let j = c.wait_done(&id, 120);
    assert_eq!(
        j["result"]["result"]["status"],
        "succeeded",
        "{j}\n{}",
        daemon_log(env)
    );
    (id, j)
}

/// The AWS shared credentials file the job gets for what the token service issued.
fn aws_file(issued: &serde_json::Value) -> String {
    format!(
        "[default]\naws_access_key_id = {}\naws_secret_access_key = {}\naws_session_token = {}\n",
        issued["AccessKeyId"].as_str().unwrap(),
        issued["SecretAccessKey"].as_str().unwrap(),
        issued["SessionToken"].as_str().unwrap()
    )
}

fn sha256(s: &str) -> String {
    bulwark_tests::hex(&Sha256::digest(s.as_bytes()))
}

fn out_dir(env: &Env, job: &str) -> PathBuf {
    env.state.join("daemon/jobs").join(job).join("out")
}

#[test]
fn a_credential_the_job_prints_is_masked_in_the_live_log_at_the_coordinator() {
    let (env, c, sts) = setup("creds-live");
    let (repo, commit) = repo(&env);
    let _daemon = Daemon::start(&env);
    // The job prints its token in two writes, a moment apart (a masker that wrote what it
    // had so far would send the first part), then waits; the test reads the live log while
    // it waits, then cancels it.
    let run = "head -c 6 /run/credentials/vault/token; sleep 1; tail -c +7 /run/credentials/vault/token; \
               echo LIVE-MARK; sleep 300";
    let id = c.submit(
        &with_credentials(&git_job(&repo, &commit, "live", run), &["vault"]),
        "trusted",
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let live = loop {
        let (status, headers, body) = c.fetch_with(&id, "logs/job.log", None);
        if status == 200 && String::from_utf8_lossy(&body).contains("LIVE-MARK") {
            assert_eq!(
                headers.get("bulwark-log-complete").map(String::as_str),
                Some("false")
            );
            break String::from_utf8(body).unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no live log: {status} {}\n{}",
            c.job(&id),
            daemon_log(&env)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let reqs = sts.requests();
    let token = reqs
        .iter()
        .find(|r| r["path"] == "/v1/auth/jwt/login")
        .expect("a vault login")["issued"]["client_token"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        !live.contains(&token) && !live.contains(&token[..6]),
        "{live}"
    );
    assert!(live.starts_with("***"), "{live}");
    // Nothing at the coordinator holds it either.
    for entry in std::fs::read_dir(c.state.join("outputs").join(&id)).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains(&token));
    }
    let o = Command::new(bulwark_tests::coordinator_bin())
        .args(["jobs", "cancel", "--state"])
        .arg(&c.state)
        .arg(&id)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j = c.wait_done(&id, 60);
    assert_eq!(
        j["result"]["result"]["reason"], "cancelled by the operator while it ran",
        "{j}"
    );
    let (_, _, log) = c.fetch(&id, "logs/job.log");
    assert!(!String::from_utf8_lossy(&log).contains(&token));
}

#[test]
fn a_trusted_job_gets_each_kind_of_credential_as_read_only_files_masked_in_its_log() {
    let (env, c, sts) = setup("creds-ok");
    let (repo, commit) = repo(&env);
    let _daemon = Daemon::start(&env);
    let files =
        "/run/credentials/aws/credentials /run/credentials/gcp/token /run/credentials/vault/token";
    let run = format!(
        "cat {files}; echo; mkdir -p dist; sha256sum {files} > dist/app.txt; \
         if (chmod 600 /run/credentials/aws/credentials && echo x > /run/credentials/aws/credentials) 2>/dev/null || (chmod 700 /run/credentials/aws && touch /run/credentials/aws/x) 2>/dev/null; then echo WRITE=ok; else echo WRITE=denied; fi; \
         if touch /run/credentials/new 2>/dev/null; then echo CREATE=ok; else echo CREATE=denied; fi; \
         echo MODE=$(stat -c %a /run/credentials/aws /run/credentials/aws/credentials | tr '\\n' ,)"
    );
    let spec = with_credentials(
        &git_job(&repo, &commit, "release", &run),
        &["aws", "gcp", "vault"],
    );
    let id = c.submit(&spec, "trusted");
    let j = c.wait_done(&id, 120);
    let record = j.to_string();
    assert_eq!(
        j["result"]["result"]["status"],
        "succeeded",
        "{j}\n{}",
        daemon_log(&env)
    );

    // The service saw one verified token per credential, each for this job, trusted.
    let reqs = sts.requests();
    assert_eq!(reqs.len(), 3, "{reqs:?}");
    for r in &reqs {
        assert_eq!(r["accepted"], true, "{r}");
        assert_eq!(r["claims"]["job_id"], id.as_str(), "{r}");
        assert_eq!(r["claims"]["trust"], "trusted", "{r}");
        assert_eq!(r["claims"]["commit"], commit.as_str(), "{r}");
    }
    let issued = |path: &str| {
        reqs.iter()
            .find(|r| r["path"] == path)
            .unwrap_or_else(|| panic!("no request to {path}"))["issued"]
            .clone()
    };
    let (aws, gcp, vault) = (
        issued("/aws"),
        issued("/token"),
        issued("/v1/auth/jwt/login"),
    );
    // AWS was asked for a session no longer than the job's timeout (clamped to 15m..1h).
    let aws_req = reqs.iter().find(|r| r["path"] == "/aws").unwrap();
    assert_eq!(aws_req["params"]["DurationSeconds"], "3600");
    assert!(aws_req["params"]["RoleSessionName"]
        .as_str()
        .unwrap()
        .contains(&id[..8]));

    // What the job read is exactly what was issued.
    let aws_file = aws_file(&aws);
    let gcp_file = format!("{}\n", gcp["access_token"].as_str().unwrap());
    let vault_file = format!("{}\n", vault["client_token"].as_str().unwrap());
    let out = out_dir(&env, &id);
    let sums = std::fs::read_to_string(out.join("dist/app.txt")).unwrap();
    for (content, path) in [
        (&aws_file, "/run/credentials/aws/credentials"),
        (&gcp_file, "/run/credentials/gcp/token"),
        (&vault_file, "/run/credentials/vault/token"),
    ] {
        assert!(
            sums.contains(&format!("{}  {path}", sha256(content))),
            "{path}: {sums}"
        );
    }
    // Read-only, private to the job's user: the files and directory are the job's own, so
    // the job tries to make them writable first (chmod); the read-only mount (and Landlock's
    // read-only rule) refuse that too, and the modes are unchanged after.
    let log = std::fs::read_to_string(out.join("job.log")).unwrap();
    assert!(
        log.contains("WRITE=denied") && log.contains("CREATE=denied"),
        "{log}"
    );
    assert!(log.contains("MODE=500,400,"), "{log}");
    // Printed, then masked: no issued value in the log, the result, or what the coordinator got.
    let secrets = [
        aws["AccessKeyId"].as_str().unwrap(),
        aws["SecretAccessKey"].as_str().unwrap(),
        aws["SessionToken"].as_str().unwrap(),
        gcp["access_token"].as_str().unwrap(),
        vault["client_token"].as_str().unwrap(),
    ];
    assert!(log.matches("***").count() >= 5, "{log}");
    let result_json = std::fs::read_to_string(out.join("result.json")).unwrap();
    let (status, _, served) = c.fetch(&id, "logs/job.log");
    assert_eq!(status, 200);
    assert_eq!(
        served,
        log.as_bytes(),
        "the coordinator serves the masked log"
    );
    for s in secrets {
        assert!(!log.contains(s), "a credential in job.log: {log}");
        assert!(!result_json.contains(s), "a credential in result.json");
        assert!(
            !record.contains(s),
            "a credential reported to the coordinator"
        );
        assert!(
            !daemon_log(&env).contains(s),
            "a credential in the daemon's log"
        );
    }
    // result.json names what the job got, never a value.
    let creds = &j["result"]["result"]["credentials"];
    let kinds: Vec<(&str, &str)> = creds
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].as_str().unwrap(), c["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("aws", "aws"),
            ("gcp", "oauth-token-exchange"),
            ("vault", "vault")
        ]
    );
    assert_eq!(creds[0]["expires"], aws["Expiration"]);
    // Nothing of them is left on the host's disk.
    for s in secrets {
        let found = grep_tree(&env.dir, s);
        assert!(found.is_empty(), "a credential on disk: {found:?}");
    }

    // The next job, trusted but asking for nothing, finds no credentials.
    let next = c.submit(
        &git_job(
            &repo,
            &commit,
            "after",
            "test -e /run/credentials && echo LEFT=yes || echo LEFT=no; sh build.sh",
        ),
        "trusted",
    );
    let j = c.wait_done(&next, 120);
    assert_eq!(j["result"]["result"]["status"], "succeeded", "{j}");
    let log = std::fs::read_to_string(out_dir(&env, &next).join("job.log")).unwrap();
    assert!(log.contains("LEFT=no"), "{log}");
    assert_eq!(
        sts.requests().len(),
        3,
        "a job asking for nothing made no exchange"
    );
}

/// The attack: a compromised build tool (a dependency's install script) runs in the release
/// job's build step and goes for the release credentials, now and by leaving a process behind
/// for when the publishing step has them. With `steps[].credentials`, only the step that
/// lists a credential can read it: Landlock refuses every other step (EACCES), and nothing a
/// step leaves running outlives it.
#[test]
fn a_step_reads_only_the_credentials_it_lists_and_a_build_step_none() {
    let (env, c, sts) = setup("creds-scoped");
    let (repo, commit) = repo(&env);
    let _daemon = Daemon::start(&env);
    let build = "ls /run/credentials | tr '\\n' , | sed 's/^/BUILD_LIST=/'; echo; \
         for f in aws/credentials gcp/token; do cat /run/credentials/$f 2>&1 >/dev/null | sed 's/^/BUILD: /'; done; \
         setsid sh -c 'touch /workspace/lurking; n=0; until test -e /workspace/publishing || test $n -ge 100; do sleep 0.1; n=$((n+1)); done; \
         cat /run/credentials/aws/credentials > /workspace/stolen 2>&1' & \
         n=0; until test -e /workspace/lurking || test $n -ge 200; do sleep 0.05; n=$((n+1)); done; echo BUILD_DONE";
    // The lurker goes for the credential once the publishing step has begun (or after 10 s):
    // whenever it runs, a lurker still alive then writes /workspace/stolen (a refusal, at
    // least), so what the publishing step sees does not hang on how fast the host is.
    let publish =
        "touch /workspace/publishing; sleep 2; test -e /workspace/lurking && echo LURKED=yes; \
         if test -e /workspace/stolen; then echo STOLEN=yes; else echo STOLEN=no; fi; \
         mkdir -p dist; sha256sum /run/credentials/aws/credentials > dist/app.txt; \
         cat /run/credentials/gcp/token 2>&1 >/dev/null | sed 's/^/PUBLISH: /'; echo PUBLISH_DONE";
    let spec = with_credentials(&git_job(&repo, &commit, "release", build), &["aws", "gcp"])
        .replacen(
            "[outputs]",
            &format!(
                "[[steps]]\nname = \"publish\"\ncredentials = [\"aws\"]\nrun = '''{publish}'''\n\
                 [[steps]]\nname = \"notify\"\ncredentials = [\"gcp\"]\nrun = \"wc -c < /run/credentials/gcp/token\"\n[outputs]"
            ),
            1,
        );
    let (id, j) = run_trusted(&env, &c, &spec);
    let out = out_dir(&env, &id);
    let log = std::fs::read_to_string(out.join("job.log")).unwrap();
    // The build step sees the names (listing is allowed) but can read neither file.
    assert!(log.contains("BUILD_LIST=aws,gcp,"), "{log}");
    for f in ["aws/credentials", "gcp/token"] {
        assert!(
            log.contains(&format!(
                "BUILD: cat: /run/credentials/{f}: Permission denied"
            )),
            "{f}: {log}"
        );
    }
    assert!(
        log.contains("BUILD_DONE") && log.contains("PUBLISH_DONE"),
        "{log}"
    );
    // What it left running (it did start) was gone before the publishing step began, and
    // wrote nothing.
    assert!(
        log.contains("LURKED=yes") && log.contains("STOLEN=no"),
        "{log}"
    );
    // The publishing step reads its credential, exactly as issued, and not the other one.
    assert!(
        log.contains("PUBLISH: cat: /run/credentials/gcp/token: Permission denied"),
        "{log}"
    );
    let reqs = sts.requests();
    let issued = |path: &str| {
        reqs.iter()
            .find(|r| r["path"] == path)
            .unwrap_or_else(|| panic!("no request to {path}"))["issued"]
            .clone()
    };
    let aws = issued("/aws");
    let aws_file = aws_file(&aws);
    let sums = std::fs::read_to_string(out.join("dist/app.txt")).unwrap();
    assert_eq!(
        sums,
        format!("{}  /run/credentials/aws/credentials\n", sha256(&aws_file))
    );
    // The third step reads the other one.
    let gcp = issued("/token")["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        log.lines().any(|l| l.trim() == (gcp.len() + 1).to_string()),
        "{log}"
    );
    // result.json says which step could read what.
    let steps = j["result"]["result"]["steps"].as_array().unwrap();
    let seen: Vec<(&str, serde_json::Value)> = steps
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["credentials"].clone()))
        .collect();
    assert_eq!(
        seen,
        [
            ("build", serde_json::Value::Null),
            ("publish", serde_json::json!(["aws"])),
            ("notify", serde_json::json!(["gcp"])),
        ]
    );
    // So does the signed provenance, names only.
    let envelope: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(out.join("provenance.intoto.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    use base64::Engine as _;
    let statement: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(envelope["payload"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        statement["predicate"]["buildDefinition"]["internalParameters"]["credentials"],
        serde_json::json!([
            {"name": "aws", "kind": "aws", "steps": ["publish"], "refreshed": 0},
            {"name": "gcp", "kind": "oauth-token-exchange", "steps": ["notify"], "refreshed": 0},
        ])
    );
    // Nothing of them on the host's disk.
    for s in [aws["SecretAccessKey"].as_str().unwrap(), gcp.as_str()] {
        let found = grep_tree(&env.dir, s);
        assert!(found.is_empty(), "a credential on disk: {found:?}");
    }
}

/// A job that outlives its credentials: the token service issues them for 6 seconds; the
/// daemon exchanges the job's identity token again before they expire, and the job finds the
/// new values in place of the old (same files, still read-only), masked in its log like the
/// first ones. Nothing is exchanged for the job once it has ended.
#[test]
fn a_job_longer_than_its_credentials_gets_newer_ones_in_place_masked_in_its_log() {
    let (env, c, sts) = setup_with("creds-refresh", &["--lifetime", "6"]);
    let (repo, commit) = repo(&env);
    let _daemon = Daemon::start(&env);
    let files = "/run/credentials/aws/credentials /run/credentials/vault/token";
    let run = format!(
        "mkdir -p dist; : > dist/app.txt; for i in 1 2 3; do \
           sha256sum {files} >> dist/app.txt; cat {files}; echo EXP=$(cat /run/credentials/aws/expiration); \
           if (chmod 600 /run/credentials/aws/credentials && echo x > /run/credentials/aws/credentials) 2>/dev/null || (chmod 700 /run/credentials/aws && touch /run/credentials/aws/x) 2>/dev/null; then echo WRITE=ok; else echo WRITE=denied; fi; \
           sleep 5; done; \
         echo MODE=$(stat -c %a /run/credentials/aws /run/credentials/aws/credentials | tr '\\n' ,); \
         ls -A /run/credentials/aws | tr '\\n' , | sed 's/^/FILES=/'; echo"
    );
    let spec = with_credentials(&git_job(&repo, &commit, "long", &run), &["aws", "vault"]);
    let (id, j) = run_trusted(&env, &c, &spec);

    let reqs = sts.requests();
    assert!(
        reqs.iter()
            .all(|r| r["accepted"] == true && r["claims"]["job_id"] == id.as_str()),
        "{reqs:?}"
    );
    let aws: Vec<&serde_json::Value> = reqs
        .iter()
        .filter(|r| r["path"] == "/aws")
        .map(|r| &r["issued"])
        .collect();
    let vault: Vec<&serde_json::Value> = reqs
        .iter()
        .filter(|r| r["path"] == "/v1/auth/jwt/login")
        .map(|r| &r["issued"])
        .collect();
    assert!(
        aws.len() >= 2 && vault.len() >= 2,
        "no refresh in a 15 s job: {reqs:?}\n{}",
        daemon_log(&env)
    );
    // The first exchange asks for the job's timeout (1 h, the default); each refresh only for
    // what is left of it, so no credential outlives the job by more than AWS's minimum.
    let asked: Vec<u64> = reqs
        .iter()
        .filter(|r| r["path"] == "/aws")
        .map(|r| {
            r["params"]["DurationSeconds"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(asked[0], 3600, "{asked:?}");
    assert!(
        asked[1..].iter().all(|s| (3500..3600).contains(s)),
        "a refresh asked for more than what is left of the job: {asked:?}"
    );
    // Every read found exactly one issued value, whole; more than one over the job.
    let out = out_dir(&env, &id);
    let sums = std::fs::read_to_string(out.join("dist/app.txt")).unwrap();
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for line in sums.lines() {
        let (sum, path) = line.split_once("  ").unwrap();
        let known = match path {
            "/run/credentials/aws/credentials" => aws.iter().any(|a| sha256(&aws_file(a)) == sum),
            "/run/credentials/vault/token" => vault
                .iter()
                .any(|v| sha256(&format!("{}\n", v["client_token"].as_str().unwrap())) == sum),
            other => panic!("{other}"),
        };
        assert!(known, "{path} held something never issued: {sums}");
        if !seen.contains(&(path, sum)) {
            seen.push((path, sum));
        }
    }
    for path in [
        "/run/credentials/aws/credentials",
        "/run/credentials/vault/token",
    ] {
        let generations = seen.iter().filter(|(p, _)| *p == path).count();
        assert!(generations >= 2, "the job never saw {path} renewed: {sums}");
    }
    // Still read-only, nothing left beside them, every value masked in the log.
    let log = std::fs::read_to_string(out.join("job.log")).unwrap();
    assert!(
        !log.contains("WRITE=ok") && log.matches("WRITE=denied").count() == 3,
        "{log}"
    );
    assert!(log.contains("MODE=500,400,"), "{log}");
    assert!(
        log.contains("FILES=config,credential-process.json,credentials,expiration,\n"),
        "{log}"
    );
    // `expiration` is renewed with them: each read is one issued expiry, more than one over
    // the job.
    let mut expiries: Vec<&str> = log.lines().filter_map(|l| l.strip_prefix("EXP=")).collect();
    assert_eq!(expiries.len(), 3, "{log}");
    for e in &expiries {
        assert!(aws.iter().any(|a| a["Expiration"] == *e), "{e}: {log}");
    }
    expiries.dedup();
    assert!(expiries.len() >= 2, "{log}");
    let result_json = std::fs::read_to_string(out.join("result.json")).unwrap();
    for a in &aws {
        for k in ["SecretAccessKey", "SessionToken"] {
            let v = a[k].as_str().unwrap();
            assert!(!log.contains(v), "a refreshed credential in job.log: {log}");
            assert!(!result_json.contains(v));
            assert!(grep_tree(&env.dir, v).is_empty(), "a credential on disk");
        }
    }
    for v in &vault {
        let t = v["client_token"].as_str().unwrap();
        assert!(!log.contains(t), "{log}");
    }
    // result.json: how often each was refreshed, and the expiry of what the job holds now.
    let creds = j["result"]["result"]["credentials"].as_array().unwrap();
    let rec = |name: &str| creds.iter().find(|c| c["name"] == name).unwrap();
    for name in ["aws", "vault"] {
        assert!(rec(name)["refreshed"].as_u64().unwrap() >= 1, "{creds:?}");
        assert!(rec(name)["refresh_failed"].is_null(), "{creds:?}");
    }
    assert!(
        aws[1..]
            .iter()
            .any(|a| a["Expiration"] == rec("aws")["expires"]),
        "{creds:?}"
    );
}

/// A process that runs for the whole job takes renewed credentials by itself, through the AWS
/// SDKs' process credential provider: the job points `AWS_CONFIG_FILE` at the credential's
/// `config`, whose `credential_process` prints the current values, and the SDK runs it again
/// as they near their expiry (with 6-second credentials, on every use). One botocore process
/// (Debian's `python3-botocore`) sees the first session and a renewed one, each exactly as
/// issued, without restarting. Keys planted in `$HOME/.aws/credentials` (the workspace, which
/// every step can write) are not taken, with the environment docs/credentials.md gives.
#[test]
fn a_long_running_aws_sdk_process_takes_renewed_credentials_without_restarting() {
    let botocore = std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import botocore"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        botocore,
        "python3-botocore is not installed (.ci/run installs it): apt-get install python3-botocore"
    );
    let (env, c, sts) = setup_with("creds-sdk", &["--lifetime", "6"]);
    let (repo, commit) = repo(&env);
    let _daemon = Daemon::start(&env);
    // Keys a build step could plant where the SDKs look first by default; then up to 20 s
    // for a second session, and the hashes of every secret key the one process saw.
    let run = r#"mkdir -p dist $HOME/.aws && printf "[default]\naws_access_key_id = PLANTEDKEY\naws_secret_access_key = planted\n" > $HOME/.aws/credentials && /usr/bin/python3 -c '
import botocore.session, hashlib, time
creds = botocore.session.get_session().get_credentials()
seen = []
for i in range(200):
    key = creds.get_frozen_credentials().secret_key
    digest = hashlib.sha256(key.encode()).hexdigest()
    if digest not in seen:
        seen.append(digest)
    if len(seen) >= 2:
        break
    time.sleep(0.1)
print("METHOD=" + creds.method)
open("dist/app.txt", "w").write("\n".join(seen) + "\n")'
"#;
    let spec = with_credentials(&git_job(&repo, &commit, "sdk", run), &["aws"]).replacen(
        "[outputs]",
        "env = { AWS_CONFIG_FILE = \"/run/credentials/aws/config\", \
         AWS_SHARED_CREDENTIALS_FILE = \"/dev/null\", AWS_EC2_METADATA_DISABLED = \"true\" }\n\
         [outputs]",
        1,
    );
    let (id, _) = run_trusted(&env, &c, &spec);
    let out = out_dir(&env, &id);
    let log = std::fs::read_to_string(out.join("job.log")).unwrap();
    assert!(log.contains("METHOD=custom-process"), "{log}");
    let seen = std::fs::read_to_string(out.join("dist/app.txt")).unwrap();
    let seen: Vec<&str> = seen.lines().collect();
    let issued: Vec<String> = sts
        .requests()
        .iter()
        .filter(|r| r["path"] == "/aws")
        .map(|r| sha256(r["issued"]["SecretAccessKey"].as_str().unwrap()))
        .collect();
    assert_eq!(seen.len(), 2, "one process saw no renewal: {seen:?}");
    assert_eq!(seen[0], issued[0], "the first session, as issued");
    assert!(
        issued[1..].contains(&seen[1].to_string()),
        "a renewed session, as issued: {seen:?} of {issued:?}"
    );
}

/// A refresh the token service refuses: the job keeps what it has, the other credential is
/// still renewed on its own schedule, and `result.json` says why AWS was not, with the
/// identity token the service quoted back masked.
#[test]
fn a_refused_refresh_leaves_the_job_what_it_has_and_is_said_in_its_result() {
    let (env, c, sts) = setup_with(
        "creds-refresh-refused",
        &["--lifetime", "6", "--refuse-from", "/aws=2"],
    );
    let (repo, commit) = repo(&env);
    let _daemon = Daemon::start(&env);
    let run = "mkdir -p dist; : > dist/app.txt; for i in 1 2; do \
           sha256sum /run/credentials/aws/credentials /run/credentials/vault/token >> dist/app.txt; \
           sleep 5; done";
    let spec = with_credentials(&git_job(&repo, &commit, "refused", run), &["aws", "vault"]);
    let (id, j) = run_trusted(&env, &c, &spec);
    let reqs = sts.requests();
    let at = |path: &str| -> Vec<&serde_json::Value> {
        reqs.iter().filter(|r| r["path"] == path).collect()
    };
    let (aws, vault) = (at("/aws"), at("/v1/auth/jwt/login"));
    assert!(
        aws.len() >= 2 && aws[1..].iter().all(|r| r["accepted"] == false),
        "{reqs:?}"
    );
    assert!(
        vault.len() >= 2 && vault.iter().all(|r| r["accepted"] == true),
        "{reqs:?}"
    );
    // The job read the first AWS session both times; vault was renewed meanwhile.
    let sums = std::fs::read_to_string(out_dir(&env, &id).join("dist/app.txt")).unwrap();
    let first = sha256(&aws_file(&aws[0]["issued"]));
    assert_eq!(sums.matches(&first).count(), 2, "{sums}");
    let creds = j["result"]["result"]["credentials"].as_array().unwrap();
    let rec = |name: &str| creds.iter().find(|c| c["name"] == name).unwrap();
    assert_eq!(
        rec("aws")["refreshed"],
        serde_json::Value::Null,
        "{creds:?}"
    );
    assert_eq!(rec("aws")["expires"], aws[0]["issued"]["Expiration"]);
    let why = rec("aws")["refresh_failed"].as_str().unwrap_or_default();
    assert!(
        why.contains("credentials.aws")
            && why.contains("AccessDenied")
            && why.contains("token ***"),
        "{creds:?}"
    );
    assert!(
        !why.contains("eyJ"),
        "the identity token in result.json: {why}"
    );
    assert!(
        rec("vault")["refreshed"].as_u64().unwrap() >= 1,
        "{creds:?}"
    );
    assert!(rec("vault")["refresh_failed"].is_null(), "{creds:?}");
    assert!(
        !daemon_log(&env).contains("eyJ"),
        "the identity token in the daemon's log"
    );
    // The host's metrics count both exchanges at the start, and each renewal and refusal
    // after (one may still have been in flight when the job ended: at most what the token
    // service saw).
    let text = host_metrics(&env, &c);
    let exchanges = |when: &str, outcome: &str| {
        metric(
            &text,
            &format!(
                "bulwark_runner_credential_exchanges_total{{when=\"{when}\",outcome=\"{outcome}\"}}"
            ),
        ) as usize
    };
    assert_eq!(exchanges("start", "ok"), 2, "{text}");
    assert_eq!(exchanges("start", "failed"), 0, "{text}");
    assert!(
        (1..vault.len()).contains(&exchanges("refresh", "ok")),
        "{} of {}: {text}",
        exchanges("refresh", "ok"),
        vault.len()
    );
    assert!(
        (1..aws.len()).contains(&exchanges("refresh", "failed")),
        "{} of {}: {text}",
        exchanges("refresh", "failed"),
        aws.len()
    );
}

/// Scoping holds across a refresh: the renewed files are renamed into the credential's
/// directory, which carries the Landlock rule, so the step that may read it reads the new
/// values and the step that may not is still refused (EACCES), before and after.
#[test]
fn a_renewed_credential_is_still_readable_only_by_the_step_that_lists_it() {
    let (env, c, sts) = setup_with("creds-scoped-refresh", &["--lifetime", "6"]);
    let (repo, commit) = repo(&env);
    let _daemon = Daemon::start(&env);
    let f = "/run/credentials/aws/credentials";
    // Round after round until the file was renewed (its inode differs from the first one
    // seen; at most 30 rounds), each an attempt to read it; the inode is read before the
    // attempt, so the last attempt came after the renewal.
    let build = format!(
        "first=; n=0; while true; do n=$((n+1)); ino=$(ls -i {f} | cut -d' ' -f1); echo INODE=$ino; \
         cat {f} 2>&1 >/dev/null | sed 's/^/BUILD: /'; \
         if test -z \"$first\"; then first=$ino; \
         elif test \"$ino\" != \"$first\" || test $n -ge 30; then break; fi; \
         sleep 1; done; echo ROUNDS=$n"
    );
    let publish = format!("mkdir -p dist; sha256sum {f} > dist/app.txt");
    let spec = with_credentials(&git_job(&repo, &commit, "scoped-refresh", &build), &["aws"])
        .replacen(
            "[outputs]",
            &format!(
                "[[steps]]\nname = \"publish\"\ncredentials = [\"aws\"]\nrun = '''{publish}'''\n[outputs]"
            ),
            1,
        );
    let (id, _) = run_trusted(&env, &c, &spec);
    let out = out_dir(&env, &id);
    let log = std::fs::read_to_string(out.join("job.log")).unwrap();
    // The build step was refused every time, across at least one renewal of the file.
    let rounds: usize = log
        .lines()
        .find_map(|l| l.strip_prefix("ROUNDS="))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("the build step printed no ROUNDS=\n{log}"));
    let denied = format!("BUILD: cat: {f}: Permission denied");
    assert_eq!(log.matches(&denied).count(), rounds, "{log}");
    let mut inodes: Vec<&str> = log
        .lines()
        .filter_map(|l| l.strip_prefix("INODE="))
        .collect();
    inodes.dedup();
    assert!(
        inodes.len() >= 2,
        "no renewal while the build step ran: {log}"
    );
    // The publishing step read a renewed session, exactly as issued.
    let aws: Vec<serde_json::Value> = sts
        .requests()
        .into_iter()
        .filter(|r| r["path"] == "/aws")
        .map(|r| r["issued"].clone())
        .collect();
    let sums = std::fs::read_to_string(out.join("dist/app.txt")).unwrap();
    let read = aws
        .iter()
        .position(|a| sums == format!("{}  {f}\n", sha256(&aws_file(a))));
    assert!(
        matches!(read, Some(i) if i >= 1),
        "not a renewed session: {sums}"
    );
}

/// Files under `dir` holding `needle` (the tests' own record of the service excepted).
fn grep_tree(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() && p.file_name().is_some_and(|n| n != "sts.jsonl") {
                if let Ok(bytes) = std::fs::read(&p) {
                    if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                        found.push(p);
                    }
                }
            }
        }
    }
    found
}

#[test]
fn an_untrusted_job_asking_for_credentials_is_refused_and_no_token_is_exchanged() {
    let (env, c, sts) = setup("creds-untrusted");
    let (repo, commit) = repo(&env);
    let _daemon = Daemon::start(&env);
    let marker = env.dir.join("ran");
    let spec = with_credentials(
        &git_job(&repo, &commit, "pr", &format!("touch {}", marker.display())),
        &["aws"],
    );
    let j = c.wait_done(&c.submit(&spec, "untrusted"), 60);
    assert_eq!(j["result"]["result"]["status"], "refused", "{j}");
    let reason = j["result"]["result"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("untrusted job never gets credentials"),
        "{reason}"
    );
    assert!(
        sts.requests().is_empty(),
        "the token service was asked: {:?}",
        sts.requests()
    );
    assert!(!marker.exists(), "no step ran");
}

#[test]
fn a_refused_exchange_refuses_the_job_and_the_error_never_quotes_the_token() {
    let (env, c, sts) = setup("creds-denied");
    let (repo, commit) = repo(&env);
    let _daemon = Daemon::start(&env);
    let spec = with_credentials(&git_job(&repo, &commit, "release", "true"), &["denied"]);
    let j = c.wait_done(&c.submit(&spec, "trusted"), 60);
    assert_eq!(j["result"]["result"]["status"], "refused", "{j}");
    let reason = j["result"]["result"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("credentials.denied") && reason.contains("AccessDenied"),
        "{reason}"
    );
    // The service quoted the token back; the runner masked it everywhere it repeats it.
    assert!(reason.contains("token ***"), "{reason}");
    assert!(
        !reason.contains("eyJ") && !daemon_log(&env).contains("eyJ"),
        "{reason}"
    );
    assert_eq!(sts.requests().len(), 1);
    assert_eq!(sts.requests()[0]["accepted"], false);
    let text = host_metrics(&env, &c);
    for (series, value) in [
        (
            "bulwark_runner_credential_exchanges_total{when=\"start\",outcome=\"failed\"}",
            1.0,
        ),
        (
            "bulwark_runner_credential_exchanges_total{when=\"start\",outcome=\"ok\"}",
            0.0,
        ),
        (
            "bulwark_runner_jobs_finished_total{status=\"refused\"}",
            1.0,
        ),
        ("bulwark_runner_job_duration_seconds_count", 0.0),
    ] {
        assert_eq!(metric(&text, series), value, "{series}:\n{text}");
    }
}

#[test]
fn a_credential_this_runner_does_not_configure_refuses_the_job_before_any_token() {
    let (env, c, sts) = setup("creds-unknown");
    let (repo, commit) = repo(&env);
    let _daemon = Daemon::start(&env);
    let spec = with_credentials(
        &git_job(&repo, &commit, "release", "true"),
        &["vault", "nope"],
    );
    let j = c.wait_done(&c.submit(&spec, "trusted"), 60);
    assert_eq!(j["result"]["result"]["status"], "refused", "{j}");
    let reason = j["result"]["result"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("credentials[1]: no credential \"nope\" is configured"),
        "{reason}"
    );
    // Every name is checked before any exchange.
    assert!(sts.requests().is_empty(), "{:?}", sts.requests());
}

#[test]
fn plain_bulwark_run_refuses_a_job_that_asks_for_credentials() {
    let env = Env::new("creds-local");
    let spec = bulwark_tests::one_step("local", "true", "credentials = [\"aws\"]");
    let r = env.run_with(&spec, &["--trust", "trusted"]);
    r.assert_code(2);
    assert!(
        r.stderr
            .contains("credentials: given only to trusted jobs a coordinator leased"),
        "{}",
        r.stderr
    );
    let r = env.run(&spec);
    r.assert_code(2);
    assert!(
        r.stderr
            .contains("credentials: an untrusted job never gets credentials"),
        "{}",
        r.stderr
    );
    // The files in the artifact directory never show the spec ran.
    assert!(!r.out.join("job.log").exists());
}

/// Needs root: the sandbox's helper and init are not dumpable, so only a process with
/// `CAP_SYS_PTRACE` over them may read their memory. The rootless pass skips this module.
mod root_mode {
    use super::*;
    use std::time::{Duration, Instant};

    /// Pids of every sandbox helper and job init on the host (both are `bulwark-sandbox`).
    fn sandbox_pids() -> Vec<i32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim_end() == "bulwark-sandbox")
            })
            .collect()
    }

    /// Which of `needles`, if any, is in the readable memory of `pid` (each region read once);
    /// and how many bytes were read (so that a scan that read nothing cannot pass for a clean
    /// one).
    fn memory_holds(pid: i32, needles: &[Vec<u8>]) -> (Option<usize>, u64) {
        use std::os::unix::fs::FileExt;
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            return (None, 0);
        };
        let Ok(mem) = std::fs::File::open(format!("/proc/{pid}/mem")) else {
            return (None, 0);
        };
        let mut read = 0u64;
        for line in maps.lines() {
            let mut fields = line.split_whitespace();
            let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
                continue;
            };
            let Some((start, end)) = range.split_once('-') else {
                continue;
            };
            let (Ok(start), Ok(end)) =
                (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
            else {
                continue;
            };
            if !perms.starts_with('r') || line.ends_with("[vvar]") || end - start > 1 << 30 {
                continue;
            }
            let mut buf = vec![0u8; usize::try_from(end - start).unwrap()];
            let Ok(n) = mem.read_at(&mut buf, start) else {
                continue;
            };
            read += n as u64;
            let found = needles
                .iter()
                .position(|needle| buf[..n].windows(needle.len()).any(|w| w == needle));
            if found.is_some() {
                return (found, read);
            }
        }
        (None, read)
    }

    /// A credential is in the job's files and nowhere in the sandbox's own processes while the
    /// job runs: the helper zeroes the spec's text before it forks init and drops its copy
    /// after, and init drops its copy once the files are written.
    #[test]
    fn the_sandbox_helper_and_init_hold_no_credential_while_the_job_runs() {
        sandbox_memory_holds_no_credential("creds-memory", false);
    }

    /// The same after init wrote newer credentials (a refresh): neither the old values nor
    /// the new are left in the sandbox's processes.
    #[test]
    fn the_sandbox_holds_no_credential_after_a_refresh_either() {
        sandbox_memory_holds_no_credential("creds-memory-refresh", true);
    }

    fn sandbox_memory_holds_no_credential(tag: &str, refresh: bool) {
        assert!(
            bulwark_tests::is_root(),
            "root_mode tests need root; the rootless pass skips them with --skip root_mode::"
        );
        // 9 s credentials are refreshed at 6 s, and again at 12 s: the scan runs in between.
        let sts_args: &[&str] = if refresh { &["--lifetime", "9"] } else { &[] };
        let (env, c, sts) = setup_with(tag, sts_args);
        let (repo, commit) = repo(&env);
        let _daemon = Daemon::start(&env);
        // Comments make the sandbox spec larger than its buffers are sized for (64 KiB), so
        // that they grow while holding the credentials (a step's run is at most 64 KiB). This
        // proves the growth path leaves nothing readable here; it does not prove the need for
        // `SecretBuf`: with plain growing buffers this test passed too (glibc grew them in
        // place or reused the freed memory before the scan).
        let pad = "x".repeat(40 << 10);
        // With a refresh, the step waits until both credentials changed (within 20 s): each
        // has its own schedule, so the AWS file changing says nothing about vault's.
        let wait = if refresh {
            "a=$(sha256sum < /run/credentials/aws/credentials); v=$(sha256sum < /run/credentials/vault/token); \
             changed() { test \"$(sha256sum < /run/credentials/aws/credentials)\" != \"$a\" && \
             test \"$(sha256sum < /run/credentials/vault/token)\" != \"$v\"; }; \
             for i in $(seq 200); do changed && break; sleep 0.1; done; changed && "
        } else {
            ""
        };
        let run = format!(
            "cat /run/credentials/vault/token /run/credentials/aws/credentials >/dev/null \
             && {wait}touch /workspace/started && i=0 && \
             until test -e /workspace/scanned || [ $i -ge 600 ]; do sleep 0.1; i=$((i+1)); done && \
             sh build.sh # {pad}"
        );
        let run = run.as_str();
        let id = c.submit(
            &format!(
                "{}\n[[steps]]\nname = \"after\"\nrun = \"true # {pad}\"\n",
                with_credentials(&git_job(&repo, &commit, "memory", run), &["aws", "vault"])
            ),
            "trusted",
        );
        // The step is running once its marker is in its workspace (state/jobs/<run>/workspace).
        let deadline = Instant::now() + Duration::from_secs(60);
        let workspace = || {
            std::fs::read_dir(env.state.join("jobs"))
                .ok()?
                .flatten()
                .map(|e| e.path().join("workspace"))
                .find(|w| w.join("started").exists())
        };
        while workspace().is_none() {
            assert!(
                Instant::now() < deadline,
                "the step never started: {}\n{}",
                c.job(&id),
                daemon_log(&env)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let reqs = sts.requests();
        let issued = |path: &str, field: &str| -> Vec<String> {
            let all: Vec<String> = reqs
                .iter()
                .filter(|r| r["path"] == path)
                .map(|r| r["issued"][field].as_str().unwrap().to_string())
                .collect();
            assert!(!all.is_empty(), "no exchange at {path}");
            all
        };
        let secrets: Vec<String> = [
            issued("/v1/auth/jwt/login", "client_token"),
            issued("/aws", "SecretAccessKey"),
            issued("/aws", "SessionToken"),
        ]
        .concat();
        if refresh {
            assert!(secrets.len() >= 6, "no refresh: {reqs:?}");
        }
        // Each as issued, and as the hex it travels to the helper in.
        let needles: Vec<Vec<u8>> = secrets
            .iter()
            .flat_map(|s| {
                [
                    s.as_bytes().to_vec(),
                    bulwark_tests::hex(s.as_bytes()).into_bytes(),
                ]
            })
            .collect();
        // The step waits for this test: the helper and init are alive throughout the scan.
        let pids = sandbox_pids();
        assert!(pids.len() >= 2, "no helper and init found: {pids:?}");
        let mut scanned = Vec::new();
        for &pid in &pids {
            let (found, read) = memory_holds(pid, &needles);
            if let Some(i) = found {
                panic!(
                    "bulwark-sandbox pid {pid} holds a credential in its memory: {}",
                    String::from_utf8_lossy(&needles[i])
                );
            }
            if read > 0 {
                scanned.push(pid);
            }
        }
        let alive = sandbox_pids();
        scanned.retain(|pid| alive.contains(pid));
        assert!(
            scanned.len() >= 2,
            "fewer than two sandbox processes were read whole: {scanned:?} of {pids:?}"
        );
        std::fs::write(workspace().unwrap().join("scanned"), "").unwrap();
        let j = c.wait_done(&id, 120);
        assert_eq!(j["result"]["result"]["status"], "succeeded", "{j}");
    }
}
