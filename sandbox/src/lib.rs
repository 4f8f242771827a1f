//! Linux isolation for Bulwark jobs.
//!
//! This crate builds the sandbox a CI job runs in and knows nothing about jobs, HTTP or
//! signing. The runner describes a sandbox with a [`spec::SandboxSpec`] and starts this
//! crate's `bulwark-sandbox` binary ([`helper::main`]); the helper builds the namespaces, the filesystem
//! view and the init, and every step's process locks itself down before exec
//! ([`process`]). Host-side pieces the runner calls directly: [`cgroup`] (limits and killing a
//! whole job) and [`probe`] (which layers this host can enforce). The helper binary has three more
//! modes: handing a workspace between ids ([`subid`]), killing every process of a job uid
//! ([`uid_sweep`]) and confining a program the runner runs on the host, git ([`confine`]).
//!
//! Layers, each in the module named for it: namespaces ([`helper`], checked by [`namespaces`]) (user, mount, pid, net,
//! ipc, uts, cgroup), [`mount`] (tmpfs root, read-only binds, pivot_root), [`landlock`],
//! [`seccomp`] (allowlist), [`capabilities`], rlimits ([`process`]), [`cgroup`].
//!
//! Only [`sys`] holds `unsafe`; every block there states the invariant it relies on.
//!
//! Limits: x86_64 is the tested architecture; seccomp compiles for aarch64 and riscv64 but its
//! table lists x86_64 numbers only where they differ. Tested by unit tests here and by the
//! containment battery in `tests/`, which attempts each escape and checks the host afterwards.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod capabilities;
pub mod cgroup;
pub mod confine;
pub mod credential_updates;
pub mod disk;
pub mod forwarder;
pub mod helper;
pub mod init;
pub mod landlock;
pub mod mount;
pub mod namespaces;
pub mod probe;
pub mod process;
pub mod seccomp;
pub mod secret_buf;
pub mod spec;
pub mod subid;
pub mod sys;
#[doc(hidden)]
pub mod testutil;
pub mod uid_sweep;
