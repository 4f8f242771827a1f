//! The control plane end to end (docs/control-plane.md): a real `bulwark-coordinator` on
//! loopback, a host registered with a one-time token, `bulwark daemon` leasing and running
//! jobs and reporting their results and signed provenance, and job identity tokens checked by
//! an independent verifier (PyJWT) against the coordinator's JWKS.
//!
//! Mode-agnostic: the daemon runs jobs with `bulwark run`, so these tests run in the root pass
//! (per-job uids) and in the rootless pass alike.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use bulwark_protocol::control::{IdToken, IdTokenRequest, Lease};
use bulwark_protocol::JobSpec;
use bulwark_tests::control::*;
use bulwark_tests::relay::{self, Relay};
use bulwark_tests::{bulwark_bin, coordinator_bin, Env};
use sha2::Digest as _;

#[test]
fn a_registered_daemon_runs_queued_jobs_and_reports_results_with_provenance_that_verifies() {
    let (env, c) = registered("cp-e2e");
    let (repo, commit) = repo(&env);
    let mut daemon = Daemon::start(&env);
    let trusted = c.submit(
        &git_job(&repo, &commit, "release", "sh build.sh"),
        "trusted",
    );
    let untrusted = c.submit(&git_job(&repo, &commit, "pr", "sh build.sh"), "untrusted");
    for (id, trust) in [(&trusted, "trusted"), (&untrusted, "untrusted")] {
        let j = c.wait_done(id, 120);
        let log = daemon_log(&env);
        assert_eq!(j["state"], "finished", "{j}\n{log}");
        let result = &j["result"]["result"];
        assert_eq!(result["status"], "succeeded", "{j}\n{log}");
        // The trust level is the submitter's, carried through to the run and its provenance.
        assert_eq!(result["trust"], trust, "{j}");
        assert_eq!(result["inputs"]["source"]["commit"], commit.as_str(), "{j}");
        // The artifact and its provenance as the coordinator serves them (nothing taken from
        // the build host) verify against each other.
        let (status, digest, bytes) = c.fetch(id, "outputs/dist/app.txt");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
        assert_eq!(bytes, b"built-from-git\n");
        let artifact = env.dir.join(format!("{id}-app.txt"));
        std::fs::write(&artifact, &bytes).unwrap();
        let sha = bulwark_tests::sha256_file(&artifact);
        assert_eq!(result["outputs"][0]["sha256"], sha.as_str());
        let raw: Vec<u8> = (0..64)
            .step_by(2)
            .map(|i| u8::from_str_radix(&sha[i..i + 2], 16).unwrap())
            .collect();
        assert_eq!(
            digest.as_deref(),
            Some(
                format!(
                    "sha-256=:{}:",
                    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, raw)
                )
                .as_str()
            )
        );
        // The job's log, as the run stored it, is at the coordinator too.
        let (status, _, log) = c.fetch(id, "logs/job.log");
        assert_eq!(status, 200);
        let kept = env.state.join("daemon/jobs").join(id).join("out/job.log");
        assert_eq!(log, std::fs::read(kept).unwrap());
        assert_eq!(
            j["result"]["logs"][0]["sha256"],
            bulwark_tests::hex(&sha2::Sha256::digest(&log)).as_str()
        );
        let (status, _, provenance) = c.fetch(id, "provenance");
        assert_eq!(status, 200);
        assert_eq!(
            provenance,
            j["result"]["provenance"].as_str().unwrap().as_bytes()
        );
        let prov = env.dir.join(format!("{id}.intoto.jsonl"));
        std::fs::write(&prov, &provenance).unwrap();
        let policy = env.dir.join(format!("{id}-policy.toml"));
        // Rootless, these hosts have no delegated cgroup: the job ran with the recorded
        // rlimit fallback, which a strict policy rejects, as it should.
        let weakened = if bulwark_tests::is_root() {
            ""
        } else {
            "forbid_weakened = false\n"
        };
        std::fs::write(
            &policy,
            format!("require_trust = \"{trust}\"\nsource_refs = [\"refs/heads/main\"]\n{weakened}"),
        )
        .unwrap();
        let v = Command::new(bulwark_bin())
            .args(["verify", "--provenance"])
            .arg(&prov)
            .arg("--key")
            .arg(env.state.join("keys/signing.pub"))
            .arg("--policy")
            .arg(&policy)
            .arg(&artifact)
            .output()
            .unwrap();
        assert!(
            v.status.success(),
            "verify: {}{}",
            String::from_utf8_lossy(&v.stdout),
            String::from_utf8_lossy(&v.stderr)
        );
    }
    // SIGTERM with nothing running: a clean stop.
    assert_eq!(
        daemon.stop(nix::sys::signal::Signal::SIGTERM, 10),
        Some(0),
        "{}",
        daemon_log(&env)
    );

    // Incident response across the fleet: which artifacts were built from this commit? The
    // coordinator's provenance, exported, indexed with the runner's key, queried.
    let admin = |args: &[&str]| {
        let o = Command::new(coordinator_bin())
            .args(args)
            .arg("--state")
            .arg(&c.state)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o
    };
    let listed: serde_json::Value =
        serde_json::from_slice(&admin(&["jobs", "list", "--json"]).stdout).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    for j in listed {
        assert_eq!(
            (&j["state"], &j["status"]),
            (&"finished".into(), &"succeeded".into())
        );
    }
    let exported = env.dir.join("exported");
    let o = admin(&[
        "jobs",
        "export-provenance",
        "--out",
        exported.to_str().unwrap(),
    ]);
    assert!(
        String::from_utf8_lossy(&o.stderr).starts_with("2 written, 0 already there"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Again: nothing rewritten.
    let o = admin(&[
        "jobs",
        "export-provenance",
        "--out",
        exported.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).starts_with("0 written, 2 already there"));
    let index = env.dir.join("fleet.jsonl");
    let inventory = |args: &[&std::ffi::OsStr]| {
        Command::new(bulwark_bin())
            .arg("inventory")
            .args(args)
            .output()
            .unwrap()
    };
    let add = inventory(&[
        "add".as_ref(),
        "--key".as_ref(),
        env.state.join("keys/signing.pub").as_os_str(),
        "--index".as_ref(),
        index.as_os_str(),
        exported.as_os_str(),
    ]);
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    let q = inventory(&[
        "query".as_ref(),
        "--index".as_ref(),
        index.as_os_str(),
        "--commit".as_ref(),
        commit[..12].as_ref(),
    ]);
    let found = String::from_utf8_lossy(&q.stdout);
    assert!(
        q.status.success(),
        "{found}{}",
        String::from_utf8_lossy(&q.stderr)
    );
    assert_eq!(
        found.matches("  \"dist/app.txt\"  built ").count(),
        2,
        "{found}"
    );
    // The coordinator's own index answers the same at once, with the jobs and their trust.
    let o = admin(&["inventory", "query", "--commit", &commit[..12]]);
    let found = String::from_utf8_lossy(&o.stdout);
    assert_eq!(found.lines().count(), 2, "{found}");
    for (id, trust) in [(&trusted, "trusted"), (&untrusted, "untrusted")] {
        assert!(
            found.contains(&format!("  \"dist/app.txt\"  job {id} ("))
                && found.contains(&format!("), {trust}, runner ")),
            "{found}"
        );
    }
    // And by the source repository's uri, which the job's provenance records.
    let o = admin(&["inventory", "query", "--uri", "git+file://*"]);
    let by_uri = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        by_uri.lines().count(),
        2,
        "{by_uri}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(by_uri.contains("; used \"source\" git+file://"), "{by_uri}");
    let none = Command::new(coordinator_bin())
        .args(["inventory", "query", "--commit", "fffffff", "--state"])
        .arg(&c.state)
        .output()
        .unwrap();
    assert_eq!(none.status.code(), Some(1), "{none:?}");

    // Retention: the outputs and logs go, the records and provenance stay.
    let o = admin(&["jobs", "prune-outputs", "--older-than", "0s"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).starts_with("removed the stored outputs of 2 job(s)"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(c.fetch(&trusted, "outputs/dist/app.txt").0, 404);
    assert_eq!(c.fetch(&trusted, "logs/job.log").0, 404);
    assert_eq!(c.fetch(&trusted, "provenance").0, 200);
}

/// One job, `run`, on a host registered with a coordinator served with `serve_args`, which
/// refuses what the daemon delivers: the job must end `finished` as a runner error (never a
/// retry until the lease ends) whose reason says `says`. The daemon is stopped cleanly.
fn refused_delivery(
    tag: &str,
    serve_args: &[&str],
    run: &str,
    says: &[&str],
) -> (bulwark_tests::Env, Coordinator, String) {
    let env = host(tag);
    let c = Coordinator::start_with(&env, serve_args);
    let token = c.registration_token(&env.dir, "10m");
    assert!(register(&env, &c, &token, "build-1").status.success());
    let (repo, commit) = repo(&env);
    let mut daemon = Daemon::start(&env);
    let id = c.submit(&git_job(&repo, &commit, "refused", run), "trusted");
    // The lease lasts the job's timeout plus 10 minutes: a retry until it ends would outlast
    // this wait.
    let j = c.wait_done(&id, 120);
    let log = daemon_log(&env);
    assert_eq!(j["state"], "finished", "{j}\n{log}");
    let result = &j["result"]["result"];
    assert_eq!(result["status"], "runner-error", "{j}");
    let reason = result["reason"].as_str().unwrap();
    for part in says {
        assert!(reason.contains(part), "{part:?} not in: {reason}");
    }
    assert_eq!(
        daemon.stop(nix::sys::signal::Signal::SIGTERM, 10),
        Some(0),
        "{log}"
    );
    (env, c, id)
}

#[test]
fn outputs_the_coordinator_will_not_take_make_the_job_a_runner_error_that_says_so() {
    // 4 KiB per job: the log (one block) fits, the output (one more) does not.
    let (env, c, id) = refused_delivery(
        "cp-upload-limit",
        &["--max-output-bytes", "4KiB"],
        "echo hi; sh build.sh",
        &[
            "outputs could not be delivered",
            "413",
            "dist/app.txt",
            "daemon/jobs/job-",
        ],
    );
    // Nothing half-stored at the coordinator; the host kept the output. The log did arrive.
    assert_eq!(c.fetch(&id, "outputs/dist/app.txt").0, 404);
    let (status, _, job_log) = c.fetch(&id, "logs/job.log");
    assert_eq!(status, 200);
    assert_eq!(job_log, b"hi\n", "{}", String::from_utf8_lossy(&job_log));
    let kept = env
        .state
        .join("daemon/jobs")
        .join(&id)
        .join("out/dist/app.txt");
    assert_eq!(std::fs::read(kept).unwrap(), b"built-from-git\n");
    let blobs = c.state.join("outputs").join(&id);
    assert_eq!(
        std::fs::read_dir(&blobs).map_or(0, |d| d.count()),
        1,
        "only the log: {}",
        blobs.display()
    );
}

#[test]
fn a_coordinator_out_of_disk_makes_the_job_a_runner_error_not_a_retry_until_the_lease_ends() {
    // More free space than any disk has: every upload is answered 507.
    refused_delivery(
        "cp-upload-full",
        &["--min-free-disk", "1000000TiB"],
        "sh build.sh",
        &["could not be delivered", "507"],
    );
}

/// A host registered through a relay whose upload rate the test sets (`rate`), a coordinator
/// served with `serve_args`, and a job whose 64 MiB output is being uploaded: returned once
/// the coordinator has received its first MiB.
fn output_upload_under_way(
    tag: &str,
    serve_args: &[&str],
    rate: u64,
) -> (Env, Coordinator, Relay, Daemon, String) {
    let env = host(tag);
    let c = Coordinator::start_with(&env, serve_args);
    let relay = Relay::start(c.url.trim_start_matches("http://").parse().unwrap(), rate);
    let token = c.registration_token(&env.dir, "10m");
    let o = register_at(&env, &relay.url(), &token, "build-1");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (repo, commit) = repo(&env);
    let daemon = Daemon::start(&env);
    let id = c.submit(
        &git_job(
            &repo,
            &commit,
            "big",
            "mkdir -p dist && head -c 67108864 /dev/zero > dist/app.txt",
        ),
        "untrusted",
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while upload_in_flight(&c, &id) < 1 << 20 {
        assert!(
            Instant::now() < deadline,
            "the output upload never got under way: {}\n{}",
            c.job(&id),
            daemon_log(&env)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (env, c, relay, daemon, id)
}

/// The bytes the coordinator has received of the job's uploads in flight (0: none).
fn upload_in_flight(c: &Coordinator, id: &str) -> u64 {
    std::fs::read_dir(c.state.join("outputs").join(id)).map_or(0, |d| {
        d.flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".upload-"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum()
    })
}

#[test]
fn an_upload_the_coordinator_cuts_for_idling_is_sent_again_and_the_job_succeeds() {
    // 4 MiB/s: the upload would take 16 s, so it is certainly held before it ends.
    let (env, c, relay, mut daemon, id) =
        output_upload_under_way("cp-upload-408", &["--upload-idle-timeout", "1s"], 4 << 20);
    // The network stalls: the coordinator cuts the upload and removes what it received.
    relay.set_rate(relay::HELD);
    let deadline = Instant::now() + Duration::from_secs(30);
    while upload_in_flight(&c, &id) > 0 {
        assert!(Instant::now() < deadline, "the stalled upload was not cut");
        std::thread::sleep(Duration::from_millis(20));
    }
    relay.set_rate(relay::FREE);
    let j = c.wait_done(&id, 120);
    let log = daemon_log(&env);
    assert_eq!(j["result"]["result"]["status"], "succeeded", "{j}\n{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("uploading output dist/app.txt")
                && l.contains("answered 408")
                && l.contains("trying again")),
        "{log}"
    );
    let (status, _, bytes) = c.fetch(&id, "outputs/dist/app.txt");
    assert_eq!(status, 200);
    assert!(bytes.len() == 64 << 20 && bytes.iter().all(|&b| b == 0));
    assert_eq!(upload_in_flight(&c, &id), 0);
    assert_eq!(
        daemon.stop(nix::sys::signal::Signal::SIGTERM, 10),
        Some(0),
        "{log}"
    );
}

#[test]
fn a_second_stop_signal_ends_an_upload_in_flight_and_the_job_is_reported_as_stopped() {
    // 2 MiB/s: the 64 MiB output would take half a minute more.
    let (env, c, _relay, mut daemon, id) = output_upload_under_way("cp-upload-stop", &[], 2 << 20);
    let pid = nix::unistd::Pid::from_raw(daemon.pid());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    // Two signals close together could be seen as one: the second goes once the first is.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !daemon_log(&env).contains("bulwark daemon: stopping after") {
        assert!(Instant::now() < deadline, "{}", daemon_log(&env));
        std::thread::sleep(Duration::from_millis(20));
    }
    let code = daemon.stop(nix::sys::signal::Signal::SIGTERM, 10);
    let log = daemon_log(&env);
    assert!(code.is_some(), "{log}");
    let j = c.job(&id);
    assert_eq!(j["state"], "finished", "{j}\n{log}");
    let result = &j["result"]["result"];
    assert_eq!(result["status"], "runner-error", "{j}");
    let reason = result["reason"].as_str().unwrap();
    assert!(
        reason.contains("stopped while it uploaded them") && reason.contains("daemon/jobs/job-"),
        "{reason}"
    );
    // The coordinator dropped the cut upload; the host kept the output.
    let deadline = Instant::now() + Duration::from_secs(30);
    while upload_in_flight(&c, &id) > 0 {
        assert!(
            Instant::now() < deadline,
            "the cut upload was left at the coordinator"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(c.fetch(&id, "outputs/dist/app.txt").0, 404);
    let kept = env
        .state
        .join("daemon/jobs")
        .join(&id)
        .join("out/dist/app.txt");
    assert_eq!(std::fs::metadata(kept).unwrap().len(), 64 << 20);
}

#[test]
fn a_registration_token_registers_one_runner_only() {
    let env = host("cp-once");
    let c = Coordinator::start(&env);
    let token = c.registration_token(&env.dir, "10m");
    let o = register(&env, &c, &token, "first");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The same token from another host (another state directory).
    let other = host("cp-once-b");
    let o = register(&other, &c, &token, "second");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("401") && err.contains("not valid"), "{err}");
    assert!(!err.contains("bwreg_"), "the token is never echoed: {err}");
    assert!(!other.state.join("runner/registration.json").exists());
    // A host registered already refuses to register again, and says how.
    let token2 = c.registration_token(&env.dir, "10m");
    let o = register(&env, &c, &token2, "again");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("registered already"), "{err}");
}

#[test]
fn an_expired_registration_token_is_refused() {
    let env = host("cp-expired");
    let c = Coordinator::start(&env);
    let token = c.registration_token(&env.dir, "1s");
    std::thread::sleep(Duration::from_millis(2100));
    let o = register(&env, &c, &token, "late");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("not valid"), "{err}");
}

#[test]
fn a_leased_job_this_host_refuses_is_reported_refused_and_no_step_runs() {
    let (env, c) = registered("cp-refuse");
    let (repo, commit) = repo(&env);
    let marker = env.dir.join("ran");
    let touch = format!("touch {}", marker.display());
    let mut daemon = Daemon::start(&env);
    // Above this host's ceiling (max_memory = 1GiB): the coordinator cannot ask for more than
    // the host's operator allows.
    let big = git_job(&repo, &commit, "big", &touch)
        .replace("[[steps]]", "[resources]\nmemory = \"2GiB\"\n[[steps]]");
    let j = c.wait_done(&c.submit(&big, "trusted"), 60);
    assert_eq!(j["result"]["result"]["status"], "refused", "{j}");
    let reason = j["result"]["result"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("resources.memory") && reason.contains("ceiling"),
        "{j}"
    );
    assert!(
        j["result"].get("provenance").is_none(),
        "no provenance for a refused job: {j}"
    );
    assert!(!marker.exists(), "no step ran");
    assert_eq!(daemon.stop(nix::sys::signal::Signal::SIGINT, 10), Some(0));
}

#[test]
fn a_job_spec_without_a_fetchable_source_is_refused_by_the_coordinator() {
    let env = host("cp-nosource");
    let c = Coordinator::start(&env);
    let spec = JobSpec::from_toml_str(&bulwark_tests::one_step("nosrc", "true", "")).unwrap();
    let r = c
        .http
        .post(format!("{}/v1/jobs", c.url))
        .bearer_auth(&c.admin)
        .header("content-type", "application/json")
        .body(serde_json::json!({ "spec": spec, "trust": "untrusted" }).to_string())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body: serde_json::Value = serde_json::from_slice(&r.bytes().unwrap()).unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("spec.source"),
        "{body}"
    );
    // And without the admin token nothing can be queued at all.
    let r = c
        .http
        .post(format!("{}/v1/jobs", c.url))
        .bearer_auth("bwadm_guess")
        .header("content-type", "application/json")
        .body(serde_json::json!({ "spec": spec, "trust": "trusted" }).to_string())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

/// `bulwark-coordinator jobs submit` queues a TOML spec with the trust level asked for and
/// prints its id; a spec the API would refuse is refused with the API's own words, exit 2,
/// and nothing is queued.
#[test]
fn jobs_submit_queues_a_spec_file_and_refuses_what_the_api_refuses_in_its_words() {
    let env = host("cp-submit");
    let c = Coordinator::start(&env);
    let submit = |file: &std::path::Path, extra: &[&str]| {
        Command::new(coordinator_bin())
            .args(["jobs", "submit", "--state"])
            .arg(&c.state)
            .args(extra)
            .arg(file)
            .output()
            .unwrap()
    };
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let good = env.dir.join("release.toml");
    std::fs::write(
        &good,
        git_job(
            std::path::Path::new("/srv/app.git"),
            commit,
            "release",
            "true",
        ),
    )
    .unwrap();
    let o = submit(&good, &["--trust", "trusted"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let id = String::from_utf8(o.stdout).unwrap().trim().to_string();
    assert!(
        id.len() == 36 && id.starts_with("job-") && id[4..].bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    let job = c.job(&id);
    assert_eq!(
        (
            job["state"].as_str(),
            job["trust"].as_str(),
            job["name"].as_str()
        ),
        (Some("queued"), Some("trusted"), Some("release")),
        "{job}"
    );
    // Untrusted unless asked.
    let o = submit(&good, &[]);
    let id = String::from_utf8(o.stdout).unwrap().trim().to_string();
    assert_eq!(c.job(&id)["trust"], "untrusted");

    // A local source: what POST /v1/jobs answers 400, in the same words.
    let local = env.dir.join("local.toml");
    let text = bulwark_tests::one_step("nosrc", "true", "");
    std::fs::write(&local, &text).unwrap();
    let api = c
        .http
        .post(format!("{}/v1/jobs", c.url))
        .bearer_auth(&c.admin)
        .header("content-type", "application/json")
        .body(
            serde_json::json!({ "spec": JobSpec::from_toml_str(&text).unwrap(), "trust": "untrusted" })
                .to_string(),
        )
        .send()
        .unwrap();
    assert_eq!(api.status().as_u16(), 400);
    let api: serde_json::Value = serde_json::from_slice(&api.bytes().unwrap()).unwrap();
    let api = api["error"].as_str().unwrap().to_string();
    assert!(api.starts_with("spec.source: "), "{api}");
    let o = submit(&local, &[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("{}: {api}", local.display())),
        "{stderr}"
    );
    assert!(o.stdout.is_empty());
    // A short commit, a file that is not a spec, a trust level that does not exist.
    std::fs::write(
        &local,
        text.replace(
            "[[steps]]",
            &format!(
                "[source]\ngit = \"https://git.example/app.git\"\ncommit = \"{}\"\n[[steps]]",
                &commit[..7]
            ),
        ),
    )
    .unwrap();
    let o = submit(&local, &[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("spec.source.commit: must be a full commit id"),
        "{stderr}"
    );
    std::fs::write(&local, "not a spec").unwrap();
    assert_eq!(submit(&local, &[]).status.code(), Some(2));
    assert_ne!(submit(&good, &["--trust", "root"]).status.code(), Some(0));
    let listed = Command::new(coordinator_bin())
        .args(["jobs", "list", "--json", "--state"])
        .arg(&c.state)
        .output()
        .unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
}

/// What an operator reads: `runners list` shows times as RFC 3339 UTC (its JSON keeps the
/// epoch seconds and adds them); a refused command is one line even with `RUST_BACKTRACE=1`;
/// the log written to a file has no colour codes.
#[test]
fn coordinator_output_for_operators_is_plain_dated_and_one_line() {
    let (env, c) = registered("cp-operator-output");
    let coordinator = |args: &[&str]| {
        Command::new(coordinator_bin())
            .args(args)
            .arg("--state")
            .arg(&c.state)
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap()
    };
    let rfc3339 = |t: &str| {
        t.len() == 20 && t.starts_with("20") && t.as_bytes()[10] == b'T' && t.ends_with('Z')
    };
    let listed = String::from_utf8(coordinator(&["runners", "list"]).stdout).unwrap();
    let fields: Vec<&str> = listed.trim_end().split('\t').collect();
    assert_eq!(fields.len(), 4, "{listed}");
    assert!(rfc3339(fields[2]) && fields[3] == "-", "{listed}");
    let id = fields[0].to_string();
    assert!(coordinator(&["runners", "remove", &id]).status.success());
    let listed = String::from_utf8(coordinator(&["runners", "list"]).stdout).unwrap();
    let removed = listed.trim_end().rsplit('\t').next().unwrap();
    assert!(
        removed.strip_prefix("removed:").is_some_and(rfc3339),
        "{listed}"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&coordinator(&["runners", "list", "--json"]).stdout).unwrap();
    assert!(
        json[0]["registered_at"].is_u64() && json[0]["removed_at"].is_u64(),
        "{json}"
    );
    assert!(
        json[0]["registered"].as_str().is_some_and(rfc3339),
        "{json}"
    );
    assert!(json[0]["removed"].as_str().is_some_and(rfc3339), "{json}");

    // Cancelling a job that has ended: refused, in one line, no stack trace.
    let spec = env.dir.join("job.toml");
    std::fs::write(
        &spec,
        git_job(
            std::path::Path::new("/srv/app.git"),
            "0123456789abcdef0123456789abcdef01234567",
            "op",
            "true",
        ),
    )
    .unwrap();
    let o = coordinator(&["jobs", "submit", spec.to_str().unwrap()]);
    let job = String::from_utf8(o.stdout).unwrap().trim().to_string();
    assert!(coordinator(&["jobs", "cancel", &job]).status.success());
    let o = coordinator(&["jobs", "cancel", &job]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("bulwark-coordinator: "), "{stderr}");
    assert!(
        !stderr.contains("backtrace") && !stderr.contains("Caused by"),
        "{stderr}"
    );

    // `serve` logging to a file (a warning at start: metrics on a non-loopback address).
    let log = env.dir.join("coordinator.log");
    let mut serve = Command::new(coordinator_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "0.0.0.0:0",
            "--state",
        ])
        .arg(&c.state)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log)
        .unwrap()
        .contains("listening on")
    {
        assert!(
            Instant::now() < deadline,
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = serve.kill();
    let _ = serve.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("WARN") && text.contains("metrics served without authentication"),
        "{text}"
    );
    assert!(!text.contains('\x1b'), "{text:?}");
}

#[test]
fn a_daemon_with_two_slots_runs_two_jobs_at_once_and_one_slot_runs_them_in_turn() {
    let (env, c) = registered("cp-slots");
    let (repo, commit) = repo(&env);
    // Job directories are removed as soon as their job is reported (`keep_outputs = "0s"`):
    // with two slots, the sweep after one job runs while the other still works in its own.
    let slots = |n: u32| {
        env.write_config_sections(
            "max_memory = \"1GiB\"\n",
            &format!(
                "[fetch]\nfile_roots = [\"{}\"]\n[daemon]\npoll_interval = \"200ms\"\nslots = {n}\nkeep_outputs = \"0s\"\n",
                env.dir.display()
            ),
        )
    };
    let job_dir = |id: &str| env.state.join("daemon/jobs").join(id);
    // Two jobs whose steps each wait (300 s at most) until the test ends the wait, as in the
    // live-log tests: the waiting process carries the job's marker, the step's own shell does
    // not (it holds "$m-..." unexpanded). Their ids and markers.
    let submit_pair = |tag: &str| -> (Vec<String>, Vec<String>) {
        let hex = bulwark_tests::random_hex(4);
        let marks: Vec<String> = (0..2).map(|i| format!("{tag}-{i}-{hex}")).collect();
        let ids: Vec<String> = (0..2)
            .map(|i| {
                c.submit(
                    &git_job(
                        &repo,
                        &commit,
                        "pair",
                        &format!(
                            "m={tag}; sh -c 'sleep 300' \"$m-{i}-{hex}\" || true; sh build.sh"
                        ),
                    ),
                    "untrusted",
                )
            })
            .collect();
        (ids, marks)
    };
    let waiting = |m: &str| !bulwark_tests::processes_with(m).is_empty();
    // Ends a job's wait: its step goes on and the job succeeds.
    let release = |m: &str| {
        for pid in bulwark_tests::processes_with(m) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    };
    let succeeded = |ids: &[String]| {
        for id in ids {
            let j = c.wait_done(id, 120);
            assert_eq!(
                j["result"]["result"]["status"],
                "succeeded",
                "{j}\n{}",
                daemon_log(&env)
            );
        }
    };

    // Two slots: both jobs are seen waiting at the same time, then let go one after the
    // other.
    slots(2);
    let mut daemon = Daemon::start(&env);
    let (ids, marks) = submit_pair("two");
    let deadline = Instant::now() + Duration::from_secs(90);
    while !marks.iter().all(|m| waiting(m.as_str())) {
        assert!(
            Instant::now() < deadline,
            "with two slots the jobs never ran at once\n{}",
            daemon_log(&env)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    release(marks[0].as_str());
    succeeded(&ids[..1]);
    // The first job's directory goes in the sweep after its report; the second job's, still
    // running, is left alone, and the second job finishes with its output intact.
    let deadline = Instant::now() + Duration::from_secs(30);
    while job_dir(&ids[0]).exists() {
        assert!(
            Instant::now() < deadline,
            "the first job's directory was never swept\n{}",
            daemon_log(&env)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        job_dir(&ids[1]).is_dir(),
        "the sweep after the first job removed the running second job's directory\n{}",
        daemon_log(&env)
    );
    assert!(waiting(marks[1].as_str()), "the second job stopped waiting");
    release(marks[1].as_str());
    succeeded(&ids[1..]);
    let (status, _, bytes) = c.fetch(&ids[1], "outputs/dist/app.txt");
    assert_eq!((status, bytes.as_slice()), (200, &b"built-from-git\n"[..]));
    assert_eq!(daemon.stop(nix::sys::signal::Signal::SIGTERM, 10), Some(0));

    // One slot: while one job waits, the other is not leased and does not start (watched for
    // 3 s, fifteen poll intervals); once the first is let go, the other runs.
    slots(1);
    let mut daemon = Daemon::start(&env);
    let (ids, marks) = submit_pair("one");
    let deadline = Instant::now() + Duration::from_secs(90);
    let first = loop {
        if let Some(i) = (0..2).find(|&i| waiting(marks[i].as_str())) {
            break i;
        }
        assert!(
            Instant::now() < deadline,
            "neither job started\n{}",
            daemon_log(&env)
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let other = 1 - first;
    let watched = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watched {
        assert!(
            !waiting(marks[other].as_str()),
            "with one slot the jobs ran at once\n{}",
            daemon_log(&env)
        );
        assert_eq!(
            c.job(&ids[other])["state"],
            "queued",
            "with one slot a second job was leased while the first ran"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    release(marks[first].as_str());
    // A killed process stays visible for a moment while it exits.
    let deadline = Instant::now() + Duration::from_secs(30);
    while waiting(marks[first].as_str()) {
        assert!(
            Instant::now() < deadline,
            "the first job's wait outlived its SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    while !waiting(marks[other].as_str()) {
        assert!(
            Instant::now() < deadline,
            "the second job never started after the first\n{}",
            daemon_log(&env)
        );
        assert!(
            !waiting(marks[first].as_str()),
            "with one slot the jobs ran at once"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    release(marks[other].as_str());
    succeeded(&ids[..]);
    assert_eq!(daemon.stop(nix::sys::signal::Signal::SIGTERM, 10), Some(0));
}

/// Starts `bulwark daemon` once, expecting it to refuse to start (exit 2); its stderr.
fn daemon_refuses_to_start(env: &Env) -> String {
    let o = Daemon::command(env)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(2), "{err}");
    err
}

#[test]
fn a_second_daemon_on_the_same_state_directory_is_refused() {
    let (env, _c) = registered("cp-twice");
    let mut first = Daemon::start(&env);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !daemon_log(&env).contains("serving") {
        assert!(Instant::now() < deadline, "{}", daemon_log(&env));
        std::thread::sleep(Duration::from_millis(50));
    }
    let err = daemon_refuses_to_start(&env);
    assert!(err.contains("another bulwark daemon uses"), "{err}");
    // The first one is untouched and stops cleanly.
    assert_eq!(first.stop(nix::sys::signal::Signal::SIGTERM, 10), Some(0));
}

#[test]
fn a_running_jobs_log_is_followed_at_the_coordinator_before_the_job_ends() {
    let (env, c) = registered("cp-live-log");
    let (repo, commit) = repo(&env);
    let mut daemon = Daemon::start(&env);
    let tag = bulwark_tests::random_hex(6);
    // The waiting process carries the marker, the step's own shell does not (it holds
    // "$m-..." unexpanded), so the test ends the wait and nothing else.
    let id = c.submit(
        &git_job(
            &repo,
            &commit,
            "live",
            &format!(
                "echo first line; m=live; sh -c 'sleep 300' \"$m-{tag}\" || true; echo after the wait; sh build.sh"
            ),
        ),
        "untrusted",
    );
    let waiting = bulwark_tests::wait_for_process(&format!("live-{tag}"), "the job", 60);
    // While the job waits, its first line reaches the coordinator.
    let deadline = Instant::now() + Duration::from_secs(60);
    let seen = loop {
        let (status, headers, body) = c.fetch_with(&id, "logs/job.log", None);
        if status == 200 && body.ends_with(b"first line\n") {
            assert_eq!(
                headers.get("bulwark-log-complete").map(String::as_str),
                Some("false")
            );
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "no live log in 60 s: {status} {}\n{}",
            String::from_utf8_lossy(&body),
            daemon_log(&env)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(c.job(&id)["state"], "leased", "the job is still running");
    // The operator's command on the coordinator's host: the log so far, then followed.
    let jobs_log = |follow: bool| {
        let mut cmd = Command::new(coordinator_bin());
        cmd.args(["jobs", "log", "--state"]).arg(&c.state);
        if follow {
            cmd.arg("--follow");
        }
        cmd.arg(&id)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd
    };
    let o = jobs_log(false).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.stdout, seen);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is leased: its log so far"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let follower = jobs_log(true).spawn().unwrap();
    // Following from the length held: nothing new while the job waits.
    let (status, headers, _) =
        c.fetch_with(&id, "logs/job.log", Some(&format!("bytes={}-", seen.len())));
    assert_eq!(status, 416);
    assert_eq!(
        headers.get("content-range"),
        Some(&format!("bytes */{}", seen.len()))
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(waiting),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let j = c.wait_done(&id, 120);
    assert_eq!(j["result"]["result"]["status"], "succeeded", "{j}");
    // The result's log replaces the live one; what was followed is its beginning.
    let (status, headers, log) = c.fetch_with(&id, "logs/job.log", None);
    assert_eq!(status, 200);
    assert_eq!(
        headers.get("bulwark-log-complete").map(String::as_str),
        Some("true")
    );
    let kept = env.state.join("daemon/jobs").join(&id).join("out/job.log");
    assert_eq!(log, std::fs::read(kept).unwrap());
    assert!(
        log.starts_with(&seen) && log.ends_with(b"after the wait\n"),
        "{}",
        String::from_utf8_lossy(&log)
    );
    assert!(!c.state.join("outputs").join(&id).join("live.log").exists());
    // The follower saw the job through to its end: exactly the final log, and a clean exit.
    let followed = follower.wait_with_output().unwrap();
    assert!(
        followed.status.success(),
        "{}",
        String::from_utf8_lossy(&followed.stderr)
    );
    assert_eq!(followed.stdout, log);
    assert_eq!(
        daemon.stop(nix::sys::signal::Signal::SIGTERM, 10),
        Some(0),
        "{}",
        daemon_log(&env)
    );
}

/// The coordinator lost the live log it held (its store restored from a backup, the file
/// removed): the daemon's next append is refused as a gap (`409`), and it sends the log again
/// from its first byte, so what the operator sees starts at the job's beginning.
#[test]
fn a_live_log_the_coordinator_lost_is_sent_again_from_the_start() {
    let (env, c) = registered("cp-live-resend");
    let (repo, commit) = repo(&env);
    let mut daemon = Daemon::start(&env);
    let tag = bulwark_tests::random_hex(6);
    let id = c.submit(
        &git_job(
            &repo,
            &commit,
            "resend",
            &format!(
                "echo first line; m=one; sh -c 'sleep 300' \"$m-{tag}\" || true; \
                 echo second line; m=two; sh -c 'sleep 300' \"$m-{tag}\" || true; sh build.sh"
            ),
        ),
        "untrusted",
    );
    let live_log = |want: &[u8]| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, _, body) = c.fetch_with(&id, "logs/job.log", None);
            if status == 200 && body.ends_with(want) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "live log never ended with {:?}: {status} {}\n{}",
                String::from_utf8_lossy(want),
                String::from_utf8_lossy(&body),
                daemon_log(&env)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let kill = |pid: i32| {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap()
    };
    let first_wait = bulwark_tests::wait_for_process(&format!("one-{tag}"), "the job", 60);
    let first = live_log(b"first line\n");
    let stored = c.state.join("outputs").join(&id).join("live.log");
    std::fs::remove_file(&stored).unwrap();
    kill(first_wait);
    let second_wait = bulwark_tests::wait_for_process(&format!("two-{tag}"), "the job", 60);
    // Whole again: the first line is there, sent a second time, before the second.
    let whole = live_log(b"second line\n");
    assert!(
        whole.starts_with(&first),
        "{}",
        String::from_utf8_lossy(&whole)
    );
    let partial = env
        .state
        .join("daemon/jobs")
        .join(&id)
        .join("out")
        .join(".job.log.partial");
    assert_eq!(whole, std::fs::read(partial).unwrap());
    assert!(
        daemon_log(&env).contains("sending from the start"),
        "{}",
        daemon_log(&env)
    );
    kill(second_wait);
    let j = c.wait_done(&id, 120);
    assert_eq!(j["result"]["result"]["status"], "succeeded", "{j}");
    assert_eq!(
        daemon.stop(nix::sys::signal::Signal::SIGTERM, 10),
        Some(0),
        "{}",
        daemon_log(&env)
    );
}

/// `bulwark rekey`: refused while the daemon runs; with it stopped, the key is replaced and the
/// runner keeps its id and its jobs run; the old key no longer signs; an interrupted rekey
/// (the coordinator took the new key, its answer was lost) is finished by running it again.
#[test]
fn a_runner_rekeys_with_its_daemon_stopped_and_an_interrupted_rekey_is_finished() {
    use std::os::unix::fs::PermissionsExt;
    let (env, c) = registered("cp-rekey");
    let (repo, commit) = repo(&env);
    let rekey = || {
        Command::new(bulwark_bin())
            .args(["rekey", "--config"])
            .arg(&env.config)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let key = env.state.join("runner/identity.key");
    let next = env.state.join("runner/identity.key.next");
    let put_key = |path: &std::path::Path, bytes: &[u8]| {
        std::fs::write(path, bytes).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    };
    let wait_serving = |from: usize| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !daemon_log(&env)[from..].contains("serving") {
            assert!(Instant::now() < deadline, "{}", daemon_log(&env));
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let first = std::fs::read(&key).unwrap();

    let mut daemon = Daemon::start(&env);
    wait_serving(0);
    let o = rekey();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("another bulwark daemon uses") && err.contains("stop it first"),
        "{err}"
    );
    assert_eq!(std::fs::read(&key).unwrap(), first);
    assert!(!next.exists());
    assert_eq!(daemon.stop(nix::sys::signal::Signal::SIGTERM, 10), Some(0));

    let o = rekey();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains("re-keyed") && !out.contains("interrupted"),
        "{out}"
    );
    let second = std::fs::read(&key).unwrap();
    assert_ne!(second, first);
    assert!(!next.exists());

    // As if the answer to that rekey had been lost: the old key in place, the new one beside it.
    put_key(&key, &first);
    put_key(&next, &second);
    // A daemon started now would sign with a key the coordinator refuses: it says what to do.
    let err = daemon_refuses_to_start(&env);
    assert!(
        err.contains("interrupted `bulwark rekey`") && err.contains("run `bulwark rekey` again"),
        "{err}"
    );
    let o = rekey();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("an interrupted rekey finished"), "{out}");
    assert_eq!(std::fs::read(&key).unwrap(), second);
    assert!(!next.exists());

    // The old key is refused: a daemon holding it gets no job.
    put_key(&key, &first);
    let mut old = Daemon::start(&env);
    let id = c.submit(
        &git_job(&repo, &commit, "rekeyed", "sh build.sh"),
        "untrusted",
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !daemon_log(&env).contains("signature does not verify") {
        assert!(Instant::now() < deadline, "{}", daemon_log(&env));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(c.job(&id)["state"], "queued");
    assert_eq!(old.stop(nix::sys::signal::Signal::SIGTERM, 10), Some(0));

    // With the new key, the same runner leases and runs it.
    put_key(&key, &second);
    let runner_id = {
        let reg: serde_json::Value = serde_json::from_slice(
            &std::fs::read(env.state.join("runner/registration.json")).unwrap(),
        )
        .unwrap();
        reg["runner_id"].as_str().unwrap().to_owned()
    };
    let mut daemon = Daemon::start(&env);
    let j = c.wait_done(&id, 120);
    assert_eq!(j["result"]["result"]["status"], "succeeded", "{j}");
    assert_eq!(j["runner_id"], runner_id.as_str());
    assert_eq!(daemon.stop(nix::sys::signal::Signal::SIGTERM, 10), Some(0));
}

/// A build host's own metrics (`[daemon] metrics_listen`) follow its jobs: leases, results by
/// status (a refused job too, which never starts a run and so is not timed), a cancelled job,
/// egress attempts allowed and denied, the slot in use while a job runs, draining after
/// SIGTERM, the disk and its reserve; and what it serves parses with an independent parser as
/// the text a scraper reads.
#[test]
fn a_build_hosts_metrics_follow_its_jobs_and_draining_and_parse_as_prometheus_text() {
    let env = host("cp-host-metrics");
    // A server on this host's loopback, which one job's allow list (and the ceiling) names.
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in server.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = std::io::Read::read(&mut conn, &mut buf);
            let _ = std::io::Write::write_all(
                &mut conn,
                b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    env.write_config_sections(
        "max_memory = \"1GiB\"\nmin_free_disk = \"1MiB\"\n",
        &format!(
            "[fetch]\nfile_roots = [\"{}\"]\n[daemon]\npoll_interval = \"200ms\"\nmetrics_listen = \"127.0.0.1:0\"\n[egress]\nceiling_untrusted = [\"*\", \"127.0.0.1:{port}\"]\n",
            env.dir.display()
        ),
    );
    let c = Coordinator::start(&env);
    let token = c.registration_token(&env.dir, "10m");
    let o = register(&env, &c, &token, "metrics-runner");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut daemon = Daemon::start(&env);
    let addr = daemon_metrics_addr(&env);
    let scrape = || {
        let r = c.http.get(format!("http://{addr}/metrics")).send().unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["content-type"],
            "text/plain; version=0.0.4; charset=utf-8"
        );
        r.text().unwrap()
    };
    let idle = scrape();
    for (series, value) in [
        ("bulwark_runner_slots", 1.0),
        ("bulwark_runner_jobs_running", 0.0),
        ("bulwark_runner_stopping", 0.0),
        ("bulwark_runner_lease_requests_total{outcome=\"job\"}", 0.0),
        ("bulwark_runner_disk_reserve_bytes", 1048576.0),
    ] {
        assert_eq!(metric(&idle, series), value, "{series}:\n{idle}");
    }
    assert!(metric(&idle, "bulwark_runner_disk_available_bytes") > 1048576.0);
    assert!(
        idle.lines()
            .any(|l| l.starts_with("bulwark_runner_info{runner_id=\"")
                && l.contains(",runner=\"metrics-runner\",version=\"")),
        "{idle}"
    );
    // Anything but GET /metrics is refused.
    let r = c.http.get(format!("http://{addr}/")).send().unwrap();
    assert_eq!(r.status(), 404);

    // One job that succeeds, one whose step fails, one refused before anything runs (above
    // the ceiling), one cancelled while it runs.
    let (repo, commit) = repo(&env);
    let ok = c.submit(&git_job(&repo, &commit, "ok", "sh build.sh"), "untrusted");
    assert_eq!(
        c.wait_done(&ok, 120)["result"]["result"]["status"],
        "succeeded"
    );
    // The failing one reaches the server through its proxy (the job's NO_PROXY keeps its own
    // loopback direct: unset for this request), is refused a name it does not list, and
    // fails.
    let bad = c.submit(
        &format!(
            "{}[network]\nallow = [\"127.0.0.1:{port}\"]\n",
            git_job(
                &repo,
                &commit,
                "bad",
                &format!(
                    "env -u NO_PROXY -u no_proxy curl -sf -o /dev/null http://127.0.0.1:{port}/x; \
                     curl -s -o /dev/null http://not-listed.invalid/; exit 3"
                ),
            )
        ),
        "untrusted",
    );
    let j = c.wait_done(&bad, 120);
    assert_eq!(j["result"]["result"]["status"], "failed", "{j}");
    assert_eq!(j["result"]["result"]["egress"]["allowed"], 1, "{j}");
    let big = c.submit(
        &format!(
            "{}[resources]\nmemory = \"2GiB\"\n",
            git_job(&repo, &commit, "big", "sh build.sh")
        ),
        "untrusted",
    );
    assert_eq!(
        c.wait_done(&big, 120)["result"]["result"]["status"],
        "refused"
    );
    let tag = bulwark_tests::random_hex(6);
    let cancel_run = |name: &str| {
        c.submit(
            &git_job(
                &repo,
                &commit,
                name,
                &format!("m=hm; sh -c 'sleep 300' \"$m-{name}-{tag}\""),
            ),
            "untrusted",
        )
    };
    let cancel = |id: &str| {
        let r = c
            .http
            .post(format!("{}/v1/jobs/{id}/cancel", c.url))
            .bearer_auth(&c.admin)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    };
    let long = cancel_run("long");
    bulwark_tests::wait_for_process(&format!("hm-long-{tag}"), "the job", 60);
    let busy = scrape();
    assert_eq!(metric(&busy, "bulwark_runner_jobs_running"), 1.0, "{busy}");
    cancel(&long);
    assert_eq!(
        c.wait_done(&long, 60)["result"]["result"]["status"],
        "failed"
    );

    // Told to stop while a job runs: draining, the slot still taken; then the job is
    // cancelled and the daemon ends.
    let last = cancel_run("last");
    bulwark_tests::wait_for_process(&format!("hm-last-{tag}"), "the job", 60);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let draining = loop {
        let text = scrape();
        if metric(&text, "bulwark_runner_stopping") == 1.0 {
            break text;
        }
        assert!(Instant::now() < deadline, "never draining:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for (series, value) in [
        ("bulwark_runner_jobs_running", 1.0),
        ("bulwark_runner_lease_requests_total{outcome=\"job\"}", 5.0),
        (
            "bulwark_runner_lease_requests_total{outcome=\"failed\"}",
            0.0,
        ),
        (
            "bulwark_runner_jobs_finished_total{status=\"succeeded\"}",
            1.0,
        ),
        ("bulwark_runner_jobs_finished_total{status=\"failed\"}", 2.0),
        (
            "bulwark_runner_jobs_finished_total{status=\"refused\"}",
            1.0,
        ),
        (
            "bulwark_runner_jobs_finished_total{status=\"runner-error\"}",
            0.0,
        ),
        ("bulwark_runner_jobs_cancelled_total", 1.0),
        // Three runs ended; the refused job never started one (and the last is running).
        ("bulwark_runner_job_duration_seconds_count", 3.0),
        ("bulwark_runner_result_reports_given_up_total", 0.0),
        (
            "bulwark_runner_egress_attempts_total{trust=\"untrusted\",decision=\"allowed\"}",
            1.0,
        ),
        (
            "bulwark_runner_egress_attempts_total{trust=\"untrusted\",decision=\"denied\"}",
            1.0,
        ),
        (
            "bulwark_runner_credential_exchanges_total{when=\"start\",outcome=\"ok\"}",
            0.0,
        ),
    ] {
        assert_eq!(metric(&draining, series), value, "{series}:\n{draining}");
    }
    assert!(
        metric(
            &draining,
            "bulwark_runner_lease_requests_total{outcome=\"empty\"}"
        ) >= 1.0
    );
    let answered = metric(
        &draining,
        "bulwark_runner_coordinator_last_answer_timestamp_seconds",
    ) as u64;
    assert!(
        (started..=now).contains(&answered),
        "{answered} not in {started}..={now}"
    );
    let start_time = metric(&draining, "bulwark_runner_start_time_seconds") as u64;
    assert!((started..=now).contains(&start_time), "{start_time}");

    let parsed = parse_prometheus(&draining);
    for line in [
        "F bulwark_runner_jobs_finished counter",
        "F bulwark_runner_job_duration_seconds histogram",
        "F bulwark_runner_jobs_running gauge",
        "S bulwark_runner_jobs_finished_total status=refused 1.0",
        "S bulwark_runner_job_duration_seconds_count  3.0",
        "S bulwark_runner_job_duration_seconds_bucket le=+Inf 3.0",
    ] {
        assert!(parsed.iter().any(|l| l == line), "{line}: {parsed:?}");
    }
    // The two inode families only where the filesystem counts inodes (btrfs does not).
    let inode_families = if draining.contains("bulwark_runner_disk_available_inodes ") {
        2
    } else {
        0
    };
    assert_eq!(
        parsed.iter().filter(|l| l.starts_with("F ")).count(),
        15 + inode_families,
        "{parsed:?}"
    );
    // The job running while the daemon drained is cancelled; the daemon reports it and ends.
    cancel(&last);
    assert_eq!(
        c.wait_done(&last, 60)["result"]["result"]["status"],
        "failed"
    );
    assert_eq!(daemon.stop(nix::sys::signal::Signal::SIGTERM, 30), Some(0));
}

/// The coordinator serves TLS itself (`serve --tls-cert --tls-key`): a runner that does not
/// trust its CA is refused at the handshake, before its one-time token is spent; with
/// `[daemon] coordinator_ca` it registers and runs a job over TLS; a plain-HTTP client gets
/// no answer of the API from the TLS port; and a renewed certificate (here from another CA)
/// is served from the next connection on, without a restart.
#[test]
fn the_coordinator_serves_tls_itself_a_runner_trusts_its_ca_and_a_renewal_needs_no_restart() {
    let env = host("cp-tls");
    let tls = TlsFiles::make(&env.dir, "first");
    let c = Coordinator::start_tls(&env, &tls);
    assert!(c.url.starts_with("https://127.0.0.1:"), "{}", c.url);
    let token = c.registration_token(&env.dir, "10m");

    let o = register(&env, &c, &token, "tls-host");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("certificate") && stderr.contains("UnknownIssuer"),
        "{stderr}"
    );
    // Said once, with what to configure.
    assert_eq!(
        stderr.matches("error sending request").count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("[daemon] coordinator_ca"), "{stderr}");
    assert!(!env.state.join("runner/registration.json").exists());

    env.write_config_sections(
        "max_memory = \"1GiB\"\n",
        &format!(
            "[fetch]\nfile_roots = [\"{}\"]\n[daemon]\npoll_interval = \"200ms\"\ncoordinator_ca = \"{}\"\n",
            env.dir.display(),
            tls.ca.display()
        ),
    );
    let o = register(&env, &c, &token, "tls-host");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut daemon = Daemon::start(&env);
    let (repo, commit) = repo(&env);
    let id = c.submit(
        &git_job(&repo, &commit, "over-tls", "sh build.sh"),
        "untrusted",
    );
    let j = c.wait_done(&id, 120);
    assert_eq!(j["result"]["result"]["status"], "succeeded", "{j}");
    let (status, _, bytes) = c.fetch(&id, "outputs/dist/app.txt");
    assert_eq!(status, 200);
    assert!(!bytes.is_empty());
    assert_eq!(
        daemon.stop(nix::sys::signal::Signal::SIGTERM, 10),
        Some(0),
        "{}",
        daemon_log(&env)
    );

    // Plain HTTP to the TLS port: the handshake fails, nothing of the API answers.
    let addr = c.url.trim_start_matches("https://");
    let plain = reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let asked = Instant::now();
    let r = plain
        .get(format!("http://{addr}/.well-known/jwks.json"))
        .send();
    assert!(r.is_err(), "plain HTTP was answered: {r:?}");
    assert!(asked.elapsed() < Duration::from_secs(10), "left hanging");

    // A renewal: the files replaced (renamed into place, as ACME clients do), by a pair from
    // another CA, so a client trusting that CA alone tells which is served.
    let next = TlsFiles::make(&env.dir, "second");
    // A fresh client each time: one that kept a TLS session could resume it, which skips the
    // certificate (as it should: the server was checked when the session began).
    let served = |ca: &std::path::Path| {
        reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .tls_certs_only(
                reqwest::Certificate::from_pem_bundle(&std::fs::read(ca).unwrap()).unwrap(),
            )
            .build()
            .unwrap()
            .get(format!("{}/.well-known/jwks.json", c.url))
            .send()
            .is_ok_and(|r| r.status().is_success())
    };
    assert!(served(&tls.ca) && !served(&next.ca));
    let expiry = || {
        metric(
            &c.scrape().2,
            "bulwark_coordinator_tls_certificate_expiry_timestamp_seconds",
        ) as u64
    };
    assert_eq!(expiry(), cert_not_after(&tls.cert));
    std::fs::rename(&next.key, &tls.key).unwrap();
    std::fs::rename(&next.cert, &tls.cert).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !served(&next.ca) {
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was not served within 30 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!served(&tls.ca));
    // The metrics follow: the renewed certificate's expiry.
    assert_eq!(expiry(), cert_not_after(&tls.cert));
}

#[test]
fn the_operator_cancels_a_queued_job_before_it_runs_and_a_running_one_mid_step() {
    let (env, c) = registered("cp-cancel");
    let (repo, commit) = repo(&env);
    let tag = bulwark_tests::random_hex(6);
    // Queued, no daemon yet: cancelled at once over the API, and never leased.
    let queued = c.submit(
        &git_job(&repo, &commit, "queued", "sh build.sh"),
        "untrusted",
    );
    let cancel = |id: &str| {
        c.http
            .post(format!("{}/v1/jobs/{id}/cancel", c.url))
            .bearer_auth(&c.admin)
            .send()
            .unwrap()
    };
    let r = cancel(&queued);
    assert_eq!(r.status(), 200);
    let answer: serde_json::Value = serde_json::from_slice(&r.bytes().unwrap()).unwrap();
    assert_eq!(answer["state"], "finished");
    let j = c.job(&queued);
    assert_eq!(j["result"]["result"]["status"], "refused", "{j}");
    assert_eq!(cancel(&queued).status(), 409);
    // Running: the step prints, then waits (its process carries the marker); the operator's
    // command cancels it; the runner stops it and reports the log of what ran.
    let running = c.submit(
        &git_job(
            &repo,
            &commit,
            "running",
            &format!("echo started; m=cancel; sh -c 'sleep 300' \"$m-{tag}\"; echo never"),
        ),
        "untrusted",
    );
    let mut daemon = Daemon::start(&env);
    bulwark_tests::wait_for_process(&format!("cancel-{tag}"), "the job", 60);
    let o = Command::new(coordinator_bin())
        .args(["jobs", "cancel", "--state"])
        .arg(&c.state)
        .arg(&running)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let j = c.wait_done(&running, 60);
    let log = daemon_log(&env);
    assert_eq!(j["state"], "finished", "{j}\n{log}");
    let result = &j["result"]["result"];
    assert_eq!(result["status"], "failed", "{j}");
    assert_eq!(result["reason"], "cancelled by the operator while it ran");
    assert!(j["cancel_requested_at"].is_u64(), "{j}");
    let (status, _, job_log) = c.fetch(&running, "logs/job.log");
    assert_eq!(status, 200);
    assert_eq!(job_log, b"started\n");
    // Nothing of the job is left running, and the daemon goes on serving.
    assert!(
        bulwark_tests::processes_with(&format!("cancel-{tag}")).is_empty(),
        "the cancelled job's process survived"
    );
    assert_serves_next_job(&c, &env, &repo, &commit);
    assert_eq!(
        daemon.stop(nix::sys::signal::Signal::SIGTERM, 10),
        Some(0),
        "{}",
        daemon_log(&env)
    );
}

/// A job whose lease the coordinator no longer holds for its runner (here: ended behind the
/// daemon's back, as when fetching its inputs outran the lease, or the runner's clock lags the
/// coordinator's) is stopped at the next heartbeat: it does not run on, with whatever
/// credentials it holds, where nothing of it will be taken.
#[test]
fn a_running_job_whose_lease_the_coordinator_ended_is_stopped() {
    let (env, c) = registered("cp-lease-gone");
    let (repo, commit) = repo(&env);
    let tag = bulwark_tests::random_hex(6);
    let id = c.submit(
        &git_job(
            &repo,
            &commit,
            "outran",
            &format!("echo started; m=lease; sh -c 'sleep 300' \"$m-{tag}\"; echo never"),
        ),
        "untrusted",
    );
    let mut daemon = Daemon::start(&env);
    bulwark_tests::wait_for_process(&format!("lease-{tag}"), "the job", 60);
    // The lease ends, by the coordinator's clock.
    let db = rusqlite::Connection::open(c.state.join("coordinator.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    let changed = db
        .execute(
            "UPDATE jobs SET lease_expires_at = 1 WHERE id = ?1",
            rusqlite::params![id],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(db);
    bulwark_tests::wait_for_no_process(
        &format!("lease-{tag}"),
        "the job ran on after its lease ended",
        60,
    );
    let log = daemon_log(&env);
    assert!(
        log.contains("no longer holds this runner's lease on the job; stopping it"),
        "{log}"
    );
    // The daemon goes on serving.
    assert_serves_next_job(&c, &env, &repo, &commit);
    assert_eq!(
        daemon.stop(nix::sys::signal::Signal::SIGTERM, 10),
        Some(0),
        "{}",
        daemon_log(&env)
    );
}

#[test]
fn a_ctrl_c_at_the_daemons_terminal_finishes_and_reports_the_running_job_first() {
    let (env, c) = registered("cp-drain");
    let (repo, commit) = repo(&env);
    let mut daemon = Daemon::start(&env);
    let marker = format!("drain-{}", bulwark_tests::random_hex(6));
    let id = c.submit(
        &git_job(
            &repo,
            &commit,
            "slow",
            &format!("sh -c 'sleep 2; : {marker}' && sh build.sh"),
        ),
        "untrusted",
    );
    bulwark_tests::wait_for_process(&marker, "the job", 60);
    // Ctrl-C at the terminal the daemon runs in: SIGINT to its whole process group. The
    // daemon takes it as SIGTERM; its runs, in their own group, never see it.
    assert_eq!(
        daemon.stop_group(nix::sys::signal::Signal::SIGINT, 60),
        Some(0),
        "{}",
        daemon_log(&env)
    );
    let j = c.job(&id);
    assert_eq!(j["state"], "finished", "{j}\n{}", daemon_log(&env));
    assert_eq!(j["result"]["result"]["status"], "succeeded", "{j}");
}

#[test]
fn killing_the_daemon_kills_its_run_and_every_job_process() {
    let (env, c) = registered("cp-kill");
    let (repo, commit) = repo(&env);
    let daemon = Daemon::start(&env);
    let marker = format!("orphan-{}", bulwark_tests::random_hex(6));
    let id = c.submit(
        &git_job(
            &repo,
            &commit,
            "stuck",
            &format!("echo began; setsid sh -c 'sleep 300; : {marker}' & sleep 300; : {marker}"),
        ),
        "untrusted",
    );
    bulwark_tests::wait_for_process(&format!("sleep 300; : {marker}"), "the job", 60);
    // The daemon's `bulwark run` of this job (its spec path holds the job id).
    let runs = bulwark_tests::processes_with(&id);
    assert!(!runs.is_empty(), "no bulwark run of {id} seen");
    // What ran is in the run's log before the kill (the run reads the job's output as it
    // comes; killed before it read `began`, the run would have logged nothing to salvage).
    let partial = env
        .state
        .join("daemon/jobs")
        .join(&id)
        .join("out/.job.log.partial");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&partial).is_ok_and(|l| l.contains("began")) {
        assert!(Instant::now() < deadline, "the run never logged `began`");
        std::thread::sleep(Duration::from_millis(20));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.pid()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    bulwark_tests::wait_for_no_process(&marker, "job processes outlived the killed daemon", 20);
    bulwark_tests::wait_for_no_process(&id, "the daemon's bulwark run outlived it", 20);
    // Nothing was reported for a job that did not finish: it stays leased.
    let j = c.job(&id);
    assert_eq!(j["state"], "leased", "{j}");
    assert!(j.get("result").is_none() || j["result"].is_null(), "{j}");
    drop(daemon);
    // What the killed run left: its job directory (workspace) and its cgroups.
    let runs = env.state.join("jobs");
    let left: Vec<_> = std::fs::read_dir(&runs)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    let cgroups: Vec<std::path::PathBuf> = ["memory", "pids", ""]
        .iter()
        .map(|c| {
            std::path::Path::new("/sys/fs/cgroup")
                .join(c)
                .join("bulwark")
                .join(&left[0])
        })
        .filter(|p| p.exists())
        .collect();
    // A rootless runner without a delegated cgroup runs its jobs under rlimits alone.
    if nix::unistd::geteuid().is_root() {
        assert!(!cgroups.is_empty(), "no cgroup of {:?} found", left[0]);
    } else {
        eprintln!("SKIP (part): the job cgroups' removal: this rootless runner has none");
    }
    // The host recovers: a new daemon removes what the killed one's run left as it starts,
    // before any job comes...
    let _daemon = Daemon::start(&env);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !daemon_log(&env).contains("cleaned up after 1 dead run") {
        assert!(Instant::now() < deadline, "{}", daemon_log(&env));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(std::fs::read_dir(&runs).unwrap().count(), 0);
    for p in cgroups {
        assert!(!p.exists(), "cgroup {} left behind", p.display());
    }
    // Holding nothing, it is offered the job again. It took that lease before (its record is
    // in the state directory) and the job may have had effects: reported as a runner error at
    // once, not run again, rather than left leased until its lease ends (then lost).
    let j = c.wait_done(&id, 60);
    let log = daemon_log(&env);
    assert_eq!(j["state"], "finished", "{j}\n{log}");
    assert_eq!(j["result"]["result"]["status"], "runner-error", "{j}");
    let reason = j["result"]["result"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("took this job before")
            && reason.contains("not run again")
            && reason.contains("job.log shows what ran"),
        "{reason}"
    );
    // With the log of what ran, salvaged from the killed run's partial log.
    let (status, _, what_ran) = c.fetch(&id, "logs/job.log");
    assert_eq!(status, 200, "{j}");
    assert!(
        String::from_utf8_lossy(&what_ran).contains("began"),
        "{}",
        String::from_utf8_lossy(&what_ran)
    );
    // And it runs the next job (and never the killed one again).
    assert_serves_next_job(&c, &env, &repo, &commit);
    assert!(
        bulwark_tests::processes_with(&marker).is_empty(),
        "the job ran again"
    );
}

/// A lease whose answer never reached the daemon (here: leased as the runner by the test,
/// the answer dropped) is offered to the daemon again when it next asks, since it does not
/// list the job as held: the job runs and succeeds, rather than sitting leased until its
/// lease runs out and ending lost.
#[test]
fn a_lease_whose_answer_was_lost_is_offered_again_and_the_job_runs() {
    let env = host("cp-lost-answer");
    let c = Coordinator::start_with(&env, &["--metrics-listen", "127.0.0.1:0"]);
    let token = c.registration_token(&env.dir, "10m");
    let o = register(&env, &c, &token, "host-1");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (repo, commit) = repo(&env);
    let id = c.submit(&git_job(&repo, &commit, "lost", "sh build.sh"), "untrusted");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Committed at the coordinator; the answer is dropped.
    let lost = lease_as_runner(&env, &rt);
    assert_eq!(lost.job_id, id);
    drop(lost);
    assert_eq!(c.job(&id)["state"], "leased");
    let mut daemon = Daemon::start(&env);
    let j = c.wait_done(&id, 120);
    let log = daemon_log(&env);
    assert_eq!(j["result"]["result"]["status"], "succeeded", "{j}\n{log}");
    let (status, _, bytes) = c.fetch(&id, "outputs/dist/app.txt");
    assert_eq!((status, bytes), (200, b"built-from-git\n".to_vec()));
    let (_, _, m) = c.scrape();
    assert_eq!(
        metric(&m, "bulwark_coordinator_leases_offered_again_total"),
        1.0,
        "{m}"
    );
    assert_eq!(metric(&m, "bulwark_coordinator_jobs_leased_total"), 1.0);
    assert_eq!(
        daemon.stop(nix::sys::signal::Signal::SIGTERM, 10),
        Some(0),
        "{log}"
    );
}

/// A coordinator newer than the runner (played by the real one, through a proxy that adds a
/// per-step setting this runner does not know to every lease of the job named `newer`): the
/// runner reads the job's id, reports the job as a runner error naming the field and saying
/// to upgrade, and runs nothing of it (no job directory, no log); the job is neither left
/// leased nor offered to it again and again. The next job, which it can read, runs.
#[test]
fn a_lease_this_runner_cannot_read_is_reported_as_a_runner_error_and_nothing_of_it_runs() {
    let env = host("cp-unreadable");
    let c = Coordinator::start(&env);
    let proxy = bulwark_tests::rewrite::Rewriter::start(
        c.url.trim_start_matches("http://").parse().unwrap(),
        |method, path, status, body| {
            if (method, path, status) != ("POST", "/v1/runners/lease", 200) {
                return None;
            }
            let mut lease: serde_json::Value = serde_json::from_slice(body).ok()?;
            if lease["spec"]["name"] != "newer" {
                return None;
            }
            lease["spec"]["steps"][0]["network"] = "none".into();
            serde_json::to_vec(&lease).ok()
        },
    );
    let token = c.registration_token(&env.dir, "10m");
    let o = register_at(&env, &proxy.url(), &token, "host-1");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (repo, commit) = repo(&env);
    let id = c.submit(&git_job(&repo, &commit, "newer", "sh build.sh"), "trusted");
    let mut daemon = Daemon::start(&env);
    let j = c.wait_done(&id, 60);
    let log = daemon_log(&env);
    assert_eq!(j["state"], "finished", "{j}\n{log}");
    let result = &j["result"]["result"];
    assert_eq!(result["status"], "runner-error", "{j}");
    assert_eq!(result["trust"], "trusted", "{j}");
    assert_eq!(result["job"], "newer", "{j}");
    let reason = result["reason"].as_str().unwrap();
    assert!(
        reason.contains("runner host-1 (bulwark ")
            && reason.contains("cannot read this job's lease")
            && reason.contains("upgrade bulwark")
            && reason.contains("spec.steps[0].network: unknown field `network`"),
        "{reason}"
    );
    // Nothing of it ran: no directory of its own on the host, no log, no provenance.
    assert!(!env.state.join("daemon/jobs").join(&id).exists());
    assert!(j["result"].get("provenance").is_none(), "{j}");
    assert_eq!(c.fetch(&id, "logs/job.log").0, 404);
    assert!(log.contains("cannot read its lease"), "{log}");
    // The runner goes on with what it can read.
    assert_serves_next_job(&c, &env, &repo, &commit);
    assert_eq!(
        daemon.stop(nix::sys::signal::Signal::SIGTERM, 10),
        Some(0),
        "{}",
        daemon_log(&env)
    );
}

/// Leases one job as the registered runner, without a daemon.
fn lease_as_runner(env: &Env, rt: &tokio::runtime::Runtime) -> Lease {
    let id = bulwark_runner::daemon::registration::load(&env.state).unwrap();
    let client =
        bulwark_runner::daemon::client::Client::new(&id.registration.coordinator, None).unwrap();
    let a = rt
        .block_on(client.post_signed(
            "/v1/runners/lease",
            b"{}".to_vec(),
            &id.registration.runner_id,
            &id.key,
        ))
        .unwrap();
    assert_eq!(a.status, 200);
    serde_json::from_slice(&a.body).unwrap()
}

fn id_token(
    env: &Env,
    rt: &tokio::runtime::Runtime,
    job_id: &str,
    audience: &str,
) -> Result<IdToken, bulwark_runner::daemon::client::ClientError> {
    let id = bulwark_runner::daemon::registration::load(&env.state).unwrap();
    let client =
        bulwark_runner::daemon::client::Client::new(&id.registration.coordinator, None).unwrap();
    let body = serde_json::to_vec(&IdTokenRequest {
        audience: audience.into(),
    })
    .unwrap();
    rt.block_on(client.post_signed(
        &format!("/v1/jobs/{job_id}/id-token"),
        body,
        &id.registration.runner_id,
        &id.key,
    ))
    .map(|a| serde_json::from_slice(&a.body).unwrap())
}

#[test]
fn a_trusted_job_leased_to_this_runner_gets_an_identity_token_pyjwt_accepts_and_nothing_else_does()
{
    let (env, c) = registered("cp-idtoken");
    let (repo, commit) = repo(&env);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let trusted = c.submit(&git_job(&repo, &commit, "release", "true"), "trusted");
    let lease = lease_as_runner(&env, &rt);
    assert_eq!(lease.job_id, trusted);
    let token = id_token(&env, &rt, &trusted, "sts.amazonaws.com").unwrap();
    assert!(format!("{token:?}").contains("redacted"));
    let file = env.dir.join("token.jwt");
    std::fs::write(&file, &token.token).unwrap();
    let v = Command::new(interop_python())
        .arg(verify_jwt_script())
        .arg(&c.url)
        .arg(&file)
        .arg("sts.amazonaws.com")
        .arg(ISSUER)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&v.stdout);
    assert!(
        v.status.success(),
        "PyJWT: {said}{}",
        String::from_utf8_lossy(&v.stderr)
    );
    let claims: serde_json::Value = serde_json::from_str(&said).unwrap();
    assert_eq!(claims["trust"], "trusted");
    assert_eq!(claims["job_id"], trusted.as_str());
    assert_eq!(claims["commit"], commit.as_str());
    assert_eq!(claims["ref"], "refs/heads/main");
    assert_eq!(claims["workflow"], "release");
    assert_eq!(claims["runner_name"], "host-1");
    assert_eq!(
        claims["sub"],
        format!(
            "repo:file://{}:ref:refs/heads/main:trust:trusted",
            repo.display()
        )
        .as_str()
    );
    let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert!(lifetime <= 600, "{claims}");
    // Another audience: PyJWT refuses the token for it.
    let v = Command::new(interop_python())
        .arg(verify_jwt_script())
        .arg(&c.url)
        .arg(&file)
        .arg("vault")
        .arg(ISSUER)
        .output()
        .unwrap();
    assert!(
        !v.status.success(),
        "a token for another audience was accepted"
    );
    // A token whose claims were edited (trust, say) fails the signature check.
    let mut parts: Vec<String> = token.token.split('.').map(str::to_string).collect();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let body = String::from_utf8(b64.decode(&parts[1]).unwrap()).unwrap();
    parts[1] = b64.encode(body.replace("\"refs/heads/main\"", "\"refs/heads/evil\""));
    std::fs::write(&file, parts.join(".")).unwrap();
    let v = Command::new(interop_python())
        .arg(verify_jwt_script())
        .arg(&c.url)
        .arg(&file)
        .arg("sts.amazonaws.com")
        .arg(ISSUER)
        .output()
        .unwrap();
    assert!(!v.status.success(), "an edited token was accepted");

    // An untrusted job leased to this runner: no token.
    let untrusted = c.submit(&git_job(&repo, &commit, "pr", "true"), "untrusted");
    assert_eq!(lease_as_runner(&env, &rt).job_id, untrusted);
    let e = id_token(&env, &rt, &untrusted, "sts.amazonaws.com").unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    assert!(e.to_string().contains("untrusted"), "{e}");
    // A trusted job that is queued, not leased to this runner: no token.
    let queued = c.submit(&git_job(&repo, &commit, "later", "true"), "trusted");
    let e = id_token(&env, &rt, &queued, "sts.amazonaws.com").unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
}

/// The coordinator's Prometheus metrics (`serve --metrics-listen`) follow a fleet's work: a job
/// waiting (queued, with its age), a runner's requests, leases, results by status; and what it
/// serves parses with an independent parser (`prometheus_client`, Debian's
/// `python3-prometheus-client`) as the text format a scraper reads.
#[test]
fn the_coordinators_metrics_follow_queued_leased_and_finished_jobs_and_parse_as_prometheus_text() {
    let env = host("cp-metrics");
    let c = Coordinator::start_with(&env, &["--metrics-listen", "127.0.0.1:0"]);
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (status, content_type, idle) = c.scrape();
    assert_eq!(status, 200, "{idle}");
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert_eq!(
        metric(&idle, "bulwark_coordinator_jobs{state=\"queued\"}"),
        0.0
    );
    assert_eq!(
        metric(&idle, "bulwark_coordinator_runners{state=\"active\"}"),
        0.0
    );
    assert_eq!(
        metric(&idle, "bulwark_coordinator_oldest_queued_job_age_seconds"),
        0.0
    );

    // Two jobs queued before any runner exists: one that succeeds, one whose step fails.
    let token = c.registration_token(&env.dir, "10m");
    let (repo, commit) = repo(&env);
    let ok = c.submit(&git_job(&repo, &commit, "ok", "sh build.sh"), "untrusted");
    let bad = c.submit(&git_job(&repo, &commit, "bad", "exit 3"), "trusted");
    std::thread::sleep(Duration::from_millis(1100));
    let (_, _, waiting) = c.scrape();
    assert_eq!(
        metric(&waiting, "bulwark_coordinator_jobs{state=\"queued\"}"),
        2.0
    );
    assert!(
        metric(
            &waiting,
            "bulwark_coordinator_oldest_queued_job_age_seconds"
        ) >= 1.0
    );
    assert_eq!(
        metric(
            &waiting,
            "bulwark_coordinator_jobs_submitted_total{trust=\"untrusted\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &waiting,
            "bulwark_coordinator_jobs_submitted_total{trust=\"trusted\"}"
        ),
        1.0
    );

    let o = register(&env, &c, &token, "metrics-host");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut daemon = Daemon::start(&env);
    let j = c.wait_done(&ok, 120);
    assert_eq!(j["result"]["result"]["status"], "succeeded", "{j}");
    let j = c.wait_done(&bad, 120);
    assert_eq!(j["result"]["result"]["status"], "failed", "{j}");
    let runner = j["runner_id"].as_str().unwrap().to_string();
    assert_eq!(daemon.stop(nix::sys::signal::Signal::SIGTERM, 10), Some(0));

    let (_, _, done) = c.scrape();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for (series, value) in [
        ("bulwark_coordinator_jobs{state=\"queued\"}", 0.0),
        ("bulwark_coordinator_jobs{state=\"leased\"}", 0.0),
        ("bulwark_coordinator_jobs{state=\"lost\"}", 0.0),
        ("bulwark_coordinator_oldest_queued_job_age_seconds", 0.0),
        ("bulwark_coordinator_runners{state=\"active\"}", 1.0),
        ("bulwark_coordinator_jobs_leased_total", 2.0),
        // The daemon listed what it held: nothing was offered again.
        ("bulwark_coordinator_leases_offered_again_total", 0.0),
        (
            "bulwark_coordinator_job_results_total{status=\"succeeded\"}",
            1.0,
        ),
        (
            "bulwark_coordinator_job_results_total{status=\"failed\"}",
            1.0,
        ),
        (
            "bulwark_coordinator_job_results_total{status=\"other\"}",
            0.0,
        ),
        (
            "bulwark_coordinator_http_responses_total{class=\"5xx\"}",
            0.0,
        ),
        // Plain HTTP on loopback: no bound per client by default, nothing refused.
        ("bulwark_coordinator_connections_refused_total", 0.0),
    ] {
        assert_eq!(metric(&done, series), value, "{series}:\n{done}");
    }
    assert!(
        metric(
            &done,
            "bulwark_coordinator_http_responses_total{class=\"2xx\"}"
        ) >= 6.0
    );
    let seen = metric(
        &done,
        &format!(
            "bulwark_coordinator_runner_last_request_timestamp_seconds{{runner_id=\"{runner}\",runner=\"metrics-host\"}}"
        ),
    ) as u64;
    assert!(
        (started..=now).contains(&seen),
        "{seen} not in {started}..={now}"
    );
    let start_time = metric(&done, "bulwark_coordinator_start_time_seconds") as u64;
    assert!(
        start_time <= started && start_time + 60 > started,
        "{start_time}"
    );

    // An independent parser reads the same text: every family with its type, every sample.
    let parsed = parse_prometheus(&done);
    let families: Vec<&String> = parsed.iter().filter(|l| l.starts_with("F ")).collect();
    assert_eq!(families.len(), 13, "{parsed:?}");
    for line in [
        "F bulwark_coordinator_job_results counter",
        "F bulwark_coordinator_jobs gauge",
        "S bulwark_coordinator_job_results_total status=succeeded 1.0",
        "S bulwark_coordinator_job_results_total status=failed 1.0",
    ] {
        assert!(parsed.iter().any(|l| l == line), "{line}: {parsed:?}");
    }
}
