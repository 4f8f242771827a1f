//! The build host's Prometheus metrics (`[daemon] metrics_listen`; docs/control-plane.md,
//! "Metrics"): what one host's operator alerts on, beside what the coordinator shows of the
//! whole fleet.
//!
//! # Why these
//!
//! The coordinator sees a runner only through its requests: it can say a runner went quiet,
//! not why. The host answers the questions that follow: can this daemon reach its coordinator
//! (when it last had an answer, lease requests that failed), is it full (slots in use), is it
//! draining after a SIGTERM, are this host's jobs failing or being refused (results by status,
//! the runner's own errors separate from the jobs'), are pull requests trying to reach what
//! their allow lists do not (egress attempts denied, by trust level; from each job's
//! `result.json`, the counts its proxy kept), are credential exchanges failing (an STS
//! trust policy changed, a clock skewed), did reports get lost, and is the disk that holds the
//! jobs' directories nearing the reserve that stops them (`limits.min_free_disk`, in bytes and
//! inodes: a job the reserve stopped is a `runner-error` result; what is available is what to
//! alert on first).
//!
//! # How
//!
//! Counters are atomics in memory that start at zero with the daemon (Prometheus reads a drop
//! as a restart); gauges are read at scrape time from the daemon's own state and one
//! `statvfs`. The listener runs on the daemon's single thread beside the job tasks; each
//! scrape is a few microseconds of formatting and never waits on a job, the coordinator or
//! the disk beyond that `statvfs`.
//!
//! Alternatives rejected: a textfile for node_exporter's collector (a second moving part to
//! configure, and stale when the daemon dies, which is exactly when it matters); pushing to a
//! Pushgateway (its own outage becomes ours, and it keeps the last values of a dead host).
//!
//! # What it shows, and to whom
//!
//! Counts, times, the runner's id and registered name, and the version; never a job's name,
//! id, spec, output or anything a job chose: a result's status is mapped onto a fixed set of
//! label values. The listener has no authentication: bind it to loopback or where only the
//! scraper reaches it (the daemon warns when it is bound elsewhere). It serves at most
//! [`MAX_CONNECTIONS`] at once, one request each, whose head must arrive within
//! [`HEAD_TIMEOUT`] and fit [`MAX_HEAD`]; anything else gets a plain error status.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bulwark_protocol::prometheus::{family, Histogram, StatusCounts, CONTENT_TYPE, NONE};
use bulwark_protocol::{EgressRecord, Trust};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Most scrapes served at once; more wait in the listen queue.
pub const MAX_CONNECTIONS: usize = 16;

/// How long a client has to send its request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest request head read.
pub const MAX_HEAD: usize = 8 * 1024;

/// How long writing an answer may take before the connection is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Bucket bounds of the job-duration histogram, in seconds: from a quick check to a long
/// release build.
static DURATION_BOUNDS: [u64; 10] = [1, 5, 15, 30, 60, 300, 900, 1800, 3600, 7200];

/// The outcomes of asking the coordinator for a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// A job was leased.
    Job,
    /// The queue had nothing for this runner.
    Empty,
    /// The request failed (unreachable, refused, an answer outside the protocol).
    Failed,
}

/// When a credential was exchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exchange {
    /// Before the job started (a failure refuses the job).
    Start,
    /// A renewal while it ran (a failure leaves the job what it has).
    Refresh,
}

/// The daemon's counters.
#[derive(Debug)]
pub struct Metrics {
    started_at: u64,
    leases: [AtomicU64; 3],
    finished: StatusCounts,
    cancelled: AtomicU64,
    /// `[start ok, start failed, refresh ok, refresh failed]`.
    exchanges: [AtomicU64; 4],
    reports_given_up: AtomicU64,
    /// Egress attempts: `[untrusted allowed, untrusted denied, trusted allowed, trusted
    /// denied]`.
    egress: [AtomicU64; 4],
    durations: Histogram,
}

/// What is read from the daemon's state at scrape time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gauges {
    /// The runner's id.
    pub runner_id: String,
    /// Its registered name.
    pub runner: String,
    /// `[daemon] slots`.
    pub slots: u64,
    /// Jobs leased and not yet reported.
    pub running: u64,
    /// A first SIGTERM or SIGINT came: no more leases.
    pub stopping: bool,
    /// When the coordinator last answered (seconds since the epoch; 0: not yet).
    pub coordinator_last_answer: u64,
    /// The filesystem of the job directories; `None` when `statvfs` failed.
    pub disk: Option<Disk>,
}

/// What the filesystem of the job directories has and keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Disk {
    /// Bytes available to unprivileged writers.
    pub available: u64,
    /// Bytes `limits.min_free_disk` keeps available (0: no reserve).
    pub reserve: u64,
    /// Inodes available and kept, where the filesystem counts them.
    pub inodes: Option<(u64, u64)>,
}

impl Metrics {
    /// Counters at zero, the start time now.
    pub fn new() -> Metrics {
        Metrics::started(super::now_secs())
    }

    /// Counters at zero; `started_at` is the daemon's start (seconds since the epoch).
    pub fn started(started_at: u64) -> Metrics {
        Metrics {
            started_at,
            leases: Default::default(),
            finished: Default::default(),
            cancelled: AtomicU64::new(0),
            exchanges: Default::default(),
            reports_given_up: AtomicU64::new(0),
            egress: Default::default(),
            durations: Histogram::new(&DURATION_BOUNDS),
        }
    }

    /// A lease request ended with `outcome`.
    pub fn lease(&self, outcome: LeaseOutcome) {
        let i = match outcome {
            LeaseOutcome::Job => 0,
            LeaseOutcome::Empty => 1,
            LeaseOutcome::Failed => 2,
        };
        self.leases[i].fetch_add(1, Ordering::Relaxed);
    }

    /// A job ended with `status` (the one reported).
    pub fn finished(&self, status: &str) {
        self.finished.count(Some(status));
    }

    /// A job's `bulwark run` started: its duration is observed when the returned timer is
    /// dropped, however the run ends.
    pub fn time_run(&self) -> RunTimer<'_> {
        RunTimer {
            durations: &self.durations,
            started: std::time::Instant::now(),
        }
    }

    /// The operator cancelled a running job.
    pub fn cancelled(&self) {
        self.cancelled.fetch_add(1, Ordering::Relaxed);
    }

    /// One credential's exchange at its token service succeeded or failed.
    pub fn exchange(&self, when: Exchange, ok: bool) {
        let i = match (when, ok) {
            (Exchange::Start, true) => 0,
            (Exchange::Start, false) => 1,
            (Exchange::Refresh, true) => 2,
            (Exchange::Refresh, false) => 3,
        };
        self.exchanges[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Adds the egress attempts a job's `result` (its `result.json`) counts, by the job's
    /// trust level; nothing for a job without network or a result the daemon made up.
    pub fn egress(&self, trust: Trust, result: &serde_json::Value) {
        let Some(egress) = result.get("egress").filter(|e| !e.is_null()) else {
            return;
        };
        let record = match serde_json::from_value::<EgressRecord>(egress.clone()) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "result.json: egress counts not read; not counted");
                return;
            }
        };
        let base = match trust {
            Trust::Untrusted => 0,
            Trust::Trusted => 2,
        };
        self.egress[base].fetch_add(record.allowed, Ordering::Relaxed);
        self.egress[base + 1].fetch_add(record.denied, Ordering::Relaxed);
    }

    /// A result report was given up (the coordinator refused it, or the lease ran out while
    /// it was being retried, or a second signal stopped the retries).
    pub fn report_given_up(&self) {
        self.reports_given_up.fetch_add(1, Ordering::Relaxed);
    }

    /// The text exposition format of every metric, with `g` read at scrape time.
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(6 * 1024);
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        family(
            &mut out,
            "bulwark_runner_info",
            "gauge",
            "This runner: its id and registered name at the coordinator, and the bulwark version; always 1.",
            &[(
                [
                    ("runner_id", g.runner_id.as_str()),
                    ("runner", g.runner.as_str()),
                    ("version", env!("CARGO_PKG_VERSION")),
                ],
                1,
            )],
        );
        family(
            &mut out,
            "bulwark_runner_start_time_seconds",
            "gauge",
            "When the daemon started (seconds since the epoch); the counters below start at zero then.",
            &[(NONE, self.started_at)],
        );
        family(
            &mut out,
            "bulwark_runner_slots",
            "gauge",
            "Jobs the daemon runs at once ([daemon] slots).",
            &[(NONE, g.slots)],
        );
        family(
            &mut out,
            "bulwark_runner_jobs_running",
            "gauge",
            "Jobs leased and not yet reported (running, or delivering their results).",
            &[(NONE, g.running)],
        );
        family(
            &mut out,
            "bulwark_runner_stopping",
            "gauge",
            "1 once the daemon was told to stop (SIGTERM or SIGINT): it leases nothing more and finishes the jobs running.",
            &[(NONE, u64::from(g.stopping))],
        );
        family(
            &mut out,
            "bulwark_runner_coordinator_last_answer_timestamp_seconds",
            "gauge",
            "When the coordinator last answered a request of this daemon's (any status below 500, a refusal included, and a 503 the coordinator marked as its own with the bulwark-coordinator header, its answer for a busy body budget; no other 5xx: an unmarked one may be a proxy in front of a coordinator that is down, and a marked 500 is a coordinator that cannot do its work); 0 until it has. An idle daemon asks for a job every poll_interval, a busy one asks after each of its jobs that often.",
            &[(NONE, g.coordinator_last_answer)],
        );
        family(
            &mut out,
            "bulwark_runner_lease_requests_total",
            "counter",
            "Requests for a job, by outcome: job (one was leased), empty (nothing queued for this runner), failed (the coordinator could not be reached, refused, or answered outside the protocol).",
            &[
                ([("outcome", "job")], c(&self.leases[0])),
                ([("outcome", "empty")], c(&self.leases[1])),
                ([("outcome", "failed")], c(&self.leases[2])),
            ],
        );
        family(
            &mut out,
            "bulwark_runner_jobs_finished_total",
            "counter",
            "Jobs this daemon ended, by the status it reported (or tried to: see bulwark_runner_result_reports_given_up_total): succeeded, failed (a step failed, timed out, hit a limit, was cancelled, or an output was refused), refused (before any step ran), runner-error (this host failed them, including a stop by the disk reserve), other.",
            &self.finished.samples(),
        );
        family(
            &mut out,
            "bulwark_runner_jobs_cancelled_total",
            "counter",
            "Jobs the operator cancelled while they ran here (also counted as failed).",
            &[(NONE, c(&self.cancelled))],
        );
        self.durations.write(
            &mut out,
            "bulwark_runner_job_duration_seconds",
            "How long each job's run took, from its start until its result was collected, for the jobs whose run started (not the upload and report after it).",
        );
        family(
            &mut out,
            "bulwark_runner_credential_exchanges_total",
            "counter",
            "Exchanges of one credential at its token service, by when (start: before the job, a failure refuses it; refresh: while it ran, a failure leaves it what it has) and outcome. A job identity token the coordinator did not give is not counted here (see the job's result).",
            &[
                ([("when", "start"), ("outcome", "ok")], c(&self.exchanges[0])),
                (
                    [("when", "start"), ("outcome", "failed")],
                    c(&self.exchanges[1]),
                ),
                (
                    [("when", "refresh"), ("outcome", "ok")],
                    c(&self.exchanges[2]),
                ),
                (
                    [("when", "refresh"), ("outcome", "failed")],
                    c(&self.exchanges[3]),
                ),
            ],
        );
        family(
            &mut out,
            "bulwark_runner_egress_attempts_total",
            "counter",
            "Connection attempts through the egress proxies of this host's jobs (as each job's result.json counts them, added when the job ends), by the job's trust level and the proxy's decision. Denied attempts of untrusted jobs are pull requests reaching for what their allow list does not name (or a list that needs an entry); in audit mode nearly everything is allowed.",
            &[
                (
                    [("trust", "untrusted"), ("decision", "allowed")],
                    c(&self.egress[0]),
                ),
                (
                    [("trust", "untrusted"), ("decision", "denied")],
                    c(&self.egress[1]),
                ),
                (
                    [("trust", "trusted"), ("decision", "allowed")],
                    c(&self.egress[2]),
                ),
                (
                    [("trust", "trusted"), ("decision", "denied")],
                    c(&self.egress[3]),
                ),
            ],
        );
        family(
            &mut out,
            "bulwark_runner_result_reports_given_up_total",
            "counter",
            "Results that could not be reported (refused by the coordinator, or its retries outlasted the lease or were stopped): the coordinator records such a job as lost.",
            &[(NONE, c(&self.reports_given_up))],
        );
        if let Some(disk) = g.disk {
            family(
                &mut out,
                "bulwark_runner_disk_available_bytes",
                "gauge",
                "Bytes available to unprivileged writers on the filesystem of the job directories (workspaces, /tmp, caches restored).",
                &[(NONE, disk.available)],
            );
            family(
                &mut out,
                "bulwark_runner_disk_reserve_bytes",
                "gauge",
                "Bytes limits.min_free_disk keeps available on that filesystem: below it no job starts, and running jobs are stopped; 0 when no reserve is configured.",
                &[(NONE, disk.reserve)],
            );
            if let Some((available, reserve)) = disk.inodes {
                family(
                    &mut out,
                    "bulwark_runner_disk_available_inodes",
                    "gauge",
                    "Inodes available to unprivileged writers on that filesystem (absent where it does not count them).",
                    &[(NONE, available)],
                );
                family(
                    &mut out,
                    "bulwark_runner_disk_reserve_inodes",
                    "gauge",
                    "Inodes the reserve keeps there (the same share as the bytes, or 1% when the reserve is a size); below it jobs are stopped as for bytes.",
                    &[(NONE, reserve)],
                );
            }
        }
        out
    }
}

/// Observes a run's duration when dropped ([`Metrics::time_run`]).
#[derive(Debug)]
pub struct RunTimer<'a> {
    durations: &'a Histogram,
    started: std::time::Instant,
}

impl Drop for RunTimer<'_> {
    fn drop(&mut self) {
        self.durations.observe(self.started.elapsed());
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Serves `GET /metrics` on `listener`, `render` answering each scrape, until the task is
/// dropped. Runs on the current thread's `LocalSet` (the daemon's).
pub async fn serve(listener: tokio::net::TcpListener, render: std::rc::Rc<dyn Fn() -> String>) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        // Full: the next connection waits in the listen queue until one ends.
        let Ok(slot) = std::sync::Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and the like: not a reason to stop serving, nor to spin.
                tracing::warn!(error = %e, "accepting a metrics connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let render = std::rc::Rc::clone(&render);
        tokio::task::spawn_local(async move {
            answer(stream, &*render).await;
            drop(slot);
        });
    }
}

/// Reads one request head and answers it; the connection is closed after.
async fn answer(mut stream: tokio::net::TcpStream, render: &dyn Fn() -> String) {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut have = 0;
    let read_head = async {
        loop {
            if have == buf.len() {
                return Err((431, "request head too large"));
            }
            match stream.read(&mut buf[have..]).await {
                Ok(0) | Err(_) => return Err((0, "")),
                Ok(n) => {
                    let from = have;
                    have += n;
                    if let Some(end) = crate::egress::http::find_head_end(&buf[..have], from) {
                        return Ok(end);
                    }
                }
            }
        }
    };
    let (status, reason, body) = match tokio::time::timeout(HEAD_TIMEOUT, read_head).await {
        Err(_) => (408, phrase(408), String::new()),
        Ok(Err((0, _))) => return,
        Ok(Err((status, why))) => (status, phrase(status), why.to_owned()),
        Ok(Ok(end)) => match crate::egress::http::parse_head(&buf[..end], 64) {
            Err(e) => (e.status, phrase(e.status), e.reason.to_owned()),
            Ok(head) => {
                let path = head.target.split('?').next().unwrap_or_default();
                if path != "/metrics" {
                    (404, phrase(404), "only /metrics is served here".to_owned())
                } else if head.method != "GET" {
                    (405, phrase(405), "only GET".to_owned())
                } else {
                    (200, phrase(200), render())
                }
            }
        },
    };
    let content_type = if status == 200 {
        CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    let allow = if status == 405 { "Allow: GET\r\n" } else { "" };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n{body}",
        body.len()
    );
    let write = async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        // What the client sent beyond the head (a body, the rest of an oversized head) is
        // read and dropped until it closes, for a while: closing with unread bytes would
        // send a reset, which can destroy the answer before the client reads it.
        let mut sink = [0u8; 4096];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => left = left.saturating_sub(n),
            }
        }
        Ok::<(), std::io::Error>(())
    };
    if let Err(e) = tokio::time::timeout(WRITE_TIMEOUT, write)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    {
        tracing::debug!(error = %e, "metrics answer not sent");
    }
}

/// Most bytes read and dropped after an answer, waiting for the client to close.
const LINGER_BYTES: usize = 64 * 1024;

/// The reason phrase of the statuses the listener answers with.
fn phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        505 => "HTTP Version Not Supported",
        _ => "Bad Request",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample<'a>(text: &'a str, series: &str) -> &'a str {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    }

    #[test]
    fn counters_count_statuses_outside_the_set_as_other_and_gauges_come_from_the_scrape() {
        let m = Metrics::started(1_000);
        m.lease(LeaseOutcome::Job);
        m.lease(LeaseOutcome::Empty);
        m.lease(LeaseOutcome::Empty);
        m.lease(LeaseOutcome::Failed);
        m.finished("succeeded");
        m.finished("refused");
        m.finished("weird\"status\n");
        m.durations.observe(Duration::from_millis(2_500));
        m.durations.observe(Duration::from_secs(8_000));
        // A run timed for real: counted (in the 1 s bucket), its milliseconds in the sum.
        drop(m.time_run());
        m.cancelled();
        m.exchange(Exchange::Start, true);
        m.exchange(Exchange::Start, true);
        m.exchange(Exchange::Refresh, false);
        m.report_given_up();
        // Egress counts come from result.json as the run writes it (the protocol's own type).
        let result = |allowed, denied| {
            serde_json::json!({
                "status": "succeeded",
                "egress": EgressRecord {
                    allowed,
                    denied,
                    ..EgressRecord::default()
                },
            })
        };
        m.egress(Trust::Untrusted, &result(5, 2));
        m.egress(Trust::Untrusted, &result(1, 0));
        m.egress(Trust::Trusted, &result(7, 1));
        m.egress(
            Trust::Trusted,
            &serde_json::json!({"status": "failed", "egress": null}),
        );
        m.egress(Trust::Trusted, &serde_json::json!({"status": "refused"}));
        let g = Gauges {
            runner_id: "r-1".into(),
            runner: "host-a".into(),
            slots: 4,
            running: 3,
            stopping: true,
            coordinator_last_answer: 1_700,
            disk: Some(Disk {
                available: 5 << 30,
                reserve: 1 << 30,
                inodes: Some((9_000, 100)),
            }),
        };
        let text = m.render(&g);
        for (series, value) in [
            ("bulwark_runner_start_time_seconds", "1000"),
            ("bulwark_runner_slots", "4"),
            ("bulwark_runner_jobs_running", "3"),
            ("bulwark_runner_stopping", "1"),
            (
                "bulwark_runner_coordinator_last_answer_timestamp_seconds",
                "1700",
            ),
            ("bulwark_runner_lease_requests_total{outcome=\"job\"}", "1"),
            (
                "bulwark_runner_lease_requests_total{outcome=\"empty\"}",
                "2",
            ),
            (
                "bulwark_runner_lease_requests_total{outcome=\"failed\"}",
                "1",
            ),
            (
                "bulwark_runner_jobs_finished_total{status=\"succeeded\"}",
                "1",
            ),
            (
                "bulwark_runner_jobs_finished_total{status=\"refused\"}",
                "1",
            ),
            ("bulwark_runner_jobs_finished_total{status=\"failed\"}", "0"),
            ("bulwark_runner_jobs_finished_total{status=\"other\"}", "1"),
            ("bulwark_runner_jobs_cancelled_total", "1"),
            ("bulwark_runner_job_duration_seconds_bucket{le=\"1\"}", "1"),
            ("bulwark_runner_job_duration_seconds_bucket{le=\"5\"}", "2"),
            (
                "bulwark_runner_job_duration_seconds_bucket{le=\"7200\"}",
                "2",
            ),
            (
                "bulwark_runner_job_duration_seconds_bucket{le=\"+Inf\"}",
                "3",
            ),
            ("bulwark_runner_job_duration_seconds_count", "3"),
            (
                "bulwark_runner_credential_exchanges_total{when=\"start\",outcome=\"ok\"}",
                "2",
            ),
            (
                "bulwark_runner_credential_exchanges_total{when=\"refresh\",outcome=\"failed\"}",
                "1",
            ),
            ("bulwark_runner_result_reports_given_up_total", "1"),
            (
                "bulwark_runner_egress_attempts_total{trust=\"untrusted\",decision=\"allowed\"}",
                "6",
            ),
            (
                "bulwark_runner_egress_attempts_total{trust=\"untrusted\",decision=\"denied\"}",
                "2",
            ),
            (
                "bulwark_runner_egress_attempts_total{trust=\"trusted\",decision=\"allowed\"}",
                "7",
            ),
            (
                "bulwark_runner_egress_attempts_total{trust=\"trusted\",decision=\"denied\"}",
                "1",
            ),
            ("bulwark_runner_disk_available_bytes", "5368709120"),
            ("bulwark_runner_disk_reserve_bytes", "1073741824"),
            ("bulwark_runner_disk_available_inodes", "9000"),
            ("bulwark_runner_disk_reserve_inodes", "100"),
        ] {
            assert_eq!(sample(&text, series), value, "{series}:\n{text}");
        }
        assert!(text.contains(&format!(
            "bulwark_runner_info{{runner_id=\"r-1\",runner=\"host-a\",version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )));
        assert!(!text.contains("weird"), "{text}");
        let sum: f64 = sample(&text, "bulwark_runner_job_duration_seconds_sum")
            .parse()
            .unwrap();
        assert!((8002.5..8003.5).contains(&sum), "{sum}");
        // A filesystem without inode counts: no inode families.
        let text = m.render(&Gauges {
            disk: Some(Disk {
                inodes: None,
                ..Disk::default()
            }),
            ..g.clone()
        });
        assert!(
            text.contains("bulwark_runner_disk_available_bytes 0\n"),
            "{text}"
        );
        assert!(!text.contains("_inodes"), "{text}");
        // A failed statvfs leaves the disk families out rather than reporting 0 bytes free.
        let text = m.render(&Gauges { disk: None, ..g });
        assert!(!text.contains("bulwark_runner_disk_"), "{text}");
    }

    /// What the listener answers, over a real socket: the text with its content type, and a
    /// plain error for anything else; a client that never finishes its head is answered
    /// `408`, and does not stop the next scrape.
    #[test]
    fn the_listener_answers_get_metrics_and_refuses_the_rest() {
        use std::io::{Read, Write};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::thread::spawn(move || {
            let ask = |raw: &[u8]| {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                s.write_all(raw).unwrap();
                let mut got = String::new();
                s.read_to_string(&mut got).unwrap();
                got
            };
            // A silent client first: it holds one connection while the others are served.
            let mut silent = std::net::TcpStream::connect(addr).unwrap();
            silent.write_all(b"GET /metr").unwrap();
            let ok = ask(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
            let query = ask(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n");
            let other = ask(b"GET / HTTP/1.1\r\n\r\n");
            let post = ask(b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
            let garbage = ask(b"\x01\x02 nonsense\r\n\r\n");
            let huge = ask(&[b'a'; MAX_HEAD + 10]);
            silent
                .set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            let mut timed_out = String::new();
            silent.read_to_string(&mut timed_out).unwrap();
            (ok, query, other, post, garbage, huge, timed_out)
        });
        let render: std::rc::Rc<dyn Fn() -> String> =
            std::rc::Rc::new(|| "# TYPE x gauge\nx 1\n".to_owned());
        let (ok, query, other, post, garbage, huge, timed_out) = local.block_on(&rt, async {
            let server = tokio::task::spawn_local(serve(listener, render));
            let got = tokio::task::spawn_blocking(move || client.join().unwrap())
                .await
                .unwrap();
            server.abort();
            got
        });
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains(&format!("Content-Type: {CONTENT_TYPE}\r\n")),
            "{ok}"
        );
        assert!(ok.ends_with("\r\n\r\n# TYPE x gauge\nx 1\n"), "{ok}");
        assert!(query.starts_with("HTTP/1.1 200 OK\r\n"), "{query}");
        assert!(other.starts_with("HTTP/1.1 404 "), "{other}");
        assert!(
            post.starts_with("HTTP/1.1 405 ") && post.contains("Allow: GET\r\n"),
            "{post}"
        );
        assert!(garbage.starts_with("HTTP/1.1 400 "), "{garbage}");
        assert!(huge.starts_with("HTTP/1.1 431 "), "{huge}");
        assert!(timed_out.starts_with("HTTP/1.1 408 "), "{timed_out}");
    }
}
