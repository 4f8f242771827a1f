//! Bulwark's wire and file formats, and their validation: the job spec, the operator
//! configuration and `result.json`.
//!
//! # What it is for
//!
//! Everything that crosses a trust boundary as text is parsed and checked here, once, before the
//! runner acts on it: a job spec comes from the repository being built (untrusted), the
//! configuration from the operator, and `result.json` is read back by scripts. The runner turns
//! a spec into a [`ValidatedJob`] with [`JobSpec::validate`] and acts only on that; a spec that
//! names an unknown field or asks for more than the operator allows never gets further.
//!
//! # Example
//!
//! ```
//! use bulwark_protocol::{JobSpec, LimitsConfig, SpecError};
//!
//! let spec = JobSpec::from_toml_str(r#"
//!     version = 1
//!     name = "hello"
//!     [resources]
//!     memory = "32GiB"
//!     [[steps]]
//!     name = "Build"
//!     run = "make"
//! "#)?;
//! let err = spec.validate(&LimitsConfig::default()).unwrap_err();
//! assert_eq!(err.to_string(), "\
//! resources.memory: 32GiB is above the operator's ceiling of 16GiB (limits.max_memory)
//! steps[0].name: must match [a-z0-9][a-z0-9._-]{0,62}, got \"Build\"");
//! # Ok::<(), SpecError>(())
//! ```
//!
//! # Limits
//!
//! - No I/O at all: callers read files and pass text in. Nothing is resolved either: a URL or
//!   an allowlist entry is checked for shape only; whether it points at a private address, and
//!   whether a glob's matches collide with the runner's files ([`is_reserved_output`]), are the
//!   runner's checks at the time it acts.
//! - Only version 1 is read. Durations and sizes accept a deliberately small language
//!   ([`units`]). The number of steps, tools, outputs and allowlist entries is bounded
//!   (`job::MAX_*`), and so is the number of errors reported and the length of any user input
//!   quoted back in a message, because messages about untrusted input end up in logs.
//!
//! # How it is tested
//!
//! Unit tests beside each module; `tests/bad-specs/` is a corpus of malformed specs, each
//! with the error it must produce (`# expect:` on its first line); `tests/good-specs/` must
//! validate; a deterministic mutation test feeds thousands of corrupted specs through parsing
//! and validation and asserts nothing panics; `result.json`'s shape is pinned by a golden file.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod error;
pub mod prometheus;
pub mod terminal;
pub mod units;
pub mod v1;

pub use error::{FieldError, SpecError};
pub use units::{format_cpus, format_duration, format_size, parse_duration, parse_size};
pub use v1::*;
