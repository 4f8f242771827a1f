//! Pinned tools end to end: fetched by the runner from the test's own loopback server,
//! verified by sha256 before anything runs, mounted read-only at /tools/<name>, recorded.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bulwark_tests::{sha256_file, Env};

/// Serves one file over HTTP on 127.0.0.1, counting requests; can be stopped.
struct Server {
    port: u16,
    requests: Arc<AtomicUsize>,
    stopped: Arc<AtomicBool>,
}

impl Server {
    fn serve(body: Vec<u8>) -> Server {
        Server::serve_after(Duration::ZERO, body)
    }

    /// Like [`Server::serve`], answering each request only after `delay`.
    fn serve_after(delay: Duration, body: Vec<u8>) -> Server {
        Server::serve_on(TcpListener::bind("127.0.0.1:0").unwrap(), delay, body)
    }

    /// Like [`Server::serve_after`], on `l`.
    fn serve_on(l: TcpListener, delay: Duration, body: Vec<u8>) -> Server {
        let port = l.local_addr().unwrap().port();
        let requests = Arc::new(AtomicUsize::new(0));
        let stopped = Arc::new(AtomicBool::new(false));
        let (r, st) = (requests.clone(), stopped.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                if st.load(Ordering::SeqCst) {
                    continue; // dropped: connection closed without an answer
                }
                r.fetch_add(1, Ordering::SeqCst);
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                std::thread::sleep(delay);
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(&body);
            }
        });
        Server {
            port,
            requests,
            stopped,
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// A tar.gz holding bin/hello, made with the system's tar.
fn tool_archive(env: &Env) -> Vec<u8> {
    let d = env.dir.join("toolsrc");
    std::fs::create_dir_all(d.join("bin")).unwrap();
    std::fs::write(
        d.join("bin/hello"),
        "#!/bin/sh\necho \"hello from the pinned tool: $*\"\n",
    )
    .unwrap();
    std::process::Command::new("chmod")
        .arg("755")
        .arg(d.join("bin/hello"))
        .status()
        .unwrap();
    let out = env.dir.join("hello.tar.gz");
    tar_gz(&d, "bin", &out);
    std::fs::read(out).unwrap()
}

/// Writes `member` of directory `dir` as the tar.gz `out`, with the system's tar.
fn tar_gz(dir: &std::path::Path, member: &str, out: &std::path::Path) {
    let status = Command::new("tar")
        .arg("-C")
        .arg(dir)
        .arg("-czf")
        .arg(out)
        .arg(member)
        .status()
        .unwrap();
    assert!(status.success(), "tar -czf {}", out.display());
}

fn tool_job(port: u16, sha: &str, run: &str) -> String {
    format!("version = 1\nname = \"tools\"\n[[tools]]\nname = \"hello\"\nurl = \"http://127.0.0.1:{port}/hello.tar.gz\"\nsha256 = \"{sha}\"\n[[steps]]\nname = \"use\"\nrun = '''\n{run}\n'''\n")
}

/// Lines of a job's step that keep the job running until the test has looked: it makes
/// `gate-running` in its workspace (its working directory), then waits until the test makes
/// `gate-go` there (for 60 s at most). Shell built-ins and whole-second `sleep` only, which a
/// pinned root filesystem of busybox has.
const GATE: &str = "echo > gate-running\ni=0\nuntil test -e gate-go || test $i -ge 60; do sleep 1; i=$((i+1)); done";

/// Waits up to `secs` seconds until one of `env`'s jobs waits at its [`GATE`]; its workspace
/// as the host sees it.
fn gated(env: &Env, secs: u64) -> std::path::PathBuf {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let waiting = std::fs::read_dir(env.state.join("jobs"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path().join("workspace"))
            .find(|w| w.join("gate-running").exists());
        if let Some(w) = waiting {
            return w;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no job reached its gate within {secs} s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Lets the job waiting at its [`GATE`] in `workspace` go on.
fn open_gate(workspace: &std::path::Path) {
    std::fs::write(workspace.join("gate-go"), "").unwrap();
}

fn env_allowing_loopback(tag: &str) -> Env {
    let env = Env::new(tag);
    env.write_config_sections("", "[fetch]\nallow_private = [\"127.0.0.1\"]\n");
    env
}

/// Tampering with the store the way an attacker with write access would: make it writable.
fn chmod(path: impl AsRef<std::path::Path>, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn store_files(env: &Env) -> usize {
    fn count(p: &std::path::Path) -> usize {
        std::fs::read_dir(p)
            .map(|rd| {
                rd.flatten()
                    .map(|e| {
                        if e.path().is_dir() {
                            1 + count(&e.path())
                        } else {
                            1
                        }
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    ["blobs", "trees", "tmp"]
        .iter()
        .map(|d| count(&env.state.join("tools").join(d)))
        .sum()
}

#[test]
fn a_tool_with_the_right_digest_runs_read_only_and_is_recorded() {
    let env = env_allowing_loopback("tool-ok");
    let body = tool_archive(&env);
    let sha = sha256_file(&env.dir.join("hello.tar.gz"));
    let server = Server::serve(body);
    let r = env.run(&tool_job(
        server.port,
        &sha,
        "hello world\ntouch /tools/hello/bin/x 2>&1 | sed 's/^/write=/'\necho \"path=$PATH\"",
    ));
    r.assert_code(0);
    assert!(r.log.contains("hello from the pinned tool: world"), "{r}");
    assert!(r.value("write").contains("Read-only file system"), "{r}");
    assert!(r.value("path").starts_with("/tools/hello/bin:"));
    let tools = &r.result()["inputs"]["tools"];
    assert_eq!(tools[0]["name"], "hello");
    assert_eq!(tools[0]["sha256"], sha.as_str());
    assert_eq!(server.requests(), 1);
    // A cache hit needs no server at all, and makes no request.
    server.stopped.store(true, Ordering::SeqCst);
    let r = env.run(&tool_job(server.port, &sha, "hello again"));
    r.assert_code(0);
    assert!(r.log.contains("hello from the pinned tool: again"));
    assert_eq!(server.requests(), 1);
}

#[test]
fn a_tool_with_the_wrong_digest_is_refused_before_any_step_and_leaves_nothing() {
    let env = env_allowing_loopback("tool-bad");
    let body = tool_archive(&env);
    let actual = sha256_file(&env.dir.join("hello.tar.gz"));
    let server = Server::serve(body);
    let wrong = "0".repeat(64);
    let marker = env.dir.join("step-ran");
    let r = env.run(&tool_job(
        server.port,
        &wrong,
        &format!("touch {}", marker.display()),
    ));
    r.assert_code(2);
    for part in [
        "tool \"hello\"",
        &format!("http://127.0.0.1:{}/hello.tar.gz", server.port),
        &format!("expected {wrong}"),
        &format!("got {actual}"),
    ] {
        assert!(r.stderr.contains(part), "missing {part:?}\n{r}");
    }
    assert!(r.result()["steps"].as_array().unwrap().is_empty());
    assert!(!marker.exists());
    assert_eq!(
        store_files(&env),
        0,
        "the bad download left something in the store"
    );
}

/// Each download alone is well within `fetch.timeout` (2s here), but a spec may list 64 tools (and
/// a root filesystem and a source): together they must be in within the job's own timeout
/// (2s), or one untrusted spec holds the runner for hours before its first step.
#[test]
fn a_job_whose_tools_take_longer_than_its_timeout_to_fetch_is_refused() {
    let env = Env::new("tool-deadline");
    env.write_config_sections(
        "",
        "[fetch]\nallow_private = [\"127.0.0.1\"]\ntimeout = \"2s\"\n",
    );
    let servers: Vec<(Server, String)> = (0..3)
        .map(|i| {
            let body = format!("#!/bin/sh\necho tool {i}\n").into_bytes();
            let path = env.dir.join(format!("t{i}"));
            std::fs::write(&path, &body).unwrap();
            let sha = sha256_file(&path);
            (Server::serve_after(Duration::from_millis(800), body), sha)
        })
        .collect();
    let tools: String = servers
        .iter()
        .enumerate()
        .map(|(i, (s, sha))| {
            format!(
                "[[tools]]\nname = \"t{i}\"\nurl = \"http://127.0.0.1:{}/t{i}\"\nsha256 = \"{sha}\"\nformat = \"file\"\n",
                s.port
            )
        })
        .collect();
    let job = format!(
        "version = 1\nname = \"slow-tools\"\n[resources]\ntimeout = \"2s\"\n{tools}[[steps]]\nname = \"use\"\nrun = \"t0 && t1 && t2\"\n"
    );
    let started = std::time::Instant::now();
    let r = env.run(&job);
    r.assert_code(2);
    assert!(
        r.stderr.contains("were not all in within 2s (its timeout"),
        "the refusal should name the job's timeout: {r}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn without_allow_private_a_loopback_tool_url_is_refused() {
    let env = Env::new("tool-private");
    let body = tool_archive(&env);
    let sha = sha256_file(&env.dir.join("hello.tar.gz"));
    let server = Server::serve(body);
    let r = env.run(&tool_job(server.port, &sha, "true"));
    r.assert_code(2);
    assert!(r.stderr.contains("fetch.allow_private"), "{r}");
    assert_eq!(
        server.requests(),
        0,
        "the runner connected to a refused address"
    );
}

#[test]
fn tools_verify_quarantines_a_corrupted_entry_and_a_job_needing_it_fetches_anew() {
    let env = env_allowing_loopback("tool-verify");
    let body = tool_archive(&env);
    let sha = sha256_file(&env.dir.join("hello.tar.gz"));
    let server = Server::serve(body);
    env.run(&tool_job(server.port, &sha, "hello"))
        .assert_code(0);
    // Corrupt the unpacked tool the way an attacker with write access to the store would.
    let trees = env.state.join("tools/trees");
    let tree = std::fs::read_dir(&trees)
        .unwrap()
        .flatten()
        .find(|e| e.path().is_dir())
        .unwrap()
        .path();
    let script = tree.join("bin/hello");
    chmod(tree.join("bin"), 0o755);
    std::fs::remove_file(&script).unwrap();
    std::fs::write(&script, "#!/bin/sh\necho pwned\n").unwrap();
    let o = std::process::Command::new(bulwark_tests::bulwark_bin())
        .args(["tools", "verify", "--config"])
        .arg(&env.config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("CORRUPT") && stdout.contains("hello"),
        "{stdout}"
    );
    // The quarantined tree is never mounted again: the next job gets the real tool back
    // (unpacked anew from the verified download) even with the server gone.
    server.stopped.store(true, Ordering::SeqCst);
    let r = env.run(&tool_job(server.port, &sha, "hello back"));
    r.assert_code(0);
    assert!(
        r.log.contains("hello from the pinned tool: back") && !r.log.contains("pwned"),
        "{r}"
    );
    // Now corrupt both the stored download and the tree: verify quarantines both, and a job
    // needing the tool must fetch it anew, which fails while the server is gone and succeeds
    // once it is back.
    let blob = env.state.join("tools/blobs").join(&sha);
    chmod(&blob, 0o644);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&blob)
        .unwrap()
        .write_all(b"tampered")
        .unwrap();
    let tree = std::fs::read_dir(&trees)
        .unwrap()
        .flatten()
        .find(|e| e.path().is_dir())
        .unwrap()
        .path();
    chmod(tree.join("bin"), 0o755);
    std::fs::write(tree.join("bin/extra"), "added").unwrap();
    let o = std::process::Command::new(bulwark_tests::bulwark_bin())
        .args(["tools", "verify", "--config"])
        .arg(&env.config)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(!blob.exists(), "a corrupt download stayed in place");
    let r = env.run(&tool_job(server.port, &sha, "hello"));
    r.assert_code(2);
    server.stopped.store(false, Ordering::SeqCst);
    let r = env.run(&tool_job(server.port, &sha, "hello fresh"));
    r.assert_code(0);
    assert!(r.log.contains("hello from the pinned tool: fresh"), "{r}");
    assert_eq!(server.requests(), 2);
}

#[test]
fn a_tampered_download_is_rehashed_before_it_is_unpacked_again() {
    let env = env_allowing_loopback("tool-rehash");
    let body = tool_archive(&env);
    let sha = sha256_file(&env.dir.join("hello.tar.gz"));
    let server = Server::serve(body);
    env.run(&tool_job(server.port, &sha, "hello"))
        .assert_code(0);
    // Remove the unpacked tree (as verify would after corruption) and tamper with the download
    // without running verify: the next job must not unpack the tampered bytes.
    let trees = env.state.join("tools/trees");
    for e in std::fs::read_dir(&trees).unwrap().flatten() {
        bulwark_tests::remove_tree(&e.path()).unwrap();
    }
    let blob = env.state.join("tools/blobs").join(&sha);
    chmod(&blob, 0o644);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&blob)
        .unwrap()
        .write_all(b"tampered")
        .unwrap();
    let r = env.run(&tool_job(server.port, &sha, "hello refetched"));
    r.assert_code(0);
    assert!(
        r.log.contains("hello from the pinned tool: refetched"),
        "{r}"
    );
    assert_eq!(
        server.requests(),
        2,
        "the tampered download should have been fetched anew"
    );
}

#[test]
fn a_url_source_is_verified_copied_into_the_workspace_and_recorded() {
    let env = env_allowing_loopback("url-source");
    let d = env.dir.join("srcpkg");
    std::fs::create_dir_all(d.join("proj")).unwrap();
    std::fs::write(d.join("proj/README"), "from the tarball\n").unwrap();
    let tgz = env.dir.join("src.tar.gz");
    tar_gz(&d, "proj", &tgz);
    let sha = sha256_file(&tgz);
    let server = Server::serve(std::fs::read(&tgz).unwrap());
    let job = |digest: &str| {
        format!("version = 1\nname = \"urlsrc\"\n[source]\nurl = \"http://127.0.0.1:{}/src.tar.gz\"\nsha256 = \"{digest}\"\n[[steps]]\nname = \"read\"\nrun = \"cat proj/README\"\n", server.port)
    };
    // No --source: the spec's url is the source.
    let spec = env.dir.join("urlsrc.toml");
    std::fs::write(&spec, job(&sha)).unwrap();
    let r = env.run_spec(&spec, "url-out");
    r.assert_code(0);
    assert!(r.log.contains("from the tarball"), "{r}");
    let src = &r.result()["inputs"]["source"];
    assert_eq!(src["kind"], "url");
    assert_eq!(src["sha256"], sha.as_str());
    assert_eq!(src["tree_sha256"].as_str().unwrap().len(), 64);
    // A wrong digest refuses the job.
    std::fs::write(&spec, job(&"1".repeat(64))).unwrap();
    let r = env.run_spec(&spec, "url-out2");
    r.assert_code(2);
    assert!(r.stderr.contains("sha256 mismatch"), "{r}");
    // The store holds that digest now; a spec naming another URL with it is still refused
    // when that URL does not serve those bytes: provenance would say the source came from it.
    let elsewhere = Server::serve(b"some other tarball".to_vec());
    let other = format!("version = 1\nname = \"urlsrc\"\n[source]\nurl = \"http://127.0.0.1:{}/src.tar.gz\"\nsha256 = \"{sha}\"\n[[steps]]\nname = \"read\"\nrun = \"cat proj/README\"\n", elsewhere.port);
    std::fs::write(&spec, other).unwrap();
    let r = env.run_spec(&spec, "url-out3");
    r.assert_code(2);
    assert!(r.stderr.contains("sha256 mismatch"), "{r}");
    assert!(!r.log.contains("from the tarball"), "{r}");
}

#[test]
fn a_pinned_rootfs_replaces_the_hosts_system_and_is_recorded() {
    let env = env_allowing_loopback("rootfs");
    let busybox = ["/usr/bin/busybox", "/bin/busybox"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("busybox not found: install Debian's busybox-static (.ci/run does)");
    // A small root filesystem built with Python's tarfile, so it can hold a device node and a
    // setuid file without privileges: the device must be skipped, the setuid bit stripped.
    let tgz = env.dir.join("rootfs.tar.gz");
    let script = format!(
        r##"
import io, tarfile
def add(t, name, data=b"", mode=0o644, kind=tarfile.REGTYPE, link=""):
    i = tarfile.TarInfo(name); i.mode = mode; i.type = kind; i.linkname = link; i.size = len(data)
    t.addfile(i, io.BytesIO(data) if data else None)
with tarfile.open("{tgz}", "w:gz") as t:
    for d in ["bin", "etc", "usr", "usr/share", "opt"]:
        add(t, d, mode=0o755, kind=tarfile.DIRTYPE)
    add(t, "bin/busybox", open("{busybox}", "rb").read(), 0o755)
    for c in ["sh", "ls", "cat", "stat", "test", "echo", "sleep"]:
        add(t, "bin/" + c, kind=tarfile.SYMTYPE, link="busybox")
    add(t, "etc/os-release", b"NAME=bulwark-test-rootfs\n")
    add(t, "usr/share/marker", b"rootfs marker\n")
    add(t, "opt/suid-tool", b"#!/bin/sh\necho suid\n", 0o4755)
    d = tarfile.TarInfo("dev-null-copy"); d.type = tarfile.CHRTYPE; d.devmajor = 1; d.devminor = 3; d.mode = 0o666
    t.addfile(d)
"##,
        tgz = tgz.display()
    );
    assert!(Command::new("python3")
        .arg("-c")
        .arg(&script)
        .status()
        .unwrap()
        .success());
    let sha = sha256_file(&tgz);
    let server = Server::serve(std::fs::read(&tgz).unwrap());
    let job = format!(
        "version = 1\nname = \"rootfs\"\n[rootfs]\nurl = \"http://127.0.0.1:{}/rootfs.tar.gz\"\nsha256 = \"{sha}\"\n[[steps]]\nname = \"look\"\nrun = '''\necho os=$(cat /etc/os-release)\necho marker=$(cat /usr/share/marker)\ntest -e /usr/bin/python3 && echo hostusr=visible || echo hostusr=hidden\ntest -e /dev-null-copy && echo device=present || echo device=absent\necho suid=$(stat -c %a /opt/suid-tool)\necho x > out.txt\n'''\n[outputs]\npaths = [\"out.txt\"]\n",
        server.port
    );
    let r = env.run(&job);
    r.assert_code(0);
    assert_eq!(r.value("os"), "NAME=bulwark-test-rootfs");
    assert_eq!(r.value("marker"), "rootfs marker");
    assert_eq!(
        r.value("hostusr"),
        "hidden",
        "the host's /usr is visible\n{r}"
    );
    assert_eq!(r.value("device"), "absent");
    assert_eq!(r.value("suid"), "555", "setuid bit not stripped\n{r}");
    assert_eq!(r.result()["inputs"]["rootfs"]["sha256"], sha.as_str());
    // Provenance lists it among the resolved dependencies.
    let line = std::fs::read_to_string(r.out.join("provenance.intoto.jsonl")).unwrap();
    let env_json: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    use base64::Engine;
    let stmt: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(env_json["payload"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let deps = stmt["predicate"]["buildDefinition"]["resolvedDependencies"]
        .as_array()
        .unwrap();
    assert!(
        deps.iter()
            .any(|d| d["name"] == "rootfs" && d["digest"]["sha256"] == sha.as_str()),
        "{deps:?}"
    );
    // A job running on the root filesystem holds it: `tools prune` keeps it, and the job
    // still reads it afterwards. It runs until the prune is done.
    let job = format!(
        "version = 1\nname = \"rootfs\"\n[rootfs]\nurl = \"http://127.0.0.1:{}/rootfs.tar.gz\"\nsha256 = \"{sha}\"\n[[steps]]\nname = \"hold\"\nrun = '''\n{GATE}\necho after=$(cat /usr/share/marker)\n'''\n",
        server.port
    );
    let (mut cmd, out) = env.command(&job, &["--quiet"]);
    let child = cmd.spawn().unwrap();
    let gate = gated(&env, 60);
    let (code, text) = tools_prune(&env, &[]);
    open_gate(&gate);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("-rootfs: in use by a running job"), "{text}");
    let r = bulwark_tests::Run::from_output(child.wait_with_output().unwrap(), out);
    r.assert_code(0);
    assert_eq!(r.value("after"), "rootfs marker", "{r}");
}

#[test]
fn two_concurrent_runs_needing_one_tool_download_it_once() {
    let env = env_allowing_loopback("tool-race");
    let body = tool_archive(&env);
    let sha = sha256_file(&env.dir.join("hello.tar.gz"));
    let server = Server::serve(body);
    let job = tool_job(server.port, &sha, "hello concurrently");
    let (mut c1, o1) = env.command(&job, &["--quiet"]);
    let (mut c2, o2) = env.command(&job, &["--quiet"]);
    let (h1, h2) = (c1.spawn().unwrap(), c2.spawn().unwrap());
    let r1 = bulwark_tests::Run::from_output(h1.wait_with_output().unwrap(), o1);
    let r2 = bulwark_tests::Run::from_output(h2.wait_with_output().unwrap(), o2);
    r1.assert_code(0);
    r2.assert_code(0);
    assert!(
        r1.log.contains("hello from the pinned tool: concurrently")
            && r2.log.contains("concurrently")
    );
    assert_eq!(
        server.requests(),
        1,
        "two runs downloaded the same tool twice"
    );
}

fn tools_prune(env: &Env, extra: &[&str]) -> (Option<i32>, String) {
    let o = std::process::Command::new(bulwark_tests::bulwark_bin())
        .args(["tools", "prune", "--unused-days", "0", "--config"])
        .arg(&env.config)
        .args(extra)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.code(), text)
}

#[test]
fn tools_prune_never_removes_a_tool_a_running_job_uses_and_removes_it_once_unused() {
    let env = env_allowing_loopback("tool-prune");
    let body = tool_archive(&env);
    let sha = sha256_file(&env.dir.join("hello.tar.gz"));
    let server = Server::serve(body);
    // The job runs its tool, waits while the test prunes the store, then runs it again.
    let job = tool_job(
        server.port,
        &sha,
        &format!("hello before\n{GATE}\nhello after\ncat /tools/hello/bin/hello | wc -c | sed 's/^/size=/'"),
    );
    let (mut cmd, out) = env.command(&job, &["--quiet"]);
    let child = cmd.spawn().unwrap();
    let gate = gated(&env, 60);
    let (code, text) = tools_prune(&env, &[]);
    open_gate(&gate);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("in use by a running job") && text.contains("removed 0 trees"),
        "{text}"
    );
    let r = bulwark_tests::Run::from_output(child.wait_with_output().unwrap(), out);
    r.assert_code(0);
    assert!(
        r.log.contains("hello from the pinned tool: before")
            && r.log.contains("hello from the pinned tool: after"),
        "{r}"
    );
    // The tool's whole script was there after the prune.
    let script = "#!/bin/sh\necho \"hello from the pinned tool: $*\"\n";
    assert_eq!(r.value("size"), script.len().to_string(), "{r}");
    assert_eq!(server.requests(), 1);
    // No job uses it now: a dry run only says so, a prune removes tree and download.
    let (code, text) = tools_prune(&env, &["--dry-run"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("would remove 1 trees, 1 downloads"), "{text}");
    assert!(store_files(&env) > 0);
    let (code, text) = tools_prune(&env, &[]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("removed 1 trees, 1 downloads") && text.contains("(tool hello)"),
        "{text}"
    );
    assert_eq!(store_files(&env), 0, "{text}");
    // The next job fetches and verifies the tool again.
    let r = env.run(&tool_job(server.port, &sha, "hello again"));
    r.assert_code(0);
    assert!(r.log.contains("hello from the pinned tool: again"), "{r}");
    assert_eq!(server.requests(), 2);
}

/// Tests that need root (here: to give the tool store a filesystem of its own, to make a
/// network namespace).
mod root_mode {
    use super::*;

    /// A network namespace of the test's own (`ip netns`), with `lo` up and holding one public
    /// address as well: a build host whose interface carries its public address.
    /// Removed on drop; one that a test process killed outright left behind (its name holds
    /// that process's pid) is removed by the next one made.
    struct HostNetns {
        name: String,
    }

    impl HostNetns {
        fn new(address: &str) -> HostNetns {
            assert!(
                bulwark_tests::is_root(),
                "root_mode tests need root; scripts/test.sh skips them otherwise"
            );
            for entry in std::fs::read_dir("/run/netns")
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = entry.file_name().to_string_lossy().into_owned();
                let owner = name.strip_prefix("bwt-").and_then(|r| r.split_once('-'));
                if let Some((pid, _)) = owner {
                    if !std::path::Path::new("/proc").join(pid).exists() {
                        let _ = Command::new("ip").args(["netns", "del", &name]).status();
                    }
                }
            }
            let name = format!(
                "bwt-{}-{}",
                std::process::id(),
                bulwark_tests::random_hex(4)
            );
            let ns = HostNetns { name };
            for args in [
                vec!["netns", "add", &ns.name],
                vec!["-n", &ns.name, "link", "set", "lo", "up"],
                // On `lo`: any interface's address is the host's own, and not every kernel
                // has the dummy driver.
                vec![
                    "-n",
                    &ns.name,
                    "addr",
                    "add",
                    &format!("{address}/32"),
                    "dev",
                    "lo",
                ],
            ] {
                let o = Command::new("ip").args(&args).output().unwrap();
                assert!(
                    o.status.success(),
                    "ip {args:?}: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
            }
            ns
        }

        /// A listener bound inside the namespace (a socket stays in the namespace it was
        /// made in, whichever thread then uses it).
        fn listen(&self, addr: &str) -> TcpListener {
            let path = format!("/run/netns/{}", self.name);
            let addr = addr.to_string();
            std::thread::spawn(move || {
                let ns = std::fs::File::open(path).unwrap();
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                TcpListener::bind(addr).unwrap()
            })
            .join()
            .unwrap()
        }

        /// `env`'s `bulwark run` of `job`, run inside the namespace (entered with `nsenter`,
        /// which changes the network namespace only: `ip netns exec` would also mount the
        /// namespace's own `/sys`, hiding the cgroup hierarchies).
        fn run(&self, env: &Env, job: &str) -> bulwark_tests::Run {
            let (cmd, out) = env.command(job, &["--quiet"]);
            let mut inside = Command::new("nsenter");
            inside
                .arg(format!("--net=/run/netns/{}", self.name))
                .arg("--")
                .arg(cmd.get_program())
                .args(cmd.get_args());
            for (k, v) in cmd.get_envs() {
                match v {
                    Some(v) => inside.env(k, v),
                    None => inside.env_remove(k),
                };
            }
            if let Some(dir) = cmd.get_current_dir() {
                inside.current_dir(dir);
            }
            let o = inside.stdin(std::process::Stdio::null()).output().unwrap();
            bulwark_tests::Run::from_output(o, out)
        }
    }

    impl Drop for HostNetns {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
        }
    }

    /// The runner fetches a tool only from an address that is not its own host's: a tool URL
    /// naming the host's public interface address (a service of the host bound to `0.0.0.0`
    /// answers there, as on loopback) is refused before any connection, and so is an address
    /// the operator lists in `host.addresses` (a NAT's public address, on no interface);
    /// `fetch.allow_private` naming the address admits it (a mirror on the host itself).
    /// Everything happens in a network namespace the test made.
    #[test]
    fn a_tool_url_at_the_hosts_own_public_address_is_refused_unless_allowed() {
        let ns = HostNetns::new("1.2.3.4");
        let env = Env::new("tool-own-address");
        let body = tool_archive(&env);
        let sha = sha256_file(&env.dir.join("hello.tar.gz"));
        let server = Server::serve_on(ns.listen("1.2.3.4:0"), Duration::ZERO, body);
        let job = |at: &str| tool_job(server.port, &sha, "hello").replace("127.0.0.1", at);

        let r = ns.run(&env, &job("1.2.3.4"));
        r.assert_code(2);
        assert!(
            r.stderr
                .contains("connection to 1.2.3.4 refused by policy: host's own address")
                && r.stderr.contains("fetch.allow_private"),
            "{r}"
        );
        assert_eq!(server.requests(), 0, "the runner connected to its own host");

        // An address of this host's that no interface holds: the operator names it.
        env.write_config_sections("", "[host]\naddresses = [\"5.6.7.8\"]\n");
        let r = ns.run(&env, &job("5.6.7.8"));
        r.assert_code(2);
        assert!(
            r.stderr
                .contains("connection to 5.6.7.8 refused by policy: host's own address"),
            "{r}"
        );

        // Listed in fetch.allow_private: fetched and run, so the refusals above were the rule's.
        env.write_config_sections("", "[fetch]\nallow_private = [\"1.2.3.4\"]\n");
        let r = ns.run(&env, &job("1.2.3.4"));
        r.assert_code(0);
        assert!(r.log.contains("hello from the pinned tool"), "{r}");
        assert_eq!(server.requests(), 1);
    }

    /// Unmounts on drop.
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }

    /// `env`'s state directory (and with it the tool store) on a tmpfs of its own with
    /// `options`: the disk reserve is measured there, where nothing else writes.
    fn state_on_tmpfs(env: &Env, options: &str) -> Unmount {
        assert!(
            bulwark_tests::is_root(),
            "root_mode tests need root; scripts/test.sh skips them otherwise"
        );
        std::fs::create_dir_all(&env.state).unwrap();
        let mounted = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("{options},mode=0755"),
                "tmpfs",
            ])
            .arg(&env.state)
            .status()
            .unwrap();
        assert!(
            mounted.success(),
            "mount a tmpfs on {}",
            env.state.display()
        );
        Unmount(env.state.clone())
    }

    #[test]
    fn a_tool_that_would_take_the_disk_below_the_reserve_is_refused_and_not_kept() {
        let env = env_allowing_loopback("tool-room");
        // The state directory (and with it the tool store) on a 512 MiB tmpfs of its own, of
        // which 384 MiB must stay available: 128 MiB of room.
        let _unmount = state_on_tmpfs(&env, "size=512m");
        env.write_config_sections(
            "min_free_disk = \"384MiB\"",
            "[fetch]\nallow_private = [\"127.0.0.1\"]\n",
        );
        // A few hundred KiB that unpack to 256 MiB of zeros: within every fetch bound, but
        // twice the room.
        let d = env.dir.join("bombsrc");
        std::fs::create_dir_all(d.join("bin")).unwrap();
        let zeros = std::fs::File::create(d.join("bin/zeros")).unwrap();
        zeros.set_len(256 << 20).unwrap();
        let tgz = env.dir.join("bomb.tar.gz");
        tar_gz(&d, "bin", &tgz);
        let sha = sha256_file(&tgz);
        let server = Server::serve(std::fs::read(&tgz).unwrap());
        let job = tool_job(server.port, &sha, "echo ran");
        let r = env.run(&job);
        r.assert_code(2);
        assert!(
            r.stderr.contains(
                "the space left above limits.min_free_disk on the tool store's filesystem"
            ),
            "{r}"
        );
        assert!(!r.log.contains("ran"), "{r}");
        // Nothing of it is kept: the next job is not refused for a full store.
        assert_eq!(store_files(&env), 0, "the store kept something\n{r}");
        let r = env.run(
            "version = 1\nname = \"next\"\n[[steps]]\nname = \"s\"\nrun = \"echo next-ran\"\n",
        );
        r.assert_code(0);
    }

    #[test]
    fn a_tool_of_more_files_than_the_inodes_above_the_reserve_is_refused() {
        let env = env_allowing_loopback("tool-inodes");
        // 4000 inodes, half of them kept: about 2000 left for the store.
        let _unmount = state_on_tmpfs(&env, "size=64m,nr_inodes=4000");
        env.write_config_sections(
            "min_free_disk = \"50%\"",
            "[fetch]\nallow_private = [\"127.0.0.1\"]\n",
        );
        // A few kilobytes of tar.gz: 3000 empty files.
        let d = env.dir.join("manysrc");
        std::fs::create_dir_all(d.join("bin")).unwrap();
        for i in 0..3000 {
            std::fs::write(d.join(format!("bin/f{i}")), "").unwrap();
        }
        let tgz = env.dir.join("many.tar.gz");
        tar_gz(&d, "bin", &tgz);
        let sha = sha256_file(&tgz);
        let server = Server::serve(std::fs::read(&tgz).unwrap());
        let r = env.run(&tool_job(server.port, &sha, "echo ran"));
        r.assert_code(2);
        assert!(
            r.stderr
                .contains("entries (the inodes left above limits.min_free_disk"),
            "{r}"
        );
        assert_eq!(store_files(&env), 0, "the store kept something\n{r}");
    }
}
