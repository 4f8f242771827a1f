//! The egress proxy on its own: a real proxy on a unix socket in a temporary directory,
//! origin servers on 127.0.0.1 that count their connections, clients speaking `CONNECT` and
//! plain HTTP over `std::os::unix::net::UnixStream`. Every read has a timeout, so a hang fails
//! the test instead of blocking it. Names point at the test's servers through `egress.hosts`,
//! and the allow lists name `127.0.0.1:<port>` explicitly, as the address rules demand. Every
//! other name fails to resolve in the proxy's test resolver ([`no_such_name`]): no test asks
//! the host's resolver, which would send a query beyond this machine.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bulwark_protocol::{AllowEntry, CeilingEntry};
use bulwark_runner::egress::{self, check_ceiling, EgressPolicy, JobProxy, ProxyLimits};

const TIMEOUT: Duration = Duration::from_secs(20);

/// An HTTP origin on 127.0.0.1 that answers one request per connection with its name and
/// records what reached it.
struct Origin {
    port: u16,
    conns: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
    /// Bytes received after the first request (a second request must never arrive).
    extra: Arc<AtomicUsize>,
}

fn origin(name: &'static str) -> Origin {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let conns = Arc::new(AtomicUsize::new(0));
    let heads = Arc::new(Mutex::new(Vec::new()));
    let extra = Arc::new(AtomicUsize::new(0));
    let (c, h, e) = (conns.clone(), heads.clone(), extra.clone());
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            c.fetch_add(1, Ordering::SeqCst);
            let (h, e) = (h.clone(), e.clone());
            thread::spawn(move || {
                conn.set_read_timeout(Some(TIMEOUT)).unwrap();
                let Some(head) = read_head(&mut conn) else {
                    return;
                };
                h.lock().unwrap().push(head);
                let body = format!("hello from {name}");
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                conn.set_read_timeout(Some(Duration::from_millis(300)))
                    .unwrap();
                let mut rest = [0u8; 4096];
                while let Ok(n) = conn.read(&mut rest) {
                    if n == 0 {
                        break;
                    }
                    e.fetch_add(n, Ordering::SeqCst);
                }
            });
        }
    });
    Origin {
        port,
        conns,
        heads,
        extra,
    }
}

/// Reads up to and including the blank line; `None` on EOF or error first.
fn read_head(stream: &mut impl Read) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
        if head.len() > 100_000 {
            return None;
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

struct Proxy {
    /// Holds the socket and the log; removed when the `Proxy` drops, after the proxy stops.
    _dir: bulwark_tests::TempDir,
    sock: PathBuf,
    log: PathBuf,
    proxy: Option<JobProxy>,
}

impl Proxy {
    fn start(
        name: &str,
        allow: &[String],
        hosts: &[(&str, &str)],
        audit: bool,
        limits: ProxyLimits,
    ) -> Proxy {
        let policy = EgressPolicy::new(allow, &host_map(hosts), audit, &[]).unwrap();
        Proxy::with_policy(name, policy, limits)
    }

    /// A proxy for `policy` (which decides every address rule itself).
    fn with_policy(name: &str, policy: EgressPolicy, limits: ProxyLimits) -> Proxy {
        let dir = bulwark_tests::TempDir::new(&format!("egress-{name}"));
        // As `bulwark` does at start: the proxy runs in this process, and the clients, origins
        // and relays of the busier tests need more than an ordinary user's 1024 descriptors.
        egress::raise_descriptor_limit();
        let sock = dir.join("egress.sock");
        let log = dir.join("egress.log");
        let proxy = egress::start_with_resolver(&sock, policy, &log, limits, no_such_name).unwrap();
        Proxy {
            _dir: dir,
            sock,
            log,
            proxy: Some(proxy),
        }
    }

    fn connect(&self) -> UnixStream {
        let s = UnixStream::connect(&self.sock).unwrap();
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        s.set_write_timeout(Some(TIMEOUT)).unwrap();
        s
    }

    /// Sends `CONNECT target` and returns the status code, the response head and the stream.
    fn tunnel(&self, target: &str) -> (u16, String, UnixStream) {
        let mut s = self.connect();
        write!(s, "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").unwrap();
        let head = read_head(&mut s).unwrap_or_default();
        (status(&head), head, s)
    }

    /// Stops the proxy and returns the log's lines as JSON.
    fn finish(&mut self) -> Vec<serde_json::Value> {
        self.proxy.take().unwrap().shutdown().unwrap();
        assert!(!self.sock.exists(), "socket left behind");
        std::fs::read_to_string(&self.log)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // The proxy stops first; then `dir` goes, with its socket and log.
        drop(self.proxy.take());
    }
}

fn status(head: &str) -> u16 {
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn strings(list: &[String]) -> Vec<String> {
    list.to_vec()
}

/// The usual allow list: `allowed.test` and its address on the origin's port.
fn allow_origin(port: u16) -> Vec<String> {
    vec![format!("allowed.test:{port}"), format!("127.0.0.1:{port}")]
}

const HOSTS: &[(&str, &str)] = &[
    ("allowed.test", "127.0.0.1"),
    ("other.test", "127.0.0.1"),
    ("meta.test", "169.254.169.254"),
    ("private.test", "10.1.2.3"),
    // A special range a connect never leaves this host for: Linux refuses a TCP connect to
    // a multicast address itself (ENETUNREACH).
    ("multicast.test", "224.0.0.1"),
];

/// `hosts` as `egress.hosts` takes them.
fn host_map(hosts: &[(&str, &str)]) -> BTreeMap<String, String> {
    hosts
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// The names the proxies of these tests looked up, absolute (`name.`), in every test.
static ASKED: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The proxy's resolver in these tests: names the overrides do not point elsewhere (overrides
/// and literals never reach a resolver) do not resolve, at once and the same on every
/// machine, online or not, and nothing leaves this one.
fn no_such_name(name: &str, _port: u16) -> io::Result<Vec<SocketAddr>> {
    ASKED.lock().unwrap().push(name.to_owned());
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        "no such name (the tests' resolver)",
    ))
}

/// A GET through an established tunnel; returns the response body text.
fn get_through(mut tunnel: UnixStream) -> String {
    write!(
        tunnel,
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    tunnel.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn an_allowed_name_through_connect_reaches_its_origin() {
    let o = origin("a");
    let mut p = Proxy::start(
        "allowed",
        &allow_origin(o.port),
        HOSTS,
        false,
        ProxyLimits::default(),
    );
    let (code, _, tunnel) = p.tunnel(&format!("allowed.test:{}", o.port));
    assert_eq!(code, 200);
    assert!(get_through(tunnel).ends_with("hello from a"));
    assert_eq!(o.conns.load(Ordering::SeqCst), 1);
    let log = p.finish();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["decision"], "allowed");
    assert_eq!(log[0]["address"], "127.0.0.1");
}

#[test]
fn a_name_not_on_the_list_gets_403_and_a_log_line() {
    let o = origin("a");
    let mut p = Proxy::start(
        "notlisted",
        &allow_origin(o.port),
        HOSTS,
        false,
        ProxyLimits::default(),
    );
    let (code, head, _) = p.tunnel(&format!("other.test:{}", o.port));
    assert_eq!(code, 403, "{head}");
    assert!(head.contains("X-Bulwark-Denied: other.test:"), "{head}");
    assert!(head.contains("not on the job's allow list"), "{head}");
    assert_eq!(o.conns.load(Ordering::SeqCst), 0);
    let log = p.finish();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["host"], "other.test");
    assert_eq!(log[0]["decision"], "denied");
    assert_eq!(log[0]["method"], "CONNECT");
}

#[test]
fn another_port_and_unlisted_literals_are_refused() {
    let o = origin("a");
    let other = origin("b");
    let p = Proxy::start(
        "ports",
        &allow_origin(o.port),
        HOSTS,
        false,
        ProxyLimits::default(),
    );
    assert_eq!(p.tunnel(&format!("allowed.test:{}", other.port)).0, 403);
    assert_eq!(p.tunnel(&format!("127.0.0.1:{}", other.port)).0, 403);
    // The listed literal itself is allowed.
    assert_eq!(p.tunnel(&format!("127.0.0.1:{}", o.port)).0, 200);
    assert_eq!(other.conns.load(Ordering::SeqCst), 0);
}

#[test]
fn forbidden_addresses_are_refused_even_under_a_wildcard_or_listed() {
    let mut p = Proxy::start(
        "forbidden",
        &strings(&[
            "*.test:80".into(),
            "meta.test:80".into(),
            "169.254.169.254:80".into(),
        ]),
        HOSTS,
        false,
        ProxyLimits::default(),
    );
    // What a name resolved to is the operator's to see (egress.log), not the job's: an
    // untrusted job would otherwise map the internal network through the host's resolver.
    for name in ["meta.test", "private.test"] {
        let (code, head, _) = p.tunnel(&format!("{name}:80"));
        assert_eq!(code, 403, "{head}");
        assert!(
            head.contains(&format!("{name} resolves to an address this proxy refuses")),
            "{head}"
        );
        for hidden in ["169.254", "10.1.2.3", "metadata address", "private address"] {
            assert!(!head.contains(hidden), "{hidden} told to the job: {head}");
        }
    }
    // A literal is the job's own: it is told why.
    let (code, head, _) = p.tunnel("169.254.169.254:80");
    assert_eq!(code, 403);
    assert!(head.contains("metadata"), "{head}");
    let log = p.finish();
    let line = |host: &str| {
        log.iter()
            .find(|l| l["host"] == host)
            .unwrap_or_else(|| panic!("{host}: {log:?}"))
            .clone()
    };
    assert_eq!(line("meta.test")["address"], "169.254.169.254");
    let why = line("meta.test")["reason"].as_str().unwrap().to_owned();
    assert!(
        why.contains("169.254.169.254 is a cloud metadata address"),
        "{why}"
    );
    assert_eq!(line("private.test")["address"], "10.1.2.3");
    let why = line("private.test")["reason"].as_str().unwrap().to_owned();
    assert!(why.contains("10.1.2.3 is a private address"), "{why}");
}

/// The send and receive queues (bytes) of this host's TCP socket connected to
/// `127.0.0.1:<remote_port>` from another port (the proxy's upstream side), from
/// `/proc/net/tcp`.
fn queues_towards(remote_port: u16) -> (u64, u64) {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port_of = |addr: &str| u16::from_str_radix(addr.split(':').nth(1).unwrap(), 16).unwrap();
    let f = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| port_of(f[2]) == remote_port && port_of(f[1]) != remote_port)
        .expect("no socket towards the origin");
    let (tx, rx) = f[4].split_once(':').unwrap();
    (
        u64::from_str_radix(tx, 16).unwrap(),
        u64::from_str_radix(rx, 16).unwrap(),
    )
}

/// A job that fills a tunnel towards an origin that never reads, and one that reads fast
/// through a tunnel (so the kernel would grow the buffers) and then stops: what the runner's
/// upstream socket holds either way is bounded by the buffer the proxy fixed, not by the
/// kernel's autotuning ceilings (`tcp_wmem`, `tcp_rmem`: megabytes per tunnel, charged to
/// the runner, not the job, times `max_connections`).
#[test]
fn tunnels_the_other_side_stops_reading_hold_a_bounded_buffer_in_the_runner() {
    let bound = 2 * u64::from(egress::proxy::UPSTREAM_SOCKET_BUFFER);
    // An origin that reads nothing, and one that sends without end.
    let deaf = TcpListener::bind("127.0.0.1:0").unwrap();
    let deaf_port = deaf.local_addr().unwrap().port();
    thread::spawn(move || {
        let held = deaf.accept();
        thread::sleep(TIMEOUT);
        drop(held);
    });
    let flood = TcpListener::bind("127.0.0.1:0").unwrap();
    let flood_port = flood.local_addr().unwrap().port();
    thread::spawn(move || {
        if let Ok((mut conn, _)) = flood.accept() {
            let chunk = vec![b'x'; 1 << 16];
            while conn.write_all(&chunk).is_ok() {}
        }
    });
    let mut allow = allow_origin(deaf_port);
    allow.extend(allow_origin(flood_port));
    let mut p = Proxy::start("unread", &allow, HOSTS, false, ProxyLimits::default());

    let (code, head, mut tunnel) = p.tunnel(&format!("127.0.0.1:{deaf_port}"));
    assert_eq!(code, 200, "{head}");
    tunnel
        .set_write_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let chunk = vec![b'y'; 1 << 16];
    let mut sent = 0u64;
    while sent < 64 << 20 && tunnel.write_all(&chunk).is_ok() {
        sent += chunk.len() as u64;
    }
    assert!(
        sent < 64 << 20,
        "an origin that reads nothing took {sent} bytes"
    );
    let (held, _) = queues_towards(deaf_port);
    eprintln!("towards an origin that reads nothing: {held} bytes held by the runner");
    assert!(
        held > 0 && held <= bound,
        "the runner's upstream socket holds {held} bytes to send (bound {bound})"
    );

    let (code, head, mut tunnel) = p.tunnel(&format!("127.0.0.1:{flood_port}"));
    assert_eq!(code, 200, "{head}");
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0;
    while got < 64 << 20 {
        let n = tunnel.read(&mut buf).unwrap();
        assert!(n > 0, "the tunnel closed after {got} bytes");
        got += n;
    }
    thread::sleep(Duration::from_millis(500));
    let (_, held) = queues_towards(flood_port);
    eprintln!("from an origin the job stopped reading: {held} bytes held by the runner");
    assert!(
        held > 0 && held <= bound,
        "the runner's upstream socket holds {held} bytes received (bound {bound})"
    );
    drop(tunnel);
    p.finish();
}

/// A request whose host:port cannot be read is logged with its target as sent: a job probing
/// for parser differences leaves a record of what it tried.
#[test]
fn a_target_that_does_not_parse_is_logged_as_sent() {
    let o = origin("a");
    let mut p = Proxy::start(
        "unparsed",
        &allow_origin(o.port),
        HOSTS,
        false,
        ProxyLimits::default(),
    );
    let target = format!("http://allowed.test:{}@evil.example/", o.port);
    let mut s = p.connect();
    write!(s, "GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let head = read_head(&mut s).unwrap_or_default();
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    drop(s);
    let log = p.finish();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0]["decision"], "denied");
    assert!(
        log[0]["host"].as_str().unwrap().contains("@evil.example"),
        "{log:?}"
    );
    assert_eq!(o.conns.load(Ordering::SeqCst), 0);
}

#[test]
fn address_forms_are_refused_and_a_trailing_dot_is_the_same_host() {
    let o = origin("a");
    let port = o.port;
    // Names, allowed by a wildcard, that resolve to forms of loopback and the unspecified
    // address: refused by the address rules, not the allow list.
    let resolved = [
        ("zero.test", "0.0.0.0"),
        ("mapped.test", "::ffff:127.0.0.1"),
        ("nat64.test", "64:ff9b::7f00:1"),
        ("sixtofour.test", "2002:7f00:1::"),
    ];
    let hosts: Vec<(&str, &str)> = HOSTS.iter().copied().chain(resolved).collect();
    let mut allow = allow_origin(port);
    allow.push(format!("*.test:{port}"));
    let mut p = Proxy::start("forms", &allow, &hosts, false, ProxyLimits::default());
    let table = [
        (format!("[::ffff:169.254.169.254]:{port}"), 403, "metadata"),
        (format!("0.0.0.0:{port}"), 403, "allow list"),
        (format!("2130706433:{port}"), 403, "ambiguous"),
        (format!("0177.0.0.1:{port}"), 403, "ambiguous"),
        (format!("0x7f.0.0.1:{port}"), 403, "ambiguous"),
        (format!("127.1:{port}"), 403, "ambiguous"),
        (format!("[::1]:{port}"), 403, "allow list"),
        (format!("[::ffff:127.0.0.1]:{port}"), 403, "allow list"),
        // Names that resolve to those forms reach the address rules (the job is told only
        // that the address is refused; egress.log names it, checked below).
        (
            format!("zero.test:{port}"),
            403,
            "resolves to an address this proxy refuses",
        ),
        (
            format!("mapped.test:{port}"),
            403,
            "resolves to an address this proxy refuses",
        ),
        (
            format!("nat64.test:{port}"),
            403,
            "resolves to an address this proxy refuses",
        ),
        (
            format!("sixtofour.test:{port}"),
            403,
            "resolves to an address this proxy refuses",
        ),
        (format!("allowed.test.:{port}"), 200, ""),
        (format!("ALLOWED.test:{port}"), 200, ""),
        (format!("allowed.test..:{port}"), 403, "valid"),
    ];
    for (target, expected, why) in &table {
        let (code, head, _) = p.tunnel(target);
        assert_eq!(code, *expected, "{target}: {head}");
        assert!(head.contains(why), "{target}: {head}");
    }
    // Nothing passed through the two tunnels: the origin's accept thread may count them a
    // moment after the proxy answered (seen once on a loaded machine).
    let deadline = Instant::now() + Duration::from_secs(5);
    while o.conns.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(o.conns.load(Ordering::SeqCst), 2);
    let log = p.finish();
    for (name, ip) in resolved {
        let line = log
            .iter()
            .find(|l| l["host"] == name)
            .unwrap_or_else(|| panic!("{name}: {log:?}"));
        assert_eq!(line["decision"], "denied", "{line}");
        assert_eq!(line["address"], ip, "{line}");
        let why = line["reason"].as_str().unwrap();
        assert!(
            why.contains(" address") && !why.contains("allow list"),
            "{line}"
        );
    }
}

#[test]
fn plain_http_is_rewritten_and_a_kept_alive_second_request_never_reaches_its_host() {
    let a = origin("a");
    let b = origin("b");
    let p = Proxy::start(
        "keepalive",
        &allow_origin(a.port),
        HOSTS,
        false,
        ProxyLimits::default(),
    );
    let mut s = p.connect();
    write!(
        s,
        "GET http://allowed.test:{}/path?q=1 HTTP/1.1\r\nHost: evil.example\r\nConnection: keep-alive\r\n\r\n\
         GET http://other.test:{}/ HTTP/1.1\r\nHost: other.test\r\n\r\n",
        a.port, b.port
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("hello from a"), "{out}");
    assert_eq!(
        b.conns.load(Ordering::SeqCst),
        0,
        "the second host was reached"
    );
    thread::sleep(Duration::from_millis(500));
    assert_eq!(a.conns.load(Ordering::SeqCst), 1);
    assert_eq!(
        a.extra.load(Ordering::SeqCst),
        0,
        "bytes after the first request were forwarded"
    );
    let head = a.heads.lock().unwrap()[0].clone();
    assert!(head.starts_with("GET /path?q=1 HTTP/1.1\r\n"), "{head}");
    assert!(
        head.contains(&format!("Host: allowed.test:{}\r\n", a.port)),
        "{head}"
    );
    assert!(head.contains("Connection: close\r\n"), "{head}");
    assert!(!head.contains("evil.example"), "{head}");
    // A new connection to the second host is checked on its own, and refused.
    let mut s = p.connect();
    write!(
        s,
        "GET http://other.test:{}/ HTTP/1.1\r\nHost: other.test\r\n\r\n",
        b.port
    )
    .unwrap();
    let head = read_head(&mut s).unwrap();
    assert_eq!(status(&head), 403, "{head}");
    assert_eq!(b.conns.load(Ordering::SeqCst), 0);
}

#[test]
fn request_bodies_are_forwarded_by_length_and_chunked() {
    let a = origin("a");
    let p = Proxy::start(
        "bodies",
        &allow_origin(a.port),
        HOSTS,
        false,
        ProxyLimits::default(),
    );
    for body in [
        "Content-Length: 5\r\n\r\nhello".to_string(),
        "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_string(),
    ] {
        let mut s = p.connect();
        write!(s, "POST http://allowed.test:{}/ HTTP/1.1\r\n{body}", a.port).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.ends_with("hello from a"), "{out}");
    }
    let mut s = p.connect();
    write!(
        s,
        "POST http://allowed.test:{}/ HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        a.port
    )
    .unwrap();
    assert_eq!(status(&read_head(&mut s).unwrap()), 400);
}

/// A chunked body whose trailer section holds a request line: the proxy refuses it there,
/// and the origin (which, like a lenient server, would take what follows the body for a
/// request of its own) never reads it.
#[test]
fn a_request_line_in_a_chunked_trailer_never_reaches_the_origin() {
    let (port, requests) = pipelining_origin();
    let p = Proxy::start(
        "trailer",
        &allow_origin(port),
        HOSTS,
        false,
        ProxyLimits::default(),
    );
    let mut s = p.connect();
    write!(
        s,
        "POST http://allowed.test:{port}/upload HTTP/1.1\r\nHost: allowed.test\r\n\
         Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\
         GET /smuggled HTTP/1.1\r\nHost: allowed.test\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    // What the origin read, once the proxy is done with the connection.
    thread::sleep(Duration::from_millis(500));
    let seen = requests.lock().unwrap();
    assert!(
        !seen.iter().any(|(head, body)| head.contains("/smuggled")
            || String::from_utf8_lossy(body).contains("/smuggled")),
        "{seen:?}"
    );
}

/// Every (head, body) an origin read, in order.
type Requests = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// An origin on 127.0.0.1 that, like a lenient keep-alive server, reads request after
/// request on each connection (head, then a body of its `Content-Length`) until the client
/// closes or, once a reply was sent, is silent for 300 ms; answers each, and records every
/// (head, body) it read. The first request has 5 s to arrive, so that a loaded host's slow
/// proxy is not mistaken for a client that sent nothing.
fn pipelining_origin() -> (u16, Requests) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = requests.clone();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let seen = seen.clone();
            thread::spawn(move || {
                conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                while let Some(head) = read_head(&mut conn) {
                    let length = head
                        .lines()
                        .filter_map(|l| l.split_once(':'))
                        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                        .map_or(0, |(_, v)| v.trim().parse().unwrap());
                    let mut body = vec![0u8; length];
                    if conn.read_exact(&mut body).is_err() {
                        return;
                    }
                    seen.lock().unwrap().push((head, body));
                    let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                    // A reply was sent: from here on, a second request would come at once.
                    conn.set_read_timeout(Some(Duration::from_millis(300)))
                        .unwrap();
                }
            });
        }
    });
    (port, requests)
}

#[test]
fn a_body_is_never_read_as_a_second_request_whatever_connection_names() {
    let (port, requests) = pipelining_origin();
    let p = Proxy::start(
        "smuggle",
        &allow_origin(port),
        HOSTS,
        false,
        ProxyLimits::default(),
    );
    let smuggled =
        "GET http://evil.example/ HTTP/1.1\r\nHost: evil.example\r\nX-Pad: 12345\r\n\r\n";
    assert_eq!(smuggled.len(), 71);
    for connection in [
        "keep-alive, Content-Length",
        "Content-Length, Host",
        "close, content-length, transfer-encoding",
    ] {
        requests.lock().unwrap().clear();
        let mut s = p.connect();
        write!(
            s,
            "POST http://allowed.test:{port}/upload HTTP/1.1\r\nHost: allowed.test\r\n\
             Connection: {connection}\r\nContent-Length: {}\r\n\r\n{smuggled}",
            smuggled.len()
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.starts_with("HTTP/1.1 200"), "{connection}: {out}");
        // The origin has seen the connection end (or gone quiet) before this returns.
        thread::sleep(Duration::from_millis(500));
        let requests = requests.lock().unwrap();
        assert_eq!(requests.len(), 1, "{connection}: {requests:?}");
        let (head, body) = &requests[0];
        assert!(head.starts_with("POST /upload HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("\r\nContent-Length: 71\r\n"), "{head}");
        assert!(
            head.contains(&format!("\r\nHost: allowed.test:{port}\r\n")),
            "{head}"
        );
        assert_eq!(body, smuggled.as_bytes(), "{connection}");
    }
}

#[test]
fn malformed_oversized_and_silent_clients_leave_the_proxy_serving_others() {
    let o = origin("a");
    // The head timeout is long, so that on a loaded host the well-behaved client below (whose
    // origin closes only after 300 ms of quiet) is still served well before the silent one
    // would be dropped.
    let limits = ProxyLimits {
        head_timeout: Duration::from_secs(10),
        ..ProxyLimits::default()
    };
    let mut p = Proxy::start("robust", &allow_origin(o.port), HOSTS, false, limits);
    let silent_since = Instant::now();
    let mut silent = p.connect();
    let mut garbage = p.connect();
    garbage.write_all(b"\x00\x01\x02 nonsense\r\n\r\n").unwrap();
    assert_eq!(status(&read_head(&mut garbage).unwrap()), 400);
    let mut big = p.connect();
    let huge = format!(
        "GET http://allowed.test/ HTTP/1.1\r\nX: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let _ = big.write_all(huge.as_bytes());
    let head = read_head(&mut big).unwrap_or_default();
    assert!(head.is_empty() || status(&head) == 431, "{head}");
    // Meanwhile a well-behaved client is served, well before the silent one's head timeout
    // (counted from the silent one's connection, so that a proxy that waited on it before
    // serving anyone else fails here).
    let (code, _, tunnel) = p.tunnel(&format!("allowed.test:{}", o.port));
    assert_eq!(code, 200);
    assert!(get_through(tunnel).ends_with("hello from a"));
    let served_after = silent_since.elapsed();
    assert!(
        served_after < Duration::from_secs(8),
        "served {served_after:?} after the silent client connected (head timeout 10 s)"
    );
    // The silent one is answered 408 after the head timeout, not kept forever.
    let head = read_head(&mut silent).unwrap();
    assert_eq!(status(&head), 408, "{head}");
    let log = p.finish();
    assert_eq!(log.iter().filter(|l| l["decision"] == "denied").count(), 3);
    // The oversized head was refused as that (the client may have seen a reset instead of
    // the 431: the proxy closes with the rest of the head unread).
    assert!(
        log.iter().any(|l| l["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("request head larger than")),
        "{log:?}"
    );
}

#[test]
fn one_gib_through_connect_arrives_byte_identical() {
    const BLOCK: usize = 1 << 20;
    const BLOCKS: u64 = 1024;
    fn block(i: u64) -> Vec<u8> {
        let mut b: Vec<u8> = (0..BLOCK).map(|j| (j % 251) as u8 ^ (i as u8)).collect();
        b[..8].copy_from_slice(&i.to_le_bytes());
        b
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        for i in 0..BLOCKS {
            conn.write_all(&block(i)).unwrap();
        }
    });
    let mut p = Proxy::start(
        "gib",
        &allow_origin(port),
        HOSTS,
        false,
        ProxyLimits::default(),
    );
    let (code, _, mut tunnel) = p.tunnel(&format!("allowed.test:{port}"));
    assert_eq!(code, 200);
    let mut got = vec![0u8; BLOCK];
    for i in 0..BLOCKS {
        tunnel.read_exact(&mut got).unwrap();
        assert!(got == block(i), "block {i} differs");
    }
    assert_eq!(tunnel.read(&mut got).unwrap(), 0, "bytes beyond 1 GiB");
    drop(tunnel);
    let log = p.finish();
    assert_eq!(log[0]["bytes_down"], BLOCKS * BLOCK as u64);
}

#[test]
fn two_hundred_concurrent_connections_complete_or_are_refused_never_hang() {
    let o = origin("a");
    let limits = ProxyLimits {
        max_connections: 50,
        ..ProxyLimits::default()
    };
    let mut p = Proxy::start("many", &allow_origin(o.port), HOSTS, false, limits);
    let (tx, rx) = mpsc::channel();
    for _ in 0..200 {
        let (tx, sock, port) = (tx.clone(), p.sock.clone(), o.port);
        thread::spawn(move || {
            // What else happened is kept, so that a failure says what it was.
            let outcome = (|| -> std::io::Result<String> {
                let mut s = UnixStream::connect(&sock)?;
                s.set_read_timeout(Some(TIMEOUT))?;
                write!(s, "CONNECT allowed.test:{port} HTTP/1.1\r\n\r\n")?;
                let head = read_head(&mut s).unwrap_or_default();
                Ok(match status(&head) {
                    200 => {
                        let got = get_through(s);
                        if got.ends_with("hello from a") {
                            "completed".into()
                        } else {
                            format!("failed: through the tunnel: {got:?}")
                        }
                    }
                    503 => "refused".into(),
                    _ => format!("failed: answer {head:?}"),
                })
            })();
            tx.send(outcome.unwrap_or_else(|e| format!("failed: {e}")))
                .unwrap();
        });
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut results = Vec::new();
    while results.len() < 200 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(r) => results.push(r),
            Err(_) => panic!("only {} of 200 connections finished", results.len()),
        }
    }
    let completed = results.iter().filter(|r| *r == "completed").count();
    let refused = results.iter().filter(|r| *r == "refused").count();
    assert_eq!(completed + refused, 200, "{results:?}");
    assert!(completed >= 50, "{results:?}");
    let log = p.finish();
    assert_eq!(log.len(), 200);
}

#[test]
fn a_flood_of_long_denials_cannot_keep_an_allowed_connection_out_of_the_log() {
    let o = origin("a");
    let limits = ProxyLimits {
        log_cap: 32 * 1024,
        ..ProxyLimits::default()
    };
    let mut p = Proxy::start("flood", &allow_origin(o.port), HOSTS, false, limits);
    let method = "A".repeat(8 * 1024);
    for _ in 0..200 {
        let mut s = p.connect();
        write!(s, "{method} http://other.test:{}/ HTTP/1.1\r\n\r\n", o.port).unwrap();
        assert_eq!(status(&read_head(&mut s).unwrap()), 403);
    }
    let (code, _, tunnel) = p.tunnel(&format!("allowed.test:{}", o.port));
    assert_eq!(code, 200);
    assert!(get_through(tunnel).ends_with("hello from a"));
    let summary = p.proxy.take().unwrap().shutdown().unwrap();
    assert_eq!((summary.denied, summary.allowed), (200, 1));
    assert!(summary.truncated);
    let text = std::fs::read_to_string(&p.log).unwrap();
    assert!(text.len() <= 32 * 1024, "{}", text.len());
    let log: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let allowed = log.iter().find(|l| l["decision"] == "allowed");
    assert_eq!(
        allowed.expect("the allowed connection is logged")["host"],
        "allowed.test"
    );
    let markers: Vec<_> = log.iter().filter(|l| l["truncated"] == true).collect();
    assert_eq!(markers.len(), 1, "{markers:?}");
    assert_eq!(markers[0]["scope"], "denied");
    for line in log.iter().filter(|l| l["decision"] == "denied") {
        let logged = line["method"].as_str().unwrap();
        assert!(
            logged.len() <= 256 && logged.ends_with("…[cut]"),
            "{logged}"
        );
    }
}

#[test]
fn log_lines_have_every_field() {
    let o = origin("a");
    let mut allow = allow_origin(o.port);
    allow.push("meta.test:80".into());
    let mut p = Proxy::start("fields", &allow, HOSTS, false, ProxyLimits::default());
    let (_, _, t) = p.tunnel(&format!("allowed.test:{}", o.port));
    get_through(t);
    p.tunnel("meta.test:80");
    let log = p.finish();
    assert_eq!(log.len(), 2);
    for line in &log {
        for key in [
            "time",
            "host",
            "port",
            "address",
            "decision",
            "reason",
            "bytes_up",
            "bytes_down",
            "duration_ms",
            "method",
        ] {
            assert!(line.get(key).is_some(), "{key} missing in {line}");
        }
        assert!(line["time"].as_str().unwrap().ends_with('Z'));
    }
    let allowed = log.iter().find(|l| l["decision"] == "allowed").unwrap();
    assert!(allowed["bytes_up"].as_u64().unwrap() > 0);
    assert!(allowed["bytes_down"].as_u64().unwrap() > 0);
    assert!(allowed["reason"]
        .as_str()
        .unwrap()
        .contains("allowed by allowed.test:"));
    let denied = log.iter().find(|l| l["decision"] == "denied").unwrap();
    assert_eq!(denied["host"], "meta.test");
    assert_eq!(denied["address"], "169.254.169.254");
}

#[test]
fn audit_mode_allows_unlisted_hosts_and_suggest_lists_what_the_run_needed() {
    let limits = ProxyLimits {
        connect_timeout: Duration::from_millis(300),
        ..ProxyLimits::default()
    };
    let hosts = host_map(HOSTS);
    // An untrusted job's audit: no private network beyond its list.
    let untrusted = EgressPolicy::new(&[], &hosts, true, &[]).unwrap();
    let mut p = Proxy::with_policy("audit-untrusted", untrusted, limits.clone());
    for name in ["private.test:8080", "multicast.test:8080"] {
        let (code, head, _) = p.tunnel(name);
        assert_eq!(code, 403, "{name}: {head}");
    }
    let log = p.finish();
    assert_eq!(log[0]["address"], "10.1.2.3", "{log:?}");
    assert_eq!(log[1]["address"], "224.0.0.1", "{log:?}");
    let trusted = EgressPolicy::new(&[], &hosts, true, &[])
        .unwrap()
        .reaching_private_in_audit(true);
    let mut p = Proxy::with_policy("audit", trusted, limits);
    // A trusted job's audit reaches the special ranges (the connect itself fails here, in
    // this host's kernel); loopback and metadata it does not.
    let (code, head, _) = p.tunnel("multicast.test:8080");
    assert_eq!(code, 502, "{head}");
    // The job is told the connect failed, not where the name led; the log says both.
    assert!(
        head.contains("connecting to multicast.test:8080 failed") && !head.contains("224.0"),
        "{head}"
    );
    assert_eq!(p.tunnel("allowed.test:80").0, 403);
    assert_eq!(p.tunnel("meta.test:80").0, 403);
    assert_eq!(p.tunnel("2130706433:80").0, 403);
    let log = p.finish();
    let special = log.iter().find(|l| l["host"] == "multicast.test").unwrap();
    assert_eq!(special["address"], "224.0.0.1");
    let audit_note = special["reason"].as_str().unwrap();
    assert!(
        audit_note.contains("audit mode") && audit_note.contains("224.0.0.1:8080"),
        "{audit_note}"
    );
    let suggested = egress::suggest(&p.log).unwrap();
    assert_eq!(
        suggested,
        [
            "127.0.0.1:80",
            "224.0.0.1:8080",
            "allowed.test:80",
            "multicast.test:8080"
        ]
    );
}

/// An untrusted job in audit mode may try names outside its list, which the host's resolver
/// resolves: were it told "cannot resolve" for one name and "resolves to a refused address"
/// for another, a pull request's job could list the internal names that resolver knows. It
/// is told the same for both; egress.log keeps which. (`private.test` is an override, refused
/// before any connect; `nonexistent.invalid` fails in the tests' resolver, `no_such_name`,
/// which asks no name server.)
#[test]
fn an_untrusted_audit_cannot_tell_an_internal_name_from_one_that_does_not_resolve() {
    let hosts = host_map(HOSTS);
    let denied = |head: &str, name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix("X-Bulwark-Denied: "))
            .unwrap_or_else(|| panic!("{head}"))
            .replace(name, "NAME")
    };
    let untrusted = EgressPolicy::new(&[], &hosts, true, &[]).unwrap();
    let mut p = Proxy::with_policy("audit-oracle", untrusted, ProxyLimits::default());
    let (inside, inside_head, _) = p.tunnel("private.test:8080");
    let (nowhere, nowhere_head, _) = p.tunnel("nonexistent.invalid:8080");
    assert_eq!(
        (inside, nowhere),
        (403, 403),
        "{inside_head}\n{nowhere_head}"
    );
    assert_eq!(
        denied(&inside_head, "private.test"),
        "NAME: not reached: in audit mode a name outside the allow list reaches public \
         addresses only (the run's egress.log says why)"
    );
    assert_eq!(
        denied(&nowhere_head, "nonexistent.invalid"),
        denied(&inside_head, "private.test")
    );
    let log = p.finish();
    let line = |host: &str| log.iter().find(|l| l["host"] == host).unwrap().clone();
    assert_eq!(line("private.test")["address"], "10.1.2.3");
    let why = line("private.test")["reason"].as_str().unwrap().to_owned();
    assert!(why.contains("10.1.2.3 is a private address"), "{why}");
    let why = line("nonexistent.invalid")["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(why.contains("cannot resolve nonexistent.invalid"), "{why}");
    assert!(!why.contains("not reached"), "{why}");
    assert!(
        ASKED
            .lock()
            .unwrap()
            .iter()
            .any(|n| n == "nonexistent.invalid."),
        "the tests' resolver was not asked"
    );

    // A listed name is the job's own: it is told, in audit mode as in enforcing mode.
    let listed = EgressPolicy::new(
        &strings(&[
            "private.test:8080".into(),
            "nonexistent.invalid:8080".into(),
        ]),
        &hosts,
        true,
        &[],
    )
    .unwrap();
    let p = Proxy::with_policy("audit-listed", listed, ProxyLimits::default());
    let (code, head, _) = p.tunnel("private.test:8080");
    assert_eq!(code, 403, "{head}");
    assert!(
        head.contains("private.test resolves to an address this proxy refuses"),
        "{head}"
    );
    let (code, head, _) = p.tunnel("nonexistent.invalid:8080");
    assert_eq!(code, 502, "{head}");
    assert!(
        head.contains("cannot resolve nonexistent.invalid"),
        "{head}"
    );
    // A trusted job's audit is told too: its audit is how an operator learns which internal
    // names a release build needs.
    let trusted = EgressPolicy::new(&[], &hosts, true, &[])
        .unwrap()
        .reaching_private_in_audit(true);
    let p = Proxy::with_policy("audit-trusted", trusted, ProxyLimits::default());
    let (code, head, _) = p.tunnel("nonexistent.invalid:8080");
    assert_eq!(code, 502, "{head}");
    assert!(
        head.contains("cannot resolve nonexistent.invalid"),
        "{head}"
    );
}

#[test]
fn suggest_skips_what_no_list_can_allow_and_lines_it_did_not_write() {
    let dir = bulwark_tests::TempDir::new("egress-suggest");
    let path = dir.join("egress.log");
    std::fs::write(
        &path,
        "{\"time\":\"t\",\"host\":\"b.test\",\"port\":443,\"address\":\"1.2.3.4\",\"decision\":\"denied\",\"reason\":\"\",\"bytes_up\":0,\"bytes_down\":0,\"duration_ms\":0,\"method\":\"CONNECT\"}\n\
         not json\n\
         {\"time\":\"t\",\"truncated\":true,\"reason\":\"cap\"}\n\
         {\"time\":\"t\",\"host\":\"a.test\",\"port\":443,\"address\":null,\"decision\":\"denied\",\"reason\":\"\",\"bytes_up\":0,\"bytes_down\":0,\"duration_ms\":0,\"method\":\"CONNECT\"}\n\
         {\"time\":\"t\",\"host\":\"b.test\",\"port\":443,\"address\":\"1.2.3.4\",\"decision\":\"allowed\",\"reason\":\"\",\"bytes_up\":0,\"bytes_down\":0,\"duration_ms\":0,\"method\":\"CONNECT\"}\n",
    )
    .unwrap();
    assert_eq!(
        egress::suggest(&path).unwrap(),
        ["a.test:443", "b.test:443"]
    );
}

#[test]
fn the_ceiling_check_names_the_entry_above_it() {
    let allow: Vec<AllowEntry> = [
        "api.example.com:443",
        "*.cdn.example.com:443",
        "example.com:443",
    ]
    .iter()
    .map(|s| AllowEntry::parse(s).unwrap())
    .collect();
    let ceiling = |list: &[&str]| -> Vec<CeilingEntry> {
        list.iter()
            .map(|s| CeilingEntry::parse(s).unwrap())
            .collect()
    };
    let err = check_ceiling(
        &allow,
        &ceiling(&["*.example.com:443"]),
        &Default::default(),
    )
    .unwrap_err();
    assert!(
        err.starts_with("network.allow[2]: example.com:443 "),
        "{err}"
    );
    assert!(check_ceiling(
        &allow,
        &ceiling(&["*.example.com:443", "example.com:443"]),
        &Default::default()
    )
    .is_ok());
    assert!(check_ceiling(&allow, &ceiling(&["*:443"]), &Default::default()).is_ok());
    assert!(
        check_ceiling(&allow, &ceiling(&["*:80"]), &Default::default())
            .unwrap_err()
            .contains("network.allow[0]")
    );
    assert!(check_ceiling(&allow, &ceiling(&["*"]), &Default::default()).is_ok());
    let err = check_ceiling(
        &allow,
        &ceiling(&["api.example.com:443"]),
        &Default::default(),
    )
    .unwrap_err();
    assert!(err.contains("*.cdn.example.com:443"), "{err}");
}

/// The whole path but the sandbox: curl → forwarder (in a thread here, in init for real) →
/// proxy → origin.
#[test]
fn curl_through_the_forwarder_and_the_proxy_reaches_an_allowed_host_only() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("SKIPPED: curl is not installed");
        return;
    }
    let o = origin("a");
    let p = Proxy::start(
        "curl",
        &allow_origin(o.port),
        HOSTS,
        false,
        ProxyLimits::default(),
    );
    let fwd_port = start_forwarder(&p.sock);
    let curl = |url: &str| {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "-i", "--proxy"])
            .arg(format!("http://127.0.0.1:{fwd_port}"))
            .arg(url)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ok = curl(&format!("http://allowed.test:{}/", o.port));
    assert!(ok.contains("hello from a"), "{ok}");
    let denied = curl(&format!("http://other.test:{}/", o.port));
    assert!(denied.starts_with("HTTP/1.1 403"), "{denied}");
    assert_eq!(o.conns.load(Ordering::SeqCst), 1);
}

use std::process::Command;

fn start_forwarder(sock: &Path) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut fwd = bulwark_sandbox::forwarder::Forwarder::new(listener, sock.to_owned(), 64);
    thread::spawn(move || loop {
        fwd.poll_once(&[], None).unwrap();
    });
    // The forwarder is a plain TCP listener: a connect succeeds at once.
    TcpStream::connect(("127.0.0.1", port)).unwrap();
    port
}
