//! The in-sandbox egress forwarder: `127.0.0.1:<port>` in the job's network namespace to the
//! job's unix socket on the runner's egress proxy.
//!
//! It runs inside the job's pid-1 init, which is single-threaded and already waits in `poll`
//! on a signalfd for SIGCHLD, so the forwarder is not a thread or a process of its own but a
//! set of non-blocking descriptors merged into init's `poll`: [`Forwarder::poll_once`] polls
//! them together with init's own descriptors and handles the forwarder's share of the
//! readiness; or, by hand, [`Forwarder::poll_fds`] lists them, and [`Forwarder::on_ready`]
//! takes their `revents` back, matched by [`Token`].
//!
//! The forwarder knows nothing about HTTP or policy: every byte goes to the proxy, which
//! decides. It holds nothing secret. Its resources are bounded: at most `max_conns` pairs
//! (more are accepted and closed at once, so a client never waits in the backlog behind a
//! connection that never speaks), six descriptors per pair (the two sockets and a pipe per
//! direction), at most [`PIPE_SIZE`] bytes held per direction, and running out of
//! descriptors (EMFILE/ENFILE) pauses accepting for [`ACCEPT_PAUSE`] instead of spinning.
//! Half-closes are passed on in each direction; a pair ends when both directions have ended
//! or either side fails.
//!
//! Bytes never enter user space: each direction is `splice(2)`d from the source socket into
//! its pipe and from the pipe into the destination socket (TCP and unix stream sockets both
//! support it), so the forwarder copies nothing itself and makes two system calls per
//! pipe-full. It was a `read`/`write` loop through two 64 KiB buffers before: two copies per
//! byte in a process that shares the CPUs with the job, the proxy and the origin, which held
//! the whole egress path to a fifth of a direct transfer (docs/benchmarks.md). The pipes keep
//! the kernel's default size ([`PIPE_SIZE`]): larger ones measured no faster, and they would
//! count against the job user's pipe allowance (`fs.pipe-user-pages-soft`). The unix socket's
//! send buffer is raised to [`UNIX_SNDBUF`] so that uploads cross to the proxy in larger
//! steps.
//!
//! The connection to the proxy is a non-blocking unix `connect`, which either completes at
//! once or fails (EAGAIN when the proxy's backlog is full); the client is then closed, never
//! waited on.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr};

use crate::sys;

/// Bytes in flight per direction per connection: the kernel's default pipe size.
pub const PIPE_SIZE: usize = 64 * 1024;
/// Send buffer asked for on the unix socket to the proxy (the kernel doubles it for its
/// bookkeeping and caps it at `net.core.wmem_max`).
pub const UNIX_SNDBUF: usize = 1 << 20;
/// How long accepting pauses after running out of descriptors.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Most connections accepted per readiness round, so established pairs are not starved.
const ACCEPTS_PER_ROUND: usize = 64;

/// Which descriptor a readiness report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    /// The listening socket.
    Listener,
    /// The job's side of pair `n`.
    Client(usize),
    /// The proxy's side of pair `n`.
    Upstream(usize),
}

/// One direction of a pair: a pipe the bytes cross inside the kernel (`splice(2)` in from the
/// source socket, out to the destination socket), and how far the direction has got.
#[derive(Debug)]
struct Channel {
    pipe_read: OwnedFd,
    pipe_write: OwnedFd,
    /// Bytes in the pipe not yet passed on.
    pending: usize,
    /// The source said end of file.
    eof: bool,
    /// The end was passed on (the destination's write side is shut).
    closed: bool,
}

impl Channel {
    fn new() -> io::Result<Channel> {
        let (pipe_read, pipe_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        Ok(Channel {
            pipe_read,
            pipe_write,
            pending: 0,
            eof: false,
            closed: false,
        })
    }

    /// Whether to wait for the source to become readable: only with an empty pipe, so a
    /// readable source can always make progress (a full pipe with a readable source would
    /// wake `poll` at once, forever).
    fn wants_input(&self) -> bool {
        !self.eof && self.pending == 0
    }

    fn wants_output(&self) -> bool {
        self.pending > 0
    }
}

#[derive(Debug)]
struct Pair {
    client: TcpStream,
    upstream: UnixStream,
    /// Job → proxy.
    up: Channel,
    /// Proxy → job.
    down: Channel,
}

/// The forwarder's state: the listener and the live pairs.
#[derive(Debug)]
pub struct Forwarder {
    listener: TcpListener,
    target: PathBuf,
    max_conns: usize,
    pairs: Vec<Option<Pair>>,
    live: usize,
    paused_until: Option<Instant>,
}

impl Forwarder {
    /// `listener`: a non-blocking `TcpListener` on `127.0.0.1:<port>` inside the job's
    /// network namespace; `target`: the proxy's unix socket as init can reach it;
    /// `max_conns`: the most pairs at once.
    pub fn new(listener: TcpListener, target: PathBuf, max_conns: usize) -> Forwarder {
        Forwarder {
            listener,
            target,
            max_conns: max_conns.max(1),
            pairs: Vec::new(),
            live: 0,
            paused_until: None,
        }
    }

    /// Number of live connection pairs.
    pub fn live(&self) -> usize {
        self.live
    }

    /// The longest the caller may sleep in `poll` before calling [`Forwarder::on_ready`]
    /// again, or `None` for no limit (only set while accepting is paused).
    pub fn timeout(&self) -> Option<Duration> {
        self.paused_until
            .map(|t| t.saturating_duration_since(Instant::now()))
    }

    /// Descriptors to poll this round with the events of interest, each with its token.
    /// Descriptors with no interest are left out (their errors surface on the next read or
    /// write).
    pub fn poll_fds(&self) -> Vec<(Token, BorrowedFd<'_>, PollFlags)> {
        let mut fds = Vec::with_capacity(1 + 2 * self.live);
        if self.accepting() {
            fds.push((Token::Listener, self.listener.as_fd(), PollFlags::POLLIN));
        }
        for (i, pair) in self.pairs.iter().enumerate() {
            let Some(p) = pair else { continue };
            let mut client = PollFlags::empty();
            let mut upstream = PollFlags::empty();
            if p.up.wants_input() {
                client |= PollFlags::POLLIN;
            }
            if p.up.wants_output() {
                upstream |= PollFlags::POLLOUT;
            }
            if p.down.wants_input() {
                upstream |= PollFlags::POLLIN;
            }
            if p.down.wants_output() {
                client |= PollFlags::POLLOUT;
            }
            if !client.is_empty() {
                fds.push((Token::Client(i), p.client.as_fd(), client));
            }
            if !upstream.is_empty() {
                fds.push((Token::Upstream(i), p.upstream.as_fd(), upstream));
            }
        }
        fds
    }

    /// Handles readiness reported by `poll` for descriptors from [`Forwarder::poll_fds`]:
    /// accepts and connects new pairs, moves bytes, passes on half-closes, ends finished
    /// pairs.
    pub fn on_ready(&mut self, ready: &[(Token, PollFlags)]) {
        if self.paused_until.is_some_and(|t| Instant::now() >= t) {
            self.paused_until = None;
        }
        for &(token, revents) in ready {
            if revents.is_empty() {
                continue;
            }
            match token {
                Token::Listener => self.accept_some(),
                Token::Client(i) | Token::Upstream(i) => self.pump(i),
            }
        }
    }

    /// Polls the forwarder's descriptors together with `extra` (init's own, such as its
    /// signalfd) for at most `timeout` (`None`: until something is ready), handles the
    /// forwarder's readiness and returns the `revents` of `extra`, in order.
    pub fn poll_once(
        &mut self,
        extra: &[(BorrowedFd<'_>, PollFlags)],
        timeout: Option<Duration>,
    ) -> nix::Result<Vec<PollFlags>> {
        let timeout = match (timeout, self.timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let timeout = match timeout {
            None => PollTimeout::NONE,
            Some(t) => {
                PollTimeout::try_from(t.min(Duration::from_secs(3600))).unwrap_or(PollTimeout::MAX)
            }
        };
        let interest = self.poll_fds();
        let mut fds: Vec<PollFd<'_>> = extra
            .iter()
            .map(|(fd, events)| PollFd::new(*fd, *events))
            .chain(
                interest
                    .iter()
                    .map(|(_, fd, events)| PollFd::new(*fd, *events)),
            )
            .collect();
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
        let revents = |fd: &PollFd<'_>| fd.revents().unwrap_or(PollFlags::empty());
        let extra_ready: Vec<PollFlags> = fds[..extra.len()].iter().map(revents).collect();
        let ready: Vec<(Token, PollFlags)> = interest
            .iter()
            .zip(&fds[extra.len()..])
            .map(|((token, _, _), fd)| (*token, revents(fd)))
            .collect();
        drop(fds);
        drop(interest);
        self.on_ready(&ready);
        Ok(extra_ready)
    }

    fn accepting(&self) -> bool {
        self.paused_until.is_none()
    }

    fn pause_accepting(&mut self) {
        self.paused_until = Some(Instant::now() + ACCEPT_PAUSE);
    }

    fn accept_some(&mut self) {
        for _ in 0..ACCEPTS_PER_ROUND {
            match self.listener.accept() {
                Ok((client, _)) => self.start_pair(client),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if out_of_resources(&e) => {
                    self.pause_accepting();
                    return;
                }
                // ECONNABORTED and friends: that client is gone; try the next.
                Err(_) => continue,
            }
        }
    }

    fn start_pair(&mut self, client: TcpStream) {
        if self.live >= self.max_conns {
            // Refused: closing at once tells the client, instead of leaving it waiting.
            drop(client);
            return;
        }
        if client.set_nonblocking(true).is_err() {
            return;
        }
        let _ = client.set_nodelay(true);
        // The pipes first: without them there is nothing to relay with, and the proxy never
        // sees (and logs) a connection that could not have carried a byte.
        let channels = Channel::new().and_then(|up| Ok((up, Channel::new()?)));
        let (up, down) = match channels {
            Ok(c) => c,
            Err(e) => {
                if out_of_resources(&e) {
                    self.pause_accepting();
                }
                return;
            }
        };
        let upstream = match connect_unix(&self.target) {
            Ok(u) => u,
            Err(e) => {
                if out_of_resources(&e) {
                    self.pause_accepting();
                }
                return;
            }
        };
        let pair = Pair {
            client,
            upstream,
            up,
            down,
        };
        self.live += 1;
        match self.pairs.iter().position(Option::is_none) {
            Some(i) => self.pairs[i] = Some(pair),
            None => self.pairs.push(Some(pair)),
        }
    }

    /// Moves what can be moved both ways for pair `i` and ends it when it is done.
    fn pump(&mut self, i: usize) {
        let Some(Some(p)) = self.pairs.get_mut(i) else {
            return;
        };
        let up = transfer(p.client.as_fd(), p.upstream.as_fd(), &mut p.up);
        let down = transfer(p.upstream.as_fd(), p.client.as_fd(), &mut p.down);
        let finished = p.up.closed && p.down.closed;
        if up.is_err() || down.is_err() || finished {
            self.pairs[i] = None;
            self.live -= 1;
            while matches!(self.pairs.last(), Some(None)) {
                self.pairs.pop();
            }
        }
    }
}

/// Most splice-in-and-out rounds per direction per call, so one fast pair cannot starve the
/// others or init's own descriptors.
const ROUNDS_PER_PUMP: usize = 16;

/// Splices from `src` into the channel's pipe and from the pipe to `dst` until one side
/// would block; passes an end of file on once everything before it is out. `Err` ends the
/// pair.
fn transfer(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, ch: &mut Channel) -> Result<(), ()> {
    for _ in 0..ROUNDS_PER_PUMP {
        let mut read_any = false;
        if !ch.eof {
            // Also tried with bytes still in the pipe: a full pipe answers EAGAIN, which
            // costs one call and is never mistaken for anything (poll asks for input only
            // when the pipe is empty).
            match splice_retrying(src, ch.pipe_write.as_fd(), PIPE_SIZE) {
                Ok(0) => ch.eof = true,
                Ok(n) => {
                    ch.pending += n;
                    read_any = true;
                }
                Err(Errno::EAGAIN) => {}
                Err(_) => return Err(()),
            }
        }
        let mut wrote_all = true;
        while ch.pending > 0 {
            match splice_retrying(ch.pipe_read.as_fd(), dst, ch.pending) {
                Ok(0) => return Err(()),
                Ok(n) => ch.pending -= n,
                Err(Errno::EAGAIN) => {
                    wrote_all = false;
                    break;
                }
                Err(_) => return Err(()),
            }
        }
        if ch.eof && ch.pending == 0 && !ch.closed {
            // ENOTCONN: the peer is already gone, which ends this direction just the same.
            let _ = socket::shutdown(dst.as_raw_fd(), socket::Shutdown::Write);
            ch.closed = true;
        }
        if !read_any || !wrote_all {
            break;
        }
    }
    Ok(())
}

/// [`sys::splice`], repeated on EINTR.
fn splice_retrying(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> Result<usize, Errno> {
    loop {
        match sys::splice(from, to, len) {
            Ok(n) => return Ok(n),
            Err(e) => match Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)) {
                Errno::EINTR => continue,
                errno => return Err(errno),
            },
        }
    }
}

fn out_of_resources(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM)
    )
}

/// A non-blocking connect to the proxy's unix socket; completes at once or fails.
fn connect_unix(path: &std::path::Path) -> io::Result<UnixStream> {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // Best effort: the default size works, only in smaller steps.
    let sndbuf = UNIX_SNDBUF;
    let _ = socket::setsockopt(&fd, socket::sockopt::SndBuf, &sndbuf);
    let addr = UnixAddr::new(path)?;
    socket::connect(fd.as_raw_fd(), &addr)?;
    Ok(UnixStream::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixListener;
    use std::sync::mpsc;
    use std::thread;

    /// A unix echo server in a thread; returns its socket path.
    fn echo_server(dir: &std::path::Path) -> PathBuf {
        let path = dir.join("proxy.sock");
        let listener = UnixListener::bind(&path).unwrap();
        thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                thread::spawn(move || {
                    let mut reader = conn.try_clone().unwrap();
                    let _ = io::copy(&mut reader, &mut conn);
                    let _ = conn.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        path
    }

    /// A fresh directory, removed when the returned guard drops (also when the test fails).
    fn temp_dir(name: &str) -> crate::testutil::TempDir {
        crate::testutil::TempDir::named(&format!("bulwark-fwd-{name}"))
    }

    fn forwarder(target: PathBuf, max: usize) -> (Forwarder, std::net::SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        (Forwarder::new(listener, target, max), addr)
    }

    /// Sends `data`, half-closes, and returns everything echoed back (or the error).
    fn echo_client(addr: std::net::SocketAddr, data: Vec<u8>) -> io::Result<Vec<u8>> {
        let mut stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(20)))?;
        let mut writer = stream.try_clone()?;
        let sender = thread::spawn(move || {
            writer.write_all(&data)?;
            writer.shutdown(std::net::Shutdown::Write)
        });
        let mut got = Vec::new();
        stream.read_to_end(&mut got)?;
        let _ = sender.join();
        Ok(got)
    }

    /// Drives the forwarder until `n` results arrive; panics after `limit` (a hang fails).
    fn drive<T>(fwd: &mut Forwarder, rx: &mpsc::Receiver<T>, n: usize, limit: Duration) -> Vec<T> {
        let deadline = Instant::now() + limit;
        let mut results = Vec::new();
        while results.len() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} clients finished",
                results.len()
            );
            fwd.poll_once(&[], Some(Duration::from_millis(20))).unwrap();
            while let Ok(r) = rx.try_recv() {
                results.push(r);
            }
        }
        results
    }

    fn pattern(seed: usize, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| ((i * 31 + seed * 7) % 251) as u8)
            .collect()
    }

    #[test]
    fn clients_get_their_bytes_back_through_the_forwarder() {
        let dir = temp_dir("echo");
        let (mut fwd, addr) = forwarder(echo_server(&dir), 64);
        let (tx, rx) = mpsc::channel();
        for i in 0..16 {
            let tx = tx.clone();
            thread::spawn(move || {
                let data = pattern(i, 300_000 + i);
                let got = echo_client(addr, data.clone());
                tx.send(got.map(|g| g == data)).unwrap();
            });
        }
        for r in drive(&mut fwd, &rx, 16, Duration::from_secs(60)) {
            assert!(r.unwrap(), "echo differs");
        }
        // Every pair ends once both sides closed.
        let deadline = Instant::now() + Duration::from_secs(10);
        while fwd.live() > 0 && Instant::now() < deadline {
            fwd.poll_once(&[], Some(Duration::from_millis(20))).unwrap();
        }
        assert_eq!(fwd.live(), 0);
    }

    #[test]
    fn many_pipe_fulls_each_way_arrive_intact_and_in_order() {
        // 48 MiB up and echoed back down at the same time: both pipes fill, writes to a full
        // socket hit EAGAIN mid-pipe, and the pipe's leftovers must go out first.
        let dir = temp_dir("bulk");
        let (mut fwd, addr) = forwarder(echo_server(&dir), 8);
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let data = pattern(3, 48 * 1024 * 1024 + 17);
            let got = echo_client(addr, data.clone());
            tx.send(got.map(|g| g.len() == data.len() && g == data))
                .unwrap();
        });
        let got = drive(&mut fwd, &rx, 1, Duration::from_secs(120));
        assert!(got[0].as_ref().unwrap(), "echo differs");
    }

    #[test]
    fn two_hundred_clients_complete_or_are_refused_and_none_hangs() {
        let _heavy = crate::testutil::DESCRIPTOR_HEAVY
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let dir = temp_dir("many");
        let (mut fwd, addr) = forwarder(echo_server(&dir), 50);
        let (tx, rx) = mpsc::channel();
        for i in 0..200 {
            let tx = tx.clone();
            thread::spawn(move || {
                let data = pattern(i, 1000);
                let got = echo_client(addr, data.clone());
                tx.send(match got {
                    Ok(g) if g == data => "completed",
                    Ok(g) if g.is_empty() => "refused",
                    Ok(_) => "corrupted",
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => "hung",
                    Err(_) => "refused",
                })
                .unwrap();
            });
        }
        let results = drive(&mut fwd, &rx, 200, Duration::from_secs(60));
        let count = |s: &str| results.iter().filter(|r| **r == s).count();
        assert_eq!(count("corrupted") + count("hung"), 0, "{results:?}");
        assert_eq!(count("completed") + count("refused"), 200);
        assert!(count("completed") >= 50, "{results:?}");
    }

    #[test]
    fn a_client_that_never_speaks_does_not_hold_up_others() {
        let dir = temp_dir("silent");
        let (mut fwd, addr) = forwarder(echo_server(&dir), 8);
        let silent = TcpStream::connect(addr).unwrap();
        for _ in 0..5 {
            fwd.poll_once(&[], Some(Duration::from_millis(10))).unwrap();
        }
        assert_eq!(fwd.live(), 1);
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || tx.send(echo_client(addr, b"hello".to_vec())).unwrap());
        let got = drive(&mut fwd, &rx, 1, Duration::from_secs(20));
        assert_eq!(got[0].as_ref().unwrap(), b"hello");
        drop(silent);
    }

    #[test]
    fn a_missing_proxy_closes_the_client_at_once() {
        let dir = temp_dir("missing");
        let (mut fwd, addr) = forwarder(dir.join("absent.sock"), 8);
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || tx.send(echo_client(addr, b"x".to_vec())).unwrap());
        let got = drive(&mut fwd, &rx, 1, Duration::from_secs(20));
        assert!(got[0].as_ref().map_or(true, |g| g.is_empty()), "{got:?}");
        assert_eq!(fwd.live(), 0);
    }

    #[test]
    fn the_proxy_socket_is_reachable_through_a_directory_descriptor() {
        // How init can reach the socket after pivot_root without it being in the job's view:
        // open its directory before, connect through /proc/self/fd/<dirfd>/<name> after.
        let dir = temp_dir("dirfd");
        echo_server(&dir);
        let dirfd = std::fs::File::open(&dir).unwrap();
        let target = PathBuf::from(format!("/proc/self/fd/{}/proxy.sock", dirfd.as_raw_fd()));
        let (mut fwd, addr) = forwarder(target, 8);
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || tx.send(echo_client(addr, b"via dirfd".to_vec())).unwrap());
        let got = drive(&mut fwd, &rx, 1, Duration::from_secs(20));
        assert_eq!(got[0].as_ref().unwrap(), b"via dirfd");
    }

    #[test]
    fn init_descriptors_are_polled_alongside() {
        let dir = temp_dir("extra");
        let (mut fwd, _addr) = forwarder(echo_server(&dir), 8);
        let (a, mut b) = UnixStream::pair().unwrap();
        b.write_all(b"!").unwrap();
        let ready = fwd
            .poll_once(
                &[(a.as_fd(), PollFlags::POLLIN)],
                Some(Duration::from_secs(5)),
            )
            .unwrap();
        assert!(ready[0].contains(PollFlags::POLLIN));
    }
}
