//! The Bulwark runner: job execution, state and the command line.
//!
//! `bulwark run` validates a job spec against the operator's configuration, checks that this
//! host can enforce every isolation layer, prepares a workspace, starts the sandbox helper
//! (`bulwark-sandbox`, installed next to `bulwark`; see `helper_process` and
//! `bulwark_sandbox::helper`), streams the job's log,
//! and after every job process is gone copies the declared outputs out without following
//! symlinks, hashing them as it copies, and writes `result.json`.
//!
//! Modules are named for what they guard: [`config`] (operator settings and where state
//! lives), [`workspace`] (per-job directories, locks, cleanup after a dead run), [`uids`] (one
//! host uid per running job), [`source`] (copying the source in without following links),
//! [`outputs`] (copying outputs out), [`joblog`] (the capped job log), [`job`] (the whole run).
#![cfg_attr(test, allow(clippy::unwrap_used))]
#![forbid(unsafe_code)]

pub mod cache;
pub mod cli;
pub mod config;
pub mod creds;
pub mod daemon;
pub mod disk_reserve;
pub mod egress;
pub mod exec;
pub mod fsutil;
pub mod gitsource;
pub mod glob;
pub mod helper_process;
pub mod inventory;
pub mod job;
pub mod joblog;
pub mod logging;
pub mod outputs;
pub mod probe;
pub mod provenance;
pub mod source;
pub mod subuid;
pub mod tools;
pub mod uids;
pub mod verify;
pub mod workspace;

/// Exit statuses of `bulwark run` (see DESIGN.md).
pub mod exit {
    /// The job succeeded.
    pub const SUCCEEDED: u8 = 0;
    /// A step failed, timed out, hit a limit, or an output was refused.
    pub const FAILED: u8 = 1;
    /// Refused before any step ran.
    pub const REFUSED: u8 = 2;
    /// The runner itself failed after steps ran.
    pub const RUNNER_ERROR: u8 = 3;
}
