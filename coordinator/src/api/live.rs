//! The coordinator's live connections: which one gives way when every slot is taken, and the
//! drain at shutdown.
//!
//! Why: hyper bounds a connection's idle time between requests (the header timeout), not its
//! life. A client that sends one cheap request every few seconds on each kept-alive
//! connection (the public OIDC discovery document needs no key) would hold its connections
//! for as long as it likes, and with [`super::ServeOptions::max_connections`] of them keep
//! every runner from leasing, heartbeating and reporting. So when a connection is accepted
//! while every slot is taken, the oldest connection is asked to close gracefully: at once if
//! it is kept alive between requests or has sent nothing yet, after its request otherwise
//! (a request whose head has begun counts; never cut in the middle of one). While no slot
//! frees, the next oldest is asked every [`ASK_NEXT_EVERY`], so a long request (an upload)
//! does not hold up the connections waiting behind it. Holding slots then takes
//! reconnecting as fast as others connect, or keeping every connection inside a request
//! (bounded by the header and body deadlines). nginx reuses idle keep-alive connections the
//! same way when it runs out of them.
//!
//! Alternative rejected: a fixed limit on a connection's age or requests. It bounds how long
//! one connection is held but not how many: the client reconnects and holds the slot again,
//! and a runner's busy connection would be closed on a timer rather than only when someone
//! is waiting.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use hyper::body::{Body, Incoming};
use hyper::rt::{Read, Write};
use hyper::server::conn::http1::Connection;
use hyper::service::HttpService;
use tokio::sync::{watch, Notify};

/// While a new connection waits for a slot, how often the next oldest connection is asked to
/// give way.
pub(super) const ASK_NEXT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Every live connection of one `serve`.
#[derive(Debug)]
pub(super) struct Live {
    /// Connections not yet asked to close, by the order they were accepted (oldest first).
    closable: Mutex<BTreeMap<u64, Arc<Notify>>>,
    next: std::sync::atomic::AtomicU64,
    /// How many connections are live (asked to close or not).
    count: watch::Sender<usize>,
    /// Set once, when `serve` begins its shutdown.
    stopping: watch::Sender<bool>,
}

/// One connection's place among the live ones; dropped when the connection ends.
#[derive(Debug)]
pub(super) struct Entry {
    live: Arc<Live>,
    id: u64,
    close: Arc<Notify>,
}

impl Live {
    pub(super) fn new() -> Arc<Live> {
        Arc::new(Live {
            closable: Mutex::new(BTreeMap::new()),
            next: std::sync::atomic::AtomicU64::new(0),
            count: watch::Sender::new(0),
            stopping: watch::Sender::new(false),
        })
    }

    /// A newly accepted connection.
    pub(super) fn register(self: &Arc<Self>) -> Entry {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let close = Arc::new(Notify::new());
        self.closable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, Arc::clone(&close));
        self.count.send_modify(|n| *n += 1);
        Entry {
            live: Arc::clone(self),
            id,
            close,
        }
    }

    /// Asks the oldest connection not yet asked to close gracefully; whether there was one.
    pub(super) fn ask_oldest_to_close(&self) -> bool {
        let oldest = self
            .closable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop_first();
        match oldest {
            // Kept as a permit if the connection is not waiting for it yet.
            Some((_, close)) => {
                close.notify_one();
                true
            }
            None => false,
        }
    }

    /// How many connections are live.
    pub(super) fn count(&self) -> usize {
        *self.count.borrow()
    }

    /// Asks every connection to close gracefully, now and any accepted later.
    pub(super) fn stop(&self) {
        self.stopping.send_replace(true);
    }

    /// Completes once no connection is live.
    pub(super) async fn drained(&self) {
        let mut count = self.count.subscribe();
        let _ = count.wait_for(|n| *n == 0).await;
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.live
            .closable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&self.id);
        self.live.count.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Entry {
    /// Drives `conn` to its end, closing it gracefully when it is asked to give way or when
    /// `serve` stops.
    pub(super) async fn serve<I, S, B>(self, conn: Connection<I, S>) -> hyper::Result<()>
    where
        S: HttpService<Incoming, ResBody = B>,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        I: Read + Write + Unpin,
        B: Body + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut conn = std::pin::pin!(conn);
        let mut stopping = self.live.stopping.subscribe();
        tokio::select! {
            ended = conn.as_mut() => return ended,
            () = self.close.notified() => {}
            _ = stopping.wait_for(|s| *s) => {}
        }
        conn.as_mut().graceful_shutdown();
        conn.await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_connection_not_yet_asked_gives_way_first() {
        let live = Live::new();
        let (a, b, c) = (live.register(), live.register(), live.register());
        assert_eq!(live.count(), 3);
        assert!(live.ask_oldest_to_close());
        // `a` was asked (its notification waits for it), then `b`; `c` not yet.
        let asked = |e: &Entry| {
            let n = e.close.notified();
            let mut n = std::pin::pin!(n);
            n.as_mut().enable()
        };
        assert!(asked(&a));
        assert!(!asked(&b));
        drop(b);
        assert_eq!(live.count(), 2);
        assert!(live.ask_oldest_to_close());
        assert!(asked(&c));
        assert!(!live.ask_oldest_to_close());
        drop((a, c));
        assert_eq!(live.count(), 0);
    }
}
