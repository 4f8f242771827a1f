//! Fixtures for the control-plane tests: a real `bulwark-coordinator` on loopback, hosts
//! registered with it, `bulwark daemon`s, git repositories to build, and the interop
//! verifiers' Python.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bulwark_protocol::JobSpec;

use crate::{bulwark_bin, coordinator_bin, repo_root, Env};

pub const ISSUER: &str = "https://coordinator.bulwark.test";

/// A coordinator started by a test, stopped when dropped.
#[derive(Debug)]
pub struct Coordinator {
    child: Child,
    /// Its state directory.
    pub state: PathBuf,
    /// Its base URL (`http://127.0.0.1:PORT`).
    pub url: String,
    /// The admin token.
    pub admin: String,
    /// A client for the admin API.
    pub http: reqwest::blocking::Client,
    /// Its metrics address (`127.0.0.1:PORT`), when served with `--metrics-listen`.
    pub metrics: Option<String>,
}

impl Coordinator {
    pub fn start(env: &Env) -> Coordinator {
        Coordinator::start_with(env, &[])
    }

    /// A coordinator serving TLS with `tls`'s server certificate; its URL is `https://` and its
    /// client trusts `tls.ca` alone.
    pub fn start_tls(env: &Env, tls: &TlsFiles) -> Coordinator {
        let (cert, key) = (
            tls.cert.display().to_string(),
            tls.key.display().to_string(),
        );
        Coordinator::spawn(
            env,
            &[
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
                "--metrics-listen",
                "127.0.0.1:0",
            ],
            Some(&tls.ca),
        )
    }

    /// A coordinator served with `serve_args` added (`--max-output-bytes 10`, say).
    pub fn start_with(env: &Env, serve_args: &[&str]) -> Coordinator {
        Coordinator::spawn(env, serve_args, None)
    }

    fn spawn(env: &Env, serve_args: &[&str], ca: Option<&Path>) -> Coordinator {
        let state = env.dir.join("coordinator");
        let o = Command::new(coordinator_bin())
            .args(["init", "--state"])
            .arg(&state)
            .args(["--issuer", ISSUER])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "init: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let mut child = Command::new(coordinator_bin())
            .args(["serve", "--state"])
            .arg(&state)
            .args(["--listen", "127.0.0.1:0"])
            .args(serve_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // `listening on 127.0.0.1:PORT` once bound (after `metrics on ADDR`, when asked for);
        // the rest of its stderr is drained so it never blocks on a full pipe.
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut metrics = None;
        let addr = loop {
            let line = lines
                .next()
                .expect("the coordinator exited before listening")
                .unwrap();
            if let Some(a) = line.trim().strip_prefix("metrics on ") {
                metrics = Some(a.to_string());
            }
            if let Some(a) = line.trim().strip_prefix("listening on ") {
                break a.to_string();
            }
        };
        std::thread::spawn(move || for _ in lines.by_ref() {});
        let admin = std::fs::read_to_string(state.join("admin.token"))
            .unwrap()
            .trim()
            .to_string();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut http = reqwest::blocking::Client::builder().no_proxy();
        if let Some(ca) = ca {
            http = http
                .tls_certs_only(
                    reqwest::Certificate::from_pem_bundle(&std::fs::read(ca).unwrap()).unwrap(),
                )
                .pool_max_idle_per_host(0);
        }
        Coordinator {
            child,
            state,
            url: format!("{}://{addr}", if ca.is_some() { "https" } else { "http" }),
            admin,
            http: http.build().unwrap(),
            metrics,
        }
    }

    /// One scrape of its metrics (served with `--metrics-listen`): status, content type, text.
    pub fn scrape(&self) -> (u16, String, String) {
        let addr = self
            .metrics
            .as_deref()
            .expect("the coordinator was started without --metrics-listen");
        let r = self
            .http
            .get(format!("http://{addr}/metrics"))
            .send()
            .unwrap();
        let content_type = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        (r.status().as_u16(), content_type, r.text().unwrap())
    }

    /// A fresh one-time registration token in a file.
    pub fn registration_token(&self, dir: &Path, ttl: &str) -> PathBuf {
        let o = Command::new(coordinator_bin())
            .args(["registration-token", "--state"])
            .arg(&self.state)
            .args(["--ttl", ttl])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let token = String::from_utf8(o.stdout).unwrap();
        let path = dir.join(format!("token-{}", crate::random_hex(4)));
        std::fs::write(&path, token.trim()).unwrap();
        path
    }

    pub fn submit(&self, spec: &str, trust: &str) -> String {
        let spec = JobSpec::from_toml_str(spec).unwrap();
        let r = self
            .http
            .post(format!("{}/v1/jobs", self.url))
            .bearer_auth(&self.admin)
            .header("content-type", "application/json")
            .body(serde_json::json!({ "spec": spec, "trust": trust }).to_string())
            .send()
            .unwrap();
        let status = r.status();
        let body: serde_json::Value = serde_json::from_slice(&r.bytes().unwrap()).unwrap();
        assert!(status.is_success(), "submit: {status} {body}");
        body["job_id"].as_str().unwrap().to_string()
    }

    pub fn job(&self, id: &str) -> serde_json::Value {
        self.http
            .get(format!("{}/v1/jobs/{id}", self.url))
            .bearer_auth(&self.admin)
            .send()
            .and_then(|r| r.bytes())
            .map(|b| serde_json::from_slice(&b).unwrap())
            .unwrap()
    }

    /// `GET /v1/jobs/{id}/{what}` as the admin: status, `Repr-Digest`, body.
    pub fn fetch(&self, id: &str, what: &str) -> (u16, Option<String>, Vec<u8>) {
        let (status, headers, body) = self.fetch_with(id, what, None);
        (status, headers.get("repr-digest").cloned(), body)
    }

    /// `GET /v1/jobs/{id}/{what}` as the admin, with a `Range` if given: the status, the
    /// headers (names in lower case) and the body.
    pub fn fetch_with(
        &self,
        id: &str,
        what: &str,
        range: Option<&str>,
    ) -> (u16, std::collections::HashMap<String, String>, Vec<u8>) {
        let mut req = self
            .http
            .get(format!("{}/v1/jobs/{id}/{what}", self.url))
            .bearer_auth(&self.admin);
        if let Some(range) = range {
            req = req.header("range", range);
        }
        let r = req.send().unwrap();
        let status = r.status().as_u16();
        let headers = r
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
            .collect();
        (status, headers, r.bytes().unwrap().to_vec())
    }

    /// Waits until the job is finished or lost; returns its record.
    pub fn wait_done(&self, id: &str, secs: u64) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let j = self.job(id);
            if j["state"] == "finished" || j["state"] == "lost" {
                return j;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} not done in {secs} s: {j}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A certificate authority and a server certificate it signed for `127.0.0.1` (an IP SAN),
/// with the server's key: files made with the system's `openssl` (`.ci/run` installs it).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA's certificate (PEM).
    pub ca: PathBuf,
    /// The server's certificate (PEM).
    pub cert: PathBuf,
    /// The server's private key (PEM, PKCS#8).
    pub key: PathBuf,
}

/// A certificate's `notAfter` as `openssl` and `date` read it, in seconds since the epoch.
pub fn cert_not_after(cert: &Path) -> u64 {
    let o = Command::new("openssl")
        .args(["x509", "-noout", "-enddate", "-dateopt", "iso_8601", "-in"])
        .arg(cert)
        .output()
        .unwrap();
    let text = String::from_utf8(o.stdout).unwrap();
    let when = text.trim().strip_prefix("notAfter=").unwrap().to_owned();
    let o = Command::new("date")
        .args(["-u", "-d", &when, "+%s"])
        .output()
        .unwrap();
    String::from_utf8(o.stdout).unwrap().trim().parse().unwrap()
}

impl TlsFiles {
    /// A fresh CA named `name` and a server certificate from it, under `dir/<name>/`.
    pub fn make(dir: &Path, name: &str) -> TlsFiles {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        let openssl = |args: &[&str]| {
            let o = Command::new("openssl")
                .args(args)
                .current_dir(&d)
                .output()
                .expect("openssl (.ci/run installs it)");
            assert!(
                o.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509", "-days", "2", "-subj"];
        let subject = format!("/CN={name} test CA");
        ca.push(&subject);
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(&ca);
        let mut csr = vec!["req", "-new", "-subj", "/CN=127.0.0.1"];
        csr.extend(ec);
        csr.extend(["-keyout", "server.key", "-out", "server.csr"]);
        openssl(&csr);
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-days",
            "2",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-extfile",
            "server.ext",
            "-out",
            "server.crt",
        ]);
        TlsFiles {
            ca: d.join("ca.crt"),
            cert: d.join("server.crt"),
            key: d.join("server.key"),
        }
    }
}

/// A host: an Env whose configuration polls quickly and may fetch git from its directory.
pub fn host(tag: &str) -> Env {
    let env = Env::new(tag);
    env.write_config_sections(
        "max_memory = \"1GiB\"\n",
        &format!(
            "[fetch]\nfile_roots = [\"{}\"]\n[daemon]\npoll_interval = \"200ms\"\nlive_log_interval = \"200ms\"\n",
            env.dir.display()
        ),
    );
    env
}

pub fn register(
    env: &Env,
    coordinator: &Coordinator,
    token: &Path,
    name: &str,
) -> std::process::Output {
    register_at(env, &coordinator.url, token, name)
}

/// [`register`] with the coordinator at `url` (through a [`crate::relay::Relay`], say).
pub fn register_at(env: &Env, url: &str, token: &Path, name: &str) -> std::process::Output {
    Command::new(bulwark_bin())
        .args(["register", "--coordinator", url, "--token-file"])
        .arg(token)
        .args(["--name", name, "--config"])
        .arg(&env.config)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

pub fn registered(tag: &str) -> (Env, Coordinator) {
    let env = host(tag);
    let c = Coordinator::start(&env);
    let token = c.registration_token(&env.dir, "10m");
    let o = register(&env, &c, &token, "host-1");
    assert!(
        o.status.success(),
        "register: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    (env, c)
}

/// `bulwark daemon` in the background, stopped (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
}

impl Daemon {
    pub fn start(env: &Env) -> Daemon {
        Daemon::spawn(Daemon::command(env), env)
    }

    /// `bulwark daemon --config <env's config>`, not started.
    pub fn command(env: &Env) -> Command {
        let mut cmd = Command::new(bulwark_bin());
        cmd.args(["daemon", "--config"]).arg(&env.config);
        cmd
    }

    /// Starts `cmd` (a daemon command, perhaps wrapped), its stderr to `daemon.log`.
    pub fn spawn(mut cmd: Command, env: &Env) -> Daemon {
        use std::os::unix::process::CommandExt as _;
        let child = cmd
            // Its own process group, as a shell with job control starts it: a terminal's
            // Ctrl-C reaches that group (`stop_group`), never the tests.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(env.dir.join("daemon.log")).unwrap())
            .spawn()
            .unwrap();
        Daemon { child: Some(child) }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// Sends `sig` and waits up to `secs` for the daemon to exit; returns its exit code.
    pub fn stop(&mut self, sig: nix::sys::signal::Signal, secs: u64) -> Option<i32> {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
        self.exit_within(sig, secs)
    }

    /// Sends `sig` to the daemon's whole process group, as a terminal does for Ctrl-C, and
    /// waits up to `secs` for the daemon to exit; returns its exit code.
    pub fn stop_group(&mut self, sig: nix::sys::signal::Signal, secs: u64) -> Option<i32> {
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
        self.exit_within(sig, secs)
    }

    fn exit_within(&mut self, sig: nix::sys::signal::Signal, secs: u64) -> Option<i32> {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the daemon did not exit within {secs} s of {sig}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs git in `dir` with a fixed identity and no user or system configuration; its output.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let o = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
        .args(["-c", "init.defaultBranch=main"])
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// A repository with a build script; returns its path and commit.
pub fn repo(env: &Env) -> (PathBuf, String) {
    let repo = env.dir.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    std::fs::write(
        repo.join("build.sh"),
        "mkdir -p dist && echo built-from-git > dist/app.txt\n",
    )
    .unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "one"]);
    let commit = git(&repo, &["rev-parse", "HEAD"]);
    (repo, commit)
}

/// Submits a plain build of `commit` and asserts that the daemon of `env` runs it to
/// success: after whatever the test did to it, it goes on serving.
pub fn assert_serves_next_job(c: &Coordinator, env: &Env, repo: &Path, commit: &str) {
    let next = c.submit(&git_job(repo, commit, "next", "sh build.sh"), "untrusted");
    let j = c.wait_done(&next, 120);
    assert_eq!(
        j["result"]["result"]["status"],
        "succeeded",
        "{j}\n{}",
        daemon_log(env)
    );
}

pub fn git_job(repo: &Path, commit: &str, name: &str, run: &str) -> String {
    format!(
        "version = 1\nname = \"{name}\"\n[source]\ngit = \"file://{}\"\ncommit = \"{commit}\"\nref = \"refs/heads/main\"\n[[steps]]\nname = \"build\"\nrun = '''{run}'''\n[outputs]\npaths = [\"dist/app.txt\"]\n",
        repo.display()
    )
}

/// Reads Prometheus text with an independent parser (`prometheus_client`, Debian's
/// `python3-prometheus-client`, installed by `.ci/run`): a line `F <family> <type>` per family,
/// then `S <sample> <label>=<value>,... <value>` per sample (labels sorted). Panics when the
/// parser refuses the text.
pub fn parse_prometheus(text: &str) -> Vec<String> {
    let parse = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
for f in text_string_to_metric_families(sys.stdin.read()):
    print("F", f.name, f.type)
    for s in f.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        print("S", s.name, labels, s.value)
"#;
    let mut py = Command::new("/usr/bin/python3")
        .args(["-c", parse])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    std::io::Write::write_all(py.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    drop(py.stdin.take());
    let o = py.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !stderr.contains("No module named"),
        "python3-prometheus-client is not installed (.ci/run installs it): {stderr}"
    );
    assert!(
        o.status.success(),
        "the parser refused the text: {stderr}\n{text}"
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The value of the sample line `series` (name and labels exactly as written) in Prometheus
/// text; panics when there is none.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
        .parse()
        .unwrap()
}

/// The address a daemon started with `[daemon] metrics_listen` serves on, from its log.
pub fn daemon_metrics_addr(env: &Env) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = daemon_log(env);
        if let Some(a) = log
            .lines()
            .find_map(|l| l.strip_prefix("bulwark daemon: metrics on "))
        {
            return a.trim().to_owned();
        }
        assert!(Instant::now() < deadline, "no metrics address:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn daemon_log(env: &Env) -> String {
    std::fs::read_to_string(env.dir.join("daemon.log")).unwrap_or_default()
}

pub fn interop_python() -> PathBuf {
    let dir = std::env::var_os("BULWARK_INTEROP_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/bulwark-interop"));
    let python = dir.join("venv/bin/python");
    assert!(
        python.exists(),
        "the interop verifiers are not installed ({} missing): run tests/interop/setup.sh",
        python.display()
    );
    python
}

pub fn verify_jwt_script() -> PathBuf {
    [
        repo_root().join("tests/interop"),
        repo_root().join("interop"),
    ]
    .into_iter()
    .map(|d| d.join("verify_jwt.py"))
    .find(|p| p.exists())
    .expect("tests/interop/verify_jwt.py")
}
