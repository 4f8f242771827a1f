//! The proxy itself: a unix socket per job, served by a small tokio runtime on its own thread.
//!
//! Each client connection carries one request. `CONNECT host:port` is checked, resolved,
//! checked again per address, connected, answered `200 Connection established`, and then
//! spliced both ways. `GET http://host:port/path` (any method but `CONNECT`) is checked the
//! same way, rewritten to origin form with `Host` set to the checked authority and
//! `Connection: close`, its body forwarded exactly (by `Content-Length` or chunked framing),
//! the response relayed until the origin closes, and the client connection closed: a second
//! request on the same connection is never read, so it can never reach any upstream.
//! The tunnel and the response are relayed with `splice(2)` through a pipe per direction
//! (`egress::relay`), so their bytes are never copied into the daemon; request bodies, which must
//! be framed, are copied through a buffer.
//!
//! Bounded: at most `max_connections` connections per job (more are answered 503 and closed),
//! a request head of at most `max_head_bytes` and `max_headers` fields read within
//! `head_timeout`, a 64 KiB pipe (or, when no pipe can be had, a 64 KiB buffer) per relayed
//! direction, an idle timeout on every relay, at most one name lookup thread per connection
//! slot (a lookup past its timeout keeps the slot until the resolver returns), and a capped
//! log. Memory per job is therefore at most about
//! `max_connections × (max_head_bytes + 128 KiB)`, plus the kernel's buffers of each
//! upstream socket, which the proxy sets to [`UPSTREAM_SOCKET_BUFFER`] each way before it
//! connects (the kernel doubles the figure for its bookkeeping): left to the kernel's
//! autotuning, each could hold up to `tcp_rmem`'s and `tcp_wmem`'s ceilings (32 MiB received,
//! 4 MiB to send, here) in the runner, charged to the runner, not the job. The job's own side
//! of each connection is charged to the job (its cgroup, `sandbox::cgroup`). Descriptors per
//! connection: the two sockets, plus two pipes (four descriptors) for a tunnel or one pipe for
//! a plain-HTTP response, so at most six; 768 for a job at the default 128 connections.
//!
//! The socket is created with the process umask's mode and owned by the daemon; the job's
//! init must be able to connect to it, so the caller chowns it to the job's host uid (or
//! places it in a directory only that uid can search) before the job starts.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::http::{self, BadRequest, ChunkedTracker, Framing, Head};
use super::log::{now_rfc3339, EgressLog, EgressSummary, Record, DEFAULT_LOG_CAP};
use super::policy::{Decision, EgressPolicy, Host};
use super::relay;

/// Per-job limits of the proxy.
#[derive(Debug, Clone)]
pub struct ProxyLimits {
    /// Concurrent client connections; more are answered 503 and closed at once.
    pub max_connections: usize,
    /// Largest request head, in bytes.
    pub max_head_bytes: usize,
    /// Most header fields in a request.
    pub max_headers: usize,
    /// Time for the whole request head to arrive.
    pub head_timeout: Duration,
    /// A relay with no bytes either way for this long is closed.
    pub idle_timeout: Duration,
    /// Time for name resolution.
    pub resolve_timeout: Duration,
    /// Time for the TCP connect to each checked address.
    pub connect_timeout: Duration,
    /// Cap on `egress.log`, in bytes.
    pub log_cap: u64,
}

impl Default for ProxyLimits {
    fn default() -> Self {
        ProxyLimits {
            max_connections: 128,
            max_head_bytes: 16 * 1024,
            max_headers: 100,
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            resolve_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            log_cap: DEFAULT_LOG_CAP,
        }
    }
}

/// Relay buffer per direction, when a relay cannot splice (no pipe to be had).
const RELAY_BUF: usize = 64 * 1024;
/// Most addresses tried for one name.
const MAX_ADDRESSES: usize = 16;

/// A blocking name lookup: an absolute name (trailing dot) and a port to addresses.
pub type Resolver = fn(&str, u16) -> io::Result<Vec<SocketAddr>>;

/// The host's resolver (`getaddrinfo`), which cannot be cancelled once called.
fn system_resolver(name: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    use std::net::ToSocketAddrs;
    Ok((name, port)
        .to_socket_addrs()?
        .take(MAX_ADDRESSES)
        .collect())
}

/// The name to hand the resolver: absolute (one trailing dot), so that the host's
/// `resolv.conf` search domains never turn an allowed `name` into `name.corp.internal`.
fn absolute_name(host: &str) -> String {
    format!("{host}.")
}

/// A running proxy for one job; [`JobProxy::shutdown`] ends it (dropping it does too, without
/// reporting).
#[derive(Debug)]
pub struct JobProxy {
    socket_path: PathBuf,
    stop: Option<watch::Sender<bool>>,
    thread: Option<JoinHandle<io::Result<EgressSummary>>>,
}

#[derive(Debug)]
struct Shared {
    policy: EgressPolicy,
    limits: ProxyLimits,
    log: Mutex<Option<EgressLog>>,
    log_failed: AtomicBool,
    resolver: Resolver,
}

impl Shared {
    fn record(&self, record: &Record) {
        let mut guard = match self.log.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let failed = match guard.as_mut() {
            Some(log) => log.record(record).is_err(),
            None => true,
        };
        if failed && !self.log_failed.swap(true, Ordering::SeqCst) {
            tracing::error!("egress.log cannot be written; denying further connections");
        }
    }
}

/// Starts the proxy for one job: binds `socket_path` (which must not exist), creates
/// `log_path`, and serves on a background thread until [`JobProxy::shutdown`].
pub fn start(
    socket_path: &Path,
    policy: EgressPolicy,
    log_path: &Path,
    limits: ProxyLimits,
) -> io::Result<JobProxy> {
    start_with_resolver(socket_path, policy, log_path, limits, system_resolver)
}

/// [`start`] with `resolver` in place of the host's: for tests, which must answer names
/// without asking the host's resolver (and through it a name server beyond this machine).
/// Overrides (`egress.hosts`) and literals never reach it, as with the host's.
pub fn start_with_resolver(
    socket_path: &Path,
    policy: EgressPolicy,
    log_path: &Path,
    limits: ProxyLimits,
    resolver: Resolver,
) -> io::Result<JobProxy> {
    let log = EgressLog::create(log_path, limits.log_cap)?;
    // Name lookups are the only blocking work; each holds a connection permit until it
    // returns (see `lookup`), so no more than `max_connections` threads are ever needed.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .max_blocking_threads(limits.max_connections.max(1))
        .build()?;
    let listener = std::os::unix::net::UnixListener::bind(socket_path)?;
    listener.set_nonblocking(true)?;
    let shared = Arc::new(Shared {
        policy,
        limits,
        log: Mutex::new(Some(log)),
        log_failed: AtomicBool::new(false),
        resolver,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let path = socket_path.to_owned();
    let thread = std::thread::Builder::new()
        .name("egress-proxy".into())
        .spawn(move || {
            let served = runtime.block_on(serve(listener, Arc::clone(&shared), stop_rx));
            // Every connection task has ended; what may remain are lookups stuck in the
            // host's resolver, which cannot be cancelled. Dropping the runtime would wait
            // for them, and the job's end with it: leave them to finish on their own (each
            // still holds its connection's permit, which nothing waits for any more).
            runtime.shutdown_background();
            let _ = std::fs::remove_file(&path);
            let log = match shared.log.lock() {
                Ok(mut g) => g.take(),
                Err(poisoned) => poisoned.into_inner().take(),
            };
            served?;
            log.ok_or_else(|| io::Error::other("egress log already closed"))?
                .finish()
        });
    let thread = match thread {
        Ok(t) => t,
        Err(e) => {
            let _ = std::fs::remove_file(socket_path);
            return Err(e);
        }
    };
    Ok(JobProxy {
        socket_path: socket_path.to_owned(),
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

impl JobProxy {
    /// The unix socket clients connect to.
    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// Stops accepting, closes every connection (each is logged), flushes the log, removes
    /// the socket and returns the counts.
    pub fn shutdown(mut self) -> io::Result<EgressSummary> {
        self.stop_and_join()
            .unwrap_or_else(|| Err(io::Error::other("egress proxy already stopped")))
    }

    fn stop_and_join(&mut self) -> Option<io::Result<EgressSummary>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        let thread = self.thread.take()?;
        Some(
            thread
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("egress proxy thread panicked"))),
        )
    }
}

impl Drop for JobProxy {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}

async fn serve(
    listener: std::os::unix::net::UnixListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let listener = UnixListener::from_std(listener)?;
    let slots = Arc::new(Semaphore::new(shared.limits.max_connections));
    let mut tasks = JoinSet::new();
    let task_stop = stop.clone();
    loop {
        tokio::select! {
            _ = stop.wait_for(|&v| v) => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match Arc::clone(&slots).try_acquire_owned() {
                    Ok(permit) => {
                        let shared = Arc::clone(&shared);
                        let stop = task_stop.clone();
                        // The permit goes with the connection, and with its name lookup
                        // when that outlives the connection.
                        tasks.spawn(async move { handle(stream, &shared, stop, permit).await });
                    }
                    Err(_) => refuse_over_limit(stream, &shared),
                },
                // Out of descriptors or memory: wait a little rather than spin; the client
                // stays in the backlog and is served or times out.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            },
        }
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

fn refuse_over_limit(stream: UnixStream, shared: &Shared) {
    let reason = format!(
        "too many connections: at most {} at once per job",
        shared.limits.max_connections
    );
    // The socket's send buffer is empty, so this small write completes or fails at once.
    let _ = stream.try_write(response(503, &reason).as_bytes());
    shared.record(&Record {
        time: now_rfc3339(),
        host: String::new(),
        port: 0,
        address: None,
        decision: "denied".into(),
        reason,
        bytes_up: 0,
        bytes_down: 0,
        duration_ms: 0,
        method: String::new(),
    });
}

/// What one connection did, filled in as it goes so that a cancelled connection (job end,
/// idle timeout) is still recorded.
#[derive(Debug)]
struct Attempt {
    /// This connection's slot among `max_connections`; `None` in unit tests and while a
    /// name lookup has it.
    permit: Option<OwnedSemaphorePermit>,
    started: Instant,
    host: String,
    port: u16,
    address: Option<IpAddr>,
    method: String,
    allowed: Option<String>,
    denied: Option<String>,
    up: AtomicU64,
    down: AtomicU64,
    /// Milliseconds after `started` of the last byte relayed either way.
    activity: AtomicU64,
}

impl Attempt {
    fn new() -> Attempt {
        Attempt {
            permit: None,
            started: Instant::now(),
            host: String::new(),
            port: 0,
            address: None,
            method: String::new(),
            allowed: None,
            denied: None,
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            activity: AtomicU64::new(0),
        }
    }

    /// Counts `n` bytes relayed into `count` (`up` or `down`) and marks activity.
    fn moved(&self, count: &AtomicU64, n: usize) {
        count.fetch_add(n as u64, Ordering::Relaxed);
        let now = self.started.elapsed().as_millis();
        self.activity
            .store(now.try_into().unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

async fn handle(
    mut client: UnixStream,
    shared: &Shared,
    mut stop: watch::Receiver<bool>,
    permit: OwnedSemaphorePermit,
) {
    // The send buffer toward the job stays at the kernel's default: socket memory is charged
    // to the daemon, and a job parking many connections with a client that never reads must
    // not be able to pin megabytes each (a larger buffer measured no faster).
    let mut attempt = Attempt::new();
    attempt.permit = Some(permit);
    tokio::select! {
        () = serve_one(&mut client, shared, &mut attempt) => {}
        _ = stop.wait_for(|&v| v) => {
            let note = "closed at the end of the job";
            match &mut attempt.allowed {
                Some(reason) => *reason = format!("{reason}; {note}"),
                None => attempt.denied = Some(note.into()),
            }
        }
    }
    let _ = client.shutdown().await;
    let (decision, reason) = match (attempt.allowed, attempt.denied) {
        (Some(r), _) => ("allowed", r),
        (None, Some(r)) => ("denied", r),
        (None, None) => ("denied", "closed before a decision".into()),
    };
    shared.record(&Record {
        time: now_rfc3339(),
        host: attempt.host,
        port: attempt.port,
        address: attempt.address.map(|a| a.to_string()),
        decision: decision.into(),
        reason,
        bytes_up: attempt.up.load(Ordering::Relaxed),
        bytes_down: attempt.down.load(Ordering::Relaxed),
        duration_ms: attempt
            .started
            .elapsed()
            .as_millis()
            .try_into()
            .unwrap_or(u64::MAX),
        method: attempt.method,
    });
}

/// A refusal to send to the client and record.
struct Refusal {
    status: u16,
    /// What the job is told (in the response and its `X-Bulwark-Denied` header).
    reason: String,
    /// What `egress.log` records instead, when the job is told less: the address a name
    /// resolved to is the operator's to see, not the job's (an untrusted job would map the
    /// internal network by naming hosts the host's resolver knows).
    detail: Option<String>,
}

impl From<BadRequest> for Refusal {
    fn from(b: BadRequest) -> Self {
        Refusal {
            status: b.status,
            reason: b.reason.into(),
            detail: None,
        }
    }
}

fn refusal(status: u16, reason: impl Into<String>) -> Refusal {
    Refusal {
        status,
        reason: reason.into(),
        detail: None,
    }
}

async fn serve_one(client: &mut UnixStream, shared: &Shared, attempt: &mut Attempt) {
    match exchange(client, shared, attempt).await {
        Ok(()) => {}
        Err(r) => {
            if attempt.allowed.is_none() {
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    client.write_all(response(r.status, &r.reason).as_bytes()),
                )
                .await;
                attempt.denied = Some(r.detail.unwrap_or(r.reason));
            } else if let Some(reason) = &mut attempt.allowed {
                // Failed after the upstream connection was made: the client already has a
                // response or a tunnel; note why it ended.
                *reason = format!("{reason}; ended: {}", r.reason);
            }
        }
    }
}

async fn exchange(
    client: &mut UnixStream,
    shared: &Shared,
    attempt: &mut Attempt,
) -> Result<(), Refusal> {
    let limits = &shared.limits;
    if shared.log_failed.load(Ordering::SeqCst) {
        return Err(refusal(503, "the egress log cannot be written"));
    }
    let (head, leftover) =
        match tokio::time::timeout(limits.head_timeout, read_head(client, limits)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(refusal(
                    408,
                    format!(
                        "no complete request head within {}s",
                        limits.head_timeout.as_secs()
                    ),
                ))
            }
        };
    attempt.method = head.method.clone();
    // Until the host is understood, the log names the target as sent.
    attempt.host = head.target.chars().take(256).collect();
    let connect = head.method == "CONNECT";
    let (authority, path) = if connect {
        (head.target.as_str(), "".into())
    } else {
        http::split_absolute_uri(&head.target)?
    };
    let default_port = if connect { None } else { Some(80) };
    let (raw_host, port) = http::split_authority(authority, default_port)
        .ok_or_else(|| refusal(400, "malformed host:port in the request"))?;
    attempt.port = port;
    attempt.host = raw_host.chars().take(256).collect();
    let host = Host::parse(raw_host).map_err(|d| refusal(403, d.to_string()))?;
    attempt.host = match &host {
        Host::Name(n) => n.clone(),
        Host::Ip(ip) => ip.to_string(),
    };
    let framing = if connect {
        Framing::None
    } else {
        head.framing()?
    };
    let (upstream, reason) = resolve_and_connect(shared, raw_host, port, attempt).await?;
    attempt.allowed = Some(reason);
    if connect {
        // Pipes to splice through; without them (descriptor or pipe limits) the relay copies.
        let pipes = relay::Pipe::pair().ok();
        tunnel(client, upstream, &leftover, pipes, limits, attempt).await
    } else {
        let request = Outgoing {
            head: rewrite_head(&head, &host, port, &path, framing),
            leftover,
            framing,
        };
        let pipe = relay::Pipe::new().ok();
        forward(client, upstream, request, pipe, limits, attempt).await
    }
}

/// Reads up to the end of the head; returns the head and any bytes read beyond it.
async fn read_head(
    client: &mut UnixStream,
    limits: &ProxyLimits,
) -> Result<(Head, Vec<u8>), Refusal> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let room = limits.max_head_bytes.saturating_sub(buf.len());
        if room == 0 {
            return Err(refusal(
                431,
                format!("request head larger than {} bytes", limits.max_head_bytes),
            ));
        }
        let want = room.min(chunk.len());
        let n = client
            .read(&mut chunk[..want])
            .await
            .map_err(|e| refusal(400, format!("reading the request: {e}")))?;
        if n == 0 {
            return Err(refusal(
                400,
                "connection closed before a complete request head",
            ));
        }
        let from = buf.len();
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = http::find_head_end(&buf, from) {
            let head = http::parse_head(&buf[..end], limits.max_headers)?;
            return Ok((head, buf[end..].to_vec()));
        }
    }
}

async fn resolve_and_connect(
    shared: &Shared,
    raw_host: &str,
    port: u16,
    attempt: &mut Attempt,
) -> Result<(TcpStream, String), Refusal> {
    let policy = &shared.policy;
    let limits = &shared.limits;
    let (name, candidates, reason, resolved, public_only) = match policy.decide(raw_host, port) {
        Decision::Deny(d) => return Err(refusal(403, d.to_string())),
        Decision::Literal { ip, reason } => (
            ip.to_string(),
            vec![SocketAddr::new(ip, port)],
            reason,
            false,
            false,
        ),
        Decision::Resolve {
            host,
            reason,
            public_only,
        } => {
            let addrs = match policy.override_for(&host) {
                Some(ip) => Ok(vec![SocketAddr::new(ip, port)]),
                None => lookup(shared, &host, port, attempt).await,
            };
            match addrs {
                Ok(addrs) => (host, addrs, reason, true, public_only),
                Err(r) if public_only => {
                    return Err(not_reached(&host, r.detail.unwrap_or(r.reason)))
                }
                Err(r) => return Err(r),
            }
        }
    };
    // A name only audit mode lets an untrusted job try (`public_only`): whether it resolves,
    // to nothing or to an address the proxy refuses is one answer to the job (see
    // `not_reached`); the log keeps which.
    if candidates.is_empty() {
        let why = format!("{name} has no addresses");
        return Err(if public_only {
            not_reached(&name, why)
        } else {
            refusal(502, why)
        });
    }
    // Every address is checked before any is tried: a name with one forbidden address is
    // refused as a whole rather than quietly narrowed.
    for addr in &candidates {
        if let Err(d) = policy.check_address(&name, *addr) {
            attempt.address = Some(addr.ip());
            // A literal is the job's own; what a name resolved to is not said to the job.
            return Err(if public_only {
                not_reached(&name, d.to_string())
            } else if resolved {
                Refusal {
                    status: 403,
                    reason: format!(
                        "{name} resolves to an address this proxy refuses (the run's \
                         egress.log names it and why)"
                    ),
                    detail: Some(d.to_string()),
                }
            } else {
                refusal(403, d.to_string())
            });
        }
    }
    let mut last = (String::new(), String::new());
    for addr in candidates {
        attempt.address = Some(addr.ip());
        let failed =
            match tokio::time::timeout(limits.connect_timeout, connect_upstream(addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return Ok((stream, reason));
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timed out".to_string(),
            };
        // The job is told what failed, not where a name led (as for a refusal above).
        let told = if resolved {
            format!("connecting to {name}:{port} failed: {failed}")
        } else {
            format!("connecting to {addr} failed: {failed}")
        };
        last = (told, format!("connecting to {addr} failed: {failed}"));
    }
    // The log keeps the address, and why the connection was tried (in audit mode, the
    // verdict enforcing mode would have given), beside why it failed.
    let (told, logged) = last;
    Err(Refusal {
        detail: Some(format!("{logged} ({reason})")),
        ..refusal(502, told)
    })
}

/// The refusal of `name`, a name outside an untrusted job's allow list that its audit mode
/// let it try, which did not resolve, had no address, or resolved to an address the proxy
/// refuses (`detail`, for the log). The job is told the same in each case: were it told
/// "cannot resolve" for one and "refused address" for another, a pull request's job could
/// list which internal names the host's resolver knows. The time a lookup takes is not
/// hidden.
fn not_reached(name: &str, detail: String) -> Refusal {
    Refusal {
        status: 403,
        reason: format!(
            "{name}: not reached: in audit mode a name outside the allow list reaches public \
             addresses only (the run's egress.log says why)"
        ),
        detail: Some(detail),
    }
}

/// The receive and send buffer asked for on each upstream socket (module docs): at a 20 ms
/// round trip a window this size still carries about 25 MB/s per connection.
pub const UPSTREAM_SOCKET_BUFFER: u32 = 512 << 10;

/// Connects to `addr` with the socket's buffers fixed at [`UPSTREAM_SOCKET_BUFFER`] (which
/// also turns off their autotuning), set before the connect so the window offered is bounded
/// from the first byte.
async fn connect_upstream(addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_recv_buffer_size(UPSTREAM_SOCKET_BUFFER)?;
    socket.set_send_buffer_size(UPSTREAM_SOCKET_BUFFER)?;
    socket.connect(addr).await
}

/// Resolves `host` with the shared resolver on a blocking thread, within `resolve_timeout`.
///
/// A blocking lookup cannot be cancelled: a timeout only stops waiting for it. So the thread
/// takes the connection's permit along and hands it back only if the answer arrives in
/// time; otherwise the permit is released when the lookup finally returns, not when the
/// connection ends. A job whose lookups hang therefore runs out of connections (503) after
/// `max_connections` of them instead of piling up resolver threads.
async fn lookup(
    shared: &Shared,
    host: &str,
    port: u16,
    attempt: &mut Attempt,
) -> Result<Vec<SocketAddr>, Refusal> {
    let resolver = shared.resolver;
    let name = absolute_name(host);
    let permit = attempt.permit.take();
    let blocking = tokio::task::spawn_blocking(move || (resolver(&name, port), permit));
    match tokio::time::timeout(shared.limits.resolve_timeout, blocking).await {
        Ok(Ok((resolved, permit))) => {
            attempt.permit = permit;
            let mut addrs =
                resolved.map_err(|e| refusal(502, format!("cannot resolve {host}: {e}")))?;
            addrs.truncate(MAX_ADDRESSES);
            Ok(addrs)
        }
        Ok(Err(e)) => Err(refusal(502, format!("resolving {host} failed: {e}"))),
        Err(_) => Err(refusal(504, format!("resolving {host} timed out"))),
    }
}

/// The head sent to the origin: origin-form request line, `Host` set to the checked
/// authority, the client's fields minus the hop-by-hop ones, the body framing the proxy parsed
/// and will forward (written by the proxy itself, never taken from the client), and
/// `Connection: close`.
///
/// Fields the client names in `Connection` are hop-by-hop and dropped, except that the framing
/// fields and `Host` are always written by the proxy: a client that named `Content-Length`
/// there would otherwise have its body forwarded by length to an origin that was told of no
/// body, and read the body as a second, pipelined request (smuggled past the `Host` rewrite).
fn rewrite_head(head: &Head, host: &Host, port: u16, path: &str, framing: Framing) -> Vec<u8> {
    let hop: Vec<String> = head
        .values("connection")
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let mut out = format!("{} {} {}\r\n", head.method, path, head.version);
    let authority = match port {
        80 => host.to_entry_host(),
        p => format!("{}:{p}", host.to_entry_host()),
    };
    out.push_str(&format!("Host: {authority}\r\n"));
    for (name, value) in &head.headers {
        let lower = name.to_ascii_lowercase();
        let dropped = matches!(
            lower.as_str(),
            "host"
                | "content-length"
                | "transfer-encoding"
                | "connection"
                | "proxy-connection"
                | "keep-alive"
                | "proxy-authorization"
                | "proxy-authenticate"
                | "te"
                | "upgrade"
        ) || hop.contains(&lower);
        if !dropped {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    match framing {
        Framing::Length(n) => out.push_str(&format!("Content-Length: {n}\r\n")),
        Framing::Chunked => out.push_str("Transfer-Encoding: chunked\r\n"),
        // An explicit empty body stays explicit: some origins answer 411 to a POST without it.
        Framing::None if head.values("content-length").next().is_some() => {
            out.push_str("Content-Length: 0\r\n");
        }
        Framing::None => {}
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}

async fn tunnel(
    client: &mut UnixStream,
    mut upstream: TcpStream,
    leftover: &[u8],
    pipes: Option<(relay::Pipe, relay::Pipe)>,
    limits: &ProxyLimits,
    attempt: &Attempt,
) -> Result<(), Refusal> {
    let ended = |e: io::Error| refusal(502, e.to_string());
    client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .map_err(ended)?;
    if !leftover.is_empty() {
        upstream.write_all(leftover).await.map_err(ended)?;
        attempt
            .up
            .fetch_add(leftover.len() as u64, Ordering::Relaxed);
    }
    let relayed = match pipes {
        Some(pipes) => {
            let splice = relay::both_ways(
                &*client,
                &upstream,
                &pipes,
                |n| attempt.moved(&attempt.up, n),
                |n| attempt.moved(&attempt.down, n),
            );
            idle_bounded(splice, limits.idle_timeout, attempt).await?
        }
        // No pipes to be had: the same relay through buffers.
        None => {
            let mut upstream = Counted::new(upstream, &attempt.down, attempt);
            let mut client = Counted::new(client, &attempt.up, attempt);
            let copy = tokio::io::copy_bidirectional_with_sizes(
                &mut client,
                &mut upstream,
                RELAY_BUF,
                RELAY_BUF,
            );
            idle_bounded(copy, limits.idle_timeout, attempt).await?
        }
    };
    relayed.map(|_| ()).map_err(ended)
}

/// A checked plain-HTTP request on its way to the origin.
struct Outgoing {
    /// The rewritten head.
    head: Vec<u8>,
    /// Bytes read from the client after its head.
    leftover: Vec<u8>,
    framing: Framing,
}

/// Sends `request` and its body upstream and relays the response (through `pipe` when there
/// is one, else through a buffer) until the origin closes.
async fn forward(
    client: &mut UnixStream,
    mut upstream: TcpStream,
    request: Outgoing,
    pipe: Option<relay::Pipe>,
    limits: &ProxyLimits,
    attempt: &Attempt,
) -> Result<(), Refusal> {
    let Outgoing {
        head,
        leftover,
        framing,
    } = request;
    let ended = |e: io::Error| refusal(502, e.to_string());
    upstream.write_all(&head).await.map_err(ended)?;
    attempt.up.fetch_add(head.len() as u64, Ordering::Relaxed);
    let (client_read, client_write) = client.split();
    let (upstream_read, upstream_write) = upstream.split();
    let mut client_read = Counted::new(client_read, &attempt.up, attempt);
    let body = forward_body(&mut client_read, upstream_write, leftover, framing, attempt);
    let mut client_write = client_write;
    // The response is relayed as it comes, unparsed, until the origin closes.
    let response = async {
        let Some(pipe) = &pipe else {
            let mut upstream_read = Counted::new(upstream_read, &attempt.down, attempt);
            tokio::io::copy_buf(
                &mut tokio::io::BufReader::with_capacity(RELAY_BUF, &mut upstream_read),
                &mut client_write,
            )
            .await?;
            return client_write.shutdown().await;
        };
        relay::one_way(upstream_read.as_ref(), client_write.as_ref(), pipe, |n| {
            attempt.moved(&attempt.down, n)
        })
        .await
        .map(|_| ())
    };
    let both = async {
        tokio::pin!(body);
        tokio::pin!(response);
        let mut body_done = false;
        loop {
            tokio::select! {
                r = &mut body, if !body_done => {
                    body_done = true;
                    // The client stopped sending mid-body: nothing useful can follow.
                    r?;
                }
                r = &mut response => return r,
            }
        }
    };
    idle_bounded(both, limits.idle_timeout, attempt)
        .await?
        .map_err(ended)
}

/// Forwards exactly one request body: the bytes already read, then from the client until the
/// framing says the body ended. Bytes after it (a pipelined next request) are never sent.
async fn forward_body<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    client: &mut R,
    mut upstream: W,
    leftover: Vec<u8>,
    framing: Framing,
    attempt: &Attempt,
) -> io::Result<()> {
    let bad_body = |r: BadRequest| io::Error::new(io::ErrorKind::InvalidData, r.reason);
    match framing {
        Framing::None => {}
        Framing::Length(n) => {
            let first = (n as usize).min(leftover.len());
            upstream.write_all(&leftover[..first]).await?;
            attempt.up.fetch_add(first as u64, Ordering::Relaxed);
            let rest = n - first as u64;
            let copied = tokio::io::copy(&mut (&mut *client).take(rest), &mut upstream).await?;
            if copied < rest {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Framing::Chunked => {
            let mut tracker = ChunkedTracker::default();
            let first = tracker.feed(&leftover).map_err(bad_body)?;
            upstream.write_all(&leftover[..first]).await?;
            attempt.up.fetch_add(first as u64, Ordering::Relaxed);
            let mut buf = vec![0u8; 16 * 1024];
            while !tracker.done() {
                let n = client.read(&mut buf).await?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                let used = tracker.feed(&buf[..n]).map_err(bad_body)?;
                upstream.write_all(&buf[..used]).await?;
            }
        }
    }
    upstream.flush().await
}

/// Runs `fut` until it ends or nothing has moved for `idle`.
async fn idle_bounded<F: Future>(
    fut: F,
    idle: Duration,
    attempt: &Attempt,
) -> Result<F::Output, Refusal> {
    tokio::pin!(fut);
    let tick = idle
        .min(Duration::from_secs(1))
        .max(Duration::from_millis(10));
    loop {
        tokio::select! {
            out = &mut fut => return Ok(out),
            () = tokio::time::sleep(tick) => {
                let last = Duration::from_millis(attempt.activity.load(Ordering::Relaxed));
                if attempt.started.elapsed().saturating_sub(last) >= idle {
                    return Err(refusal(504, format!("idle for {}s", idle.as_secs())));
                }
            }
        }
    }
}

fn response(status: u16, reason: &str) -> String {
    let text = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    };
    // The reason goes into a header: printable ASCII only.
    let reason: String = reason
        .chars()
        .take(300)
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect();
    format!(
        "HTTP/1.1 {status} {text}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         X-Bulwark-Denied: {reason}\r\nConnection: close\r\n\r\n{reason}\n",
        reason.len() + 1
    )
}

/// A stream whose reads are counted and mark activity.
struct Counted<'a, S> {
    inner: S,
    count: &'a AtomicU64,
    attempt: &'a Attempt,
}

impl<'a, S> Counted<'a, S> {
    fn new(inner: S, count: &'a AtomicU64, attempt: &'a Attempt) -> Self {
        Counted {
            inner,
            count,
            attempt,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.attempt.moved(self.count, n);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        crate::egress::test_runtime()
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i % 251) as u8 ^ (i >> 16) as u8)
            .collect()
    }

    /// An origin on loopback that runs `serve` on its first connection.
    async fn origin<F, Fut>(serve: F) -> (TcpStream, tokio::task::JoinHandle<()>)
    where
        F: FnOnce(TcpStream) -> Fut + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::task::spawn_local(async move {
            let (conn, _) = listener.accept().await.unwrap();
            serve(conn).await;
        });
        (TcpStream::connect(addr).await.unwrap(), task)
    }

    /// A proxy on a socket in a fresh directory, with `resolver` in place of the host's, and
    /// the guard that removes the directory.
    fn proxy_with(
        name: &str,
        allow: &[&str],
        hosts: &[(&str, &str)],
        limits: ProxyLimits,
        resolver: Resolver,
    ) -> (JobProxy, PathBuf, crate::tools::testutil::TempDir) {
        let dir = crate::tools::testutil::TempDir::named(&format!("bulwark-egress-{name}"));
        let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
        let hosts = hosts
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let policy = EgressPolicy::new(&allow, &hosts, false, &[]).unwrap();
        let sock = dir.join("egress.sock");
        let proxy =
            start_with_resolver(&sock, policy, &dir.join("egress.log"), limits, resolver).unwrap();
        (proxy, sock, dir)
    }

    /// Sends `CONNECT target` and returns the status of the answer.
    fn connect_status(sock: &Path, target: &str) -> u16 {
        let head = connect_head(sock, target);
        head.split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0)
    }

    /// Sends `CONNECT target` and returns the head of the answer.
    fn connect_head(sock: &Path, target: &str) -> String {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // A refusal over the limit may come (and the socket close) before this is written.
        let _ = write!(s, "CONNECT {target} HTTP/1.1\r\n\r\n");
        let mut head = Vec::new();
        let mut byte = [0u8];
        while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
            head.push(byte[0]);
        }
        String::from_utf8_lossy(&head).into_owned()
    }

    static ASKED: Mutex<Vec<String>> = Mutex::new(Vec::new());

    fn recording_resolver(name: &str, _port: u16) -> io::Result<Vec<SocketAddr>> {
        ASKED.lock().unwrap().push(name.to_owned());
        Err(io::Error::other("test: no such name"))
    }

    #[test]
    fn names_are_resolved_as_absolute_and_literals_and_overrides_not_at_all() {
        let (proxy, sock, _dir) = proxy_with(
            "absolute",
            &["a.test:443", "b.test:443"],
            &[("b.test", "192.0.2.1")],
            ProxyLimits::default(),
            recording_resolver,
        );
        assert_eq!(connect_status(&sock, "a.test:443"), 502);
        assert_eq!(connect_status(&sock, "A.Test.:443"), 502);
        // An override and a literal never reach the resolver (both are refused before any
        // connect: 192.0.2.1 is a documentation address, and the literal is not listed).
        assert_eq!(connect_status(&sock, "b.test:443"), 403);
        assert_eq!(connect_status(&sock, "[2001:db8::1]:443"), 403);
        proxy.shutdown().unwrap();
        assert_eq!(*ASKED.lock().unwrap(), ["a.test.", "a.test."]);
    }

    /// The host's resolver as an internal network's sees it: `*inner.test` resolves to a
    /// private address, `*empty.test` to no address, anything else to nothing (an error).
    fn internal_resolver(name: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        if name.ends_with("inner.test.") {
            Ok(vec![SocketAddr::new([10, 1, 2, 3].into(), port)])
        } else if name.ends_with("empty.test.") {
            Ok(Vec::new())
        } else {
            Err(io::Error::other("test: no such name"))
        }
    }

    #[test]
    fn an_untrusted_audit_is_told_alike_whether_an_unlisted_name_resolves_to_nothing_or_inside() {
        let dir = crate::tools::testutil::TempDir::named("bulwark-egress-oracle");
        let allow: Vec<String> = ["listed-inner.test:443", "listed-empty.test:443"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let policy = EgressPolicy::new(&allow, &Default::default(), true, &[]).unwrap();
        let sock = dir.join("egress.sock");
        let log = dir.join("egress.log");
        let proxy = start_with_resolver(
            &sock,
            policy,
            &log,
            ProxyLimits::default(),
            internal_resolver,
        )
        .unwrap();
        // Outside the list: an internal name, a name with no address, a name that does not
        // resolve (all three as long). None is connected to; each answer is the other's but
        // for the name.
        let answers: Vec<String> = ["inner.test", "empty.test", "nodns.test"]
            .iter()
            .map(|name| connect_head(&sock, &format!("{name}:443")).replace(name, "NAME"))
            .collect();
        assert!(answers[0].starts_with("HTTP/1.1 403 "), "{}", answers[0]);
        assert!(
            answers[0].contains(
                "NAME: not reached: in audit mode a name outside the allow list reaches public \
                 addresses only"
            ),
            "{}",
            answers[0]
        );
        assert_eq!(answers[1], answers[0]);
        assert_eq!(answers[2], answers[0]);
        // A listed name is told what happened to it, as before.
        let listed = connect_head(&sock, "listed-inner.test:443");
        assert!(
            listed.starts_with("HTTP/1.1 403 ")
                && listed.contains("resolves to an address this proxy refuses"),
            "{listed}"
        );
        let listed = connect_head(&sock, "listed-empty.test:443");
        assert!(
            listed.starts_with("HTTP/1.1 502 ") && listed.contains("has no addresses"),
            "{listed}"
        );
        proxy.shutdown().unwrap();
        // The log says which was which.
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let line = |host: &str| lines.iter().find(|l| l["host"] == host).unwrap().clone();
        assert_eq!(line("inner.test")["address"], "10.1.2.3");
        let why = |host: &str| line(host)["reason"].as_str().unwrap().to_owned();
        assert!(why("inner.test").contains("10.1.2.3 is a private address"));
        assert_eq!(why("empty.test"), "empty.test has no addresses");
        assert!(why("nodns.test").contains("cannot resolve nodns.test"));
    }

    /// A resolver stuck for 30 s, as `getaddrinfo` is when a name server does not answer.
    /// (The proxy's runtime is shut down in the background, so neither the proxy's shutdown
    /// nor the test waits for it: the thread is left sleeping.)
    fn stuck_resolver(_name: &str, _port: u16) -> io::Result<Vec<SocketAddr>> {
        std::thread::sleep(Duration::from_secs(30));
        Err(io::Error::other("test: gave up"))
    }

    #[test]
    fn a_lookup_past_its_timeout_keeps_its_connection_slot_and_never_delays_shutdown() {
        let (proxy, sock, _dir) = proxy_with(
            "stuck",
            &["slow.test:443"],
            &[],
            ProxyLimits {
                max_connections: 1,
                resolve_timeout: Duration::from_millis(100),
                ..ProxyLimits::default()
            },
            stuck_resolver,
        );
        assert_eq!(connect_status(&sock, "slow.test:443"), 504);
        // Let the first connection end completely: its lookup thread still holds the one
        // slot, so the next connection is refused rather than starting a second thread.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(connect_status(&sock, "slow.test:443"), 503);
        let started = Instant::now();
        let summary = proxy.shutdown().unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "shutdown waited {:?} for a stuck lookup",
            started.elapsed()
        );
        assert_eq!(summary.denied, 2);
    }

    #[test]
    fn framing_and_host_survive_being_named_in_connection_and_other_named_fields_do_not() {
        let rewrite = |raw: &str| {
            let head = http::parse_head(raw.as_bytes(), 100).unwrap();
            let framing = head.framing().unwrap();
            let host = Host::Name("a.test".into());
            String::from_utf8(rewrite_head(&head, &host, 8080, "/up", framing)).unwrap()
        };
        let out = rewrite(
            "POST http://a.test:8080/up HTTP/1.1\r\nHost: evil.example\r\n\
             Connection: keep-alive, Content-Length, Host, Transfer-Encoding, X-Secret\r\n\
             X-Secret: s\r\nX-Kept: k\r\nContent-Length: 71\r\nContent-Length: 71\r\n\r\n",
        );
        assert_eq!(
            out,
            "POST /up HTTP/1.1\r\nHost: a.test:8080\r\nX-Kept: k\r\nContent-Length: 71\r\n\
             Connection: close\r\n\r\n"
        );
        let out = rewrite(
            "POST http://a.test:8080/up HTTP/1.1\r\nConnection: transfer-encoding\r\n\
             Transfer-Encoding: chunked\r\n\r\n",
        );
        assert!(out.contains("\r\nTransfer-Encoding: chunked\r\n"), "{out}");
        let out = rewrite(
            "POST http://a.test:8080/up HTTP/1.1\r\nConnection: content-length\r\n\
             Content-Length: 0\r\n\r\n",
        );
        assert!(out.contains("\r\nContent-Length: 0\r\n"), "{out}");
        let out = rewrite("GET http://a.test:8080/up HTTP/1.1\r\n\r\n");
        assert!(!out.contains("Content-Length"), "{out}");
    }

    #[test]
    fn a_plain_http_response_arrives_byte_identical_and_counted_spliced_or_copied() {
        for spliced in [true, false] {
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime(), async {
                let body = pattern(16 * 1024 * 1024 + 3);
                let mut response =
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len())
                        .into_bytes();
                response.extend_from_slice(&body);
                let sent = response.clone();
                let (upstream, origin_task) = origin(move |mut conn| async move {
                    let mut head = Vec::new();
                    while !head.ends_with(b"\r\n\r\n") {
                        head.push(conn.read_u8().await.unwrap());
                    }
                    assert!(head.starts_with(b"GET /x HTTP/1.1\r\n"));
                    conn.write_all(&sent).await.unwrap();
                })
                .await;
                let (mut job, mut proxy_side) = UnixStream::pair().unwrap();
                let request = Outgoing {
                    head: b"GET /x HTTP/1.1\r\nHost: o\r\nConnection: close\r\n\r\n".to_vec(),
                    leftover: Vec::new(),
                    framing: Framing::None,
                };
                let head_len = request.head.len() as u64;
                let pipe = spliced.then(|| relay::Pipe::new().unwrap());
                let attempt = Attempt::new();
                let limits = ProxyLimits::default();
                let relay = forward(&mut proxy_side, upstream, request, pipe, &limits, &attempt);
                let mut got = Vec::new();
                let (relayed, read) = tokio::join!(relay, job.read_to_end(&mut got));
                assert!(relayed.is_ok(), "spliced: {spliced}");
                read.unwrap();
                origin_task.await.unwrap();
                assert_eq!(got.len(), response.len(), "spliced: {spliced}");
                assert!(got == response, "response differs (spliced: {spliced})");
                assert_eq!(attempt.up.load(Ordering::Relaxed), head_len);
                assert_eq!(attempt.down.load(Ordering::Relaxed), response.len() as u64);
            });
        }
    }

    #[test]
    fn a_tunnel_carries_both_ways_and_half_closes_spliced_or_copied() {
        for spliced in [true, false] {
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime(), async {
                // The origin echoes everything, then closes once the client's side has ended.
                let (upstream, origin_task) = origin(|conn| async move {
                    let (mut r, mut w) = tokio::io::split(conn);
                    tokio::io::copy(&mut r, &mut w).await.unwrap();
                    w.shutdown().await.unwrap();
                })
                .await;
                let (job, mut proxy_side) = UnixStream::pair().unwrap();
                let data = pattern(8 * 1024 * 1024 + 1);
                let pipes = spliced.then(|| relay::Pipe::pair().unwrap());
                let attempt = Attempt::new();
                let limits = ProxyLimits::default();
                let relay = tunnel(
                    &mut proxy_side,
                    upstream,
                    b"early",
                    pipes,
                    &limits,
                    &attempt,
                );
                let talk = relay::tests::send_and_receive(job, data.clone());
                let (relayed, got) = tokio::join!(relay, talk);
                assert!(relayed.is_ok(), "spliced: {spliced}");
                origin_task.await.unwrap();
                let established = b"HTTP/1.1 200 Connection established\r\n\r\n";
                let mut expected = established.to_vec();
                expected.extend_from_slice(b"early");
                expected.extend_from_slice(&data);
                assert_eq!(got.len(), expected.len(), "spliced: {spliced}");
                assert!(got == expected, "echo differs (spliced: {spliced})");
                let moved = 5 + data.len() as u64;
                assert_eq!(attempt.up.load(Ordering::Relaxed), moved);
                assert_eq!(attempt.down.load(Ordering::Relaxed), moved);
            });
        }
    }
}
