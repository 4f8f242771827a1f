//! Tests of the confined git fetch: real `git` against repositories and servers the tests make.

use super::*;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::tools::testutil::TempDir;

/// A fresh directory, by its canonical path, removed with its contents when the test ends.
fn tempdir(tag: &str) -> TempDir {
    TempDir::new(&format!("gitsrc-{tag}"))
}

/// Runs the test's own git (not the confined one) to build repositories.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(GIT)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env_remove("GIT_CONFIG_PARAMETERS")
        .args([
            "-c",
            "user.name=test",
            "-c",
            "user.email=test@example.org",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "protocol.file.allow=always",
        ])
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A repository with `f` = "one" in the first commit and "two" in the second, on `main`.
fn two_commits(root: &Path) -> (PathBuf, String, String) {
    let repo = root.join("src");
    fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "--quiet"]);
    fs::write(repo.join("f"), "one\n").unwrap();
    git(&repo, &["add", "f"]);
    git(&repo, &["commit", "--quiet", "-m", "one"]);
    let first = git(&repo, &["rev-parse", "HEAD"]);
    fs::write(repo.join("f"), "two\n").unwrap();
    git(&repo, &["commit", "--quiet", "-am", "two"]);
    let second = git(&repo, &["rev-parse", "HEAD"]);
    (repo, first, second)
}

fn policy_for(roots: &[&Path]) -> GitPolicy {
    GitPolicy {
        allow_private: Vec::new(),
        host_addresses: Vec::new(),
        file_roots: roots.iter().map(|r| r.to_path_buf()).collect(),
        timeout: Duration::from_secs(60),
        max_bytes: 1 << 30,
        extra_ca: None,
        room: crate::disk_reserve::Room::default(),
        // Every fetch in these tests runs git confined, as the job runner does, when the
        // helper is built (`cargo build --all-targets`, as scripts/test.sh does first).
        confine_with: sandbox_helper(),
    }
}

/// [`policy_for`], required to confine git: fails when the helper is not built, where
/// [`policy_for`] would quietly run git unconfined.
fn confined_policy_for(roots: &[&Path]) -> GitPolicy {
    let helper = sandbox_helper().expect(
        "bulwark-sandbox is not built next to the test binaries: run `cargo build --all-targets` first",
    );
    GitPolicy {
        confine_with: Some(helper),
        ..policy_for(roots)
    }
}

/// `bulwark-sandbox` of this build: `target/<profile>/`, above this test binary's `deps/`.
fn sandbox_helper() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let helper = exe
        .parent()?
        .parent()?
        .join(bulwark_sandbox::helper::HELPER_BINARY);
    helper.is_file().then_some(helper)
}

fn file_url(path: &Path) -> String {
    format!("file://{}", path.display())
}

fn is_empty(dir: &Path) -> bool {
    fs::read_dir(dir).unwrap().next().is_none()
}

#[test]
fn the_exact_commit_is_checked_out_and_git_dir_is_sanitized() {
    let root = tempdir("exact");
    let (repo, first, second) = two_commits(&root);
    let dest = tempdir("exact-dest");
    let url = file_url(&repo);
    let got = fetch(
        &url,
        &first,
        Some("refs/heads/main"),
        &dest,
        &policy_for(&[&root]),
        None,
    )
    .unwrap();
    assert_eq!(
        got,
        GitSource {
            uri: url.clone(),
            commit: first.clone(),
            r#ref: Some("refs/heads/main".into()),
        }
    );
    assert_eq!(fs::read_to_string(dest.join("f")).unwrap(), "one\n");
    assert_eq!(git(&dest, &["rev-parse", "HEAD"]), first);
    assert_ne!(first, second);
    // Shallow: the second commit was never fetched.
    let cat = Command::new(GIT)
        .args(["-C"])
        .arg(dest.path())
        .args(["cat-file", "-e", &second])
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .status()
        .unwrap();
    assert!(!cat.success(), "the later commit should not be present");
    assert_eq!(
        fs::read_to_string(dest.join(".git/config")).unwrap(),
        SANITIZED_CONFIG
    );
    assert!(!dest.join(".git/FETCH_HEAD").exists());
    assert!(!dest.join(".git/hooks").exists());
    assert_eq!(
        got.to_json(),
        serde_json::json!({"kind": "git", "uri": url, "commit": first, "ref": "refs/heads/main"})
    );
}

#[test]
fn a_plain_absolute_path_under_file_roots_works_too() {
    let root = tempdir("plain");
    let (repo, _, second) = two_commits(&root);
    let dest = tempdir("plain-dest");
    let url = repo.display().to_string();
    let got = fetch(&url, &second, None, &dest, &policy_for(&[&root]), None).unwrap();
    assert_eq!(got.uri, url);
    assert_eq!(got.r#ref, None);
    assert_eq!(fs::read_to_string(dest.join("f")).unwrap(), "two\n");
}

#[test]
fn an_unknown_commit_is_refused_with_a_clear_message_and_dest_left_empty() {
    let root = tempdir("unknown");
    let (repo, _, _) = two_commits(&root);
    let dest = tempdir("unknown-dest");
    let url = file_url(&repo);
    let missing = "1234567890abcdef1234567890abcdef12345678";
    let err = fetch(&url, missing, None, &dest, &policy_for(&[&root]), None).unwrap_err();
    assert!(matches!(err, GitError::CommitNotFound { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("commit {missing} not found in {url} (fetched every branch and tag; check the commit id)")
    );
    assert!(is_empty(&dest), "a failed fetch leaves nothing behind");
}

#[test]
fn without_fetch_by_id_the_fallback_finds_the_commit_on_its_ref_or_refuses() {
    let root = tempdir("fallback");
    let (repo, first, second) = two_commits(&root);
    git(&repo, &["branch", "old", &first]);
    git(&repo, &["tag", "v1", &first]);
    let url = file_url(&repo);
    let policy = policy_for(&[&root]);
    let dest = tempdir("fallback-dest");
    fetch_with(
        &url,
        &first,
        Some("refs/heads/main"),
        &dest,
        &policy,
        None,
        ById::Skip,
    )
    .unwrap();
    assert_eq!(fs::read_to_string(dest.join("f")).unwrap(), "one\n");
    assert_eq!(git(&dest, &["rev-parse", "HEAD"]), first);
    let dest = tempdir("fallback-dest2");
    fetch_with(&url, &second, None, &dest, &policy, None, ById::Skip).unwrap();
    assert_eq!(fs::read_to_string(dest.join("f")).unwrap(), "two\n");
    // A commit that is on no fetched ref: the ref `old` does not contain `second`.
    let dest = tempdir("fallback-dest3");
    let err = fetch_with(
        &url,
        &second,
        Some("refs/heads/old"),
        &dest,
        &policy,
        None,
        ById::Skip,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("commit {second} not found in {url} (fetched refs/heads/old; check the commit and the ref)")
    );
    assert!(is_empty(&dest));
}

/// Name of the child-process half of the hook test (see below).
const CHILD_TEST: &str = "gitsource::tests::child_fetches_in_a_hostile_environment";
const CHILD_ENV: &str = "BULWARK_GITSOURCE_TEST_CHILD";

/// Runs only as a child of `hooks_from_the_runners_environment_never_run`, which gives it
/// a hostile process environment; as a normal test it has nothing to do.
#[test]
fn child_fetches_in_a_hostile_environment() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        eprintln!("helper of hooks_from_the_runners_environment_never_run: nothing to do");
        return;
    };
    let mut parts = spec.split('\n');
    let (url, commit, dest, root) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    fetch(
        url,
        commit,
        None,
        Path::new(dest),
        &policy_for(&[Path::new(root)]),
        None,
    )
    .unwrap();
}

#[test]
fn hooks_from_the_runners_environment_never_run() {
    let root = tempdir("hooks");
    let (repo, first, _) = two_commits(&root);
    // Hooks everywhere a careless git would look: the source repository's own hooks and
    // hooksPath, a ~/.gitconfig in HOME, and GIT_CONFIG_* variables in the environment.
    let evil = tempdir("hooks-evil");
    let marker = evil.join("marker");
    let hooks = evil.join("hooks");
    fs::create_dir(&hooks).unwrap();
    let script = format!("#!/bin/sh\necho \"$0\" >> {}\n", marker.display());
    for name in [
        "post-checkout",
        "post-merge",
        "reference-transaction",
        "pre-auto-gc",
    ] {
        let hook = hooks.join(name);
        fs::write(&hook, &script).unwrap();
        fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        fs::copy(&hook, repo.join(".git/hooks").join(name)).unwrap();
    }
    git(
        &repo,
        &["config", "core.hooksPath", hooks.to_str().unwrap()],
    );
    let gitconfig = format!("[core]\n\thooksPath = {}\n", hooks.display());
    fs::write(evil.join(".gitconfig"), &gitconfig).unwrap();
    let hostile = |cmd: &mut Command| {
        cmd.env("HOME", evil.path())
            .env_remove("GIT_CONFIG_GLOBAL")
            .env_remove("GIT_CONFIG_NOSYSTEM")
            .env("GIT_CONFIG_COUNT", "1")
            .env("GIT_CONFIG_KEY_0", "core.hooksPath")
            .env("GIT_CONFIG_VALUE_0", &hooks)
            .env(
                "GIT_CONFIG_PARAMETERS",
                format!("'core.hooksPath'='{}'", hooks.display()),
            );
    };

    // Control: plain git in this environment does run the hook, so the test can fail.
    let control = tempdir("hooks-control");
    let mut cmd = Command::new(GIT);
    hostile(&mut cmd);
    let out = cmd
        .arg("clone")
        .arg("--quiet")
        .arg(&repo)
        .arg(control.join("c"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(marker.exists(), "control: the hook should have run");
    fs::remove_file(&marker).unwrap();

    // The confined fetch, in a child process that carries the hostile environment.
    let dest = tempdir("hooks-dest");
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    hostile(&mut cmd);
    let out = cmd
        .args([CHILD_TEST, "--exact", "--nocapture", "--test-threads=1"])
        .env(
            CHILD_ENV,
            format!(
                "{}\n{first}\n{}\n{}",
                file_url(&repo),
                dest.display(),
                root.display()
            ),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read_to_string(dest.join("f")).unwrap(), "one\n");
    assert_eq!(git(&dest, &["rev-parse", "HEAD"]), first);
    assert!(
        !marker.exists(),
        "a hook ran: {}",
        fs::read_to_string(&marker).unwrap_or_default()
    );
}

#[test]
fn a_destination_owned_by_another_uid_is_accepted() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: needs root to hand the destination to another uid");
        return;
    }
    let root = tempdir("owner");
    let (repo, first, _) = two_commits(&root);
    let dest = tempdir("owner-dest");
    let nobody = nix::unistd::Uid::from_raw(65534);
    nix::unistd::chown(dest.path(), Some(nobody), None).unwrap();
    fetch(
        &file_url(&repo),
        &first,
        None,
        &dest,
        &policy_for(&[&root]),
        None,
    )
    .unwrap();
    assert_eq!(fs::read_to_string(dest.join("f")).unwrap(), "one\n");
}

#[test]
fn a_submodule_is_not_fetched() {
    let root = tempdir("submodule");
    let sub = root.join("sub");
    fs::create_dir(&sub).unwrap();
    git(&sub, &["init", "--quiet"]);
    fs::write(sub.join("inner"), "secret\n").unwrap();
    git(&sub, &["add", "inner"]);
    git(&sub, &["commit", "--quiet", "-m", "sub"]);
    let sup = root.join("super");
    fs::create_dir(&sup).unwrap();
    git(&sup, &["init", "--quiet"]);
    fs::write(sup.join("top"), "top\n").unwrap();
    git(&sup, &["add", "top"]);
    git(
        &sup,
        &["submodule", "--quiet", "add", sub.to_str().unwrap(), "sub"],
    );
    git(&sup, &["commit", "--quiet", "-m", "with a submodule"]);
    let commit = git(&sup, &["rev-parse", "HEAD"]);
    let dest = tempdir("submodule-dest");
    fetch(
        &file_url(&sup),
        &commit,
        None,
        &dest,
        &policy_for(&[&root]),
        None,
    )
    .unwrap();
    assert_eq!(fs::read_to_string(dest.join("top")).unwrap(), "top\n");
    assert!(dest.join(".gitmodules").exists());
    assert!(
        !dest.join("sub/inner").exists(),
        "the submodule was fetched"
    );
    assert!(!dest.join(".git/modules").exists());
}

#[test]
fn file_urls_outside_file_roots_are_refused() {
    let root = tempdir("outside");
    let (repo, first, _) = two_commits(&root);
    let other = tempdir("outside-other");
    let dest = tempdir("outside-dest");
    let err = fetch(
        &file_url(&repo),
        &first,
        None,
        &dest,
        &policy_for(&[&other]),
        None,
    )
    .unwrap_err();
    assert!(matches!(err, GitError::FileOutsideRoots { .. }), "{err:?}");
    assert!(
        err.to_string().ends_with("is not under fetch.file_roots"),
        "{err}"
    );
    let err = fetch(
        &file_url(&repo),
        &first,
        None,
        &dest,
        &policy_for(&[]),
        None,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .ends_with("(which is empty: file:// sources are off)"),
        "{err}"
    );
    // A symlink inside a root that points outside it is judged by its target.
    std::os::unix::fs::symlink(&repo, other.join("link")).unwrap();
    let err = fetch(
        &file_url(&other.join("link")),
        &first,
        None,
        &dest,
        &policy_for(&[&other]),
        None,
    )
    .unwrap_err();
    assert!(matches!(err, GitError::FileOutsideRoots { .. }), "{err:?}");
    assert!(is_empty(&dest));
}

/// A loopback listener that counts accepted connections and closes each at once.
fn counting_listener() -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&count);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            seen.fetch_add(1, Ordering::SeqCst);
            drop(conn);
        }
    });
    (port, count)
}

#[test]
fn http_to_loopback_is_refused_before_any_connection() {
    let (port, count) = counting_listener();
    let dest = tempdir("loopback-dest");
    let commit = "1234567890abcdef1234567890abcdef12345678";
    for url in [
        format!("http://127.0.0.1:{port}/repo.git"),
        format!("http://localhost:{port}/repo.git"),
        format!("https://[::1]:{port}/repo.git"),
        format!("http://0x7f.1:{port}/repo.git"),
    ] {
        let err = fetch(&url, commit, None, &dest, &policy_for(&[]), None).unwrap_err();
        assert!(matches!(err, GitError::Address { .. }), "{url}: {err:?}");
        let chain = format!("{:#}", anyhow::Error::from(err));
        assert!(chain.contains("loopback address"), "{chain}");
        assert!(chain.contains("fetch.allow_private"), "{chain}");
    }
    let err = fetch(
        "http://169.254.169.254/latest/meta-data",
        commit,
        None,
        &dest,
        &GitPolicy {
            allow_private: vec![IpNet::parse("169.254.0.0/16").unwrap()],
            ..policy_for(&[])
        },
        None,
    )
    .unwrap_err();
    assert!(matches!(err, GitError::Address { .. }), "{err:?}");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        count.load(Ordering::SeqCst),
        0,
        "a connection was attempted"
    );
    assert!(is_empty(&dest));
}

#[test]
fn allow_private_lets_git_connect_to_the_checked_address_only() {
    let (port, count) = counting_listener();
    let dest = tempdir("allowed-dest");
    let policy = GitPolicy {
        allow_private: vec![
            IpNet::parse("127.0.0.1").unwrap(),
            IpNet::parse("::1").unwrap(),
        ],
        ..policy_for(&[])
    };
    let commit = "1234567890abcdef1234567890abcdef12345678";
    let url = format!("http://localhost:{port}/repo.git");
    let err = fetch(&url, commit, None, &dest, &policy, None).unwrap_err();
    // The listener hangs up at once: git connected (through the pinned address) and failed.
    assert!(
        matches!(err, GitError::Git { step: "fetch", .. }),
        "{err:?}"
    );
    assert!(count.load(Ordering::SeqCst) >= 1, "git never connected");
    assert!(is_empty(&dest));
}

#[test]
fn a_server_slower_than_the_timeout_is_cut_off() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            held.push(conn); // never answers
        }
    });
    let dest = tempdir("slow-dest");
    let policy = GitPolicy {
        allow_private: vec![IpNet::parse("127.0.0.1").unwrap()],
        timeout: Duration::from_secs(1),
        ..policy_for(&[])
    };
    let start = Instant::now();
    let url = format!("http://127.0.0.1:{port}/repo.git");
    let err = fetch(&url, &"a".repeat(40), None, &dest, &policy, None).unwrap_err();
    assert!(matches!(err, GitError::Timeout { .. }), "{err:?}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        err.to_string(),
        format!("git source {url}: timed out after 1s (fetch.timeout) during git fetch")
    );
    assert!(is_empty(&dest));
}

#[test]
fn urls_with_credentials_are_refused_without_showing_them() {
    let dest = tempdir("creds-dest");
    for url in [
        "https://user:hunter2@example.org/repo.git",
        "https://hunter2@example.org/repo.git",
        "http://:hunter2@example.org/repo.git",
    ] {
        let err = fetch(url, &"a".repeat(40), None, &dest, &policy_for(&[]), None).unwrap_err();
        assert!(matches!(err, GitError::Credentials), "{url}: {err:?}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}

#[test]
fn ssh_git_ext_and_scp_like_urls_are_refused() {
    let dest = tempdir("schemes-dest");
    for (url, scheme) in [
        ("ssh://example.org/repo.git", "ssh"),
        ("git://example.org/repo.git", "git"),
        ("ext::sh -c touch% /tmp/pwned", "ext"),
        ("ext::/bin/true", "ext"),
        ("fd::3", "fd"),
        ("example.org:repo.git", "example.org"),
        ("git+ssh://example.org/repo.git", "git+ssh"),
    ] {
        let err = fetch(url, &"a".repeat(40), None, &dest, &policy_for(&[]), None).unwrap_err();
        match &err {
            GitError::Scheme { scheme: s, .. } => assert_eq!(s, scheme, "{url}"),
            GitError::BadUrl { .. } => {}
            other => panic!("{url}: {other:?}"),
        }
    }
    assert!(!Path::new("/tmp/pwned").exists());
    let err = fetch(
        "relative/path",
        &"a".repeat(40),
        None,
        &dest,
        &policy_for(&[]),
        None,
    )
    .unwrap_err();
    assert!(matches!(err, GitError::BadUrl { .. }), "{err:?}");
}

#[test]
fn bad_commits_refs_and_destinations_are_refused_before_git_runs() {
    let root = tempdir("bad");
    let (repo, first, _) = two_commits(&root);
    let url = file_url(&repo);
    let policy = policy_for(&[&root]);
    let dest = tempdir("bad-dest");
    for commit in [
        &first[..7],
        "HEAD",
        &first.to_uppercase(),
        "--upload-pack=x",
    ] {
        let err = fetch(&url, commit, None, &dest, &policy, None).unwrap_err();
        assert!(
            matches!(err, GitError::BadCommit { .. }),
            "{commit}: {err:?}"
        );
    }
    for r in ["--upload-pack=x", "a..b", "main~1", ""] {
        let err = fetch(&url, &first, Some(r), &dest, &policy, None).unwrap_err();
        assert!(matches!(err, GitError::BadRef { .. }), "{r}: {err:?}");
    }
    fs::write(dest.join("keep"), "mine").unwrap();
    let err = fetch(&url, &first, None, &dest, &policy, None).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("git source: destination {}: is not empty", dest.display())
    );
    assert_eq!(fs::read_to_string(dest.join("keep")).unwrap(), "mine");
}

#[test]
fn policy_comes_from_the_fetch_config() {
    let config = bulwark_protocol::Config {
        fetch: bulwark_protocol::FetchConfig {
            allow_private: vec!["127.0.0.1".into(), "10.0.0.0/8".into()],
            file_roots: vec!["/srv/git".into()],
            extra_ca: "/etc/bulwark/ca.pem".into(),
            timeout: Duration::from_secs(30),
            ..bulwark_protocol::FetchConfig::default()
        },
        host: bulwark_protocol::HostConfig {
            addresses: vec!["93.184.216.34".parse().unwrap()],
        },
        ..bulwark_protocol::Config::default()
    };
    let policy = GitPolicy::from_config(&config).unwrap();
    assert_eq!(policy.host_addresses, config.host.addresses);
    assert_eq!(policy.allow_private.len(), 2);
    assert_eq!(policy.file_roots, vec![PathBuf::from("/srv/git")]);
    assert_eq!(policy.extra_ca, Some(PathBuf::from("/etc/bulwark/ca.pem")));
    assert_eq!(policy.timeout, Duration::from_secs(30));
    assert_eq!(
        policy.max_bytes,
        bulwark_protocol::FetchConfig::default().max_bytes
    );
    let bad = bulwark_protocol::Config {
        fetch: bulwark_protocol::FetchConfig {
            allow_private: vec!["nope".into()],
            ..bulwark_protocol::FetchConfig::default()
        },
        ..bulwark_protocol::Config::default()
    };
    assert!(GitPolicy::from_config(&bad)
        .unwrap_err()
        .starts_with("fetch.allow_private: "));
}

#[test]
fn git_output_in_messages_has_no_control_characters_and_is_bounded() {
    let msg = clean_message("remote: \x1b[31mred\x1b[0m\r\nfatal: bad\n\n");
    assert_eq!(msg, "remote:  [31mred [0m; fatal: bad");
    let long = "x".repeat(10 * MAX_MESSAGE);
    assert_eq!(clean_message(&long).chars().count(), MAX_MESSAGE + 1);
}

/// A commit whose tree holds `copies` files, all the same `size` bytes of zeros: one small
/// blob in the pack, `copies * size` bytes once checked out.
fn expanding_commit(root: &Path, copies: usize, size: usize) -> (PathBuf, String) {
    let repo = root.join("bomb");
    fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "--quiet"]);
    let zeros = root.join("zeros");
    fs::write(&zeros, vec![0u8; size]).unwrap();
    let blob = git(&repo, &["hash-object", "-w", zeros.to_str().unwrap()]);
    let mut args = vec!["update-index".to_owned(), "--add".to_owned()];
    for i in 0..copies {
        args.push("--cacheinfo".into());
        args.push(format!("100644,{blob},f{i}"));
    }
    git(&repo, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let tree = git(&repo, &["write-tree"]);
    let commit = git(&repo, &["commit-tree", &tree, "-m", "bomb"]);
    (repo, commit)
}

#[test]
fn a_checkout_that_expands_past_its_bound_is_stopped_and_removed() {
    let root = tempdir("expand");
    // 64 MiB once checked out, from a pack of a few kilobytes.
    let (repo, commit) = expanding_commit(&root, 64, 1 << 20);
    let dest = tempdir("expand-dest");
    let policy = GitPolicy {
        max_bytes: 1 << 20,
        ..policy_for(&[&root])
    };
    let err = fetch(&file_url(&repo), &commit, None, &dest, &policy, None).unwrap_err();
    assert!(
        matches!(
            err,
            GitError::TooLarge {
                step: "checkout",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "git source {}: git checkout stopped: the repository takes more than 9MiB on disk \
             (9 times fetch.max_bytes); raise fetch.max_bytes if this repository is \
             expected to be that large",
            file_url(&repo)
        )
    );
    assert!(is_empty(&dest));
    // The same commit within a larger bound is fetched whole.
    let policy = GitPolicy {
        max_bytes: 8 << 20,
        ..policy
    };
    fetch(&file_url(&repo), &commit, None, &dest, &policy, None).unwrap();
    assert_eq!(fs::metadata(dest.join("f63")).unwrap().len(), 1 << 20);
}

#[test]
fn a_checkout_past_the_room_above_the_disk_reserve_is_stopped_and_removed() {
    let root = tempdir("room");
    // 16 MiB once checked out; fetch.max_bytes would allow it, the disk reserve not.
    let (repo, commit) = expanding_commit(&root, 16, 1 << 20);
    let dest = tempdir("room-dest");
    let policy = GitPolicy {
        max_bytes: 64 << 20,
        room: crate::disk_reserve::Room {
            bytes: Some(4 << 20),
            entries: None,
        },
        ..policy_for(&[&root])
    };
    let err = fetch(&file_url(&repo), &commit, None, &dest, &policy, None).unwrap_err();
    assert!(
        err.to_string().ends_with(
            "the repository takes more than 4MiB on disk, the space left above \
             limits.min_free_disk on its filesystem; free space there"
        ),
        "{err}"
    );
    assert!(is_empty(&dest));
    let policy = GitPolicy {
        room: crate::disk_reserve::Room {
            bytes: Some(64 << 20),
            entries: None,
        },
        ..policy
    };
    fetch(&file_url(&repo), &commit, None, &dest, &policy, None).unwrap();
}

#[test]
fn a_pack_larger_than_fetch_max_bytes_is_stopped_while_it_arrives() {
    let root = tempdir("pack");
    let repo = root.join("big");
    fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "--quiet"]);
    // 4 MiB that do not compress.
    let mut noise = Vec::with_capacity(4 << 20);
    let mut block = [7u8; 32];
    while noise.len() < 4 << 20 {
        use sha2::Digest;
        block = sha2::Sha256::digest(block).into();
        noise.extend_from_slice(&block);
    }
    fs::write(repo.join("noise"), &noise).unwrap();
    git(&repo, &["add", "noise"]);
    git(&repo, &["commit", "--quiet", "-m", "noise"]);
    let commit = git(&repo, &["rev-parse", "HEAD"]);
    let dest = tempdir("pack-dest");
    let policy = GitPolicy {
        max_bytes: 1 << 20,
        ..policy_for(&[&root])
    };
    let err = fetch(&file_url(&repo), &commit, None, &dest, &policy, None).unwrap_err();
    assert!(
        matches!(err, GitError::TooLarge { step: "fetch", .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("takes more than 1MiB on disk (fetch.max_bytes)"),
        "{err}"
    );
    assert!(is_empty(&dest));
}

#[test]
fn measuring_a_tree_stops_at_the_first_bound_and_never_follows_links() {
    let dir = tempdir("measure");
    fs::create_dir(dir.join("d")).unwrap();
    fs::write(dir.join("d/f"), vec![1u8; 100]).unwrap();
    std::os::unix::fs::symlink("/usr", dir.join("link")).unwrap();
    // Three entries and 100 bytes: /usr behind the link is not counted.
    assert_eq!(measure(&dir, 100, 3), Usage::Within);
    assert_eq!(measure(&dir, 99, 3), Usage::Bytes);
    assert_eq!(measure(&dir, 100, 2), Usage::Entries);
}

#[test]
fn git_output_is_read_to_its_end_and_only_a_bounded_part_kept() {
    let data: Vec<u8> = (0..40_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let head = read_bounded(&data[..], 16, Keep::Head);
    assert_eq!(head.as_bytes(), &data[..16]);
    let tail = read_bounded(&data[..], 16, Keep::Tail);
    assert_eq!(tail.as_bytes(), &data[data.len() - 16..]);
    assert_eq!(read_bounded(&b"short"[..], 16, Keep::Tail), "short");
}

/// A smart-HTTP git server on `bind` (`127.0.0.1:0`, `[::1]:0`) serving the repositories
/// under `root` through git's own CGI, `git http-backend` (protocol v2 when git asks for it),
/// one request per connection; `None` when the address cannot be bound (no IPv6 here).
fn http_backend_server(root: &Path, bind: &str) -> Option<u16> {
    use std::io::{BufRead, BufReader, Write};
    let listener = TcpListener::bind(bind).ok()?;
    let port = listener.local_addr().unwrap().port();
    let root = root.to_path_buf();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let root = root.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut request_line = String::new();
                reader.read_line(&mut request_line).unwrap();
                let mut parts = request_line.split_whitespace();
                let method = parts.next().unwrap_or_default().to_owned();
                let target = parts.next().unwrap_or_default().to_owned();
                let (path, query) = target.split_once('?').unwrap_or((&target, ""));
                let mut headers = Vec::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = line.trim_end().split_once(':') {
                        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
                    }
                }
                let header = |name: &str| {
                    headers
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                let length: usize = header("content-length").parse().unwrap_or(0);
                let mut body = vec![0u8; length];
                reader.read_exact(&mut body).unwrap();
                let mut backend = Command::new(GIT)
                    .arg("http-backend")
                    .env_clear()
                    .env("PATH", "/usr/bin:/bin")
                    .env("GIT_CONFIG_NOSYSTEM", "1")
                    .env("GIT_CONFIG_GLOBAL", "/dev/null")
                    .env("GIT_PROJECT_ROOT", &root)
                    .env("GIT_HTTP_EXPORT_ALL", "1")
                    .env("REQUEST_METHOD", &method)
                    .env("PATH_INFO", path)
                    .env("QUERY_STRING", query)
                    .env("CONTENT_TYPE", header("content-type"))
                    .env("CONTENT_LENGTH", length.to_string())
                    .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
                    .env("HTTP_GIT_PROTOCOL", header("git-protocol"))
                    .env("REMOTE_ADDR", "127.0.0.1")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap();
                backend.stdin.take().unwrap().write_all(&body).unwrap();
                let out = backend.wait_with_output().unwrap().stdout;
                // CGI headers, a blank line, the body: an HTTP/1.1 answer closed at its end.
                let split = out
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map(|i| (i, 4))
                    .or_else(|| out.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)))
                    .unwrap();
                let cgi = String::from_utf8_lossy(&out[..split.0]).into_owned();
                let status = cgi
                    .lines()
                    .find_map(|l| l.strip_prefix("Status:"))
                    .map_or("200 OK".to_owned(), |s| s.trim().to_owned());
                let mut answer = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
                for line in cgi.lines().filter(|l| !l.starts_with("Status:")) {
                    answer.push_str(line.trim_end());
                    answer.push_str("\r\n");
                }
                answer.push_str("\r\n");
                let mut conn = conn;
                let _ = conn.write_all(answer.as_bytes());
                let _ = conn.write_all(&out[split.0 + split.1..]);
            });
        }
    });
    Some(port)
}

/// The fetch a job with a remote `[source] git` gets, end to end: confined git (no UDP, no
/// unix sockets, TCP only to the repository's port) over smart HTTP to a pinned address,
/// IPv4 and IPv6, the exact commit checked out.
#[test]
fn confined_git_fetches_a_commit_over_smart_http_on_ipv4_and_ipv6() {
    let root = tempdir("smart-http");
    let (_, first, second) = two_commits(&root);
    let policy = GitPolicy {
        allow_private: vec![
            IpNet::parse("127.0.0.1").unwrap(),
            IpNet::parse("::1").unwrap(),
        ],
        ..confined_policy_for(&[])
    };
    for (bind, host) in [("127.0.0.1:0", "127.0.0.1"), ("[::1]:0", "[::1]")] {
        let Some(port) = http_backend_server(&root, bind) else {
            eprintln!("SKIPPED for {host}: cannot bind {bind} on this host");
            continue;
        };
        for (commit, content) in [(&first, "one\n"), (&second, "two\n")] {
            let dest = tempdir("smart-http-dest");
            let url = format!("http://{host}:{port}/src");
            let got = fetch(&url, commit, None, &dest, &policy, None)
                .unwrap_or_else(|e| panic!("{url}: {:#}", anyhow::Error::from(e)));
            assert_eq!(&got.commit, commit, "{url}");
            assert_eq!(fs::read_to_string(dest.join("f")).unwrap(), content);
            assert_eq!(git(&dest, &["rev-parse", "HEAD"]), *commit);
        }
    }
}

/// A smart-HTTP server (protocol v0) that advertises `commit` and then, instead of a pack,
/// sends `progress_bytes` of "remote:" progress messages (side band 2) and hangs up.
fn chatty_server(commit: &str, progress_bytes: usize) -> u16 {
    use std::io::{BufRead, BufReader, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let commit = commit.to_owned();
    let pkt = |payload: &[u8]| {
        let mut p = format!("{:04x}", payload.len() + 4).into_bytes();
        p.extend_from_slice(payload);
        p
    };
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let (mut request, mut length) = (String::new(), 0usize);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                request.push_str(&line);
            }
            let mut body = vec![0u8; length];
            let _ = reader.read_exact(&mut body);
            let mut conn = conn;
            if request.starts_with("GET") {
                let mut out = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-git-upload-pack-advertisement\r\nConnection: close\r\n\r\n".to_vec();
                out.extend(pkt(b"# service=git-upload-pack\n"));
                out.extend(b"0000");
                out.extend(pkt(
                    format!("{commit} refs/heads/main\0side-band-64k\n").as_bytes()
                ));
                out.extend(b"0000");
                let _ = conn.write_all(&out);
            } else {
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-git-upload-pack-result\r\nConnection: close\r\n\r\n");
                let _ = conn.write_all(&pkt(b"NAK\n"));
                let mut line = vec![2u8];
                line.extend(std::iter::repeat_n(b'x', 8000));
                line.push(b'\n');
                let packet = pkt(&line);
                let mut sent = 0;
                while sent < progress_bytes && conn.write_all(&packet).is_ok() {
                    sent += packet.len();
                }
            }
        }
    });
    port
}

/// The largest total size of the files in any of git's private HOMEs seen until `stop`.
fn watch_private_homes(stop: Arc<std::sync::atomic::AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut most = 0;
        while !stop.load(Ordering::SeqCst) {
            for home in fs::read_dir(std::env::temp_dir()).unwrap().flatten() {
                if !home
                    .file_name()
                    .to_string_lossy()
                    .starts_with("bulwark-git-")
                {
                    continue;
                }
                let size: u64 = fs::read_dir(home.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter_map(|f| f.metadata().ok())
                    .map(|m| m.len())
                    .sum();
                most = most.max(size);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        most
    })
}

#[test]
fn what_a_server_makes_git_print_is_bounded_in_memory_and_on_disk() {
    let commit = "1234567890abcdef1234567890abcdef12345678";
    let port = chatty_server(commit, 64 << 20);
    let dest = tempdir("chatty-dest");
    let policy = GitPolicy {
        allow_private: vec![IpNet::parse("127.0.0.1").unwrap()],
        ..policy_for(&[])
    };
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = watch_private_homes(Arc::clone(&stop));
    let url = format!("http://127.0.0.1:{port}/repo.git");
    let err = fetch_with(&url, commit, None, &dest, &policy, None, ById::Skip).unwrap_err();
    stop.store(true, Ordering::SeqCst);
    let most = watcher.join().unwrap();
    let GitError::Git { output, .. } = &err else {
        panic!("{err:?}");
    };
    // Git did print the server's messages; the runner kept only their end.
    assert!(output.contains("xxxxxxxx; "), "{output}");
    assert!(
        output.ends_with("fatal: protocol error: bad pack header"),
        "{output}"
    );
    assert!(
        output.chars().count() <= MAX_MESSAGE + 1,
        "{}",
        output.len()
    );
    assert!(most < 1 << 20, "git's output took {most} bytes on disk");
    assert!(is_empty(&dest));
}

#[test]
fn credentials_are_never_shown_whatever_else_is_wrong_with_the_url() {
    let dest = tempdir("creds-bad-dest");
    for url in [
        "https://user:hunter2@example.org:notaport/repo.git",
        "https://user:hunter2 @example.org/repo.git",
        "https://user:hunter2@exa mple.org/repo.git",
        "https://user:hunter2@example.org/repo.git\u{1b}[2J",
        "ssh://user:hunter2@example.org/repo.git",
        "gopher://user:hunter2@example.org/repo.git",
        "deploy:hunter2@example.org:repo.git",
    ] {
        let err = fetch(url, &"a".repeat(40), None, &dest, &policy_for(&[]), None).unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("hunter2"), "{url}: {shown}");
        assert!(matches!(err, GitError::Credentials), "{url}: {err:?}");
    }
}

// Root mode: git runs as the job's uid. Each test uses a uid of its own, outside any range a
// runner hands out.

/// Whether the test can run as root; prints why it skips otherwise.
fn root_or_skip(test: &str) -> bool {
    let root = nix::unistd::Uid::effective().is_root();
    if !root {
        eprintln!("{test}: skipped: needs root to run git as another uid");
    }
    root
}

/// The `Uid:`, `Gid:` and `Groups:` lines of a `/proc/<pid>/status`, values tab-separated.
fn ids_of(status: &str) -> (String, String, String) {
    let line = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {status}"))
            .trim()
            .to_owned()
    };
    (line("Uid:"), line("Gid:"), line("Groups:"))
}

/// Name of the child-process half of the supplementary-group test (see below).
const GROUPS_CHILD_TEST: &str =
    "gitsource::tests::child_runs_a_command_through_the_fetch_setup_as_a_job_uid";
const GROUPS_CHILD_ENV: &str = "BULWARK_GITSOURCE_GROUPS_CHILD";

/// Runs only as a child of `a_git_child_runs_as_the_job_uid_and_gid_with_no_supplementary_groups`,
/// which starts it with supplementary groups; as a normal test it has nothing to do.
#[test]
fn child_runs_a_command_through_the_fetch_setup_as_a_job_uid() {
    let Ok(uid) = std::env::var(GROUPS_CHILD_ENV) else {
        eprintln!("helper of a_git_child_runs_as_the_job_uid_and_gid_with_no_supplementary_groups: nothing to do");
        return;
    };
    let uid: u32 = uid.parse().unwrap();
    let own = fs::read_to_string("/proc/self/status").unwrap();
    let (_, _, groups) = ids_of(&own);
    assert!(
        !groups.is_empty(),
        "precondition: this process should have supplementary groups: {own}"
    );
    let root = tempdir("groups");
    let (repo, _, _) = two_commits(&root);
    let dest = tempdir("groups-dest");
    let home = PrivateHome::create().unwrap();
    let remote = Remote::check(&file_url(&repo), &policy_for(&[&root])).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let git = Git::new(
        &remote,
        &dest,
        &home,
        &policy_for(&[&root]),
        Some(uid),
        deadline,
    )
    .unwrap();
    // The same setup as every git command of the fetch, with a program that reports.
    let mut cmd = git.command("/bin/sh");
    cmd.args(["-c", "cat /proc/self/status"]);
    let (status, out, err) = git.wait_for("status", cmd, u64::MAX).unwrap();
    assert!(status.success(), "{err}");
    let (uids, gids, groups) = ids_of(&out);
    let all = format!("{uid}\t{uid}\t{uid}\t{uid}");
    assert_eq!(uids, all, "real, effective, saved and fs uid");
    assert_eq!(gids, all, "real, effective, saved and fs gid");
    assert_eq!(groups, "", "no supplementary group may survive");
}

#[test]
fn a_git_child_runs_as_the_job_uid_and_gid_with_no_supplementary_groups() {
    if !root_or_skip("a_git_child_runs_as_the_job_uid_and_gid_with_no_supplementary_groups") {
        return;
    }
    let Some(setpriv) = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        eprintln!(
            "skipped: needs setpriv (util-linux) to start the test with supplementary groups"
        );
        return;
    };
    // The runner here may have no supplementary groups of its own: the child gets some, so
    // dropping them is observable.
    let out = Command::new(setpriv)
        .args(["--groups", "4,27,100", "--"])
        .arg(std::env::current_exe().unwrap())
        .args([
            GROUPS_CHILD_TEST,
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(GROUPS_CHILD_ENV, "3990001")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every entry under `dir` (itself included), without following symlinks, with its owner.
fn owners(dir: &Path) -> Vec<(PathBuf, u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_owned()];
    while let Some(d) = dirs.pop() {
        let meta = fs::symlink_metadata(&d).unwrap();
        found.push((d.clone(), meta.uid(), meta.gid()));
        for entry in fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                dirs.push(entry.path());
            } else {
                found.push((entry.path(), meta.uid(), meta.gid()));
            }
        }
    }
    found
}

#[test]
fn as_a_job_uid_git_fetches_and_everything_in_the_destination_belongs_to_that_uid() {
    if !root_or_skip(
        "as_a_job_uid_git_fetches_and_everything_in_the_destination_belongs_to_that_uid",
    ) {
        return;
    }
    let uid = 3_990_002;
    let root = tempdir("as-uid");
    let (repo, first, _) = two_commits(&root);
    let dest = tempdir("as-uid-dest");
    let got = fetch(
        &file_url(&repo),
        &first,
        Some("refs/heads/main"),
        &dest,
        &policy_for(&[&root]),
        Some(uid),
    )
    .unwrap();
    assert_eq!(got.commit, first);
    assert_eq!(fs::read_to_string(dest.join("f")).unwrap(), "one\n");
    assert_eq!(
        fs::read_to_string(dest.join(".git/config")).unwrap(),
        SANITIZED_CONFIG
    );
    let entries = owners(&dest);
    assert!(entries.len() > 10, "{entries:?}");
    let foreign: Vec<_> = entries
        .iter()
        .filter(|(_, u, g)| (*u, *g) != (uid, uid))
        .collect();
    assert!(foreign.is_empty(), "not the job uid's: {foreign:?}");
}

#[test]
fn as_a_job_uid_a_repository_it_cannot_read_is_refused_with_what_to_do() {
    if !root_or_skip("as_a_job_uid_a_repository_it_cannot_read_is_refused_with_what_to_do") {
        return;
    }
    let root = tempdir("unreadable");
    let (repo, first, _) = two_commits(&root);
    let objects = repo.join(".git/objects");
    fs::set_permissions(
        &objects,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let dest = tempdir("unreadable-dest");
    let url = file_url(&repo);
    let err = fetch(
        &url,
        &first,
        None,
        &dest,
        &policy_for(&[&root]),
        Some(3_990_003),
    )
    .unwrap_err();
    assert!(
        matches!(&err, GitError::FileUnreadable { path, uid: 3_990_003, .. } if *path == objects),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "git source {url}: the job's uid 3990003 cannot read {} (git runs as the job's uid, \
             never as root); make the repository and the directories above it readable to \
             every job uid (for example `chmod -R a+rX` on it, and a+x on its parents), or \
             serve it over https",
            objects.display()
        )
    );
    assert!(is_empty(&dest));
    // Run as the runner's user (root) the same repository is fetched: only the uid differs.
    fetch(&url, &first, None, &dest, &policy_for(&[&root]), None).unwrap();
}

#[test]
fn as_a_job_uid_a_repository_not_owned_by_the_runners_user_is_refused() {
    if !root_or_skip("as_a_job_uid_a_repository_not_owned_by_the_runners_user_is_refused") {
        return;
    }
    let uid = 3_990_004;
    let root = tempdir("foreign");
    let (repo, first, _) = two_commits(&root);
    // Owned by the job's uid itself: git's own check would trust it, the runner does not.
    nix::unistd::chown(
        &repo.join(".git"),
        Some(nix::unistd::Uid::from_raw(uid)),
        None,
    )
    .unwrap();
    let dest = tempdir("foreign-dest");
    let err = fetch(
        &file_url(&repo),
        &first,
        None,
        &dest,
        &policy_for(&[&root]),
        Some(uid),
    )
    .unwrap_err();
    assert!(
        matches!(&err, GitError::FileOwner { path, .. } if *path == repo.join(".git")),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("make the repository owned by the runner's user"),
        "{err}"
    );
}

/// Whether process `pid` is gone (or a zombie) within two seconds.
fn dies(pid: i32) -> bool {
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        match fs::read_to_string(format!("/proc/{pid}/status")) {
            Err(_) => return true,
            Ok(s)
                if s.lines()
                    .any(|l| l.starts_with("State:") && l.contains('Z')) =>
            {
                return true
            }
            Ok(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    false
}

#[test]
fn nothing_a_command_leaves_in_its_process_group_outlives_it() {
    let root = tempdir("leftover");
    let (repo, _, _) = two_commits(&root);
    let dest = tempdir("leftover-dest");
    let home = PrivateHome::create().unwrap();
    let policy = policy_for(&[&root]);
    let remote = Remote::check(&file_url(&repo), &policy).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let git = Git::new(&remote, &dest, &home, &policy, None, deadline).unwrap();
    // A command that succeeds at once and leaves a child behind in its process group.
    let mut cmd = git.command("/bin/sh");
    cmd.args(["-c", "sleep 300 >/dev/null 2>&1 & echo $!"]);
    let (status, out, _) = git.wait_for("leftover", cmd, u64::MAX).unwrap();
    assert!(status.success());
    let pid: i32 = out.trim().parse().unwrap();
    assert!(dies(pid), "the command's child {pid} outlived it");
}

#[test]
fn confined_git_writes_only_its_destination_and_home_and_connects_nowhere_for_a_local_repository() {
    use std::os::unix::fs::PermissionsExt;
    use std::time::SystemTime;
    let root = tempdir("confine");
    let (repo, _, _) = two_commits(&root);
    let dest = tempdir("confine-dest");
    let outside = tempdir("confine-outside");
    let home = PrivateHome::create().unwrap();
    let policy = confined_policy_for(&[&root]);
    let remote = Remote::check(&file_url(&repo), &policy).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let git = Git::new(&remote, &dest, &home, &policy, None, deadline).unwrap();
    // A server on loopback that git, confined for a file:// repository, must not reach.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    // The runner's own state, which git's uid owns in rootless mode: a private key, and a
    // service of the same user on a pathname unix socket (as its systemd manager, which
    // starts any command it is asked to, unconfined).
    let state = tempdir("confine-state");
    let key = state.join("signing.key");
    fs::write(&key, "secret\n").unwrap();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let service_path = state.join("service.sock");
    let service = std::os::unix::net::UnixListener::bind(&service_path).unwrap();
    service.set_nonblocking(true).unwrap();
    // And a datagram service (as the journal's or syslog's socket).
    let journal_path = state.join("journal.sock");
    let journal = std::os::unix::net::UnixDatagram::bind(&journal_path).unwrap();
    journal.set_nonblocking(true).unwrap();
    // And a UDP service on loopback (as this host's DNS resolver, or a collector elsewhere).
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_port = udp.local_addr().unwrap().port();
    udp.set_nonblocking(true).unwrap();
    // What code running inside git would try: write outside, make a setuid file outside,
    // write the destination, connect out, make the key readable by anyone, reach the
    // service, and see its own status.
    let script = format!(
        "echo x > {out}/planted 2>/dev/null && echo WROTE-OUTSIDE\n\
         cp /bin/true {out}/suid 2>/dev/null && chmod u+s {out}/suid && echo SETUID-OUTSIDE\n\
         echo y > {dest}/inside && echo WROTE-DEST\n\
         python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}))' 2>&1 | tail -n 1\n\
         chmod 0666 {key} 2>/dev/null && echo CHMOD-OUTSIDE\n\
         touch -d 2001-01-01 {key} 2>/dev/null && echo TOUCHED-OUTSIDE\n\
         python3 -c 'import socket; socket.socket(socket.AF_UNIX).connect(\"{service}\")' \
           2>/dev/null && echo REACHED-SERVICE\n\
         for t in SOCK_DGRAM SOCK_RAW; do python3 -c \"import socket; a, b = socket.socketpair(socket.AF_UNIX, socket.$t); a.sendto(b'x', '{journal}')\" 2>/dev/null && echo SENT-DATAGRAM-$t; done\n\
         python3 -c 'import socket; socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)' 2>/dev/null && echo OPENED-NETLINK\n\
         python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b\"x\", (\"127.0.0.1\", {udp_port}))' \
           2>&1 | grep -q 'PermissionError: .Errno 13' && echo UDP-REFUSED-EACCES\n\
         grep NoNewPrivs /proc/self/status",
        out = outside.display(),
        dest = dest.display(),
        key = key.display(),
        service = service_path.display(),
        journal = journal_path.display(),
    );
    let mut cmd = git.command("/bin/sh");
    cmd.args(["-c", &script]);
    let (status, out, err) = git.wait_for("confined", cmd, u64::MAX).unwrap();
    assert!(status.success(), "{out}{err}");
    assert!(
        !out.contains("WROTE-OUTSIDE") && !out.contains("SETUID-OUTSIDE"),
        "{out}"
    );
    assert!(out.contains("WROTE-DEST"), "{out}{err}");
    assert!(
        out.contains("PermissionError"),
        "the connect was not refused: {out}"
    );
    assert!(out.contains("NoNewPrivs:\t1"), "{out}");
    assert!(out.contains("UDP-REFUSED-EACCES"), "{out}{err}");
    for forbidden in [
        "CHMOD-OUTSIDE",
        "TOUCHED-OUTSIDE",
        "REACHED-SERVICE",
        "SENT-DATAGRAM",
        "OPENED-NETLINK",
    ] {
        assert!(!out.contains(forbidden), "{forbidden}: {out}");
    }
    // And on the host: nothing appeared outside, nothing connected, the key is as it was.
    assert!(is_empty(&outside), "git wrote outside its destination");
    assert!(
        listener.accept().is_err(),
        "confined git connected to a loopback server"
    );
    assert!(
        service.accept().is_err(),
        "confined git reached a service on a unix socket"
    );
    assert!(
        journal.recv(&mut [0u8; 16]).is_err(),
        "confined git sent a datagram to a unix socket"
    );
    assert!(
        udp.recv(&mut [0u8; 16]).is_err(),
        "confined git sent a UDP datagram"
    );
    let key_meta = fs::metadata(&key).unwrap();
    assert_eq!(key_meta.permissions().mode() & 0o7777, 0o600);
    assert!(
        key_meta.modified().unwrap() > SystemTime::UNIX_EPOCH + Duration::from_secs(1_500_000_000),
        "confined git changed the key's times"
    );
    assert_eq!(fs::read_to_string(dest.join("inside")).unwrap(), "y\n");
}

#[test]
fn confined_git_cannot_write_through_a_descriptor_the_runner_inherited() {
    use std::os::fd::AsRawFd;
    let root = tempdir("confine-fd");
    let (repo, _, _) = two_commits(&root);
    let dest = tempdir("confine-fd-dest");
    let outside = tempdir("confine-fd-outside");
    // A writable file outside that whoever started the runner left open without close-on-exec
    // (`bulwark run ... 3>>ci.log`): every child of the runner inherits it.
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(outside.join("ci.log"))
        .unwrap();
    nix::fcntl::fcntl(&log, nix::fcntl::F_SETFD(nix::fcntl::FdFlag::empty())).unwrap();
    let home = PrivateHome::create().unwrap();
    let policy = confined_policy_for(&[&root]);
    let remote = Remote::check(&file_url(&repo), &policy).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let git = Git::new(&remote, &dest, &home, &policy, None, deadline).unwrap();
    let script = format!(
        // Python, not the shell's `>&N`: dash takes single-digit descriptors only, and with
        // tests running in parallel this one may be 10 or above.
        "python3 -c 'import os; os.write({fd}, b\"planted\")' 2>/dev/null && echo WROTE-THROUGH-FD; echo done",
        fd = log.as_raw_fd()
    );
    let mut cmd = git.command("/bin/sh");
    cmd.args(["-c", &script]);
    let (status, out, err) = git.wait_for("confined", cmd, u64::MAX).unwrap();
    drop(log);
    assert!(status.success() && out.contains("done"), "{out}{err}");
    assert!(!out.contains("WROTE-THROUGH-FD"), "{out}");
    assert_eq!(fs::read_to_string(outside.join("ci.log")).unwrap(), "");
}

#[test]
fn a_git_fetch_runs_confined_when_the_runner_confines_it() {
    let root = tempdir("confined-fetch");
    let (repo, first, _) = two_commits(&root);
    let dest = tempdir("confined-fetch-dest");
    let policy = confined_policy_for(&[&root]);
    let got = fetch(&file_url(&repo), &first, None, &dest, &policy, None).unwrap();
    assert_eq!(got.commit, first);
    assert_eq!(fs::read_to_string(dest.join("f")).unwrap(), "one\n");
}

const ORPHAN_CHILD_TEST: &str =
    "gitsource::tests::child_runs_a_confined_command_until_it_is_killed";
const ORPHAN_CHILD_ENV: &str = "BULWARK_GITSOURCE_ORPHAN_CHILD";

/// Runs only as a child of `a_confined_command_dies_with_the_runner`, which kills this process
/// with SIGKILL while the command runs; as a normal test it has nothing to do.
#[test]
fn child_runs_a_confined_command_until_it_is_killed() {
    let Ok(dest) = std::env::var(ORPHAN_CHILD_ENV) else {
        eprintln!("helper of a_confined_command_dies_with_the_runner: nothing to do");
        return;
    };
    let dest = PathBuf::from(dest);
    let root = tempdir("orphan");
    let (repo, _, _) = two_commits(&root);
    let home = PrivateHome::create().unwrap();
    let policy = confined_policy_for(&[&root]);
    let remote = Remote::check(&file_url(&repo), &policy).unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let git = Git::new(&remote, &dest, &home, &policy, None, deadline).unwrap();
    // Stands for a git that hangs on a server, with a child of its own (as git-remote-https
    // is): it says where both are, then waits.
    let mut cmd = git.command("/bin/sh");
    cmd.args([
        "-c",
        "sleep 300 & echo \"$$ $!\" > pid.tmp && mv pid.tmp pid && wait",
    ])
    .current_dir(&dest);
    let _ = git.wait_for("orphan", cmd, u64::MAX);
}

/// A runner killed mid-fetch (a cancelled job's `bulwark run` is killed with SIGKILL) leaves no
/// git behind, nor anything git started: git runs in its own process group, which nobody would
/// kill then, so its supervisor kills the group when the runner dies.
#[test]
fn a_confined_command_dies_with_the_runner() {
    let dest = tempdir("orphan-dest");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            ORPHAN_CHILD_TEST,
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ORPHAN_CHILD_ENV, &*dest)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid_file = dest.join("pid");
    let until = Instant::now() + Duration::from_secs(30);
    while !pid_file.exists() {
        if Instant::now() >= until || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            panic!("the confined command never started");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let pids: Vec<i32> = fs::read_to_string(&pid_file)
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2);
    for pid in &pids {
        assert!(!dies(*pid), "precondition: {pid} should be running");
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let survivors: Vec<i32> = pids.iter().copied().filter(|p| !dies(*p)).collect();
    for pid in &survivors {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(
        survivors.is_empty(),
        "{survivors:?} (of the command {} and its child {}) outlived the runner",
        pids[0],
        pids[1]
    );
}

/// The parent-death signal is set before the check that the runner is still the parent, so a
/// runner gone before it could be set is noticed: a confinement naming another parent (as
/// when the runner died and the helper was handed to another) refuses and runs nothing.
#[test]
fn a_confined_command_does_not_run_when_the_runner_is_not_its_parent() {
    let helper = sandbox_helper().expect(
        "bulwark-sandbox is not built next to the test binaries: run `cargo build --all-targets` first",
    );
    let dir = tempdir("orphan-parent");
    let marker = dir.join("ran");
    let mut other = Command::new("/bin/sleep").arg("30").spawn().unwrap();
    let out = Command::new(&helper)
        .args(["--confine", "--parent", &other.id().to_string(), "--write"])
        .arg(&*dir)
        .args(["--", "/bin/sh", "-c", "echo > \"$1\"", "sh"])
        .arg(&marker)
        .output()
        .unwrap();
    let _ = other.kill();
    let _ = other.wait();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(
        stderr.contains("pdeathsig: the runner (pid") && stderr.contains("no longer"),
        "{stderr}"
    );
    assert!(!marker.exists(), "the program ran");
    // Control: with this process named, the same command runs.
    let out = Command::new(&helper)
        .args([
            "--confine",
            "--parent",
            &std::process::id().to_string(),
            "--write",
        ])
        .arg(&*dir)
        .args(["--", "/bin/sh", "-c", "echo > \"$1\"", "sh"])
        .arg(&marker)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(marker.exists());
}

/// In `root`: [`two_commits`]'s repository, a plain directory `name`, and beside it a bare
/// clone `name.git`; the repository, its first commit and the plain directory.
fn plain_beside_bare(root: &Path, name: &str) -> (PathBuf, String, PathBuf) {
    let (repo, first, _) = two_commits(root);
    let plain = root.join(name);
    fs::create_dir(&plain).unwrap();
    let bare = format!("{name}.git");
    git(
        root,
        &["clone", "--quiet", "--bare", repo.to_str().unwrap(), &bare],
    );
    (repo, first, plain)
}

#[test]
fn a_file_url_names_exactly_one_repository_and_git_reads_no_other() {
    let root = tempdir("exact");
    // `roots` is a plain directory, the allowed root; `roots.git`, beside it and outside
    // every root, is a bare repository that git's `upload-pack` would otherwise guess for it.
    let (repo, first, roots) = plain_beside_bare(&root, "roots");
    let dest = tempdir("exact-dest");
    let err = fetch(
        &file_url(&roots),
        &first,
        None,
        &dest,
        &policy_for(&[&roots]),
        None,
    )
    .unwrap_err();
    assert!(matches!(err, GitError::NotRepository { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("is neither a bare repository nor a directory with a .git directory"),
        "{err}"
    );
    assert!(is_empty(&dest));

    // A gitfile (`.git` naming a repository elsewhere) is refused, in every mode.
    let worktree = roots.join("linked");
    fs::create_dir(&worktree).unwrap();
    fs::write(
        worktree.join(".git"),
        format!("gitdir: {}\n", root.join("roots.git").display()),
    )
    .unwrap();
    let err = fetch(
        &file_url(&worktree),
        &first,
        None,
        &dest,
        &policy_for(&[&roots]),
        None,
    )
    .unwrap_err();
    assert!(err.to_string().contains(".git is not a directory"), "{err}");
    assert!(is_empty(&dest));

    // A bare repository inside the roots, and a work tree with its own `.git`, are fetched.
    git(
        &roots,
        &[
            "clone",
            "--quiet",
            "--bare",
            repo.to_str().unwrap(),
            "bare.git",
        ],
    );
    fetch(
        &file_url(&roots.join("bare.git")),
        &first,
        None,
        &dest,
        &policy_for(&[&roots]),
        None,
    )
    .unwrap();
    assert_eq!(fs::read_to_string(dest.join("f")).unwrap(), "one\n");
}

#[test]
fn host_names_that_git_could_not_be_pinned_to_are_refused_before_any_lookup() {
    let dest = tempdir("hostname-dest");
    for url in [
        "http://-x.example.invalid/repo.git",
        "https://a.-b.example.invalid/repo.git",
    ] {
        let err = fetch(url, &"a".repeat(40), None, &dest, &policy_for(&[]), None).unwrap_err();
        assert!(matches!(err, GitError::HostName { .. }), "{url}: {err:?}");
        assert!(err.to_string().contains("none starting with '-'"), "{err}");
    }
    // Names that pin as they are: refused later, when they do not resolve.
    for url in [
        "http://x-.example.invalid/repo.git",
        "http://_x.example.invalid/repo.git",
        "http://x.example.invalid./repo.git",
    ] {
        let err = fetch(url, &"a".repeat(40), None, &dest, &policy_for(&[]), None).unwrap_err();
        assert!(matches!(err, GitError::Resolve { .. }), "{url}: {err:?}");
    }
    assert!(is_empty(&dest));
}

#[test]
fn the_host_name_rule_accepts_label_forms_and_refuses_leading_dashes_and_other_characters() {
    for good in [
        "example.org",
        "xn--bcher-kva.example",
        "a_b.example",
        "x-.y",
        "example.org.",
    ] {
        assert!(remote::pinnable_host(good), "{good}");
    }
    for bad in [
        "-x.example",
        "a.-b",
        "+x.example",
        "a..b",
        "",
        ".",
        "a b",
        "a:1",
    ] {
        assert!(!remote::pinnable_host(bad), "{bad:?}");
    }
}

#[test]
fn upload_pack_reads_exactly_the_directory_it_is_given() {
    let root = tempdir("strict");
    // `plain` is no repository; `plain.git` beside it is one, which upload-pack without
    // `--strict` would serve for `plain`.
    let (_, first, plain) = plain_beside_bare(&root, "plain");
    let dest = tempdir("strict-dest");
    let dest = check_dest(&dest).unwrap();
    let policy = policy_for(&[&root]);
    // As if the runner's checks had named `plain` itself (they refuse it: this is the test
    // of what git is told, should a directory change between the checks and git).
    let remote = remote::Remote {
        display: file_url(&plain),
        git_arg: plain.to_str().unwrap().to_owned(),
        scheme: "file",
        pin: None,
        port: None,
    };
    let home = PrivateHome::create().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let git_cmd = Git::new(&remote, &dest, &home, &policy, None, deadline).unwrap();
    let err = fetch_into(&git_cmd, &remote, &first, None, &dest, ById::Try)
        .expect_err("git read the sibling plain.git");
    assert!(matches!(err, GitError::Git { .. }), "{err:?}");
    assert!(!dest.join("f").exists());
    // The control: the same call naming the repository itself fetches it.
    let dest = tempdir("strict-dest-2");
    let dest = check_dest(&dest).unwrap();
    let remote = remote::Remote {
        display: file_url(&root.join("plain.git")),
        git_arg: root.join("plain.git").to_str().unwrap().to_owned(),
        scheme: "file",
        pin: None,
        port: None,
    };
    let home = PrivateHome::create().unwrap();
    let git_cmd = Git::new(&remote, &dest, &home, &policy, None, deadline).unwrap();
    fetch_into(&git_cmd, &remote, &first, None, &dest, ById::Try).unwrap();
    assert_eq!(fs::read_to_string(dest.join("f")).unwrap(), "one\n");
}
