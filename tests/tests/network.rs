//! A job's network, end to end: its only way out is the runner's egress proxy, through the
//! forwarder its init runs on 127.0.0.1:3128. Every server here is the test's own, on this
//! machine's loopback; names are pointed at it with `egress.hosts`.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bulwark_tests::{one_step, Env};

/// A tiny HTTP origin on 127.0.0.1 that counts connections and answers every request.
struct Origin {
    port: u16,
    connections: Arc<AtomicUsize>,
}

impl Origin {
    fn start() -> Origin {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let c = connections.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut buf = [0u8; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let body = "hello from the origin\n";
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                });
            }
        });
        Origin { port, connections }
    }

    fn count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// An Env whose proxy resolves the test names to loopback, and whose ceilings (open, `*`)
/// also name the origin's loopback address: a loopback literal is above `*`.
fn env_with_hosts(tag: &str, origin_port: u16, egress_extra: &str) -> Env {
    let env = Env::new(tag);
    let ceiling = format!("[\"*\", \"127.0.0.1:{origin_port}\"]");
    env.write_config_sections("", &format!("[egress]\nhosts = {{ \"allowed.test\" = \"127.0.0.1\", \"other.test\" = \"127.0.0.1\", \"meta.test\" = \"169.254.169.254\" }}\nceiling_untrusted = {ceiling}\nceiling_trusted = {ceiling}\n{egress_extra}"));
    env
}

fn log_lines(r: &bulwark_tests::Run) -> Vec<serde_json::Value> {
    std::fs::read_to_string(r.out.join("egress.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn an_allowed_host_is_reached_through_the_proxy_with_curl_and_with_connect() {
    let origin = Origin::start();
    let p = origin.port;
    let env = env_with_hosts("net-allowed", p, "");
    env.write_src(
        "connect.py",
        &format!(
            r#"
import socket
s = socket.create_connection(("127.0.0.1", 3128), timeout=10)
s.sendall(b"CONNECT allowed.test:{p} HTTP/1.1\r\nHost: allowed.test:{p}\r\n\r\n")
head = b""
while b"\r\n\r\n" not in head:
    head += s.recv(1)
print("connect_status=" + head.split(b"\r\n")[0].decode())
s.sendall(b"GET /x HTTP/1.1\r\nHost: allowed.test\r\n\r\n")
data = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
print("tunnel_body=" + data.split(b"\r\n\r\n", 1)[1].decode().strip())
"#
        ),
    );
    let run =
        format!("echo \"curl_body=$(curl -sS http://allowed.test:{p}/x)\"\npython3 connect.py");
    let job = one_step(
        "allowed",
        &run,
        &format!("[network]\nallow = [\"allowed.test:{p}\", \"127.0.0.1:{p}\"]"),
    );
    let r = env.run(&job);
    r.assert_code(0);
    assert_eq!(r.value("curl_body"), "hello from the origin");
    assert_eq!(
        r.value("connect_status"),
        "HTTP/1.1 200 Connection established"
    );
    assert_eq!(r.value("tunnel_body"), "hello from the origin");
    assert_eq!(origin.count(), 2);
    let lines = log_lines(&r);
    assert_eq!(lines.len(), 2, "{lines:?}");
    for l in &lines {
        assert_eq!(l["decision"], "allowed");
        assert_eq!(l["host"], "allowed.test");
        assert_eq!(l["address"], "127.0.0.1");
        for k in [
            "time",
            "port",
            "reason",
            "bytes_up",
            "bytes_down",
            "duration_ms",
            "method",
        ] {
            assert!(!l[k].is_null(), "{k} missing in {l}");
        }
    }
    let egress = &r.result()["egress"];
    assert_eq!(egress["allowed"], 2);
    assert_eq!(egress["log_truncated"], false);
    assert_eq!(
        egress["log_sha256"].as_str().unwrap(),
        bulwark_tests::sha256_file(&r.out.join("egress.log"))
    );
}

#[test]
fn hosts_ports_literals_and_forbidden_addresses_off_the_list_get_403() {
    let origin = Origin::start();
    let p = origin.port;
    let env = env_with_hosts("net-denied", p, "");
    let cases = [
        ("not_listed", format!("http://other.test:{p}/")),
        (
            "other_port",
            format!("http://allowed.test:{}/", p.wrapping_add(1).max(1)),
        ),
        ("ip_literal", format!("http://127.0.0.2:{p}/")),
        ("metadata_by_name", format!("http://meta.test:{p}/")),
        ("metadata_literal", "http://169.254.169.254:80/".to_string()),
        (
            "mapped_metadata",
            "http://[::ffff:169.254.169.254]:80/".to_string(),
        ),
        ("unspecified", format!("http://0.0.0.0:{p}/")),
    ];
    // curl normalises odd address forms itself (and then bypasses the proxy for 127.0.0.1,
    // reaching nothing): send those to the proxy verbatim with CONNECT.
    let raw = ["2130706433", "0177.0.0.1", "127.1", "0x7f.0.0.1"];
    let mut run: String = cases
        .iter()
        .map(|(k, u)| format!("echo \"{k}=$(curl -s -o /dev/null -w '%{{http_code}}' '{u}')\"\n"))
        .collect();
    env.write_src(
        "raw.py",
        &format!(
            r#"
import socket
for i, host in enumerate({raw:?}):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=10)
    s.sendall(f"CONNECT {{host}}:{p} HTTP/1.1\r\nHost: {{host}}:{p}\r\n\r\n".encode())
    print(f"raw{{i}}=" + s.recv(200).split(b"\r\n")[0].decode())
"#
        ),
    );
    run.push_str("python3 raw.py\n");
    // A wildcard that covers meta.test must not unlock the metadata address.
    let job = one_step(
        "denied",
        &run,
        &format!("[network]\nallow = [\"allowed.test:{p}\", \"127.0.0.1:{p}\", \"*.test:{p}\"]"),
    );
    let r = env.run(&job);
    r.assert_code(0);
    for (k, _) in &cases {
        if *k == "not_listed" {
            // other.test matches the wildcard and resolves to 127.0.0.1, which is listed on
            // this port: allowed. The wildcard itself is checked separately below.
            continue;
        }
        assert_eq!(r.value(k), "403", "{k}\n{r}");
    }
    for (i, host) in raw.iter().enumerate() {
        assert!(
            r.value(&format!("raw{i}")).starts_with("HTTP/1.1 403"),
            "{host}: {r}"
        );
    }
    assert_eq!(
        origin.count(),
        1,
        "only the wildcard-allowed request may reach the origin"
    );
    assert!(
        log_lines(&r)
            .iter()
            .filter(|l| l["decision"] == "denied")
            .count()
            >= cases.len() - 1
    );
}

#[test]
fn a_name_not_on_the_list_is_denied_and_logged() {
    let origin = Origin::start();
    let p = origin.port;
    let env = env_with_hosts("net-notlisted", p, "");
    let job = one_step(
        "notlisted",
        &format!(
            "echo \"code=$(curl -s -o /dev/null -w '%{{http_code}}' http://other.test:{p}/)\""
        ),
        &format!("[network]\nallow = [\"allowed.test:{p}\", \"127.0.0.1:{p}\"]"),
    );
    let r = env.run(&job);
    r.assert_code(0);
    assert_eq!(r.value("code"), "403");
    assert_eq!(origin.count(), 0);
    let lines = log_lines(&r);
    assert_eq!(lines[0]["decision"], "denied");
    assert_eq!(lines[0]["host"], "other.test");
    assert!(
        lines[0]["reason"]
            .as_str()
            .unwrap()
            .contains("not on the job's allow list"),
        "{lines:?}"
    );
}

#[test]
fn bypassing_the_proxy_reaches_nothing_and_udp_goes_nowhere() {
    let origin = Origin::start();
    let p = origin.port;
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let up = udp.local_addr().unwrap().port();
    let env = env_with_hosts("net-bypass", p, "");
    let run = format!(
        "curl -s --noproxy '*' --max-time 5 http://127.0.0.1:{p}/ && echo direct=reached || echo direct=failed\n\
         python3 -c \"import socket,errno\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ntry:\n  s.sendto(b'x',('127.0.0.1',{up})); print('udp_sent=locally')\nexcept OSError as e: print('udp_sent='+errno.errorcode[e.errno])\""
    );
    let job = one_step(
        "bypass",
        &run,
        &format!("[network]\nallow = [\"allowed.test:{p}\", \"127.0.0.1:{p}\"]"),
    );
    let r = env.run(&job);
    r.assert_code(0);
    assert_eq!(r.value("direct"), "failed");
    assert_eq!(
        origin.count(),
        0,
        "a direct connection reached the host's server"
    );
    // The datagram went to the job's own loopback, never to the host's socket.
    let mut buf = [0u8; 8];
    assert!(
        udp.recv_from(&mut buf).is_err(),
        "a datagram from the job reached the host"
    );
    assert!(log_lines(&r).is_empty());
}

#[test]
fn without_a_network_section_there_is_no_forwarder_and_no_proxy_variables() {
    let env = Env::new("net-none");
    let r = env.run(&one_step("none", "env | grep -ci proxy | sed 's/^/proxy_vars=/'; curl -s --max-time 3 http://127.0.0.1:3128/ && echo forwarder=yes || echo forwarder=no", ""));
    r.assert_code(0);
    assert_eq!(r.value("proxy_vars"), "0");
    assert_eq!(r.value("forwarder"), "no");
    assert!(!r.out.join("egress.log").exists());
    assert!(r.result()["egress"].is_null());
}

#[test]
fn an_allow_list_above_the_operators_ceiling_is_refused() {
    let env = Env::new("net-ceiling");
    env.write_config_sections(
        "",
        "[egress]\nceiling_untrusted = [\"*.example.org:443\"]\nceiling_trusted = [\"*\"]\n",
    );
    let job = one_step(
        "ceiling",
        "true",
        "[network]\nallow = [\"pkg.example.org:443\", \"evil.test:443\"]",
    );
    let r = env.run(&job);
    r.assert_code(2);
    assert!(
        r.stderr.contains("network.allow[1]") && r.stderr.contains("egress.ceiling_untrusted"),
        "{r}"
    );
    // The same list is within the trusted ceiling.
    let r = env.run_with(&job, &["--trust", "trusted"]);
    r.assert_code(0);
}

/// A public address the operator names as the host's own (`host.addresses`: a NAT's public
/// address that hairpins back to the host) is treated as the host's interface addresses
/// are: under the open ceiling a job listing it is refused before it runs, naming it; the
/// same address is listable while the operator does not name it.
#[test]
fn an_address_the_operator_names_as_the_hosts_own_is_not_covered_by_the_open_ceiling() {
    let env = Env::new("net-ceiling-own");
    env.write_config_sections("", "[host]\naddresses = [\"93.184.216.34\"]\n");
    // The step makes no connection: nothing leaves this host.
    let job = one_step(
        "own",
        "echo ran",
        "[network]\nallow = [\"example.org:443\", \"93.184.216.34:22\"]",
    );
    let r = env.run_with(&job, &["--trust", "trusted"]);
    r.assert_code(2);
    assert!(
        r.stderr.contains("network.allow[1]") && r.stderr.contains("host's own"),
        "{r}"
    );
    assert!(!r.stdout.contains("ran"), "{r}");
    let other = Env::new("net-ceiling-not-own");
    let r = other.run_with(
        &one_step(
            "own",
            "echo ran",
            "[network]\nallow = [\"93.184.216.34:22\"]",
        ),
        &["--trust", "trusted"],
    );
    r.assert_code(0);
}

/// The default, open ceiling (`*`) covers public hosts only: a job listing the host's
/// loopback or a private address is refused before it runs, so a pull request cannot reach
/// the build host's own services through the proxy. An operator who means it names the
/// address in the ceiling.
#[test]
fn the_open_default_ceiling_does_not_let_a_job_list_loopback_or_private_addresses() {
    let origin = Origin::start();
    let p = origin.port;
    let env = Env::new("net-ceiling-local");
    for literal in [
        format!("127.0.0.1:{p}"),
        "10.0.0.5:2375".to_owned(),
        format!("[::1]:{p}"),
    ] {
        let job = one_step(
            "local",
            "echo ran",
            &format!("[network]\nallow = [\"{literal}\"]"),
        );
        for trust in ["untrusted", "trusted"] {
            let r = env.run_with(&job, &["--trust", trust]);
            r.assert_code(2);
            assert!(
                r.stderr.contains("network.allow[0]")
                    && r.stderr.contains("only a ceiling entry naming it"),
                "{literal} {trust}: {r}"
            );
            assert!(!r.stdout.contains("ran"), "{r}");
        }
    }
    assert_eq!(origin.count(), 0);
    // Named by the operator, the address is reached.
    env.write_config_sections(
        "",
        &format!("[egress]\nceiling_untrusted = [\"*\", \"127.0.0.1:{p}\"]\n"),
    );
    let job = one_step(
        "local",
        // NO_PROXY names loopback (for the job's own servers): the proxy is asked explicitly.
        &format!("curl -s --noproxy '' --max-time 10 http://127.0.0.1:{p}/"),
        &format!("[network]\nallow = [\"127.0.0.1:{p}\"]"),
    );
    let r = env.run(&job);
    r.assert_code(0);
    assert!(r.stdout.contains("hello from the origin"), "{r}");
}

#[test]
fn audit_mode_logs_everything_refuses_metadata_and_loopback_and_is_recorded() {
    let origin = Origin::start();
    let p = origin.port;
    let env = env_with_hosts("net-audit", p, "allow_audit = true\naudit = true\n");
    let run = format!("echo \"meta=$(curl -s -o /dev/null -w '%{{http_code}}' http://meta.test:{p}/)\"\necho \"loop=$(curl -s -o /dev/null -w '%{{http_code}}' http://allowed.test:{p}/)\"");
    let r = env.run(&one_step("audit", &run, ""));
    r.assert_code(0);
    assert_eq!(r.value("meta"), "403");
    assert_eq!(
        r.value("loop"),
        "403",
        "the host's own loopback stays closed in audit mode"
    );
    assert_eq!(origin.count(), 0);
    assert_eq!(r.result()["egress"]["audit"], true);
    let o = std::process::Command::new(bulwark_tests::bulwark_bin())
        .args(["egress", "suggest"])
        .arg(r.out.join("egress.log"))
        .output()
        .unwrap();
    assert!(o.status.success());
    let suggested = String::from_utf8_lossy(&o.stdout);
    // What the job tried, minus what can never be allowed (the metadata address).
    assert_eq!(
        suggested.lines().collect::<Vec<_>>(),
        vec![format!("127.0.0.1:{p}"), format!("allowed.test:{p}")],
        "{suggested}"
    );
    // The loopback entry is pointed out: only an operator's ceiling naming it lets a job list it.
    let notes = String::from_utf8_lossy(&o.stderr);
    assert!(
        notes.contains(&format!("note: 127.0.0.1:{p} is a loopback address"))
            && !notes.contains("allowed.test"),
        "{notes}"
    );
    // Listed exactly (and named by the ceiling), the loopback origin is reached in audit mode
    // as in enforcing mode, by either trust level: audit mode never takes away what a list
    // names.
    for trust in ["untrusted", "trusted"] {
        let listed = env.run_with(
            &one_step(
                "auditlisted",
                &run,
                &format!("[network]\nallow = [\"allowed.test:{p}\", \"127.0.0.1:{p}\"]"),
            ),
            &["--trust", trust],
        );
        listed.assert_code(0);
        assert_eq!(listed.value("meta"), "403", "{trust}");
        assert_eq!(listed.value("loop"), "200", "{trust}: {listed}");
    }
    assert_eq!(origin.count(), 2);
}

/// Audit mode takes an untrusted job beyond its list to the public internet only: a private
/// network (here a special range a connect never leaves this host for, multicast) is judged
/// as in enforcing mode; a trusted job's audit reaches it.
#[test]
fn an_untrusted_jobs_audit_stops_at_private_networks_and_a_trusted_jobs_does_not() {
    let env = Env::new("net-audit-private");
    env.write_config_sections(
        "",
        "[egress]\nallow_audit = true\naudit = true\nhosts = { \"multicast.test\" = \"224.0.0.1\" }\n",
    );
    let run = "echo \"code=$(curl -s -o /dev/null -w '%{http_code}' http://multicast.test:8080/)\"";
    for (trust, code) in [("untrusted", "403"), ("trusted", "502")] {
        let r = env.run_with(&one_step("auditprivate", run, ""), &["--trust", trust]);
        r.assert_code(0);
        assert_eq!(r.value("code"), code, "{trust}: {r}");
        let lines = log_lines(&r);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["address"], "224.0.0.1", "{lines:?}");
        assert!(r.stderr.contains("egress audit mode is on"), "{r}");
    }
}

/// Audit mode refuses the host's own addresses beside loopback: the proxy runs in the host's
/// network namespace, so its interface address (private or public) reaches the host's own
/// services. Refused before any connect: no server is needed to tell.
#[test]
fn audit_mode_refuses_the_hosts_own_interface_address() {
    let Some(host) = bulwark_tests::host_ipv4() else {
        eprintln!("SKIP: this host has no non-loopback IPv4 address to try");
        return;
    };
    let env = Env::new("net-audit-host");
    env.write_config_sections("", "[egress]\nallow_audit = true\naudit = true\n");
    let run = format!("echo \"own=$(curl -s -o /dev/null -w '%{{http_code}}' http://{host}:22/)\"");
    let r = env.run(&one_step("audithost", &run, ""));
    r.assert_code(0);
    assert_eq!(r.value("own"), "403", "{r}");
    let lines = log_lines(&r);
    assert!(
        lines.iter().any(|l| l["decision"] == "denied"
            && l["reason"]
                .as_str()
                .is_some_and(|r| r.contains("an address of the runner's own host"))),
        "{lines:?}"
    );
}

#[test]
fn the_job_cannot_reach_the_runners_sockets_or_the_hosts_abstract_sockets() {
    let env = Env::new("net-sockets");
    // A host process listening on an abstract unix socket: invisible from the job's network
    // namespace (and Landlock's abstract-socket scope forbids it besides).
    let name = format!("bulwark-test-{}", bulwark_tests::random_hex(4));
    use std::os::linux::net::SocketAddrExt;
    let listener = std::os::unix::net::UnixListener::bind_addr(
        &std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap(),
    )
    .unwrap();
    listener.set_nonblocking(true).unwrap();
    let runtime = env.dir.join("run");
    let run = format!(
        "python3 -c \"import socket,errno\ns=socket.socket(socket.AF_UNIX)\ntry:\n  s.connect(b'\\0{name}'); print('abstract=connected')\nexcept OSError as e: print('abstract='+errno.errorcode[e.errno])\"\n\
         test -e {} && echo runtime=visible || echo runtime=absent",
        runtime.display()
    );
    let r = env.run(&one_step(
        "sockets",
        &run,
        "[network]\nallow = [\"allowed.test:443\"]",
    ));
    r.assert_code(0);
    assert_ne!(r.value("abstract"), "connected");
    assert_eq!(r.value("runtime"), "absent");
    assert!(
        listener.accept().is_err(),
        "the job reached a host abstract socket"
    );
}

#[test]
fn two_hundred_concurrent_connections_from_one_job_complete_or_are_refused_never_hang() {
    let origin = Origin::start();
    let p = origin.port;
    let env = env_with_hosts("net-many", p, "");
    env.write_src(
        "many.py",
        &format!(
            r#"
import socket, threading
results = []
lock = threading.Lock()
def one():
    try:
        s = socket.create_connection(("127.0.0.1", 3128), timeout=20)
        s.settimeout(20)
        s.sendall(b"GET http://allowed.test:{p}/ HTTP/1.1\r\nHost: allowed.test:{p}\r\n\r\n")
        data = b""
        while True:
            c = s.recv(4096)
            if not c:
                break
            data += c
        r = "ok" if b"hello from the origin" in data else ("refused" if data.startswith(b"HTTP/1.1 503") or not data else "other:" + data[:40].decode(errors="replace"))
    except socket.timeout:
        r = "hang"
    except OSError:
        r = "refused"
    with lock:
        results.append(r)
ts = [threading.Thread(target=one) for _ in range(200)]
[t.start() for t in ts]
[t.join() for t in ts]
print("ok=%d refused=%d hang=%d other=%d" % (results.count("ok"), results.count("refused"), results.count("hang"), sum(1 for r in results if r.startswith("other"))))
"#
        ),
    );
    let job = one_step(
        "many",
        "python3 many.py",
        &format!("[network]\nallow = [\"allowed.test:{p}\", \"127.0.0.1:{p}\"]"),
    );
    let r = env.run(&job);
    r.assert_code(0);
    let v = r.value("ok");
    let nums: Vec<usize> = v
        .split(|c: char| !c.is_ascii_digit())
        .filter(|x| !x.is_empty())
        .map(|x| x.parse().unwrap())
        .collect();
    let (ok, refused, hang, other) = (nums[0], nums[1], nums[2], nums[3]);
    assert_eq!(ok + refused, 200, "{v}");
    assert_eq!((hang, other), (0, 0), "{v}");
    assert!(ok >= 100, "most connections should complete: {v}");
}
