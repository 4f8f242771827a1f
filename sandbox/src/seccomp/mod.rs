//! seccomp: the allowlist of system calls a job process may make.
//!
//! Why an allowlist: the kernel grows new attack surface every release (io_uring, new mount
//! API, new namespace calls); a denylist silently allows each new one. Our filter refuses every
//! call it does not list with EPERM, so a new kernel feature is off until we decide otherwise.
//! The list itself is data in [`table`], derived from real builds (see `derived/README.md`).
//!
//! One filter, a balanced decision tree over syscall numbers built by [`bpf`] (why not
//! seccompiler's linear chain: see there). Listed calls are allowed, everything else gets EPERM,
//! with these exceptions:
//! - `ioctl` refuses TIOCSTI and TIOCLINUX, compared on the low 32 bits of the request (the
//!   kernel truncates it, so a 64-bit compare is bypassed by setting high bits: CVE-2019-10063);
//! - `clone` refuses any namespace-creating flag (the kernel reads clone's flags as 32 bits);
//! - `socket` and `socketpair` allow only the unix, IPv4, IPv6 and netlink families (others
//!   answer EAFNOSUPPORT): AF_VSOCK and the like are not confined by the network namespace;
//!   netlink only for routing and socket diagnostics (others answer EPROTONOSUPPORT);
//! - `prlimit64` acts on the caller only (pid 0): init runs as the job's uid, and a job that
//!   lowered init's limits could break the sandbox's own bookkeeping;
//! - for the same reason, the scheduling calls that take a pid (`sched_setscheduler`,
//!   `sched_setparam`, `sched_setattr`, `sched_setaffinity`) refuse pid 1, init (a job that
//!   put init in `SCHED_IDLE`, pinned to one busy CPU, would delay its deadlines and kills),
//!   and `setpriority` and `ioprio_set` take only their one-process form (their "process
//!   group" and "user" forms would reach init too; a pid of 1 there is refused by the kernel,
//!   `cap_safe_nice`, because init keeps a capability in its permitted set that the job
//!   lacks (see `capabilities`), which the filter cannot express beside allowing `renice -p`
//!   of the job's own processes);
//! - `clone3` answers ENOSYS: its flags live in memory BPF cannot read, and libc falls back to
//!   `clone` (which the filter can inspect) only on ENOSYS.
//!
//! A foreign architecture (i386 numbers through `int 0x80`) kills the process; x32 numbers
//! (`nr | 0x40000000`) are refused with EPERM.

pub mod bpf;
mod table;

use std::collections::BTreeMap;

use bpf::Verdict;

/// Every allowlisted syscall of this architecture.
fn allowed() -> impl Iterator<Item = &'static table::Allowed> {
    table::ALLOWED.iter()
}

/// Namespace-creating clone flags, refused in `clone`'s first argument.
const CLONE_NAMESPACE_FLAGS: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWCGROUP
    | 0x80/* CLONE_NEWTIME */) as u32;

/// Address families a job may open sockets of. The network namespace is the network boundary,
/// but only for the families it covers: AF_VSOCK, for one, reaches the hypervisor host from
/// inside any namespace. Netlink is decided by protocol ([`NETLINK_PROTOCOLS`]).
const SOCKET_FAMILIES: &[u32] = &[
    libc::AF_UNIX as u32,
    libc::AF_INET as u32,
    libc::AF_INET6 as u32,
];

/// Netlink protocols a job may open: routing (glibc's `getaddrinfo` and `getifaddrs` ask it
/// which addresses are configured; `ip`) and socket diagnostics (`ss`), both answered from the
/// job's own network namespace. The others (netfilter, xfrm, audit, uevents, crypto, ...)
/// are kernel surface no build needs.
const NETLINK_PROTOCOLS: &[u32] = &[libc::NETLINK_ROUTE as u32, libc::NETLINK_SOCK_DIAG as u32];

/// Terminal requests refused in `ioctl`: input injection and the Linux console's grab bag.
const REFUSED_IOCTLS: &[u32] = &[libc::TIOCSTI as u32, libc::TIOCLINUX as u32];

const RET_EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;

/// Init's pid in the job's pid namespace, which no job process may reschedule.
const INIT_PID: u32 = 1;

/// `ioprio_set`'s "which" for one process (linux/ioprio.h).
const IOPRIO_WHO_PROCESS: u32 = 1;
const RET_ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
const RET_EAFNOSUPPORT: u32 = libc::SECCOMP_RET_ERRNO | libc::EAFNOSUPPORT as u32;
const RET_EPROTONOSUPPORT: u32 = libc::SECCOMP_RET_ERRNO | libc::EPROTONOSUPPORT as u32;

/// Building or installing the filter failed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// This architecture has no filter.
    #[error("no seccomp filter for architecture {0}")]
    Arch(&'static str),
    /// The program could not be built.
    #[error("{0}")]
    Build(#[from] bpf::BuildError),
    /// A syscall number did not fit 32 bits.
    #[error("syscall number {0} out of range")]
    Number(i64),
    /// The kernel refused to install the filter.
    #[error("{0}")]
    Install(#[from] seccompiler::Error),
}

/// The compiled filter of a job process, compiled once per job and installed per process.
#[derive(Debug, Clone)]
pub struct JobFilters {
    program: Vec<bpf::Insn>,
}

/// `AUDIT_ARCH_*` of this build, and whether x32 numbers exist here.
fn arch() -> Result<(u32, bool), SeccompError> {
    match std::env::consts::ARCH {
        "x86_64" => Ok((0xC000_003E, true)),
        "aarch64" => Ok((0xC000_00B7, false)),
        "riscv64" => Ok((0xC000_00F3, false)),
        other => Err(SeccompError::Arch(other)),
    }
}

fn nr(n: i64) -> Result<u32, SeccompError> {
    u32::try_from(n).map_err(|_| SeccompError::Number(n))
}

/// Compiles the job filter.
pub fn compile() -> Result<JobFilters, SeccompError> {
    let (audit_arch, has_x32) = arch()?;
    let mut rules: BTreeMap<u32, Verdict> = BTreeMap::new();
    for entry in allowed() {
        let verdict = match entry.nr {
            libc::SYS_ioctl => Verdict::RefuseArgEq {
                arg: 1,
                values: REFUSED_IOCTLS,
                refuse: RET_EPERM,
            },
            libc::SYS_socket | libc::SYS_socketpair => Verdict::AllowArgEqOrSub {
                arg: 0,
                values: SOCKET_FAMILIES,
                refuse: RET_EAFNOSUPPORT,
                sub: libc::AF_NETLINK as u32,
                sub_arg: 2,
                sub_values: NETLINK_PROTOCOLS,
                sub_refuse: RET_EPROTONOSUPPORT,
            },
            libc::SYS_prlimit64 => Verdict::AllowArgEq {
                arg: 0,
                values: &[0],
                refuse: RET_EPERM,
            },
            libc::SYS_sched_setscheduler
            | libc::SYS_sched_setparam
            | libc::SYS_sched_setattr
            | libc::SYS_sched_setaffinity => Verdict::RefuseArgEq {
                arg: 0,
                values: &[INIT_PID],
                refuse: RET_EPERM,
            },
            libc::SYS_setpriority => Verdict::AllowArgEq {
                arg: 0,
                values: &[libc::PRIO_PROCESS],
                refuse: RET_EPERM,
            },
            libc::SYS_ioprio_set => Verdict::AllowArgEq {
                arg: 0,
                values: &[IOPRIO_WHO_PROCESS],
                refuse: RET_EPERM,
            },
            libc::SYS_clone => Verdict::RefuseArgBits {
                arg: 0,
                mask: CLONE_NAMESPACE_FLAGS,
                refuse: RET_EPERM,
            },
            _ => Verdict::Ret(libc::SECCOMP_RET_ALLOW),
        };
        rules.insert(nr(entry.nr)?, verdict);
    }
    for (n, _) in table::ENOSYS {
        rules.insert(nr(*n)?, Verdict::Ret(RET_ENOSYS));
    }
    let program = bpf::build(audit_arch, &rules, RET_EPERM, has_x32.then_some(RET_EPERM))?;
    Ok(JobFilters { program })
}

/// System calls [`compile_confine`] refuses with EPERM: what changes a file's owner, times or
/// extended attributes without writing it, which Landlock does not govern, and io_uring, whose
/// requests (`socket`, `connect`, `setxattr`) would pass this filter by. Git uses none of them.
const CONFINE_REFUSED: &[i64] = &[
    #[cfg(target_arch = "x86_64")]
    libc::SYS_chown,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_lchown,
    libc::SYS_fchown,
    libc::SYS_fchownat,
    libc::SYS_setxattr,
    libc::SYS_lsetxattr,
    libc::SYS_fsetxattr,
    463, // setxattrat
    libc::SYS_removexattr,
    libc::SYS_lremovexattr,
    libc::SYS_fremovexattr,
    466, // removexattrat
    #[cfg(target_arch = "x86_64")]
    libc::SYS_utime,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_utimes,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_futimesat,
    libc::SYS_utimensat,
    425, // io_uring_setup
    426, // io_uring_enter
    427, // io_uring_register
];

/// Mode bits a confined `chmod` may not set: setuid, setgid, sticky, and write for group or
/// others. Git needs `chmod` (a configuration's lock file takes the file's mode), with the
/// umask the helper sets (022) never one of these.
const CONFINE_REFUSED_MODE_BITS: u32 = 0o7022;

/// The `socketpair` types that make a datagram pair, with each combination of the flags that
/// may be ORed into them (the kernel refuses any other bit): `SOCK_DGRAM`, and `SOCK_RAW`,
/// which `unix_create` quietly turns into `SOCK_DGRAM`. Every other type is a stream or
/// sequenced-packet pair (reaching only each other) or refused by the kernel for AF_UNIX.
const CONFINE_DGRAM_TYPES: [u32; 8] = {
    let flags = [
        0,
        libc::SOCK_CLOEXEC,
        libc::SOCK_NONBLOCK,
        libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
    ];
    let mut out = [0u32; 8];
    let mut i = 0;
    while i < 4 {
        out[i] = (libc::SOCK_DGRAM | flags[i]) as u32;
        out[i + 4] = (libc::SOCK_RAW | flags[i]) as u32;
        i += 1;
    }
    out
};

/// The sockets confined git may make: TCP over IPv4 or IPv6, the only transport a fetch uses
/// (the repository's address is pinned by the runner, so nothing is resolved over UDP), and
/// the only one Landlock's `--connect` rule governs. Each is (argument, allowed values):
/// the family; the type, with each combination of the flags that may be ORed into it; the
/// protocol, 0 (the family's default, TCP) or `IPPROTO_TCP` (not SCTP or MPTCP streams,
/// whose connects Landlock does not check).
const CONFINE_SOCKETS: &[(u8, &[u32])] = &[
    (0, &[libc::AF_INET as u32, libc::AF_INET6 as u32]),
    (
        1,
        &[
            libc::SOCK_STREAM as u32,
            (libc::SOCK_STREAM | libc::SOCK_CLOEXEC) as u32,
            (libc::SOCK_STREAM | libc::SOCK_NONBLOCK) as u32,
            (libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK) as u32,
        ],
    ),
    (2, &[0, libc::IPPROTO_TCP as u32]),
];

/// The filter `bulwark-sandbox --confine` puts on git (`crate::confine`), beside Landlock:
/// everything is allowed except what would let a process that may write only beneath a few
/// directories still change the host. Landlock does not cover metadata: a process may
/// `chmod`, `chown`, `utimensat` or `setxattr` any file its uid owns, wherever it is (in
/// rootless and subuid modes the runner's own state: a tool store directory made writable by
/// everyone, in which another local user then plants what a later job runs). So `chmod` may
/// not set [`CONFINE_REFUSED_MODE_BITS`] and the others answer EPERM ([`CONFINE_REFUSED`]).
/// Landlock's network rules govern TCP alone, and git runs in the host's network namespace,
/// so `socket` makes only TCP sockets ([`CONFINE_SOCKETS`]) and answers EACCES for every
/// other: UDP and ICMP (a datagram to any address, this host's DNS resolver or a metadata
/// service included), `AF_UNIX` (a `connect` to a pathname socket, which Landlock's ABI 6
/// scopes do not cover, reaches the services of the same user: its systemd manager or
/// session bus start any command asked of them, unconfined), `AF_NETLINK` (the kernel's and
/// other processes' netlink services), `AF_VSOCK` (the hypervisor's services, on a VM) and
/// the rest. `socketpair` stays allowed for stream pairs, which reach only each other; a
/// datagram pair (`SOCK_DGRAM`, or `SOCK_RAW`, which AF_UNIX turns into one) is refused,
/// since `sendto` or `connect` on either end reaches any pathname datagram socket (the
/// journal's, syslog's). Otherwise a denylist, unlike the job's: git and the helpers it
/// starts are the host's, and their calls are many.
pub fn compile_confine() -> Result<JobFilters, SeccompError> {
    let (audit_arch, has_x32) = arch()?;
    let mut rules: BTreeMap<u32, Verdict> = BTreeMap::new();
    for n in CONFINE_REFUSED {
        rules.insert(nr(*n)?, Verdict::Ret(RET_EPERM));
    }
    // The mode is the second argument of chmod and fchmod, the third of the *at forms.
    #[cfg(target_arch = "x86_64")]
    let chmod = [(libc::SYS_chmod, 1)];
    #[cfg(not(target_arch = "x86_64"))]
    let chmod: [(i64, u8); 0] = [];
    for (n, arg) in chmod.into_iter().chain([
        (libc::SYS_fchmod, 1),
        (libc::SYS_fchmodat, 2),
        (452 /* fchmodat2 */, 2),
    ]) {
        rules.insert(
            nr(n)?,
            Verdict::RefuseArgBits {
                arg,
                mask: CONFINE_REFUSED_MODE_BITS,
                refuse: RET_EPERM,
            },
        );
    }
    rules.insert(
        nr(libc::SYS_socket)?,
        Verdict::AllowEach {
            args: CONFINE_SOCKETS,
            refuse: libc::SECCOMP_RET_ERRNO | libc::EACCES as u32,
        },
    );
    rules.insert(
        nr(libc::SYS_socketpair)?,
        Verdict::RefuseArgEq {
            arg: 1,
            values: &CONFINE_DGRAM_TYPES,
            refuse: libc::SECCOMP_RET_ERRNO | libc::EACCES as u32,
        },
    );
    let program = bpf::build(
        audit_arch,
        &rules,
        libc::SECCOMP_RET_ALLOW,
        has_x32.then_some(RET_EPERM),
    )?;
    Ok(JobFilters { program })
}

/// Installs the filter on the calling thread. `no_new_privs` must be set.
pub fn install(filters: &JobFilters) -> Result<(), SeccompError> {
    seccompiler::apply_filter(&filters.program)?;
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
    fn the_confine_filter_refuses_what_landlock_does_not_govern_and_allows_the_rest() {
        let prog = compile_confine().unwrap().program;
        let (audit_arch, _) = arch().unwrap();
        let verdict = |n: i64, args: [u64; 6]| bpf::run(&prog, n as u32, audit_arch, args);
        let allow = Some(libc::SECCOMP_RET_ALLOW);
        let eperm = Some(RET_EPERM);
        // Modes git gives its own files pass; world- or group-writable and setuid do not.
        for (mode, expected) in [
            (0o644, allow),
            (0o444, allow),
            (0o755, allow),
            (0o666, eperm),
            (0o777, eperm),
            (0o664, eperm),
            (0o4755, eperm),
            (0o2755, eperm),
            (0o1755, eperm),
        ] {
            assert_eq!(
                verdict(libc::SYS_fchmod, [3, mode, 0, 0, 0, 0]),
                expected,
                "{mode:o}"
            );
            assert_eq!(
                verdict(
                    libc::SYS_fchmodat,
                    [libc::AT_FDCWD as u64, 0, mode, 0, 0, 0]
                ),
                expected,
                "{mode:o}"
            );
            assert_eq!(verdict(452, [0, 0, mode, 0, 0, 0]), expected, "{mode:o}");
        }
        for n in [
            libc::SYS_utimensat,
            libc::SYS_fchownat,
            libc::SYS_fsetxattr,
            425, /* io_uring_setup */
        ] {
            assert_eq!(verdict(n, [0; 6]), eperm, "{n}");
        }
        let eacces = Some(libc::SECCOMP_RET_ERRNO | libc::EACCES as u32);
        let family = |f: i32| [f as u64, libc::SOCK_STREAM as u64, 0, 0, 0, 0];
        assert_eq!(verdict(libc::SYS_socket, family(libc::AF_UNIX)), eacces);
        assert_eq!(verdict(libc::SYS_socket, family(libc::AF_INET)), allow);
        assert_eq!(verdict(libc::SYS_socket, family(libc::AF_NETLINK)), eacces);
        assert_eq!(verdict(libc::SYS_socket, family(libc::AF_VSOCK)), eacces);
        assert_eq!(verdict(libc::SYS_socket, family(libc::AF_PACKET)), eacces);
        assert_eq!(verdict(libc::SYS_socket, family(libc::AF_ALG)), eacces);
        assert_eq!(verdict(libc::SYS_socket, family(libc::AF_INET6)), allow);
        assert_eq!(verdict(libc::SYS_socketpair, family(libc::AF_UNIX)), allow);
        // TCP as curl and git make it; UDP, ICMP, raw and SCTP not.
        let inet = |f: i32, t: i32, p: i32| [f as u64, t as u64, p as u64, 0, 0, 0];
        for (f, t, p, want) in [
            (
                libc::AF_INET6,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                libc::IPPROTO_TCP,
                allow,
            ),
            (
                libc::AF_INET,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
                allow,
            ),
            (libc::AF_INET, libc::SOCK_DGRAM, 0, eacces),
            (
                libc::AF_INET6,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
                eacces,
            ),
            (libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP, eacces),
            (libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_UDP, eacces),
            (libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_SCTP, eacces),
            (libc::AF_INET6, libc::SOCK_SEQPACKET, 0, eacces),
            (
                libc::AF_INET,
                libc::SOCK_STREAM,
                262, /* MPTCP */
                eacces,
            ),
        ] {
            assert_eq!(
                verdict(libc::SYS_socket, inet(f, t, p)),
                want,
                "{f} {t:#x} {p}"
            );
        }
        let pair = |t: i32| [libc::AF_UNIX as u64, t as u64, 0, 0, 0, 0];
        for t in CONFINE_DGRAM_TYPES {
            assert_eq!(
                verdict(libc::SYS_socketpair, pair(t as i32)),
                eacces,
                "{t:#x}"
            );
        }
        assert_eq!(
            verdict(
                libc::SYS_socketpair,
                pair(libc::SOCK_STREAM | libc::SOCK_CLOEXEC)
            ),
            allow
        );
        assert_eq!(
            verdict(libc::SYS_socketpair, pair(libc::SOCK_SEQPACKET)),
            allow
        );
        // AF_UNIX turns SOCK_RAW into SOCK_DGRAM.
        assert_eq!(
            verdict(
                libc::SYS_socketpair,
                pair(libc::SOCK_RAW | libc::SOCK_CLOEXEC)
            ),
            eacces
        );
        for n in [
            libc::SYS_openat,
            libc::SYS_read,
            libc::SYS_execve,
            libc::SYS_connect,
        ] {
            assert_eq!(verdict(n, [0; 6]), allow, "{n}");
        }
    }

    #[test]
    fn the_filter_is_short_and_shallow() {
        let f = compile().unwrap();
        // ~280 calls in well under the kernel's 4096 instructions.
        assert!(f.program.len() < 1000, "{} instructions", f.program.len());
    }

    /// The two seccompiler filters this module installed before the decision tree, kept as the
    /// reference: a linear allowlist with argument rules, and `clone3` answering ENOSYS. The
    /// argument rules added since (`prlimit64`'s pid; `socket`'s family, whose EAFNOSUPPORT
    /// seccompiler cannot express beside the EPERM default) are checked on their own below.
    fn reference_filters() -> Vec<Vec<bpf::Insn>> {
        use seccompiler::{
            SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
            SeccompRule, TargetArch,
        };
        let arch = TargetArch::try_from(std::env::consts::ARCH).unwrap();
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
        for entry in allowed() {
            let conditions = match entry.nr {
                libc::SYS_ioctl => vec![SeccompRule::new(vec![
                    SeccompCondition::new(
                        1,
                        SeccompCmpArgLen::Dword,
                        SeccompCmpOp::Ne,
                        libc::TIOCSTI,
                    )
                    .unwrap(),
                    SeccompCondition::new(
                        1,
                        SeccompCmpArgLen::Dword,
                        SeccompCmpOp::Ne,
                        libc::TIOCLINUX,
                    )
                    .unwrap(),
                ])
                .unwrap()],
                libc::SYS_clone => vec![SeccompRule::new(vec![SeccompCondition::new(
                    0,
                    SeccompCmpArgLen::Qword,
                    SeccompCmpOp::MaskedEq(u64::from(CLONE_NAMESPACE_FLAGS)),
                    0,
                )
                .unwrap()])
                .unwrap()],
                _ => Vec::new(),
            };
            rules.insert(entry.nr, conditions);
        }
        let allowlist = SeccompFilter::new(
            rules,
            SeccompAction::Errno(libc::EPERM as u32),
            SeccompAction::Allow,
            arch,
        )
        .unwrap();
        let enosys = SeccompFilter::new(
            table::ENOSYS
                .iter()
                .map(|(nr, _)| (*nr, Vec::new()))
                .collect(),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            arch,
        )
        .unwrap();
        vec![allowlist.try_into().unwrap(), enosys.try_into().unwrap()]
    }

    /// The kernel's verdict for stacked filters (newest first): the lowest action as s32 wins,
    /// the newest among equals (kernel/seccomp.c, `seccomp_run_filters`).
    fn stacked(filters: &[Vec<bpf::Insn>], nr: u32, arch: u32, args: [u64; 6]) -> u32 {
        let mut ret = libc::SECCOMP_RET_ALLOW;
        for f in filters.iter().rev() {
            let cur = bpf::run(f, nr, arch, args).expect("reference filter runs");
            let action = |r: u32| (r & libc::SECCOMP_RET_ACTION_FULL) as i32;
            if action(cur) < action(ret) {
                ret = cur;
            }
        }
        ret
    }

    #[test]
    fn the_tree_decides_exactly_as_the_stacked_seccompiler_filters_did() {
        let ours = compile().unwrap().program;
        let reference = reference_filters();
        let (native, _) = arch().unwrap();
        let ns = u64::from(CLONE_NAMESPACE_FLAGS);
        let mut arg_cases: Vec<[u64; 6]> = vec![[0; 6], [u64::MAX; 6]];
        for req in [
            libc::TIOCSTI,
            libc::TIOCLINUX,
            libc::TIOCGWINSZ,
            libc::FIONREAD,
        ] {
            for high in [0u64, 1 << 32, 0xffff_ffff << 32] {
                arg_cases.push([3, req | high, 0, 0, 0, 0]);
            }
        }
        for bit in 0..64 {
            arg_cases.push([(1u64 << bit) | 0x11, 0, 0, 0, 0, 0]);
        }
        arg_cases.push([ns, 0, 0, 0, 0, 0]);
        arg_cases.push([0x11 | (ns << 32), 0, 0, 0, 0, 0]);
        let mut checked = 0;
        for arch in [native, 0x4000_0003 /* i386 */, 0xC000_00B7, 0] {
            for base in [0u32, bpf::X32_SYSCALL_BIT] {
                for n in (0..1100u32).chain([u32::MAX, 0x7fff_ffff, 0x8000_0000]) {
                    let nr = base | n;
                    let cases: &[[u64; 6]] =
                        if n == libc::SYS_ioctl as u32 || n == libc::SYS_clone as u32 {
                            &arg_cases
                        } else {
                            &arg_cases[..2]
                        };
                    if [
                        libc::SYS_socket,
                        libc::SYS_socketpair,
                        libc::SYS_prlimit64,
                        libc::SYS_sched_setscheduler,
                        libc::SYS_sched_setparam,
                        libc::SYS_sched_setattr,
                        libc::SYS_sched_setaffinity,
                        libc::SYS_setpriority,
                        libc::SYS_ioprio_set,
                    ]
                    .contains(&i64::from(n))
                    {
                        continue;
                    }
                    for args in cases {
                        assert_eq!(
                            bpf::run(&ours, nr, arch, *args),
                            Some(stacked(&reference, nr, arch, *args)),
                            "nr {nr:#x} arch {arch:#x} args {args:x?}"
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 8000);
        // And the cases the containment tests rely on, spelled out.
        let errno = |e: i32| Some(libc::SECCOMP_RET_ERRNO | e as u32);
        let call = |n: i64, args: [u64; 6]| bpf::run(&ours, n as u32, native, args);
        assert_eq!(call(libc::SYS_clone3, [0; 6]), errno(libc::ENOSYS));
        // Legacy AIO: a context would count against the host-wide fs.aio-max-nr.
        assert_eq!(
            call(libc::SYS_io_setup, [1, 0, 0, 0, 0, 0]),
            errno(libc::ENOSYS)
        );
        assert_eq!(call(libc::SYS_mount, [0; 6]), errno(libc::EPERM));
        assert_eq!(
            call(libc::SYS_ioctl, [0, libc::TIOCSTI | (1 << 40), 0, 0, 0, 0]),
            errno(libc::EPERM)
        );
        assert_eq!(
            call(libc::SYS_clone, [libc::CLONE_NEWUSER as u64, 0, 0, 0, 0, 0]),
            errno(libc::EPERM)
        );
        assert_eq!(call(libc::SYS_read, [0; 6]), Some(libc::SECCOMP_RET_ALLOW));
        let allow = Some(libc::SECCOMP_RET_ALLOW);
        for n in [libc::SYS_socket, libc::SYS_socketpair] {
            for (proto, want) in [
                (libc::NETLINK_ROUTE, allow),
                (libc::NETLINK_SOCK_DIAG, allow),
                (libc::NETLINK_NETFILTER, errno(libc::EPROTONOSUPPORT)),
                (libc::NETLINK_XFRM, errno(libc::EPROTONOSUPPORT)),
                (libc::NETLINK_AUDIT, errno(libc::EPROTONOSUPPORT)),
                (libc::NETLINK_KOBJECT_UEVENT, errno(libc::EPROTONOSUPPORT)),
                (libc::NETLINK_CRYPTO, errno(libc::EPROTONOSUPPORT)),
            ] {
                let family = libc::AF_NETLINK as u64;
                assert_eq!(
                    call(n, [family, 3, proto as u64, 0, 0, 0]),
                    want,
                    "{n} {proto}"
                );
            }
            for family in [libc::AF_UNIX, libc::AF_INET, libc::AF_INET6] {
                assert_eq!(
                    call(n, [family as u64, 1, 0, 0, 0, 0]),
                    allow,
                    "{n} {family}"
                );
                // The kernel reads the family as an int: high bits change nothing.
                let high = family as u64 | (1 << 33);
                assert_eq!(call(n, [high, 1, 0, 0, 0, 0]), allow, "{n} {family}");
            }
            for family in [
                libc::AF_UNSPEC,
                libc::AF_VSOCK,
                libc::AF_PACKET,
                libc::AF_ALG,
                libc::AF_BLUETOOTH,
                libc::AF_XDP,
                libc::AF_KEY,
                libc::AF_RDS,
                libc::AF_TIPC,
                libc::AF_CAN,
            ] {
                assert_eq!(
                    call(n, [family as u64, 1, 0, 0, 0, 0]),
                    errno(libc::EAFNOSUPPORT),
                    "{n} {family}"
                );
            }
        }
        assert_eq!(call(libc::SYS_prlimit64, [0, 7, 0, 0, 0, 0]), allow);
        for pid in [1u64, 2, u64::from(u32::MAX), 1 << 32 | 1] {
            assert_eq!(
                call(libc::SYS_prlimit64, [pid, 7, 0, 0, 0, 0]),
                errno(libc::EPERM),
                "prlimit64 on pid {pid:#x}"
            );
        }
        // pid 0 in the low 32 bits is the caller, whatever the high bits say.
        assert_eq!(call(libc::SYS_prlimit64, [1 << 32, 7, 0, 0, 0, 0]), allow);
        // Scheduling: any job process but init (pid 1 in the low 32 bits, as the kernel reads
        // a pid_t); nice and ionice on the caller only.
        for n in [
            libc::SYS_sched_setscheduler,
            libc::SYS_sched_setparam,
            libc::SYS_sched_setattr,
            libc::SYS_sched_setaffinity,
        ] {
            for pid in [0u64, 2, 77, 1 << 32] {
                assert_eq!(call(n, [pid, 0, 0, 0, 0, 0]), allow, "{n} on pid {pid:#x}");
            }
            for pid in [1u64, 1 << 32 | 1, 0xffff_ffff_0000_0001] {
                assert_eq!(
                    call(n, [pid, 0, 0, 0, 0, 0]),
                    errno(libc::EPERM),
                    "{n} on pid {pid:#x}"
                );
            }
        }
        let (process, pgrp, user) = (
            libc::PRIO_PROCESS as u64,
            libc::PRIO_PGRP as u64,
            libc::PRIO_USER as u64,
        );
        for who in [0, 2, 77] {
            assert_eq!(
                call(libc::SYS_setpriority, [process, who, 10, 0, 0, 0]),
                allow
            );
        }
        for args in [[pgrp, 0, 19], [user, 0, 19], [pgrp, 1, 19]] {
            assert_eq!(
                call(libc::SYS_setpriority, [args[0], args[1], args[2], 0, 0, 0]),
                errno(libc::EPERM),
                "setpriority{args:?}"
            );
        }
        assert_eq!(call(libc::SYS_ioprio_set, [1, 0, 0x6000, 0, 0, 0]), allow);
        assert_eq!(call(libc::SYS_ioprio_set, [1, 77, 0x6000, 0, 0, 0]), allow);
        for args in [[2u64, 0], [3, 0], [2, 1]] {
            assert_eq!(
                call(libc::SYS_ioprio_set, [args[0], args[1], 0x6000, 0, 0, 0]),
                errno(libc::EPERM),
                "ioprio_set{args:?}"
            );
        }
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
