//! FOR BENCHMARKS ONLY (`bench/egress.sh`): hosts the in-sandbox forwarder and the egress
//! proxy in one process, outside any sandbox, so the full path can be timed against other
//! chains. Not part of the product; `bulwark run` wires the real pieces (init and daemon).
//!
//! Usage: `egress_bench ORIGIN_PORT DIR` — allows `bench.test:ORIGIN_PORT` (mapped to
//! 127.0.0.1), prints `FORWARDER_PORT=<port>`, serves until stdin closes, then prints the
//! egress summary.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;

use anyhow::Context;
use bulwark_runner::egress::{self, EgressPolicy, ProxyLimits};
use bulwark_sandbox::forwarder::Forwarder;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().context("ORIGIN_PORT")?.parse()?;
    let dir = PathBuf::from(args.next().context("DIR")?);
    let allow = vec![format!("bench.test:{port}"), format!("127.0.0.1:{port}")];
    let hosts = BTreeMap::from([("bench.test".to_owned(), "127.0.0.1".to_owned())]);
    let policy = EgressPolicy::new(&allow, &hosts, false, &[]).map_err(anyhow::Error::msg)?;
    let sock = dir.join("egress.sock");
    let proxy = egress::start(
        &sock,
        policy,
        &dir.join("egress.log"),
        ProxyLimits::default(),
    )?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    println!("FORWARDER_PORT={}", listener.local_addr()?.port());
    let mut forwarder = Forwarder::new(listener, sock, 128);
    // Named, so that per-thread CPU time (/proc/PID/task/*/stat) tells forwarder from proxy.
    std::thread::Builder::new()
        .name("forwarder".into())
        .spawn(move || loop {
            if forwarder.poll_once(&[], None).is_err() {
                return;
            }
        })?;
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    let summary = proxy.shutdown()?;
    eprintln!("egress: {summary:?}");
    Ok(())
}
