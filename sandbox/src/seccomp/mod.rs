//! seccomp: the allowlist of system calls a job process may make.
//!
//! Why an allowlist: the kernel grows new attack surface every release (io_uring, new mount
//! API, new namespace calls); a denylist silently allows each new one. Our filter refuses every
//! call it does not list with EPERM, so a new kernel feature is off until we decide otherwise.
//! The list itself is data in [`table`], derived from real builds (see `derived/README.md`).
//!
//! Two stacked filters, because a seccompiler filter has one match action:
//! 1. the allowlist: listed calls are allowed, everything else gets EPERM. Two entries carry
//!    argument conditions: `ioctl` refuses TIOCSTI and TIOCLINUX, compared on the low 32 bits
//!    of the request (the kernel truncates it, so a 64-bit compare is bypassed by setting high
//!    bits: CVE-2019-10063); `clone` refuses any namespace-creating flag.
//! 2. `clone3` answers ENOSYS: its flags live in memory BPF cannot read, and libc falls back to
//!    `clone` (which filter 1 can inspect) only on ENOSYS. The kernel returns the errno of the
//!    most recently installed filter among equal-precedence results, so filter 2 goes last.
//!
//! Both filters kill the process on a foreign architecture (i386 numbers); x32 numbers
//! (`nr | 0x40000000`) match no entry of the allowlist and so get EPERM.

mod table;

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Every allowlisted syscall of this architecture.
fn allowed() -> impl Iterator<Item = &'static table::Allowed> {
    table::ALLOWED.iter()
}

/// Namespace-creating clone flags, refused in `clone`'s first argument.
const CLONE_NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWCGROUP
    | 0x80/* CLONE_NEWTIME */) as u64;

/// Building or installing the filter failed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// This architecture has no filter.
    #[error("no seccomp filter for architecture {0}")]
    Arch(&'static str),
    /// seccompiler refused the filter or the kernel refused to install it.
    #[error("{0}")]
    Backend(#[from] seccompiler::Error),
    /// A filter condition was malformed.
    #[error("{0}")]
    Condition(#[from] seccompiler::BackendError),
}

/// The compiled filters of a job process, compiled once per job and installed per process.
#[derive(Debug, Clone)]
pub struct JobFilters {
    allowlist: BpfProgram,
    clone3_enosys: BpfProgram,
}

fn arch() -> Result<TargetArch, SeccompError> {
    TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| SeccompError::Arch(std::env::consts::ARCH))
}

/// Compiles the job filters.
pub fn compile() -> Result<JobFilters, SeccompError> {
    let arch = arch()?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for entry in allowed() {
        let conditions = match entry.nr {
            libc::SYS_ioctl => vec![SeccompRule::new(vec![
                SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, libc::TIOCSTI)?,
                SeccompCondition::new(
                    1,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::Ne,
                    libc::TIOCLINUX,
                )?,
            ])?],
            libc::SYS_clone => vec![SeccompRule::new(vec![SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(CLONE_NAMESPACE_FLAGS),
                0,
            )?])?],
            _ => Vec::new(),
        };
        rules.insert(entry.nr, conditions);
    }
    let allowlist = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        arch,
    )?;
    let enosys = SeccompFilter::new(
        table::ENOSYS
            .iter()
            .map(|(nr, _)| (*nr, Vec::new()))
            .collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )?;
    Ok(JobFilters {
        allowlist: allowlist.try_into()?,
        clone3_enosys: enosys.try_into()?,
    })
}

/// Installs both filters on the calling thread. `no_new_privs` must be set.
pub fn install(filters: &JobFilters) -> Result<(), SeccompError> {
    seccompiler::apply_filter(&filters.allowlist)?;
    seccompiler::apply_filter(&filters.clone3_enosys)?;
    Ok(())
}

/// Whether the named syscall is in the allowlist (for tests and `probe`).
pub fn is_allowed(name: &str) -> bool {
    allowed().any(|a| a.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile() {
        let f = compile().unwrap();
        assert!(f.allowlist.len() > 100);
        assert!(!f.clone3_enosys.is_empty());
    }

    #[test]
    fn dangerous_calls_are_not_allowed() {
        for name in [
            "mount",
            "unshare",
            "setns",
            "ptrace",
            "bpf",
            "io_uring_setup",
            "keyctl",
            "acct",
            "swapon",
            "name_to_handle_at",
            "clone3",
        ] {
            assert!(!is_allowed(name), "{name} must not be in the allowlist");
        }
        assert!(is_allowed("read") && is_allowed("ioctl") && is_allowed("clone"));
    }
}
