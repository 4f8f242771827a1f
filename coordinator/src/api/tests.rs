//! In-process HTTP tests: a real server on 127.0.0.1:0, a hand-written HTTP/1.1 client (so
//! the wire is what a foreign client would see), a runner signing as `bulwark daemon` would.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::*;
use crate::auth::tests::{runner_key, sign};
use crate::statedir;
use crate::testutil::TempDir;
use bulwark_protocol::control::{headers as h, Lease};
use p256::ecdsa::SigningKey;
use serde_json::{json, Value};
use sha2::Digest as _;

struct Server {
    addr: SocketAddr,
    _dir: TempDir,
    state: PathBuf,
    admin: String,
}

fn start() -> Server {
    start_with(ServeOptions::default()).0
}

/// A server with `options`, and the sender that shuts it down (it answers when `serve` ended).
fn start_with(options: ServeOptions) -> (Server, Shutdown) {
    start_with_limits(options, outputs::OutputLimits::default())
}

fn start_with_limits(options: ServeOptions, limits: outputs::OutputLimits) -> (Server, Shutdown) {
    start_full(options, limits, None)
}

/// A coordinator over a new state directory in `dir`, and that directory.
fn new_coordinator(dir: &TempDir, limits: outputs::OutputLimits) -> (Coordinator, PathBuf) {
    let state = dir.path().join("state");
    statedir::init(&state, "http://127.0.0.1:1").unwrap();
    let (db, key, admin) = statedir::load(&state).unwrap();
    let outputs = OutputStore::open(&state, limits).unwrap();
    let coordinator = Coordinator::new(db, key, admin, outputs)
        .unwrap()
        .with_upload_idle_timeout(Duration::from_secs(1));
    (coordinator, state)
}

fn admin_token(state: &Path) -> String {
    std::fs::read_to_string(state.join(statedir::ADMIN_TOKEN_NAME))
        .unwrap()
        .trim()
        .to_owned()
}

/// A server of `make`'s router over a new coordinator, served by `axum::serve` (no header
/// timeout, no connection bound): for tests that build the router themselves, to hold its
/// budget of large bodies or to leave out a layer.
/// The served app (routes and request deadlines) with `options`, and a handle on its body
/// budget, which a test can take to keep it busy.
fn serve_app(options: ServeOptions) -> (Server, BodyBudget) {
    let budget = BodyBudget::for_options(&options);
    let served = budget.clone();
    (start_router(move |c| app(&c, &options, &served)), budget)
}

fn start_router(make: impl FnOnce(Shared) -> Router + Send + 'static) -> Server {
    let dir = TempDir::new("api");
    let (coordinator, state) = new_coordinator(&dir, outputs::OutputLimits::default());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, make(Arc::new(coordinator)))
                .await
                .unwrap();
        });
    });
    let addr = rx.recv().unwrap();
    Server {
        addr,
        admin: admin_token(&state),
        _dir: dir,
        state,
    }
}

fn start_full(
    options: ServeOptions,
    limits: outputs::OutputLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> (Server, Shutdown) {
    let dir = TempDir::new("api");
    let (coordinator, state) = new_coordinator(&dir, limits);
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (ended_tx, ended_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            // A dropped sender (a test that keeps no `Shutdown`) means: never stop.
            let stop = async {
                if stop_rx.await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            serve_with_metrics(listener, None, tls, coordinator, options, stop)
                .await
                .unwrap();
            let _ = ended_tx.send(());
        });
    });
    let addr = rx.recv().unwrap();
    let admin = admin_token(&state);
    (
        Server {
            addr,
            _dir: dir,
            state,
            admin,
        },
        Shutdown {
            stop: Some(stop_tx),
            ended: ended_rx,
        },
    )
}

struct Shutdown {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    ended: std::sync::mpsc::Receiver<()>,
}

impl Shutdown {
    /// Asks the server to stop; whether `serve` returned within `within`.
    fn stop(&mut self, within: Duration) -> bool {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.ended.recv_timeout(within).is_ok()
    }
}

struct Answer {
    status: u16,
    body: Vec<u8>,
    content_type: Option<String>,
    /// Every header, names in lower case.
    headers: Vec<(String, String)>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find_map(|(k, v)| (k == name).then_some(v.as_str()))
    }
    fn error(&self) -> String {
        assert_eq!(
            self.content_type.as_deref(),
            Some("application/json"),
            "status {}",
            self.status
        );
        let e: ErrorBody = serde_json::from_slice(&self.body).unwrap();
        e.error
    }
}

fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    // The server may answer (413) and close before reading a large body.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut body = raw[split + 4..].to_vec();
    let status = head[9..12].parse().unwrap();
    let header = |name: &str| {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    };
    if header("transfer-encoding").as_deref() == Some("chunked") {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap(), 16).unwrap();
            if size == 0 {
                break;
            }
            out.extend_from_slice(&rest[line_end + 2..line_end + 2 + size]);
            rest = &rest[line_end + 2 + size + 2..];
        }
        body = out;
    }
    Answer {
        status,
        body,
        content_type: header("content-type"),
        headers: head
            .lines()
            .skip(1)
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                Some((k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            })
            .collect(),
    }
}

fn admin_post(s: &Server, path: &str, body: &Value) -> Answer {
    let auth = format!("Bearer {}", s.admin);
    http(
        s.addr,
        "POST",
        path,
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body.to_string().as_bytes(),
    )
}

fn registration_token(state: &Path) -> String {
    let db = statedir::open_db(state).unwrap();
    let token = auth::generate_registration_token().unwrap();
    db.add_registration_token(&auth::sha256_hex(token.as_bytes()), state::now() + 3600)
        .unwrap();
    token.to_string()
}

struct TestRunner {
    id: String,
    key: SigningKey,
}

fn register(s: &Server, name: &str) -> TestRunner {
    let key = runner_key();
    let body = json!({
        "token": registration_token(&s.state),
        "name": name,
        "public_key": keys::public_key_pem(key.verifying_key()).unwrap(),
    });
    let a = http(
        s.addr,
        "POST",
        "/v1/runners/register",
        &[],
        body.to_string().as_bytes(),
    );
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let r: RegisterResponse = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(r.issuer, "http://127.0.0.1:1");
    TestRunner {
        id: r.runner_id,
        key,
    }
}

/// `POST path` with `body`, signed by `r` as the daemon signs: the signing headers and the
/// body's digest ([`h::CONTENT_SHA256`]).
fn signed_post(s: &Server, r: &TestRunner, path: &str, body: &[u8]) -> Answer {
    let nonce = auth::hex(&auth::random_bytes::<16>().unwrap());
    let sh = sign(&r.key, &r.id, "POST", path, state::now(), &nonce, body);
    let digest = auth::sha256_hex(body);
    http(
        s.addr,
        "POST",
        path,
        &[
            (h::RUNNER, &sh.runner_id),
            (h::TIMESTAMP, &sh.timestamp),
            (h::NONCE, &sh.nonce),
            (h::SIGNATURE, &sh.signature),
            (h::CONTENT_SHA256, &digest),
        ],
        body,
    )
}

fn job_body(trust: &str) -> Value {
    json!({
        "trust": trust,
        "spec": {
            "version": 1,
            "name": "build",
            "source": {
                "git": "https://git.example.com/acme/app.git",
                "commit": "0123456789abcdef0123456789abcdef01234567",
                "ref": "refs/tags/v1.0.0"
            },
            "resources": {"timeout": "5m"},
            "steps": [{"name": "make", "run": "make"}]
        }
    })
}

fn submit(s: &Server, trust: &str) -> String {
    let a = admin_post(s, "/v1/jobs", &job_body(trust));
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    a.json()["job_id"].as_str().unwrap().to_owned()
}

/// The issuer's key as served in the JWKS.
fn served_key(s: &Server) -> VerifyingKey {
    let jwks = http(s.addr, "GET", "/.well-known/jwks.json", &[], b"").json();
    let k = &jwks["keys"][0];
    let b = |v: &Value| {
        base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            v.as_str().unwrap(),
        )
        .unwrap()
    };
    let mut sec1 = vec![4u8];
    sec1.extend(b(&k["x"]));
    sec1.extend(b(&k["y"]));
    let key = VerifyingKey::from_sec1_bytes(&sec1).unwrap();
    assert_eq!(k["kid"], oidc::thumbprint(&key));
    key
}

use p256::ecdsa::VerifyingKey;

#[test]
fn a_trusted_job_goes_from_submit_to_lease_to_identity_token_to_result() {
    let s = start();
    let d = http(s.addr, "GET", "/.well-known/openid-configuration", &[], b"").json();
    assert_eq!(d["issuer"], "http://127.0.0.1:1");
    assert_eq!(d["jwks_uri"], "http://127.0.0.1:1/.well-known/jwks.json");
    let issuer_key = served_key(&s);

    let runner = register(&s, "build-7");
    assert_eq!(
        signed_post(&s, &runner, "/v1/runners/lease", b"").status,
        204
    );
    let job_id = submit(&s, "trusted");

    let a = signed_post(&s, &runner, "/v1/runners/lease", b"");
    assert_eq!(a.status, 200);
    let lease: Lease = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(lease.job_id, job_id);
    assert_eq!(lease.trust, bulwark_protocol::Trust::Trusted);
    let now = state::now();
    assert!((now + 300 + 600 - 2..=now + 300 + 600).contains(&lease.expires_at));

    let path = format!("/v1/jobs/{job_id}/id-token");
    let a = signed_post(&s, &runner, &path, br#"{"audience":"sts.amazonaws.com"}"#);
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let token: IdToken = serde_json::from_slice(&a.body).unwrap();
    let claims = oidc::verify(&token.token, &issuer_key).unwrap();
    assert_eq!(claims.exp, token.expires_at);
    assert_eq!(claims.aud, "sts.amazonaws.com");
    assert_eq!(claims.iss, "http://127.0.0.1:1");
    assert_eq!(
        claims.sub,
        "repo:https://git.example.com/acme/app.git:ref:refs/tags/v1.0.0:trust:trusted"
    );
    assert_eq!(
        (
            claims.job_id.as_str(),
            claims.runner_id.as_str(),
            claims.runner_name.as_str()
        ),
        (job_id.as_str(), runner.id.as_str(), "build-7")
    );
    assert!(claims.exp - claims.iat <= 600);
    // PyJWT's verdict on the served JWKS: tests/tests/control_plane.rs.

    let a = signed_post(&s, &runner, &path, br#"{"audience":""}"#);
    assert_eq!(a.status, 400);
    assert!(a.error().starts_with("audience:"));

    let result_path = format!("/v1/jobs/{job_id}/result");
    // Provenance the inventory cannot read does not cost the job its result: recorded, and
    // counted as unindexed in every inventory answer.
    let report = json!({"result": {"status": "succeeded"}, "provenance": "{\"payload\":\"x\"}\n"});
    let a = signed_post(&s, &runner, &result_path, report.to_string().as_bytes());
    assert_eq!(a.status, 204, "{}", String::from_utf8_lossy(&a.body));
    let a = signed_post(&s, &runner, &result_path, report.to_string().as_bytes());
    assert_eq!(a.status, 409);
    assert_eq!(a.error(), format!("job {job_id} already has a result"));

    let auth = format!("Bearer {}", s.admin);
    let inv = http(
        s.addr,
        "GET",
        "/v1/inventory?commit=0123456",
        &[("authorization", auth.as_str())],
        b"",
    );
    let inv: Value = serde_json::from_slice(&inv.body).unwrap();
    assert_eq!(
        (&inv["hits"], &inv["unindexed"]),
        (&json!([]), &json!(1)),
        "{inv}"
    );
    let rec = http(
        s.addr,
        "GET",
        &format!("/v1/jobs/{job_id}"),
        &[("authorization", &auth)],
        b"",
    );
    assert_eq!(rec.status, 200);
    let rec: JobRecord = serde_json::from_slice(&rec.body).unwrap();
    assert_eq!(rec.state, bulwark_protocol::control::JobState::Finished);
    assert_eq!(rec.runner_id.as_deref(), Some(runner.id.as_str()));
    assert_eq!(rec.result.unwrap().result, json!({"status": "succeeded"}));
    // The finished job's lease is over: no more tokens.
    assert_eq!(
        signed_post(&s, &runner, &path, br#"{"audience":"a"}"#).status,
        403
    );
}

#[test]
fn an_untrusted_job_never_gets_an_identity_token() {
    let s = start();
    let runner = register(&s, "build-7");
    let job_id = submit(&s, "untrusted");
    assert_eq!(
        signed_post(&s, &runner, "/v1/runners/lease", b"").status,
        200
    );
    let a = signed_post(
        &s,
        &runner,
        &format!("/v1/jobs/{job_id}/id-token"),
        br#"{"audience":"a"}"#,
    );
    assert_eq!(a.status, 403);
    assert_eq!(
        a.error(),
        format!("job {job_id} is untrusted: untrusted jobs never get identity tokens")
    );
}

#[test]
fn another_runner_gets_no_token_and_cannot_report_for_a_job_it_does_not_hold() {
    let s = start();
    let holder = register(&s, "build-7");
    let other = register(&s, "build-8");
    let job_id = submit(&s, "trusted");
    assert_eq!(
        signed_post(&s, &holder, "/v1/runners/lease", b"").status,
        200
    );
    let a = signed_post(
        &s,
        &other,
        &format!("/v1/jobs/{job_id}/id-token"),
        br#"{"audience":"a"}"#,
    );
    assert_eq!(a.status, 403);
    assert_eq!(
        a.error(),
        format!("job {job_id} is not leased to runner {}", other.id)
    );
    let a = signed_post(
        &s,
        &other,
        &format!("/v1/jobs/{job_id}/result"),
        br#"{"result":{}}"#,
    );
    assert_eq!(a.status, 403);
}

#[test]
fn a_registration_token_registers_one_runner_and_bad_requests_name_the_field() {
    let s = start();
    let key = runner_key();
    let pem = keys::public_key_pem(key.verifying_key()).unwrap();
    let token = registration_token(&s.state);
    let post = |body: Value| {
        http(
            s.addr,
            "POST",
            "/v1/runners/register",
            &[],
            body.to_string().as_bytes(),
        )
    };
    let a = post(json!({"token": token, "name": "Build 7", "public_key": pem}));
    assert_eq!(a.status, 400);
    assert!(a.error().starts_with("name: must match"), "{}", a.error());
    let a = post(
        json!({"token": token, "name": "build-7", "public_key": "-----BEGIN PUBLIC KEY-----\nAA==\n-----END PUBLIC KEY-----\n"}),
    );
    assert_eq!(a.status, 400);
    assert!(a.error().starts_with("public_key:"), "{}", a.error());
    let a = post(json!({"token": token, "name": "build-7", "public_key": pem, "extra": 1}));
    assert_eq!(a.status, 400);
    assert!(a.error().contains("unknown field"), "{}", a.error());
    assert_eq!(
        post(json!({"token": token, "name": "build-7", "public_key": pem})).status,
        200
    );
    let again = post(json!({"token": token, "name": "build-7", "public_key": pem}));
    let unknown = post(json!({"token": "bwreg_nope", "name": "build-7", "public_key": pem}));
    for a in [again, unknown] {
        assert_eq!(a.status, 401);
        assert_eq!(
            a.error(),
            "registration token is not valid (unknown, used or expired)"
        );
        assert!(!String::from_utf8_lossy(&a.body).contains(&token));
    }
}

#[test]
fn jobs_need_the_admin_token_and_a_fetchable_source() {
    let s = start();
    let a = http(
        s.addr,
        "POST",
        "/v1/jobs",
        &[("authorization", "Bearer bwadm_wrong")],
        job_body("trusted").to_string().as_bytes(),
    );
    assert_eq!(a.status, 401);
    assert!(a.error().starts_with("admin token missing or not valid"));
    let a = http(s.addr, "GET", "/v1/jobs/job-x", &[], b"");
    assert_eq!(a.status, 401);
    let mut body = job_body("trusted");
    body["spec"]["source"] = json!({"path": "."});
    let a = admin_post(&s, "/v1/jobs", &body);
    assert_eq!(a.status, 400);
    assert!(a.error().starts_with("spec.source:"), "{}", a.error());
    body["spec"]["source"] = json!({"git": "https://g/x.git"});
    assert!(admin_post(&s, "/v1/jobs", &body)
        .error()
        .starts_with("spec.source:"));
    // A ref that could make one token's `sub` read as another's.
    body["spec"]["source"] = json!({"git": "https://g/x.git", "commit": "ab".repeat(20), "ref": "refs/heads/main:trust:trusted"});
    let a = admin_post(&s, "/v1/jobs", &body);
    assert_eq!(a.status, 400);
    assert!(a.error().starts_with("spec.source.ref:"), "{}", a.error());
    // So could a repository, against a wildcard trust policy; and one not written as the
    // runner fetches it would name something else in the token.
    for (git, why) in [
        (
            "https://g/x:ref:refs/heads/main:y.git",
            "must have no ':' after its host",
        ),
        ("https://g/x.git?a:b", "must have no ':' after its host"),
        ("https://g/org/../x.git", "write it as"),
        ("https://G/x.git", "write it as"),
    ] {
        body["spec"]["source"] = json!({"git": git, "commit": "ab".repeat(20)});
        let a = admin_post(&s, "/v1/jobs", &body);
        assert_eq!(a.status, 400, "{git}");
        assert!(
            a.error().starts_with("spec.source.git:") && a.error().contains(why),
            "{git}: {}",
            a.error()
        );
    }
    body["spec"]["source"] = json!({"url": "https://g/x:y.tgz", "sha256": "ab".repeat(32)});
    assert!(admin_post(&s, "/v1/jobs", &body)
        .error()
        .starts_with("spec.source.url:"));
    body["spec"]["source"] = json!({"git": "https://g:8443/x.git", "commit": "ab".repeat(20)});
    assert_eq!(admin_post(&s, "/v1/jobs", &body).status, 200);
    body["spec"]["source"] = json!({"url": "https://g/x.tgz", "sha256": "ab".repeat(32)});
    assert_eq!(admin_post(&s, "/v1/jobs", &body).status, 200);
    body["spec"]["surprise"] = json!(1);
    let a = admin_post(&s, "/v1/jobs", &body);
    assert_eq!(a.status, 400);
    assert!(
        a.error().contains("unknown field `surprise`"),
        "{}",
        a.error()
    );
    let auth = format!("Bearer {}", s.admin);
    let a = http(
        s.addr,
        "GET",
        "/v1/jobs/job-none",
        &[("authorization", &auth)],
        b"",
    );
    assert_eq!(a.status, 404);
    assert_eq!(a.error(), "job job-none not found");
}

#[test]
fn a_replayed_or_unsigned_runner_request_is_refused_with_a_json_error() {
    let s = start();
    let runner = register(&s, "build-7");
    let sh = sign(
        &runner.key,
        &runner.id,
        "POST",
        "/v1/runners/lease",
        state::now(),
        "BBBBBBBBBBBBBBBBBBBB",
        b"",
    );
    let digest = sha(b"");
    let hdrs = [
        (h::RUNNER, sh.runner_id.as_str()),
        (h::TIMESTAMP, sh.timestamp.as_str()),
        (h::NONCE, sh.nonce.as_str()),
        (h::SIGNATURE, sh.signature.as_str()),
        (h::CONTENT_SHA256, digest.as_str()),
    ];
    assert_eq!(
        http(s.addr, "POST", "/v1/runners/lease", &hdrs, b"").status,
        204
    );
    let a = http(s.addr, "POST", "/v1/runners/lease", &hdrs, b"");
    assert_eq!(a.status, 401);
    assert!(a.error().contains("nonce already used"));
    let a = http(s.addr, "POST", "/v1/runners/lease", &hdrs[..3], b"");
    assert_eq!(a.status, 401);
    assert_eq!(
        a.error(),
        "signed request refused: header bulwark-signature missing or not valid"
    );
}

#[test]
fn every_error_the_framework_makes_is_a_json_error_body() {
    let s = start();
    let a = http(s.addr, "GET", "/nowhere", &[], b"");
    assert_eq!((a.status, a.error().as_str()), (404, "no such endpoint"));
    let a = http(s.addr, "GET", "/v1/runners/lease", &[], b"");
    assert_eq!(a.status, 405);
    a.error();
    let big = vec![b'x'; MAX_SMALL_BODY_BYTES + 1];
    let a = http(s.addr, "POST", "/v1/runners/register", &[], &big);
    assert_eq!(a.status, 413);
    assert_eq!(
        a.error(),
        format!("request body is larger than {MAX_SMALL_BODY_BYTES} bytes")
    );
    let a = http(s.addr, "POST", "/v1/runners/register", &[], b"{not json");
    assert_eq!(a.status, 400);
    assert!(a
        .error()
        .starts_with("request body is not a valid registration request"));
}

#[test]
fn a_non_loopback_listen_address_needs_the_tls_proxy_flag() {
    let public: SocketAddr = "0.0.0.0:8440".parse().unwrap();
    let e = check_listen(public, false).unwrap_err().to_string();
    assert!(e.contains("--behind-tls-proxy"), "{e}");
    check_listen(public, true).unwrap();
    check_listen("127.0.0.1:0".parse().unwrap(), false).unwrap();
    check_listen("[::1]:0".parse().unwrap(), false).unwrap();
}

/// Reads from `s` until the server closes it; what it sent, or `None` if it was still open
/// after `patience`.
fn read_until_closed(s: &mut TcpStream, patience: Duration) -> Option<Vec<u8>> {
    s.set_read_timeout(Some(patience)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Some(got),
            Err(_) => return None,
        }
    }
}

fn quick_timeouts() -> ServeOptions {
    ServeOptions {
        header_read_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(1),
        ..ServeOptions::default()
    }
}

#[test]
fn a_client_that_never_finishes_its_headers_or_idles_is_disconnected() {
    let (s, _stop) = start_with(quick_timeouts());
    let started = Instant::now();
    let mut idle = TcpStream::connect(s.addr).unwrap();
    let mut slow = TcpStream::connect(s.addr).unwrap();
    slow.write_all(b"POST /v1/runners/lease HTTP/1.1\r\nhost: x\r\n")
        .unwrap();
    assert!(
        read_until_closed(&mut idle, Duration::from_secs(5)).is_some(),
        "an idle connection was kept open"
    );
    assert!(
        read_until_closed(&mut slow, Duration::from_secs(5)).is_some(),
        "a connection that never finished its headers was kept open"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // The server still answers.
    assert_eq!(
        http(s.addr, "GET", "/.well-known/jwks.json", &[], b"").status,
        200
    );
}

/// Over TLS the handshake runs in the connection's own task, under the header timeout: a
/// client that connects and never says hello neither holds up the accept loop (a second
/// client is served at once) nor keeps its connection past the timeout.
#[test]
fn a_silent_tls_client_neither_holds_up_others_nor_outlives_the_header_timeout() {
    let dir = TempDir::new("api-tls");
    let Some((cert, key)) = crate::testutil::self_signed(dir.path(), "server", "localhost") else {
        eprintln!("SKIPPED: openssl is not installed (.ci/run installs it)");
        return;
    };
    let acceptor = crate::tls::acceptor(&cert, &key).unwrap().acceptor;
    let (s, _stop) = start_full(
        ServeOptions {
            header_read_timeout: Duration::from_secs(6),
            ..ServeOptions::default()
        },
        outputs::OutputLimits::default(),
        Some(acceptor),
    );
    let started = Instant::now();
    let mut silent = TcpStream::connect(s.addr).unwrap();
    std::thread::sleep(Duration::from_millis(100));

    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_file(&cert).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let conn =
        rustls::ClientConnection::new(std::sync::Arc::new(config), "localhost".try_into().unwrap())
            .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, TcpStream::connect(s.addr).unwrap());
    tls.write_all(b"GET /.well-known/jwks.json HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    match tls.read_to_end(&mut got) {
        Ok(_) => {}
        // Closed without close_notify after `connection: close`: what arrived counts.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => panic!("{e}"),
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "served only after {:?}: the silent handshake held the accept loop",
        started.elapsed()
    );
    assert!(
        read_until_closed(&mut silent, Duration::from_secs(15)).is_some(),
        "a client that never began its handshake was kept"
    );
    assert!(started.elapsed() >= Duration::from_secs(4));
}

#[test]
fn a_body_that_never_arrives_is_answered_408_and_the_connection_closed() {
    let (s, _stop) = start_with(quick_timeouts());
    // A live-log append is a PUT too, read whole (once its headers passed their checks)
    // before its signature is checked: it has the request deadline (only output uploads
    // have their own).
    let runner = register(&s, "build-7");
    let live = "/v1/jobs/job-0123456789abcdef0123456789abcdef/live-log/0";
    let signed = header_lines(&put_headers(&runner, live, &sha(b"")));
    for (head, extra) in [
        ("POST /v1/runners/register".to_owned(), String::new()),
        (format!("PUT {live}"), signed),
    ] {
        let mut c = TcpStream::connect(s.addr).unwrap();
        c.write_all(
            format!("{head} HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n{extra}\r\n{{\"tok")
                .as_bytes(),
        )
        .unwrap();
        let got = read_until_closed(&mut c, Duration::from_secs(5))
            .expect("a request whose body never came was kept open");
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 408"), "{head}: {text}");
        assert!(text.contains("not received in time"), "{text}");
    }
}

/// At the limit, a new connection makes the oldest give way: one kept alive between requests
/// (or that has sent nothing) is closed at once, long before its idle timeout; so holding the
/// coordinator's connections by sending a cheap request now and then does not keep others out.
#[test]
fn at_the_limit_an_idle_connection_gives_way_to_a_new_one() {
    let (s, _stop) = start_with(ServeOptions {
        max_connections: 1,
        header_read_timeout: Duration::from_secs(60),
        ..ServeOptions::default()
    });
    const JWKS: &[u8] = b"GET /.well-known/jwks.json HTTP/1.1\r\nhost: x\r\n\r\n";
    for holder_sends_a_request in [true, false] {
        let mut holder = TcpStream::connect(s.addr).unwrap();
        if holder_sends_a_request {
            holder.write_all(JWKS).unwrap();
            let mut got = [0u8; 12];
            holder
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            holder.read_exact(&mut got).unwrap();
            assert_eq!(&got, b"HTTP/1.1 200");
        }
        std::thread::sleep(Duration::from_millis(200));
        let mut waiting = TcpStream::connect(s.addr).unwrap();
        waiting
            .write_all(
                b"GET /.well-known/jwks.json HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            )
            .unwrap();
        let got = read_until_closed(&mut waiting, Duration::from_secs(10))
            .expect("a new connection was kept waiting behind an idle one");
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&got)
        );
        // The holder was closed: its end of the connection reads to the end.
        assert!(
            read_until_closed(&mut holder, Duration::from_secs(10)).is_some(),
            "the idle connection was not closed"
        );
    }
}

/// A long request on the oldest connection does not hold up a new one while a younger
/// connection sits idle: the next oldest is asked in turn.
#[test]
fn at_the_limit_the_next_oldest_gives_way_when_the_oldest_is_in_a_request() {
    let (s, _stop) = start_with(ServeOptions {
        max_connections: 2,
        header_read_timeout: Duration::from_secs(60),
        request_timeout: Duration::from_secs(60),
        ..ServeOptions::default()
    });
    let mut busy = TcpStream::connect(s.addr).unwrap();
    busy.write_all(
        b"POST /v1/runners/register HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\
          expect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let cont: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
    let mut got = vec![0u8; cont.len()];
    busy.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    busy.read_exact(&mut got).expect("no 100 Continue");
    let mut idle = TcpStream::connect(s.addr).unwrap();
    idle.write_all(b"GET /.well-known/jwks.json HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut status = [0u8; 12];
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    idle.read_exact(&mut status).unwrap();
    assert_eq!(&status, b"HTTP/1.1 200");
    let mut waiting = TcpStream::connect(s.addr).unwrap();
    waiting
        .write_all(b"GET /.well-known/jwks.json HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let got = read_until_closed(&mut waiting, Duration::from_secs(10))
        .expect("a new connection waited behind the oldest one's request");
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // The request in flight was not cut: it is answered when its body comes.
    busy.write_all(b"{}").unwrap();
    let answer = read_until_closed(&mut busy, Duration::from_secs(30)).expect("no answer");
    assert!(
        answer.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

/// A connection in the middle of a request is not cut to make room: the new one waits until
/// that request is answered, and the old connection closes after it.
#[test]
fn at_the_limit_a_connection_in_a_request_finishes_it_before_giving_way() {
    let (s, _stop) = start_with(ServeOptions {
        max_connections: 1,
        request_timeout: Duration::from_secs(60),
        ..ServeOptions::default()
    });
    let mut holder = TcpStream::connect(s.addr).unwrap();
    holder
        .write_all(
            b"POST /v1/runners/register HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\
              expect: 100-continue\r\n\r\n",
        )
        .unwrap();
    let cont: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
    let mut got = vec![0u8; cont.len()];
    holder
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    holder.read_exact(&mut got).expect("no 100 Continue");
    let mut waiting = TcpStream::connect(s.addr).unwrap();
    waiting
        .write_all(b"GET /.well-known/jwks.json HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    assert!(
        read_until_closed(&mut waiting, Duration::from_millis(700)).is_none(),
        "a connection over the limit was served while the other's request was in flight"
    );
    holder.write_all(b"{}").unwrap();
    let answer = read_until_closed(&mut holder, Duration::from_secs(30))
        .expect("the request in flight was not answered, or its connection not closed after");
    assert!(
        answer.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let got = read_until_closed(&mut waiting, Duration::from_secs(10))
        .expect("the waiting connection was never served");
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
}

#[test]
fn shutdown_lets_the_request_in_flight_finish_then_serve_returns() {
    // A long request deadline: the request must finish (400, not 408) however slowly a
    // loaded host runs the steps below.
    let (s, mut stop) = start_with(ServeOptions {
        request_timeout: Duration::from_secs(30),
        ..quick_timeouts()
    });
    // A request whose body is still on its way when the shutdown comes. With `expect:
    // 100-continue` the server says when its handler starts reading the body, so the stop
    // is sent only once the request is surely in flight (a connection not yet accepted is
    // rightly never served by a server that is stopping).
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.write_all(
        b"POST /v1/runners/register HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\
          expect: 100-continue\r\n\r\n",
    )
    .unwrap();
    let cont: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
    let mut got = vec![0u8; cont.len()];
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    c.read_exact(&mut got).expect("no 100 Continue");
    assert_eq!(got, cont, "{}", String::from_utf8_lossy(&got));
    c.write_all(b"{").unwrap();
    if let Some(tx) = stop.stop.take() {
        tx.send(()).unwrap();
    }
    // The listener is dropped when the shutdown begins: the rest of the body comes after.
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(s.addr).is_ok() {
        assert!(
            Instant::now() < deadline,
            "still listening 30 s after the stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    c.write_all(b"}").unwrap();
    let got = read_until_closed(&mut c, Duration::from_secs(30)).expect("no answer");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(stop.stop(Duration::from_secs(30)), "serve did not return");
    assert!(TcpStream::connect(s.addr).is_err(), "still listening");
}

#[test]
fn a_signed_request_acts_only_on_the_exact_path_it_signed() {
    // The signature covers the request target as sent; the handlers act on the decoded path
    // and ignore the query. A target with a query or a percent escape is refused, so what is
    // signed and what is acted on are the same bytes.
    let s = start();
    let runner = register(&s, "build-7");
    let a = signed_post(&s, &runner, "/v1/runners/lease?job=other", b"{}");
    assert_eq!(a.status, 401, "{}", String::from_utf8_lossy(&a.body));
    assert!(
        a.error().contains("query or percent escape"),
        "{}",
        a.error()
    );
    let job_id = submit(&s, "trusted");
    let lease = signed_post(&s, &runner, "/v1/runners/lease", b"{}");
    assert_eq!(lease.status, 200);
    let escaped = format!(
        "/v1/jobs/{}%{:02X}/result",
        &job_id[..job_id.len() - 1],
        job_id.as_bytes()[job_id.len() - 1]
    );
    let body = br#"{"result":{"status":"succeeded"}}"#;
    let a = signed_post(&s, &runner, &escaped, body);
    assert_eq!(a.status, 401, "{}", String::from_utf8_lossy(&a.body));
    let a = signed_post(&s, &runner, &format!("/v1/jobs/{job_id}/result"), body);
    assert_eq!(a.status, 204, "{}", String::from_utf8_lossy(&a.body));
}

/// A lease request that lists what the runner holds is offered again the job leased to it
/// that it does not list (its answer was lost), the same lease; `{}` and an empty body are
/// answered as before; a malformed list is `400` naming the field, before anything is leased.
#[test]
fn a_lease_request_naming_what_the_runner_holds_gets_back_a_lost_answer_and_a_bad_list_is_refused()
{
    let s = start();
    let runner = register(&s, "build-1");
    let other = register(&s, "build-2");
    let lease = |r: &TestRunner, body: &[u8]| signed_post(&s, r, "/v1/runners/lease", body);
    let job_id = submit(&s, "trusted");
    // Leased as a runner from before asks; suppose this answer never arrived.
    let first = lease(&runner, b"{}");
    assert_eq!(first.status, 200);
    let first: Lease = serde_json::from_slice(&first.body).unwrap();
    assert_eq!(first.job_id, job_id);
    // Asked as before: nothing more (the job is leased, the queue empty).
    assert_eq!(lease(&runner, b"{}").status, 204);
    assert_eq!(lease(&runner, b"").status, 204);
    assert_eq!(lease(&runner, br#"{"holding": null}"#).status, 204);
    // Naming what it holds: the lease comes back whole, the same one.
    let again = lease(&runner, br#"{"holding": []}"#);
    assert_eq!(
        again.status,
        200,
        "{}",
        String::from_utf8_lossy(&again.body)
    );
    let again: Lease = serde_json::from_slice(&again.body).unwrap();
    assert_eq!(again, first);
    let holding = json!({ "holding": [job_id] }).to_string();
    assert_eq!(lease(&runner, holding.as_bytes()).status, 204);
    // Never another runner's.
    assert_eq!(lease(&other, br#"{"holding": []}"#).status, 204);
    // Refused, naming the field; nothing is leased by a refused request.
    let queued = submit(&s, "untrusted");
    let too_many: Vec<String> = (0..=control::MAX_HOLDING)
        .map(|i| format!("job-{i}"))
        .collect();
    let too_many = json!({ "holding": too_many }).to_string();
    for (body, says) in [
        (&b"holding"[..], "not JSON"),
        (b"[]", "must be a JSON object"),
        (
            br#"{"holding": "all"}"#,
            "holding: must be a list of job ids",
        ),
        (
            br#"{"holding": ["job-1", 2]}"#,
            "holding[1]: must be a job id",
        ),
        (br#"{"holding": ["../../x"]}"#, "holding[0]: not a job id"),
        (too_many.as_bytes(), "holding: 257 job ids, at most 256"),
    ] {
        let a = lease(&runner, body);
        assert_eq!(a.status, 400, "{}", String::from_utf8_lossy(&a.body));
        assert!(
            a.error()
                .starts_with("request body is not a valid lease request: ")
                && a.error().contains(says),
            "{}",
            a.error()
        );
    }
    let state = |id: &str| {
        let auth = format!("Bearer {}", s.admin);
        http(
            s.addr,
            "GET",
            &format!("/v1/jobs/{id}"),
            &[("authorization", &auth)],
            b"",
        )
        .json()
    };
    assert_eq!(state(&queued)["state"], "queued");
    // The report a runner makes of a lease it cannot read (no logs, no outputs, nothing
    // from a spec) is recorded as the job's result.
    let reason = "runner build-1 (bulwark 0.1.0) cannot read this job's lease, so nothing of \
                  the job ran; upgrade bulwark on that runner";
    let report = json!({"result": {
        "status": "runner-error", "reason": reason, "trust": "trusted", "job": "build",
    }});
    let a = signed_post(
        &s,
        &runner,
        &format!("/v1/jobs/{job_id}/result"),
        report.to_string().as_bytes(),
    );
    assert_eq!(a.status, 204, "{}", String::from_utf8_lossy(&a.body));
    let job = state(&job_id);
    assert_eq!(job["state"], "finished");
    assert_eq!(job["result"]["result"]["status"], "runner-error");
    assert_eq!(job["result"]["result"]["reason"], reason);
    // Finished: offered to no one again; the queued job is leased as usual.
    let next = lease(&runner, br#"{"holding": []}"#);
    assert_eq!(next.status, 200);
    assert_eq!(next.json()["job_id"], queued);
}

fn sha(bytes: &[u8]) -> String {
    auth::sha256_hex(bytes)
}

/// The signing headers of `PUT path` by `r`, signed over `digest` as the body's hash, and
/// that digest ([`h::CONTENT_SHA256`]), as the daemon sends them.
fn put_headers(r: &TestRunner, path: &str, digest: &str) -> Vec<(&'static str, String)> {
    let nonce = auth::hex(&auth::random_bytes::<16>().unwrap());
    let sh =
        crate::auth::tests::sign_digest(&r.key, &r.id, "PUT", path, state::now(), &nonce, digest);
    vec![
        (h::RUNNER, sh.runner_id),
        (h::TIMESTAMP, sh.timestamp),
        (h::NONCE, sh.nonce),
        (h::SIGNATURE, sh.signature),
        (h::CONTENT_SHA256, digest.to_owned()),
    ]
}

/// Headers as lines, for a request written by hand.
/// A request head (`request_line` like `PUT /path`) closing the connection after its answer,
/// with a body of `len` bytes and `headers`.
fn closing_head(request_line: &str, len: usize, headers: &[(&'static str, String)]) -> String {
    format!(
        "{request_line} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: {len}\r\n{}\r\n",
        header_lines(headers)
    )
}

fn header_lines(headers: &[(&'static str, String)]) -> String {
    headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect()
}

/// `PUT path` with `headers` and `body`, through [`http`].
fn put(s: &Server, path: &str, headers: &[(&'static str, String)], body: &[u8]) -> Answer {
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    http(s.addr, "PUT", path, &headers, body)
}

/// `PUT /v1/jobs/{job}/blobs/{digest}` signed by `r` over `digest`, with `body`.
fn upload(s: &Server, r: &TestRunner, job: &str, digest: &str, body: &[u8]) -> Answer {
    let path = format!("/v1/jobs/{job}/blobs/{digest}");
    put(s, &path, &put_headers(r, &path, digest), body)
}

fn leased_job(s: &Server, trust: &str) -> (TestRunner, String) {
    let runner = register(s, "build-1");
    let job_id = submit(s, trust);
    let a = signed_post(s, &runner, "/v1/runners/lease", b"");
    assert_eq!(a.status, 200);
    (runner, job_id)
}

fn stored_blobs(s: &Server, job: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(s.state.join(outputs::OUTPUTS_DIR).join(job))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn outputs_are_uploaded_by_the_lease_holder_held_to_their_digest_and_served_to_the_admin() {
    let s = start();
    let (runner, job) = leased_job(&s, "untrusted");
    let (app, other, parked) = (&b"the release binary"[..], &b"checksums"[..], &b"junk"[..]);

    let a = upload(&s, &runner, &job, &sha(app), app);
    assert_eq!(a.status, 204, "{}", String::from_utf8_lossy(&a.body));
    // A retry whose answer was lost: accepted, nothing changes.
    assert_eq!(upload(&s, &runner, &job, &sha(app), app).status, 204);
    // Bytes other than the ones signed for: refused, nothing stored.
    let forged = b"the release binarX";
    let a = upload(&s, &runner, &job, &sha(other), &forged[..other.len()]);
    assert_eq!(a.status, 400);
    assert!(
        a.error().contains("does not hash to sha256"),
        "{}",
        a.error()
    );
    assert_eq!(upload(&s, &runner, &job, &sha(parked), parked).status, 204);
    assert_eq!(stored_blobs(&s, &job), {
        let mut v = vec![sha(app), sha(parked)];
        v.sort();
        v
    });

    // A result listing an output that never arrived is refused, naming it.
    let result_path = format!("/v1/jobs/{job}/result");
    let report = json!({
        "result": {"status": "succeeded", "outputs": [
            {"path": "dist/app", "size": app.len(), "sha256": sha(app)},
            {"path": "dist/SHA256SUMS", "size": other.len(), "sha256": sha(other)},
        ]},
        "provenance": format!("{}\n", crate::testutil::provenance_line(&sha(app), "0123456789", &"1".repeat(64), &"3".repeat(64))),
    });
    let a = signed_post(&s, &runner, &result_path, report.to_string().as_bytes());
    assert_eq!(a.status, 400);
    assert!(
        a.error().contains("\"dist/SHA256SUMS\"") && a.error().contains("was not uploaded"),
        "{}",
        a.error()
    );
    assert_eq!(upload(&s, &runner, &job, &sha(other), other).status, 204);
    let a = signed_post(&s, &runner, &result_path, report.to_string().as_bytes());
    assert_eq!(a.status, 204, "{}", String::from_utf8_lossy(&a.body));
    // What the result does not list is not kept.
    assert_eq!(stored_blobs(&s, &job), {
        let mut v = vec![sha(app), sha(other)];
        v.sort();
        v
    });
    // The lease is over: no more uploads.
    assert_eq!(upload(&s, &runner, &job, &sha(parked), parked).status, 403);

    let auth = format!("Bearer {}", s.admin);
    let get = |path: &str, auth: &str| {
        let mut s2 = TcpStream::connect(s.addr).unwrap();
        write!(
            s2,
            "GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\nauthorization: {auth}\r\n\r\n"
        )
        .unwrap();
        let mut raw = Vec::new();
        s2.read_to_end(&mut raw).unwrap();
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        (
            String::from_utf8(raw[..split].to_vec()).unwrap(),
            raw[split + 4..].to_vec(),
        )
    };
    let (head, body) = get(&format!("/v1/jobs/{job}/outputs/dist/app"), &auth);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, app);
    let b64 = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        sha2::Sha256::digest(app),
    );
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains(&format!(
            "repr-digest: sha-256=:{}:",
            b64.to_ascii_lowercase()
        )),
        "{head}"
    );
    assert!(
        head.contains(&format!("etag: \"sha256:{}\"", sha(app))),
        "{head}"
    );
    assert!(
        head.contains(&format!("content-length: {}", app.len())),
        "{head}"
    );
    let (head, body) = get(&format!("/v1/jobs/{job}/provenance"), &auth);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        body,
        format!(
            "{}\n",
            crate::testutil::provenance_line(
                &sha(app),
                "0123456789",
                &"1".repeat(64),
                &"3".repeat(64)
            )
        )
        .as_bytes()
    );
    // The fleet's inventory answers for it: by the artifact's digest, by the tool's, by the
    // commit; a bad query is refused; the admin token is needed.
    let (head, body) = get(&format!("/v1/inventory?digest={}", sha(app)), &auth);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let found: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(found["hits"][0]["job_id"], job.as_str(), "{found}");
    assert_eq!(found["hits"][0]["artifact"]["name"], "dist/app", "{found}");
    assert_eq!(found["cut"], false);
    let (_, body) = get(
        &format!(
            "/v1/inventory?commit=0123456&digest=sha256:{}",
            "1".repeat(64)
        ),
        &auth,
    );
    let found: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(found["hits"].as_array().unwrap().len(), 1, "{found}");
    let (_, body) = get("/v1/inventory?commit=fffffff", &auth);
    let found: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(found["hits"], json!([]));
    // By the source repository, percent-encoded, as a prefix: the dependency that matched.
    let (_, body) = get(
        "/v1/inventory?uri=git%2Bhttps%3A%2F%2Fgit.example%2F*",
        &auth,
    );
    let found: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(found["hits"][0]["job_id"], job.as_str(), "{found}");
    assert_eq!(
        found["hits"][0]["matched"][0]["uri"], "git+https://git.example/app.git",
        "{found}"
    );
    let (_, body) = get("/v1/inventory?uri=https://tools.example/jq", &auth);
    let found: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(found["hits"], json!([]), "an exact uri is exact");
    for bad in [
        "/v1/inventory",
        "/v1/inventory?commit=01",
        "/v1/inventory?digest=x&digest=y",
        "/v1/inventory?name=jq",
        "/v1/inventory?uri=*",
        "/v1/inventory?uri=a%1Bb",
    ] {
        let (head, _) = get(bad, &auth);
        assert!(head.starts_with("HTTP/1.1 400"), "{bad}: {head}");
    }
    let (head, _) = get("/v1/inventory?commit=0123456", "Bearer wrong");
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    let (head, body) = get(&format!("/v1/jobs/{job}/outputs/dist/nothing"), &auth);
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    assert!(
        String::from_utf8_lossy(&body).contains("has no output \\\"dist/nothing\\\""),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (head, _) = get(
        &format!("/v1/jobs/{job}/outputs/dist/app"),
        "Bearer bwadm_wrong",
    );
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
}

#[test]
fn uploads_from_another_runner_over_the_limit_without_a_length_or_signed_for_other_bytes_are_refused(
) {
    let (s, _stop) = start_with_limits(
        ServeOptions::default(),
        outputs::OutputLimits {
            max_job_bytes: outputs::BLOCK,
            max_job_files: 100,
            min_free_bytes: 0,
        },
    );
    let (holder, job) = leased_job(&s, "trusted");
    let stranger = register(&s, "build-2");
    let small = b"0123456789";

    let a = upload(&s, &stranger, &job, &sha(small), small);
    assert_eq!(a.status, 403, "{}", a.error());

    let big = [7u8; outputs::BLOCK as usize + 1];
    let a = upload(&s, &holder, &job, &sha(&big), &big);
    assert_eq!(a.status, 413);
    assert!(
        a.error().contains("limit of 4096 bytes per job"),
        "{}",
        a.error()
    );

    // Signed for one digest, sent under another path: the signature does not cover it.
    let path = format!("/v1/jobs/{job}/blobs/{}", sha(small));
    let sh = put_headers(&holder, &path, &sha(b"other"));
    let a = put(&s, &path, &sh, small);
    assert_eq!(a.status, 401);

    // No Content-Length (chunked): refused before anything is reserved or read.
    let sh = put_headers(&holder, &path, &sha(small));
    let mut c = TcpStream::connect(s.addr).unwrap();
    write!(
        c,
        "PUT {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ntransfer-encoding: chunked\r\n{}\r\na\r\n0123456789\r\n0\r\n\r\n",
        header_lines(&sh)
    )
    .unwrap();
    let mut raw = String::new();
    c.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 411"), "{raw}");
    assert!(stored_blobs(&s, &job).is_empty());

    assert_eq!(upload(&s, &holder, &job, &sha(small), small).status, 204);
}

#[test]
fn an_upload_that_stalls_is_cut_and_leaves_nothing_behind() {
    let s = start();
    let (runner, job) = leased_job(&s, "untrusted");
    let body = [1u8; 4096];
    let path = format!("/v1/jobs/{job}/blobs/{}", sha(&body));
    let sh = put_headers(&runner, &path, &sha(&body));
    let mut c = TcpStream::connect(s.addr).unwrap();
    write!(
        c,
        "PUT {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 4096\r\n{}\r\n",
        header_lines(&sh)
    )
    .unwrap();
    c.write_all(&body[..1000]).unwrap();
    // Then nothing: the idle limit (1 s in these tests) cuts it.
    let raw = read_until_closed(&mut c, Duration::from_secs(10)).expect("closed");
    let raw = String::from_utf8_lossy(&raw);
    assert!(raw.starts_with("HTTP/1.1 408"), "{raw}");
    assert!(
        raw.contains("request body not received in time: no byte for 1 s"),
        "{raw}"
    );
    assert!(
        stored_blobs(&s, &job).is_empty(),
        "{:?}",
        stored_blobs(&s, &job)
    );
}

#[test]
fn a_results_logs_must_be_uploaded_first_and_are_served_to_the_admin_as_text() {
    let s = start();
    let (runner, job) = leased_job(&s, "untrusted");
    let log = b"make: building\nok\n";
    let result_path = format!("/v1/jobs/{job}/result");
    let report = |name: &str| {
        json!({
            "result": {"status": "failed", "outputs": []},
            "logs": [{"name": name, "size": log.len(), "sha256": sha(log)}],
        })
        .to_string()
    };
    // Only the two known logs, each once.
    let a = signed_post(
        &s,
        &runner,
        &result_path,
        report("../coordinator.db").as_bytes(),
    );
    assert_eq!(a.status, 400);
    assert!(a.error().starts_with("logs[0].name:"), "{}", a.error());
    let twice = json!({
        "result": {"status": "failed"},
        "logs": [
            {"name": "job.log", "size": 1, "sha256": sha(b"a")},
            {"name": "job.log", "size": 1, "sha256": sha(b"b")},
        ],
    });
    let a = signed_post(&s, &runner, &result_path, twice.to_string().as_bytes());
    assert_eq!(a.status, 400);
    assert!(a.error().contains("listed twice"), "{}", a.error());
    // One path, two contents: which would a download get? Refused.
    let one_path = json!({"result": {"status": "succeeded", "outputs": [
        {"path": "dist/app", "size": 1, "sha256": sha(b"a")},
        {"path": "dist/app", "size": 1, "sha256": sha(b"b")},
    ]}});
    let a = signed_post(&s, &runner, &result_path, one_path.to_string().as_bytes());
    assert_eq!(a.status, 400);
    assert_eq!(
        a.error(),
        "result.outputs[1].path: \"dist/app\" is listed twice"
    );
    // Listed but not uploaded: refused, naming it.
    let a = signed_post(&s, &runner, &result_path, report("job.log").as_bytes());
    assert_eq!(a.status, 400);
    assert!(a.error().contains("\"job.log\""), "{}", a.error());
    assert_eq!(upload(&s, &runner, &job, &sha(log), log).status, 204);
    let a = signed_post(&s, &runner, &result_path, report("job.log").as_bytes());
    assert_eq!(a.status, 204, "{}", String::from_utf8_lossy(&a.body));
    // Kept (the result lists it), and served.
    assert_eq!(stored_blobs(&s, &job), vec![sha(log)]);
    let auth = format!("Bearer {}", s.admin);
    let a = http(
        s.addr,
        "GET",
        &format!("/v1/jobs/{job}/logs/job.log"),
        &[("authorization", &auth)],
        b"",
    );
    assert_eq!(a.status, 200);
    assert_eq!(a.body, log);
    assert_eq!(a.content_type.as_deref(), Some("text/plain; charset=utf-8"));
    let a = http(
        s.addr,
        "GET",
        &format!("/v1/jobs/{job}/logs/egress.log"),
        &[("authorization", &auth)],
        b"",
    );
    assert_eq!(a.status, 404);
    assert!(a.error().contains("no log \"egress.log\""), "{}", a.error());
}

/// `PUT /v1/jobs/{job}/live-log/{offset}` signed by `r`, with `body`.
fn live(s: &Server, r: &TestRunner, job: &str, offset: u64, body: &[u8]) -> Answer {
    let path = format!("/v1/jobs/{job}/live-log/{offset}");
    put(s, &path, &put_headers(r, &path, &sha(body)), body)
}

/// `GET /v1/jobs/{job}/logs/job.log` as the admin, with a `Range` header if given.
fn admin_log(s: &Server, job: &str, range: Option<&str>) -> Answer {
    let auth = format!("Bearer {}", s.admin);
    let mut headers = vec![("authorization", auth.as_str())];
    if let Some(r) = range {
        headers.push(("range", r));
    }
    http(
        s.addr,
        "GET",
        &format!("/v1/jobs/{job}/logs/job.log"),
        &headers,
        b"",
    )
}

#[test]
fn a_running_jobs_log_grows_by_offset_and_is_followed_by_range_until_the_result_replaces_it() {
    let s = start();
    let (runner, job) = leased_job(&s, "untrusted");
    let a = admin_log(&s, &job, None);
    assert_eq!(a.status, 404);
    assert!(
        a.error().contains("no log (queued or nothing written yet"),
        "{}",
        a.error()
    );
    assert_eq!(live(&s, &runner, &job, 0, b"step 1\n").status, 204);
    // A retry whose answer was lost: nothing is written twice; only its new tail is kept.
    assert_eq!(live(&s, &runner, &job, 0, b"step 1\n").status, 204);
    assert_eq!(live(&s, &runner, &job, 0, b"step 1\nstep 2\n").status, 204);
    // A gap is refused, naming what is held.
    let a = live(&s, &runner, &job, 99, b"lost");
    assert_eq!(a.status, 409);
    assert!(a.error().contains("has 14 bytes"), "{}", a.error());
    for bad in ["-1", "1e3", "+5", "99999999999999999999"] {
        let path = format!("/v1/jobs/{job}/live-log/{bad}");
        let a = put(&s, &path, &put_headers(&runner, &path, &sha(b"x")), b"x");
        assert_eq!(a.status, 400, "{bad}");
    }
    // Another runner cannot write into it.
    let other = register(&s, "build-2");
    assert_eq!(live(&s, &other, &job, 14, b"forged\n").status, 403);
    let a = admin_log(&s, &job, None);
    assert_eq!(a.status, 200);
    assert_eq!(a.body, b"step 1\nstep 2\n");
    assert_eq!(a.header("bulwark-log-complete"), Some("false"));
    assert_eq!(a.header("cache-control"), Some("no-store"));
    assert_eq!(a.header("etag"), None, "a growing log has no digest");
    // Following: from the length held, then nothing new (416, with the length).
    let a = admin_log(&s, &job, Some("bytes=7-"));
    assert_eq!((a.status, &a.body[..]), (206, &b"step 2\n"[..]));
    assert_eq!(a.header("content-range"), Some("bytes 7-13/14"));
    let a = admin_log(&s, &job, Some("bytes=14-"));
    assert_eq!(a.status, 416);
    assert_eq!(a.header("content-range"), Some("bytes */14"));
    assert_eq!(a.header("accept-ranges"), Some("bytes"));
    let a = admin_log(&s, &job, Some("bytes=-3"));
    assert_eq!((a.status, &a.body[..]), (206, &b" 2\n"[..]));
    let a = admin_log(&s, &job, Some("bytes=0-3"));
    assert_eq!((a.status, &a.body[..]), (206, &b"step"[..]));
    // Forms a server may ignore get the whole log.
    for ignored in ["bytes=0-1,4-5", "lines=1-", "bytes=5-2", "bytes=x-"] {
        let a = admin_log(&s, &job, Some(ignored));
        assert_eq!((a.status, a.body.len()), (200, 14), "{ignored}");
    }
    // The result's job.log replaces it: the live one is gone and no append lands after.
    let log = b"step 1\nstep 2\ndone\n";
    assert_eq!(upload(&s, &runner, &job, &sha(log), log).status, 204);
    let report = json!({
        "result": {"status": "succeeded", "outputs": []},
        "logs": [{"name": "job.log", "size": log.len(), "sha256": sha(log)}],
    });
    let result_path = format!("/v1/jobs/{job}/result");
    let a = signed_post(&s, &runner, &result_path, report.to_string().as_bytes());
    assert_eq!(a.status, 204);
    assert_eq!(stored_blobs(&s, &job), vec![sha(log)]);
    let a = live(&s, &runner, &job, 14, b"late\n");
    assert_eq!(a.status, 403);
    assert!(a.error().contains("lease is over"), "{}", a.error());
    assert_eq!(stored_blobs(&s, &job), vec![sha(log)]);
    let a = admin_log(&s, &job, None);
    assert_eq!((a.status, &a.body[..]), (200, &log[..]));
    assert_eq!(a.header("bulwark-log-complete"), Some("true"));
    assert_eq!(
        a.header("etag"),
        Some(format!("\"sha256:{}\"", sha(log)).as_str())
    );
    let a = admin_log(&s, &job, Some("bytes=14-"));
    assert_eq!((a.status, &a.body[..]), (206, &b"done\n"[..]));
    // The digest is of the whole log, also in a partial answer.
    assert!(a.header("repr-digest").is_some());
    // If-Range: the range only if the log is still the one named.
    let auth = format!("Bearer {}", s.admin);
    let etag = format!("\"sha256:{}\"", sha(log));
    for (if_range, status) in [(etag.as_str(), 206), ("\"sha256:0000\"", 200)] {
        let a = http(
            s.addr,
            "GET",
            &format!("/v1/jobs/{job}/logs/job.log"),
            &[
                ("authorization", &auth),
                ("range", "bytes=14-"),
                ("if-range", if_range),
            ],
            b"",
        );
        assert_eq!(a.status, status, "{if_range}");
    }
}

#[test]
fn a_live_log_stops_at_its_cap() {
    let s = start();
    let (runner, job) = leased_job(&s, "untrusted");
    let chunk = vec![b'x'; MAX_LIVE_LOG_APPEND];
    // One append is at most MAX_LIVE_LOG_APPEND bytes (it is written under the database lock).
    let too_big = [&chunk[..], b"x"].concat();
    let a = live(&s, &runner, &job, 0, &too_big);
    assert_eq!(
        (a.status, a.error()),
        (413, intake::too_large(MAX_LIVE_LOG_APPEND))
    );
    let mut offset = 0;
    while offset < outputs::MAX_LIVE_LOG_BYTES {
        assert_eq!(live(&s, &runner, &job, offset, &chunk).status, 204);
        offset += chunk.len() as u64;
    }
    let a = live(&s, &runner, &job, offset, b"one more\n");
    assert_eq!(a.status, 413);
    assert!(
        a.error().contains("arrives with the result"),
        "{}",
        a.error()
    );
    let a = admin_log(&s, &job, Some("bytes=-1"));
    assert_eq!(
        a.header("content-range"),
        Some(format!("bytes {}-{}/{}", offset - 1, offset - 1, offset).as_str())
    );
}

#[test]
fn an_upload_still_in_flight_when_the_result_is_recorded_is_not_kept() {
    let s = start();
    let (runner, job) = leased_job(&s, "untrusted");
    let body = [3u8; 4096];
    let path = format!("/v1/jobs/{job}/blobs/{}", sha(&body));
    let sh = put_headers(&runner, &path, &sha(&body));
    let mut c = TcpStream::connect(s.addr).unwrap();
    write!(
        c,
        "PUT {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 4096\r\n{}\r\n",
        header_lines(&sh)
    )
    .unwrap();
    c.write_all(&body[..1000]).unwrap();
    // Authenticated and being received when the result, which does not list it, is recorded.
    std::thread::sleep(Duration::from_millis(300));
    let report = json!({"result": {"status": "succeeded", "outputs": []}});
    let a = signed_post(
        &s,
        &runner,
        &format!("/v1/jobs/{job}/result"),
        report.to_string().as_bytes(),
    );
    assert_eq!(a.status, 204, "{}", String::from_utf8_lossy(&a.body));
    c.write_all(&body[1000..]).unwrap();
    let raw = read_until_closed(&mut c, Duration::from_secs(10)).expect("closed");
    let raw = String::from_utf8_lossy(&raw);
    assert!(!raw.starts_with("HTTP/1.1 2"), "{raw}");
    // Nothing the result does not list is kept, whenever it arrived.
    assert!(
        stored_blobs(&s, &job).is_empty(),
        "{:?}",
        stored_blobs(&s, &job)
    );
}

#[test]
fn a_full_disk_is_answered_507_without_the_store_path() {
    let e = OutputError::Io {
        what: "writing",
        path: "/srv/bulwark/state/outputs/job-x/.upload-0123".into(),
        source: std::io::Error::from_raw_os_error(libc::ENOSPC),
    };
    let a = ApiError::from(e);
    assert_eq!(a.status(), StatusCode::INSUFFICIENT_STORAGE);
    assert!(!a.message.contains("/srv/bulwark"), "{}", a.message);
}

#[test]
fn what_a_job_that_never_reports_uploaded_is_swept_once_its_lease_is_over() {
    let (s, _stop) = start_with_limits(
        ServeOptions {
            sweep_interval: Duration::from_millis(100),
            ..ServeOptions::default()
        },
        outputs::OutputLimits::default(),
    );
    let (runner, parked) = leased_job(&s, "untrusted");
    let (other, live) = leased_job(&s, "untrusted");
    assert_eq!(
        upload(&s, &runner, &parked, &sha(b"junk"), b"junk").status,
        204
    );
    assert_eq!(
        upload(&s, &other, &live, &sha(b"kept"), b"kept").status,
        204
    );
    // The lease of `parked` runs out without a result.
    let conn = rusqlite::Connection::open(s.state.join(state::DB_NAME)).unwrap();
    conn.execute(
        "UPDATE jobs SET lease_expires_at = 1 WHERE id = ?1",
        [&parked],
    )
    .unwrap();
    // Swept whole: its directory goes (after its files, so it is what is waited for).
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.state.join(outputs::OUTPUTS_DIR).join(&parked).exists() {
        assert!(
            Instant::now() < deadline,
            "the lost job's uploads were never swept"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Under a live lease: kept.
    assert_eq!(stored_blobs(&s, &live), vec![sha(b"kept")]);
    let state: String = conn
        .query_row("SELECT state FROM jobs WHERE id = ?1", [&live], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(state, "leased");
}

#[test]
fn only_the_admin_cancels_and_only_the_lease_holder_hears_of_it() {
    let s = start();
    let (runner, job) = leased_job(&s, "untrusted");
    let auth = format!("Bearer {}", s.admin);
    let cancel = |id: &str, auth: &str| {
        http(
            s.addr,
            "POST",
            &format!("/v1/jobs/{id}/cancel"),
            &[("authorization", auth)],
            b"",
        )
    };
    assert_eq!(cancel(&job, "Bearer bwadm_not-it").status, 401);
    let heartbeat = format!("/v1/jobs/{job}/heartbeat");
    let a = signed_post(&s, &runner, &heartbeat, b"");
    assert_eq!((a.status, a.json()["cancel"].clone()), (200, json!(false)));
    let a = cancel(&job, &auth);
    assert_eq!(
        (a.status, a.json()["state"].clone()),
        (200, json!("leased"))
    );
    let a = signed_post(&s, &runner, &heartbeat, b"");
    assert_eq!((a.status, a.json()["cancel"].clone()), (200, json!(true)));
    let other = register(&s, "build-2");
    assert_eq!(signed_post(&s, &other, &heartbeat, b"").status, 403);
    let a = cancel("job-ffffffffffffffffffffffffffffffff", &auth);
    assert_eq!(a.status, 404);
    assert!(a.error().contains("not found"), "{}", a.error());
    let a = http(
        s.addr,
        "GET",
        &format!("/v1/jobs/{job}"),
        &[("authorization", &auth)],
        b"",
    );
    assert!(a.json()["cancel_requested_at"].is_u64());
}

/// The new key's proof for a rekey of `runner_id` to `pem`, signed by `by`.
fn rekey_proof(by: &SigningKey, runner_id: &str, pem: &str) -> String {
    use p256::ecdsa::signature::Signer as _;
    let input = control::rekey_proof_input(runner_id, pem).unwrap();
    let signature: p256::ecdsa::Signature = by.sign(&input);
    base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes())
}

#[test]
fn a_runner_rekeys_proving_it_holds_the_new_key_and_its_old_key_stops_working_at_once() {
    let s = start();
    let mut runner = register(&s, "build-7");
    let lease = |r: &TestRunner| signed_post(&s, r, "/v1/runners/lease", b"").status;
    // The old key is cached by the server from here on.
    assert_eq!(lease(&runner), 204);
    let new = runner_key();
    let pem = keys::public_key_pem(new.verifying_key()).unwrap();
    let body = |pem: &str, proof: &str| {
        json!({"public_key": pem, "proof": proof})
            .to_string()
            .into_bytes()
    };
    let good = body(&pem, &rekey_proof(&new, &runner.id, &pem));
    let other_pem = keys::public_key_pem(runner_key().verifying_key()).unwrap();
    for (bad, why) in [
        (
            body(&pem, &rekey_proof(&runner.key, &runner.id, &pem)),
            "proof: the new key's signature",
        ),
        (
            body(&pem, &rekey_proof(&new, "runner-someone-else", &pem)),
            "proof: the new key's signature",
        ),
        // A key someone else holds, with a proof by the key the runner holds.
        (
            body(&other_pem, &rekey_proof(&new, &runner.id, &other_pem)),
            "proof: the new key's signature",
        ),
        (body(&pem, "!!not base64"), "proof: not base64"),
        (
            body(
                "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
                "AAAA",
            ),
            "public_key",
        ),
        (
            json!({"public_key": pem, "proof": "AAAA", "also": 1})
                .to_string()
                .into_bytes(),
            "unknown field",
        ),
    ] {
        let a = signed_post(&s, &runner, "/v1/runners/rekey", &bad);
        assert_eq!(a.status, 400, "{why}: {}", String::from_utf8_lossy(&a.body));
        assert!(a.error().contains(why), "{why}: {}", a.error());
    }
    // Signed with the new key before it is the runner's: refused as any forged request.
    let early = TestRunner {
        id: runner.id.clone(),
        key: new.clone(),
    };
    assert_eq!(
        signed_post(&s, &early, "/v1/runners/rekey", &good).status,
        401
    );
    assert_eq!(lease(&runner), 204, "nothing refused changed the key");
    let a = signed_post(&s, &runner, "/v1/runners/rekey", &good);
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["runner_id"], runner.id.as_str());
    // The new key works at once (the old one was cached), and the old one is refused.
    let old = std::mem::replace(&mut runner.key, new);
    assert_eq!(lease(&runner), 204);
    let a = signed_post(
        &s,
        &TestRunner {
            id: runner.id.clone(),
            key: old,
        },
        "/v1/runners/lease",
        b"",
    );
    assert_eq!(a.status, 401);
    assert!(
        a.error().contains("signature does not verify"),
        "{}",
        a.error()
    );
    // Asking again with the new key (the first answer was lost) is answered the same.
    let a = signed_post(&s, &runner, "/v1/runners/rekey", &good);
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(lease(&runner), 204);
}

/// A result after the lease ended is `410`, not the `409` of a second result: a runner
/// retrying its report takes `409` for "an earlier attempt arrived" and would log a lost job
/// as reported.
#[test]
fn a_result_after_the_lease_ended_is_gone_not_a_conflict() {
    let s = start();
    let (runner, job) = leased_job(&s, "untrusted");
    // The lease ran out long ago (the database as another process, the operator's, sees it).
    rusqlite::Connection::open(s.state.join(crate::state::DB_NAME))
        .unwrap()
        .execute(
            "UPDATE jobs SET lease_expires_at = ?1 WHERE id = ?2",
            rusqlite::params![1i64, job],
        )
        .unwrap();
    let report = json!({"result": {"status": "succeeded"}});
    let a = signed_post(
        &s,
        &runner,
        &format!("/v1/jobs/{job}/result"),
        report.to_string().as_bytes(),
    );
    assert_eq!(a.status, 410, "{}", String::from_utf8_lossy(&a.body));
    let rec = http(
        s.addr,
        "GET",
        &format!("/v1/jobs/{job}"),
        &[("authorization", &format!("Bearer {}", s.admin))],
        b"",
    );
    assert_eq!(rec.json()["state"], "lost");
}

/// A job spec whose pretty JSON (as the daemon writes it for `bulwark run`) is just under the
/// runner's 1 MiB: the largest spec a runner takes.
fn largest_runnable_job() -> Value {
    let mut job = job_body("untrusted");
    job["spec"]["steps"] = (0..16)
        .map(|i| json!({"name": format!("step-{i}"), "run": "x".repeat(64_000)}))
        .collect();
    let pretty = serde_json::to_vec_pretty(&job["spec"]).unwrap().len();
    assert!((1_000_000..=1 << 20).contains(&pretty), "{pretty}");
    job
}

#[test]
fn each_route_reads_at_most_its_own_body_limit_and_the_refusal_names_it() {
    let s = start();
    let runner = register(&s, "build-7");
    let error = |a: &Answer| (a.status, a.error());
    let over = |limit: usize| vec![b' '; limit + 1];
    let small = intake::too_large(MAX_SMALL_BODY_BYTES);
    // Registration, unsigned, and every small signed request.
    let a = http(
        s.addr,
        "POST",
        "/v1/runners/register",
        &[],
        &over(MAX_SMALL_BODY_BYTES),
    );
    assert_eq!(error(&a), (413, small.clone()));
    for path in [
        "/v1/runners/lease",
        "/v1/runners/rekey",
        "/v1/jobs/job-0123456789abcdef0123456789abcdef/heartbeat",
        "/v1/jobs/job-0123456789abcdef0123456789abcdef/id-token",
    ] {
        let a = signed_post(&s, &runner, path, &over(MAX_SMALL_BODY_BYTES));
        assert_eq!(error(&a), (413, small.clone()), "{path}");
    }
    // A body just within is read, and judged as JSON.
    let a = http(
        s.addr,
        "POST",
        "/v1/runners/register",
        &[],
        &vec![b' '; MAX_SMALL_BODY_BYTES],
    );
    assert_eq!(a.status, 400);
    assert!(a
        .error()
        .starts_with("request body is not a valid registration request"));
    // A result report keeps MAX_BODY_BYTES: a megabyte is read and parsed, one byte more
    // than the limit is refused naming it.
    let result = "/v1/jobs/job-0123456789abcdef0123456789abcdef/result";
    let a = signed_post(&s, &runner, result, &vec![b' '; 1 << 20]);
    assert_eq!(a.status, 400);
    assert!(a
        .error()
        .starts_with("request body is not a valid result report"));
    let a = signed_post(&s, &runner, result, &over(MAX_BODY_BYTES));
    assert_eq!(error(&a), (413, intake::too_large(MAX_BODY_BYTES)));
    // A submission fits the largest spec a runner takes, sent pretty, and no more than its
    // own limit.
    let auth = format!("Bearer {}", s.admin);
    let admin = [("authorization", auth.as_str())];
    let big = serde_json::to_vec_pretty(&largest_runnable_job()).unwrap();
    let a = http(s.addr, "POST", "/v1/jobs", &admin, &big);
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    let a = http(
        s.addr,
        "POST",
        "/v1/jobs",
        &admin,
        &over(MAX_SUBMIT_BODY_BYTES),
    );
    assert_eq!(error(&a), (413, intake::too_large(MAX_SUBMIT_BODY_BYTES)));
}

/// Sends a request's head announcing a body of [`MAX_BODY_BYTES`], and none of the body;
/// what the server answered before closing the connection, or `None` when it still waited
/// after `patience`.
fn answer_to_the_head_alone(
    s: &Server,
    request_line: &str,
    headers: &[(&'static str, String)],
    patience: Duration,
) -> Option<(u16, String)> {
    answer_to_a_head_announcing(s, request_line, headers, MAX_BODY_BYTES, patience)
}

/// [`answer_to_the_head_alone`] for a head announcing `len` bytes of body.
fn answer_to_a_head_announcing(
    s: &Server,
    request_line: &str,
    headers: &[(&'static str, String)],
    len: usize,
    patience: Duration,
) -> Option<(u16, String)> {
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.write_all(
        format!(
            "{request_line} HTTP/1.1\r\nhost: x\r\ncontent-length: {len}\r\n{}\r\n",
            header_lines(headers)
        )
        .as_bytes(),
    )
    .unwrap();
    let got = read_until_closed(&mut c, patience)?;
    let text = String::from_utf8_lossy(&got);
    let (head, body) = text.split_once("\r\n\r\n").expect("no answer");
    let e: ErrorBody = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"));
    Some((head[9..12].parse().unwrap(), e.error))
}

#[test]
fn a_body_is_not_read_before_its_headers_pass_the_checks_that_need_none() {
    // A long request deadline: an answer within the test's patience cannot be its 408.
    let (s, _stop) = start_with(ServeOptions {
        request_timeout: Duration::from_secs(60),
        ..ServeOptions::default()
    });
    let patience = Duration::from_secs(5);
    let result = "/v1/jobs/job-0123456789abcdef0123456789abcdef/result";
    let post = format!("POST {result}");
    let nonce = || auth::hex(&auth::random_bytes::<16>().unwrap());
    // Each signed over an empty body, whose digest they name.
    let headers = |sh: crate::auth::SignedHeaders| {
        vec![
            (h::RUNNER, sh.runner_id),
            (h::TIMESTAMP, sh.timestamp),
            (h::NONCE, sh.nonce),
            (h::SIGNATURE, sh.signature),
            (h::CONTENT_SHA256, sha(b"")),
        ]
    };
    let runner = register(&s, "build-7");
    let removed = register(&s, "build-8");
    statedir::open_db(&s.state)
        .unwrap()
        .remove_runner(&removed.id, state::now())
        .unwrap();
    let stranger = sign(
        &runner_key(),
        "runner-nobody",
        "POST",
        result,
        state::now(),
        &nonce(),
        b"",
    );
    let unknown = |id: &str| format!("signed request refused: runner {id} is unknown or removed");
    // What is refused, the request line, its headers, the status and the error's start.
    type Case = (
        &'static str,
        String,
        Vec<(&'static str, String)>,
        u16,
        String,
    );
    let cases: Vec<Case> = vec![
        (
            "no signing headers",
            post.clone(),
            vec![],
            401,
            "signed request refused: header bulwark-runner missing or not valid".into(),
        ),
        (
            "an unknown runner",
            post.clone(),
            headers(stranger),
            401,
            unknown("runner-nobody"),
        ),
        (
            "a removed runner",
            post.clone(),
            headers(sign(
                &removed.key,
                &removed.id,
                "POST",
                result,
                state::now(),
                &nonce(),
                b"",
            )),
            401,
            unknown(&removed.id),
        ),
        (
            "a stale timestamp",
            post.clone(),
            headers(sign(
                &runner.key,
                &runner.id,
                "POST",
                result,
                state::now() - 1000,
                &nonce(),
                b"",
            )),
            401,
            "signed request refused: timestamp".into(),
        ),
        (
            "a submission without the admin token",
            "POST /v1/jobs".into(),
            vec![("authorization", "Bearer bwadm_not-the-token".into())],
            401,
            "admin token missing or not valid".into(),
        ),
        (
            "a registration announcing more than its limit",
            "POST /v1/runners/register".into(),
            vec![],
            413,
            intake::too_large(MAX_SMALL_BODY_BYTES),
        ),
    ];
    // Side by side: each refusal waits up to REFUSED_BODY_DRAIN for the body that never comes.
    std::thread::scope(|scope| {
        for (what, line, hdrs, status, error) in &cases {
            let s = &s;
            scope.spawn(move || {
                let started = Instant::now();
                let (got, message) = answer_to_the_head_alone(s, line, hdrs, patience)
                    .unwrap_or_else(|| panic!("{what}: no answer until the body came"));
                assert_eq!(got, *status, "{what}: {message}");
                assert!(message.starts_with(error.as_str()), "{what}: {message}");
                assert!(started.elapsed() < patience, "{what}");
            });
        }
    });
    // A registered runner's request passes them, and its body is waited for.
    let own = sign(
        &runner.key,
        &runner.id,
        "POST",
        result,
        state::now(),
        &nonce(),
        b"",
    );
    assert_eq!(
        answer_to_the_head_alone(&s, &post, &headers(own), Duration::from_secs(1)),
        None,
        "a registered runner's request was answered before its body"
    );
}

/// The signing headers of `method path` by `id` with `key`, signed over `signed_digest` as
/// the body's hash, and `named` in [`h::CONTENT_SHA256`] when given.
fn signing_headers(
    key: &SigningKey,
    id: &str,
    method: &str,
    path: &str,
    signed_digest: &str,
    named: Option<&str>,
) -> Vec<(&'static str, String)> {
    let nonce = auth::hex(&auth::random_bytes::<16>().unwrap());
    let sh =
        crate::auth::tests::sign_digest(key, id, method, path, state::now(), &nonce, signed_digest);
    let mut headers = vec![
        (h::RUNNER, sh.runner_id),
        (h::TIMESTAMP, sh.timestamp),
        (h::NONCE, sh.nonce),
        (h::SIGNATURE, sh.signature),
    ];
    headers.extend(named.map(|d| (h::CONTENT_SHA256, d.to_owned())));
    headers
}

#[test]
fn a_large_body_is_read_only_once_its_signature_verifies_against_the_digest_it_names() {
    // A long request deadline: an answer within the test's patience cannot be its 408.
    let (s, _stop) = start_with(ServeOptions {
        request_timeout: Duration::from_secs(60),
        ..ServeOptions::default()
    });
    let patience = Duration::from_secs(5);
    let (runner, job) = leased_job(&s, "trusted");
    let report = br#"{"result":{"status":"succeeded"}}"#;
    let result = format!("/v1/jobs/{job}/result");
    let live = format!("/v1/jobs/{job}/live-log/0");
    let forger = runner_key();
    // Forged: the shape is right, the runner id is an active runner's, the signature is not
    // its key's. Refused while only the head was sent, on both routes with a large body.
    for (method, path) in [("POST", &result), ("PUT", &live)] {
        let line = format!("{method} {path}");
        let forged = signing_headers(
            &forger,
            &runner.id,
            method,
            path,
            &sha(report),
            Some(&sha(report)),
        );
        let (status, error) = answer_to_the_head_alone(&s, &line, &forged, patience)
            .unwrap_or_else(|| panic!("{line}: a forged request's body was waited for"));
        assert_eq!(status, 401, "{line}: {error}");
        assert_eq!(
            error,
            format!(
                "signed request refused: the signature does not verify for runner {}",
                runner.id
            ),
            "{line}"
        );
        // Without the digest: refused as well, saying to upgrade the runner; genuinely
        // signed or not, it cannot be checked before its body.
        let old = signing_headers(&runner.key, &runner.id, method, path, &sha(report), None);
        let (status, error) = answer_to_the_head_alone(&s, &line, &old, patience)
            .unwrap_or_else(|| panic!("{line}: a body without a named digest was waited for"));
        assert_eq!(status, 401, "{line}: {error}");
        assert!(
            error.starts_with("signed request refused: header bulwark-content-sha256 missing")
                && error.contains(
                    "upgrade bulwark on the runner (runners first, then the coordinator)"
                ),
            "{line}: {error}"
        );
    }
    // On a small route other than the lease the digest is optional (a heartbeat).
    let heartbeat = format!("/v1/jobs/{job}/heartbeat");
    let beat = signing_headers(&runner.key, &runner.id, "POST", &heartbeat, &sha(b""), None);
    assert_eq!(put_or_post(&s, "POST", &heartbeat, &beat, b"").status, 200);
    // Named, but not the body's: the gate passes it (the signature covers the digest named),
    // the full check refuses it, and its nonce is not used: the same headers with the body
    // they name are then accepted.
    let genuine = signing_headers(
        &runner.key,
        &runner.id,
        "POST",
        &result,
        &sha(report),
        Some(&sha(report)),
    );
    // `"succeedex"`: still a report, so only the digest can refuse it.
    let mut altered = report.to_vec();
    altered[report.len() - 4] = b'x';
    assert!(serde_json::from_slice::<ResultReport>(&altered).is_ok());
    let a = put_or_post(&s, "POST", &result, &genuine, &altered);
    assert_eq!(a.status, 401);
    assert_eq!(
        a.error(),
        "signed request refused: the body does not hash to header bulwark-content-sha256 \
         (altered on the way?)"
    );
    // A genuine runner's result, with the digest: recorded.
    let a = put_or_post(&s, "POST", &result, &genuine, report);
    assert_eq!(a.status, 204, "{}", String::from_utf8_lossy(&a.body));
    // A copy of its headers (from a log, say) is refused before its body.
    let (status, error) =
        answer_to_the_head_alone(&s, &format!("POST {result}"), &genuine, patience)
            .expect("a replay's body was waited for");
    assert_eq!(
        (status, error.as_str()),
        (
            401,
            "signed request refused: nonce already used (a replayed request)"
        )
    );
    let rec = http(
        s.addr,
        "GET",
        &format!("/v1/jobs/{job}"),
        &[("authorization", &format!("Bearer {}", s.admin))],
        b"",
    );
    assert_eq!(rec.json()["state"], "finished");
}

/// `method path` with `headers` and `body`, through [`http`].
fn put_or_post(
    s: &Server,
    method: &str,
    path: &str,
    headers: &[(&'static str, String)],
    body: &[u8],
) -> Answer {
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    http(s.addr, method, path, &headers, body)
}

/// Writes a request's head and its whole body, as an HTTP/1.1 client does before it reads
/// the answer, then reads the answer's status line: `Err` when the connection was reset
/// first (what the daemon would report as a transport failure).
fn send_whole_then_read(s: &Server, head: &str, body: &[u8]) -> Result<String, std::io::Error> {
    let mut c = TcpStream::connect(s.addr)?;
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    c.write_all(head.as_bytes())?;
    c.write_all(body)?;
    let mut got = Vec::new();
    c.read_to_end(&mut got)?;
    let text = String::from_utf8_lossy(&got);
    Ok(text.lines().next().unwrap_or("").to_owned())
}

#[test]
fn a_client_sending_its_body_after_an_early_refusal_gets_the_refusal_not_a_reset() {
    let s = start();
    let runner = register(&s, "build-7");
    let result = "/v1/jobs/job-0123456789abcdef0123456789abcdef/result";
    // Larger than the socket buffers hold: a server that stops reading makes the client's
    // write wait, and a close with it unread resets the connection.
    let body = vec![b' '; 6 << 20];
    let forged = signing_headers(
        &runner_key(),
        &runner.id,
        "POST",
        result,
        &sha(&body),
        Some(&sha(&body)),
    );
    let no_digest = signing_headers(&runner.key, &runner.id, "POST", result, &sha(&body), None);
    for (what, headers) in [("forged", forged), ("no digest", no_digest)] {
        let head = closing_head(&format!("POST {result}"), body.len(), &headers);
        let started = Instant::now();
        let status = send_whole_then_read(&s, &head, &body)
            .unwrap_or_else(|e| panic!("{what}: the connection failed before the answer: {e}"));
        assert!(status.starts_with("HTTP/1.1 401"), "{what}: {status}");
        assert!(started.elapsed() < Duration::from_secs(5), "{what}");
    }
    // Asking for 100 Continue, the client sends no body: answered at once, nothing read.
    let forged = signing_headers(
        &runner_key(),
        &runner.id,
        "POST",
        result,
        &sha(&body),
        Some(&sha(&body)),
    );
    let mut c = TcpStream::connect(s.addr).unwrap();
    write!(
        c,
        "POST {result} HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: {}\r\n{}\r\n",
        body.len(),
        header_lines(&forged)
    )
    .unwrap();
    let started = Instant::now();
    let got = read_until_closed(&mut c, Duration::from_secs(5)).expect("no answer");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(
        started.elapsed() < REFUSED_BODY_DRAIN,
        "a client waiting for 100 Continue was kept for the drain"
    );
}

#[test]
fn large_bodies_wait_for_room_in_their_budget() {
    let (s, _stop) = start_with(ServeOptions {
        large_body_budget: MAX_BODY_BYTES,
        request_timeout: Duration::from_secs(60),
        ..ServeOptions::default()
    });
    let runner = register(&s, "build-7");
    let result = "/v1/jobs/job-0123456789abcdef0123456789abcdef/result";
    // Two bodies of 5 MiB: not both within 8 MiB.
    let body = vec![b' '; 5 << 20];
    let head = || {
        let headers = signing_headers(
            &runner.key,
            &runner.id,
            "POST",
            result,
            &sha(&body),
            Some(&sha(&body)),
        );
        closing_head(&format!("POST {result}"), body.len(), &headers)
    };
    // The first passes the gate and holds its room while its body trickles.
    let mut first = TcpStream::connect(s.addr).unwrap();
    first.write_all(head().as_bytes()).unwrap();
    first.write_all(&body[..1 << 20]).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // The second, sent whole, is not read until the first is done.
    let (tx, rx) = std::sync::mpsc::channel();
    let second = head();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let _ = tx.send(send_whole_then_read(&s, &second, &body).map_err(|e| e.to_string()));
        });
        assert!(
            rx.recv_timeout(Duration::from_secs(2)).is_err(),
            "a second large body was read while the first held the budget"
        );
        first.write_all(&body[1 << 20..]).unwrap();
        let got = read_until_closed(&mut first, Duration::from_secs(10)).expect("no answer");
        let text = String::from_utf8_lossy(&got);
        // Spaces are not a result report: read whole, and judged.
        assert!(text.starts_with("HTTP/1.1 400"), "{text}");
        let second = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the second body was never read");
        assert!(
            second
                .as_deref()
                .is_ok_and(|l| l.starts_with("HTTP/1.1 400")),
            "{second:?}"
        );
    });
}

#[test]
fn a_small_body_that_trickles_is_cut_at_its_own_deadline() {
    let (s, _stop) = start_with(ServeOptions {
        small_body_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(60),
        ..ServeOptions::default()
    });
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.write_all(
        b"POST /v1/runners/register HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\n{\"tok",
    )
    .unwrap();
    let got = read_until_closed(&mut c, Duration::from_secs(5))
        .expect("a small body that never came was kept past its deadline");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.contains("request body not received in time (at most 1 s)"),
        "{text}"
    );
}

/// A connection to `to` from the loopback address `from` (127.0.0.2: another client on the
/// same host); `None` when the host will not bind it.
fn connect_from(from: &str, to: SocketAddr) -> Option<TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().ok()?;
        socket.bind(format!("{from}:0").parse().unwrap()).ok()?;
        let stream = socket.connect(to).await.ok()?.into_std().ok()?;
        stream.set_nonblocking(false).ok()?;
        Some(stream)
    })
}

/// `GET /.well-known/jwks.json` on `c`; the answer's status line, or `None` when the
/// connection was closed without one.
fn jwks_on(mut c: TcpStream) -> Option<String> {
    c.write_all(b"GET /.well-known/jwks.json HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .ok()?;
    let got = read_until_closed(&mut c, Duration::from_secs(5)).expect("kept open");
    let text = String::from_utf8_lossy(&got);
    text.lines().next().map(str::to_owned)
}

#[test]
fn one_address_holds_at_most_its_connections_and_another_address_is_served() {
    let (s, _stop) = start_with(ServeOptions {
        max_connections_per_address: 2,
        ..ServeOptions::default()
    });
    // Two connections kept alive, each surely accepted: it has been answered once.
    let held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut c = TcpStream::connect(s.addr).unwrap();
            c.write_all(b"GET /.well-known/jwks.json HTTP/1.1\r\nhost: x\r\n\r\n")
                .unwrap();
            let mut status = [0u8; 12];
            c.read_exact(&mut status).unwrap();
            assert_eq!(&status, b"HTTP/1.1 200");
            c
        })
        .collect();
    // The third from 127.0.0.1 is closed unanswered; the server is not waiting on it.
    assert_eq!(jwks_on(TcpStream::connect(s.addr).unwrap()), None);
    // Another address is served meanwhile.
    match connect_from("127.0.0.2", s.addr) {
        Some(other) => assert_eq!(jwks_on(other).as_deref(), Some("HTTP/1.1 200 OK")),
        None => eprintln!("SKIPPED (part): cannot bind 127.0.0.2 here"),
    }
    // A slot given back is taken again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let got = jwks_on(TcpStream::connect(s.addr).unwrap());
        if got.as_deref() == Some("HTTP/1.1 200 OK") {
            break;
        }
        assert!(Instant::now() < deadline, "127.0.0.1 never served again");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The request deadline spares only what the router matched as an upload: the live log of a
/// job named `blobs` (`PUT /v1/jobs/blobs/live-log/0`, a path containing `/blobs/`) waiting
/// for room in a busy budget is cut at the request deadline, while an upload that takes
/// longer than that deadline, never idle, is stored.
#[test]
fn the_request_deadline_spares_the_upload_route_not_a_path_that_looks_like_it() {
    let options = ServeOptions {
        request_timeout: Duration::from_secs(1),
        // Longer than the test's patience: a request waiting past the deadline gets no answer.
        large_body_wait: Duration::from_secs(30),
        ..ServeOptions::default()
    };
    let (s, budget) = serve_app(options);
    let (runner, job) = leased_job(&s, "untrusted");
    // From now on every byte of the budget is taken (other runners' results).
    let _busy = budget.take_all();
    let patience = Duration::from_secs(5);
    for path in [
        "/v1/jobs/blobs/live-log/0".to_owned(),
        format!("/v1/jobs/{job}/live-log/0"),
    ] {
        let digest = sha(b"x");
        let headers = signing_headers(
            &runner.key,
            &runner.id,
            "PUT",
            &path,
            &digest,
            Some(&digest),
        );
        let started = Instant::now();
        // 100 bytes: the request deadline grows by a second (its length at 64 KiB/s).
        let answer =
            answer_to_a_head_announcing(&s, &format!("PUT {path}"), &headers, 100, patience);
        assert_eq!(
            answer,
            Some((408, "request not received in time (at most 2 s)".to_owned())),
            "{path}: waited for the budget past the request deadline"
        );
        assert!(started.elapsed() < patience, "{path}");
    }
    // An upload sent slowly, over longer than the request deadline: not cut by it.
    let content = b"an output, sent a few bytes at a time";
    let digest = sha(content);
    let path = format!("/v1/jobs/{job}/blobs/{digest}");
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.write_all(
        closing_head(
            &format!("PUT {path}"),
            content.len(),
            &put_headers(&runner, &path, &digest),
        )
        .as_bytes(),
    )
    .unwrap();
    let started = Instant::now();
    for chunk in content.chunks(8) {
        std::thread::sleep(Duration::from_millis(400));
        c.write_all(chunk)
            .unwrap_or_else(|e| panic!("the upload was cut before its end: {e}"));
    }
    assert!(started.elapsed() > Duration::from_secs(1));
    let got = read_until_closed(&mut c, patience).expect("no answer to the upload");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 204"), "{text}");
    assert_eq!(stored_blobs(&s, &job), vec![digest]);
}

/// A large body is read within a deadline of its intake's own: served without
/// `request_deadline` around it (as `router` is), a live-log append whose body never comes
/// is still answered `408`, as soon as it falls behind the minimum rate (after the small
/// routes' deadline), not at the end of what its announced length would be allowed.
#[test]
fn a_large_body_has_a_deadline_of_its_own_without_the_request_deadline() {
    let options = ServeOptions {
        small_body_timeout: Duration::from_secs(1),
        ..ServeOptions::default()
    };
    let s = start_router(move |c| router_shared(c, &options, &BodyBudget::for_options(&options)));
    let (runner, job) = leased_job(&s, "untrusted");
    let path = format!("/v1/jobs/{job}/live-log/0");
    let digest = sha(b"x");
    let headers = signing_headers(
        &runner.key,
        &runner.id,
        "PUT",
        &path,
        &digest,
        Some(&digest),
    );
    let answer = answer_to_a_head_announcing(
        &s,
        &format!("PUT {path}"),
        &headers,
        1 << 20,
        Duration::from_secs(5),
    );
    assert_eq!(
        answer,
        Some((
            408,
            "request body not received in time: slower than 64 KiB/s after its first 1 s (at \
             most 17 s for its 1048576 bytes)"
                .to_owned()
        ))
    );
}

/// A large body that finds no room in the budget within its wait is answered `503` with a
/// JSON error before the daemon's own timeout (which would abandon a request still queued
/// here); the daemon takes a `503` for transient and sends the report again, signed afresh,
/// and that is accepted once there is room.
#[test]
fn a_large_body_that_finds_no_room_in_time_is_answered_503_and_its_retry_is_accepted() {
    let options = ServeOptions {
        large_body_wait: Duration::from_secs(1),
        request_timeout: Duration::from_secs(60),
        ..ServeOptions::default()
    };
    let (s, budget) = serve_app(options);
    let (runner, job) = leased_job(&s, "trusted");
    let busy = budget.take_all();
    let report = br#"{"result":{"status":"succeeded"}}"#;
    let result = format!("/v1/jobs/{job}/result");
    let signed = || {
        signing_headers(
            &runner.key,
            &runner.id,
            "POST",
            &result,
            &sha(report),
            Some(&sha(report)),
        )
    };
    // Sent whole, as the daemon sends it, then the answer read.
    let mut c = TcpStream::connect(s.addr).unwrap();
    write!(
        c,
        "POST {result} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n{}\r\n",
        report.len(),
        header_lines(&signed())
    )
    .unwrap();
    c.write_all(report).unwrap();
    let started = Instant::now();
    let got = read_until_closed(&mut c, Duration::from_secs(5))
        .expect("a body with no room was kept waiting past its wait");
    assert!(started.elapsed() < Duration::from_secs(5));
    let text = String::from_utf8_lossy(&got);
    let (head, body) = text.split_once("\r\n\r\n").expect("no answer");
    assert!(head.starts_with("HTTP/1.1 503"), "{text}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{text}"
    );
    // Marked as the coordinator's own: the daemon counts it as an answer, unlike a proxy's.
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("{}: 1\r\n", h::COORDINATOR)),
        "{text}"
    );
    let e: ErrorBody = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(
        e.error,
        "request body not read: the coordinator had no room for it within 1 s (other large \
         bodies are being read); send it again"
    );
    // The job is still the runner's to report: the retry, signed afresh, is recorded.
    drop(busy);
    let a = put_or_post(&s, "POST", &result, &signed(), report);
    assert_eq!(a.status, 204, "{}", String::from_utf8_lossy(&a.body));
    let rec = http(
        s.addr,
        "GET",
        &format!("/v1/jobs/{job}"),
        &[("authorization", &format!("Bearer {}", s.admin))],
        b"",
    );
    assert_eq!(rec.json()["state"], "finished");
}

/// A runner too old to name its body's digest is refused its lease, saying to upgrade it,
/// and so takes no job: leasing one, it would run it and then have its result refused (a
/// `401` the daemon does not retry), and the job would end `lost` without a word. Its other
/// small requests (a heartbeat) are still served.
#[test]
fn an_old_runner_is_refused_at_lease_before_it_takes_a_job() {
    let s = start();
    let runner = register(&s, "build-old");
    let job = submit(&s, "trusted");
    let lease = "/v1/runners/lease";
    let old = signing_headers(&runner.key, &runner.id, "POST", lease, &sha(b"{}"), None);
    let a = put_or_post(&s, "POST", lease, &old, b"{}");
    assert_eq!(a.status, 401);
    let error = a.error();
    assert!(
        error.starts_with("signed request refused: header bulwark-content-sha256 missing")
            && error
                .contains("upgrade bulwark on the runner (runners first, then the coordinator)"),
        "{error}"
    );
    let state = || {
        http(
            s.addr,
            "GET",
            &format!("/v1/jobs/{job}"),
            &[("authorization", &format!("Bearer {}", s.admin))],
            b"",
        )
        .json()["state"]
            .clone()
    };
    assert_eq!(state(), "queued", "the old runner's lease took the job");
    // Upgraded, the same runner leases it.
    let a = signed_post(&s, &runner, lease, b"{}");
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["job_id"], job.as_str());
    assert_eq!(state(), "leased");
    // A heartbeat without the digest is served: only the lease (and the large bodies)
    // require it.
    let heartbeat = format!("/v1/jobs/{job}/heartbeat");
    let beat = signing_headers(&runner.key, &runner.id, "POST", &heartbeat, &sha(b""), None);
    let a = put_or_post(&s, "POST", &heartbeat, &beat, b"");
    assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.json()["cancel"], false);
}

/// A runner's clock is judged when its request's head arrives, by the gate and by the full
/// check alike: a result signed 299 s behind the coordinator's clock (within the 300 s
/// allowed) whose body arrives seconds later is recorded, not refused once the body is in
/// (the daemon does not retry a `401`: the job would be lost).
#[test]
fn a_runner_behind_by_nearly_the_allowed_skew_is_not_refused_after_its_body_arrives() {
    let (s, _stop) = start_with(ServeOptions {
        request_timeout: Duration::from_secs(60),
        ..ServeOptions::default()
    });
    let (runner, job) = leased_job(&s, "trusted");
    let report = br#"{"result":{"status":"succeeded"}}"#;
    let result = format!("/v1/jobs/{job}/result");
    let nonce = auth::hex(&auth::random_bytes::<16>().unwrap());
    let sh = crate::auth::tests::sign_digest(
        &runner.key,
        &runner.id,
        "POST",
        &result,
        state::now() - 299,
        &nonce,
        &sha(report),
    );
    let headers = vec![
        (h::RUNNER, sh.runner_id),
        (h::TIMESTAMP, sh.timestamp),
        (h::NONCE, sh.nonce),
        (h::SIGNATURE, sh.signature),
        (h::CONTENT_SHA256, sha(report)),
    ];
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.write_all(closing_head(&format!("POST {result}"), report.len(), &headers).as_bytes())
        .unwrap();
    // The body comes when the timestamp is more than 300 s old.
    std::thread::sleep(Duration::from_millis(2500));
    c.write_all(report).unwrap();
    let got = read_until_closed(&mut c, Duration::from_secs(10)).expect("no answer");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 204"), "{text}");
}

/// A body arriving at twice the minimum rate (64 KiB/s) is read and handled although it
/// takes longer than both fixed deadlines (the request's and the body's, 1 s each here): each
/// grows by the body's length at that rate, as the daemon's own timeout does, so an 8 MiB
/// result over a slow link is not cut for its size.
#[test]
fn a_large_body_at_the_minimum_rate_is_read_though_it_outlasts_the_fixed_deadlines() {
    let (s, _stop) = start_with(ServeOptions {
        request_timeout: Duration::from_secs(1),
        small_body_timeout: Duration::from_secs(1),
        ..ServeOptions::default()
    });
    let (runner, job) = leased_job(&s, "untrusted");
    let path = format!("/v1/jobs/{job}/live-log/0");
    // 512 KiB: 8 s at 64 KiB/s; sent at 128 KiB/s, in about 4 s.
    let body = vec![b'x'; 512 << 10];
    let digest = sha(&body);
    let headers = signing_headers(
        &runner.key,
        &runner.id,
        "PUT",
        &path,
        &digest,
        Some(&digest),
    );
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.write_all(closing_head(&format!("PUT {path}"), body.len(), &headers).as_bytes())
        .unwrap();
    let started = Instant::now();
    for chunk in body.chunks(16 << 10) {
        c.write_all(chunk)
            .unwrap_or_else(|e| panic!("the body was cut before its end: {e}"));
        std::thread::sleep(Duration::from_millis(125));
    }
    assert!(started.elapsed() > Duration::from_secs(2));
    let got = read_until_closed(&mut c, Duration::from_secs(20)).expect("no answer");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 204"), "{text}");
}

/// One runner's large bodies hold at most its share of the budget: a second body of a runner
/// whose first holds its whole share waits (then `503`, as for a busy budget) without taking
/// any of the budget, and another runner's body is read meanwhile, although the first
/// runner's second body would have fit in the budget.
#[test]
fn one_runner_holds_at_most_its_share_of_the_body_budget_and_another_is_read_meanwhile() {
    let options = ServeOptions {
        large_body_budget: 2 << 20,
        large_body_share: 1 << 20,
        large_body_wait: Duration::from_secs(1),
        request_timeout: Duration::from_secs(60),
        ..ServeOptions::default()
    };
    let (s, budget) = serve_app(options);
    let (greedy, greedy_job) = leased_job(&s, "untrusted");
    let (other, other_job) = leased_job(&s, "untrusted");
    let body = vec![b'x'; 1 << 20];
    let digest = sha(&body);
    let append = |r: &TestRunner, job: &str| {
        let path = format!("/v1/jobs/{job}/live-log/0");
        let headers = signing_headers(&r.key, &r.id, "PUT", &path, &digest, Some(&digest));
        (path, headers)
    };
    // The greedy runner's first append holds its share while its body never comes.
    let (path, headers) = append(&greedy, &greedy_job);
    let mut first = TcpStream::connect(s.addr).unwrap();
    write!(
        first,
        "PUT {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n{}\r\n",
        body.len(),
        header_lines(&headers)
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while budget.runners_in_flight() == 0 {
        assert!(
            Instant::now() < deadline,
            "the first body never got its room"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Its second: the budget has room for it, its share has not.
    let (path, headers) = append(&greedy, &greedy_job);
    let answer = answer_to_a_head_announcing(
        &s,
        &format!("PUT {path}"),
        &headers,
        body.len(),
        Duration::from_secs(10),
    )
    .expect("a runner's body beyond its share was waited for past the wait");
    assert_eq!(answer.0, 503, "{}", answer.1);
    assert_eq!(
        answer.1,
        "request body not read: this runner's other large bodies being read take its whole \
         share of the coordinator's room (1048576 bytes) for more than 1 s; send it again"
    );
    // The other runner's append is read and stored meanwhile.
    let (path, headers) = append(&other, &other_job);
    let a = put_or_post(&s, "PUT", &path, &headers, &body);
    assert_eq!(a.status, 204, "{}", String::from_utf8_lossy(&a.body));
    // The first gives up: its share is given back, and no runner is kept in the map.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(5);
    while budget.runners_in_flight() != 0 {
        assert!(Instant::now() < deadline, "a runner's share was kept");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An upload refused before its body (a forged signature, a runner not holding the lease) is
/// answered after its body is thrown away, as the intake's refusals are: a client that sends
/// its whole body before reading (every HTTP/1.1 client) reads the status, not a reset.
#[test]
fn a_refused_upload_is_answered_with_its_status_not_a_reset() {
    let s = start();
    let (runner, job) = leased_job(&s, "untrusted");
    let other = register(&s, "build-2");
    let forger = TestRunner {
        id: runner.id.clone(),
        key: runner_key(),
    };
    // Larger than the socket buffers hold (see the intake's test of the same).
    let body = vec![b' '; 6 << 20];
    let digest = sha(&body);
    let path = format!("/v1/jobs/{job}/blobs/{digest}");
    for (what, r, status) in [
        ("forged", &forger, "HTTP/1.1 401"),
        ("not the lease holder", &other, "HTTP/1.1 403"),
    ] {
        let head = closing_head(
            &format!("PUT {path}"),
            body.len(),
            &put_headers(r, &path, &digest),
        );
        let started = Instant::now();
        let line = send_whole_then_read(&s, &head, &body)
            .unwrap_or_else(|e| panic!("{what}: the connection failed before the answer: {e}"));
        assert!(line.starts_with(status), "{what}: {line}");
        assert!(started.elapsed() < Duration::from_secs(10), "{what}");
    }
    assert!(stored_blobs(&s, &job).is_empty());
}

/// A job an old runner (one that sends no `bulwark-content-sha256`) leased before the
/// coordinator was upgraded cannot be reported: its result is refused `401` before its body,
/// which the daemon does not retry. The job is not stuck: it stays `leased` until its lease
/// runs out (the job's timeout and 10 minutes), then is `lost`, as any job whose runner
/// went away, and what it uploaded is swept.
#[test]
fn a_job_an_old_runner_leased_before_the_upgrade_ends_lost_when_its_lease_runs_out() {
    let s = start();
    let (runner, job) = leased_job(&s, "untrusted");
    let result = format!("/v1/jobs/{job}/result");
    let report = br#"{"result":{"status":"succeeded"}}"#;
    let old = signing_headers(&runner.key, &runner.id, "POST", &result, &sha(report), None);
    let a = put_or_post(&s, "POST", &result, &old, report);
    assert_eq!(a.status, 401);
    assert!(
        a.error().contains("upgrade bulwark on the runner"),
        "{}",
        a.error()
    );
    let state = || {
        http(
            s.addr,
            "GET",
            &format!("/v1/jobs/{job}"),
            &[("authorization", &format!("Bearer {}", s.admin))],
            b"",
        )
        .json()["state"]
            .clone()
    };
    assert_eq!(state(), "leased");
    // The lease runs out (the database as another process, the operator's, sees it).
    rusqlite::Connection::open(s.state.join(crate::state::DB_NAME))
        .unwrap()
        .execute(
            "UPDATE jobs SET lease_expires_at = ?1 WHERE id = ?2",
            rusqlite::params![1i64, job],
        )
        .unwrap();
    assert_eq!(state(), "lost");
    // Upgraded, the runner's report is too late: `410`, the job stays lost.
    let a = signed_post(&s, &runner, &result, report);
    assert_eq!(a.status, 410, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(state(), "lost");
}

/// A retried upload of a blob stored already (its first answer lost) is answered `204` after
/// its body is read and thrown away: answered at once with the body unread, the connection
/// would be reset under the daemon still sending it, which would take the reset for a
/// transient failure and send the whole file again until the lease ended.
#[test]
fn a_retried_upload_of_a_stored_blob_sent_whole_gets_its_204_not_a_reset() {
    let s = start();
    let (runner, job) = leased_job(&s, "untrusted");
    // Larger than the socket buffers hold (see the intake's test of the same).
    let body = vec![b'o'; 6 << 20];
    let digest = sha(&body);
    let a = upload(&s, &runner, &job, &digest, &body);
    assert_eq!(a.status, 204, "{}", String::from_utf8_lossy(&a.body));
    let path = format!("/v1/jobs/{job}/blobs/{digest}");
    let head = closing_head(
        &format!("PUT {path}"),
        body.len(),
        &put_headers(&runner, &path, &digest),
    );
    let line = send_whole_then_read(&s, &head, &body)
        .unwrap_or_else(|e| panic!("the retry's connection failed before the answer: {e}"));
    assert!(line.starts_with("HTTP/1.1 204"), "{line}");
    assert_eq!(stored_blobs(&s, &job), vec![digest.clone()]);
    // A "retry" announcing another length (1 GiB, trickled) is no retry of this blob: refused
    // before its body, not drained for as long as it likes to send.
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.write_all(
        closing_head(
            &format!("PUT {path}"),
            1usize << 30,
            &put_headers(&runner, &path, &digest),
        )
        .as_bytes(),
    )
    .unwrap();
    c.write_all(&body[..4096]).unwrap();
    let got = read_until_closed(&mut c, Duration::from_secs(10))
        .expect("an upload of a stored blob with another length was drained past 10 s");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("is not the size of blob"), "{text}");
}

/// A retry of an upload whose first attempt the coordinator is still reading (the daemon
/// lost the connection; the coordinator has not noticed yet) is answered `503`, which the
/// daemon tries again, rather than reserved a second time (the room counted twice could
/// refuse it for space, which the daemon does not retry). Once the first ends, the retry is
/// answered as any other.
#[test]
fn a_retry_while_the_first_upload_of_a_blob_is_still_read_is_answered_503() {
    let s = start();
    let (runner, job) = leased_job(&s, "untrusted");
    let body = vec![b'r'; 1 << 20];
    let digest = sha(&body);
    let path = format!("/v1/jobs/{job}/blobs/{digest}");
    let head = |r: &TestRunner| {
        closing_head(
            &format!("PUT {path}"),
            body.len(),
            &put_headers(r, &path, &digest),
        )
    };
    // The first attempt: half its body, then nothing for now.
    let mut first = TcpStream::connect(s.addr).unwrap();
    first.write_all(head(&runner).as_bytes()).unwrap();
    first.write_all(&body[..body.len() / 2]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let line = send_whole_then_read(&s, &head(&runner), &body)
        .unwrap_or_else(|e| panic!("the retry's connection failed before the answer: {e}"));
    assert!(line.starts_with("HTTP/1.1 503"), "{line}");
    // The first attempt ends (here: it completes); the retry is then answered 204.
    first.write_all(&body[body.len() / 2..]).unwrap();
    let got = read_until_closed(&mut first, Duration::from_secs(10)).unwrap();
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 204"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let line = send_whole_then_read(&s, &head(&runner), &body).unwrap();
    assert!(line.starts_with("HTTP/1.1 204"), "{line}");
    assert_eq!(stored_blobs(&s, &job), vec![digest]);
}

/// A large body sent fast and then stalled is cut when no byte came for the small routes'
/// deadline (1 s here), not kept for the time the bytes it already sent earned it at the
/// minimum rate (here 17 s), holding its memory, its share and its room in the budget.
#[test]
fn a_large_body_sent_fast_then_stalled_is_cut_after_the_idle_limit() {
    let (s, _stop) = start_with(ServeOptions {
        small_body_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(60),
        ..ServeOptions::default()
    });
    let (runner, job) = leased_job(&s, "untrusted");
    let path = format!("/v1/jobs/{job}/live-log/0");
    let body = vec![b'x'; 1 << 20];
    let digest = sha(&body);
    let headers = signing_headers(
        &runner.key,
        &runner.id,
        "PUT",
        &path,
        &digest,
        Some(&digest),
    );
    let mut c = TcpStream::connect(s.addr).unwrap();
    c.write_all(closing_head(&format!("PUT {path}"), body.len(), &headers).as_bytes())
        .unwrap();
    // All but the last byte, then nothing.
    c.write_all(&body[..body.len() - 1]).unwrap();
    let started = Instant::now();
    let got = read_until_closed(&mut c, Duration::from_secs(6))
        .expect("a stalled body was kept past its idle limit");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        text.contains("request body not received in time: no byte for 1 s"),
        "{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(6));
}

/// A chunked body (no `Content-Length`) arriving at twice the minimum rate is not cut by the
/// request deadline (1 s here): with no length announced, the deadline grows by the most any
/// route under it reads, and the route's intake bounds the body itself.
#[test]
fn a_chunked_body_at_the_minimum_rate_outlasts_the_fixed_request_deadline() {
    let (s, _stop) = start_with(ServeOptions {
        request_timeout: Duration::from_secs(1),
        ..ServeOptions::default()
    });
    let mut c = TcpStream::connect(s.addr).unwrap();
    write!(
        c,
        "POST /v1/jobs HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\
         authorization: Bearer {}\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\n\r\n",
        s.admin
    )
    .unwrap();
    // 384 KiB of whitespace at 128 KiB/s (3 s), then a JSON object the handler refuses.
    let started = Instant::now();
    let chunk = vec![b' '; 32 << 10];
    for _ in 0..12 {
        write!(c, "{:x}\r\n", chunk.len()).unwrap();
        c.write_all(&chunk)
            .unwrap_or_else(|e| panic!("the body was cut before its end: {e}"));
        c.write_all(b"\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(250));
    }
    c.write_all(b"2\r\n{}\r\n0\r\n\r\n").unwrap();
    assert!(started.elapsed() > Duration::from_secs(2));
    let got = read_until_closed(&mut c, Duration::from_secs(10)).expect("no answer");
    let text = String::from_utf8_lossy(&got);
    // The handler's refusal of the spec-less submission, not the deadline's 408.
    assert!(
        text.starts_with("HTTP/1.1 400") || text.starts_with("HTTP/1.1 422"),
        "{text}"
    );
}

/// The request deadline's own `408` carries the coordinator's mark, as every answer of its
/// routes does: the mark is applied outermost.
#[test]
fn the_request_deadlines_408_carries_the_coordinators_mark() {
    let options = ServeOptions {
        request_timeout: Duration::from_secs(1),
        large_body_wait: Duration::from_secs(30),
        ..ServeOptions::default()
    };
    let (s, budget) = serve_app(options);
    let (runner, job) = leased_job(&s, "untrusted");
    let _busy = budget.take_all();
    let path = format!("/v1/jobs/{job}/live-log/0");
    let digest = sha(b"x");
    let headers = signing_headers(
        &runner.key,
        &runner.id,
        "PUT",
        &path,
        &digest,
        Some(&digest),
    );
    let mut c = TcpStream::connect(s.addr).unwrap();
    write!(
        c,
        "PUT {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\n{}\r\n",
        header_lines(&headers)
    )
    .unwrap();
    let got = read_until_closed(&mut c, Duration::from_secs(5)).expect("no answer");
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 408"), "{text}");
    assert!(
        text.contains(&format!("{}: 1\r\n", h::COORDINATOR)),
        "{text}"
    );
}

/// A copy of a large body's head sent while the original is being received (its headers
/// taken from a log) is refused before its body, so copies of one head cannot fill that
/// runner's share; `503` (send it again), since the request refused may be the runner's own
/// when a copy came first. Once the original is gone, its nonce is given back.
#[test]
fn the_same_large_body_head_twice_at_once_the_second_is_refused_before_its_body() {
    let options = ServeOptions {
        request_timeout: Duration::from_secs(60),
        ..ServeOptions::default()
    };
    let (s, budget) = serve_app(options);
    let (runner, job) = leased_job(&s, "untrusted");
    let path = format!("/v1/jobs/{job}/live-log/0");
    let body = vec![b'x'; 1 << 20];
    let digest = sha(&body);
    let headers = signing_headers(
        &runner.key,
        &runner.id,
        "PUT",
        &path,
        &digest,
        Some(&digest),
    );
    // The original: past the gate, holding room, its body not yet sent.
    let mut first = TcpStream::connect(s.addr).unwrap();
    first
        .write_all(closing_head(&format!("PUT {path}"), body.len(), &headers).as_bytes())
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while budget.runners_in_flight() == 0 {
        assert!(Instant::now() < deadline, "the original never got its room");
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = Instant::now();
    let copy = answer_to_a_head_announcing(
        &s,
        &format!("PUT {path}"),
        &headers,
        body.len(),
        Duration::from_secs(5),
    )
    .expect("a copy of a head in flight was waited for");
    assert_eq!(
        copy,
        (
            503,
            "request body not read: a request with this nonce is being received already (a \
             copy of its headers); send it again, signed afresh"
                .to_owned()
        )
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // The original is still read and stored.
    first.write_all(&body).unwrap();
    let got = read_until_closed(&mut first, Duration::from_secs(10)).expect("no answer");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 204"), "{text}");
    // Served, its nonce is recorded: a copy now is refused as a replay.
    let again = put_or_post(&s, "PUT", &path, &headers, &body);
    assert_eq!(
        again.status,
        401,
        "{}",
        String::from_utf8_lossy(&again.body)
    );
}
