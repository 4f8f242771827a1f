//! A TCP relay on loopback that a test can slow down or hold: a coordinator behind a slow or
//! stalled network, to prove what the daemon does when an upload is cut or must be stopped.
//!
//! Only the client-to-server direction is shaped (what the daemon sends); answers pass as
//! they come. Every connection gets two threads; the relay lives as long as the test.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Client-to-server bytes per second: no limit.
pub const FREE: u64 = u64::MAX;

/// Client-to-server bytes per second: none at all (the connection is held, not closed).
pub const HELD: u64 = 0;

/// The relay: listen on [`Relay::url`], forward to the upstream address.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    rate: Arc<AtomicU64>,
}

impl Relay {
    /// Starts a relay to `upstream` (`127.0.0.1:PORT`), at `rate` bytes per second from client
    /// to server ([`FREE`], [`HELD`], or a number).
    pub fn start(upstream: SocketAddr, rate: u64) -> Relay {
        assert!(upstream.ip().is_loopback(), "tests relay to loopback only");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let rate = Arc::new(AtomicU64::new(rate));
        let shared = Arc::clone(&rate);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let rate = Arc::clone(&shared);
                std::thread::spawn(move || pump(client, server, Some(rate)));
                std::thread::spawn(move || pump(s2, c2, None));
            }
        });
        Relay { addr, rate }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Changes the client-to-server rate of every connection, open or to come.
    pub fn set_rate(&self, rate: u64) {
        self.rate.store(rate, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    /// Lets held connections go, so their threads end with their peers.
    fn drop(&mut self) {
        self.rate.store(FREE, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until either ends, at most `rate` bytes per second when given.
fn pump(mut from: TcpStream, mut to: TcpStream, rate: Option<Arc<AtomicU64>>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let limit = rate.as_ref().map_or(FREE, |r| r.load(Ordering::SeqCst));
        if limit == HELD {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        // Small reads when limited, so the pace is even.
        let want = if limit == FREE {
            buf.len()
        } else {
            buf.len()
                .min(usize::try_from(limit / 50).unwrap_or(1).max(1))
        };
        let n = match from.read(&mut buf[..want]) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        if limit != FREE {
            std::thread::sleep(Duration::from_secs_f64(n as f64 / limit as f64));
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}
