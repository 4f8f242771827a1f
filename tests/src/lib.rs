//! Shared helpers for the integration tests.
#![forbid(unsafe_code)]
