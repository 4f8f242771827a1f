//! Benchmark helper: `coordinator_load STATE CLIENTS SECONDS [FORGERS]` loads a coordinator
//! with signed `POST /v1/runners/lease` requests (an empty queue: each answered 204) from the
//! runner registered in STATE (its `bulwark register` state directory), through the daemon's
//! own client: CLIENTS requests at a time for SECONDS. FORGERS more tasks meanwhile send the
//! same request claiming that runner but signed by another key (each refused 401), as an
//! attacker who knows a runner's id would. Prints the runner's requests per second and their
//! latency (p50, p99), and the forged requests per second. Used by `bench/coordinator.sh`.
#![forbid(unsafe_code)]

use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bulwark_runner::daemon::client::Client;
use bulwark_runner::daemon::registration;
use bulwark_runner::provenance::keys::{Algorithm, LocalKey};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, state, clients, seconds, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: coordinator_load STATE CLIENTS SECONDS [FORGERS]");
    };
    let clients: usize = clients.parse()?;
    let forgers: usize = rest.first().map_or(Ok(0), |f| f.parse())?;
    let seconds: f64 = seconds.parse()?;
    let identity = Rc::new(registration::load(Path::new(state))?);
    let forged_key = Rc::new(LocalKey::generate(Algorithm::P256)?);
    let client = Rc::new(Client::new(&identity.registration.coordinator, None)?);
    // One thread, as the daemon: the coordinator gets the machine's other cores.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let (latencies, forged) = local.block_on(&rt, async {
        let mut tasks = Vec::new();
        for i in 0..clients + forgers {
            let (client, identity, forged_key) = (
                Rc::clone(&client),
                Rc::clone(&identity),
                Rc::clone(&forged_key),
            );
            tasks.push(tokio::task::spawn_local(async move {
                let runner = &identity.registration.runner_id;
                let key = if i < clients {
                    &identity.key
                } else {
                    &*forged_key
                };
                let mut times = Vec::new();
                while Instant::now() < end {
                    let t = Instant::now();
                    let answer = client
                        .post_signed("/v1/runners/lease", Vec::new(), runner, key)
                        .await;
                    match (&answer, i < clients) {
                        (Ok(a), true) if a.status == 204 => {}
                        (Err(e), false) if e.status() == Some(401) => {}
                        _ => panic!("unexpected answer: {answer:?}"),
                    }
                    times.push(t.elapsed());
                }
                (i < clients, times)
            }));
        }
        let mut latencies = Vec::new();
        let mut forged = 0usize;
        for t in tasks {
            let (genuine, times) = t.await.expect("a load task panicked");
            if genuine {
                latencies.extend(times);
            } else {
                forged += times.len();
            }
        }
        (latencies, forged)
    });
    let mut latencies = latencies;
    latencies.sort();
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q) as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    println!(
        "runner_rps={:.0} p50_ms={:.2} p99_ms={:.2} forged_rps={:.0}",
        latencies.len() as f64 / seconds,
        pick(0.5),
        pick(0.99),
        forged as f64 / seconds
    );
    Ok(())
}
