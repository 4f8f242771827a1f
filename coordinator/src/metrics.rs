//! Prometheus metrics (docs/control-plane.md, "Metrics"): what a fleet's operator alerts on.
//!
//! # Why these
//!
//! The questions a CI fleet is paged for: are jobs waiting longer than they should (the age
//! of the oldest queued job, the number queued), are runners alive (when each last made a
//! signed request), are jobs failing or being lost (results by status, leases that ran out),
//! and is the coordinator itself refusing or failing requests (responses by class).
//!
//! # How
//!
//! Counters live in memory, one atomic each, and start at zero with the process: Prometheus
//! reads a counter that went down as a restart, so `rate()` and `increase()` stay right, and no
//! request pays for a database write to count itself. Gauges are read from the database at
//! scrape time, each an index range (`jobs_by_state`) or the small `runners` table, never a scan
//! of finished jobs, so finished jobs add nothing to a scrape's cost (lost ones do, one index
//! entry each). A runner's last request is kept in memory as its signature is verified;
//! after a restart a runner appears again with its next poll (within its `poll_interval`).
//!
//! # What it shows, and to whom
//!
//! Counts, ages, runner ids and names (the names runners registered with, which match the
//! name pattern), and the process's start time; never a job's name, spec, result text or
//! anything a job chose: the result's status is mapped onto a fixed set of label values, so a
//! runner reporting odd statuses cannot grow the label set. The metrics listener
//! (`serve --metrics-listen`) has no authentication: bind it where only the scraper reaches it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bulwark_protocol::prometheus::{family, StatusCounts, NONE};
use bulwark_protocol::Trust;

/// The counters, and each runner's last verified request.
#[derive(Debug)]
pub struct Metrics {
    started_at: u64,
    submitted: [AtomicU64; 2],
    leased: AtomicU64,
    offered_again: AtomicU64,
    results: StatusCounts,
    cancelled: AtomicU64,
    id_tokens: AtomicU64,
    responses: [AtomicU64; 5],
    connections_refused: AtomicU64,
    last_request: Mutex<HashMap<String, u64>>,
    /// The served TLS certificate's expiry, when the coordinator serves TLS itself.
    pub(crate) tls_expiry: Option<std::sync::Arc<AtomicU64>>,
}

/// What the database says at scrape time ([`crate::state::Db::metrics_snapshot`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// Jobs waiting for a runner.
    pub queued: u64,
    /// Jobs whose lease is running.
    pub leased: u64,
    /// Jobs whose lease ran out without a result.
    pub lost: u64,
    /// When the oldest queued job was submitted (seconds since the epoch).
    pub oldest_queued_at: Option<u64>,
    /// Runners registered and not removed: (id, name).
    pub active_runners: Vec<(String, String)>,
    /// Runners the operator removed.
    pub removed_runners: u64,
}

impl Metrics {
    /// Counters at zero; `started_at` is the process's start (seconds since the epoch).
    pub fn new(started_at: u64) -> Metrics {
        Metrics {
            started_at,
            submitted: Default::default(),
            leased: AtomicU64::new(0),
            offered_again: AtomicU64::new(0),
            results: Default::default(),
            cancelled: AtomicU64::new(0),
            id_tokens: AtomicU64::new(0),
            responses: Default::default(),
            connections_refused: AtomicU64::new(0),
            last_request: Mutex::new(HashMap::new()),
            tls_expiry: None,
        }
    }

    /// A job was queued.
    pub fn submitted(&self, trust: Trust) {
        let i = match trust {
            Trust::Untrusted => 0,
            Trust::Trusted => 1,
        };
        self.submitted[i].fetch_add(1, Ordering::Relaxed);
    }

    /// A job was leased to a runner.
    pub fn leased(&self) {
        self.leased.fetch_add(1, Ordering::Relaxed);
    }

    /// A job leased to a runner was offered to it again: the runner did not list it as held.
    pub fn offered_again(&self) {
        self.offered_again.fetch_add(1, Ordering::Relaxed);
    }

    /// A result was recorded with `status` (the runner's `result.status`, when it is text).
    pub fn result(&self, status: Option<&str>) {
        self.results.count(status);
    }

    /// The API accepted a cancel request.
    pub fn cancel_requested(&self) {
        self.cancelled.fetch_add(1, Ordering::Relaxed);
    }

    /// A job identity token was minted.
    pub fn id_token(&self) {
        self.id_tokens.fetch_add(1, Ordering::Relaxed);
    }

    /// The API answered with `status`.
    pub fn response(&self, status: u16) {
        if let Some(c) = usize::from(status / 100)
            .checked_sub(1)
            .and_then(|i| self.responses.get(i))
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A connection was closed at once: its client held the most connections one address may.
    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Runner `id` made a request whose signature verified, at `now`.
    pub fn runner_seen(&self, id: &str, now: u64) {
        let mut last = self
            .last_request
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match last.get_mut(id) {
            Some(t) => *t = (*t).max(now),
            None => {
                last.insert(id.to_owned(), now);
            }
        }
    }

    /// The text exposition format (version 0.0.4) of every metric, with `db` read at `now`.
    pub fn render(&self, db: &Snapshot, now: u64) -> String {
        let mut out = String::with_capacity(4096);
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        family(
            &mut out,
            "bulwark_coordinator_start_time_seconds",
            "gauge",
            "When the coordinator process started (seconds since the epoch); the counters below start at zero then.",
            &[(NONE, self.started_at)],
        );
        family(
            &mut out,
            "bulwark_coordinator_jobs",
            "gauge",
            "Jobs by state: queued (waiting for a runner), leased (lease running), lost (lease ran out without a result, or its runner was removed; never removed, so this only grows). Finished jobs are not shown: bulwark_coordinator_job_results_total counts the results runners report.",
            &[
                (&[("state", "queued")], db.queued),
                (&[("state", "leased")], db.leased),
                (&[("state", "lost")], db.lost),
            ],
        );
        family(
            &mut out,
            "bulwark_coordinator_oldest_queued_job_age_seconds",
            "gauge",
            "How long the oldest queued job has waited for a runner; 0 when none waits.",
            &[(
                NONE,
                db.oldest_queued_at.map_or(0, |at| now.saturating_sub(at)),
            )],
        );
        family(
            &mut out,
            "bulwark_coordinator_runners",
            "gauge",
            "Registered runners: active, or removed by the operator.",
            &[
                (&[("state", "active")], db.active_runners.len() as u64),
                (&[("state", "removed")], db.removed_runners),
            ],
        );
        {
            let last = self
                .last_request
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let seen: Vec<([(&str, &str); 2], u64)> = db
                .active_runners
                .iter()
                .filter_map(|(id, name)| {
                    let at = *last.get(id)?;
                    Some(([("runner_id", id.as_str()), ("runner", name.as_str())], at))
                })
                .collect();
            family(
                &mut out,
                "bulwark_coordinator_runner_last_request_timestamp_seconds",
                "gauge",
                "When each active runner last made a request whose signature verified (seconds since the epoch); a runner appears once it has made one since the coordinator started.",
                &seen,
            );
        }
        family(
            &mut out,
            "bulwark_coordinator_jobs_submitted_total",
            "counter",
            "Jobs queued, by the trust level the submitter gave.",
            &[
                (&[("trust", "untrusted")], c(&self.submitted[0])),
                (&[("trust", "trusted")], c(&self.submitted[1])),
            ],
        );
        family(
            &mut out,
            "bulwark_coordinator_jobs_leased_total",
            "counter",
            "Jobs leased to a runner.",
            &[(NONE, c(&self.leased))],
        );
        family(
            &mut out,
            "bulwark_coordinator_leases_offered_again_total",
            "counter",
            "Leases offered again to the runner holding them, which did not list them as held when it asked for a job: the answer to its lease request was lost, or its daemon restarted (and reports a job it may have started as a runner error rather than run it again).",
            &[(NONE, c(&self.offered_again))],
        );
        family(
            &mut out,
            "bulwark_coordinator_job_results_total",
            "counter",
            "Results recorded, by the runner's result.status (a status outside the known ones counts as other).",
            &self.results.samples(),
        );
        family(
            &mut out,
            "bulwark_coordinator_cancel_requests_total",
            "counter",
            "Cancel requests the API accepted (asking again for a running job counts again; bulwark-coordinator jobs cancel --state writes the database directly and is not counted).",
            &[(NONE, c(&self.cancelled))],
        );
        family(
            &mut out,
            "bulwark_coordinator_id_tokens_issued_total",
            "counter",
            "Job identity tokens minted.",
            &[(NONE, c(&self.id_tokens))],
        );
        let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        let responses: Vec<([(&str, &str); 1], u64)> = classes
            .iter()
            .zip(&self.responses)
            .map(|(k, n)| ([("class", *k)], c(n)))
            .collect();
        family(
            &mut out,
            "bulwark_coordinator_http_responses_total",
            "counter",
            "API responses, by status class (401 and 403: refused authentication; 5xx: the coordinator failed).",
            &responses,
        );
        family(
            &mut out,
            "bulwark_coordinator_connections_refused_total",
            "counter",
            "Connections closed as soon as they were accepted, their client (an IPv4 address, an IPv6 /64) holding --max-connections-per-address already. Rising while runners share an address (a NAT, a proxy): the bound is too low for them.",
            &[(NONE, c(&self.connections_refused))],
        );
        if let Some(expiry) = &self.tls_expiry {
            family(
                &mut out,
                "bulwark_coordinator_tls_certificate_expiry_timestamp_seconds",
                "gauge",
                "When the TLS certificate the coordinator serves stops being valid (its notAfter, seconds since the epoch; 0 when it cannot be read). It moves when a renewal is loaded: alert well before it, in case renewals keep failing.",
                &[(NONE, c(expiry))],
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_count_and_unknown_statuses_are_other() {
        let m = Metrics::new(1_000);
        m.submitted(Trust::Trusted);
        m.submitted(Trust::Untrusted);
        m.submitted(Trust::Untrusted);
        m.leased();
        m.offered_again();
        m.offered_again();
        for s in [
            Some("succeeded"),
            Some("failed"),
            Some("weird\nstatus"),
            None,
        ] {
            m.result(s);
        }
        m.response(200);
        m.response(204);
        m.response(401);
        m.response(503);
        m.response(99);
        m.response(700);
        m.connection_refused();
        m.runner_seen("runner-a", 1_500);
        m.runner_seen("runner-a", 1_400);
        m.runner_seen("runner-gone", 1_450);
        let db = Snapshot {
            queued: 2,
            leased: 1,
            lost: 0,
            oldest_queued_at: Some(1_900),
            active_runners: vec![
                ("runner-a".into(), "host-a".into()),
                ("runner-b".into(), "host-b".into()),
            ],
            removed_runners: 1,
        };
        let text = m.render(&db, 2_000);
        for line in [
            "bulwark_coordinator_start_time_seconds 1000",
            "bulwark_coordinator_jobs{state=\"queued\"} 2",
            "bulwark_coordinator_jobs{state=\"leased\"} 1",
            "bulwark_coordinator_jobs{state=\"lost\"} 0",
            "bulwark_coordinator_oldest_queued_job_age_seconds 100",
            "bulwark_coordinator_runners{state=\"active\"} 2",
            "bulwark_coordinator_runners{state=\"removed\"} 1",
            // Seen and active; a removed runner's last request is not shown, nor an active
            // runner that has made none.
            "bulwark_coordinator_runner_last_request_timestamp_seconds{runner_id=\"runner-a\",runner=\"host-a\"} 1500",
            "bulwark_coordinator_jobs_submitted_total{trust=\"untrusted\"} 2",
            "bulwark_coordinator_jobs_submitted_total{trust=\"trusted\"} 1",
            "bulwark_coordinator_jobs_leased_total 1",
            "bulwark_coordinator_leases_offered_again_total 2",
            "bulwark_coordinator_job_results_total{status=\"succeeded\"} 1",
            "bulwark_coordinator_job_results_total{status=\"failed\"} 1",
            "bulwark_coordinator_job_results_total{status=\"refused\"} 0",
            "bulwark_coordinator_job_results_total{status=\"other\"} 2",
            "bulwark_coordinator_http_responses_total{class=\"2xx\"} 2",
            "bulwark_coordinator_http_responses_total{class=\"4xx\"} 1",
            "bulwark_coordinator_http_responses_total{class=\"5xx\"} 1",
            "bulwark_coordinator_connections_refused_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}:\n{text}");
        }
        assert!(
            !text.contains("runner-gone") && !text.contains("host-b"),
            "{text}"
        );
        assert!(!text.contains("weird"), "{text}");
        // No queued job: age 0.
        let idle = m.render(&Snapshot::default(), 2_000);
        assert!(idle
            .lines()
            .any(|l| l == "bulwark_coordinator_oldest_queued_job_age_seconds 0"));
    }
}
