//! The Bulwark coordinator: the control plane a fleet of `bulwark daemon` runners takes work
//! from (docs/control-plane.md).
//!
//! # What it is for
//!
//! One process, one SQLite file, one state directory. It registers runners (a one-time token
//! traded for a runner id bound to the runner's own P-256 key), queues jobs submitted by the
//! operator or CI glue (admin bearer token) with the trust level the submitter decides, leases
//! them to runners that ask (every runner request signed, timestamped and nonce'd), keeps
//! each job's outputs (held to the digests the runner signed: [`outputs`]), records results,
//! and is the OIDC issuer of short-lived identity tokens for trusted jobs.
//!
//! # Example
//!
//! ```text
//! bulwark-coordinator init --state /var/lib/bulwark-coordinator --issuer https://ci.example.com
//! bulwark-coordinator registration-token --state /var/lib/bulwark-coordinator --ttl 1h
//! bulwark-coordinator serve --state /var/lib/bulwark-coordinator --listen 127.0.0.1:8440
//! curl -H "Authorization: Bearer $(cat /var/lib/bulwark-coordinator/admin.token)" \
//!      -d '{"trust":"trusted","spec":{...}}' http://127.0.0.1:8440/v1/jobs
//! ```
//!
//! In code, [`statedir::init`] makes a state, [`statedir::load`] and [`api::Coordinator::new`]
//! open it, and [`api::router`] is the HTTP API; [`metrics`] is what `--metrics-listen`
//! serves to Prometheus.
//!
//! # Limits
//!
//! - TLS with `serve --tls-cert/--tls-key` ([`tls`]: one certificate, reloaded when renewed,
//!   no client certificates), or plain HTTP on loopback or behind a terminating proxy (a
//!   non-loopback plain-HTTP address is refused without `--behind-tls-proxy`).
//! - One issuer key, no rotation; no credential exchange of its own (the runner makes it: runner/src/creds/); no
//!   re-queueing of lost jobs (the submitter decides); no log streaming.
//! - Bodies are read only once the headers passed the checks that need no body (admin token,
//!   a runner's signing headers, timestamp and standing, and for a result or a live-log append
//!   the signature over the body digest the runner names), and at most each route's own limit:
//!   64 KiB for most, 2 MiB for a job submission and a live-log append, and
//!   [`bulwark_protocol::control::MAX_BODY_BYTES`] only for a result report. Headers must
//!   arrive within 15 s (also the idle keep-alive limit), a small body within 15 s more, a
//!   large one at 64 KiB/s at least, a request must be done within 120 s plus its body's
//!   length at that rate, and at most 512 connections are served at once, and
//!   from one client address at most `--max-connections-per-address` where the operator sets
//!   it ([`api::ServeOptions`]). Output uploads
//!   are streamed to disk instead, with limits of their own ([`outputs`]). SIGTERM or SIGINT
//!   stops accepting and lets the requests in flight finish (at most 30 s). No rate limit:
//!   many addresses can still hold every connection; put a rate-limiting proxy in front where
//!   clients are untrusted.
//!
//! # How it is tested
//!
//! Unit tests per module: the JWT round trip and the RFC 7638 thumbprint of a pinned key;
//! every refusal of a signed request (skew, replay, wrong key, removed runner, tampered body);
//! two threads racing to consume one registration token; the lease, lost and result rules;
//! in-process HTTP tests of each endpoint over a real socket. `tests/interop/verify_jwt.py`
//! verifies a minted token with PyJWT against the JWKS served over HTTP.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod admin;
pub mod api;
pub mod auth;
pub mod cli;
pub mod inventory;
pub mod keys;
pub mod metrics;
pub mod oidc;
pub mod outputs;
pub mod state;
pub mod statedir;
pub mod tls;

#[cfg(test)]
pub(crate) mod testutil;
