//! Build caches end to end: a directory at /cache/<name> that the next job of the same source
//! starts from, saved only by a job that succeeded, trusted and untrusted jobs' stores kept
//! apart, recorded in result.json and provenance (docs/caches.md).
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;

use base64::Engine as _;
use bulwark_tests::{one_step, Env, Run};

fn job(run: &str) -> String {
    one_step(
        "cached",
        run,
        "[[caches]]\nname = \"deps\"\n[outputs]\npaths = [\"out.txt\"]\n",
    )
}

fn trusted(env: &Env, run: &str) -> Run {
    env.run_with(&job(run), &["--trust", "trusted"])
}

fn untrusted(env: &Env, run: &str) -> Run {
    env.run_with(&job(run), &["--trust", "untrusted"])
}

/// Prints what the job found in its cache, then leaves `value` there.
fn read_then_write(value: &str) -> String {
    format!(
        "echo \"found=$(cat /cache/deps/lib 2>/dev/null || echo none)\"\n\
         echo {value} > /cache/deps/lib\necho done > out.txt"
    )
}

/// `bulwark caches ARGS --config <env's>`.
fn caches_cli(env: &Env, args: &[&str]) -> std::process::Output {
    std::process::Command::new(bulwark_tests::bulwark_bin())
        .arg("caches")
        .args(args)
        .arg("--config")
        .arg(&env.config)
        .output()
        .unwrap()
}

fn cache_record(r: &Run) -> serde_json::Value {
    r.result()["inputs"]["caches"][0].clone()
}

/// The statement inside `provenance.intoto.jsonl`.
fn statement(out: &Path) -> serde_json::Value {
    let line = fs::read_to_string(out.join("provenance.intoto.jsonl")).unwrap();
    let envelope: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    let payload = base64::engine::general_purpose::STANDARD
        .decode(envelope["payload"].as_str().unwrap())
        .unwrap();
    serde_json::from_slice(&payload).unwrap()
}

#[test]
fn a_trusted_jobs_cache_reaches_the_next_job_and_provenance_names_it() {
    let env = Env::new("cache-trusted");
    let first = trusted(
        &env,
        &format!(
            "echo \"entries=$(ls -A /cache/deps | wc -l)\"\n{}\nmkdir -p /cache/deps/sub && echo x > /cache/deps/sub/f",
            read_then_write("v1")
        ),
    );
    first.assert_code(0);
    assert_eq!(first.value("entries"), "0", "{first}");
    let rec = cache_record(&first);
    assert_eq!(rec["name"], "deps", "{rec}");
    assert!(rec["restored"].is_null(), "{rec}");
    assert_eq!(rec["saved"]["tier"], "trusted", "{rec}");
    let saved_tree = rec["saved"]["tree_sha256"].as_str().unwrap().to_string();
    // A cache that started empty was no input.
    let deps =
        statement(&first.out)["predicate"]["buildDefinition"]["resolvedDependencies"].clone();
    assert!(
        !deps
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["name"] == "cache:deps"),
        "{deps}"
    );

    let second = trusted(
        &env,
        &format!(
            "stat -c 'owner=%U' /cache/deps/lib\ncat /cache/deps/sub/f | sed 's/^/sub=/'\n\
             awk '$5 == \"/cache\" {{print \"cache_mount=\" $6}}' /proc/self/mountinfo\n{}",
            read_then_write("v2")
        ),
    );
    second.assert_code(0);
    assert_eq!(second.value("found"), "v1", "{second}");
    assert_eq!(second.value("sub"), "x", "{second}");
    // The job's own copy, writable by the job's user.
    assert_eq!(second.value("owner"), "build", "{second}");
    // Mounted like /workspace: no set-id programs, no device nodes.
    let opts: Vec<String> = second
        .value("cache_mount")
        .split(',')
        .map(String::from)
        .collect();
    assert!(
        opts.iter().any(|o| o == "nosuid") && opts.iter().any(|o| o == "nodev"),
        "{second}"
    );
    let rec = cache_record(&second);
    assert_eq!(rec["restored"]["tier"], "trusted", "{rec}");
    assert_eq!(rec["restored"]["tree_sha256"], saved_tree.as_str(), "{rec}");
    let deps =
        statement(&second.out)["predicate"]["buildDefinition"]["resolvedDependencies"].clone();
    let dep = deps
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "cache:deps")
        .unwrap_or_else(|| panic!("no cache:deps in {deps}"))
        .clone();
    assert_eq!(dep["uri"], "bulwark-cache:trusted/deps", "{dep}");
    assert_eq!(dep["digest"]["sha256"], saved_tree.as_str(), "{dep}");
    assert_eq!(
        dep["annotations"]["generation"], rec["restored"]["generation"],
        "{dep}"
    );

    // What the second job left is what the third finds.
    let third = trusted(&env, &read_then_write("v3"));
    third.assert_code(0);
    assert_eq!(third.value("found"), "v2", "{third}");
}

#[test]
fn an_untrusted_job_reads_the_trusted_cache_but_its_writes_never_reach_a_trusted_job() {
    let env = Env::new("cache-tiers");
    trusted(&env, &read_then_write("good")).assert_code(0);

    // A pull request's build starts from the release's cache, and poisons its own copy.
    let pr = untrusted(&env, &read_then_write("evil"));
    pr.assert_code(0);
    assert_eq!(pr.value("found"), "good", "{pr}");
    assert_eq!(cache_record(&pr)["restored"]["tier"], "trusted");
    assert_eq!(cache_record(&pr)["saved"]["tier"], "untrusted");

    // The next release build starts from what the last release left...
    let release = trusted(&env, &read_then_write("good2"));
    release.assert_code(0);
    assert_eq!(release.value("found"), "good", "{release}");
    // ...and the next pull request from what the last pull request left.
    let pr2 = untrusted(&env, &read_then_write("evil2"));
    pr2.assert_code(0);
    assert_eq!(pr2.value("found"), "evil", "{pr2}");
    assert_eq!(cache_record(&pr2)["restored"]["tier"], "untrusted");
}

#[test]
fn a_failed_job_saves_nothing() {
    let env = Env::new("cache-failed");
    trusted(&env, &read_then_write("kept")).assert_code(0);
    let failed = trusted(&env, &format!("{}\nexit 3", read_then_write("half-built")));
    failed.assert_code(1);
    assert!(
        cache_record(&failed).get("saved").is_none(),
        "{}",
        cache_record(&failed)
    );
    let next = trusted(&env, &read_then_write("x"));
    assert_eq!(next.value("found"), "kept", "{next}");
}

#[test]
fn a_cache_over_its_bound_is_not_saved_and_the_job_still_succeeds() {
    let env = Env::new("cache-bound");
    // Weighed as the store weighs caches: contents plus 4 KiB per entry (a small file and its
    // entry fit; 16 KiB of contents do not).
    env.write_config_sections("", "[caches]\nmax_size = \"12KiB\"\n");
    trusted(&env, &read_then_write("small")).assert_code(0);
    let big = trusted(
        &env,
        &format!(
            "{}\nhead -c 16384 /dev/zero > /cache/deps/big",
            read_then_write("large")
        ),
    );
    big.assert_code(0);
    let saved = cache_record(&big)["saved"].clone();
    let why = saved.as_str().unwrap_or_else(|| panic!("{saved}"));
    assert!(
        why.contains("not saved") && why.contains("caches.max_size") && why.contains("12288"),
        "{why}"
    );
    assert!(
        big.stderr.contains("warning: cache deps: not saved"),
        "{big}"
    );
    let next = trusted(&env, &read_then_write("x"));
    assert_eq!(next.value("found"), "small", "{next}");
}

#[test]
fn a_link_left_in_a_cache_is_kept_as_a_link_and_never_read_by_the_runner() {
    let env = Env::new("cache-link");
    trusted(
        &env,
        "ln -s /etc/shadow /cache/deps/shadow\nln -s /etc/passwd /cache/deps/passwd\necho done > out.txt",
    )
    .assert_code(0);
    let next = trusted(
        &env,
        "echo \"link=$(readlink /cache/deps/shadow)\"\ncat /cache/deps/shadow > /dev/null 2>&1 && echo read=yes || echo read=no\necho done > out.txt",
    );
    next.assert_code(0);
    assert_eq!(next.value("link"), "/etc/shadow", "{next}");
    assert_eq!(next.value("read"), "no", "{next}");
    // The store holds the links themselves, and no file with the host's contents.
    let host_passwd = fs::read("/etc/passwd").unwrap();
    let mut links = 0;
    let mut stack = vec![env.state.join("caches")];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_symlink() {
                links += 1;
            } else if t.is_file() {
                assert_ne!(
                    fs::read(e.path()).unwrap(),
                    host_passwd,
                    "{}",
                    e.path().display()
                );
            }
        }
    }
    assert_eq!(links, 2, "both links saved as links");
}

/// A tree whose paths are longer than PATH_MAX (200 levels of 40-character names) is saved and,
/// as root, handed to the next job's uid entry by entry, never walked by path.
#[test]
fn a_cache_deeper_than_a_path_can_name_reaches_the_next_job() {
    let env = Env::new("cache-deep");
    // Relative steps (a shell's `cd` gives up once $PWD is longer than PATH_MAX).
    let dive = |then: &str| {
        format!(
            "python3 -c '\nimport os\nos.chdir(\"/cache/deps\")\nfor i in range(200):\n    \
             os.makedirs(\"d\" * 40, exist_ok=True)\n    os.chdir(\"d\" * 40)\n{then}'\n\
             echo done > out.txt"
        )
    };
    trusted(&env, &dive("open(\"f\", \"w\").write(\"bottom\")")).assert_code(0);
    let next = trusted(
        &env,
        &dive("print(\"found=\" + open(\"f\").read())\nopen(\"f\", \"w\").write(\"more\")"),
    );
    next.assert_code(0);
    assert_eq!(next.value("found"), "bottom", "{next}");
}

#[test]
fn a_store_changed_on_the_host_refuses_the_next_job() {
    let env = Env::new("cache-tamper");
    trusted(&env, &read_then_write("clean")).assert_code(0);
    // Someone with access to the state directory swaps the stored file.
    let mut changed = 0;
    let mut stack = vec![env.state.join("caches")];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else if e.file_name() == "lib" {
                fs::write(e.path(), "tampered\n").unwrap();
                changed += 1;
            }
        }
    }
    assert_eq!(changed, 1);
    let next = trusted(&env, "echo ran=yes\necho done > out.txt");
    next.assert_code(2);
    assert!(!next.log.contains("ran=yes"), "{next}");
    assert!(
        next.stderr.contains("caches[0] (deps)")
            && next.stderr.contains("does not match the digest recorded"),
        "{next}"
    );
}

#[test]
fn with_caches_turned_off_a_job_that_declares_one_is_refused() {
    let env = Env::new("cache-off");
    env.write_config_sections("", "[caches]\nenabled = false\n");
    let r = trusted(&env, "echo ran=yes");
    r.assert_code(2);
    assert!(r.stderr.contains("caches.enabled = false"), "{r}");
}

#[test]
fn caches_list_shows_a_saved_cache_and_caches_remove_starts_it_afresh() {
    let env = Env::new("cache-cli");
    let first = trusted(&env, &read_then_write("kept"));
    first.assert_code(0);
    let rec = cache_record(&first);
    let scope = rec["scope"].as_str().unwrap().to_string();
    let cli = |args: &[&str]| caches_cli(&env, args);
    let listed = cli(&["list", "--json"]);
    assert!(listed.status.success(), "{listed:?}");
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["scope"], scope.as_str());
    assert_eq!(listed[0]["name"], "deps");
    assert_eq!(listed[0]["tier"], "trusted");
    assert_eq!(listed[0]["tree_sha256"], rec["saved"]["tree_sha256"]);
    assert_eq!(
        listed[0]["invocation"],
        first.result()["invocation_id"],
        "{listed}"
    );
    let key = listed[0]["key"].as_str().unwrap().to_string();
    let text = cli(&["list"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&scope) && text.contains("deps  trusted"),
        "{text}"
    );

    // A name that is not a cache's name is refused before anything is touched.
    let bad = cli(&["remove", "--scope", &scope, "--name", "../deps"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--name"),
        "{bad:?}"
    );
    let none = cli(&["remove", "--scope", "git:https://nowhere.example/x.git"]);
    assert_eq!(none.status.code(), Some(1), "{none:?}");
    let removed = cli(&["remove", "--key", &key, "--name", "deps"]);
    assert!(removed.status.success(), "{removed:?}");
    assert!(
        String::from_utf8_lossy(&removed.stdout).contains("removed"),
        "{removed:?}"
    );
    let next = trusted(&env, &read_then_write("x"));
    next.assert_code(0);
    assert_eq!(next.value("found"), "none", "{next}");
    // Removed by its scope as printed, this time.
    let again = cli(&["remove", "--scope", &scope]);
    assert!(again.status.success(), "{again:?}");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&cli(&["list", "--json"]).stdout).unwrap(),
        serde_json::json!([])
    );
}

#[test]
fn the_store_stays_within_max_total_and_caches_prune_applies_a_lower_bound() {
    let env = Env::new("cache-total");
    env.write_config_sections(
        "",
        "[caches]\nmax_size = \"16KiB\"\nmax_entries = 2\nmax_total = \"24KiB\"\n",
    );
    // Two pull-request builds of two other sources (their own scopes), 5000 bytes in one file
    // each: each weighs 5000 + 4096 (its one entry).
    let fill = |src: &str| {
        fs::create_dir_all(env.dir.join(src)).unwrap();
        let spec = env.dir.join(format!("{src}.toml"));
        fs::write(
            &spec,
            one_step(
                "cached",
                "head -c 5000 /dev/zero > /cache/deps/blob",
                &format!("[source]\npath = \"{src}\"\n[[caches]]\nname = \"deps\"\n"),
            ),
        )
        .unwrap();
        let r = env.run_spec(&spec, &format!("out-{src}"));
        r.assert_code(0);
        assert!(cache_record(&r)["saved"]["tree_sha256"].is_string(), "{r}");
        r
    };
    let oldest = fill("pr-a");
    fill("pr-b");
    let scope_of = |r: &Run| cache_record(r)["scope"].as_str().unwrap().to_string();
    let cli = |args: &[&str]| caches_cli(&env, args);
    let scopes = || -> Vec<(String, String)> {
        let listed = cli(&["list", "--json"]);
        assert!(listed.status.success(), "{listed:?}");
        let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
        listed
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                assert!(c["used"].is_string(), "{c}");
                (
                    c["scope"].as_str().unwrap().to_string(),
                    c["tier"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    assert_eq!(scopes().len(), 2);
    // A trusted build of 5003 bytes in two files (5003 + 2 × 4096): over 24 KiB with both,
    // so the least recently used pull-request cache goes to make room.
    let release = trusted(
        &env,
        &format!(
            "{}\nhead -c 5000 /dev/zero > /cache/deps/blob",
            read_then_write("v1")
        ),
    );
    release.assert_code(0);
    // Nothing about other projects' caches reaches the job's output.
    assert!(!release.stderr.contains("removed"), "{release}");
    let left = scopes();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        !left.iter().any(|(s, _)| *s == scope_of(&oldest)),
        "{left:?}"
    );
    assert!(
        left.contains(&(scope_of(&release), "trusted".into())),
        "{left:?}"
    );

    // The operator lowers the bound: prune takes the untrusted cache, then nothing trusted
    // is needed; a dry run first removes nothing.
    env.write_config_sections(
        "",
        "[caches]\nmax_size = \"6KiB\"\nmax_entries = 2\nmax_total = \"16KiB\"\n",
    );
    let dry = cli(&["prune", "--dry-run"]);
    assert!(dry.status.success(), "{dry:?}");
    let said = String::from_utf8_lossy(&dry.stdout).into_owned();
    assert!(
        said.starts_with("would remove ") && said.contains("deps  untrusted  5000 bytes"),
        "{said}"
    );
    assert_eq!(scopes().len(), 2);
    let done = cli(&["prune"]);
    assert!(done.status.success(), "{done:?}");
    assert!(
        String::from_utf8_lossy(&done.stdout).starts_with("removed "),
        "{done:?}"
    );
    assert_eq!(scopes(), [(scope_of(&release), "trusted".to_string())]);
    // The release's cache is whole.
    let next = trusted(&env, &read_then_write("v2"));
    assert_eq!(next.value("found"), "v1", "{next}");
}

/// A credential value as a token service might issue it: a slash and a quote, so that its
/// JSON-escaped form differs from it.
const TOKEN: &str = r#"hvs.CAESIJ/cache"leak-0123456789abcdef"#;

/// Runs `run` as a trusted job given the credential `vault` (a token file holding [`TOKEN`])
/// the way `bulwark daemon` hands it over: on standard input, as hex.
fn trusted_with_token(env: &Env, run: &str) -> Run {
    use std::io::Write;
    let spec = one_step(
        "cached",
        run,
        "credentials = [\"vault\"]\n[[caches]]\nname = \"deps\"\n[outputs]\npaths = [\"out.txt\"]\n",
    );
    let (mut cmd, out) = env.command(&spec, &["--trust", "trusted", "--credentials-stdin"]);
    let hex = bulwark_tests::hex(TOKEN.as_bytes());
    let handoff = format!(
        "{{\"credentials\":[{{\"name\":\"vault\",\"kind\":\"vault\",\"expires\":null,\
         \"files\":[[\"token\",\"{hex}\"]],\"secrets\":[\"{hex}\"]}}]}}\n"
    );
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(handoff.as_bytes()).unwrap();
    drop(stdin);
    Run::from_output(child.wait_with_output().unwrap(), out)
}

/// A trusted job's cache is restored by every pull request: a release job that was given a
/// credential and leaves it under its cache (a tool's login in a home directory there, as
/// issued, base64 or JSON-escaped) saves nothing; `result.json` says which credential and
/// which file, never the value, and a pull request restores nothing. A file without it is
/// saved as before.
#[test]
fn a_trusted_job_that_leaves_its_credential_in_a_cache_saves_nothing_and_says_which_file() {
    let env = Env::new("cache-creds");
    for (case, write, file) in [
        (
            "as-issued",
            "mkdir -p /cache/deps/home && cp /run/credentials/vault/token /cache/deps/home/.vault-token",
            "/cache/deps/home/.vault-token",
        ),
        (
            "base64",
            "printf '{\"auths\":{\"r\":{\"auth\":\"%s\"}}}' \"$(printf 'user:%s' \"$(cat /run/credentials/vault/token)\" | base64 -w0)\" > /cache/deps/config.json",
            "/cache/deps/config.json",
        ),
        (
            "json",
            "sed 's/[\"\\\\/]/\\\\&/g; s/^/{\"token\":\"/; s/$/\"}/' /run/credentials/vault/token > /cache/deps/token.json",
            "/cache/deps/token.json",
        ),
    ] {
        let run = trusted_with_token(
            &env,
            &format!("echo lib > /cache/deps/lib\n{write}\necho done > out.txt"),
        );
        run.assert_code(0);
        let saved = cache_record(&run)["saved"].clone();
        let why = saved
            .as_str()
            .unwrap_or_else(|| panic!("{case}: saved: {saved}\n{run}"));
        assert!(
            why.starts_with("not saved")
                && why.contains(&format!(
                    "{file}: holds a value of the job's credential \"vault\""
                )),
            "{case}: {why}"
        );
        let everything = format!("{}{}{}", run.stderr, run.log, run.stdout);
        let result = fs::read_to_string(run.out.join("result.json")).unwrap();
        for text in [&everything, &result] {
            assert!(!text.contains("CAESIJ"), "{case}: the value was shown: {text}");
        }
        // No trusted cache exists: `caches list` shows none, a pull request starts empty.
        let list = caches_cli(&env, &["list", "--json"]);
        let listed: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
        assert_eq!(listed.as_array().map(Vec::len), Some(0), "{case}: {listed}");
        let pr = untrusted(&env, &read_then_write("pr"));
        pr.assert_code(0);
        assert_eq!(pr.value("found"), "none", "{case}: {pr}");
        assert!(cache_record(&pr)["restored"].is_null(), "{case}");
        // Only the untrusted tier got a cache; start the next case from nothing.
        let key = listed_key(&env);
        let rm = caches_cli(&env, &["remove", "--key", &key]);
        assert!(rm.status.success(), "{}", String::from_utf8_lossy(&rm.stderr));
    }
    // The same job leaving a file without it saves as before, and a pull request gets it.
    let clean = trusted_with_token(
        &env,
        "echo lib > /cache/deps/lib\necho 'registry=https://r.example/' > /cache/deps/.npmrc\necho done > out.txt",
    );
    clean.assert_code(0);
    assert_eq!(cache_record(&clean)["saved"]["tier"], "trusted", "{clean}");
    let pr = untrusted(&env, &read_then_write("pr"));
    assert_eq!(pr.value("found"), "lib", "{pr}");
}

/// The scope key `caches list` prints for the one scope in the store.
fn listed_key(env: &Env) -> String {
    let list = caches_cli(env, &["list", "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    listed[0]["key"].as_str().unwrap_or_default().to_string()
}

/// Saves running at once (one per job slot, each its own `bulwark run`) hold the room they
/// may write above `limits.min_free_disk` against each other: with another save holding all
/// of it, a job's save is refused with the reason, and nothing is written; once that save is
/// over (its process gone, here: its lock let go), the next job's save is made.
#[test]
fn a_save_while_another_save_holds_the_room_above_the_reserve_is_refused_and_later_made() {
    use std::os::unix::fs::OpenOptionsExt;
    let env = Env::new("cache-reserve");
    env.write_config("min_free_disk = \"1MiB\"\n");
    trusted(&env, &read_then_write("first")).assert_code(0);
    // Another process's save in progress, as the store records one: a locked file under
    // `.reservations/` holding its bytes and entries.
    let dir = env.state.join("caches").join(".reservations");
    fs::create_dir_all(&dir).unwrap();
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join("other-save"))
        .unwrap();
    let mut held = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .unwrap();
    std::io::Write::write_all(&mut *held, format!("{} -\n", u64::MAX / 2).as_bytes()).unwrap();
    let blocked = trusted(&env, &read_then_write("second"));
    blocked.assert_code(0);
    assert_eq!(blocked.value("found"), "first", "{blocked}");
    let saved = cache_record(&blocked)["saved"].clone();
    let why = saved.as_str().unwrap_or_else(|| panic!("{saved}"));
    assert!(
        why.contains("not saved") && why.contains("other cache saves in progress held"),
        "{why}"
    );
    // Its process is gone: what it held is not counted, and its file is removed.
    drop(held);
    let next = trusted(&env, &read_then_write("third"));
    next.assert_code(0);
    assert_eq!(next.value("found"), "first", "{next}");
    assert_eq!(cache_record(&next)["saved"]["tier"], "trusted", "{next}");
    assert!(!dir.join("other-save").exists());
    assert_eq!(
        trusted(
            &env,
            "cat /cache/deps/lib | sed 's/^/found=/'\necho done > out.txt"
        )
        .value("found"),
        "third"
    );
}

/// A fresh host: systemd's prune units (`systemd/bulwark-{tools,caches}-prune.service`) run
/// before any job has used a tool or a cache, with the state directory read-only to them.
/// Both prunes find nothing, succeed, and make nothing.
#[test]
fn pruning_a_fresh_state_directory_succeeds_and_makes_nothing() {
    let env = Env::new("prune-fresh");
    fs::create_dir(&env.state).unwrap();
    for args in [
        &["tools", "prune", "--unused-days", "30"][..],
        &["caches", "prune"][..],
    ] {
        let o = std::process::Command::new(bulwark_tests::bulwark_bin())
            .args(args)
            .arg("--config")
            .arg(&env.config)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let made: Vec<_> = fs::read_dir(&env.state)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(made.is_empty(), "{args:?} made {made:?}");
    }
}
