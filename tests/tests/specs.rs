//! The command line's refusals: every malformed spec, configuration and output directory is
//! refused with exit 2 and a message naming the field, before anything runs.
#![allow(clippy::unwrap_used)]

use std::fs;

use bulwark_tests::{one_step, repo_root, Env};

#[test]
fn every_malformed_spec_in_the_corpus_is_refused_with_exit_2_naming_the_field() {
    let env = Env::new("corpus");
    let dir = repo_root().join("agent-protocol/tests/bad-specs");
    let dir = if dir.exists() {
        dir
    } else {
        repo_root().join("bad-specs")
    };
    let mut checked = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        let text = fs::read_to_string(&path).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} lacks an expect line", path.display()))
            .trim()
            .to_string();
        let r = env.run_spec(&path, &format!("out-{checked}"));
        assert_eq!(r.code, 2, "{}: {}", path.display(), r.stderr);
        assert!(
            r.stderr.contains(&expect),
            "{}: expected {expect:?} in: {}",
            path.display(),
            r.stderr
        );
        assert!(
            !r.out.exists(),
            "{}: a refused spec must not create an output directory",
            path.display()
        );
        checked += 1;
    }
    assert!(checked >= 25, "only {checked} malformed specs");
}

#[test]
fn a_section_v1_does_not_define_is_refused_not_ignored() {
    let env = Env::new("unsupported");
    // `[cache]` is not part of job spec v1.
    let r = env.run(&one_step(
        "unknown",
        "true",
        "[cache]\npaths = [\"target\"]",
    ));
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("unknown field `cache`"), "{r}");
    assert!(
        r.result.is_none(),
        "nothing may be written for a spec that does not parse"
    );
    // Nor can a spec say where its credentials come from: it names them, the operator
    // configures them (docs/credentials.md).
    let r = env.run(&one_step(
        "creds",
        "true",
        "[credentials]\nrole_arn = \"arn:aws:iam::1:role/admin\"",
    ));
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("(at \"[credentials]\")"), "{r}");
}

#[test]
fn a_non_empty_output_directory_is_refused() {
    let env = Env::new("outdir");
    let out = env.dir.join("busy");
    fs::create_dir_all(&out).unwrap();
    fs::write(out.join("old.txt"), "x").unwrap();
    let spec = env.dir.join("job.toml");
    fs::write(&spec, one_step("busy", "true", "")).unwrap();
    let o = std::process::Command::new(bulwark_tests::bulwark_bin())
        .arg("run")
        .arg(&spec)
        .arg("--config")
        .arg(&env.config)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("must be absent or empty"));
    assert_eq!(
        fs::read_dir(&out).unwrap().count(),
        1,
        "nothing may be written into it"
    );
}

#[test]
fn a_configuration_with_an_unknown_key_is_refused_naming_the_file() {
    let env = Env::new("badconfig");
    fs::write(&env.config, "[limits]\nmax_memroy = \"1GiB\"\n").unwrap();
    let r = env.run(&one_step("cfg", "true", ""));
    assert_eq!(r.code, 2, "{r}");
    assert!(
        r.stderr.contains(&env.config.display().to_string()) && r.stderr.contains("max_memroy"),
        "{r}"
    );
}

#[test]
fn a_spec_larger_than_a_pipe_reaches_the_sandbox_whole() {
    // The spec goes down a pipe to a helper that is already running; this one (four steps of
    // 60 KiB scripts) is larger than the pipe, so it must be read while it is written.
    let env = Env::new("bigspec");
    let filler = "x".repeat(60 * 1024);
    let mut job = String::from("version = 1\nname = \"big\"\n");
    for i in 0..4 {
        job += &format!(
            "[[steps]]\nname = \"s{i}\"\nrun = \"\"\"\n# {filler}\necho tail-marker-{i}-$((6 * 7))\n\"\"\"\n"
        );
    }
    let r = env.run(&job);
    r.assert_code(0);
    assert!(r.log.contains("tail-marker-3-42"), "{r}");
}

#[test]
fn a_failing_step_exits_1_and_later_steps_do_not_run() {
    let env = Env::new("failing");
    let job = "version = 1\nname = \"f\"\n[[steps]]\nname = \"one\"\nrun = \"echo first; exit 3\"\n[[steps]]\nname = \"two\"\nrun = \"echo second\"\n";
    let r = env.run(job);
    r.assert_code(1);
    let res = r.result();
    assert_eq!(res["status"], "failed");
    assert_eq!(res["steps"][0]["exit_code"], 3);
    assert_eq!(res["steps"].as_array().unwrap().len(), 1);
    assert_eq!(res["reason"], "step one exited with status 3");
    assert!(r.log.contains("first") && !r.log.contains("second"));
    assert!(r.out.join("job.log").exists());
}

#[test]
fn the_job_log_is_capped_and_ends_with_a_truncation_marker() {
    let env = Env::new("logcap");
    env.write_config("log_cap = \"1KiB\"");
    let r = env.run(&one_step("noisy", "yes line | head -c 100000", ""));
    r.assert_code(0);
    assert!(r.log.len() < 2048, "log is {} bytes", r.log.len());
    assert!(
        r.log.ends_with("more bytes were dropped]\n"),
        "{}",
        &r.log[r.log.len().saturating_sub(200)..]
    );
    assert!(r.log.contains("truncated at 1024 bytes"));
}

#[test]
fn outputs_keep_their_relative_paths_and_digests() {
    let env = Env::new("outputs");
    let job = one_step("outs", "mkdir -p dist/sub && printf abc > dist/a.bin && printf xyz > dist/sub/b.bin && printf no > dist/c.txt", "[outputs]\npaths = [\"dist/**/*.bin\"]");
    let r = env.run(&job);
    r.assert_code(0);
    let outs = r.result()["outputs"].as_array().unwrap().clone();
    let paths: Vec<&str> = outs.iter().map(|o| o["path"].as_str().unwrap()).collect();
    assert_eq!(paths, vec!["dist/a.bin", "dist/sub/b.bin"]);
    assert_eq!(
        outs[0]["sha256"],
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert!(!r.out.join("dist/c.txt").exists());
}

#[test]
fn probe_reports_every_layer_and_its_exit_status_matches() {
    let env = Env::new("probe");
    let o = std::process::Command::new(bulwark_tests::bulwark_bin())
        .args(["probe", "--json", "--config"])
        .arg(&env.config)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&str> = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["layer"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["user-namespaces", "landlock", "seccomp", "cgroups"]);
    let full = v["full_isolation"].as_bool().unwrap();
    assert_eq!(o.status.code(), Some(if full { 0 } else { 1 }));
    // These hosts have user namespaces, Landlock and seccomp; the trial sandbox must run.
    for l in v["layers"].as_array().unwrap().iter().take(3) {
        assert_eq!(l["available"], true, "{l}");
    }
    assert_eq!(v["trial_sandbox"]["ok"], true, "{v}");
    if bulwark_tests::is_root() {
        assert!(full, "{v}");
        assert_eq!(v["isolation_mode"], "root-per-job-uid");
    } else {
        assert_eq!(v["isolation_mode"], "rootless-single-uid");
    }
}

/// A user whose home does not exist (`nobody`, home `/nonexistent`): the default state
/// directory cannot be made, and `probe` says so (without making anything) and what to set,
/// where it used to say "ok" and leave `bulwark run` to fail making it.
#[test]
fn probe_warns_of_a_state_directory_this_user_cannot_make_and_says_what_to_set() {
    if !bulwark_tests::is_root() {
        eprintln!("skipped: running probe as another user (nobody) needs root");
        return;
    }
    let probe = |extra_env: &[(&str, &std::path::Path)]| {
        let o = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(bulwark_tests::bulwark_bin())
            .args(["probe", "--json"])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", "/nonexistent")
            .envs(extra_env.iter().copied())
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stderr)));
        v["state_dir"].clone()
    };
    let state = probe(&[]);
    assert_eq!(state["ok"], false, "{state}");
    let detail = state["detail"].as_str().unwrap();
    assert!(
        detail.contains(
            "/nonexistent/.local/state/bulwark does not exist and this user cannot make it"
        ) && detail.contains("set XDG_STATE_HOME"),
        "{detail}"
    );
    assert!(!std::path::Path::new("/nonexistent").exists());
    // With XDG_STATE_HOME somewhere it can write: fine, and still nothing is made.
    let env = Env::new("probe-nobody");
    let xdg = env.dir.join("xdg");
    std::fs::create_dir(&xdg).unwrap();
    std::fs::set_permissions(&xdg, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let state = probe(&[("XDG_STATE_HOME", &xdg)]);
    assert_eq!(state["ok"], true, "{state}");
    assert_eq!(std::fs::read_dir(&xdg).unwrap().count(), 0);
}

/// Runs the `bulwark-sandbox` next to the `bulwark` under test directly with `spec` and returns
/// its status lines.
fn helper_says(spec: &bulwark_sandbox::spec::SandboxSpec) -> String {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(bulwark_tests::bulwark_bin().with_file_name("bulwark-sandbox"))
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let json = serde_json::to_vec(spec).unwrap();
    child.stdin.take().unwrap().write_all(&json).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(125));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn minimal_spec() -> bulwark_sandbox::spec::SandboxSpec {
    use bulwark_sandbox::spec::{SandboxSpec, StepSpec};
    SandboxSpec {
        steps: vec![StepSpec {
            name: "s".into(),
            argv: vec!["/bin/true".into()],
            env: Vec::new(),
            timeout_ms: None,
            credentials: Vec::new(),
        }],
        ..bulwark_runner::job::base_spec(
            "direct",
            "/nonexistent-workspace".into(),
            "/nonexistent-tmp".into(),
            None,
        )
    }
}

#[test]
fn a_helper_refuses_a_runner_from_another_build_and_one_that_is_not_its_parent() {
    // bulwark and bulwark-sandbox are installed side by side; a mixed pair must not run jobs.
    let mut spec = minimal_spec();
    spec.protocol = "0.0.0+0000000000000000".into();
    let said = helper_says(&spec);
    assert!(
        said.contains("\"stage\":\"protocol\"") && said.contains("one build"),
        "{said}"
    );
    // The runner named in the spec must be the helper's parent (the test process is, so name
    // another pid): a helper whose runner is gone never builds a sandbox.
    let mut spec = minimal_spec();
    spec.runner_pid = 1;
    let said = helper_says(&spec);
    assert!(
        said.contains("\"stage\":\"pdeathsig\"") && said.contains("runner exited"),
        "{said}"
    );
}

/// Runs `bulwark run` of a one-step job with a stand-in `bulwark-sandbox` compiled from
/// `c_source` next to a copy of `bulwark`; `None` (after saying so) without a C compiler.
fn run_with_stand_in_helper(
    env: &Env,
    name: &str,
    c_source: &str,
) -> Option<(std::process::Output, std::path::PathBuf)> {
    let bin_dir = env.dir.join(format!("bin-{name}"));
    fs::create_dir(&bin_dir).unwrap();
    let c = bin_dir.join("fake.c");
    fs::write(&c, c_source).unwrap();
    let cc = std::process::Command::new("cc")
        .arg("-o")
        .arg(bin_dir.join("bulwark-sandbox"))
        .arg(&c)
        .status();
    if !cc.map(|s| s.success()).unwrap_or(false) {
        eprintln!("SKIP: no C compiler (cc) to build a stand-in helper");
        return None;
    }
    // A hard link where the filesystem allows one: a copy is a file this process just wrote,
    // and a fork by another test thread before the copy's descriptor closed would make the
    // exec below fail with ETXTBSY (hence also the retry).
    let bulwark = bin_dir.join("bulwark");
    if fs::hard_link(bulwark_tests::bulwark_bin(), &bulwark).is_err() {
        fs::copy(bulwark_tests::bulwark_bin(), &bulwark).unwrap();
    }
    let out = env.dir.join(format!("out-{name}"));
    let spec = env.dir.join(format!("job-{name}.toml"));
    fs::write(&spec, one_step(name, "true", "")).unwrap();
    let mut tries = 0;
    let output = loop {
        let run = std::process::Command::new(&bulwark)
            .arg("run")
            .arg(&spec)
            .arg("--out")
            .arg(&out)
            .arg("--config")
            .arg(&env.config)
            .stdin(std::process::Stdio::null())
            .output();
        match run {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 20 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            other => break other.unwrap(),
        }
    };
    Some((output, out))
}

#[test]
fn a_status_report_the_runner_cannot_read_fails_the_job() {
    // A helper from another build reports what it enforced in a shape this runner does not
    // know: the job must not be reported as run with unconfirmed protections.
    let env = Env::new("foreignhelper");
    let Some((output, out)) = run_with_stand_in_helper(
        &env,
        "foreign",
        r#"#include <stdio.h>
#include <unistd.h>
int main(void) {
    char buf[65536];
    while (read(0, buf, sizeof buf) > 0) {}
    printf("{\"event\":\"ready\"}\n"
           "{\"event\":\"step_enforced\",\"step\":\"main\",\"enforced\":{\"from_another_build\":true}}\n"
           "{\"event\":\"step_finished\",\"step\":\"main\",\"exit_code\":0,\"signal\":null,\"duration_ms\":1,\"timed_out\":false}\n"
           "{\"event\":\"done\",\"job_timed_out\":false}\n");
    return 0;
}
"#,
    ) else {
        return;
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(0), "{stderr}");
    assert_not_succeeded_because(&out, "unreadable status line");
}

/// `result.json` in `out` says the job did not succeed, with `reason` containing `needle`.
fn assert_not_succeeded_because(out: &std::path::Path, needle: &str) {
    let result: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.join("result.json")).unwrap()).unwrap();
    assert_ne!(result["status"], "succeeded", "{result}");
    assert!(
        result["reason"]
            .as_str()
            .unwrap_or_default()
            .contains(needle),
        "{result}"
    );
}

#[test]
fn a_helper_that_stops_before_its_spec_is_refused_with_its_reason() {
    // The helper gives up before reading the spec (here: at once, as one whose seccomp
    // program cannot be built would): the runner says what the helper said, not just that
    // a pipe broke, and nothing ran.
    let env = Env::new("earlyhelper");
    let Some((output, out)) = run_with_stand_in_helper(
        &env,
        "early",
        r#"#include <stdio.h>
#include <unistd.h>
int main(void) {
    close(0);
    printf("{\"event\":\"setup_failed\",\"stage\":\"seccomp\",\"message\":\"stand-in refuses\"}\n");
    return 125;
}
"#,
    ) else {
        return;
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("stand-in refuses"), "{stderr}");
    assert_not_succeeded_because(&out, "stand-in refuses");
}

#[test]
fn an_output_name_holding_escape_sequences_reaches_the_runners_stderr_escaped() {
    let env = Env::new("escapes");
    // A refused output whose name sets the terminal's title and forges a runner line.
    let job = one_step(
        "escapes",
        "mkdir -p dist && ln -s /etc/hostname \"dist/$(printf 'x\\033]0;owned\\007\\nbulwark: job release succeeded')\"",
        "[outputs]\npaths = [\"dist/*\"]",
    );
    let r = env.run(&job);
    r.assert_code(1);
    assert!(r.stderr.contains("refused"), "{r}");
    assert!(
        !r.stderr.contains('\u{1b}') && !r.stderr.contains('\u{7}'),
        "a control character reached the runner's stderr: {:?}",
        r.stderr
    );
    assert!(
        !r.stderr
            .lines()
            .any(|l| l.starts_with("bulwark: job release")),
        "a forged runner line: {:?}",
        r.stderr
    );
    // result.json keeps the name as it was.
    assert!(r.result()["reason"].as_str().unwrap().contains('\u{1b}'));
}

#[test]
fn an_output_name_holding_marks_that_reorder_or_hide_text_reaches_the_runners_stderr_escaped() {
    let env = Env::new("bidi");
    // A refused output whose name displays as `dist/appexe.tar.gz` past a right-to-left
    // override (U+202E), with a zero-width space (U+200B) in it too.
    let job = one_step(
        "bidi",
        "mkdir -p dist && ln -s /etc/hostname \"dist/$(printf 'app\\342\\200\\256zg.rat\\342\\200\\213.exe')\"",
        "[outputs]\npaths = [\"dist/*\"]",
    );
    let r = env.run(&job);
    r.assert_code(1);
    assert!(
        !r.stderr.contains('\u{202e}') && !r.stderr.contains('\u{200b}'),
        "a mark that reorders or hides text reached the runner's stderr: {:?}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains("output dist/app\\u{202e}zg.rat\\u{200b}.exe: refused: it is a symlink"),
        "{r}"
    );
    // result.json is data: the name as it was.
    let reason = r.result()["reason"].as_str().unwrap().to_owned();
    assert!(
        reason.contains("dist/app\u{202e}zg.rat\u{200b}.exe"),
        "{reason:?}"
    );
}

#[test]
fn the_log_echoed_to_a_pipe_is_the_jobs_bytes_as_job_log_keeps_them() {
    // A decision pinned (runner/src/joblog.rs): to a terminal the echo shows control
    // characters; to a file or pipe the operator chose it is the job's bytes unchanged,
    // colours and marks included, exactly as job.log stores them.
    let env = Env::new("echo-raw");
    let r = env.run(&one_step(
        "echo-raw",
        "printf '\\033[31mred\\033[0m \\342\\200\\256txt.exe\\n'",
        "",
    ));
    r.assert_code(0);
    assert_eq!(r.log, "\u{1b}[31mred\u{1b}[0m \u{202e}txt.exe\n", "{r}");
    assert_eq!(r.stdout, r.log, "{r}");
}
