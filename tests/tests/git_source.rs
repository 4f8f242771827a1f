//! `[source] git`: fetched by the runner (not the job) at exactly the pinned commit, from a
//! repository the test creates; an unknown commit refuses the job; the repository's hooks
//! never run.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use bulwark_tests::control::git;
use bulwark_tests::Env;

/// A repository with two commits; returns (path, first commit, second commit).
fn make_repo(env: &Env) -> (std::path::PathBuf, String, String) {
    let repo = env.dir.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    std::fs::write(repo.join("version.txt"), "first\n").unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "one"]);
    let first = git(&repo, &["rev-parse", "HEAD"]);
    std::fs::write(repo.join("version.txt"), "second\n").unwrap();
    git(&repo, &["commit", "-q", "-am", "two"]);
    let second = git(&repo, &["rev-parse", "HEAD"]);
    (repo, first, second)
}

fn job(repo: &Path, commit: &str) -> String {
    format!(
        "version = 1\nname = \"gitsrc\"\n[source]\ngit = \"file://{}\"\ncommit = \"{commit}\"\nref = \"refs/heads/main\"\n[[steps]]\nname = \"show\"\nrun = \"echo version=$(cat version.txt)\"\n",
        repo.display()
    )
}

fn run_spec(env: &Env, spec_text: &str, tag: &str) -> bulwark_tests::Run {
    let spec = env.dir.join(format!("{tag}.toml"));
    std::fs::write(&spec, spec_text).unwrap();
    env.run_spec(&spec, &format!("{tag}-out"))
}

fn env_with_file_root(tag: &str) -> Env {
    let env = Env::new(tag);
    env.write_config_sections(
        "",
        &format!("[fetch]\nfile_roots = [\"{}\"]\n", env.dir.display()),
    );
    env
}

#[test]
fn the_exact_pinned_commit_is_checked_out_and_recorded() {
    let env = env_with_file_root("git-exact");
    let (repo, first, _second) = make_repo(&env);
    let r = run_spec(&env, &job(&repo, &first), "exact");
    r.assert_code(0);
    assert_eq!(r.value("version"), "first", "not the pinned commit\n{r}");
    let src = &r.result()["inputs"]["source"];
    assert_eq!(src["kind"], "git");
    assert_eq!(src["commit"], first.as_str());
    assert_eq!(src["ref"], "refs/heads/main");
}

#[test]
fn an_unknown_commit_is_refused_before_any_step() {
    let env = env_with_file_root("git-unknown");
    let (repo, _, _) = make_repo(&env);
    let missing = "0123456789abcdef0123456789abcdef01234567";
    let r = run_spec(&env, &job(&repo, missing), "unknown");
    r.assert_code(2);
    assert!(
        r.stderr.contains(&format!("commit {missing} not found")),
        "{r}"
    );
    assert!(r.result()["steps"].as_array().unwrap().is_empty());
}

#[test]
fn a_repository_outside_the_file_roots_is_refused() {
    let env = Env::new("git-roots");
    let (repo, first, _) = make_repo(&env);
    let r = run_spec(&env, &job(&repo, &first), "roots");
    r.assert_code(2);
    assert!(r.stderr.contains("file_roots"), "{r}");
}

#[test]
fn hooks_of_the_runners_environment_and_repository_never_run() {
    let env = env_with_file_root("git-hooks");
    let (repo, first, _) = make_repo(&env);
    // A hooks directory configured everywhere git might look, each hook leaving a marker.
    let hooks = env.dir.join("evil-hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    let marker = env.dir.join("hook-ran");
    for h in [
        "post-checkout",
        "post-merge",
        "reference-transaction",
        "fsmonitor-watchman",
    ] {
        let p = hooks.join(h);
        std::fs::write(&p, format!("#!/bin/sh\ntouch {}\n", marker.display())).unwrap();
        Command::new("chmod").arg("755").arg(&p).status().unwrap();
    }
    git(
        &repo,
        &["config", "core.hooksPath", hooks.to_str().unwrap()],
    );
    let home = env.dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(
        home.join(".gitconfig"),
        format!("[core]\n\thooksPath = {}\n", hooks.display()),
    )
    .unwrap();
    let spec = env.dir.join("hooks.toml");
    std::fs::write(&spec, job(&repo, &first)).unwrap();
    let out = env.dir.join("hooks-out");
    let o = Command::new(bulwark_tests::bulwark_bin())
        .arg("run")
        .arg(&spec)
        .arg("--config")
        .arg(&env.config)
        .arg("--out")
        .arg(&out)
        .env("HOME", &home)
        .env("GIT_CONFIG_GLOBAL", home.join(".gitconfig"))
        .output()
        .unwrap();
    let r = bulwark_tests::Run::from_output(o, out);
    r.assert_code(0);
    assert!(!marker.exists(), "a git hook ran during the runner's fetch");
}

#[test]
fn a_repository_that_expands_past_fetch_max_bytes_is_refused_before_any_step() {
    let env = Env::new("git-bomb");
    env.write_config_sections(
        "",
        &format!(
            "[fetch]\nfile_roots = [\"{}\"]\nmax_bytes = \"1MiB\"\n",
            env.dir.display()
        ),
    );
    // 32 files, each the same MiB of zeros: one tiny blob in the pack, 32 MiB checked out.
    let repo = env.dir.join("bomb");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    let zeros = env.dir.join("zeros");
    std::fs::write(&zeros, vec![0u8; 1 << 20]).unwrap();
    let blob = git(&repo, &["hash-object", "-w", zeros.to_str().unwrap()]);
    let mut args = vec!["update-index".to_owned(), "--add".to_owned()];
    for i in 0..32 {
        args.push("--cacheinfo".into());
        args.push(format!("100644,{blob},f{i}"));
    }
    git(&repo, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let tree = git(&repo, &["write-tree"]);
    let commit = git(&repo, &["commit-tree", &tree, "-m", "bomb"]);
    let r = run_spec(&env, &job(&repo, &commit), "bomb");
    r.assert_code(2);
    assert!(
        r.stderr
            .contains("git checkout stopped: the repository takes more than 9MiB on disk"),
        "{r}"
    );
    assert!(r.result()["steps"].as_array().unwrap().is_empty());
}

/// Root mode: git runs as the job's leased uid, not as root.
mod root_mode {
    use super::*;

    #[test]
    fn git_runs_as_the_job_uid_so_a_repository_only_root_can_read_is_refused() {
        if !bulwark_tests::is_root() {
            eprintln!("skipped: needs root (per-job uids)");
            return;
        }
        let env = env_with_file_root("git-uid");
        let (repo, first, _) = make_repo(&env);
        // Readable to the job's uid: fetched, and the job owns its workspace.
        let spec = job(&repo, &first).replace(
            "run = \"echo version=$(cat version.txt)\"",
            "run = \"echo version=$(cat version.txt); echo owner=$(stat -c %u .git/objects .git/config version.txt | sort -u | tr '\\\\n' ' ')me=$(id -u)\"",
        );
        let r = run_spec(&env, &spec, "readable");
        r.assert_code(0);
        assert_eq!(r.value("version"), "first", "{r}");
        let owner = r.value("owner");
        let (owners, me) = owner.split_once(" me=").unwrap();
        assert_eq!(owners, me, "the workspace is not the job's\n{r}");
        // Objects readable only by root: git, running as the job's uid, cannot read them.
        let objects = repo.join(".git/objects");
        std::fs::set_permissions(
            &objects,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        let r = run_spec(&env, &job(&repo, &first), "unreadable");
        r.assert_code(2);
        assert!(
            r.stderr
                .contains(&format!("cannot read {}", objects.display()))
                && r.stderr
                    .contains("git runs as the job's uid, never as root")
                && r.stderr.contains("readable to every job uid"),
            "{r}"
        );
        assert!(r.result()["steps"].as_array().unwrap().is_empty());
    }

    #[test]
    fn a_process_of_the_job_uid_alive_after_the_git_fetch_refuses_the_job_and_is_killed() {
        if !bulwark_tests::is_root() {
            eprintln!("skipped: needs root (per-job uids)");
            return;
        }
        // One job uid, away from the range's start where other tests' runners lease.
        let uid = 265_000 + std::process::id() % 500;
        let env = Env::new("git-leftover");
        env.write_config_sections(
            &format!("job_uids = \"{uid}-{uid}\""),
            &format!("[fetch]\nfile_roots = [\"{}\"]\n", env.dir.display()),
        );
        let (repo, first, _) = make_repo(&env);
        // A first job leaves the uid's lease marked clean.
        run_spec(&env, &job(&repo, &first), "first").assert_code(0);
        // Processes of that uid appear, as git would leave them in a session of their own: one
        // plain, one that ignores every signal it can, one stopped.
        let marker = format!("27{}", std::process::id());
        struct Strays(Vec<std::process::Child>);
        impl Drop for Strays {
            fn drop(&mut self) {
                for c in &mut self.0 {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        }
        let as_uid = |script: &str| {
            Command::new("setpriv")
                .args(["--reuid", &uid.to_string(), "--regid", &uid.to_string()])
                .args(["--clear-groups", "sh", "-c", script])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        };
        let mut strays = Strays(vec![
            as_uid(&format!("exec sleep {marker}1")),
            as_uid(&format!(
                "trap '' TERM INT HUP QUIT USR1; exec sleep {marker}2"
            )),
            as_uid(&format!("exec sleep {marker}3")),
        ]);
        // Each must have become `sleep` as the uid (its marker is in setpriv's own arguments
        // too, before the switch: stopped then, it would stay root and unkillable by the uid).
        for child in &strays.0 {
            let pid = child.id();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                let status =
                    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
                let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or("");
                if comm.trim() == "sleep"
                    && uid_line.split_whitespace().nth(1) == Some(&*uid.to_string())
                {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "stray {pid} never became sleep as uid {uid}"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        // The third is stopped (SIGSTOP, sent to the test's own child).
        let stopped = nix::unistd::Pid::from_raw(strays.0[2].id() as i32);
        nix::sys::signal::kill(stopped, nix::sys::signal::Signal::SIGSTOP).unwrap();
        let r = run_spec(&env, &job(&repo, &first), "second");
        r.assert_code(2);
        assert!(
            r.stderr.contains(&format!(
                "a process of the job's uid {uid} outlived the git fetch"
            )) && r.stderr.contains("the process was killed"),
            "{r}"
        );
        // Every stray was killed by SIGKILL, none by the test.
        for (n, child) in strays.0.iter_mut().enumerate() {
            let status = child.wait().unwrap();
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&status),
                Some(9),
                "stray {n}: {status}"
            );
        }
        // The uid was seen empty, so its lease ended clean: the next job gets it at once.
        run_spec(&env, &job(&repo, &first), "third").assert_code(0);
    }

    #[test]
    fn a_process_of_the_job_uid_that_survives_the_sweep_keeps_the_uid_from_other_jobs() {
        if !bulwark_tests::is_root() {
            eprintln!("skipped: needs root (per-job uids)");
            return;
        }
        let uid = 265_500 + std::process::id() % 30;
        let env = Env::new("git-leftover-kept");
        env.write_config_sections(
            &format!("job_uids = \"{uid}-{uid}\""),
            &format!("[fetch]\nfile_roots = [\"{}\"]\n", env.dir.display()),
        );
        let (repo, first, _) = make_repo(&env);
        run_spec(&env, &job(&repo, &first), "first").assert_code(0);
        // A process the job uid cannot signal but that still counts as that uid: a root
        // process whose effective uid alone is the job's (real and saved stay 0, and it does
        // not exec, which would set the saved uid). `kill(-1)` by the uid does not reach it.
        struct Stray(std::process::Child);
        impl Drop for Stray {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let mut stray = Stray(
            Command::new("python3")
                .args([
                    "-c",
                    "import os, sys, time\n\
                     os.setresuid(0, int(sys.argv[1]), 0)\n\
                     print('ready', flush=True)\n\
                     time.sleep(300)",
                    &uid.to_string(),
                ])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        let mut ready = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(stray.0.stdout.as_mut().unwrap()),
            &mut ready,
        )
        .unwrap();
        assert_eq!(ready.trim(), "ready");
        let r = run_spec(&env, &job(&repo, &first), "second");
        r.assert_code(2);
        assert!(
            r.stderr.contains("still runs after the sweep")
                && r.stderr
                    .contains(&format!("uid {uid} is not given to another job")),
            "{r}"
        );
        // The lease was not released clean: while the stray runs, the uid is not handed out.
        let r = run_spec(&env, &job(&repo, &first), "third");
        r.assert_code(2);
        assert!(r.stderr.contains("no free job uid"), "{r}");
        drop(stray);
        run_spec(&env, &job(&repo, &first), "fourth").assert_code(0);
    }
}
