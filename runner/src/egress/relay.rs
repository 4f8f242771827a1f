//! Relaying an established connection's bytes without copying them through the daemon.
//!
//! Once the proxy has checked a request and connected upstream, what is left is moving bytes:
//! both ways for a `CONNECT` tunnel, origin to client for a plain-HTTP response. Each
//! direction is `splice(2)`d from its source socket into a pipe of its own and from the pipe
//! into the destination socket, driven by tokio's readiness for the two sockets. TCP and unix
//! stream sockets both support it, so a byte crosses the daemon without a copy into its memory
//! and back, and one `splice` moves up to a pipe-full ([`PIPE_SIZE`], the kernel's default;
//! larger pipes measured no faster).
//!
//! Why this shape: a `read`/`write` relay through 64 KiB buffers (`copy_bidirectional`)
//! copied every byte twice in the proxy and again twice in the in-sandbox forwarder; on a small
//! machine where the job, the forwarder, the proxy and the origin share the CPUs that kept the
//! egress path under a fifth of a direct transfer (docs/benchmarks.md, "Egress path"). A
//! blocking relay thread per tunnel was rejected: it would take a thread per connection
//! (128 per job) and the job-end and idle cancellation the tokio tasks get for free.
//!
//! The pipe is only ever filled when it is empty. So when filling fails with EAGAIN, it is
//! the source that has nothing, never the pipe that is full, and telling tokio "not readable"
//! is true; likewise draining a non-empty pipe can only block on the destination. That keeps
//! tokio's edge-triggered readiness honest, so a direction never sleeps with bytes waiting.
//!
//! Bounded: two descriptors and at most [`PIPE_SIZE`] bytes per direction. When no pipe can
//! be had (descriptor or pipe-memory limits), [`Pipe::new`] fails and the caller relays with
//! the buffered copy instead; the request has already been checked, so this changes only
//! the speed, never what is allowed.

use std::future::Future;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use bulwark_sandbox::sys;
use nix::fcntl::OFlag;
use nix::sys::socket::{shutdown, Shutdown};
use tokio::io::{Interest, Ready};
use tokio::net::{TcpStream, UnixStream};

/// Bytes held per direction: the kernel's default pipe size.
pub(super) const PIPE_SIZE: usize = 64 * 1024;

/// One direction's pipe.
#[derive(Debug)]
pub(super) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    pub(super) fn new() -> io::Result<Pipe> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
        Ok(Pipe { read, write })
    }

    /// Two pipes, one per direction.
    pub(super) fn pair() -> io::Result<(Pipe, Pipe)> {
        Ok((Pipe::new()?, Pipe::new()?))
    }
}

/// A tokio socket that can wait for readiness and try an operation on its raw descriptor.
pub(super) trait Endpoint: AsFd {
    fn ready_for(&self, interest: Interest) -> impl Future<Output = io::Result<Ready>>;
    fn try_io_for<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>)
        -> io::Result<R>;
}

macro_rules! endpoint {
    ($t:ty) => {
        impl Endpoint for $t {
            fn ready_for(&self, interest: Interest) -> impl Future<Output = io::Result<Ready>> {
                self.ready(interest)
            }
            fn try_io_for<R>(
                &self,
                interest: Interest,
                f: impl FnOnce() -> io::Result<R>,
            ) -> io::Result<R> {
                self.try_io(interest, f)
            }
        }
    };
}
endpoint!(TcpStream);
endpoint!(UnixStream);

/// Splices `src` to `dst` through `pipe` until `src` ends, then shuts `dst`'s write side.
/// `moved(n)` is called for every `n` bytes taken from `src`. Returns the bytes relayed.
pub(super) async fn one_way<S: Endpoint, D: Endpoint>(
    src: &S,
    dst: &D,
    pipe: &Pipe,
    moved: impl Fn(usize),
) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        // The pipe is empty here: EAGAIN means `src` has nothing (see the module docs).
        let n = retry(src, Interest::READABLE, || {
            sys::splice(src.as_fd(), pipe.write.as_fd(), PIPE_SIZE)
        })
        .await?;
        if n == 0 {
            // ENOTCONN: the peer is already gone, which ends this direction just the same.
            let _ = shutdown(dst.as_fd().as_raw_fd(), Shutdown::Write);
            return Ok(total);
        }
        moved(n);
        total += n as u64;
        let mut pending = n;
        while pending > 0 {
            // The pipe holds bytes here: EAGAIN means `dst` is full.
            let m = retry(dst, Interest::WRITABLE, || {
                sys::splice(pipe.read.as_fd(), dst.as_fd(), pending)
            })
            .await?;
            if m == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            pending -= m;
        }
    }
}

/// Waits until `socket` is ready for `interest` and runs `op` until it does not block.
async fn retry<E: Endpoint>(
    socket: &E,
    interest: Interest,
    mut op: impl FnMut() -> io::Result<usize>,
) -> io::Result<usize> {
    loop {
        socket.ready_for(interest).await?;
        match socket.try_io_for(interest, &mut op) {
            Ok(n) => return Ok(n),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Both ways between `a` and `b` until both directions have ended or either fails, like
/// `tokio::io::copy_bidirectional`. Returns the bytes relayed `a` to `b` and `b` to `a`.
pub(super) async fn both_ways<A: Endpoint, B: Endpoint>(
    a: &A,
    b: &B,
    pipes: &(Pipe, Pipe),
    a_to_b: impl Fn(usize),
    b_to_a: impl Fn(usize),
) -> io::Result<(u64, u64)> {
    tokio::try_join!(
        one_way(a, b, &pipes.0, a_to_b),
        one_way(b, a, &pipes.1, b_to_a)
    )
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn runtime() -> tokio::runtime::Runtime {
        crate::egress::test_runtime()
    }

    fn pattern(seed: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
    }

    /// Sends `data` and half-closes while reading everything the peer sends.
    pub(in crate::egress) async fn send_and_receive<S>(stream: S, data: Vec<u8>) -> Vec<u8>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite,
    {
        let (mut r, mut w) = tokio::io::split(stream);
        let send = async {
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let mut got = Vec::new();
        let (_, read) = tokio::join!(send, r.read_to_end(&mut got));
        read.unwrap();
        got
    }

    #[test]
    fn both_ways_between_unix_and_tcp_is_byte_identical_and_counted() {
        runtime().block_on(async {
            // job side: a unix pair; origin side: a TCP connection on loopback.
            let (job, proxy_side) = UnixStream::pair().unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let origin_addr = listener.local_addr().unwrap();
            let (upstream, accepted) =
                tokio::join!(TcpStream::connect(origin_addr), listener.accept());
            let (upstream, (origin, _)) = (upstream.unwrap(), accepted.unwrap());
            let up_data = pattern(1, 8 * 1024 * 1024 + 3);
            let down_data = pattern(2, 24 * 1024 * 1024 + 5);
            let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
            let pipes = Pipe::pair().unwrap();
            let relay = both_ways(
                &proxy_side,
                &upstream,
                &pipes,
                |n| {
                    up.fetch_add(n as u64, Ordering::Relaxed);
                },
                |n| {
                    down.fetch_add(n as u64, Ordering::Relaxed);
                },
            );
            let (relayed, job_got, origin_got) = tokio::join!(
                relay,
                send_and_receive(job, up_data.clone()),
                send_and_receive(origin, down_data.clone())
            );
            assert_eq!(
                relayed.unwrap(),
                (up_data.len() as u64, down_data.len() as u64)
            );
            assert!(origin_got == up_data, "upload differs");
            assert!(job_got == down_data, "download differs");
            assert_eq!(up.load(Ordering::Relaxed), up_data.len() as u64);
            assert_eq!(down.load(Ordering::Relaxed), down_data.len() as u64);
        });
    }

    #[test]
    fn a_direction_whose_source_ends_half_closes_its_destination_and_the_other_goes_on() {
        runtime().block_on(async {
            let (mut job, proxy_side) = UnixStream::pair().unwrap();
            let (upstream, mut origin) = UnixStream::pair().unwrap();
            let pipes = Pipe::pair().unwrap();
            let relay = both_ways(&proxy_side, &upstream, &pipes, |_| {}, |_| {});
            let talk = async {
                job.write_all(b"request").await.unwrap();
                job.shutdown().await.unwrap();
                let mut got = Vec::new();
                // The origin sees the request and its end before it answers.
                origin.read_to_end(&mut got).await.unwrap();
                assert_eq!(got, b"request");
                origin.write_all(b"answer after the end").await.unwrap();
                origin.shutdown().await.unwrap();
                let mut answer = Vec::new();
                job.read_to_end(&mut answer).await.unwrap();
                answer
            };
            let (relayed, answer) = tokio::join!(relay, talk);
            assert_eq!(relayed.unwrap(), (7, 20));
            assert_eq!(answer, b"answer after the end");
        });
    }

    #[test]
    fn a_destination_that_is_gone_ends_the_relay_with_an_error() {
        runtime().block_on(async {
            let (mut job, proxy_side) = UnixStream::pair().unwrap();
            let (upstream, origin) = UnixStream::pair().unwrap();
            drop(origin);
            let pipe = Pipe::new().unwrap();
            job.write_all(b"nobody listens").await.unwrap();
            let err = one_way(&proxy_side, &upstream, &pipe, |_| {})
                .await
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::BrokenPipe, "{err}");
        });
    }
}
